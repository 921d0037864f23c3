"""Graceful stop of a real gunicorn worker: no stream ends silently, no job stays running.

``gunicorn -k gevent -w 2`` on a real redis-server; 50 raw-socket clients
stream their own jobs; one worker gets ``SIGTERM``. Its clients must get a
``retry:`` hint and a clean end of the chunked body, then resume on the
other worker with ``Last-Event-ID``: every id once, in order, one terminal
event. A job that cannot finish within the graceful timeout ends with an
``error`` event instead of staying ``running``. With the memory broker
(one process's store) the stopping worker keeps its streams to the end.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis

from flask_sse_flush.brokers import parse_event_id
from flask_sse_flush.testing import RedisServer
from flask_sse_flush.wire.frames import EventDecoder
from tests.timing import assert_under

from .support import Server, raw_get, running_server, stream_path, worker_pids
from .test_scale_out import TERMINAL, scaled_server


@dataclass
class Leg:
    """One connection of a client: what it got and how it ended."""

    pid: int
    status: int
    ids: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    retry: int | None = None
    clean_end: bool = False  # the chunked body's last chunk arrived
    ended_at: float = 0.0
    data: list[Any] = field(default_factory=list)


def read_leg(
    port: int,
    path: str,
    headers: dict[str, str],
    legs: list[Leg],
    started: threading.Event | None = None,
) -> Leg:
    """Read one connection to its end (terminal event, or the server ending it)."""
    with raw_get(port, path, headers, timeout=30) as response:
        leg = Leg(int(response.headers.get("x-worker-pid", "0")), response.status)
        legs.append(leg)
        if response.status != 200:
            return leg
        decoder = EventDecoder()
        for chunk in response.body_chunks():
            for event in decoder.feed(chunk):
                if event.id:
                    leg.ids.append(event.id)
                leg.names.append(event.event)
                leg.data.append(event.json() if event.data else None)
                if started is not None and len(leg.ids) >= 2:
                    started.set()
        leg.retry = decoder.retry
        leg.clean_end = response._done
        leg.ended_at = time.monotonic()
        return leg


def follow(port: int, path: str, started: threading.Event, legs: list[Leg]) -> None:
    """A client that reconnects with its ``Last-Event-ID`` until a terminal event."""
    headers: dict[str, str] = {}
    for _ in range(5):
        leg = read_leg(port, path, headers, legs, started)
        if any(name in TERMINAL for name in leg.names) or leg.status == 204:
            return
        if leg.status != 200:
            return
        last = next((i for legs_ in (legs[::-1]) for i in legs_.ids[::-1]), None)
        if last:
            headers = {"Last-Event-ID": last}
        time.sleep((leg.retry or 1000) / 1000)


def check_every_id_once(legs: list[Leg], steps: int) -> None:
    ids = [i for leg in legs for i in leg.ids]
    seqs = [parse_event_id(i)[1] for i in ids]
    assert seqs == list(range(1, len(seqs) + 1)), f"ids not once and in order: {seqs}"
    names = [n for leg in legs for n in leg.names if n in TERMINAL]
    assert len(names) == 1, f"terminal events: {names}"


def stop_worker(server: Server, pid: int) -> float:
    assert pid in worker_pids(server)
    os.kill(pid, signal.SIGTERM)
    return time.monotonic()


def job_status(port: int, job_id: str) -> dict[str, Any]:
    with raw_get(port, f"/render/{job_id}", {"Connection": "close"}) as response:
        result: dict[str, Any] = response.json()
        return result


def run_clients(
    port: int, payloads: list[dict[str, Any]]
) -> tuple[list[list[Leg]], list[threading.Thread]]:
    started = [threading.Event() for _ in payloads]
    legs: list[list[Leg]] = [[] for _ in payloads]
    threads = [
        threading.Thread(target=follow, args=(port, stream_path(p), s, out), daemon=True)
        for p, s, out in zip(payloads, started, legs, strict=True)
    ]
    for thread in threads:
        thread.start()
    for event in started:
        assert event.wait(30), "a client got no events"
    return legs, threads


def test_sigterm_sends_streams_elsewhere_and_they_resume_with_no_gap(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    clients, steps = 50, 40
    with scaled_server(
        redis_server, tmp_path, workers=2, options=["--graceful-timeout", "15"]
    ) as server:
        payloads = [{"steps": steps, "interval": 0.1} for _ in range(clients)]
        legs, threads = run_clients(server.port, payloads)
        pids = Counter(client[0].pid for client in legs)
        victim = pids.most_common(1)[0][0]
        stopped_at = stop_worker(server, victim)
        for thread in threads:
            thread.join(60)
        assert not any(t.is_alive() for t in threads), "a client never finished"

        moved = [client for client in legs if client[0].pid == victim]
        assert moved, "no client was on the stopped worker"
        for client in moved:
            first = client[0]
            assert first.clean_end, "the stream did not end with the chunked body's end"
            assert first.retry is not None and 1000 <= first.retry < 2000, first.retry
            assert not any(n in TERMINAL for n in first.names)
            assert_under(first.ended_at - stopped_at, 5.0, "SIGTERM to the stream's end (s)")
            assert len(client) >= 2 and all(leg.pid != victim for leg in client[1:])
        for client in legs:
            assert [leg.status for leg in client] == [200] * len(client)
            check_every_id_once(client, steps)
            assert client[-1].names[-1] == "complete", client[-1].names
        # The stopped worker's jobs ran to their end in it, and said so.
        job_id = parse_event_id(moved[0][0].ids[0])[0]
        assert job_status(server.port, job_id)["state"] == "complete"


def test_a_job_that_outlives_the_graceful_timeout_ends_with_an_error(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with scaled_server(
        redis_server, tmp_path, workers=2, options=["--graceful-timeout", "3"]
    ) as server:
        legs, threads = run_clients(server.port, [{"steps": 200, "interval": 0.1}] * 6)
        victim = legs[0][0].pid
        stopped_at = stop_worker(server, victim)
        for thread in threads:
            thread.join(60)
        for client in legs:
            check_every_id_once(client, 200)
            if client[0].pid != victim:
                assert client[-1].names[-1] == "complete"
                continue
            last = client[-1]
            assert last.names[-1] == "error", last.names
            assert last.data[-1] == {
                "message": "the server stopped before the render finished; start it again",
                "retry": True,
            }
            assert_under(last.ended_at - stopped_at, 6.0, "SIGTERM to the error event (s)")
            job_id = parse_event_id(client[0].ids[0])[0]
            status = job_status(server.port, job_id)
            assert status["state"] == "error", status


def start_detached(port: int, payload: dict[str, Any]) -> tuple[str, int]:
    """``POST /render``: the new job's id and the pid of the worker running it."""
    body = json.dumps(payload).encode()
    with raw_get(port, "/render", {"Connection": "close"}, method="POST", body=body) as response:
        assert response.status == 202, response.body()
        return response.json()["id"], int(response.headers["x-worker-pid"])


