"""The doctor's diagnostic stream, written the naive way and the library's way.

``naive_app`` serves ``GET /render/diagnose`` in the format of the library's
diagnostic route (``event: diagnose`` with data ``{"i", "n", "sent", "t0"}``,
then ``event: done``), as a plain Flask generator that yields each event in
two pieces, the ``event:`` line and then the ``data:`` line, and leaves
``TCP_NODELAY`` alone. On a server that does not set it (werkzeug's dev
server) each second piece waits for the ACK of the first: what the doctor
calls ``nagle``. Its headers are the right ones (``X-Accel-Buffering: no``,
``Cache-Control: no-cache``), so the split writes are its only fault.

``app`` is the library's own diagnostic route
(``create_render_blueprint(..., diagnose=True)``), for comparison.

No ``CONTENDERS``: ``make bench`` does not measure these;
``benchmarks.link`` and ``tests/integration/test_link.py`` point the doctor at
them over a link with a real round trip.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, request

from flask_sse_flush import create_render_blueprint

if TYPE_CHECKING:
    from flask_sse_flush import Progress


def create_naive_app() -> Flask:
    naive = Flask(__name__)

    @naive.get("/render/diagnose")
    def diagnose() -> Response:
        count = int(request.args.get("n", 20))
        interval = float(request.args.get("interval", 0.1))
        started = time.time()

        def events() -> Iterator[bytes]:
            for i in range(count):
                if i:
                    time.sleep(interval)
                data = {"i": i, "n": count, "sent": time.time(), "t0": started}
                yield b"event: diagnose\n"  # the naive pattern: two writes per event
                yield f"data: {json.dumps(data)}\n\n".encode()
            yield b"event: done\n"
            yield f"data: {json.dumps({'n': count})}\n\n".encode()

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return Response(events(), content_type="text/event-stream", headers=headers)

    return naive


def create_app() -> Flask:
    ours = Flask(__name__)

    def render(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
        return {"filename": "none", "url": "about:blank"}

    ours.register_blueprint(create_render_blueprint(render, diagnose=True))
    return ours


naive_app = create_naive_app()
app = create_app()
