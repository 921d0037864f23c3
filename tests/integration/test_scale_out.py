"""Scale-out on a real redis-server: any worker serves any job's stream.

gunicorn -k gevent with several workers on one Redis; clients on raw
sockets that drop and come back with ``Last-Event-ID`` wherever the kernel
hands their connection; a job worker fed by a real RQ queue; Redis
restarted and stopped under running jobs.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flask_sse_flush.brokers import parse_event_id
from flask_sse_flush.testing import RedisCluster, RedisServer, parse_events, stop_process
from tests.redis_calls import lua_calls
from tests.timing import assert_p95_under, assert_under

from .support import (
    HOST,
    Arrival,
    Server,
    raw_get,
    redis_or_cluster,
    running_server,
    stream_path,
    worker_pids,
)

APP_DIR = Path(__file__).resolve().parent / "scaled"
TERMINAL = {"complete", "error"}


@contextlib.contextmanager
def scaled_server(
    redis: RedisServer | RedisCluster,
    log_dir: Path,
    *,
    workers: int = 4,
    options: list[str] | None = None,
    queue: RedisServer | None = None,
    **env: str,
) -> Iterator[Server]:
    """``gunicorn -k gevent -w <workers>`` serving ``scaled/app.py`` on ``redis``
    (RQ's queue on ``queue``, if the broker's Redis is a cluster)."""
    environment = {
        "SCALED_REDIS_URL": redis.url,
        "SCALED_QUEUE_URL": (queue or redis).url,
        "SCALED_REDIS_PREFIX": f"scaled{uuid.uuid4().hex[:8]}:",
        "SCALED_QUEUE": f"renders-{uuid.uuid4().hex[:8]}",
        **env,
    }
    with running_server(
        "gunicorn-gevent",
        log_dir,
        app_dir=APP_DIR,
        options=["--workers", str(workers), *(options or [])],
        env=environment,
    ) as server:
        server.env = environment  # type: ignore[attr-defined]
        yield server


def _payload(log: Path, **fields: Any) -> dict[str, Any]:
    return {"log": str(log), **fields}


def _records(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line]


def _runs(log: Path) -> list[dict[str, Any]]:
    return [r for r in _records(log) if "started" in r]


def _read(
    port: int, path: str, headers: dict[str, str], until: int | None
) -> tuple[list[Arrival], str, int]:
    """Read a stream until ``until`` events with ids (or its end); return them and the pid."""
    got: list[Arrival] = []
    with raw_get(port, path, headers, timeout=20) as response:
        pid = response.headers.get("x-worker-pid", "?")
        status = response.status
        if status != 200:
            return got, pid, status
        for arrival in response.arrivals():
            got.append(arrival)
            if arrival.event.event in TERMINAL:
                break
            if until is not None and sum(1 for a in got if a.event.id) >= until:
                break
    return got, pid, status


@pytest.fixture(scope="module", params=["redis", "cluster"])
def four_workers(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """Four gevent workers on one Redis, then on a 6-node Redis Cluster."""
    store = redis_or_cluster(request, redis_server)
    folder = tmp_path_factory.mktemp(f"scaled-4-{request.param}")
    with scaled_server(store, folder, queue=redis_server) as server:
        yield server


def test_clients_resume_on_any_worker_with_every_event_once(
    four_workers: Server, tmp_path: Path
) -> None:
    clients = 50
    results: list[dict[str, Any]] = [{} for _ in range(clients)]

    def client(index: int) -> None:
        rng = random.Random(index)
        log = tmp_path / f"client{index}.jsonl"
        path = stream_path(_payload(log, steps=30, interval=0.04))
        ids: list[str] = []
        names: list[str | None] = []
        pids = []
        headers: dict[str, str] = {}
        for leg in range(3):
            until = None if leg == 2 else len(ids) + rng.randint(2, 6)
            got, pid, status = _read(four_workers.port, path, headers, until)
            assert status == 200, f"client {index} leg {leg}: {status}"
            pids.append(pid)
            for arrival in got:
                if arrival.event.id:
                    ids.append(arrival.event.id)
                    names.append(arrival.event.event)
            if names and names[-1] in TERMINAL:
                break
            headers = {"Last-Event-ID": ids[-1]}
        results[index] = {"ids": ids, "names": names, "pids": pids, "log": log}

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert not any(thread.is_alive() for thread in threads)
    served_by: set[str] = set()
    for index, result in enumerate(results):
        assert result, f"client {index} failed"
        job_ids = {parse_event_id(i)[0] for i in result["ids"]}
        assert len(job_ids) == 1, f"client {index} saw several jobs"
        seqs = [parse_event_id(i)[1] for i in result["ids"]]
        assert seqs == list(range(1, len(seqs) + 1)), f"client {index}: {seqs}"
        assert [n for n in result["names"] if n in TERMINAL] == ["complete"]
        assert result["names"][-1] == "complete"
        assert len(_runs(result["log"])) == 1, f"client {index}: render ran more than once"
        served_by.update(result["pids"])
    assert len(served_by) >= 2, "every leg landed on one worker: nothing was proven"


def test_rotating_streams_resume_exactly_on_any_worker(
    four_workers: Server, tmp_path: Path
) -> None:
    """``max_stream_seconds=1`` and a job of about 4 s: each stream ends after
    an event with a ``retry:`` hint, and the client resumes with its last id
    on whichever worker takes it, getting every event once, then ``complete``."""
    path = "/rotating" + stream_path(_payload(tmp_path / "job.jsonl", steps=40, interval=0.1))
    ids: list[int] = []
    names: list[str | None] = []
    headers: dict[str, str] = {}
    legs, job_id = 0, ""
    while not names or names[-1] not in TERMINAL:
        legs += 1
        assert legs < 30, "the stream never reached its end"
        with raw_get(four_workers.port, path, headers, timeout=20) as stream:
            assert stream.status == 200, stream.status
            body = b"".join(stream.body_chunks())
        for event in parse_events(body):
            if event.id:
                job_id, seq = event.id.rsplit("-", 1)
                ids.append(int(seq))
                names.append(event.event)
        if names[-1] not in TERMINAL:
            assert b"\nretry: " in b"\n" + body[-32:], body[-200:]
        # As an EventSource does: the same URL again, with the last id.
        headers = {"Last-Event-ID": f"{job_id}-{ids[-1]}"}
    assert len(_runs(tmp_path / "job.jsonl")) == 1  # resumed, never started again
    assert ids == list(range(1, len(ids) + 1)) and names[-1] == "complete"
    assert legs >= 3, legs


def test_a_detached_job_answers_on_every_worker(four_workers: Server, tmp_path: Path) -> None:
    flag = tmp_path / "go"
    body = json.dumps(_payload(tmp_path / "job.jsonl", steps=5, wait_for=str(flag))).encode()
    with raw_get(four_workers.port, "/render", method="POST", body=body) as response:
        assert response.status == 202
        job_id = response.json()["id"]
    statuses, pids = [], set()
    for _ in range(40):
        with raw_get(four_workers.port, f"/render/{job_id}") as response:
            statuses.append(response.status)
            pids.add(response.headers["x-worker-pid"])
            assert response.json()["id"] == job_id
    assert statuses == [200] * 40
    assert len(pids) >= 2
    attached, pids = [], set()
    for _ in range(40):
        with raw_get(four_workers.port, f"/render/stream?job={job_id}") as response:
            attached.append(response.status)
            pids.add(response.headers["x-worker-pid"])
            assert next(response.body_chunks()).startswith(f"id: {job_id}-0".encode())
    assert attached == [200] * 40
    assert len(pids) >= 2
    # A watcher on one worker, the cancel on whichever worker takes it.
    with raw_get(four_workers.port, f"/render/stream?job={job_id}") as watcher:
        with raw_get(four_workers.port, f"/render/{job_id}", method="DELETE") as response:
            assert response.status == 202
        flag.touch()
        events = [a.event for a in watcher.arrivals()]
    assert events[-1].event == "error"
    assert "cancel" in events[-1].json()["message"]
    with raw_get(four_workers.port, f"/render/{job_id}") as response:
        assert response.json()["state"] == "cancelled"


@contextlib.contextmanager
def rq_worker(server: Server, log_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``rq worker`` on the server's queue, importing ``scaled/jobs.py``."""
    rq = Path(sys.executable).with_name("rq")
    env = dict(os.environ, **server.env)  # type: ignore[attr-defined]
    command = [str(rq), "worker", "--url", env["SCALED_QUEUE_URL"], "--path", str(APP_DIR)]
    command += ["--quiet", env["SCALED_QUEUE"]]
    with (log_dir / "rq.out").open("wb") as output:
        worker = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            yield worker
        finally:
            stop_process(worker)


