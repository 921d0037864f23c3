"""The stream worker (``-k flask_sse_flush.wsgi.worker.StreamWorker``) for real.

Its streams run through the whole real-server matrix (``gunicorn-stream``
in ``tests/conftest.py``), and ``make test-stream-worker`` runs the whole
suite on it. These tests look at what only it does: the stream really is
parked (no greenlet holds it), a hang-up lets it go at once, keepalives
and rotation come from the worker's timer wheel, a slow client's socket fills and
drains without losing a frame, and an idle stream costs less memory than a
greenlet's.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flask_sse_flush import Event
from flask_sse_flush.testing import parse_events
from tests.timing import assert_under

from .support import (
    HOST,
    WORKER_ENV,
    RawResponse,
    Server,
    check_keepalives_follow_the_last_write,
    raw_get,
    rss_kib,
    running_server,
    worker_pids,
)
from .test_leaks import Cycles
from .test_metrics import scrape


@pytest.fixture(scope="module")
def stream_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server("gunicorn-stream", tmp_path_factory.mktemp("stream-worker")) as server:
        yield server


def parked(server: Server) -> int | None:
    with raw_get(server.port, "/__parked") as response:
        n: int | None = response.json()["n"]
        return n


def read_ticks(response: RawResponse, count: int) -> list[Event]:
    """The next ``count`` ``tick`` events of ``response`` (fewer if it ends first)."""
    events: list[Event] = []
    for chunk in response.body_chunks():
        events += [e for e in parse_events([chunk]) if e.event == "tick"]
        if len(events) >= count:
            break
    return events


def wait_for_parked(server: Server, count: int, timeout: float = 5.0) -> float:
    """Seconds until the worker holds ``count`` parked streams."""
    started = time.monotonic()
    while parked(server) != count:
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{parked(server)} parked streams, not {count}")
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_stream_is_parked_and_let_go_as_soon_as_its_client_hangs_up(
    stream_server: Server,
) -> None:
    with raw_get(stream_server.port, "/idle?keepalive=30") as response:
        assert response.status == 200
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["connection"] == "close"
        wait_for_parked(stream_server, 1)
        with raw_get(stream_server.port, "/idle/send?count=3") as sent:
            assert sent.json() == {"streams": 1}
        assert [e.json()["i"] for e in read_ticks(response, 3)] == [0, 1, 2]
    # The loop's read watcher sees the hang-up: no keepalive write needed.
    assert_under(wait_for_parked(stream_server, 0), 1.0, "parked stream let go after a hang-up (s)")


def test_a_parked_stream_ends_with_its_close_and_the_connection_with_it(
    stream_server: Server,
) -> None:
    with raw_get(stream_server.port, "/idle") as response:
        wait_for_parked(stream_server, 1)
        with raw_get(stream_server.port, "/idle/send?count=2&close=1"):
            pass
        body = response.body()  # the last chunk came, then the server closed
        assert response.sock.recv(1) == b""
    assert [e.event for e in parse_events([body])] == ["tick", "tick"]
    assert parked(stream_server) == 0


def test_keepalives_and_rotation_come_from_the_loop(stream_server: Server) -> None:
    with raw_get(stream_server.port, "/idle?keepalive=0.3&max_seconds=1.2") as response:
        opened = time.monotonic()
        arrivals = []
        for chunk in response.body_chunks():
            arrivals.append((time.monotonic() - opened, chunk))
    keepalives = [at for at, chunk in arrivals if chunk == b": keepalive\n\n"]
    assert 2 <= len(keepalives) <= 4, arrivals
    assert 0.2 <= keepalives[0] <= 0.8, arrivals
    assert arrivals[-1][1].startswith(b"retry: "), arrivals  # rotated, with a hint
    assert 1.1 <= arrivals[-1][0] <= 2.5, arrivals


def test_keepalives_follow_each_streams_last_write(stream_server: Server) -> None:
    """The worker's timer wheel: a stream written to more often than its
    keepalive period gets no keepalive; once silent, it gets one each period
    after its last write, never sooner, with other parked streams waiting on
    the same wheel; and a stream that ends leaves nothing on it."""
    keepalive = 0.4
    with contextlib.ExitStack() as stack:
        others = [
            stack.enter_context(raw_get(stream_server.port, f"/idle?keepalive={keepalive}"))
            for _ in range(20)
        ]
        watched = stack.enter_context(raw_get(stream_server.port, f"/idle?keepalive={keepalive}"))
        wait_for_parked(stream_server, len(others) + 1)
        check_keepalives_follow_the_last_write(stream_server, watched, keepalive)
    wait_for_parked(stream_server, 0)


def test_a_slow_client_gets_every_frame_once_its_socket_drains(stream_server: Server) -> None:
    count = 10_000  # 10 MB: more than the kernel's buffers hold on either side
    path = f"/burst?count={count}&pad=1000"
    with raw_get(stream_server.port, path, rcvbuf=4096) as response:
        time.sleep(1.0)  # the socket is full: the rest waits in the stream's queue
        assert parked(stream_server) == 1
        events = parse_events(response.body_chunks())
    assert [e.json()["i"] for e in events] == list(range(count))
    wait_for_parked(stream_server, 0)


def test_a_frame_written_at_once_never_overtakes_one_queued_before_it(
    stream_server: Server,
) -> None:
    """The fast path (a frame written in the publisher's own call) keeps causal order.

    A native thread's frame waits for the loop; a frame sent on the hub
    after it (and because of it) must not be written first, however soon
    the loop runs.
    """
    count = 200
    with raw_get(stream_server.port, "/idle?keepalive=30") as response:
        wait_for_parked(stream_server, 1)
        with raw_get(stream_server.port, f"/idle/handoff?count={count}") as sent:
            assert sent.json() == {"streams": 1}
        events = [e.json() for e in parse_events(response.body_chunks()) if e.event == "tick"]
    expected = [{"from": source, "i": i} for i in range(count) for source in ("native", "hub")]
    assert events == expected


def test_clients_gone_before_the_opening_frame_leave_the_worker_standing(
    stream_server: Server,
) -> None:
    """Clients that hang up at every point, some before their stream is parked.

    A client that closes as soon as it has asked gets the head, its kernel
    answers with a reset, and the opening frame's write fails inside the
    park, before the worker holds the stream. That stream must still be
    closed: left open, its hang-up watcher outlived the descriptor, which
    the next connection reused, and libev aborted the whole worker.
    """
    (pid,) = worker_pids(stream_server)
    wait_for_parked(stream_server, 0)
    before = len(os.listdir(f"/proc/{pid}/fd"))
    body = json.dumps({"steps": 1, "interval": 30}).encode()
    with raw_get(stream_server.port, "/short/render", method="POST", body=body) as response:
        long_job = response.json()["id"]  # streams attached to it stay open: parked
    # Clients that hang up at every point: mid-request, before the head,
    # after the opening frame, mid-stream (seeded: the same every run).
    Cycles(stream_server.port, long_job, seed=7).run(300)
    assert worker_pids(stream_server) == [pid], "the worker died and gunicorn replaced it"
    wait_for_parked(stream_server, 0)
    deadline = time.monotonic() + 5
    while len(os.listdir(f"/proc/{pid}/fd")) > before + 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(os.listdir(f"/proc/{pid}/fd")) <= before + 5, "descriptors were left open"


def _rss_per_stream(kind: str, folder: Path, streams: int) -> float:
    folder.mkdir()
    options = ["--worker-connections", str(streams + 100)]
    with running_server(kind, folder, options=options) as server:
        (pid,) = worker_pids(server)
        with contextlib.ExitStack() as stack:
            for _ in range(20):  # warm up the code paths before the baseline
                stack.enter_context(raw_get(server.port, "/idle"))
        time.sleep(0.5)
        before = rss_kib(pid)
        socks = []
        try:
            for _ in range(streams):
                sock = socket.create_connection((HOST, server.port), 10)
                sock.sendall(b"GET /idle HTTP/1.1\r\nHost: x\r\n\r\n")
                socks.append(sock)
            for sock in socks:  # every stream is open: its head and opening frame came
                sock.settimeout(10)
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            time.sleep(0.5)
            return (rss_kib(pid) - before) / streams
        finally:
            for sock in socks:
                sock.close()


def test_an_idle_parked_stream_costs_less_memory_than_a_greenlet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(WORKER_ENV, raising=False)  # gunicorn-gevent is -k gevent here
    streams = 1500
    greenlet = _rss_per_stream("gunicorn-gevent", tmp_path / "gevent", streams)
    parked_ = _rss_per_stream("gunicorn-stream", tmp_path / "stream", streams)
    print(f"KiB per idle stream: {greenlet:.1f} under -k gevent, {parked_:.1f} parked")
    # Measured here: about 18 KiB a stream under -k gevent, 5 to 6 KiB parked.
    assert parked_ < greenlet * 0.6, (parked_, greenlet)


def test_frames_written_at_once_are_counted_in_the_metrics_as_waiting_nothing(
    stream_server: Server,
) -> None:
    with raw_get(stream_server.port, "/idle?keepalive=30") as response:
        wait_for_parked(stream_server, 1)
        before = scrape(stream_server)
        # Sent from the request's greenlet, on the hub: written in the send itself.
        with raw_get(stream_server.port, "/idle/send?count=5") as sent:
            assert sent.json() == {"streams": 1}
        assert len(read_ticks(response, 5)) == 5
        after = scrape(stream_server)
    assert after["sse_flush_events_sent_total"] - before["sse_flush_events_sent_total"] == 5
    count = "sse_flush_event_queue_seconds_count"
    assert after[count] - before.get(count, 0) == 5
    first = 'sse_flush_event_queue_seconds_bucket{le="0.0005"}'
    assert after[first] - before.get(first, 0) == 5
