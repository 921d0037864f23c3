"""A bare Flask generator, one frame per yield, no library: the floor."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, jsonify, request

from . import Contender, gunicorn, werkzeug
from .common import KEEPALIVE, burn, pause, schedule, tick_frame

CONTENDERS = [
    Contender(
        "bare-gevent",
        "bare Flask generator, gunicorn -k gevent",
        10_000,
        gunicorn("benchmarks.contenders.bare:app"),
        rank=2,
    ),
    Contender(
        "naive-werkzeug",
        "naive Flask (two writes per event, no TCP_NODELAY), werkzeug",
        1_000,
        werkzeug("benchmarks.contenders.bare:naive_app"),
        "one OS thread per stream",
        rank=5,
    ),
]


def create_app(two_writes: bool = False) -> Flask:
    app = Flask(__name__)
    subscribers: set[queue.Queue[bytes]] = set()
    state = {"seq": 0}

    def publish(count: int, interval: float, start: int | None) -> None:
        due = schedule(count, interval, start)
        time.sleep(pause(0, due[0]))
        for i in range(count):
            state["seq"] += 1
            frame = tick_frame(state["seq"], due[i])
            for subscriber in list(subscribers):
                subscriber.put(frame)
            time.sleep(pause(interval, due[i + 1] if i + 1 < count else None))

    def split(frame: bytes) -> Iterator[bytes]:
        if two_writes:  # the naive pattern: the event line, then the data
            head, _, rest = frame.partition(b"\n")
            yield head + b"\n"
            yield rest
        else:
            yield frame

    @app.get("/sub")
    def sub() -> Response:
        inbox: queue.Queue[bytes] = queue.Queue()

        def events() -> Iterator[bytes]:
            subscribers.add(inbox)
            try:
                yield b": open\n\n"
                while True:
                    try:
                        frame = inbox.get(timeout=KEEPALIVE)
                    except queue.Empty:
                        yield b": keepalive\n\n"
                        continue
                    yield from split(frame)
            finally:
                subscribers.discard(inbox)

        return Response(
            events(), content_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.get("/pub")
    def pub() -> Any:
        count, interval = int(request.args["count"]), float(request.args["interval"])
        start = int(request.args["start"]) if "start" in request.args else None
        threading.Thread(target=publish, args=(count, interval, start), daemon=True).start()
        return jsonify(ok=True)

    @app.get("/count")
    def count() -> Any:
        return jsonify(n=len(subscribers))

    @app.get("/burst")
    def burst() -> Response:
        count = int(request.args["count"])

        def events() -> Iterator[bytes]:
            yield b": open\n\n"
            for seq in range(1, count + 1):
                yield from split(tick_frame(seq))

        return Response(events(), content_type="text/event-stream")

    @app.get("/cpu")
    def cpu() -> Any:
        # What a bare app does: a thread, which under gevent is a greenlet.
        threading.Thread(target=burn, args=(float(request.args["seconds"]),)).start()
        return jsonify(ok=True)

    return app


app = create_app()
naive_app = create_app(two_writes=True)
