"""A client that reads slower than events are sent cannot grow memory without bound.

Progress is a level, not a log: once more than ``buffer`` events wait, only
the newest waiting progress event is kept. Every other event (``complete``,
``error``, custom events) is delivered, in order.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest

from flask_sse_flush import Event, EventStream, StreamClosed
from flask_sse_flush.brokers import MemoryBroker
from flask_sse_flush.runtime import Empty, new_channel
from flask_sse_flush.wire.frames import decode_events, newest_of_each_level
from flask_sse_flush.wsgi.stream import KEEPALIVE

TIMEOUT = 5.0


def progress(n: int) -> Event:
    return Event({"progress": n % 101, "n": n}, event="progress", id=f"job-{n}")


def drain(stream: EventStream, limit: int = 10_000) -> list[Event]:
    """Read a closed stream's body to its end; fail rather than hang."""
    frames: list[bytes] = []
    body: Iterator[bytes] = iter(stream)
    for frame in body:
        assert frame != KEEPALIVE, "the stream was closed, yet its body waited"
        frames.append(frame)
        assert len(frames) <= limit
    return list(decode_events(frames[1:]))  # frames[0] is the opening frame


def seq(event: Event) -> int:
    assert event.id is not None
    return int(event.id.rpartition("-")[2])


def test_unread_progress_is_coalesced_to_the_newest() -> None:
    stream = EventStream(keepalive=0.5, buffer=8)
    most = 0
    for n in range(1, 1001):
        stream.send(progress(n))
        most = max(most, stream.pending)
    assert most <= 9
    assert 1 <= stream.pending <= 9
    stream.close()
    events = drain(stream)
    assert 1 <= len(events) <= 9
    assert all(e.event == "progress" for e in events)
    assert [seq(e) for e in events] == sorted({seq(e) for e in events})
    assert events[-1].json() == {"progress": 1000 % 101, "n": 1000}


def test_coalescing_never_drops_other_events() -> None:
    stream = EventStream(keepalive=0.5, buffer=8)
    sent_others: list[Event] = []
    n = 0
    for i in range(1000):
        n += 1
        stream.send(progress(n))
        if i % 100 == 50:
            n += 1
            note = Event(f"note {i}", event="note", id=f"job-{n}")
            sent_others.append(note)
            stream.send(note)
        # Bounded by what cannot be coalesced, plus the buffer.
        assert stream.pending <= len(sent_others) + 9
    last_progress = n
    n += 1
    complete = Event({"filename": "f", "url": "u"}, event="complete", id=f"job-{n}")
    sent_others.append(complete)
    stream.send(complete)
    assert stream.pending <= len(sent_others) + 9
    stream.close()

    events = drain(stream)
    others = [e for e in events if e.event != "progress"]
    assert [(e.event, e.id, e.text) for e in others] == [
        (e.event, e.id, e.text) for e in sent_others
    ]
    assert events[-1].event == "complete"
    # Nothing is reordered: ids only grow, and the newest progress is there,
    # just before the complete event.
    numbers = [seq(e) for e in events]
    assert numbers == sorted(set(numbers))
    assert events[-2].event == "progress"
    assert seq(events[-2]) == last_progress
    assert len(events) < 1000 // 2


def test_each_coalesced_event_type_keeps_its_own_newest() -> None:
    stream = EventStream(keepalive=0.5, buffer=4, coalesce=("progress", "tick"))
    for n in range(1, 101):
        stream.send(Event(str(n), event="progress"))
        stream.send(Event(str(-n), event="tick"))
    assert stream.pending <= 5
    stream.close()
    events = drain(stream)
    assert [e for e in events if e.event == "progress"][-1].data == "100"
    assert [e for e in events if e.event == "tick"][-1].data == "-100"


def test_raw_frames_are_never_coalesced() -> None:
    stream = EventStream(keepalive=0.5, buffer=16)
    for n in range(50):
        stream.send(b"event: progress\ndata: %d\n\n" % n)
    assert stream.pending == 50
    stream.close()
    assert [e.data for e in drain(stream)] == [str(n) for n in range(50)]


