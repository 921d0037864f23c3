"""The one place that knows whether gevent runs this process.

Everything else asks this module for "a channel" (a queue that any thread
or greenlet may put into, read by one stream's generator), "a lock", and
to "run this job" in a native OS thread or a greenlet.

Under ``gunicorn -k gevent`` the standard library is monkey-patched:
``threading``, ``queue`` and ``time.sleep`` belong to gevent and are only
safe inside the hub's own OS thread. A job runs in a *native* thread so
that CPU-bound or blocking work cannot stall the hub, and its reports must
cross back to the hub: the gevent channel wakes its reader through a loop
*async watcher*, the one primitive libev and libuv make safe to signal
from any OS thread. Without gevent, plain ``threading`` primitives do.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import sys
import threading
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, Protocol, TypeVar

__all__ = [
    "Channel",
    "Empty",
    "call_on_hub",
    "gevent_is_active",
    "new_channel",
    "new_lock",
    "newest_of_each_level",
    "start_greenlet",
    "start_native_thread",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Empty(Exception):
    """Nothing arrived on a channel before the timeout."""


class Channel(Protocol[T]):
    """A many-writer, one-reader FIFO whose ``put`` never blocks.

    An item put with a ``level`` key is a level, not a log entry (progress
    is one): when more than ``limit`` items wait, only the newest item of
    each level stays queued. Items without a key are never dropped.
    """

    def put(self, item: T, level: Hashable | None = None) -> None: ...

    def get(self, timeout: float | None) -> T:
        """Return the next item; raise :class:`Empty` after ``timeout`` seconds."""
        ...

    def pending(self) -> int:
        """How many items wait to be read."""
        ...

    def close(self) -> None: ...


def gevent_is_active() -> bool:
    """Whether gevent has monkey-patched ``threading`` in this process."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


def _original(module: str, name: str) -> Any:
    from gevent.monkey import get_original

    return get_original(module, name)


def new_lock() -> Any:
    """Return a lock that is safe across OS threads even under gevent.

    Hold it only for a few statements: a greenlet that blocks on it would
    block its whole hub.
    """
    if gevent_is_active():
        return _original("_thread", "allocate_lock")()
    return threading.Lock()


def newest_of_each_level(levels: Iterable[Hashable | None]) -> list[int]:
    """Indices to keep: each level's newest entry, and every entry without one.

    The coalescing rule shared by stream buffers and a broker's event log:
    progress is a level (only its latest value matters), other events are a
    log.
    """
    levels = list(levels)
    newest = {level: index for index, level in enumerate(levels) if level is not None}
    return [i for i, level in enumerate(levels) if level is None or newest[level] == i]


class _Queue(Generic[T]):
    """The bounded, coalescing FIFO both channels share; callers hold a lock.

    Items and their levels sit in two parallel deques rather than one deque
    of pairs: a put then allocates no tuple, which matters when one event
    fans out to 10,000 streams (each tuple would feed the garbage collector).
    The levels deque is made only once a level arrives, so a stream that
    never carries one keeps a single deque (memory per stream counts at
    10,000 streams too).
    """

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"a channel's limit must be at least 1, not {limit}")
        self.limit = limit
        self.items: collections.deque[T] = collections.deque()
        self.levels: collections.deque[Hashable | None] | None = None
        # Coalesce when the queue passes this; raised while frames that
        # cannot be coalesced fill it, so each put stays O(1) amortised.
        self._threshold = limit
        self._warned = False

    def push(self, item: T, level: Hashable | None) -> None:
        self.items.append(item)
        if level is None and self.levels is None:
            return
        if self.levels is None:
            self.levels = collections.deque([None] * (len(self.items) - 1))
        self.levels.append(level)
        # Only a level can make room (by replacing its older self), so only a
        # level triggers coalescing; an end marker never drops what waits.
        if level is not None and self._threshold is not None and len(self.items) > self._threshold:
            self._coalesce(self.levels)

    def _coalesce(self, levels: collections.deque[Hashable | None]) -> None:
        # Runs once per `limit` puts at most, so it costs O(1) per put.
        keep = newest_of_each_level(levels)
        items, old_levels = list(self.items), list(levels)
        self.items = collections.deque(items[i] for i in keep)
        self.levels = collections.deque(old_levels[i] for i in keep)
        assert self.limit is not None
        # Past the limit with frames that cannot be coalesced: wait for another
        # `limit` puts before trying again, not one.
        plain = sum(1 for i in keep if old_levels[i] is None)
        self._threshold = self.limit if len(keep) <= self.limit else plain + self.limit
        if len(keep) > self.limit and not self._warned:
            self._warned = True
            log.warning("a slow client has %d events queued that cannot be coalesced", len(keep))

    def pending(self) -> int:
        return len(self.items)

    def pop(self) -> T:
        if self.levels is not None:
            self.levels.popleft()
        if self._threshold != self.limit and len(self.items) <= (self.limit or 0):
            self._threshold = self.limit
        return self.items.popleft()


