"""The hub never waits on a lock that a native-thread job holds while it fans out.

A job in a native thread publishes to 5,000 streams of one gunicorn gevent
worker while clients of that job connect and disconnect. gevent's own
monitor thread (``GEVENT_MONITOR_THREAD_ENABLE``) reports every time a hub
goes 20 ms without switching greenlets: a greenlet that subscribes, leaves
or cancels while the publisher holds the job's lock would be one. The
monitor also watches the small hub a job's native thread makes for itself
(its ``time.sleep`` is gevent's); that thread fanning out for 20 ms blocks
no one else, so only reports on the worker's own hub thread count.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from .support import HOST, Server, raw_get, running_server, stream_path

STREAMS = 5000
BLOCKED = "appears to be blocked"


@contextlib.contextmanager
def file_limit(wanted: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"needs {wanted} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with (
        file_limit(STREAMS * 2 + 1000),
        running_server(
            "gunicorn-gevent",
            tmp_path_factory.mktemp("monitored"),
            options=["--worker-connections", str(STREAMS + 1000), "--backlog", "2048"],
            env={"GEVENT_MONITOR_THREAD_ENABLE": "true", "GEVENT_MAX_BLOCKING_TIME": "0.02"},
        ) as server,
    ):
        yield server


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/event-stream\r\n\r\n".encode()


def hub_blocks(output: str, thread: str) -> list[str]:
    """The monitor's reports of ``thread``'s hub (a hex thread id) blocked in the library.

    A report whose stack holds no frame of the library is the hub waiting
    for the interpreter lock inside the server's own socket write, which a
    native thread computing beside the hub costs whatever it computes (the
    GIL convoy that ``make bench`` measures and issue-sized jobs belong in
    another process for); what this test is about is the hub waiting on a
    lock of the library's.
    """
    reports = output.split("=" * 80)
    return [
        r
        for r in reports
        if BLOCKED in r
        and f"(for thread id {thread})" in r
        and "/flask_sse_flush/" in r.split("Info:")[0]
    ]


def subscribers(server: Server, job: str) -> int:
    with raw_get(server.port, f"/__subscribers/{job}") as response:
        return int(response.json()["n"])


def test_fan_out_from_a_native_thread_never_blocks_the_hub(monitored: Server) -> None:
    go = monitored.log_dir / "go"
    payload = {"wait_for": str(go), "steps": 100, "interval": 0.05}
    body = json.dumps(payload).encode()
    with raw_get(monitored.port, "/render", method="POST", body=body) as response:
        assert response.status == 202
        job = response.json()["id"]

    clients: list[socket.socket] = []
    try:
        for _ in range(STREAMS):
            sock = socket.create_connection((HOST, monitored.port))
            sock.sendall(request(f"/render/stream?job={job}"))
            clients.append(sock)
        deadline = time.monotonic() + 60
        while subscribers(monitored, job) < STREAMS:
            assert time.monotonic() < deadline, f"only {subscribers(monitored, job)} attached"
            time.sleep(0.1)
        with raw_get(monitored.port, "/__hub") as response:
            hub_thread = response.json()["thread"]
        baseline = len(
            hub_blocks(monitored.log_file("server.out").read_text("utf-8", "replace"), hub_thread)
        )

        churned: list[int] = []
        ended = threading.Event()

        def churn() -> None:  # clients of the job come and go while it publishes
            while not ended.is_set():
                with socket.create_connection((HOST, monitored.port)) as sock:
                    sock.sendall(request(f"/render/stream?job={job}"))
                    sock.recv(4096)
                churned.append(1)

        churners = [threading.Thread(target=churn) for _ in range(4)]
        go.touch()  # the job publishes 100 events to every stream, 50 ms apart
        for thread in churners:
            thread.start()
        try:
            deadline = time.monotonic() + 120
            while True:
                with raw_get(monitored.port, f"/render/{job}") as response:
                    if response.json()["state"] != "running":
                        break
                assert time.monotonic() < deadline, "the job did not end"
                time.sleep(0.2)
        finally:
            ended.set()
            for thread in churners:
                thread.join(30)
        with raw_get(monitored.port, f"/render/stream?job={job}", timeout=30) as response:
            last = list(response.arrivals())[-1].event
        assert last.event == "complete"
        assert len(churned) >= 10, len(churned)
    finally:
        for sock in clients:
            sock.close()

    time.sleep(0.5)  # let the monitor thread write what it saw
    output = monitored.log_file("server.out").read_text("utf-8", "replace")
    blocks = hub_blocks(output, hub_thread)[baseline:]
    assert blocks == [], (
        f"gevent's monitor saw the hub blocked {len(blocks)} times:\n{blocks[0][:3000]}"
    )
    assert "Traceback" not in output, output[-3000:]


def test_the_monitor_is_watching(monitored: Server) -> None:
    # A negative control: a greenlet job that blocks in an unpatched call is
    # reported, so the check above could fail.
    with raw_get(monitored.port, "/__hub") as response:
        hub_thread = response.json()["thread"]

    def reports() -> int:
        return len(
            hub_blocks(monitored.log_file("server.out").read_text("utf-8", "replace"), hub_thread)
        )

    before = reports()
    with raw_get(monitored.port, "/greenlet" + stream_path({"block": 0.3})):
        pass
    deadline = time.monotonic() + 10
    while reports() <= before:
        assert time.monotonic() < deadline, "the monitor reported nothing"
        time.sleep(0.1)
