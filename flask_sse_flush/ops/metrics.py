"""What the streams and jobs of a process are doing: Prometheus metrics, or log records.

With ``prometheus-client`` installed (``pip install "flask-sse-flush[metrics]"``)
these metrics are registered in its default registry, so the usual
``prometheus_client.make_wsgi_app()`` mounted at ``/metrics`` shows them:

==========================================  =========  ===========================================
name                                        type       what
==========================================  =========  ===========================================
``sse_flush_open_streams``                  gauge      streams open now
``sse_flush_streams_opened_total``          counter    streams opened
``sse_flush_streams_closed_total{reason}``  counter    streams ended: ``complete``, ``error``
                                                       (the job's terminal event went out),
                                                       ``client_gone``, ``shutdown`` (a graceful
                                                       stop sent it elsewhere), ``slow_client``
                                                       (ended as too slow: more than 4 x
                                                       ``buffer`` events waited that cannot be
                                                       coalesced; it resumes from its
                                                       ``Last-Event-ID``), ``rotated``
                                                       (open ``max_stream_seconds``),
                                                       ``closed`` (anything else); and
                                                       ``limit``: a stream
                                                       refused by ``max_streams``, ``max_jobs``
                                                       or ``max_jobs_per_identity``
``sse_flush_events_sent_total``             counter    events written to clients
``sse_flush_event_queue_seconds``           histogram  how long an event waited in its stream's
                                                       queue before it was written
``sse_flush_events_coalesced_total``        counter    progress events a slow client never got,
                                                       replaced by a newer one
``sse_flush_jobs{state}``                   gauge      jobs of this process, ``running``
``sse_flush_jobs_ended_total{state}``       counter    jobs ended: ``complete``, ``error``,
                                                       ``cancelled``
==========================================  =========  ===========================================

Under gunicorn with several workers, set ``PROMETHEUS_MULTIPROC_DIR`` as
prometheus-client's multiprocess mode asks; the gauges then add up over
live workers (``livesum``). Without prometheus-client, each of these
becomes a ``DEBUG`` record of the ``flask_sse_flush.ops.metrics`` logger, made
only when that level is enabled. Set ``SSE_FLUSH_METRICS=off`` in the
environment to turn both off: nothing is then measured at all.

Importing the package registers nothing. The metrics are chosen and
registered once per process, by :func:`install`, when the library first
needs them: when an app is initialised (registering the render blueprint,
or ``SSEFlush(app)`` / ``init_app``, makes its
:class:`~flask_sse_flush.jobs.service.JobService`), or when the first
:class:`~flask_sse_flush.EventStream` is made, whichever comes first. So
``sse_flush_open_streams`` is at ``/metrics`` (at 0) from app start-up on,
``SSE_FLUSH_METRICS`` may be set any time before that, and creating several
apps in one process (tests, app factories) registers nothing twice. Under
gunicorn with ``--preload`` that is in the master, before the fork; without
it, in each worker.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from ..runtime import new_lock

__all__ = ["METRICS", "Metrics", "enabled", "install"]

log = logging.getLogger(__name__)

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The measurements the library reports; this base records nothing."""

    def stream_opened(self) -> None:
        """A stream began."""

    def stream_closed(self, reason: str, coalesced: int = 0) -> None:
        """A stream ended, for ``reason``, after dropping ``coalesced`` events."""

    def stream_refused(self) -> None:
        """A stream request was refused by a limit."""

    def event_sent(self, waited: float) -> None:
        """An event was written after ``waited`` seconds in its queue."""

    def event_sent_at_once(self) -> None:
        """An event was written in its publisher's own call: it never waited in a queue.

        .. versionadded:: 1.0
        """
        self.event_sent(0.0)

    def job_started(self) -> None:
        """A job began running in this process."""

    def job_ended(self, state: str) -> None:
        """A job that ran in this process ended in ``state``."""


class _EventTally:
    """Events sent and their queue delays, summed in plain numbers.

    The per-event path costs a bisect and three additions under an
    uncontended lock; prometheus-client's own objects (a lock and several
    updates per observation) made a worker fanning one event out to 5,000
    streams measurably slower. A collector reads the sums at scrape time.

    An event written at once (the stream worker's fan-out) waited nothing:
    :attr:`add_at_once` is the ``__next__`` of an :func:`itertools.count`,
    one C call that the GIL makes atomic, without a lock or a Python frame.
    """

    def __init__(self) -> None:
        self.lock = new_lock()
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * (len(_BUCKETS) + 1)
        self._at_once = itertools.count()
        #: Count one event that waited nothing.
        self.add_at_once: Callable[[], object] = self._at_once.__next__

    def at_once(self) -> int:
        """How many events were counted by :attr:`add_at_once`."""
        # The one way to read a count without advancing it: "count(N)".
        return int(repr(self._at_once)[6:-1])

    def add(self, waited: float) -> None:
        with self.lock:
            self.count += 1
            self.total += waited
            self.buckets[bisect.bisect_left(_BUCKETS, waited)] += 1

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        with self.lock:
            count, total, buckets = self.count, self.total, list(self.buckets)
        at_once = self.at_once()
        count += at_once
        buckets[0] += at_once  # waited 0 s: the first bucket
        yield CounterMetricFamily(
            "sse_flush_events_sent", "Events written to clients.", value=count
        )
        cumulative, running = [], 0
        for bound, n in zip([*map(str, _BUCKETS), "+Inf"], buckets, strict=True):
            running += n
            cumulative.append((bound, running))
        yield HistogramMetricFamily(
            "sse_flush_event_queue_seconds",
            "Seconds an event waited in its stream's queue before it was written.",
            buckets=cumulative,
            sum_value=total,
        )

    def describe(self) -> list[Any]:
        return []


