"""A worker's life: how many streams it holds, and how it stops without losing any.

One :class:`Lifecycle` per process (:func:`lifecycle`) counts the render
blueprint's open streams (``max_streams`` is checked against it) and runs
the graceful stop:

* Under gunicorn it finds the worker object (the owner of the ``SIGTERM``
  handler) and watches its ``alive`` flag, which gunicorn clears on
  ``SIGTERM``, ``SIGINT``/``SIGQUIT`` and a ``--max-requests`` restart. The
  stop then starts on its own; elsewhere, an app calls :func:`shutdown`
  from its server's shutdown hook.
* **Streams of a shared store** (:attr:`Broker.shared
  <flask_sse_flush.brokers.Broker.shared>`: Redis) end at once with a
  ``retry:`` hint (1 s, jittered up to 2 s, so browsers do not all come back
  in the same instant) and a clean end of the body. The browser reconnects
  with its ``Last-Event-ID``, to another worker, and resumes from the
  store: nothing is lost or repeated.
* **Streams of this process's own store** (the memory broker) cannot be
  resumed anywhere else, so they stay open while their job runs.
* **Jobs running here** get until the deadline (the graceful timeout, less
  a margin of up to 2 s) to finish. A job still running then is ended with
  an ``error`` event (``"the server stopped before the render finished;
  start it again"``, ``"retry": true``) and its render is cancelled, so no
  job stays ``running`` forever and no stream ends without a terminal event.
  The worker's exit waits for this (at most until the deadline).
* A stream request that reaches a stopping worker is answered with the same
  hint and no job; a ``POST`` gets a ``503`` with ``Retry-After``.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import random
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..runtime import new_lock, start_greenlet
from ..wsgi.servers import gunicorn_worker

if TYPE_CHECKING:
    from ..jobs.service import JobService
    from ..wsgi.stream import EventStream

__all__ = [
    "SHUTDOWN_MESSAGE",
    "SHUTDOWN_RETRY",
    "Lifecycle",
    "default_max_streams",
    "lifecycle",
    "replace_lifecycle",
    "shutdown",
]

log = logging.getLogger(__name__)

#: The reconnection delay (ms) announced to a stream ended by a graceful
#: stop; each stream gets a delay drawn from ``[SHUTDOWN_RETRY, 2 * SHUTDOWN_RETRY)``.
SHUTDOWN_RETRY = 1000
#: What a job still running at the stop's deadline says in its ``error`` event.
SHUTDOWN_MESSAGE = "the server stopped before the render finished; start it again"
#: The longest margin kept between ending the jobs and gunicorn's own deadline
#: (half the graceful timeout where that is shorter: at gunicorn's
#: ``--graceful-timeout 3`` a quarter, 0.75 s, was overrun on a loaded machine
#: by the ending publishes and the worker's exit).
_MARGIN = 2.0
_POLL = 0.1
# The exit's wait polls faster: each poll past the jobs' end delays the
# worker's exit, which must come before the server's own deadline.
_EXIT_POLL = 0.02


def default_max_streams() -> int | None:
    """The ``max_streams`` a worker gets by default: ``None`` where unknown.

    Under gunicorn, ``worker_connections`` less 5 % (at least one) kept for
    the requests that are not streams (status, cancel, the ``503`` itself):
    a worker whose connections were all streams would stop accepting, and
    new clients would wait in the listen queue with no answer.
    """
    worker = gunicorn_worker()
    connections = getattr(getattr(worker, "cfg", None), "worker_connections", None)
    if not isinstance(connections, int) or connections < 2:
        return None
    return connections - max(1, connections // 20)


def _jittered(retry: int) -> int:
    return retry + random.randrange(max(1, retry))


class Lifecycle:
    """The open streams and the stopping state of one process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._lock = new_lock()
        # stream -> whether its job's store is shared (it may resume elsewhere)
        self._streams: dict[EventStream, bool] = {}
        self._services: weakref.WeakSet[JobService] = weakref.WeakSet()
        self._watching = False
        #: Whether the graceful stop has begun (it is for good).
        self.stopping = False
        #: When the jobs still running are ended (``time.monotonic()``).
        self.deadline: float | None = None
        self.retry = SHUTDOWN_RETRY

    @functools.cached_property
    def max_streams(self) -> int | None:
        """This server's default ``max_streams`` (:func:`default_max_streams`), found once."""
        return default_max_streams()

    @property
    def open_streams(self) -> int:
        """Streams of render blueprints open in this process."""
        return len(self._streams)

    def add_service(self, service: JobService) -> None:
        """Remember a job service: a stop waits for (then ends) the jobs it runs here."""
        self._services.add(service)
        # A job may start with no stream of this worker open (POST /render,
        # the app's own call), and in a process forked after the service was
        # made (gunicorn --preload): each start tells the lifecycle of the
        # process it runs in, which then watches for the stop.
        service.on_start = _adopt

    def track(self, stream: EventStream, shared: bool) -> None:
        """Count ``stream`` until it ends; a stop ends it with a hint if ``shared``."""
        self.watch()
        with self._lock:
            self._streams[stream] = shared
        stream.on_close(lambda: self._untrack(stream))

    def _untrack(self, stream: EventStream) -> None:
        with self._lock:
            self._streams.pop(stream, None)

    def hint(self) -> int:
        """A jittered reconnection delay (ms) for a stream ended by the stop."""
        return _jittered(self.retry)

    def watch(self) -> None:
        """Start watching the gunicorn worker (once per process; nothing elsewhere)."""
        if self._watching:
            return
        self._watching = True
        worker = gunicorn_worker()
        if worker is None:
            return
        grace = float(getattr(worker.cfg, "graceful_timeout", 30) or 30)

        def monitor() -> None:
            while not self.stopping:
                if not getattr(worker, "alive", True):
                    log.info("gunicorn worker %s is stopping: ending streams", os.getpid())
                    self.stop(grace, notify=getattr(worker, "notify", None))
                    return
                time.sleep(_POLL)

        start_greenlet(monitor, "flask-sse-flush shutdown monitor")

    def stop(
        self,
        grace: float = 30.0,
        *,
        retry: int | None = None,
        notify: Callable[[], Any] | None = None,
    ) -> None:
        """Begin the graceful stop (see the module's description). Idempotent.

        :param grace: seconds until the server ends this process; jobs
            still running ``min(2, grace / 2)`` seconds before that are ended.
        :param retry: the base reconnection delay (ms); :data:`SHUTDOWN_RETRY`.
        :param notify: called while the exit waits for jobs (gunicorn's
            heartbeat, so its arbiter does not take the worker for hung).
        """
        with self._lock:
            if self.stopping:
                return
            self.stopping = True
            if retry is not None:
                self.retry = retry
            self.deadline = time.monotonic() + max(0.0, grace - min(_MARGIN, grace / 2))
            streams = [stream for stream, shared in self._streams.items() if shared]
            staying = [stream for stream, shared in self._streams.items() if not shared]
        for stream in streams:
            stream.close(retry=self.hint())
        for stream in staying:
            stream.retry_at_close(self.hint())  # ends with its job, then a hint
        log.info("graceful stop: %d streams sent elsewhere", len(streams))
        start_greenlet(self._end_jobs_at_deadline, "flask-sse-flush shutdown")
        atexit.register(self._wait_at_exit, notify)

    def _running(self) -> list[JobService]:
        return [service for service in list(self._services) if service.running_here()]

    def _end_jobs_at_deadline(self) -> None:
        assert self.deadline is not None
        while self._running() and (left := self.deadline - time.monotonic()) > 0:
            time.sleep(min(_POLL, left))  # on the deadline, not up to a poll past it
        for service in self._running():
            ended = service.stop_jobs(SHUTDOWN_MESSAGE)
            if ended:
                log.warning("graceful stop: ended %d unfinished render jobs", ended)

    def _wait_at_exit(self, notify: Callable[[], Any] | None) -> None:
        # The server has let the process go (its last connection closed):
        # jobs in native threads would die with it, silently.
        assert self.deadline is not None
        last = self.deadline + 1.0
        while self._running() and time.monotonic() < last:
            if notify is not None:
                try:
                    notify()
                except Exception:
                    notify = None
            time.sleep(_EXIT_POLL)
        if time.monotonic() < self.deadline:
            return
        for service in self._running():
            service.stop_jobs(SHUTDOWN_MESSAGE)


