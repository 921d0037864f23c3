"""Jobs on a real gunicorn -k gevent worker: off-hub execution, resume, slow
clients and fan-out, read over raw sockets as the bytes arrive."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.timing import assert_p95_under, assert_under

from .support import (
    Arrival,
    Server,
    raw_get,
    rss_kib,
    running_server,
    stream_path,
    worker_pids,
)

LATENCY_P95_LIMIT = 0.100


@pytest.fixture(scope="module")
def gevent_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log_dir = tmp_path_factory.mktemp("gunicorn-gevent-jobs")
    with running_server("gunicorn-gevent", log_dir) as running:
        yield running


def _log(server: Server) -> str:
    return str(server.log_file(f"job-{uuid.uuid4().hex}.jsonl"))


def _in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = target()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def _joined(thread: threading.Thread, result: dict[str, Any]) -> Any:
    thread.join(60)
    assert not thread.is_alive()
    if "error" in result:
        raise result["error"]
    return result["value"]


def _read_all(server: Server, path: str) -> list[Arrival]:
    with raw_get(server.port, path) as response:
        return list(response.arrivals())


def _timed_stream(server: Server, count: int, interval: float) -> list[float]:
    """Latencies of an unrelated stream whose events carry their send time."""
    with raw_get(server.port, f"/timed?count={count}&interval={interval}") as response:
        return [a.at - a.event.json()["sent"] for a in response.arrivals()]


def _keepalive_gaps(server: Server, silence: float) -> list[float]:
    """Gaps between the keepalives of a stream whose job is silent for `silence` s."""
    payload = {"delay_first": silence, "steps": 1, "interval": 0}
    times = []
    with raw_get(server.port, stream_path(payload)) as response:
        for chunk in response.body_chunks():
            if chunk == b": keepalive\n\n":
                times.append(time.time())
    return [b - a for a, b in itertools.pairwise(times)]


def test_cpu_bound_job_stalls_neither_its_stream_nor_others(gevent_server: Server) -> None:
    log = _log(gevent_server)
    payload = {"log": log, "cpu": 3.0, "every": 0.05}
    other, other_result = _in_thread(lambda: _timed_stream(gevent_server, 50, 0.05))
    beats, beats_result = _in_thread(lambda: _keepalive_gaps(gevent_server, 3.5))
    with raw_get(gevent_server.port, stream_path(payload)) as response:
        arrivals = [a for a in response.arrivals() if a.event.event == "progress"]
    sent = [r for r in gevent_server.read_log(log.rsplit("/", 1)[1]) if "percent" in r]
    assert len(arrivals) == len(sent) >= 40
    own = [a.at - r["sent"] for a, r in zip(arrivals, sent, strict=True)]
    others = _joined(other, other_result)
    gaps = _joined(beats, beats_result)
    assert_p95_under(own, LATENCY_P95_LIMIT, "CPU-bound job: its own events, p95 (s)")
    assert_p95_under(others, LATENCY_P95_LIMIT, "CPU-bound job: another stream, p95 (s)")
    assert len(gaps) >= 2
    off = max(abs(gap - 1.0) for gap in gaps)
    assert_under(off, 0.3, "CPU-bound job: keepalive period off by, worst (s)", gaps)


def test_job_blocked_in_an_unpatched_call_stalls_nothing(gevent_server: Server) -> None:
    payload = {"block": 2.0, "steps": 1, "interval": 0}
    blocked, blocked_result = _in_thread(lambda: _read_all(gevent_server, stream_path(payload)))
    time.sleep(0.2)
    latencies = _timed_stream(gevent_server, 30, 0.03)
    events = [a.event for a in _joined(blocked, blocked_result)]
    assert_p95_under(latencies, LATENCY_P95_LIMIT, "beside a blocked job, p95 (s)")
    assert events[0].json() == {"progress": 1, "phase": "blocked"}
    assert events[-1].event == "complete"


def _started(server: Server, log: str) -> int:
    return sum("started" in r for r in server.read_log(log.rsplit("/", 1)[1]))


def test_reconnect_with_last_event_id_resumes_without_a_second_render(
    gevent_server: Server,
) -> None:
    log = _log(gevent_server)
    steps = 10
    path = stream_path({"log": log, "steps": steps, "interval": 0.1})
    with raw_get(gevent_server.port, path) as response:
        stream = response.arrivals()
        first = [next(stream).event for _ in range(3)]
    # Dropped after the 3rd event; reconnect to the same URL, as EventSource does.
    with raw_get(gevent_server.port, path, {"Last-Event-ID": first[-1].id or ""}) as response:
        assert response.status == 200
        rest = [a.event for a in response.arrivals()]
    job = (first[0].id or "").rsplit("-", 1)[0]
    ids = [e.id for e in first + rest]
    assert ids == [f"{job}-{n}" for n in range(1, steps + 2)]  # 10 progress + complete
    assert rest[-1].event == "complete"
    assert _started(gevent_server, log) == 1
    # After the terminal event: 204 tells EventSource to stop reconnecting.
    with raw_get(gevent_server.port, path, {"Last-Event-ID": rest[-1].id or ""}) as response:
        assert response.status == 204
    # A reconnect from mid-job, after completion, replays the rest at once.
    with raw_get(gevent_server.port, path, {"Last-Event-ID": ids[5] or ""}) as response:
        assert [a.event.id for a in response.arrivals()] == ids[6:]
    assert _started(gevent_server, log) == 1


def test_a_stalled_client_cannot_grow_the_server(gevent_server: Server) -> None:
    log = _log(gevent_server)
    (worker,) = worker_pids(gevent_server)
    payload = {"log": log, "flood": 100_000}
    before = rss_kib(worker)
    with raw_get(gevent_server.port, stream_path(payload), rcvbuf=4096, timeout=60) as response:
        # Read nothing while the job reports 100,000 times.
        deadline = time.monotonic() + 30
        while not any("flooded" in r for r in gevent_server.read_log(log.rsplit("/", 1)[1])):
            assert time.monotonic() < deadline, "the job did not finish its reports"
            time.sleep(0.1)
        time.sleep(max(0.0, 10 - (time.monotonic() - (deadline - 30))))
        grown = rss_kib(worker) - before
        events = [a.event for a in response.arrivals()]
    assert grown < 20 * 1024, f"server RSS grew by {grown} KiB"
    progress = [e.json()["progress"] for e in events if e.event == "progress"]
    assert progress[-1] == 100
    assert len(progress) < 100_000  # coalesced while the client was stalled
    assert events[-1].event == "complete"


def test_twenty_subscribers_of_one_detached_job(gevent_server: Server) -> None:
    body = json.dumps({"steps": 10, "interval": 0.1}).encode()
    with raw_get(gevent_server.port, "/render", method="POST", body=body) as response:
        assert response.status == 202
        created = response.json()
    readers = [_in_thread(lambda: _read_all(gevent_server, created["stream"])) for _ in range(20)]
    results: list[list[Arrival]] = [_joined(t, r) for t, r in readers]
    job = created["id"]
    expected = [f"{job}-{n}" for n in range(1, 12)]
    for arrivals in results:
        assert [a.event.id for a in arrivals] == expected
        assert arrivals[-1].event.event == "complete"
    with raw_get(gevent_server.port, created["status"]) as response:
        status = response.json()
    assert status["state"] == "complete"
    assert status["progress"] == 100


def test_jobs_leave_no_threads_or_descriptors_behind(gevent_server: Server) -> None:
    (worker,) = worker_pids(gevent_server)

    def footprint() -> tuple[int, int]:
        status = Path(f"/proc/{worker}/status").read_text()
        threads = int(status.split("Threads:")[1].split()[0])
        return threads, len(list(Path(f"/proc/{worker}/fd").iterdir()))

    def one_job() -> None:
        # The job sleeps between reports: in a native thread under gevent that
        # gives the thread a hub of its own, which must go when the job ends.
        _read_all(gevent_server, stream_path({"steps": 2, "interval": 0.001}))

    one_job()
    threads, fds = footprint()
    for _ in range(50):
        one_job()
    deadline = time.monotonic() + 5
    while footprint() != (threads, fds) and time.monotonic() < deadline:
        time.sleep(0.05)
    after = footprint()
    assert after[0] <= threads, f"threads {threads} -> {after[0]}"
    assert after[1] <= fds + 2, f"file descriptors {fds} -> {after[1]}"


def test_head_leaves_a_detached_job_running_under_on_disconnect_cancel(
    gevent_server: Server,
) -> None:
    body = json.dumps({"steps": 40, "interval": 0.05}).encode()
    with raw_get(gevent_server.port, "/cancelling/render", method="POST", body=body) as response:
        assert response.status == 202
        job = response.json()["id"]
    # Event 0 is the opening frame's id: a valid resume point however far
    # the job has got (a later id may still be ahead of it: a 400).
    for path, headers in (
        (f"/cancelling/render/stream?job={job}", {}),
        ("/cancelling/render/stream", {"Last-Event-ID": f"{job}-0"}),
        (f"/cancelling/render/stream?lastEventId={job}-0", {}),
    ):
        with raw_get(gevent_server.port, path, headers, method="HEAD") as response:
            assert response.status == 200
            assert response.headers["content-type"].startswith("text/event-stream")
    time.sleep(1.0)  # as `curl -I` leaves: nothing may have cancelled the job
    with raw_get(gevent_server.port, f"/cancelling/render/{job}") as response:
        assert response.json()["state"] == "running"
    with raw_get(gevent_server.port, f"/cancelling/render/{job}", method="DELETE") as response:
        assert response.status == 202


def test_a_cpu_bound_job_in_a_process_leaves_other_streams_prompt(gevent_server: Server) -> None:
    log = _log(gevent_server)
    payload = {"log": log, "cpu": 3.0, "every": 0.05}
    other, other_result = _in_thread(lambda: _timed_stream(gevent_server, 100, 0.02))
    with raw_get(gevent_server.port, "/process" + stream_path(payload), timeout=60) as response:
        arrivals = list(response.arrivals())
    others = _joined(other, other_result)
    progress = [a for a in arrivals if a.event.event == "progress"]
    assert arrivals[-1].event.event == "complete", arrivals[-1].event
    assert len(progress) >= 40
    assert_p95_under(others, LATENCY_P95_LIMIT, "beside a CPU-bound job in a process, p95 (s)")
    sent = [r for r in gevent_server.read_log(log.rsplit("/", 1)[1]) if "percent" in r]
    own = [a.at - r["sent"] for a, r in zip(progress, sent, strict=False)]
    assert_p95_under(own, LATENCY_P95_LIMIT, "a CPU-bound job in a process: its own events (s)")


def test_a_client_that_hangs_up_during_a_silence_is_cleaned_up_at_once(
    gevent_server: Server, tmp_path: Path
) -> None:
    # A silent job, a 15 s keepalive, and on_disconnect="cancel": without
    # watching the socket, the hang-up would be noticed only 15 s later.
    flag = tmp_path / "go"
    body = json.dumps({"wait_for": str(flag), "steps": 3, "log": _log(gevent_server)}).encode()
    with raw_get(gevent_server.port, "/cancelling/render", method="POST", body=body) as response:
        job_id = response.json()["id"]

    def subscribers() -> int:
        path = f"/__subscribers/{job_id}?bp=cancelling"
        with raw_get(gevent_server.port, path) as response:
            return int(response.json()["n"])

    try:
        with raw_get(gevent_server.port, f"/cancelling/render/stream?job={job_id}") as stream:
            assert next(stream.body_chunks()).startswith(f"id: {job_id}-0".encode())
            assert subscribers() == 1
            hung_up = time.monotonic()
        while subscribers():
            assert time.monotonic() - hung_up < 5, "the hang-up was never noticed"
            time.sleep(0.01)
        assert_under(time.monotonic() - hung_up, 1.0, "hang-up noticed and cleaned up (s)")
        flag.touch()
        deadline = time.monotonic() + 5
        while True:
            with raw_get(gevent_server.port, f"/cancelling/render/{job_id}") as response:
                if response.json()["state"] == "cancelled":
                    break
            assert time.monotonic() < deadline, "the job was not cancelled"
            time.sleep(0.02)
    finally:
        flag.touch()
