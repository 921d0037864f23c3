"""A render API that allows one other origin, and the pages that call it from there.

gunicorn binds three loopback ports to this one app: the API's, an allowed
page origin's, and a refused one's (an origin is scheme, host *and* port).
A page signs in on its own origin (a cookie: cookies are per host, not per
port), then opens ``new EventSource(api, {withCredentials: true})`` and
posts what happened back to its own origin.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from flask import Flask, Response, request

from flask_sse_flush import Progress, create_render_blueprint

PAGE = """<!doctype html>
<meta charset="utf-8"><title>cross-origin progress</title>
<pre id="log"></pre>
<script>
const report = {events: [], errors: 0, readyState: null, origin: location.origin};
const source = new EventSource(%(url)s, {withCredentials: true});
function done(reason) {
  report.reason = reason;
  report.readyState = source.readyState;
  source.close();
  fetch("/__report/%(run)s/done", {method: "POST", body: JSON.stringify(report)});
}
for (const name of ["progress", "complete", "error"]) {
  source.addEventListener(name, (e) => {
    report.events.push({event: name, id: e.lastEventId, data: JSON.parse(e.data)});
    if (name !== "progress") done(name);
  });
}
source.onerror = () => {
  report.errors += 1;
  if (source.readyState === EventSource.CLOSED) done("closed");
};
setTimeout(() => done("timeout"), 15000);
</script>
"""


def render(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    for step in range(1, 6):
        time.sleep(0.05)
        progress(step * 20, "rendering")
    return {"filename": "out.mp4", "url": "/download/out.mp4"}


def create_app(log_dir: str) -> Flask:
    logs = Path(log_dir)
    app = Flask(__name__)
    app.register_blueprint(
        create_render_blueprint(
            render,
            identity=lambda: request.cookies.get("user"),
            cors_origins=[os.environ["CORS_ALLOWED_ORIGIN"]],
        )
    )

    @app.get("/__page")
    def page() -> Response:
        url = request.args["api"] + "/render/stream?data=%7B%7D"
        body = PAGE % {"url": json.dumps(url), "run": request.args["run"]}
        response = Response(body, content_type="text/html")
        response.set_cookie("user", request.args["user"], samesite="Lax")
        return response

    @app.post("/__report/<run>/<kind>")
    def report(run: str, kind: str) -> Response:
        (logs / f"{run}-{kind}.json").write_bytes(request.get_data())
        return Response(status=204)

    return app
