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


def hub_blocks(output: str, thread: str, *, on_a_lock: bool = True) -> list[str]:
    """The monitor's reports of ``thread``'s hub (a hex thread id) waiting on a library lock.

    Only a report whose innermost frame is a line of the library that takes
    a lock counts. On a busy 2-core machine the hub is also seen "blocked"
    while the operating system runs something else, or while it waits for
    the interpreter lock inside a socket write beside a computing native
    thread (the GIL convoy that ``make bench`` measures); neither is the
    hazard this test is about.
    """
    found = []
    for report in output.split("=" * 80):
        if BLOCKED not in report or f"(for thread id {thread})" not in report:
            continue
        stack = report.split("Blocked Stack", 1)[-1].split("Info:", 1)[0].rstrip().splitlines()
        frames = [i for i, line in enumerate(stack) if line.lstrip().startswith('File "')]
        if not frames:
            continue
        innermost = stack[frames[-1] :]
        if not on_a_lock or (
            "/flask_sse_flush/" in innermost[0] and "lock" in "".join(innermost[1:])
        ):
            found.append(report)
    return found


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
            sock = socket.create_connection((HOST, monitored.port), timeout=60)
            sock.sendall(request(f"/render/stream?job={job}"))
            clients.append(sock)
        deadline = time.monotonic() + 60
        while subscribers(monitored, job) < STREAMS:
            assert time.monotonic() < deadline, f"only {subscribers(monitored, job)} attached"
            time.sleep(0.1)
        with raw_get(monitored.port, "/__hub") as response:
            hub_thread = response.json()["thread"]
        time.sleep(0.5)  # the monitor's reports of the attaching are written by now
        baseline = len(
            hub_blocks(monitored.log_file("server.out").read_text("utf-8", "replace"), hub_thread)
        )

        churned: list[int] = []
        ended = threading.Event()

        def churn() -> None:  # clients of the job come and go while it publishes
            while not ended.is_set():
                with socket.create_connection((HOST, monitored.port), timeout=30) as sock:
                    sock.sendall(request(f"/render/stream?job={job}"))
                    sock.recv(4096)
                churned.append(1)

        churners = [threading.Thread(target=churn, daemon=True) for _ in range(4)]
        go.touch()  # the job publishes 100 events to every stream, 50 ms apart
        for thread in churners:
            thread.start()
        try:
            deadline = time.monotonic() + 120
            while True:
                # A busy 2-core machine may keep this poll waiting: the
                # bound that matters is the job's deadline, not the poll's.
                with raw_get(monitored.port, f"/render/{job}", timeout=60) as response:
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
        output = monitored.log_file("server.out").read_text("utf-8", "replace")
        return len(hub_blocks(output, hub_thread, on_a_lock=False))

    before = reports()
    with raw_get(monitored.port, "/greenlet" + stream_path({"block": 0.3})):
        pass
    deadline = time.monotonic() + 10
    while reports() <= before:
        assert time.monotonic() < deadline, "the monitor reported nothing"
        time.sleep(0.1)


def test_only_a_wait_on_a_library_lock_counts() -> None:
    def report(*frames: tuple[str, str]) -> str:
        stack = "".join(f'  File "{path}", line 1, in f\n    {code}\n' for path, code in frames)
        return (
            f"{'=' * 80}\nT : Greenlet <g> {BLOCKED}\n    Reported by <t>\n"
            f"Blocked Stack (for thread id 0xabc):\n{stack}\nInfo:\n* Threads\n"
        )

    gunicorn = ("/venv/gunicorn/workers/base_async.py", "resp.write(item)")
    on_lock = report(gunicorn, ("/src/flask_sse_flush/brokers/memory.py", "with job.lock:"))
    in_send = report(("/src/flask_sse_flush/wsgi/stream.py", "yield item"), gunicorn)
    elsewhere = on_lock.replace("0xabc", "0xdef")
    output = on_lock + in_send + elsewhere
    assert hub_blocks(output, "0xabc") == [on_lock.split("=" * 80)[1]]
    assert len(hub_blocks(output, "0xabc", on_a_lock=False)) == 2
