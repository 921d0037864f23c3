"""Nothing leaks: 10,000 aborted streams on one gevent worker, then a look at its RSS,
descriptors, threads and greenlets once the jobs' retention has passed."""

from __future__ import annotations

import json
import os
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.timing import assert_under

from .support import HOST, Server, raw_get, rss_kib, running_server, worker_pids

RETENTION = 1.0  # the "short" blueprint's MemoryBroker(retention=1.0)


@pytest.fixture(scope="module")
def leak_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server("gunicorn-gevent", tmp_path_factory.mktemp("leaks")) as server:
        yield server


def snapshot(server: Server, pid: int) -> dict[str, Any]:
    counts = {
        "rss": rss_kib(pid),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": len(os.listdir(f"/proc/{pid}/task")),
    }
    with raw_get(server.port, "/__objects") as response:
        counts["greenlets"] = response.json()["types"].get("greenlet", 0)
    return counts


def back_to(server: Server, pid: int, before: dict[str, Any]) -> dict[str, Any]:
    """The counts once descriptors and threads are back to ``before`` (a few seconds at most)."""
    deadline = time.monotonic() + 5
    while True:
        after = snapshot(server, pid)
        if all(after[k] <= before[k] for k in ("fds", "threads", "greenlets")):
            return after
        if time.monotonic() > deadline:
            return after
        time.sleep(0.2)


class Cycles:
    """Connect, ask, and hang up at a random point."""

    def __init__(self, port: int, long_job: str, seed: int) -> None:
        self.port = port
        self.rng = random.Random(seed)
        self.attach = f"/short/render/stream?job={long_job}"
        self.start = "/short/render/stream?data=" + quote(json.dumps({"steps": 3, "interval": 0}))
        self.started = 0

    def one(self) -> None:
        rng = self.rng
        own_job = rng.random() < 0.1
        self.started += own_job
        path = self.start if own_job else self.attach
        request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
        where = rng.random()
        with socket.create_connection((HOST, self.port), 5) as sock:
            sock.settimeout(5)
            if where < 0.1:
                sock.sendall(request[: rng.randrange(1, len(request))])  # mid-request
                return
            sock.sendall(request)
            if where < 0.35:
                return  # before the headers
            got = sock.recv(4096)
            if where < 0.7 or not own_job:
                return  # after the opening frame
            while b"event: complete" not in got and rng.random() < 0.8:
                more = sock.recv(4096)  # mid-stream, or read to the end
                if not more:
                    break
                got += more

    def run(self, count: int) -> None:
        for _ in range(count):
            self.one()


def settle(server: Server) -> None:
    """Let the retention pass, and a request run the broker's lazy purge."""
    time.sleep(RETENTION + 0.5)
    with raw_get(server.port, "/short/render/0123") as response:
        assert response.status == 404
    time.sleep(0.5)


def test_ten_thousand_aborted_streams_leave_nothing_behind(
    leak_server: Server, tmp_path: Path
) -> None:
    (pid,) = worker_pids(leak_server)
    flag = tmp_path / "release"
    body = json.dumps({"wait_for": str(flag), "steps": 1, "interval": 0}).encode()
    with raw_get(leak_server.port, "/short/render", method="POST", body=body) as response:
        long_job = response.json()["id"]
    try:
        cycles = Cycles(leak_server.port, long_job, seed=7)
        cycles.run(2000)  # warm up: pools, caches, the allocator's arenas
        settle(leak_server)
        before = snapshot(leak_server, pid)
        cycles.run(10_000)
        settle(leak_server)
        after = back_to(leak_server, pid, before)
    finally:
        flag.touch()
    assert cycles.started > 1000  # some thousand short jobs of their own ran
    assert_under(
        after["rss"] / before["rss"],
        1.10,
        "RSS after 10,000 aborted streams / before",
        (before, after),
    )
    assert after["fds"] <= before["fds"], (before, after)
    assert after["threads"] <= before["threads"], (before, after)
    assert after["greenlets"] <= before["greenlets"], (before, after)
