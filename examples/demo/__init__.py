"""The demo app that ``make run`` serves: a page with a live progress bar.

An example, not part of the library: it lives outside the package (the
wheel holds none of it) and uses only the public API. ``make run`` serves
it from the checkout, as ``gunicorn 'examples.demo:create_app()'``.

It renders a real MP4 (Pillow draws the frames, ffmpeg from
``imageio-ffmpeg`` encodes them) and streams true progress over SSE to a
page that follows it with ``SSEFlushSource`` (served by the extension as
``/sse-flush.js``), logs each event with its delay from the server's send
time (``SSE_FLUSH_SEND_TIME``), and plays the finished video.
Videos go to ``SSE_FLUSH_DEMO_OUTPUT_DIR`` (config or environment), by
default a folder in the system's temporary directory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, render_template, send_from_directory

from flask_sse_flush import Progress, RenderFunction, SSEFlush

from .render import (
    FILENAME,
    RenderSettings,
    default_output_dir,
    find_ffmpeg,
    render_video,
    validate_payload,
)

__all__ = ["create_app"]


def create_app(
    *, output_dir: str | Path | None = None, render: RenderFunction | None = None, **config: Any
) -> Flask:
    """Build the demo application.

    :param output_dir: where finished videos go; else the
        ``SSE_FLUSH_DEMO_OUTPUT_DIR`` config key (passed in ``config``), else
        that environment variable, else a folder in the temporary directory.
    :param render: the render job; by default the real video render.
    :param config: extra Flask config (e.g. ``SSE_FLUSH_KEEPALIVE``).
    """
    app = Flask(__name__)
    app.config["SSE_FLUSH_RETRY"] = 2000
    # Each event carries the server's time of sending it: the page shows its delay.
    app.config["SSE_FLUSH_SEND_TIME"] = True
    app.config.update(config)
    folder = Path(
        output_dir
        or app.config.get("SSE_FLUSH_DEMO_OUTPUT_DIR")
        or os.environ.get("SSE_FLUSH_DEMO_OUTPUT_DIR")
        or default_output_dir()
    )
    settings = RenderSettings(output_dir=folder, ffmpeg=find_ffmpeg())
    app.config["SSE_FLUSH_DEMO_OUTPUT_DIR"] = str(folder)

    def real_render(payload: dict[str, Any], progress: Progress) -> dict[str, str]:
        return render_video(payload, progress, settings)

    sse = SSEFlush(app)  # also serves the client, /sse-flush.js
    app.register_blueprint(sse.render_blueprint(render or real_render, validate=validate_payload))

    @app.get("/")
    def index() -> str:
        return render_template("index.html")

    @app.get("/now")
    def now() -> Response:
        # The server's clock (ms): the page measures how far its own is from
        # it, so the delays it shows are on one clock.
        return jsonify(now=time.time() * 1000)

    @app.get("/download/<filename>")
    def download(filename: str) -> Response:
        # Only names the demo itself gives its videos, and only files it made.
        if not FILENAME.fullmatch(filename) or not (folder / filename).is_file():
            response = jsonify(error="no such video")
            response.status_code = 404
            return response
        return send_from_directory(folder, filename, mimetype="video/mp4", as_attachment=True)

    return app
