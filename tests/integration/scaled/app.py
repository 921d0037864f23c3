"""The app the scale-out tests serve from ``gunicorn -k gevent -w N``, all on one Redis."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, Response
from jobs import broker, render
from redis import Redis
from rq import Queue

from flask_sse_flush import QueuedJob, create_render_blueprint


def create_app(log_dir: str | None = None) -> Any:
    app = Flask(__name__)
    store = broker()
    app.register_blueprint(
        create_render_blueprint(render, keepalive=1.0, broker=store, max_jobs=500)
    )
    app.register_blueprint(
        create_render_blueprint(
            render,
            name="cancelling",
            url_prefix="/cancelling",
            on_disconnect="cancel",
            broker=store,
        )
    )
    app.register_blueprint(
        create_render_blueprint(
            render, name="single", url_prefix="/single", broker=store, max_jobs=1, keepalive=1.0
        )
    )
    app.register_blueprint(
        create_render_blueprint(
            render,
            name="rotating",
            url_prefix="/rotating",
            broker=store,
            keepalive=1.0,
            max_stream_seconds=1.0,
        )
    )
    # RQ's own Redis: the broker's may be a cluster, which RQ does not use.
    queue_url = os.environ.get("SCALED_QUEUE_URL", os.environ["SCALED_REDIS_URL"])
    queue = Queue(
        os.environ.get("SCALED_QUEUE", "renders"),
        connection=Redis.from_url(queue_url),
    )

    def enqueue(job: QueuedJob) -> None:
        queue.enqueue("jobs.run_render", job.id, job.payload)

    app.register_blueprint(
        create_render_blueprint(
            render,
            name="queued",
            url_prefix="/queued",
            executor=enqueue,
            broker=store,
            keepalive=1.0,
        )
    )

    @app.after_request
    def worker_pid(response: Response) -> Response:
        response.headers["X-Worker-Pid"] = str(os.getpid())
        return response

    return app
