"""The demo app, instrumented for browser tests.

The render is the real one; a wrapper around its progress reporter logs the
time each report was sent, on this machine's monotonic clock. A harness page loads the demo page
in a same-origin frame, fills in and submits its form, watches the progress
bar with a MutationObserver (the moment the page shows an event is when
its handler ran) and posts what it saw back here. No browser driver needed,
so Chromium, Firefox and WebKit are tested the same way.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import Flask, Response, request

from examples.demo import create_app as create_demo
from examples.demo.render import RenderSettings, find_ffmpeg, render_video
from flask_sse_flush import EventStream, Progress, send_event

HARNESS = (Path(__file__).parent / "harness.html").read_text()
RELOAD = (Path(__file__).parent / "reload.html").read_text()


def create_app(log_dir: str, output_dir: str | None = None) -> Flask:
    logs = Path(log_dir)
    settings = RenderSettings(output_dir=Path(output_dir or logs / "videos"), ffmpeg=find_ffmpeg())

    def timed_render(payload: dict[str, Any], progress: Progress) -> dict[str, str]:
        sent_log = logs / "sent.jsonl"

        class Timed(Progress):
            def __call__(self, percent: float, phase: str) -> None:
                before = progress.last
                sent = time.monotonic()
                progress(percent, phase)
                if progress.last != before:
                    with sent_log.open("a") as f:
                        f.write(json.dumps({"progress": progress.last, "t": sent}) + "\n")

        return render_video(payload, Timed(lambda p, ph: None), settings)

    app = create_demo(render=timed_render, output_dir=settings.output_dir)

    @app.get("/__harness")
    def harness() -> str:
        return HARNESS

    @app.get("/__reload")
    def reload_harness() -> str:
        return RELOAD

    @app.get("/__ping")
    def ping() -> Response:
        # The server's monotonic clock (ms), so the page can tell how far its
        # own clock (performance.now(), monotonic too) is from it. Wall clocks
        # are no use here: a fresh-clone CI run saw the browser's and this
        # machine's drift 20 ms apart within one five-second render.
        now = time.monotonic() * 1000
        return Response(json.dumps({"now": now}), content_type="application/json")

    @app.get("/__library/stream")
    def library() -> Response:
        """The library's stream: events carrying their send time."""
        stream = EventStream(keepalive=5)

        def produce() -> None:
            for i in range(10):
                time.sleep(0.1)
                send_event(stream, "tick", {"i": i, "sent": time.time()})
            stream.close()

        response = stream.response()
        threading.Thread(target=produce, daemon=True).start()
        return response

    @app.get("/__control/stream")
    def control() -> Response:
        """A negative control: events without ``X-Accel-Buffering: no``."""

        def events() -> Iterator[bytes]:
            yield b": open\n\n"
            for i in range(10):
                time.sleep(0.1)
                yield f"data: {json.dumps({'i': i, 'sent': time.time()})}\n\n".encode()

        return Response(events(), content_type="text/event-stream")

    @app.post("/__report/<run>/<kind>")
    def report(run: str, kind: str) -> Response:
        (logs / f"{run}-{kind}.json").write_bytes(request.get_data())
        return Response(status=204)

    return app
