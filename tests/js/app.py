"""The server the documentation's JavaScript samples run against (``gunicorn -k gevent``).

The quickstart's render (a ``{"title": ...}`` payload, four quick progress
events), any payload accepted, and the extension's channels.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Flask

from flask_sse_flush import Progress, SSEFlush


def render(payload: dict[str, Any], progress: Progress) -> dict[str, str]:
    for step in range(1, 5):
        time.sleep(0.05)
        progress(step * 25, "rendering")
    return {"filename": "out.mp4", "url": "https://cdn.example.com/out.mp4"}


def create_app(log_dir: str) -> Flask:
    app = Flask(__name__)
    app.config["SSE_FLUSH_KEEPALIVE"] = 1.0
    sse = SSEFlush(app, authorize=lambda channel: True)
    app.register_blueprint(sse.render_blueprint(render))
    return app
