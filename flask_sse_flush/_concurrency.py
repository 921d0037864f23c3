"""The one place that knows whether gevent runs this process.

Everything else asks this module for "a channel" (a queue that any thread
or greenlet may put into, read by the stream's generator) and to "start
this beside me" (run a job concurrently with the stream that reports it).

Under ``gunicorn -k gevent`` the standard library is monkey-patched:
``threading``, ``queue`` and ``time.sleep`` belong to gevent and are only
safe inside the hub's own OS thread. A job may still report from a native
thread (a thread pool, a C extension's callback), so the gevent channel
wakes its reader through a loop *async watcher*, the one primitive libev
and libuv make safe to signal from any OS thread. Without gevent, plain
``threading`` primitives do the job.
"""

from __future__ import annotations

import collections
import sys
import threading
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["Channel", "Empty", "gevent_is_active", "new_channel", "new_lock", "start_beside"]

T = TypeVar("T")


class Empty(Exception):
    """Nothing arrived on a channel before the timeout."""


class Channel(Protocol[T]):
    """A many-writer, one-reader FIFO; ``put`` never blocks."""

    def put(self, item: T) -> None: ...

    def get(self, timeout: float | None) -> T:
        """Return the next item; raise :class:`Empty` after ``timeout`` seconds."""
        ...

    def close(self) -> None: ...


def gevent_is_active() -> bool:
    """Whether gevent has monkey-patched ``threading`` in this process."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


class _ThreadChannel(Generic[T]):
    """A channel for ordinary OS threads."""

    def __init__(self) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._ready = threading.Condition(threading.Lock())

    def put(self, item: T) -> None:
        with self._ready:
            self._items.append(item)
            self._ready.notify()

    def get(self, timeout: float | None) -> T:
        with self._ready:
            if not self._ready.wait_for(lambda: self._items, timeout):
                raise Empty
            return self._items.popleft()

    def close(self) -> None:
        pass


class _HubChannel(Generic[T]):
    """A channel read by a greenlet, written from any greenlet or OS thread."""

    def __init__(self) -> None:
        import gevent
        import gevent.event
        from gevent.monkey import get_original

        self._items: collections.deque[T] = collections.deque()
        self._hub: Any = gevent.get_hub()
        self._get_ident: Callable[[], int] = get_original("_thread", "get_ident")
        # Guards the watcher against a foreign thread signalling it while the
        # reader closes it; a native lock, because gevent's would switch.
        self._lock: Any = get_original("_thread", "allocate_lock")()
        self._ready: Any = gevent.event.Event()
        self._watcher: Any = self._hub.loop.async_()
        self._watcher.start(self._ready.set)
        self._closed = False

    def put(self, item: T) -> None:
        self._items.append(item)  # deque.append is atomic across threads
        if self._get_ident() == self._hub.thread_ident:
            self._ready.set()
            return
        with self._lock:
            if not self._closed:
                self._watcher.send()

    def get(self, timeout: float | None) -> T:
        while not self._items:
            self._ready.clear()
            if self._items:  # arrived between the check and the clear
                break
            if not self._ready.wait(timeout):
                raise Empty
        return self._items.popleft()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._watcher.stop()
            self._watcher.close()


def new_channel() -> Channel[Any]:
    """Return a channel suited to the current process (gevent or threads)."""
    if gevent_is_active():
        return _HubChannel()
    return _ThreadChannel()


def start_beside(target: Callable[[], None], name: str) -> None:
    """Run ``target`` concurrently with the caller and return at once.

    Under gevent this is a greenlet (patched ``threading.Thread`` is one);
    otherwise a daemon OS thread, so a job never holds the interpreter open
    at exit.
    """
    threading.Thread(target=target, name=name, daemon=True).start()


def new_lock() -> Any:
    """Return a lock that is safe across OS threads even under gevent.

    Hold it only for a few statements: a greenlet that blocks on it would
    block its whole hub.
    """
    if gevent_is_active():
        from gevent.monkey import get_original

        return get_original("_thread", "allocate_lock")()
    return threading.Lock()