class _Prometheus(Metrics):
    def __init__(self, client: Any) -> None:
        self.open = client.Gauge(
            "sse_flush_open_streams", "Event streams open now.", multiprocess_mode="livesum"
        )
        self.opened = client.Counter("sse_flush_streams_opened", "Event streams opened.")
        self.closed = client.Counter(
            "sse_flush_streams_closed", "Event streams ended, by reason.", ["reason"]
        )
        self.tally = _EventTally()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Multiprocess mode sums only its own file-backed metrics.
            self.events = client.Counter("sse_flush_events_sent", "Events written to clients.")
            self.queue = client.Histogram(
                "sse_flush_event_queue_seconds",
                "Seconds an event waited in its stream's queue before it was written.",
                buckets=_BUCKETS,
            )
        else:
            self.events = self.queue = None
            client.REGISTRY.register(self.tally)
            self.event_sent_at_once = self.tally.add_at_once  # type: ignore[assignment]
        self.coalesced = client.Counter(
            "sse_flush_events_coalesced",
            "Progress events a slow client never got, replaced by a newer one.",
        )
        self.jobs = client.Gauge(
            "sse_flush_jobs", "Jobs of this process, by state.", ["state"],
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.ended = client.Counter(
            "sse_flush_jobs_ended", "Jobs ended in this process, by state.", ["state"]
        )

    def stream_opened(self) -> None:
        self.open.inc()
        self.opened.inc()

    def stream_closed(self, reason: str, coalesced: int = 0) -> None:
        self.open.dec()
        self.closed.labels(reason).inc()
        if coalesced:
            self.coalesced.inc(coalesced)

    def stream_refused(self) -> None:
        self.closed.labels("limit").inc()

    def event_sent(self, waited: float) -> None:
        if self.events is None:
            self.tally.add(waited)
        else:
            self.events.inc()
            self.queue.observe(waited)

    def job_started(self) -> None:
        self.jobs.labels("running").inc()

    def job_ended(self, state: str) -> None:
        self.jobs.labels("running").dec()
        self.ended.labels(state).inc()


class _Logging(Metrics):
    def stream_opened(self) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("stream opened")

    def stream_closed(self, reason: str, coalesced: int = 0) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("stream closed: %s (%d events coalesced)", reason, coalesced)

    def stream_refused(self) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("stream refused by a limit")

    def job_started(self) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("job started")

    def job_ended(self, state: str) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("job ended: %s", state)


def _choose() -> tuple[Metrics, bool]:
    """The metrics the environment asks for, registered; and whether they clashed."""
    if os.environ.get("SSE_FLUSH_METRICS", "").lower() in ("off", "0", "false", "no"):
        return Metrics(), False
    try:
        import prometheus_client
    except ImportError:
        return _Logging(), False
    try:
        return _Prometheus(prometheus_client), False
    except ValueError:  # the names are taken (e.g. a second copy of this module)
        return Metrics(), True


# A native lock (never gevent's, whenever the module is imported): the hub
# and job threads may both be first. Making it starts nothing.
_installing = new_lock()
_installed: Metrics | None = None


def install() -> Metrics:
    """Choose this process's metrics and register them, once; return them.

    The library calls it when an app is initialised (a
    :class:`~flask_sse_flush.jobs.service.JobService` is made, which registering the render
    blueprint or :class:`~flask_sse_flush.SSEFlush` does) and when an
    :class:`~flask_sse_flush.EventStream` is made; importing the package does
    not. ``SSE_FLUSH_METRICS`` and ``PROMETHEUS_MULTIPROC_DIR`` are read then.
    Later calls return the same metrics: creating app after app registers
    nothing twice.
    """
    global _installed
    chosen = _installed
    if chosen is not None:
        return chosen
    with _installing:  # held for a few statements, nothing in it waits
        if _installed is None:
            _installed, clashed = _choose()
            if clashed:
                log.warning("flask-sse-flush metrics are registered already; not registering again")
        return _installed


class _Installed(Metrics):
    """:data:`METRICS`: each report goes to the metrics :func:`install` chose."""

    def stream_opened(self) -> None:
        (_installed or install()).stream_opened()

    def stream_closed(self, reason: str, coalesced: int = 0) -> None:
        (_installed or install()).stream_closed(reason, coalesced)

    def stream_refused(self) -> None:
        (_installed or install()).stream_refused()

    def event_sent(self, waited: float) -> None:
        (_installed or install()).event_sent(waited)

    def event_sent_at_once(self) -> None:
        (_installed or install()).event_sent_at_once()

    def job_started(self) -> None:
        (_installed or install()).job_started()

    def job_ended(self, state: str) -> None:
        (_installed or install()).job_ended(state)


#: The process's metrics (see the module's description); the first report
#: installs them, if nothing did before.
METRICS: Metrics = _Installed()


def enabled() -> bool:
    """Whether anything is measured (prometheus-client, or the logging fallback).

    Asking installs the metrics (:func:`install`).
    """
    return type(install()) is not Metrics
