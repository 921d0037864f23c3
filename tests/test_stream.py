from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator

import pytest
from flask import Flask, Response

from flask_sse_flush import Event, EventStream, StreamClosed, sse_response
from flask_sse_flush.testing import parse_events
from flask_sse_flush.wire.frames import EventDecoder
from flask_sse_flush.wsgi.stream import KEEPALIVE, StreamBody, opening_frame
from tests.timing import assert_under


def test_opening_frame_then_one_chunk_per_event_then_end() -> None:
    stream = EventStream(keepalive=None)
    body = iter(stream)
    assert next(body) == b": stream open\n\n"
    stream.send(Event("a", event="x"))
    stream.send(Event({"b": 1}))
    stream.close()
    assert list(body) == [b"event: x\ndata: a\n\n", b'data: {"b":1}\n\n']
    assert stream.closed


def test_retry_is_announced_in_the_opening_frame() -> None:
    assert next(iter(EventStream(retry=2500))) == b"retry: 2500\n: stream open\n\n"
    with pytest.raises(ValueError, match="retry"):
        opening_frame(-1)


def test_opening_frame_may_set_the_last_event_id_without_an_event() -> None:
    frame = next(iter(EventStream(last_event_id="job-0")))
    assert frame == b"id: job-0\n: stream open\n\n"
    decoder = EventDecoder()
    assert decoder.feed(frame) == []  # no event fired...
    assert decoder.last_event_id == "job-0"  # ...but a reconnect sends this id
    with pytest.raises(ValueError):
        opening_frame(None, "a\nb")


def test_events_sent_before_iteration_are_kept_in_order() -> None:
    stream = EventStream(keepalive=None)
    for i in range(100):
        stream.send(Event(str(i)))
    stream.close()
    frames = list(stream)[1:]
    assert frames == [Event(str(i)).encode() for i in range(100)]


def test_keepalive_after_silence_and_only_then() -> None:
    stream = EventStream(keepalive=0.2)
    body = iter(stream)
    next(body)
    started = time.monotonic()
    assert next(body) == KEEPALIVE
    assert 0.15 <= time.monotonic() - started < 1.0
    # An event resets the silence: it comes out first, immediately.
    stream.send(Event("x"))
    started = time.monotonic()
    assert next(body) == b"data: x\n\n"
    assert_under(time.monotonic() - started, 0.1, "a queued event after a keepalive (s)")
    stream.close()
    assert list(body) == []


def test_send_from_another_thread_wakes_the_reader_at_once() -> None:
    stream = EventStream(keepalive=None)
    body = iter(stream)
    next(body)
    arrived: list[float] = []

    def producer() -> None:
        for i in range(5):
            time.sleep(0.05)
            stream.send(Event({"sent": time.monotonic(), "i": i}))
        stream.close()

    thread = threading.Thread(target=producer)
    thread.start()
    frames = []
    for frame in body:
        arrived.append(time.monotonic())
        frames.append(frame)
    thread.join()
    assert len(frames) == 5
    sent = [parse_events(frame)[0].json() for frame in frames]
    waits = [when - record["sent"] for when, record in zip(arrived, sent, strict=True)]
    assert_under(max(waits), 0.05, "another thread's send to the reader, worst (s)", waits)


def test_send_after_close_raises() -> None:
    stream = EventStream()
    stream.close()
    stream.close()  # idempotent
    with pytest.raises(StreamClosed):
        stream.send(Event("late"))


def test_raw_frames_must_be_complete() -> None:
    stream = EventStream()
    stream.send(b": hi\n\n")
    with pytest.raises(ValueError, match="blank line"):
        stream.send(b"data: half")
    with pytest.raises(TypeError):
        stream.send("data: str\n\n")  # type: ignore[arg-type]


def test_keepalive_must_be_positive() -> None:
    with pytest.raises(ValueError, match="keepalive"):
        EventStream(keepalive=0)