class _ThreadChannel(_Queue[T]):
    """A channel for ordinary OS threads."""

    def __init__(self, limit: int | None) -> None:
        super().__init__(limit)
        self._ready = threading.Condition(threading.Lock())

    def put(self, item: T, level: Hashable | None = None) -> None:
        with self._ready:
            self.push(item, level)
            self._ready.notify()

    def get(self, timeout: float | None) -> T:
        with self._ready:
            if not self._ready.wait_for(lambda: self.items, timeout):
                raise Empty
            return self.pop()

    def close(self) -> None:
        pass


class _HubChannel(_Queue[T]):
    """A channel read by a greenlet, written from any greenlet or OS thread.

    The reader parks on a ``Waiter`` and a put wakes it through one hub
    callback, as gevent's own queues do; that costs a third of setting a
    ``gevent.event.Event``, which counts when one event fans out to 10,000
    streams.
    """

    def __init__(self, limit: int | None) -> None:
        import gevent
        from gevent.hub import Waiter

        super().__init__(limit)
        self._hub: Any = gevent.get_hub()
        self._hub_thread: int = self._hub.thread_ident
        self._get_ident: Callable[[], int] = _original("_thread", "get_ident")
        self._new_waiter: Callable[..., Any] = Waiter
        # A native lock: the writer may be another OS thread. Held only for a
        # few statements, so the hub never waits on it for long.
        self._lock: Any = new_lock()
        self._waiter: Any = None
        self._wake_pending = False
        # Made by the first get(), on the hub: a stream that is never served
        # (a view that answers 403 instead) then leaves no started watcher,
        # which would keep itself alive in the loop for good.
        self._watcher: Any = None
        self._closed = False

    def put(self, item: T, level: Hashable | None = None) -> None:
        with self._lock:
            self.push(item, level)
            if self._get_ident() != self._hub_thread:
                # Another OS thread may not touch the hub: the async watcher
                # wakes it. Before the first get() there is no watcher and
                # nobody to wake: that get() finds the item.
                if self._watcher is not None and not self._closed:
                    self._watcher.send()
                return
        if self._waiter is not None and not self._wake_pending:
            self._wake_pending = True
            self._hub.loop.run_callback(self._wake)

    def _wake(self) -> None:
        """Resume the parked reader; runs in the hub greenlet."""
        self._wake_pending = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.switch(True)

    def get(self, timeout: float | None) -> T:
        while True:
            with self._lock:
                if self.items:
                    return self.pop()
                if self._watcher is None and not self._closed:
                    self._watcher = self._hub.loop.async_()
                    self._watcher.start(self._wake)
            # No put can slip in between: a greenlet's put cannot run before
            # this one switches away, and a thread's put wakes the hub through
            # the watcher, whose callback finds the waiter set below.
            waiter = self._new_waiter(self._hub)
            self._waiter = waiter
            timer = None
            if timeout is not None:
                timer = self._hub.loop.timer(timeout)
                timer.start(waiter.switch, False)
            try:
                woken = waiter.get()
            finally:
                if self._waiter is waiter:
                    self._waiter = None
                if timer is not None:
                    timer.stop()
                    timer.close()
            if not woken and not self.items:
                raise Empty

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._watcher is not None:
                self._watcher.stop()
                self._watcher.close()


def new_channel(limit: int | None = None) -> Channel[Any]:
    """Return a channel suited to the current process (gevent or threads).

    :param limit: how many items may wait before levels are coalesced;
        ``None`` for no limit.
    """
    if gevent_is_active():
        return _HubChannel(limit)
    return _ThreadChannel(limit)


