"""The app the integration tests serve from real servers.

Its render job logs, to a file named in the payload, the wall-clock time at
which it sends each progress report, so a test in another process can tell
when each event was sent and compare it with when it arrived.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flask import Flask, Response, request

from flask_sse_flush import (
    Cancelled,
    Event,
    EventStream,
    Progress,
    StreamClosed,
    create_render_blueprint,
    send_event,
)
from flask_sse_flush.brokers import MemoryBroker
from flask_sse_flush.runtime import gevent_is_active
from flask_sse_flush.wsgi.servers import gunicorn_worker
from flask_sse_flush.wsgi.transport import client_socket


def _log(path: str | None, record: dict[str, Any]) -> None:
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _cpu_bound(payload: dict[str, Any], progress: Progress) -> None:
    """Hold the GIL in pure Python, reporting every `every` seconds."""
    log, every, until = payload.get("log"), float(payload["every"]), time.time() + payload["cpu"]
    report, i = time.time() + every, 0
    while time.time() < until:
        if time.time() >= report:
            sent = time.time()
            progress(min(i, 99), "rendering")
            _log(log, {"percent": i, "sent": sent})
            i, report = i + 1, report + every
        sum(range(200))  # busy: no I/O, no sleep, the GIL held


def _flood(payload: dict[str, Any], progress: Progress) -> None:
    """Report `flood` times as fast as possible; every report differs from the last."""
    for i in range(int(payload["flood"])):
        progress(i % 100, "rendering")
    progress(100, "rendering")
    _log(payload.get("log"), {"flooded": time.time()})


def render(payload: dict[str, Any], progress: Progress) -> dict[str, str]:
    log = payload.get("log")
    _log(log, {"started": time.time()})
    if "cpu" in payload:
        _cpu_bound(payload, progress)
        return {"filename": "cpu.mp4", "url": "/download/cpu.mp4"}
    if "flood" in payload:
        _flood(payload, progress)
        return {"filename": "flood.mp4", "url": "/download/flood.mp4"}
    if "block" in payload:
        # A blocking call gevent does not patch: it would freeze a greenlet's hub.
        blocking_sleep: Any = time.sleep
        if gevent_is_active():
            from gevent.monkey import get_original

            blocking_sleep = get_original("time", "sleep")
        progress(1, "blocked")
        blocking_sleep(float(payload["block"]))
    if "wait_for" in payload:
        # Hold the first report until the test has its clients in place.
        while not Path(payload["wait_for"]).exists():
            time.sleep(0.01)
    steps = int(payload.get("steps", 5))
    interval = float(payload.get("interval", 0.05))
    time.sleep(float(payload.get("delay_first", 0)))
    try:
        for i in range(steps):
            percent = round(100 * (i + 1) / steps)
            sent = time.time()
            progress(percent, "rendering")
            _log(log, {"percent": percent, "sent": sent})  # after: not part of the latency
            time.sleep(interval)
    except Cancelled:
        _log(log, {"cancelled": time.time()})
        raise
    if payload.get("fail"):
        raise RuntimeError(str(payload["fail"]))
    return {"filename": "out.mp4", "url": "/download/out.mp4"}


def quick_render(payload: dict[str, Any], progress: Progress) -> dict[str, str]:
    """A render that ends at once: what the fuzzer's valid requests start."""
    progress(50, "rendering")
    return {"filename": "f.mp4", "url": "/download/f.mp4"}


def validate_title(payload: dict[str, Any]) -> dict[str, Any]:
    """Accept exactly ``{"title": <1 to 50 characters>}``."""
    title = payload.get("title")
    if set(payload) != {"title"} or not isinstance(title, str) or not 1 <= len(title) <= 50:
        raise ValueError('the payload must be {"title": <1 to 50 characters>}')
    return payload


