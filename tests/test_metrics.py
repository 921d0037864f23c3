"""When the metrics are registered: at app start-up or the first stream, once, not at import.

Each case runs in a fresh interpreter, since prometheus-client's default
registry belongs to the process. ``tests/integration/test_metrics.py`` reads
the metrics from a real worker's ``/metrics``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("prometheus_client")

PRELUDE = """
import json, os, sys
from prometheus_client import REGISTRY

def ours():
    return sorted(m.name for m in REGISTRY.collect() if m.name.startswith("sse_flush_"))

def app():
    from flask import Flask
    from flask_sse_flush import create_render_blueprint
    made = Flask("app")
    made.register_blueprint(create_render_blueprint(lambda payload, progress: {}))
    return made

seen = {}
"""


def run(code: str, **env: str) -> dict[str, object]:
    environ = {k: v for k, v in os.environ.items() if k != "SSE_FLUSH_METRICS"}
    result = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code) + "\nprint(json.dumps(seen))"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**environ, **env},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # no warning, no traceback
    seen: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return seen


def test_registered_when_an_app_is_initialised_and_only_once() -> None:
    seen = run(
        """
        import flask_sse_flush
        seen["imported"] = ours()
        first = app()
        seen["first app"] = ours()
        from flask_sse_flush import SSEFlush
        from flask import Flask
        for _ in range(3):
            app()
            SSEFlush(Flask("another"))
        seen["more apps"] = ours()
        seen["open"] = REGISTRY.get_sample_value("sse_flush_open_streams")
        """
    )
    assert seen["imported"] == []
    assert "sse_flush_open_streams" in seen["first app"]  # type: ignore[operator]
    assert "sse_flush_jobs" in seen["first app"]  # type: ignore[operator]
    assert seen["more apps"] == seen["first app"]
    assert seen["open"] == 0


def test_registered_by_the_first_stream_without_an_app_extension() -> None:
    seen = run(
        """
        from flask import Flask
        from flask_sse_flush import EventStream, send_event
        from flask_sse_flush.testing import parse_events
        plain = Flask("plain")

        @plain.get("/events")
        def events():
            stream = EventStream()
            send_event(stream, "hello", {})
            stream.close()
            return stream.response()

        seen["app made"] = ours()
        response = plain.test_client().get("/events", buffered=False)
        seen["events"] = [e.event for e in parse_events(response)]
        seen["after"] = ours()
        seen["opened"] = REGISTRY.get_sample_value("sse_flush_streams_opened_total")
        """
    )
    assert seen["app made"] == []
    assert seen["events"] == ["hello"]
    assert "sse_flush_open_streams" in seen["after"]  # type: ignore[operator]
    assert seen["opened"] == 1


def test_off_registers_nothing_and_is_read_at_installation() -> None:
    seen = run(
        """
        import flask_sse_flush
        from flask_sse_flush import metrics
        os.environ["SSE_FLUSH_METRICS"] = "off"  # after the import: still in time
        app()
        seen["registered"] = ours()
        seen["enabled"] = metrics.enabled()
        """
    )
    assert seen == {"registered": [], "enabled": False}


def test_install_returns_the_same_metrics_every_time() -> None:
    seen = run(
        """
        from flask_sse_flush import metrics
        first = metrics.install()
        seen["same"] = all(metrics.install() is first for _ in range(3))
        seen["kind"] = type(first).__name__
        """
    )
    assert seen == {"same": True, "kind": "_Prometheus"}


def test_events_written_at_once_are_counted_as_having_waited_nothing() -> None:
    seen = run(
        """
        import threading
        from flask_sse_flush import metrics
        installed = metrics.install()
        installed.event_sent(0.003)
        threads = [
            threading.Thread(target=lambda: [installed.event_sent_at_once() for _ in range(1000)])
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        metrics.METRICS.event_sent_at_once()  # the process's metrics lead to the same count
        for family in REGISTRY.collect():
            for sample in family.samples:
                if sample.name.startswith("sse_flush_event"):
                    key = sample.name + "".join(f"/{v}" for v in sample.labels.values())
                    seen[key] = sample.value
        """
    )
    assert seen["sse_flush_events_sent_total"] == 4002  # not one lost to a race
    assert seen["sse_flush_event_queue_seconds_count"] == 4002
    assert seen["sse_flush_event_queue_seconds_sum"] == pytest.approx(0.003)
    assert seen["sse_flush_event_queue_seconds_bucket/0.0005"] == 4001
    assert seen["sse_flush_event_queue_seconds_bucket/0.0025"] == 4001
    assert seen["sse_flush_event_queue_seconds_bucket/0.005"] == 4002
    assert seen["sse_flush_event_queue_seconds_bucket/+Inf"] == 4002
