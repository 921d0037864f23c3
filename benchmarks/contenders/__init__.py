"""The contenders of ``make bench``: one module each, declaring itself.

A contender module defines ``CONTENDERS``, a list of :class:`Contender`,
each with the command line that serves it; ``discover()`` finds them all,
so adding a contender touches one file. Every contender serves what
:mod:`benchmarks.contenders.common` describes.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass

from flask_sse_flush.testing import gunicorn_command

__all__ = ["REDIS_URL_ENV", "STREAM_WORKER", "Contender", "discover", "gunicorn", "werkzeug"]

#: Where a contender that needs Redis finds the URL of the benchmark's own
#: ``redis-server`` (started and stopped by the runner).
REDIS_URL_ENV = "BENCH_REDIS_URL"


@dataclass(frozen=True)
class Contender:
    name: str
    label: str
    max_streams: int
    #: The server's command line, given the port it must listen on.
    command: Callable[[int], list[str]]
    wall: str = ""  # why it stops below the largest level, if it does
    rank: int = 100  # its place in the tables, smallest first
    #: Needs a Redis: the runner starts one and passes its URL in
    #: ``$BENCH_REDIS_URL``; the contender is skipped where there is none.
    redis: bool = False
    #: Needs a Redis Cluster: the runner makes one (3 primaries, 3 replicas)
    #: and passes the URL of one of its nodes the same way.
    redis_cluster: bool = False
    #: The key prefix of its ``RedisBroker``: the runner counts the
    #: connections named after it in ``CLIENT LIST``, per worker.
    redis_prefix: str = ""
    #: Whether ``/burst`` (one stream, no broker) is measured.
    throughput: bool = True
    #: The CPU-job cases to measure: ``None`` is ``/cpu`` as the contender's
    #: users would run it (``cpu_job`` in the results); a name is
    #: ``/cpu?executor=<name>`` (``cpu_job_<name>``).
    cpu_executors: tuple[str | None, ...] = (None,)
    #: Whether ``/pub?from=native`` (a publisher in a native OS thread) is
    #: measured too, at one stream (``native_publish`` in the results).
    native_publisher: bool = False
    #: Only these levels of the plan (stream counts), if given.
    levels: tuple[int, ...] | None = None
    #: Its server processes (gunicorn ``-w``): one is pinned to half the CPUs
    #: at many streams (:mod:`benchmarks.placement`), several are not.
    workers: int = 1


#: The library's gunicorn worker that parks idle streams without a greenlet.
STREAM_WORKER = "flask_sse_flush.wsgi.worker.StreamWorker"


def gunicorn(
    app: str, workers: int = 1, worker_class: str = "gevent"
) -> Callable[[int], list[str]]:
    """gunicorn with ``workers`` gevent workers, each sized for 10,000 streams."""
    options = ["--worker-connections", "12000", "--backlog", "4096", "--log-level", "warning"]
    return lambda port: gunicorn_command(
        app, port, workers=workers, worker_class=worker_class, options=options
    )


def werkzeug(app: str) -> Callable[[int], list[str]]:
    """werkzeug's threaded dev server (``benchmarks.serve``)."""
    return lambda port: [sys.executable, "-m", "benchmarks.serve", app, str(port)]


def discover() -> list[Contender]:
    """Every contender of every module in this package, in table order."""
    found: list[Contender] = []
    for module in pkgutil.iter_modules(__path__):
        if module.name != "common":
            found += getattr(importlib.import_module(f"{__name__}.{module.name}"), "CONTENDERS", [])
    return sorted(found, key=lambda c: (c.rank, c.name))
