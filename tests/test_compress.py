"""Compression middleware in the app: Flask-Compress, the real package.

Configured the worst way for event streams (``text/event-stream`` in its
mimetype list, streams compressed), it still leaves the library's streams
alone: neither compressed nor held back. A plain generator response shows
what it does otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, Response

from flask_sse_flush import Progress, create_render_blueprint
from flask_sse_flush.testing import iter_events

flask_compress = pytest.importorskip("flask_compress")
BROWSER = {"Accept-Encoding": "gzip, deflate, br, zstd"}


def make_app(render: Any) -> Flask:
    app = Flask(__name__)
    app.config["COMPRESS_MIMETYPES"] = ["text/event-stream", "application/json"]
    app.config["COMPRESS_STREAMS"] = True
    flask_compress.Compress(app)
    app.register_blueprint(create_render_blueprint(render))

    @app.get("/plain")
    def plain() -> Response:
        def events() -> Iterator[bytes]:
            for i in range(50):
                yield b"data: %d\n\n" % i

        return Response(events(), content_type="text/event-stream")

    return app


def test_the_middleware_really_compresses_event_streams() -> None:
    client = make_app(lambda p, g: {}).test_client()
    response = client.get("/plain", headers=BROWSER)
    assert response.headers.get("Content-Encoding") in {"deflate", "br", "zstd", "gzip"}


def test_library_streams_are_neither_compressed_nor_buffered() -> None:
    gate = threading.Event()

    def render(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
        progress(10, "rendering")
        assert gate.wait(5), "the first event was held back"
        progress(20, "rendering")
        return {"filename": "a.mp4", "url": "/a.mp4"}

    client = make_app(render).test_client()
    response = client.get("/render/stream?data=%7B%7D", headers=BROWSER, buffered=False)
    assert response.headers["Content-Encoding"] == "identity"
    events = iter_events(response)
    # The first event comes out while the job waits: nothing buffers it.
    assert next(events).json() == {"progress": 10, "phase": "rendering"}
    gate.set()
    assert [e.event for e in events] == ["progress", "complete"]
