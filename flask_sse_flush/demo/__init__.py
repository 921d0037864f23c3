"""The demo app that ``make run`` serves: a page with a live progress bar.

Its render job simulates the original service's two phases, bundling then
rendering, reporting through the same mapping helpers.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, render_template

from .. import Progress, create_render_blueprint, map_bundle_progress, map_render_progress

__all__ = ["create_app", "simulated_render"]


def simulated_render(payload: dict[str, Any], progress: Progress) -> dict[str, str]:
    """Pretend to bundle and render a video, reporting progress as it goes.

    ``payload`` may carry ``"seconds"`` (0.1 to 60, default 4): how long the
    whole job takes; and ``"fail": true`` to end with an error instead.
    """
    seconds = float(payload.get("seconds", 4))
    steps = 40
    for i in range(steps + 1):
        progress(map_bundle_progress(100 * i / steps), "bundling")
        time.sleep(seconds / 4 / steps)
    for i in range(steps + 1):
        if payload.get("fail") and i == steps // 2:
            raise RuntimeError("the renderer crashed half way (as requested)")
        progress(map_render_progress(i / steps), "rendering")
        time.sleep(seconds * 3 / 4 / steps)
    name = f"render-{int(time.time())}.mp4"
    return {"filename": name, "url": f"/download/{name}"}


def _validate(payload: dict[str, Any]) -> None:
    seconds = payload.get("seconds", 4)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ValueError("'seconds' must be a number")
    if not 0.1 <= seconds <= 60:
        raise ValueError("'seconds' must be between 0.1 and 60")


def create_app() -> Flask:
    """Build the demo application."""
    app = Flask(__name__)
    app.register_blueprint(create_render_blueprint(simulated_render, validate=_validate))

    @app.get("/")
    def index() -> str:
        return render_template("index.html")

    return app