def test_disconnect_runs_close_callbacks_once_and_releases_the_stream() -> None:
    stream = EventStream(keepalive=None)
    calls: list[str] = []
    stream.on_close(lambda: calls.append("a"))
    body = iter(stream)
    next(body)
    body.close()  # what a WSGI server does when the client has gone
    assert calls == ["a"]
    assert stream.closed
    with pytest.raises(StreamClosed):
        stream.send(Event("x"))
    # Registered after the end: runs at once.
    stream.on_close(lambda: calls.append("b"))
    assert calls == ["a", "b"]


def test_a_failing_callback_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = EventStream(keepalive=None)
    calls: list[str] = []

    def boom() -> None:
        raise RuntimeError("boom")

    stream.on_close(boom)
    stream.on_close(lambda: calls.append("ok"))
    stream.close()
    list(stream)
    assert calls == ["ok"]
    assert "boom" in caplog.text


def test_body_can_be_iterated_only_once() -> None:
    stream = EventStream()
    iter(stream)
    with pytest.raises(RuntimeError, match="once"):
        iter(stream)


def closing_stream(calls: list[str], name: str) -> tuple[EventStream, Response]:
    """A stream whose end appends ``name`` to ``calls``, and its response (made in a request)."""
    with Flask(__name__).test_request_context():
        stream = EventStream()
        stream.on_close(lambda: calls.append(name))
        return stream, stream.response()


def test_response_closed_without_iteration_still_runs_cleanup() -> None:
    calls: list[str] = []
    _, response = closing_stream(calls, "closed")
    response.close()
    assert calls == ["closed"]


def test_a_parked_body_lets_go_of_its_response_and_still_closes_everything() -> None:
    # What the stream worker does once it wrote the head: the response goes,
    # its close stays (the stream's close(), every call_on_close callback,
    # one added later through the response too).
    calls: list[str] = []
    stream, response = closing_stream(calls, "stream")
    response.call_on_close(lambda: calls.append("before"))
    body = StreamBody(response, stream)
    body._keep_only_closing()
    assert body._response is not response
    response.call_on_close(lambda: calls.append("after"))
    body.close()
    assert stream.closed
    assert calls == ["stream", "before", "after"]


def test_a_body_whose_response_was_replaced_keeps_it() -> None:
    stream = EventStream()
    response = Response(iter([b"x"]))
    body = StreamBody(response, stream)  # type: ignore[arg-type]
    body._keep_only_closing()
    assert body._response is response


def test_no_thread_is_left_behind_after_a_disconnect() -> None:
    before = threading.active_count()
    for _ in range(20):
        stream = EventStream(keepalive=0.01)
        body = iter(stream)
        next(body)
        next(body)
        body.close()
    gc.collect()
    assert threading.active_count() == before


def test_response_headers() -> None:
    app = Flask(__name__)
    with app.test_request_context():
        response = EventStream().response()
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache, no-transform"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "Connection" not in response.headers
    assert "Content-Length" not in response.headers
    assert response.is_streamed


def test_sse_response_wraps_any_iterable_and_closes_it() -> None:
    closed: list[bool] = []

    def events() -> Iterator[Event | bytes]:
        try:
            yield Event("one", id="1")
            yield b": raw\n\n"
            yield Event("two", id="2")
        finally:
            closed.append(True)

    app = Flask(__name__)

    @app.get("/s")
    def view() -> object:
        return sse_response(events(), retry=1000)

    response = app.test_client().get("/s", buffered=False)
    chunks = list(response.iter_encoded())
    response.close()
    assert chunks == [
        b"retry: 1000\n: stream open\n\n",
        b"id: 1\ndata: one\n\n",
        b": raw\n\n",
        b"id: 2\ndata: two\n\n",
    ]
    assert closed == [True]
    assert response.headers["X-Accel-Buffering"] == "no"


def test_sse_response_closes_the_source_on_early_disconnect() -> None:
    closed: list[bool] = []

    def events() -> Iterator[Event]:
        try:
            while True:
                yield Event("tick")
        finally:
            closed.append(True)

    app = Flask(__name__)
    app.add_url_rule("/s", view_func=lambda: sse_response(events()))
    response = app.test_client().get("/s", buffered=False)
    body = response.iter_encoded()
    next(body)
    next(body)
    response.close()
    assert closed == [True]


