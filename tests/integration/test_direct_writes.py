"""Frames written in the publisher's own call under ``gunicorn -k gevent``, for real.

While a stream's greenlet waits, a frame published on the hub goes to its
socket at once (``flask_sse_flush.wsgi.direct``). These tests look at what
that must never change: the frame is on the wire before the publish
returns, order holds against frames queued before it (a native thread's,
or one a middleware holds back), a socket that takes a frame only in part
loses nothing, and keepalives still follow each stream's last write.
"""

from __future__ import annotations

import contextlib
import select
import time
from collections.abc import Iterable, Iterator

import pytest

from flask_sse_flush import Event
from flask_sse_flush.testing import parse_events

from .support import (
    WORKER_ENV,
    RawResponse,
    Server,
    check_keepalives_follow_the_last_write,
    raw_get,
    running_server,
)


@pytest.fixture(scope="module")
def gevent_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server("gunicorn-gevent", tmp_path_factory.mktemp("direct")) as server:
        yield server


def ticks(response: RawResponse) -> list[Event]:
    return ticks_of(response.body_chunks())


def ticks_of(chunks: Iterable[bytes]) -> list[Event]:
    return [e for e in parse_events(chunks) if e.event == "tick"]


def wait_for_streams(server: Server, count: int) -> None:
    """Until ``count`` ``/idle`` streams are open (``/idle/send?count=0`` sends nothing)."""
    deadline = time.monotonic() + 5
    while True:
        with raw_get(server.port, "/idle/send?count=0") as sent:
            if sent.json()["streams"] == count:
                return
        assert time.monotonic() < deadline, f"not {count} idle streams"
        time.sleep(0.02)


def test_a_broadcast_from_a_request_is_on_the_wire_before_the_request_answers(
    gevent_server: Server,
) -> None:
    """Each frame went out in the publisher's own call, not after its greenlet woke."""
    count = 200
    with contextlib.ExitStack() as stack:
        streams = [
            stack.enter_context(raw_get(gevent_server.port, "/idle?keepalive=30"))
            for _ in range(count)
        ]
        for response in streams:
            assert next(response.body_chunks()).endswith(b": stream open\n\n")
        wait_for_streams(gevent_server, count)
        with raw_get(gevent_server.port, "/idle/send?count=1") as sent:
            assert sent.json() == {"streams": count}
        # Loopback delivers a send() before it returns: a frame written
        # during the publish is readable now, on every socket.
        readable, _, _ = select.select([r.sock for r in streams], [], [], 0)
        assert len(readable) == count
        with raw_get(gevent_server.port, "/idle/send?count=0&close=1"):
            pass
        for response in streams:
            assert [e.json()["i"] for e in ticks(response)] == [0]


def test_a_frame_written_at_once_never_overtakes_a_native_threads_queued_before_it(
    gevent_server: Server,
) -> None:
    count = 200
    with raw_get(gevent_server.port, "/idle?keepalive=30") as response:
        wait_for_streams(gevent_server, 1)
        with raw_get(gevent_server.port, f"/idle/handoff?count={count}") as sent:
            assert sent.json() == {"streams": 1}
        events = [e.json() for e in ticks(response)]
    expected = [{"from": source, "i": i} for i in range(count) for source in ("native", "hub")]
    assert events == expected


def test_a_middleware_holding_the_body_back_keeps_its_order(gevent_server: Server) -> None:
    """Once something between the body and gunicorn holds a frame, frames
    published on the hub no longer go out directly: they would overtake it."""
    with raw_get(gevent_server.port, "/held/idle?keepalive=30") as response:
        assert next(response.body_chunks()).endswith(b": stream open\n\n")
        wait_for_streams(gevent_server, 1)
        # Queued by a native thread: the stream's greenlet takes it, and the
        # middleware keeps it until the next chunk.
        with raw_get(gevent_server.port, "/idle/send?count=1&from=native") as sent:
            assert sent.json() == {"streams": 1}
        time.sleep(0.2)
        readable, _, _ = select.select([response.sock], [], [], 0)
        assert not readable, "the middleware holds the native thread's frame"
        with raw_get(gevent_server.port, "/idle/send?count=2&close=1") as sent:
            assert sent.json() == {"streams": 1}
        events = [e.json()["from"] for e in ticks(response)]
    assert events == ["native", "here", "here"]


@pytest.mark.parametrize(("count", "pad"), [(10_000, 1000), (200, 100_000)])
def test_a_frame_the_socket_takes_in_part_loses_nothing(
    gevent_server: Server, count: int, pad: int
) -> None:
    """A greenlet's burst (``threading.Thread`` under gevent), begun while the
    stream waits, fills a slow client's socket: a frame goes out in part
    (large frames always do), the greenlet finishes it, and every frame
    arrives whole and in order."""
    # 10 and 20 MB: more than the kernel's buffers hold on either side.
    path = f"/burst?count={count}&pad={pad}&after=0.2"
    with raw_get(gevent_server.port, path, rcvbuf=4096) as response:
        time.sleep(1.0)  # the socket is full
        events = parse_events(response.body_chunks())
    assert [e.json()["i"] for e in events] == list(range(count))


