"""flask-sse-flush: a detached job's broker fans events out to EventStreams.

The broadcast publishes from a greenlet, as a view or an I/O-bound job
publishes, and as the bare generator's ``threading.Thread`` (a greenlet
under gevent) does: the same footing. ``/pub?from=native`` publishes from
a native OS thread instead, as the blueprint runs CPU-bound jobs by
default, so each event also crosses from that thread to the hub; the
runner measures that too, at one stream.

``ours-stream`` is ``ours-gevent`` on the library's stream worker
(``-k flask_sse_flush.wsgi.worker.StreamWorker``): idle streams without a
greenlet, frames written from the event loop.

``ours-scale`` holds 40,000 streams over four stream workers on one Redis
(the only contender at that level).

``ours-redis`` is the same app on a :class:`RedisBroker` with two gunicorn
workers: the streams of the one job land on both, and every event goes from
the publishing worker's thread through Redis to each worker's pub/sub
reader, which fans it out to that worker's streams. ``ours-cluster`` is the
same on a 6-node Redis Cluster (sharded pub/sub).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from flask import Flask, Response, jsonify, request

from flask_sse_flush import BrokerUnavailable, Event, EventStream
from flask_sse_flush.brokers import Broker, MemoryBroker, RedisBroker, event_id
from flask_sse_flush.jobs.processes import ProcessRender
from flask_sse_flush.jobs.service import JobService, spawner
from flask_sse_flush.runtime import new_lock, start_greenlet, start_native_thread
from flask_sse_flush.web.settings import Settings

from . import REDIS_URL_ENV, STREAM_WORKER, Contender, gunicorn, werkzeug
from .common import KEEPALIVE, burn_render, pause, schedule, tick

REDIS_PREFIX = "bench:"

CONTENDERS = [
    Contender(
        "ours-gevent",
        "flask-sse-flush, gunicorn -k gevent",
        10_000,
        gunicorn("benchmarks.contenders.ours:app"),
        rank=1,
        cpu_executors=(None, "process"),
        native_publisher=True,
    ),
    Contender(
        "ours-stream",
        "flask-sse-flush, gunicorn -k flask_sse_flush.wsgi.worker.StreamWorker",
        10_000,
        gunicorn("benchmarks.contenders.ours:app", worker_class=STREAM_WORKER),
        rank=1,
        cpu_executors=(),
    ),
    Contender(
        "ours-redis",
        "flask-sse-flush on a RedisBroker, gunicorn -k gevent -w 2",
        10_000,
        gunicorn("benchmarks.contenders.ours:create_redis_app()", workers=2),
        rank=1,
        workers=2,
        redis=True,
        redis_prefix=REDIS_PREFIX,
        throughput=False,  # /burst never touches the broker: ours-gevent measures it
        cpu_executors=(),
    ),
    Contender(
        "ours-cluster",
        "flask-sse-flush on a RedisBroker on a 6-node Redis Cluster, gunicorn -k gevent -w 2",
        10_000,
        gunicorn("benchmarks.contenders.ours:create_redis_app()", workers=2),
        rank=1,
        workers=2,
        redis_cluster=True,
        redis_prefix=REDIS_PREFIX,
        throughput=False,
        cpu_executors=(),
    ),
    Contender(
        "ours-scale",
        "flask-sse-flush on a RedisBroker, stream worker, gunicorn -w 4",
        40_000,
        gunicorn(
            "benchmarks.contenders.ours:create_redis_app()", workers=4, worker_class=STREAM_WORKER
        ),
        "",
        rank=1,
        workers=4,
        redis=True,
        redis_prefix=REDIS_PREFIX,
        throughput=False,
        cpu_executors=(),
        levels=(40_000,),
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


def create_app(broker: Broker | None = None, *, paced: bool = False) -> Flask:
    """The benchmark app on ``broker`` (which must hold the job ``JOB``).

    ``paced``: a ``/pub`` keeps to its schedule (event *i* leaves at
    ``i * interval`` after the first, stamped with its send time as ever)
    rather than sleeping ``interval`` after each publish. With two workers
    the next ``/pub`` may land on the other one: a publisher running late
    would overlap it, both would number events alike, and the broker drops
    repeated numbers.
    """
    app = Flask(__name__)
    if broker is None:
        # The log is for replay; a broadcast benchmark needs only a little of it.
        broker = MemoryBroker(max_events=16)
        broker.create(JOB)
    store = broker
    lock = new_lock()  # the publisher is a native thread
    state = {"seq": 0}
    # The CPU-bound job, on each of the library's executors for it.
    settings = Settings(max_jobs=None)
    jobs = {
        "thread": JobService(burn_render, store, spawner("thread"), settings),
        "process": JobService(ProcessRender(burn_render), store, spawner("process"), settings),
    }

    def publish(count: int, interval: float, start: int | None) -> None:
        status = store.status(JOB)
        assert status is not None
        with lock:  # with two workers, the last /pub may have been the other one's
            state["seq"] = max(state["seq"], status.last_seq)
        due = schedule(count, interval, start)
        time.sleep(pause(0, due[0]))
        begun = time.monotonic()
        for i in range(count):
            with lock:
                state["seq"] += 1
                seq = state["seq"]
            event = Event(tick(seq, due[i]), event="tick", id=event_id(JOB, seq))
            store.publish(JOB, seq, event)
            if paced and start is None:
                time.sleep(max(0.0, begun + (i + 1) * interval - time.monotonic()))
            else:
                time.sleep(pause(interval, due[i + 1] if i + 1 < count else None))

    @app.get("/sub")
    def sub() -> Any:
        stream = EventStream(keepalive=KEEPALIVE)
        try:
            status = store.status(JOB)
        except BrokerUnavailable:  # every pooled connection busy: as the library's routes do
            return jsonify(error="the event store is busy"), 503, {"Retry-After": "1"}
        assert status is not None
        stream.on_close(lambda: store.unsubscribe(JOB, stream))
        store.subscribe(JOB, stream, after=status.last_seq)
        return stream.response()

    @app.get("/pub")
    def pub() -> Any:
        count, interval = int(request.args["count"]), float(request.args["interval"])
        start = int(request.args["start"]) if "start" in request.args else None
        if request.args.get("from") == "native":
            start_native_thread(lambda: publish(count, interval, start), name="bench publisher")
        else:
            start_greenlet(lambda: publish(count, interval, start), name="bench publisher")
        return jsonify(ok=True)

    @app.get("/count")
    def count() -> Any:
        return jsonify(n=store.subscribers(JOB))  # on every worker, with Redis

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
        # "thread" is the default executor: a native thread, switch interval lowered.
        job = jobs[request.args.get("executor", "thread")].start({"seconds": seconds})
        return jsonify(ok=True, job=job.id)

    return app


def create_redis_app() -> Flask:
    """The app of one gunicorn worker of ``ours-redis`` (made in the worker, after the fork)."""
    broker = RedisBroker(os.environ[REDIS_URL_ENV], prefix=REDIS_PREFIX, max_events=16)
    with contextlib.suppress(ValueError):  # the other worker created it first
        broker.create(JOB)
    return create_app(broker, paced=True)


app = create_app()
