"""The render the scale-out tests run, on web workers and in a job worker.

It appends to a log file named in the payload: ``started`` once per run (so
a test can count runs), and the wall-clock time each report is sent.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

from flask_sse_flush import Cancelled, Progress, run_job
from flask_sse_flush.brokers import RedisBroker


def _log(path: str | None, record: dict[str, Any]) -> None:
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def render(payload: dict[str, Any], progress: Progress) -> dict[str, str]:
    log = payload.get("log")
    _log(log, {"started": time.time(), "pid": os.getpid()})
    if "wait_for" in payload:
        while not Path(payload["wait_for"]).exists():
            time.sleep(0.01)
    if payload.get("spin"):
        # Report as fast as it can, for ever: the job thread then almost always
        # holds its job's lock, waiting for the hub to publish its last report.
        for i in itertools.count():
            progress(i % 100, "rendering")
    steps = int(payload.get("steps", 5))
    interval = float(payload.get("interval", 0.05))
    try:
        for i in range(steps):
            percent = round(100 * (i + 1) / steps)
            sent = time.time()
            progress(percent, "rendering")
            _log(log, {"percent": percent, "sent": sent})
            time.sleep(interval)
    except Cancelled:
        _log(log, {"cancelled": time.time()})
        raise
    if payload.get("fail"):
        raise RuntimeError(str(payload["fail"]))
    return {"filename": "out.mp4", "url": "/download/out.mp4"}


def broker() -> RedisBroker:
    return RedisBroker(
        os.environ["SCALED_REDIS_URL"],
        prefix=os.environ.get("SCALED_REDIS_PREFIX", "sse_flush:"),
        outage_timeout=float(os.environ.get("SCALED_OUTAGE_TIMEOUT", "30")),
        request_timeout=float(os.environ.get("SCALED_REQUEST_TIMEOUT", "5")),
        lease=float(os.environ.get("SCALED_LEASE", "10")),
    )


_BROKER: RedisBroker | None = None


def run_render(job_id: str, payload: dict[str, Any]) -> None:
    """The queued task: what an RQ worker runs for a job a web worker created."""
    global _BROKER
    if _BROKER is None:
        _BROKER = broker()
    run_job(render, job_id, payload, _BROKER)
