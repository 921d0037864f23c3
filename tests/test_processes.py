"""``executor="process"``: each render in a child process, over the test client."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask

from flask_sse_flush import Cancelled, Progress, RenderError, create_render_blueprint
from flask_sse_flush.jobs.processes import ProcessRender
from flask_sse_flush.testing import parse_events
from tests.timing import assert_under


def render(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Module-level, so a child process can import it by name."""
    if payload.get("silent"):
        # Reports once, then never again: a cancel cannot reach it through
        # its reports.
        progress(1, f"pid {os.getpid()}")
        if payload["silent"] == "sleep":
            time.sleep(120)
        while True:
            sum(range(1000))
    if payload.get("wait"):
        try:
            while True:  # until cancelled
                progress(1, "waiting")
                time.sleep(0.01)
        except Cancelled:
            raise
    if payload.get("own"):
        progress.event("log", {"line": "from the child", "pid": os.getpid()})
    for percent in (10, 50, 100):
        progress(percent, "rendering")
    print("a render may print; it goes to the log")
    if payload.get("fail"):
        raise RuntimeError(payload["fail"])
    if payload.get("refuse"):
        raise RenderError(payload["refuse"])
    if payload.get("bad"):
        return "not a dict"  # type: ignore[return-value]
    return {"filename": "out.mp4", "url": "/out.mp4", "pid": os.getpid()}


def client(**options: Any) -> Any:
    app = Flask(__name__)
    app.register_blueprint(create_render_blueprint(render, executor="process", **options))
    return app.test_client()


def stream(payload: dict[str, Any]) -> str:
    return "/render/stream?data=" + quote(json.dumps(payload))


def test_the_render_runs_in_another_process_and_streams_its_progress() -> None:
    events = parse_events(client().get(stream({}), buffered=False))
    assert [(e.event, e.json()) for e in events[:-1]] == [
        ("progress", {"progress": p, "phase": "rendering"}) for p in (10, 50, 100)
    ]
    assert events[-1].event == "complete"
    assert events[-1].json()["pid"] != os.getpid()


def test_a_child_sends_events_of_its_own_on_the_job_stream() -> None:
    events = parse_events(client().get(stream({"own": True}), buffered=False))
    assert [e.event for e in events] == ["log", "progress", "progress", "progress", "complete"]
    assert events[0].json()["line"] == "from the child"
    assert events[0].json()["pid"] == events[-1].json()["pid"] != os.getpid()
    assert [e.id.rsplit("-", 1)[1] for e in events if e.id] == ["1", "2", "3", "4", "5"]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"fail": "/srv/secret.py: the encoder broke"}, "the render failed (RuntimeError)"),
        ({"bad": True}, "the render failed (TypeError)"),
        ({"refuse": "that title is too long"}, "that title is too long"),
    ],
)
def test_a_failure_in_the_child_is_the_jobs_error_event(
    payload: dict[str, Any], message: str
) -> None:
    events = parse_events(client().get(stream(payload), buffered=False))
    assert events[-1].event == "error"
    assert events[-1].json()["message"] == message


def test_cancelling_reaches_the_child() -> None:
    c = client()
    job = c.post("/render", json={"wait": True}).get_json()["id"]
    deadline = time.monotonic() + 30
    while c.get(f"/render/{job}").get_json()["state"] != "running" or (
        c.get(f"/render/{job}").get_json()["progress"] is None
    ):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert c.delete(f"/render/{job}").status_code == 202
    while c.get(f"/render/{job}").get_json()["state"] == "running":
        assert time.monotonic() < deadline, "the child never stopped"
        time.sleep(0.02)
    assert c.get(f"/render/{job}").get_json()["state"] == "cancelled"


@pytest.mark.parametrize("silent", ["sleep", "compute"])
def test_a_cancel_ends_a_child_that_never_reports_again(silent: str) -> None:
    c = client()
    job = c.post("/render", json={"silent": silent}).get_json()["id"]
    deadline = time.monotonic() + 30
    while (phase := c.get(f"/render/{job}").get_json()["phase"]) is None:
        assert time.monotonic() < deadline, "the child never reported"
        time.sleep(0.02)
    child = int(phase.split()[1])
    assert os.path.exists(f"/proc/{child}")
    cancelled_at = time.monotonic()
    try:
        assert c.delete(f"/render/{job}").status_code == 202
        while os.path.exists(f"/proc/{child}") or job_state(c, job) == "running":
            assert time.monotonic() < deadline, "the child outlived its job's cancel"
            time.sleep(0.02)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)  # a failed test leaves no child behind
    # ProcessRender.cancel_grace (1 s) to end by itself, then SIGTERM.
    assert_under(time.monotonic() - cancelled_at, 5.0, "cancel to the child's end (s)")
    assert job_state(c, job) == "cancelled"


def job_state(c: Any, job: str) -> str:
    state: str = c.get(f"/render/{job}").get_json()["state"]
    return state


def test_a_render_the_child_cannot_import_is_refused_up_front() -> None:
    with pytest.raises(TypeError, match="module-level function"):
        create_render_blueprint(lambda payload, progress: {}, executor="process")
    with pytest.raises(TypeError, match="module-level function"):
        ProcessRender(lambda payload, progress: {})


CANCEL_UNDER_GEVENT = """
import os, time
import gevent
from gevent.monkey import get_original
from flask_sse_flush.jobs import RenderJob
from flask_sse_flush.brokers import MemoryBroker
from flask_sse_flush.jobs.processes import ProcessRender
from flask_sse_flush.runtime import start_greenlet
from tests.test_processes import render

broker = MemoryBroker()
job = RenderJob(ProcessRender(render), {"silent": "sleep"}, broker, job_id="silent")
start_greenlet(job.run, "job")
while broker.status(job.id).phase is None:
    gevent.sleep(0.01)
child = int(broker.status(job.id).phase.split()[1])
# The cancel comes from a native OS thread, which may not touch the hub.
answers = []
began = time.monotonic()
get_original("_thread", "start_new_thread")(lambda: answers.append(broker.cancel(job.id)), ())
try:
    while os.path.exists(f"/proc/{child}") or not broker.status(job.id).ended or not answers:
        assert time.monotonic() - began < 10, "the child outlived its job's cancel"
        gevent.sleep(0.02)
finally:
    if os.path.exists(f"/proc/{child}"):
        os.kill(child, 9)  # a failed test leaves no child behind
assert answers == [True]
assert broker.status(job.id).state == "cancelled", broker.status(job.id)
print("ok", round(time.monotonic() - began, 3))
"""


def test_a_cancel_from_a_native_thread_ends_a_silent_child_under_gevent() -> None:
    pytest.importorskip("gevent")
    script = "from gevent import monkey\nmonkey.patch_all()\n" + CANCEL_UNDER_GEVENT
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.startswith("ok"), result.stdout
