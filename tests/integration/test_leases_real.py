"""Leases under ``gunicorn -k gevent -w 4`` on a real Redis: kill what runs a job.

The process running a render is killed with ``SIGKILL`` (no graceful
stop, nothing runs): a web worker, or an ``rq worker`` and its work horse.
Every client attached to the job on the other workers receives one
``error`` event, the same on each, within ``lease + 5`` seconds; the job's
status becomes ``error`` and its ``max_jobs`` slot is free again.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from flask_sse_flush import Event
from flask_sse_flush.testing import RedisServer
from tests.test_leases import wait_for
from tests.timing import assert_under

from .support import Server, raw_get, redis_or_cluster
from .test_scale_out import _payload, _runs, rq_worker, scaled_server

LEASE = 1.0
DEADLINE = LEASE + 5.0
MESSAGE = "the worker running this job stopped; start it again"


class Client(threading.Thread):
    """One browser stand-in attached to a job: its worker, its events, when the end came."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(daemon=True)
        self.port, self.path = port, path
        self.pid = ""
        self.events: list[Event] = []
        self.ended_at: float | None = None
        self.error: BaseException | None = None
        self.attached = threading.Event()

    def run(self) -> None:
        try:
            with raw_get(self.port, self.path, timeout=30) as response:
                self.pid = response.headers.get("x-worker-pid", "")
                self.attached.set()
                for arrival in response.arrivals():
                    self.events.append(arrival.event)
                    if arrival.event.event in ("complete", "error"):
                        self.ended_at = time.monotonic()
                        return
        except BaseException as exc:  # reported by the test: a cut connection, a timeout
            self.error = exc
        finally:
            self.attached.set()


def runner_pid(log: Path) -> int:
    wait_for(lambda: _runs(log), 20, "the render never started")
    return int(_runs(log)[0]["pid"])


def attach_elsewhere(server: Server, prefix: str, job_id: str, avoid: int) -> list[Client]:
    """Streams of ``job_id`` on workers other than ``avoid``: at least two."""
    kept: list[Client] = []
    for _ in range(40):
        client = Client(server.port, f"{prefix}/render/stream?job={job_id}")
        client.start()
        assert client.attached.wait(15)
        wait_for(lambda c=client: c.events or c.error, 15, "no event on a stream")
        if client.pid and int(client.pid) != avoid and client.error is None:
            kept.append(client)
        if len(kept) == 3:
            break
    assert len(kept) >= 2, "the kernel gave every connection to the runner's worker"
    return kept


def check_the_end(clients: list[Client], killed: float, job_id: str) -> None:
    for client in clients:
        client.join(DEADLINE + 10)
        assert client.error is None, client.error
        assert client.ended_at is not None, "the stream never ended"
        what = "SIGKILL to the error event on another gunicorn worker, 1 s lease (s)"
        assert_under(client.ended_at - killed, DEADLINE, what)
        errors = [e for e in client.events if e.event == "error"]
        assert len(errors) == 1 and client.events[-1] is errors[0]
        assert errors[0].json() == {"message": MESSAGE, "retry": True}
        assert (errors[0].id or "").startswith(f"{job_id}-")
    assert len({client.events[-1].id for client in clients}) == 1  # the same event everywhere


@pytest.fixture(params=["redis", "cluster"])
def leased(request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path: Path) -> Any:
    """Four workers with a short lease, on one Redis, then on a Redis Cluster."""
    store = redis_or_cluster(request, redis_server)
    log_dir = tmp_path / "server"
    log_dir.mkdir()
    with scaled_server(store, log_dir, queue=redis_server, SCALED_LEASE=str(LEASE)) as server:
        yield server


def test_a_killed_web_worker_s_job_ends_on_every_other_worker(
    leased: Server, tmp_path: Path
) -> None:
    log = tmp_path / "job.jsonl"
    body = json.dumps(_payload(log, steps=100_000, interval=0.05)).encode()
    with raw_get(leased.port, "/single/render", method="POST", body=body) as response:
        assert response.status == 202
        job_id = response.json()["id"]
    pid = runner_pid(log)
    with raw_get(leased.port, "/single/render", method="POST", body=body) as response:
        assert response.status == 429  # its max_jobs=1 slot is taken
    clients = attach_elsewhere(leased, "/single", job_id, pid)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    check_the_end(clients, killed, job_id)
    with raw_get(leased.port, f"/single/render/{job_id}") as response:
        status = response.json()
    assert status["state"] == "error" and status["error"] == MESSAGE
    again = json.dumps(_payload(tmp_path / "again.jsonl", steps=1)).encode()
    with raw_get(leased.port, "/single/render", method="POST", body=again) as response:
        assert response.status == 202  # the slot is free


def test_a_killed_job_worker_s_job_ends_on_every_web_worker(leased: Server, tmp_path: Path) -> None:
    with rq_worker(leased, tmp_path) as worker:
        log = tmp_path / "queued.jsonl"
        body = json.dumps(_payload(log, steps=100_000, interval=0.05)).encode()
        with raw_get(leased.port, "/queued/render", method="POST", body=body) as response:
            assert response.status == 202
            job_id = response.json()["id"]
        horse = runner_pid(log)  # RQ's work horse, a child of the worker
        clients = attach_elsewhere(leased, "/queued", job_id, avoid=-1)
        os.kill(worker.pid, signal.SIGKILL)
        os.kill(horse, signal.SIGKILL)
        killed = time.monotonic()
        check_the_end(clients, killed, job_id)
    with raw_get(leased.port, f"/queued/render/{job_id}") as response:
        assert response.json()["state"] == "error"