def test_sse_response_closes_a_source_it_never_iterated() -> None:
    closed: list[bool] = []

    class Source:
        def __iter__(self) -> Iterator[Event]:
            return iter([Event("x")])

        def close(self) -> None:
            closed.append(True)

    app = Flask(__name__)
    with app.test_request_context():
        response = sse_response(Source())
    response.close()  # e.g. an after_request handler replaced it
    assert closed == [True]
    with pytest.raises(ValueError, match="retry"):
        sse_response([], retry=-5)  # refused before any byte is sent


def test_a_stream_open_max_seconds_rotates_after_the_next_event() -> None:
    stream = EventStream(keepalive=None, max_seconds=0.2)
    body = iter(stream)
    assert next(body).startswith(b":")  # the opening frame
    stream.send(Event("one", id="a-1"))
    assert next(body) == Event("one", id="a-1").frame
    time.sleep(0.25)
    stream.send(Event("two", id="a-2"))
    stream.send(Event("three", id="a-3"))  # queued behind: resumed, not sent
    assert next(body) == Event("two", id="a-2").frame
    hint = next(body)
    assert hint.startswith(b"retry: ") and hint.endswith(b"\n\n")
    assert 500 <= int(hint.split()[1]) <= 1500
    assert list(body) == []
    assert stream.rotated and stream.closed
    with pytest.raises(StreamClosed):
        stream.send(Event("four", id="a-4"))


def test_a_quiet_stream_rotates_at_max_seconds_without_waiting_for_a_keepalive() -> None:
    stream = EventStream(keepalive=30.0, max_seconds=0.2)
    started = time.monotonic()
    frames = list(stream)
    assert len(frames) == 2 and frames[1].startswith(b"retry: ")
    assert_under(time.monotonic() - started, 2.0, "a quiet stream's rotation (s)")


def test_a_terminal_event_past_max_seconds_is_not_followed_by_a_rotation() -> None:
    stream = EventStream(keepalive=None, max_seconds=0.1)
    body = iter(stream)
    next(body)
    time.sleep(0.15)
    stream.send(Event({"filename": "a"}, event="complete", id="a-9"))
    stream.close()
    rest = list(body)
    assert rest == [Event({"filename": "a"}, event="complete", id="a-9").frame]
    assert not stream.rotated


@pytest.mark.parametrize("bad", [0, -1.0])
def test_max_seconds_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="max_seconds must be a positive number"):
        EventStream(max_seconds=bad)


def test_frames_already_queued_go_out_as_one_chunk_when_batching() -> None:
    stream = EventStream(keepalive=None, batch=True)
    body = iter(stream)
    next(body)  # the opening frame
    frames = [Event({"n": n}, event="tick").frame for n in range(5)]
    for frame in frames:
        stream.send(frame)
    assert next(body) == b"".join(frames)  # one write for what was waiting
    stream.send(frames[0])
    assert next(body) == frames[0]  # a lone event is not held for company
    stream.send(frames[1])
    stream.close(retry=1000)
    assert list(body) == [frames[1] + b"retry: 1000\n\n"]  # the end comes with it


def test_a_batch_stays_within_64_kib_and_never_splits_a_frame() -> None:
    stream = EventStream(keepalive=None, buffer=None, batch=True)
    body = iter(stream)
    next(body)
    big = Event("x" * 40_000).frame
    small = Event("y").frame
    for frame in (small, big, big, small, Event("z" * 100_000).frame):
        stream.send(frame)
    stream.close()
    chunks = list(body)
    assert b"".join(chunks) == small + big + big + small + Event("z" * 100_000).frame
    assert [len(c) for c in chunks[:-1]] == [len(small + big), len(big + small)]
    assert chunks[-1] == Event("z" * 100_000).frame  # larger than a batch: alone, whole
    for chunk in chunks:  # every chunk is whole frames
        assert parse_events([chunk]) and chunk.endswith(b"\n\n")


def test_without_batching_each_frame_is_its_own_chunk() -> None:
    stream = EventStream(keepalive=None, batch=False)
    body = iter(stream)
    next(body)
    for n in range(3):
        stream.send(Event(n))
    stream.close()
    assert list(body) == [Event(n).frame for n in range(3)]