def test_no_buffer_bound_never_drops() -> None:
    stream = EventStream(keepalive=0.5, buffer=None)
    for n in range(1, 1001):
        stream.send(progress(n))
    assert stream.pending == 1000
    stream.close()
    assert [seq(e) for e in drain(stream, limit=2000)] == list(range(1, 1001))


def test_up_to_buffer_waiting_events_are_all_delivered() -> None:
    # Coalescing starts only once *more than* `buffer` events wait; closing
    # the stream adds no event, so it must not trigger coalescing either.
    stream = EventStream(keepalive=0.5, buffer=8)
    for n in range(1, 9):
        stream.send(progress(n))
    assert stream.pending == 8
    stream.close()
    assert [seq(e) for e in drain(stream)] == list(range(1, 9))


# -- the channel underneath -------------------------------------------------------


def take_all(channel: object) -> list[object]:
    items: list[object] = []
    while True:
        try:
            items.append(channel.get(0))  # type: ignore[attr-defined]
        except Empty:
            return items


def test_channel_coalesces_each_level_and_keeps_plain_items() -> None:
    channel = new_channel(limit=4)
    try:
        plain: list[object] = []
        for n in range(1, 201):
            channel.put(("a", n), level="a")
            channel.put(("b", n), level="b")
            if n % 40 == 0:
                plain.append(("plain", n))
                channel.put(("plain", n))
            assert channel.pending() <= len(plain) + 4 + 1
        items = take_all(channel)
    finally:
        channel.close()
    assert [item for item in items if item[0] == "plain"] == plain  # type: ignore[index]
    a = [item for item in items if item[0] == "a"]  # type: ignore[index]
    b = [item for item in items if item[0] == "b"]  # type: ignore[index]
    assert a[-1] == ("a", 200) and b[-1] == ("b", 200)
    assert a == sorted(set(a)) and b == sorted(set(b))  # type: ignore[type-var]
    assert len(items) < 50


def test_channel_does_not_coalesce_up_to_its_limit() -> None:
    channel = new_channel(limit=4)
    try:
        for n in range(4):
            channel.put(n, level="a")
        assert channel.pending() == 4
        assert take_all(channel) == [0, 1, 2, 3]
        with pytest.raises(Empty):
            channel.get(0.01)
    finally:
        channel.close()


@pytest.mark.parametrize("limit", [0, -1])
def test_channel_limit_must_be_positive(limit: int) -> None:
    with pytest.raises(ValueError):
        new_channel(limit=limit)


def test_channel_with_a_concurrent_reader_ends_with_the_newest_level() -> None:
    channel = new_channel(limit=4)
    done = object()
    got: list[object] = []

    def read() -> None:
        while True:
            try:
                item = channel.get(TIMEOUT)
            except Empty:  # pragma: no cover - the assertion below reports it
                return
            if item is done:
                return
            got.append(item)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(1, 10_001):
            channel.put(n, level="progress")
        channel.put(done)
    finally:
        reader.join(TIMEOUT)
        channel.close()
    assert not reader.is_alive()
    assert got[-1] == 10_000
    assert got == sorted(set(got))  # type: ignore[type-var]


# -- the hard bound: a client too slow for its stream -----------------------------


def closed_as_slow_client() -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value("sse_flush_streams_closed_total", {"reason": "slow_client"})
    return value or 0.0


def test_a_client_that_stops_reading_ends_as_too_slow_past_four_buffers() -> None:
    # Frames that cannot be coalesced may wait up to 4 x buffer; one more
    # ends the stream instead of growing the worker.
    before = closed_as_slow_client()
    stream = EventStream(keepalive=0.5, buffer=8)
    body = iter(stream)
    next(body)  # the opening frame: the client read that much, then stopped
    sent = 0
    with pytest.raises(StreamClosed):
        for n in range(1, 10_001):
            stream.send(Event(f"note {n}", event="note", id=f"job-{n}"))
            sent = n
            assert stream.pending <= 4 * 8
    assert sent == 4 * 8
    assert stream.closed and stream.too_slow
    assert stream.pending == 0  # what waited is let go at once
    with pytest.raises(StreamClosed):
        stream.send(progress(1))
    # The body ends (the client reconnects with its Last-Event-ID) and says
    # nothing it had queued: those events come again from the log.
    assert list(body) == []
    assert closed_as_slow_client() - before == 1


