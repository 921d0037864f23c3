"""flask-sse-flush: a detached job's broker fans events out to EventStreams."""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import Flask, Response, jsonify, request

from flask_sse_flush import Event, EventStream
from flask_sse_flush._concurrency import start_greenlet, start_native_thread
from flask_sse_flush.brokers import MemoryBroker, event_id

from .common import KEEPALIVE, burn, pause, schedule, tick

JOB = "bench"


def create_app() -> Flask:
    app = Flask(__name__)
    # The log is for replay; a broadcast benchmark needs only a little of it.
    broker = MemoryBroker(max_events=16)
    broker.create(JOB)
    lock = threading.Lock()
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
        start_greenlet(lambda: publish(count, interval, start), name="bench publisher")
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