def test_a_queued_job_runs_in_a_job_worker_and_streams_to_the_web_workers(
    four_workers: Server, tmp_path: Path
) -> None:
    with rq_worker(four_workers, tmp_path):
        log = tmp_path / "queued.jsonl"
        path = "/queued" + stream_path(_payload(log, steps=25, interval=0.04))
        got, _, status = _read(four_workers.port, path, {}, None)
        assert status == 200, (tmp_path / "rq.out").read_text()
        assert got[-1].event.event == "complete"
        (run,) = _runs(log)
        assert run["pid"] not in worker_pids(four_workers)  # ran in the job worker
        sent = {
            r["percent"]: r["sent"]
            for r in map(json.loads, log.read_text().splitlines())
            if "percent" in r
        }
        latencies = [
            a.at - sent[a.event.json()["progress"]] for a in got if a.event.event == "progress"
        ]
        assert len(latencies) == 25
        assert_p95_under(latencies, 0.100, "queued job's events through Redis, p95 (s)")

        # Cancelled from a web worker while the job worker runs it.
        log = tmp_path / "cancelled.jsonl"
        path = "/queued" + stream_path(_payload(log, steps=200, interval=0.05))
        with raw_get(four_workers.port, path) as stream:
            events = []
            for arrival in stream.arrivals():
                events.append(arrival.event)
                if len(events) == 3:
                    job_id = parse_event_id(arrival.event.id or "")[0]
                    with raw_get(
                        four_workers.port, f"/queued/render/{job_id}", method="DELETE"
                    ) as r:
                        assert r.status == 202
                if arrival.event.event in TERMINAL:
                    break
        assert events[-1].event == "error"
        assert "cancel" in events[-1].json()["message"]
        assert len(events) < 50
        deadline = time.monotonic() + 10
        while not any("cancelled" in line for line in log.read_text().splitlines()):
            assert time.monotonic() < deadline, "the job worker's render never saw Cancelled"
            time.sleep(0.05)