#: The switch interval native jobs run with beside a gevent hub (seconds).
JOB_SWITCH_INTERVAL = 0.0005


class _SwitchInterval:
    """Lowers the interpreter's GIL switch interval while native jobs run.

    Every socket write of the hub releases the GIL and must win it back; a
    CPU-bound job thread keeps it for a whole switch interval each time (5 ms
    by default), so one broadcast to 100 streams queues behind the job 100
    times, the "GIL convoy". A shorter interval while jobs run bounds each
    wait. The setting is process-wide, hence this one counted holder: the
    first job in lowers it, the last job out restores it.
    """

    def __init__(self) -> None:
        self._lock: Any = None
        self._running = 0
        self._saved: float | None = None

    def _native_lock(self) -> Any:
        # Made on first use: only then is gevent sure to be active.
        if self._lock is None:
            self._lock = new_lock()
        return self._lock

    def enter(self, interval: float) -> None:
        with self._native_lock():
            if self._running == 0:
                current = sys.getswitchinterval()
                if interval < current:
                    self._saved = current
                    sys.setswitchinterval(interval)
            self._running += 1

    def exit(self) -> None:
        with self._native_lock():
            self._running -= 1
            if self._running == 0 and self._saved is not None:
                sys.setswitchinterval(self._saved)
                self._saved = None


_SWITCH_INTERVAL = _SwitchInterval()


def start_native_thread(
    target: Callable[[], None], name: str, switch_interval: float | None = JOB_SWITCH_INTERVAL
) -> None:
    """Run ``target`` in a new OS thread, even under gevent.

    Under gevent, ``threading.Thread`` makes a greenlet: a CPU-bound or
    blocking job in it would stall every stream of the worker. The
    original ``_thread.start_new_thread`` makes a real thread, which the
    GIL time-slices against the hub.

    :param switch_interval: under gevent, the GIL switch interval to use
        while such jobs run (see :class:`_SwitchInterval`); ``None`` leaves
        the interpreter's setting alone.
    """
    if gevent_is_active():
        import gevent

        # The thread keeps a reference to the hub that started it, for
        # call_on_hub; a context variable carries it into the new thread.
        context = contextvars.copy_context()
        context.run(_MAIN_HUB.set, gevent.get_hub())
        job = _with_hub_cleanup(target)
        if switch_interval is not None:
            job = _with_switch_interval(job, switch_interval)
        _original("_thread", "start_new_thread")(context.run, (job,))
        return
    threading.Thread(target=target, name=name, daemon=True).start()


def _with_switch_interval(target: Callable[[], None], interval: float) -> Callable[[], None]:
    def run() -> None:
        _SWITCH_INTERVAL.enter(interval)
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


def start_greenlet(target: Callable[[], None], name: str) -> None:
    """Run ``target`` as a greenlet under gevent, as a daemon thread otherwise.

    For I/O-bound jobs under gevent: cheaper than a thread, but a job that
    computes or blocks without yielding stalls the hub.
    """
    threading.Thread(target=target, name=name, daemon=True).start()


_MAIN_HUB: contextvars.ContextVar[Any] = contextvars.ContextVar("flask_sse_flush_main_hub")
R = TypeVar("R")


def call_on_hub(function: Callable[[], R]) -> R:
    """Run ``function`` in a greenlet of the hub that started this job; return its result.

    For the parts of a native-thread job that need gevent's cooperative
    machinery, chiefly subprocesses: gevent's ``subprocess`` waits on its
    child through the main loop's watchers, which no other thread can use.
    The calling thread blocks (only itself) until the greenlet is done; an
    exception in ``function`` is raised here. Without gevent, or when
    already on that hub, ``function`` is simply called.
    """
    hub = _MAIN_HUB.get(None)
    if hub is None or _original("_thread", "get_ident")() == hub.thread_ident:
        return function()
    import gevent

    done = new_lock()
    done.acquire()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            done.release()

    hub.loop.run_callback_threadsafe(gevent.spawn, run)
    done.acquire()
    if "error" in outcome:
        raise outcome["error"]
    result: R = outcome["value"]
    return result
