"""flask-sse-flush: a detached job's broker fans events out to EventStreams.

The broadcast publishes from a native OS thread, as the blueprint runs its
jobs by default, so the fan-out crosses from that thread to the hub.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, Response, jsonify, request

from flask_sse_flush import Event, EventStream
from flask_sse_flush.brokers import MemoryBroker, event_id
from flask_sse_flush.runtime import new_lock, start_greenlet, start_native_thread

from . import Contender, gunicorn, werkzeug
from .common import KEEPALIVE, burn, pause, schedule, tick

CONTENDERS = [
    Contender(
        "ours-gevent",
        "flask-sse-flush, gunicorn -k gevent",
        10_000,
        gunicorn("benchmarks.contenders.ours:app"),
        rank=1,
    ),
    Contender(
        "ours-werkzeug",
        "flask-sse-flush, werkzeug dev server",
        1_000,
        werkzeug("benchmarks.contenders.ours:app"),
        "one OS thread per stream: 10,000 threads is not what a dev server is for",
        rank=4,
    ),
]

JOB = "bench"


def create_app() -> Flask:
    app = Flask(__name__)
    # The log is for replay; a broadcast benchmark needs only a little of it.
    broker = MemoryBroker(max_events=16)
    broker.create(JOB)
    lock = new_lock()  # the publisher is a native thread
    state = {"seq": 0}

    def publish(count: int, interval: float, start: int | None) -> None:
        due = schedule(count, interval, start)
        time.sleep(pause(0, due[0]))
        for i in range(count):
            with lock:
                state["seq"] += 1
                seq = state["seq"]
            event = Event(tick(seq, due[i]), event="tick", id=event_id(JOB, seq))
            broker.publish(JOB, seq, event)
            time.sleep(pause(interval, due[i + 1] if i + 1 < count else None))

    @app.get("/sub")
    def sub() -> Any:
        stream = EventStream(keepalive=KEEPALIVE)
        status = broker.status(JOB)
        assert status is not None
        stream.on_close(lambda: broker.unsubscribe(JOB, stream))
        broker.subscribe(JOB, stream, after=status.last_seq)
        return stream.response()

    @app.get("/pub")
    def pub() -> Any:
        count, interval = int(request.args["count"]), float(request.args["interval"])
        start = int(request.args["start"]) if "start" in request.args else None
        start_native_thread(lambda: publish(count, interval, start), name="bench publisher")
        return jsonify(ok=True)

    @app.get("/count")
    def count() -> Any:
        return jsonify(n=broker.subscribers(JOB))

    @app.get("/burst")
    def burst() -> Response:
        count = int(request.args["count"])
        stream = EventStream(keepalive=KEEPALIVE, buffer=None)

        def produce() -> None:
            for seq in range(1, count + 1):
                stream.send(Event(tick(seq), event="tick"))
            stream.close()

        response = stream.response()
        start_greenlet(produce, name="bench burst")
        return response

    @app.get("/cpu")
    def cpu() -> Any:
        seconds = float(request.args["seconds"])
        start_native_thread(lambda: burn(seconds), name="bench cpu job")  # the default executor
        return jsonify(ok=True)

    return app


app = create_app()