def test_a_redis_restart_mid_job_loses_nothing(tmp_path: Path) -> None:
    with RedisServer() as redis, scaled_server(redis, tmp_path, workers=2) as server:
        results: list[list[Arrival]] = [[] for _ in range(6)]

        def client(index: int) -> None:
            log = tmp_path / f"c{index}.jsonl"
            path = stream_path(_payload(log, steps=40, interval=0.05))
            got, _, status = _read(server.port, path, {}, None)
            assert status == 200
            results[index] = got

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(results))]
        for thread in threads:
            thread.start()
        time.sleep(0.6)
        redis.restart(down=0.8)
        for thread in threads:
            thread.join(60)
        for index, got in enumerate(results):
            seqs = [parse_event_id(a.event.id)[1] for a in got if a.event.id]
            assert seqs == list(range(1, 42)), f"client {index}: {seqs}"
            assert got[-1].event.event == "complete"
            assert len(_runs(tmp_path / f"c{index}.jsonl")) == 1


def test_redis_down_past_the_outage_timeout_ends_streams_then_serves_again(
    tmp_path: Path,
) -> None:
    with (
        RedisServer() as redis,
        scaled_server(
            redis,
            tmp_path,
            workers=2,
            SCALED_OUTAGE_TIMEOUT="1.5",
            SCALED_REQUEST_TIMEOUT="0.5",
        ) as server,
    ):
        path = stream_path(_payload(tmp_path / "long.jsonl", steps=400, interval=0.05))
        with raw_get(server.port, path, timeout=20) as stream:
            events = []
            stopped_at = 0.0
            for arrival in stream.arrivals():
                events.append(arrival.event)
                if len(events) == 3:
                    redis.stop()
                    stopped_at = time.monotonic()
            ended_after = time.monotonic() - stopped_at
        assert events[-1].event == "error"
        assert "unavailable" in events[-1].json()["message"]
        assert events[-1].json()["reconnect"] is True and events[-1].id is None
        assert_under(ended_after, 1.5 + 5.0, "stream ended after Redis stopped (s)")

        for request in (stream_path({"steps": 1}), "/render/0123abcd"):
            started = time.monotonic()
            with raw_get(server.port, request) as response:
                assert response.status == 503
                assert response.headers["retry-after"].isdigit()
                assert "unavailable" in response.json()["error"]
            assert_under(time.monotonic() - started, 3.0, "503 while Redis is down (s)")

        redis.start()
        deadline = time.monotonic() + 15
        while True:
            got, _, status = _read(server.port, stream_path({"steps": 3, "interval": 0}), {}, None)
            if status == 200 and got and got[-1].event.event == "complete":
                break
            assert time.monotonic() < deadline, f"not serving again: {status}"
            time.sleep(0.2)
        log = (tmp_path / "server.out").read_text()
        assert " 500 " not in log


