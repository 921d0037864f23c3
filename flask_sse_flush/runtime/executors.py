"""Where jobs run: a native OS thread (even under gevent) or a greenlet.

Also the one process-wide setting jobs touch: the interpreter's GIL switch
interval while native jobs run beside a gevent hub.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .detect import gevent_is_active, new_lock, original
from .hub import home_hub, started_by
from .locks import hub_safe_lock

__all__ = [
    "DEFAULT_JOB_SWITCH_INTERVAL",
    "job_switch_interval",
    "set_job_switch_interval",
    "shutdown_native_threads",
    "start_greenlet",
    "start_native_thread",
]

#: The switch interval native jobs run with beside a gevent hub (seconds).
DEFAULT_JOB_SWITCH_INTERVAL = 0.0005


class _SwitchInterval:
    """Lowers the interpreter's GIL switch interval while native jobs run.

    Every socket write of the hub releases the GIL and must win it back; a
    CPU-bound job thread keeps it for a whole switch interval each time (5 ms
    by default), so one broadcast to 100 streams queues behind the job 100
    times, the "GIL convoy". A shorter interval while jobs run bounds each
    wait. The setting is process-wide, hence one counted holder: the first
    job in lowers it, the last job out restores it.
    """

    def __init__(self, interval: float | None) -> None:
        self.interval = interval
        self._lock: Any = None
        self._running = 0
        self._saved: float | None = None

    def _native_lock(self) -> Any:
        # Made on first use: only then is gevent sure to be active.
        if self._lock is None:
            self._lock = new_lock()
        return self._lock

    def enter(self) -> None:
        with self._native_lock():
            if self._running == 0 and self.interval is not None:
                current = sys.getswitchinterval()
                if self.interval < current:
                    self._saved = current
                    sys.setswitchinterval(self.interval)
            self._running += 1

    def exit(self) -> None:
        with self._native_lock():
            self._running -= 1
            if self._running == 0 and self._saved is not None:
                sys.setswitchinterval(self._saved)
                self._saved = None


log = logging.getLogger(__name__)

# The interpreter's switch interval is one per process, so this holder is too.
_SWITCH_INTERVAL = _SwitchInterval(DEFAULT_JOB_SWITCH_INTERVAL)


def set_job_switch_interval(seconds: float | None) -> None:
    """Set the GIL switch interval native jobs run with under gevent, for this process.

    While at least one job runs in a native thread beside a gevent hub, the
    interpreter's switch interval is lowered to ``seconds`` (0.5 ms by
    default) and restored when the last one ends. Each socket write of the
    worker releases the GIL and must win it back from a CPU-bound job: at
    the interpreter's 5 ms, one broadcast to 100 streams waits behind the
    job 100 times. ``None`` leaves the interpreter's setting alone. It is a
    process-wide setting, like :func:`sys.setswitchinterval` itself; call it
    once, at start-up (e.g. in gunicorn's ``post_fork``). A lower interval
    only shortens each wait: CPU-bound jobs belong in another process.

    :raises ValueError: ``seconds`` is not positive.
    """
    if seconds is not None and not seconds > 0:
        raise ValueError(
            f"the switch interval must be a positive number of seconds or None, not {seconds!r}"
        )
    with _SWITCH_INTERVAL._native_lock():
        _SWITCH_INTERVAL.interval = seconds


def job_switch_interval() -> float | None:
    """The switch interval native jobs run with (see :func:`set_job_switch_interval`)."""
    return _SWITCH_INTERVAL.interval


def start_native_thread(target: Callable[[], None], name: str) -> None:
    """Run ``target`` in a native OS thread, even under gevent (a pooled one, reused).

    Under gevent, ``threading.Thread`` makes a greenlet: a CPU-bound or
    blocking job in it would stall every stream of the worker. The original
    ``_thread.start_new_thread`` makes a real thread, which the GIL
    time-slices against the hub; while it runs, the switch interval is
    lowered (:func:`set_job_switch_interval`), and the thread can reach the
    hub that started it with :func:`~flask_sse_flush.runtime.call_on_hub`.
    """
    if gevent_is_active():
        context = started_by(home_hub())
        _NATIVE_POOL.submit(lambda: context.run(_with_switch_interval(target)))
        return
    threading.Thread(target=target, name=name, daemon=True).start()


class _NativeThreadPool:
    """Native threads for jobs under gevent, kept and reused while jobs come.

    A job's patched calls (``time.sleep`` is ``gevent.sleep``) give its
    thread a gevent hub of its own. Made and destroyed once per job, each
    hub left its frames, greenlet and loop behind (about 10 KiB a job,
    measured: a service of many short jobs grew until it was killed). A
    thread that runs job after job keeps one hub; a thread idle for
    :attr:`IDLE_SECONDS` ends and destroys its hub, and the threads beyond
    :attr:`CORE` idle ones (made for a burst of jobs) end after
    :attr:`EXTRA_IDLE_SECONDS`. The pool is unbounded: ``max_jobs`` bounds
    the jobs, and a job must never wait for a thread.

    The pool owns its threads: :meth:`shutdown` ends the idle ones and
    waits for every one to end (at the latest at the process's exit).
    """

    IDLE_SECONDS = 60.0
    CORE = 1
    EXTRA_IDLE_SECONDS = 2.0
    #: The longest the process's exit waits for job threads still running.
    EXIT_TIMEOUT = 0.5

    def __init__(self) -> None:
        self._lock: Any = None
        self._idle: list[_NativeWorker] = []
        self._workers: set[_NativeWorker] = set()
        self._closing = 0  # shutdown() calls under way
        self._at_exit = False

    def _native_lock(self) -> Any:
        if self._lock is None:
            self._lock = new_lock()
        return self._lock

    def submit(self, task: Callable[[], None]) -> None:
        with self._native_lock():
            idle = self._idle.pop() if self._idle else None
            if idle is None:
                worker = _NativeWorker(self, task)
                self._workers.add(worker)
                at_exit, self._at_exit = not self._at_exit, True
        if idle is not None:
            idle.give(task)
            return
        if at_exit:
            # Threads started with _thread are not waited for at exit: the
            # job's end and its hub's clean-up would be cut short.
            atexit.register(self.shutdown, self.EXIT_TIMEOUT)
        original("_thread", "start_new_thread")(worker.main, ())

    def park(self, worker: _NativeWorker) -> float | None:
        """Make ``worker`` idle; return how long it waits for a job before it ends.

        ``None``: the pool is shutting down, and the worker ends now.
        """
        with self._native_lock():
            if self._closing:
                return None
            self._idle.append(worker)
            extra = len(self._idle) > self.CORE
        return self.EXTRA_IDLE_SECONDS if extra else self.IDLE_SECONDS

    def retire(self, worker: _NativeWorker) -> bool:
        """Take an idle worker out of the pool; ``False`` if a task was just given to it."""
        with self._native_lock():
            if worker in self._idle:
                self._idle.remove(worker)
                return True
            return False

    def ended(self, worker: _NativeWorker) -> None:
        with self._native_lock():
            self._workers.discard(worker)

    def idle(self) -> int:
        """How many threads wait for a job."""
        with self._native_lock():
            return len(self._idle)

    def threads(self) -> int:
        """How many threads the pool has (idle or running a job)."""
        with self._native_lock():
            return len(self._workers)

    def shutdown(self, timeout: float | None = None) -> bool:
        """End the idle threads and wait until every thread of the pool has ended.

        A thread running a job ends when its job returns. The pool serves
        new jobs again afterwards (with new threads).

        :param timeout: the most seconds to wait; ``None`` waits as long as
            the jobs run.
        :returns: whether every thread ended in time.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._native_lock():
            self._closing += 1
            idle, self._idle = self._idle, []
            workers = list(self._workers)
        try:
            for worker in idle:
                worker.give(None)  # wakes it: with no task, and the pool closing, it ends
            for worker in workers:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not worker.join(left):
                    log.warning("a job thread was still running after %s s", timeout)
                    return False
            return True
        finally:
            with self._native_lock():
                self._closing -= 1


class _NativeWorker:
    def __init__(self, pool: _NativeThreadPool, task: Callable[[], None]) -> None:
        self.pool = pool
        self.task: Callable[[], None] | None = task
        self.ready = new_lock()
        self.ready.acquire()
        # Released as the thread's last act. The hub's thread may wait on it
        # (shutdown() at exit) while a job in this thread waits for that hub
        # (call_on_hub): so a lock that waits cooperatively there.
        self._done = hub_safe_lock(home_hub())
        self._done.acquire()

    def give(self, task: Callable[[], None] | None) -> None:
        self.task = task
        self.ready.release()

    def join(self, timeout: float | None) -> bool:
        """Wait until the thread has ended; ``False`` if ``timeout`` passed first."""
        if not self._done.acquire(True, -1 if timeout is None else timeout):
            return False
        self._done.release()  # for any other joiner
        return True

    def main(self) -> None:
        try:
            _with_hub_cleanup(self.run)()
        finally:
            self.pool.ended(self)
            self._done.release()

    def run(self) -> None:
        _unmonitored_hub()
        while True:
            task, self.task = self.task, None
            if task is not None:
                try:
                    task()
                except BaseException:
                    log.exception("a job thread's task failed")
            idle = self.pool.park(self)
            if idle is None:
                return
            if not self.ready.acquire(True, idle):
                if self.pool.retire(self):
                    return
                self.ready.acquire()  # a task is being handed over: wait for it


def _unmonitored_hub() -> None:
    """Give this job thread a gevent hub that gevent's monitor thread leaves alone.

    With ``GEVENT_MONITOR_THREAD_ENABLE``, every hub gets a monitor that
    reports it "blocked" after ``GEVENT_MAX_BLOCKING_TIME`` without a switch,
    with a dump of every greenlet of the process. A job thread's hub is
    "blocked" whenever its job computes, which is what the thread is for: on
    a worker with 5,000 streams each report took seconds of CPU and starved
    the worker. The worker's own hub stays monitored.
    """
    import gevent

    gevent.get_hub().start_periodic_monitoring_thread = lambda: None


# One pool of job threads per process, as the hub it serves.
_NATIVE_POOL = _NativeThreadPool()


def _with_switch_interval(target: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        _SWITCH_INTERVAL.enter()
        try:
            target()
        finally:
            _SWITCH_INTERVAL.exit()

    return run


def _with_hub_cleanup(target: Callable[[], None]) -> Callable[[], None]:
    """Destroy the gevent hub the thread may have made, when it ends.

    Job code in a native thread still calls patched functions (``time.sleep``
    is ``gevent.sleep``), which give the thread a hub and an event loop of
    its own. gevent asks that such hubs be destroyed; otherwise every job
    would leak the loop's file descriptors.
    """

    def run() -> None:
        try:
            target()
        finally:
            try:
                from gevent._hub_local import get_hub_if_exists
            except ImportError:  # pragma: no cover - older gevent
                from gevent.hub import _get_hub as get_hub_if_exists
            hub = get_hub_if_exists()
            if hub is not None:
                hub.destroy(destroy_loop=True)

    return run


def start_greenlet(target: Callable[[], None], name: str) -> threading.Thread:
    """Run ``target`` as a greenlet under gevent, as a daemon thread otherwise.

    For I/O-bound jobs under gevent: cheaper than a thread, but a job that
    computes or blocks without yielding stalls the hub. Returns the thread
    (gevent's greenlet-backed one under gevent), for its owner to ``join()``.
    """
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def shutdown_native_threads(timeout: float | None = None) -> bool:
    """End the idle native job threads and wait until every one has ended.

    :func:`start_native_thread` keeps its threads for the next jobs; this
    ends the idle ones at once and waits for those still running a job to
    finish it. It runs by itself at the process's exit (after a graceful
    stop has ended the jobs, and waiting at most half a second more for a
    render that ignores its cancel), and may be called earlier. Jobs
    started afterwards get new threads. Without gevent there is no pool
    and it returns ``True``.

    :param timeout: the most seconds to wait; ``None`` waits for the jobs.
    :returns: whether every thread ended in time.
    """
    return _NATIVE_POOL.shutdown(timeout)
