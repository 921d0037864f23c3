"""``executor="process"``: each render in a child process, over the test client."""

from __future__ import annotations

import json
import os
import time
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask

from flask_sse_flush import Cancelled, Progress, RenderError, create_render_blueprint
from flask_sse_flush.processes import ProcessRender
from flask_sse_flush.testing import parse_events


def render(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Module-level, so a child process can import it by name."""
    if payload.get("wait"):
        try:
            while True:  # until cancelled
                progress(1, "waiting")
                time.sleep(0.01)
        except Cancelled:
            raise
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


def test_a_render_the_child_cannot_import_is_refused_up_front() -> None:
    with pytest.raises(TypeError, match="module-level function"):
        create_render_blueprint(lambda payload, progress: {}, executor="process")
    with pytest.raises(TypeError, match="module-level function"):
        ProcessRender(lambda payload, progress: {})