def _tcp_ports(pid: int) -> set[int]:
    """The local ports of ``pid``'s TCP sockets, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@contextlib.contextmanager
def one_worker(tmp_path: Path) -> Iterator[tuple[RedisServer, Server, list[socket.socket]]]:
    """One gevent worker on a Redis of its own, with room for some thousands
    of client sockets (the list yielded; each is closed at the end)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    sockets: list[socket.socket] = []
    try:
        with (
            RedisServer() as redis,
            scaled_server(
                redis, tmp_path, workers=1, options=["--worker-connections", "3000"]
            ) as server,
        ):
            yield redis, server, sockets
    finally:
        for sock in sockets:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_streams(server: Server, paths: list[str], sockets: list[socket.socket]) -> None:
    """Open a stream of each path on a raw socket (into ``sockets``); each answers 200."""
    for path in paths:
        sock = socket.create_connection((HOST, server.port), 10)
        sockets.append(sock)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    for sock in sockets[-len(paths) :]:
        assert sock.recv(12).startswith(b"HTTP/1.1 200")


def test_a_thousand_streams_hold_at_most_four_redis_connections(tmp_path: Path) -> None:
    flag = tmp_path / "go"
    with one_worker(tmp_path) as (redis, server, sockets):
        jobs = []
        for n in range(20):
            body = json.dumps(_payload(tmp_path / f"j{n}.jsonl", steps=2, wait_for=str(flag)))
            with raw_get(server.port, "/render", method="POST", body=body.encode()) as r:
                jobs.append(r.json()["id"])
        open_streams(server, [f"/render/stream?job={jobs[n % 20]}" for n in range(1000)], sockets)
        import redis as redis_py

        (pid,) = worker_pids(server)
        ports = _tcp_ports(pid)
        clients = redis_py.Redis.from_url(redis.url).client_list()
        from_worker = [c for c in clients if int(c["addr"].rsplit(":", 1)[1]) in ports]
        assert 1 <= len(from_worker) <= 4, from_worker
        flag.touch()


def test_a_crowd_leaving_together_cancels_its_job_in_a_few_writes(tmp_path: Path) -> None:
    """1,500 streams of one job on one worker hang up at once (a deploy, a
    network blip). The worker's count of them reaches Redis in a few dozen
    writes, not one per stream queued on its three pooled connections, and
    ``on_disconnect="cancel"`` still sees the last client leave."""
    from flask_sse_flush.brokers import RedisBroker

    streams = 1500
    flag, log = tmp_path / "go", tmp_path / "crowd.jsonl"
    with one_worker(tmp_path) as (redis, server, sockets):
        body = json.dumps(_payload(log, steps=3, wait_for=str(flag))).encode()
        with raw_get(server.port, "/cancelling/render", method="POST", body=body) as r:
            job = r.json()["id"]
        open_streams(server, [f"/cancelling/render/stream?job={job}"] * streams, sockets)
        counter = RedisBroker(redis.url, prefix=server.env["SCALED_REDIS_PREFIX"])  # type: ignore[attr-defined]
        polls = 0

        def attached() -> int:  # each a Lua call too, left out of the count below
            nonlocal polls
            polls += 1
            return counter.subscribers(job)

        try:
            deadline = time.monotonic() + 30
            while (n := attached()) < streams:
                assert time.monotonic() < deadline, f"{n} attached"
                time.sleep(0.1)
            before, polls = lua_calls(redis.url), 0
            for sock in sockets:
                sock.close()
            while attached() > 0:
                assert time.monotonic() < deadline + 30, "the crowd's streams still count"
                time.sleep(0.05)
            calls = lua_calls(redis.url) - before - polls
            flag.touch()  # the render's next progress() finds it cancelled
            deadline = time.monotonic() + 30
            while not any("cancelled" in r for r in _records(log)):
                assert time.monotonic() < deadline, "the job was not cancelled"
                time.sleep(0.05)
        finally:
            counter.close()
        # One write per stream before (1,502 measured); 33 to 35 now.
        assert calls < streams / 5, f"{calls} Lua calls for {streams} streams leaving"
        output = server.log_file("server.out").read_text("utf-8", "replace")
        assert "Redis unreachable" not in output and "stayed busy" not in output
