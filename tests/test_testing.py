"""``flask_sse_flush.testing``: reading events from every kind of source."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Generator, Iterator
from typing import cast

import pytest
from flask import Flask
from werkzeug.wrappers import Response

from flask_sse_flush import Event, EventStream
from flask_sse_flush.testing import iter_chunks, iter_events, parse_events

STREAM = b'event: progress\nid: j-1\ndata: {"progress":5}\n\n: keepalive\n\ndata: b\xc3\xa9\n\n'
EXPECTED = [
    Event('{"progress":5}', event="progress", id="j-1"),
    Event("bé"),
]


def closeable(source: object) -> Generator[Event, None, None]:
    """``iter_events(source)``, typed with the ``close()`` it documents."""
    return cast("Generator[Event, None, None]", iter_events(source))


class ClosingIterable:
    """An iterable of chunks that records how far it was read and if closed."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.produced = 0
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.produced += 1
            yield chunk

    def close(self) -> None:
        self.closed = True


class BytesSource:
    """An httpx-like response: ``iter_bytes()`` and ``close()``."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.closed = False

    def iter_bytes(self) -> Iterator[bytes]:
        yield from self.chunks

    def close(self) -> None:
        self.closed = True


def test_parse_events_on_bytes() -> None:
    assert parse_events(STREAM) == EXPECTED


def test_parse_events_on_str() -> None:
    assert parse_events(STREAM.decode()) == EXPECTED


def test_parse_events_on_bytearray() -> None:
    assert parse_events(bytearray(STREAM)) == EXPECTED


def test_parse_events_on_byte_chunks_split_anywhere() -> None:
    # Split inside a field name, inside "é" (a two-byte sequence) and
    # between the two newlines that end a frame.
    cuts = [3, STREAM.index(b"\n\n") + 1, STREAM.index(b"\xa9"), len(STREAM) - 1]
    points = [0, *cuts, len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(points)]
    assert chunks[1].endswith(b"\n") and chunks[2].startswith(b"\n")
    assert b"".join(chunks) == STREAM
    assert parse_events(chunks) == EXPECTED
    assert parse_events([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


def test_parse_events_on_str_chunks() -> None:
    assert parse_events(["data: a", "\n\nda", "ta: é\n\n"]) == [Event("a"), Event("é")]


def test_parse_events_on_a_werkzeug_response() -> None:
    response = Response([STREAM[:10], STREAM[10:]], mimetype="text/event-stream")
    closed: list[bool] = []
    response.call_on_close(lambda: closed.append(True))
    assert parse_events(response) == EXPECTED
    assert closed == [True]


def test_parse_events_on_a_str_werkzeug_response() -> None:
    response = Response(["data: é\n", "\n"], mimetype="text/event-stream")
    assert parse_events(response) == [Event("é")]


def test_parse_events_on_an_object_with_iter_bytes() -> None:
    source = BytesSource([STREAM[:25], STREAM[25:]])
    assert parse_events(source) == EXPECTED
    assert source.closed


def test_parse_events_skips_comments_and_retry_only_frames() -> None:
    assert parse_events(b": open\n\nretry: 100\n\n:keepalive\n\ndata: x\n\n") == [Event("x")]


def test_parse_events_drops_an_unfinished_last_event() -> None:
    assert parse_events(b"data: a\n\ndata: b\n") == [Event("a")]


def test_iter_chunks_keeps_the_chunks_as_given() -> None:
    chunks = [b"data: a\n", b"\n", b"data: b\n\n"]
    assert list(iter_chunks(chunks)) == chunks
    assert list(iter_chunks(Response(chunks))) == chunks
    assert list(iter_chunks("é")) == ["é".encode()]


def test_iter_events_is_incremental_on_a_generator() -> None:
    progress: list[str] = []

    def source() -> Iterator[bytes]:
        progress.append("first chunk")
        yield b"data: one\n\n"
        progress.append("second chunk")
        yield b"data: two\n\n"
        progress.append("end")

    events = closeable(source())
    assert progress == []  # nothing read before it is asked for
    assert next(events) == Event("one")
    assert progress == ["first chunk"]
    assert next(events) == Event("two")
    assert progress == ["first chunk", "second chunk"]
    with pytest.raises(StopIteration):
        next(events)
    assert progress == ["first chunk", "second chunk", "end"]


def test_iter_events_yields_each_event_of_a_chunk_before_reading_on() -> None:
    source = ClosingIterable([b"data: a\n\ndata: b\n\n", b"data: c\n\n"])
    events = closeable(source)
    assert next(events) == Event("a")
    assert next(events) == Event("b")
    assert source.produced == 1
    assert list(events) == [Event("c")]


def test_closing_iter_events_early_closes_the_source() -> None:
    source = ClosingIterable([b"data: a\n\n", b"data: b\n\n", b"data: c\n\n"])
    events = closeable(source)
    assert next(events) == Event("a")
    assert not source.closed
    events.close()
    assert source.closed
    assert source.produced == 1


def test_breaking_out_of_a_loop_closes_a_generator_source() -> None:
    finished: list[bool] = []

    def source() -> Iterator[bytes]:
        try:
            yield b"data: a\n\n"
            yield b"data: b\n\n"
        finally:
            finished.append(True)

    events = closeable(source())
    for event in events:
        assert event == Event("a")
        break
    events.close()
    assert finished == [True]


def test_closing_iter_events_early_closes_a_werkzeug_response() -> None:
    closed: list[bool] = []
    response = Response([b"data: a\n\n", b"data: b\n\n"])
    response.call_on_close(lambda: closed.append(True))
    events = closeable(response)
    assert next(events) == Event("a")
    assert closed == []
    events.close()
    assert closed == [True]


def test_iter_events_on_an_iter_bytes_source_closes_it_early() -> None:
    source = BytesSource([b"data: a\n\n", b"data: b\n\n"])
    events = closeable(source)
    assert next(events) == Event("a")
    events.close()
    assert source.closed


def test_iter_events_reads_a_live_flask_stream_incrementally() -> None:
    stream = EventStream(keepalive=None)
    app = Flask(__name__)

    @app.get("/events")
    def events_view() -> Response:
        return stream.response()

    # Safety net: if events were only read at the end, this ends the stream
    # (and the assertions below fail) instead of hanging the test run.
    safety = threading.Timer(5.0, stream.close)
    safety.start()
    try:
        response = app.test_client().get("/events", buffered=False)
        assert response.status_code == 200
        assert response.mimetype == "text/event-stream"
        events = closeable(response)
        stream.send(Event({"progress": 1}, event="progress", id="j-1"))
        first = next(events)
        assert not stream.closed, "the first event came only after the stream ended"
        assert first == Event('{"progress":1}', event="progress", id="j-1")
        stream.send(Event("second"))
        assert next(events) == Event("second")
        stream.close()
        assert list(events) == []
    finally:
        safety.cancel()
        stream.close()


def test_breaking_out_of_a_live_flask_stream_ends_the_server_side() -> None:
    stream = EventStream(keepalive=None)
    ended: list[bool] = []
    stream.on_close(lambda: ended.append(True))
    app = Flask(__name__)

    @app.get("/events")
    def events_view() -> Response:
        return stream.response()

    safety = threading.Timer(5.0, stream.close)
    safety.start()
    try:
        response = app.test_client().get("/events", buffered=False)
        events = closeable(response)
        stream.send(Event("a"))
        assert next(events) == Event("a")
        events.close()
        assert ended == [True]
        assert stream.closed
    finally:
        safety.cancel()
        stream.close()


def test_a_redis_server_whose_port_is_taken_before_it_starts_takes_another() -> None:
    import socket
    import subprocess

    from flask_sse_flush.testing import RedisCluster, RedisServer

    for server in (RedisServer(), RedisCluster().nodes[0]):  # a node has a bus port too
        ports = [server.port, getattr(server, "bus_port", server.port)]
        with socket.socket() as first, socket.socket() as second:
            # Another process bound the chosen ports first.
            first.bind(("127.0.0.1", ports[0]))
            first.listen()
            if ports[1] != ports[0]:
                second.bind(("127.0.0.1", ports[1]))
                second.listen()
            with server:
                assert server.port != ports[0]
                answer = subprocess.run(
                    ["redis-cli", "-p", str(server.port), "PING"], capture_output=True, text=True
                )
                assert answer.stdout.strip() == "PONG"


def test_a_redis_server_that_served_keeps_its_port_on_a_restart() -> None:
    import socket

    from flask_sse_flush.testing import RedisServer

    with RedisServer() as server:
        port = server.port
        server.stop()
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", port))
            taken.listen()
            with pytest.raises(RuntimeError, match=f"could not bind port {port}"):
                server.start()
        server.start()
        assert server.port == port