def wait_for_exit(pid: int, timeout: float) -> float:
    """Wait until process ``pid`` is gone (its parent reaped it); return when."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return time.monotonic()


def check_ended_by_the_stop(redis: Redis, prefix: str, job_id: str, detail: object) -> None:
    """The job is ``error`` in Redis and its log ends with the stop's ``error`` event."""
    status = redis.hgetall(f"{prefix}job:{job_id}")
    assert status.get(b"state") == b"error", (detail, status)
    [(entry_id, fields)] = redis.xrevrange(f"{prefix}log:{job_id}", count=1)
    assert entry_id == f"0-{int(status[b'final_seq'])}".encode(), (detail, status)
    [event] = EventDecoder().feed(fields[b"f"])
    assert event.event == "error", (detail, event)
    assert event.json() == {
        "message": "the server stopped before the render finished; start it again",
        "retry": True,
    }, detail


def test_a_stop_ends_a_job_that_reports_without_pause_every_time(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # The job thread holds its job's lock while the hub publishes each report
    # to Redis; the stop's deadline, on that hub, must still end the job. It
    # froze the hub instead, in every run: the job stayed "running" for ever.
    # gunicorn's --graceful-timeout 3, as the report had it: the deadline
    # comes 1.5 s after the signal, leaving room for the worker's own exit.
    grace, repeats = 3, int(os.environ.get("SSE_FLUSH_STOP_REPEATS", "5"))
    with scaled_server(
        redis_server, tmp_path, workers=1, options=["--graceful-timeout", str(grace)]
    ) as server:
        redis = Redis.from_url(redis_server.url)
        prefix = server.env["SCALED_REDIS_PREFIX"]  # type: ignore[attr-defined]
        for attempt in range(repeats):
            # gunicorn's arbiter starts a new worker after each stop; the
            # request waits in the listen queue until it accepts.
            with raw_get(server.port, stream_path({"spin": True}), timeout=30) as response:
                pid = int(response.headers["x-worker-pid"])
                arrivals = response.arrivals()
                first = next(a.event.id for a in arrivals if a.event.id)
                job_id = parse_event_id(first)[0]
                time.sleep(1.0)
                stopped_at = stop_worker(server, pid)
                names = [a.event.event for a in arrivals]  # the stop ends the stream
            assert not TERMINAL & set(names), (attempt, names[-3:])
            exited_at = wait_for_exit(pid, grace + 5)
            assert_under(exited_at - stopped_at, grace, "SIGTERM to the worker's exit (s)", attempt)
            check_ended_by_the_stop(redis, prefix, job_id, attempt)


def test_a_stop_ends_a_job_no_stream_of_the_worker_follows(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Started by POST /render, with no stream open on the worker: the stop
    # never began, and the job died with the worker, "running" for good.
    grace = 4  # the deadline 1 s before it, as above
    with scaled_server(
        redis_server, tmp_path, workers=1, options=["--graceful-timeout", str(grace)]
    ) as server:
        redis = Redis.from_url(redis_server.url)
        prefix = server.env["SCALED_REDIS_PREFIX"]  # type: ignore[attr-defined]
        job_id, pid = start_detached(server.port, {"spin": True})
        started = time.monotonic()
        while redis.hget(f"{prefix}job:{job_id}", "progress") is None:
            assert time.monotonic() - started < 10, "the job never reported"
            time.sleep(0.05)
        stopped_at = stop_worker(server, pid)
        exited_at = wait_for_exit(pid, grace + 5)
        assert_under(exited_at - stopped_at, grace, "SIGTERM to the worker's exit (s)")
        check_ended_by_the_stop(redis, prefix, job_id, "detached")


def test_a_stream_that_reaches_a_stopping_worker_is_sent_on(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # --max-requests: the worker stops itself after that many requests; the
    # status requests below use them up while two streams are open.
    with scaled_server(
        redis_server,
        tmp_path,
        workers=1,
        options=["--max-requests", "20", "--graceful-timeout", "10"],
    ) as server:
        legs, threads = run_clients(server.port, [{"steps": 40, "interval": 0.1}] * 2)
        job_id = parse_event_id(legs[0][0].ids[0])[0]
        for _ in range(25):
            if len(legs[0]) > 1:
                break
            job_status(server.port, job_id)
        for thread in threads:
            thread.join(60)
        for client in legs:
            assert len(client) >= 2, "the stream outlived its worker's restart"
            assert client[0].retry is not None and client[0].clean_end
            check_every_id_once(client, 30)
            assert client[-1].names[-1] == "complete"


def test_memory_broker_streams_stay_with_their_worker_to_the_end(tmp_path: Path) -> None:
    with running_server(
        "gunicorn-gevent", tmp_path, options=["--graceful-timeout", "10"]
    ) as server:
        legs, threads = run_clients(server.port, [{"steps": 20, "interval": 0.1}] * 5)
        stop_worker(server, worker_pids(server)[0])
        for thread in threads:
            thread.join(60)
        for client in legs:
            assert len(client) == 1, "a memory-broker stream was sent to a worker without its job"
            check_every_id_once(client, 20)
            assert client[0].names[-1] == "complete"
            assert client[0].clean_end
            # After its complete, a hint too: no browser comes back at once.
            assert client[0].retry is not None and 1000 <= client[0].retry < 2000