_current: Lifecycle | None = None


def lifecycle() -> Lifecycle:
    """This process's :class:`Lifecycle` (a fresh one after a fork)."""
    global _current
    current = _current
    if current is None or current.pid != os.getpid():
        current = _current = Lifecycle()
    return current


def _adopt(service: JobService) -> None:
    """A job of ``service`` is starting: this process's stop must end it."""
    current = lifecycle()
    current._services.add(service)
    current.watch()


def replace_lifecycle(new: Lifecycle | None) -> Lifecycle | None:
    """Make ``new`` this process's :class:`Lifecycle`; return the one it replaces.

    For tests (see :func:`flask_sse_flush.testing.fresh_lifecycle`): a stop
    is for good, so a test that stops one puts the old one back after.
    """
    global _current
    old, _current = _current, new
    return old


def shutdown(grace: float = 30.0, *, retry: int = SHUTDOWN_RETRY) -> None:
    """Begin a graceful stop of this process's streams and jobs now.

    Gunicorn's workers do this by themselves; call it from another server's
    shutdown hook (before it closes connections), e.g. waitress or a
    ``SIGTERM`` handler of your own.

    :param grace: seconds until the process ends (the server's graceful
        timeout).
    :param retry: the base reconnection delay (ms) announced to browsers.
    """
    lifecycle().stop(grace, retry=retry)