def test_levels_never_count_towards_the_slow_client_bound() -> None:
    stream = EventStream(keepalive=0.5, buffer=2)
    for n in range(1, 10_001):
        stream.send(progress(n))
    for n in range(4 * 2):
        stream.send(Event(f"note {n}", event="note"))
    assert not stream.closed
    stream.close()
    events = drain(stream)
    assert [e.data for e in events if e.event == "note"] == [f"note {n}" for n in range(8)]


def test_a_slow_client_resumes_from_the_log_and_misses_nothing() -> None:
    # With a broker: the slow stream is dropped from the job's fan-out; a
    # reconnect after its Last-Event-ID replays every event, the complete
    # event included, exactly once.
    broker = MemoryBroker()
    broker.create("job")
    slow = EventStream(keepalive=0.5, buffer=4)
    broker.subscribe("job", slow)
    body = iter(slow)
    next(body)
    total = 200
    for n in range(1, total + 1):
        final = n == total
        name = "complete" if final else ("progress" if n % 2 else "note")
        event = Event({"n": n}, event=name, id=f"job-{n}")
        broker.publish("job", n, event, final=final)
        if n <= 3:
            (got,) = decode_events([next(body)])  # the client reads the first three
            assert got.id == f"job-{n}"
    assert slow.closed and slow.too_slow
    assert broker.subscribers("job") == 0  # the fan-out forgot it
    assert list(body) == []

    resumed = EventStream(keepalive=0.5, buffer=None)
    broker.subscribe("job", resumed, after=3)
    events = drain(resumed, limit=total)
    assert [seq(e) for e in events] == list(range(4, total + 1))
    assert events[-1].event == "complete"


def test_channel_overflows_past_its_bound_of_plain_items() -> None:
    from flask_sse_flush.runtime import Overflow

    channel = new_channel(limit=4, overflow=16)
    try:
        for n in range(100):
            channel.put(n, level="a")
        for n in range(16):
            channel.put(n)
        assert channel.pending() <= 16 + 4 + 1
        with pytest.raises(Overflow):
            channel.put(16)
        assert channel.pending() == 0
        with pytest.raises(Overflow):
            channel.get(0)
        with pytest.raises(Overflow):
            channel.put(17, level="a")
    finally:
        channel.close()


def test_a_channel_stays_first_in_first_out_through_reads_cuts_and_coalescing() -> None:
    # Random puts (levels and plain items, with stamps) and reads: the
    # channel must give exactly what a plain model gives, whichever of its
    # paths (caught up, cut after a long read, coalesced) each read takes.
    rng = random.Random(7)
    channel = new_channel(limit=50, overflow=None)
    model: list[tuple[bytes, str | None, float]] = []
    n = 0
    for _ in range(20_000):
        if rng.random() < 0.55:
            n += 1
            level = rng.choice([None, None, "progress", "phase"])
            item = b"item%d" % n  # bytes: a batch counts their length
            channel.put(item, level, float(n))
            model.append((item, level, float(n)))
            if level is not None and len(model) > 50:
                keep = newest_of_each_level([lv for _, lv, _ in model])
                model = [model[i] for i in keep]
        elif model:
            if rng.random() < 0.5:
                got = channel.get(0)
                expected = model.pop(0)
                assert got == expected[0] and channel.stamp == expected[2]
            else:
                stamps: list[float | None] = []
                taken = channel.get_ready(rng.randint(1, 40), stamps)
                assert taken and sum(map(len, taken)) <= max(40, len(taken[0]))
                assert taken == [item for item, _, _ in model[: len(taken)]]
                assert stamps == [stamp for _, _, stamp in model[: len(taken)]]
                del model[: len(taken)]
        assert channel.pending() == len(model)
    while model:
        assert channel.get(0) == model.pop(0)[0]
    with pytest.raises(Empty):
        channel.get(0)
