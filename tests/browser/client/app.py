"""What the ``SSEFlushSource`` browser tests serve (``gunicorn -k gevent``, one worker).

- ``/render/stream``: a paced render whose jobs belong to the caller's
  ``Authorization: Bearer <name>`` (the ``identity`` hook);
- ``/limited/render/stream``: the same under ``max_streams=1``, so a second
  stream gets ``503`` with ``Retry-After: 1``;
- ``/rotating/render/stream``: streams that end every 2 s;
- ``/sse?channel=...``: channels, where ``secret-*`` ones are refused (``403``);
- ``/__page/<scenario>``: the test pages (``page.html``), and
  ``/__report/<run>/<kind>``, where they post what they saw.

Every request is logged (``requests.jsonl``: time, path, status and the
headers that matter), so a test can tell what the browser asked for, and when.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flask import Flask, Response, request

from flask_sse_flush import SSEFlush
from tests.integration.channels.app import paced_render  # the server runs with the checkout

PAGES = Path(__file__).resolve().parent


def bearer() -> str | None:
    kind, _, token = request.headers.get("Authorization", "").partition(" ")
    return token or None if kind == "Bearer" else None


def create_app(log_dir: str) -> Flask:
    logs = Path(log_dir)
    app = Flask(__name__)
    app.config["SSE_FLUSH_KEEPALIVE"] = 1.0  # a dead connection shows in 2 s
    sse = SSEFlush(app, authorize=lambda channel: not channel.startswith("secret"))
    app.register_blueprint(sse.render_blueprint(paced_render, identity=bearer))
    app.register_blueprint(
        sse.render_blueprint(paced_render, name="limited", url_prefix="/limited", max_streams=1)
    )
    app.register_blueprint(
        sse.render_blueprint(
            paced_render, name="rotating", url_prefix="/rotating", max_stream_seconds=2.0
        )
    )

    @app.get("/__page/<scenario>")
    def page(scenario: str) -> Response:
        html = (PAGES / "page.html").read_text()
        return Response(html, content_type="text/html; charset=utf-8")

    @app.post("/__report/<run>/<kind>")
    def report(run: str, kind: str) -> Response:
        (logs / f"{run}-{kind}.json").write_bytes(request.get_data())
        return Response(status=204)

    @app.after_request
    def log_request(response: Response) -> Response:
        if not request.path.startswith("/__report"):
            entry = {
                "t": time.time(),
                "method": request.method,
                "path": request.full_path.rstrip("?"),
                "status": response.status_code,
                "last_event_id": request.headers.get("Last-Event-ID"),
                "authorization": request.headers.get("Authorization"),
            }
            with (logs / "requests.jsonl").open("a") as f:
                f.write(json.dumps(entry) + "\n")
        return response

    return app