def _nodelay(environ: dict[str, Any]) -> int | None:
    sock = client_socket(environ)
    if sock is None:
        try:
            import uwsgi  # type: ignore[import-not-found]
        except ImportError:
            return None
        # uWSGI keeps the socket to itself: look at a duplicate of its fd.
        with socket.fromfd(uwsgi.connection_fd(), socket.AF_INET, socket.SOCK_STREAM) as dup:
            return int(dup.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def record_nodelay(app: Callable[..., Iterable[bytes]], log_dir: str) -> Callable[..., Any]:
    """WSGI middleware: log the socket's TCP_NODELAY before and after the app."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        before = _nodelay(environ)
        result = app(environ, start_response)
        record = {"path": environ.get("PATH_INFO"), "before": before, "after": _nodelay(environ)}
        _log(str(Path(log_dir) / "nodelay.jsonl"), record)
        return result

    return wrapped


EIGHT = """<!doctype html><meta charset="utf-8"><title>streams at once</title>
<script>
const streams = [];
const payload = encodeURIComponent(JSON.stringify({steps: 20, interval: 0.1}));
for (let i = 0; i < %(n)d; i++) {
  const s = {first: null, last: null, complete: false, events: 0};
  streams.push(s);
  const source = new EventSource("/render/stream?data=" + payload);
  source.addEventListener("progress", () => {
    const now = performance.timeOrigin + performance.now();
    if (s.first === null) s.first = now;
    s.events += 1;
  });
  source.addEventListener("complete", () => {
    s.last = performance.timeOrigin + performance.now();
    s.complete = true;
    source.close();
    if (streams.every((x) => x.complete)) {
      fetch("/__report/%(run)s/done", {method: "POST", body: JSON.stringify({streams})});
    }
  });
}
</script>
"""


def create_app(log_dir: str | None = None) -> Any:
    app = Flask(__name__)
    app.register_blueprint(create_render_blueprint(render, keepalive=1.0, diagnose=True))
    app.register_blueprint(
        create_render_blueprint(
            render, name="cancelling", url_prefix="/cancelling", on_disconnect="cancel"
        )
    )
    app.register_blueprint(
        create_render_blueprint(
            render, name="greenlet", url_prefix="/greenlet", executor="greenlet"
        )
    )
    app.register_blueprint(
        create_render_blueprint(render, name="process", url_prefix="/process", executor="process")
    )
    app.register_blueprint(
        create_render_blueprint(
            quick_render,
            name="fuzz",
            url_prefix="/fuzz",
            validate=validate_title,
            identity=lambda: request.headers.get("X-User") or None,
            max_payload=2048,
            keepalive=0.5,
        )
    )
    app.register_blueprint(
        create_render_blueprint(
            render,
            name="short",
            url_prefix="/short",
            broker=MemoryBroker(retention=1.0),
            max_jobs=None,
        )
    )

    @app.get("/__eight")
    def eight() -> Response:
        """A page with ``n`` EventSources at once; it posts when each began and ended."""
        return Response(EIGHT % {"run": request.args["run"], "n": int(request.args["n"])})

    @app.post("/__report/<run>/<kind>")
    def report(run: str, kind: str) -> Response:
        if log_dir:
            (Path(log_dir) / f"{run}-{kind}.json").write_bytes(request.get_data())
        return Response(status=204)

    @app.get("/__objects")
    def objects() -> Any:
        """Live objects by type after a collection, threads and greenlets (leak checks)."""
        import collections
        import gc

        gc.collect()
        counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
        return {"types": dict(counts.most_common(60)), "threads": threading.active_count()}

    @app.get("/__hub")
    def hub() -> Any:
        """The OS thread of the worker's hub, as gevent's monitor names it."""
        import gevent

        return {"thread": hex(gevent.get_hub().thread_ident)}

    switches: list[Any] = [0, None]  # the count, and the tracer it replaced

    @app.get("/__switches/<action>")
    def count_switches(action: str) -> Any:
        """``start``: count greenlet switches into anything but the hub; ``stop``: how many."""
        import gevent
        import greenlet

        if action == "start":
            hub = gevent.get_hub()
            switches[0] = 0

            def trace(event: str, args: Any) -> None:
                if event in ("switch", "throw") and args[1] is not hub:
                    switches[0] += 1

            switches[1] = greenlet.settrace(trace)
            return {"n": 0}
        greenlet.settrace(switches[1])
        return {"n": switches[0]}

    @app.get("/__subscribers/<job_id>")
    def subscribers(job_id: str) -> Any:
        service = app.extensions["sse_flush"][request.args.get("bp", "sse_flush")]
        return {"n": service.broker.subscribers(job_id)}

    @app.get("/timed")
    def timed() -> Any:
        """Events carrying their own send time, from a thread beside the stream."""
        count = int(request.args.get("count", 20))
        interval = float(request.args.get("interval", 0.02))
        stream = EventStream(keepalive=1.0)

        def produce() -> None:
            for i in range(count):
                time.sleep(interval)
                send_event(stream, "tick", {"i": i, "sent": time.time()})
            stream.close()

        response = stream.response()
        if request.args.get("native") and gevent_is_active():
            # A real OS thread beside the hub: its sends must wake the hub.
            import gevent

            gevent.get_hub().threadpool.spawn(produce)
        else:
            threading.Thread(target=produce, daemon=True).start()
        return response

    idle: set[EventStream] = set()

    @app.get("/idle")
    def idle_stream() -> Any:
        """A stream that waits for ``/idle/send``: nothing of its own runs meanwhile."""
        keepalive = float(request.args.get("keepalive", 15))
        max_seconds = request.args.get("max_seconds")
        stream = EventStream(
            keepalive=keepalive,
            max_seconds=None if max_seconds is None else float(max_seconds),
        )
        idle.add(stream)
        stream.on_close(lambda: idle.discard(stream))
        return stream.response()

    @app.get("/idle/send")
    def idle_send() -> Any:
        """Send ``count`` events to every ``/idle`` stream, now; ``close=1`` ends them.

        ``from=native``: the events are sent from a native OS thread (under
        gevent), and the response waits until they are.
        """
        count = int(request.args.get("count", 1))
        source = request.args.get("from", "here")
        close = bool(request.args.get("close"))

        def send() -> None:
            for stream in list(idle):
                for i in range(count):
                    stream.send(Event({"i": i, "from": source, "sent": time.time()}, event="tick"))
                if close:
                    stream.close()

        if source == "native" and gevent_is_active():
            import gevent

            gevent.get_hub().threadpool.spawn(send).get()
        else:
            send()
        return {"streams": len(idle)}

    @app.get("/idle/handoff")
    def idle_handoff() -> Any:
        """``count`` pairs of events to every ``/idle`` stream, each pair in a known order.

        Event ``{"from": "native", "i": n}`` is sent from a native thread;
        once that send returned, ``{"from": "hub", "i": n}`` is sent from
        here: the first happened before the second, so every client must
        get them in that order. This greenlet learns of the first send
        without letting the loop run (it spins on a flag), so the native
        thread's frame may still wait in the queue. The streams close at the
        end.
        """
        import gevent  # served by a gevent worker only

        count = int(request.args.get("count", 100))
        streams = list(idle)
        pool = gevent.get_hub().threadpool

        def send(source: str, i: int) -> None:
            for stream in streams:
                stream.send(Event({"from": source, "i": i}, event="tick"))

        for i in range(count):
            sent: list[bool] = []

            def first(i: int = i, sent: list[bool] = sent) -> None:
                send("native", i)
                sent.append(True)

            pool.spawn(first)
            while not sent:  # no gevent call: the loop does not run meanwhile
                pass
            send("hub", i)
        for stream in streams:
            stream.close()
        return {"streams": len(streams)}

    @app.get("/__parked")
    def parked() -> Any:
        """How many streams the stream worker holds parked (``null`` under any other)."""
        return {"n": getattr(gunicorn_worker(), "parked", None)}

    @app.get("/burst")
    def burst() -> Any:
        """``count`` events sent back to back, faster than any socket takes them.

        ``after``: seconds to wait first, so that the stream is already
        waiting for its next event when the burst begins. ``buffer``: the
        stream's (none by default); past it the stream ends as too slow.
        """
        count = int(request.args.get("count", 2000))
        pad = "x" * int(request.args.get("pad", 60))
        after = float(request.args.get("after", 0))
        buffer = request.args.get("buffer")
        stream = EventStream(keepalive=1.0, buffer=None if buffer is None else int(buffer))

        def produce() -> None:
            if after:
                time.sleep(after)
            try:
                for i in range(count):
                    stream.send(Event({"i": i, "pad": pad}, event="tick"))
            except StreamClosed:
                return  # too slow: the stream ended
            stream.close()

        response = stream.response()
        threading.Thread(target=produce, daemon=True).start()
        return response

    if log_dir:
        app.wsgi_app = record_nodelay(app.wsgi_app, log_dir)  # type: ignore[method-assign]
    app.wsgi_app = hold_back(app.wsgi_app)  # type: ignore[method-assign]
    return with_metrics(app)


def hold_back(app: Callable[..., Iterable[bytes]]) -> Callable[..., Any]:
    """WSGI middleware for ``/held/<path>``: ``<path>``'s body, each chunk after the
    first held back until the next one comes (as a buffering middleware would).

    It passes the server's ``start_response`` on untouched, so only the body
    tells that something stands between the app and the server.
    """

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if not path.startswith("/held/"):
            return app(environ, start_response)
        environ["PATH_INFO"] = path[len("/held") :]
        body = app(environ, start_response)

        def held() -> Iterable[bytes]:
            try:
                kept: bytes | None = None
                for n, chunk in enumerate(body):
                    if n == 0:
                        yield chunk  # the head goes out with it
                    elif kept is None:
                        kept = chunk
                    else:
                        yield kept + chunk
                        kept = None
                if kept is not None:
                    yield kept
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()

        return held()

    return wrapped


def with_metrics(app: Flask) -> Any:
    """Mount prometheus-client's own WSGI app at /metrics, as its docs say."""
    from prometheus_client import make_wsgi_app
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, {"/metrics": make_wsgi_app()}
    )
    return app