def test_a_stream_too_slow_for_its_buffer_still_ends_on_a_whole_frame(
    gevent_server: Server,
) -> None:
    """The socket took the first frame in part; the burst behind it passes the
    stream's bound before the greenlet runs, so the stream ends as too slow.
    The rest of that frame still goes out, then the end of the body: the
    client never sees a cut frame, nor waits for the rest of one."""
    path = "/burst?count=50&pad=200000&after=0.2&buffer=2"
    with raw_get(gevent_server.port, path, rcvbuf=4096) as response:
        time.sleep(1.0)  # the socket is full, the stream overflowed
        chunks = list(response.body_chunks())
        assert response._done, "the body did not end with its last chunk"
    events = parse_events(chunks)
    assert events, "not even the first frame"
    assert [e.json()["i"] for e in events] == list(range(len(events)))
    assert all(len(e.json()["pad"]) == 200_000 for e in events)
    assert len(events) < 50, "the stream should have ended as too slow"


def test_no_greenlet_wakes_for_a_keepalive_busy_or_idle(gevent_server: Server) -> None:
    """While streams are busier than their keepalive, then silent for several
    periods, their greenlets sleep on: the hub's timer wheel times each
    silence and writes each keepalive itself (each stream still gets its own)."""
    count, keepalive, silence = 300, 0.2, 1.6
    with contextlib.ExitStack() as stack:
        streams = [
            stack.enter_context(raw_get(gevent_server.port, f"/idle?keepalive={keepalive}"))
            for _ in range(count)
        ]
        wait_for_streams(gevent_server, count)
        with raw_get(gevent_server.port, "/__switches/start") as started:
            assert started.status == 200
        try:
            busy_until = time.monotonic() + 1.0
            while time.monotonic() < busy_until:
                with raw_get(gevent_server.port, "/idle/send") as sent:
                    assert sent.json() == {"streams": count}
                time.sleep(keepalive / 4)
            silent = time.monotonic()
            time.sleep(silence)
        finally:
            with raw_get(gevent_server.port, "/__switches/stop") as stopped:
                switches = stopped.json()["n"]
        with raw_get(gevent_server.port, "/idle/send?count=0&close=1"):
            pass
        silence = time.monotonic() - silent  # to the closing frame, which reads end
        keepalives = [
            sum(chunk == b": keepalive\n\n" for chunk in response.body_chunks())
            for response in streams
        ]
    # A greenlet woken per keepalive period, as each used to be, makes
    # thousands of switches here (300 streams, 13 periods); what is left is
    # the test's own requests'.
    assert switches < count, switches
    # One a period of the silence (later by the wheel's slots, and a busy
    # machine), none while busy.
    assert min(keepalives) >= 4, keepalives
    assert max(keepalives) <= silence / keepalive + 1, (silence, keepalives)


def test_keepalives_follow_the_last_write_made_at_once(gevent_server: Server) -> None:
    """The greenlet sleeps through frames written for it; its keepalive still
    comes a whole period after the last of them, never sooner, and only then."""
    keepalive = 0.4
    with raw_get(gevent_server.port, f"/idle?keepalive={keepalive}") as watched:
        wait_for_streams(gevent_server, 1)
        check_keepalives_follow_the_last_write(gevent_server, watched, keepalive)


def test_gunicorns_access_log_counts_the_frames_written_at_once(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gunicorn's byte count (``%(B)s``) is every body byte, direct writes included.

    ``-k gevent`` only, whatever the suite runs on: the stream worker logs a
    stream's line when it parks it (a documented difference).
    """
    monkeypatch.delenv(WORKER_ENV, raising=False)
    work = tmp_path_factory.mktemp("access")
    log = work / "access.log"
    options = ["--access-logfile", str(log), "--access-logformat", "%(U)s %(B)s"]
    with running_server("gunicorn-gevent", work, options=options) as server:
        with raw_get(server.port, "/idle?keepalive=30") as response:
            wait_for_streams(server, 1)
            with raw_get(server.port, "/idle/send?count=5"):
                pass
            with raw_get(server.port, "/idle/send?count=0&close=1"):
                pass
            body = b"".join(response.body_chunks())
        assert len(ticks_of([body])) == 5
        deadline = time.monotonic() + 5
        while not log.exists() or "/idle " not in log.read_text():
            assert time.monotonic() < deadline, "no access log line for the stream"
            time.sleep(0.02)
    counts = [line.split()[1] for line in log.read_text().splitlines() if line.startswith("/idle ")]
    assert counts == [str(len(body))]
