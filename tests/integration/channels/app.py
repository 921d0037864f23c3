"""Channels on ``gunicorn -k gevent -w 4`` with one Redis: what the channel tests serve.

``SSE_FLUSH_REDIS_URL`` (and ``SSE_FLUSH_MAX_EVENTS``) come from the
environment through Flask's ``from_prefixed_env``. Events are published from
a view, from a thread the view starts (a gevent thread under gunicorn's
patching, and a native OS thread), and from other processes; a browser page
follows one channel with ``EventSource`` and posts back what it saw.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, request

from flask_sse_flush import Progress, SSEFlush

PAGE = """<!doctype html>
<meta charset="utf-8"><title>news</title>
<script>
const report = {events: [], errors: 0};
const source = new EventSource("/stream?channel=news");
source.onopen = () => fetch("/__report/%(run)s/open", {method: "POST", body: "{}"});
source.addEventListener("headline", (e) => {
  const data = JSON.parse(e.data);
  report.events.push({id: e.lastEventId, data, at: performance.now()});
  if (data.last) {
    source.close();
    clockOffset().then((offset) => {
      report.clockOffset = offset;
      fetch("/__report/%(run)s/done", {method: "POST", body: JSON.stringify(report)});
    });
  }
});
source.onerror = () => { report.errors += 1; };
// How far this page's clock (performance.now()) is ahead of the server's
// monotonic one, the median of five. Wall clocks are no use: they are adjusted
// while a run goes on, and browsers follow that differently from this machine.
async function clockOffset() {
  const offsets = [];
  for (let i = 0; i < 5; i++) {
    const sent = performance.now();
    const ping = await (await fetch("/__ping", {cache: "no-store"})).json();
    const back = performance.now();
    offsets.push((sent + back) / 2 - ping.now);
  }
  return offsets.sort((a, b) => a - b)[2];
}
</script>
"""


ROTATE_PAGE = """<!doctype html>
<meta charset="utf-8"><title>rotating</title>
<script>
const report = {events: [], opens: 0};
const data = encodeURIComponent(JSON.stringify({steps: 40, interval: 0.25}));
const source = new EventSource("/rotating/render/stream?data=" + data);
source.onopen = () => { report.opens += 1; };
source.addEventListener("progress", (e) => {
  report.events.push({id: e.lastEventId, type: "progress", progress: JSON.parse(e.data).progress});
});
source.addEventListener("complete", (e) => {
  report.events.push({id: e.lastEventId, type: "complete"});
  source.close();
  fetch("/__report/%(run)s/done", {method: "POST", body: JSON.stringify(report)});
});
</script>
"""


def stamp(data: dict[str, Any]) -> dict[str, Any]:
    """When an event is published: ``sent`` on the wall clock (the raw
    clients' clock) and ``mono`` on the monotonic one (the page's)."""
    data.update(sent=time.time(), mono=time.monotonic())
    return data


def paced_render(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    steps, interval = int(payload.get("steps", 40)), float(payload.get("interval", 0.25))
    for step in range(1, steps + 1):
        progress(round(100 * step / steps), "rendering")
        time.sleep(interval)
    return {"filename": "paced.mp4", "url": "/files/paced.mp4"}


def render(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    # Reads the app's config: the render runs in the app's context.
    for step in range(1, 4):
        time.sleep(0.02)
        progress(step * 25, "rendering")
    return {"filename": current_app.config["RENDER_FILENAME"], "url": "/files/out.mp4"}


def create_app(log_dir: str | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_prefixed_env()  # SSE_FLUSH_REDIS_URL, SSE_FLUSH_MAX_EVENTS, ...
    app.config["RENDER_FILENAME"] = "from-config.mp4"
    sse = SSEFlush(app, authorize=lambda channel: not channel.startswith("secret"))
    app.register_blueprint(sse.render_blueprint(render))
    # Streams that rotate every 2 s (a platform's hard limit, say).
    app.register_blueprint(
        sse.render_blueprint(
            paced_render, name="rotating", url_prefix="/rotating", max_stream_seconds=2.0
        )
    )

    @app.get("/stream")
    def stream() -> Response:
        return sse.stream(*request.args.getlist("channel"))

    @app.post("/publish/<how>")
    def publish(how: str) -> Any:
        channel = request.args.get("channel", "news")
        data = request.get_json()
        if how == "request":
            stamp(data)
            return {"id": sse.publish(channel, data, event="headline")}
        ids: list[str] = []

        def send() -> None:
            stamp(data)
            ids.append(sse.publish(channel, data, event="headline"))

        if how == "thread":
            thread = threading.Thread(target=send)  # a greenlet under gunicorn's gevent
            thread.start()
            thread.join()
        else:  # "native": a real OS thread, as a job's
            from gevent.monkey import get_original

            start_new_thread = get_original("_thread", "start_new_thread")
            done: list[bool] = []  # a flag: any Event's lock is a gevent lock here

            def send_and_flag() -> None:
                send()
                done.append(True)

            start_new_thread(send_and_flag, ())
            while not done:
                time.sleep(0.001)  # gevent's sleep: the hub runs the publish
        return {"id": ids[0]}

    @app.get("/__ping")
    def ping() -> Any:
        return {"now": time.monotonic() * 1000}

    @app.get("/__page")
    def page() -> Response:
        return Response(PAGE % {"run": request.args["run"]}, content_type="text/html")

    @app.get("/__rotate")
    def rotate_page() -> Response:
        return Response(ROTATE_PAGE % {"run": request.args["run"]}, content_type="text/html")

    @app.post("/__report/<run>/<kind>")
    def report(run: str, kind: str) -> Response:
        assert log_dir is not None
        (Path(log_dir) / f"{run}-{kind}.json").write_bytes(request.get_data())
        return Response(status=204)

    @app.after_request
    def worker_pid(response: Response) -> Response:
        response.headers["X-Worker-Pid"] = str(os.getpid())
        return response

    return app


if __name__ == "__main__":  # a process with no app: what a cron job or a job worker does
    import sys

    url, channel, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    publisher = SSEFlush(redis_url=url)
    for n in range(count):
        data = stamp({"from": "process", "n": n, "last": n == count - 1})
        print(json.dumps(publisher.publish(channel, data, event="headline")), flush=True)
        time.sleep(0.02)
