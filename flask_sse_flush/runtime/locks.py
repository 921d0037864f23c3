"""Logging from native job threads under gevent, without a deadlock.

gevent's monkey-patching turns every :mod:`logging` handler's lock (and
logging's module lock) into a gevent lock, and a gevent lock does not work
across OS threads: a native job thread that waits for a handler lock held
by another thread waits in its own hub and is never woken (measured with
gevent 26: two job threads logging at once hung one of them for good, and
the job never published its end). A render that logs, or a failing render
whose traceback the library logs, is enough.

:func:`make_logging_thread_safe` gives those locks a lock that is right on
both sides: a real OS lock underneath, waited on with a blocking call in a
native thread (only that thread waits) and by polling with
``gevent.sleep`` in the hub's own thread (the hub runs on meanwhile).
It runs once per process, in the hub's thread, before the first native job
thread starts; it converts the locks of the handlers that exist then (an
app configures logging at start-up) and those made later with
:class:`logging.Handler`'s own ``createLock``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .detect import gevent_is_active, native_thread_ident, new_lock, original

__all__ = ["HybridLock", "hub_safe_lock", "make_logging_thread_safe"]

_MAX_POLL = 0.005


class HybridLock:
    """A lock shared by the hub's greenlets and native threads (see the module).

    :param hub_thread: the OS thread id of the hub whose greenlets use it.
    """

    def __init__(self, hub_thread: int) -> None:
        self._lock = original("_thread", "allocate_lock")()
        self._hub_thread = hub_thread
        self._ident = native_thread_ident()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(False):
            return True
        if not blocking:
            return False
        if self._ident() != self._hub_thread:
            # A native thread: block it alone.
            return bool(self._lock.acquire(True, timeout))
        import gevent

        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        pause = 0.0001
        while not self._lock.acquire(False):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            gevent.sleep(pause)  # let the holder (a greenlet here, or a thread) go on
            pause = min(pause * 2, _MAX_POLL)
        return True

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return bool(self._lock.locked())

    def _at_fork_reinit(self) -> None:
        self._lock = original("_thread", "allocate_lock")()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def hub_safe_lock(hub: Any) -> Any:
    """A lock that may be held across a call that waits for ``hub`` (a gevent hub, or ``None``).

    A native job thread that holds a plain native lock while it waits for
    the hub (a Redis publish goes through the hub) freezes the worker as
    soon as a greenlet of that hub asks for the same lock: the hub's thread
    blocks in the OS, so it never runs the call the holder waits for. A
    :class:`HybridLock` waits natively in other threads but cooperatively
    in ``hub``'s own thread, so the hub serves the holder meanwhile. A
    greenlet that yields while holding it (a greenlet job's Redis publish)
    is no hazard either. Without gevent (``hub`` is ``None``) it is a plain
    lock.
    """
    if hub is None:
        return new_lock()
    return HybridLock(hub.thread_ident)


_installed_for: int | None = None


def _convert(rlock: Any, hub_thread: int) -> None:
    """Give a free ``threading._RLock`` a :class:`HybridLock` underneath."""
    block = getattr(rlock, "_block", None)
    if block is None or isinstance(block, HybridLock):
        return
    if getattr(rlock, "_count", 0) or (callable(getattr(block, "locked", None)) and block.locked()):
        return  # held right now: leave it
    rlock._block = HybridLock(hub_thread)


def make_logging_thread_safe() -> None:
    """Make :mod:`logging`'s locks safe for native threads under gevent (once per process).

    Call it in the hub's thread. Nothing happens without gevent.
    """
    global _installed_for
    if not gevent_is_active():
        return
    hub_thread = native_thread_ident()()
    if _installed_for == hub_thread:
        return
    _installed_for = hub_thread
    _convert(getattr(logging, "_lock", None), hub_thread)
    handlers = [ref() for ref in list(getattr(logging, "_handlerList", []))]
    handlers.append(logging.lastResort)
    for handler in handlers:
        if handler is not None:
            _convert(handler.lock, hub_thread)

    create_lock = logging.Handler.createLock
    if getattr(create_lock, "_sse_flush", False):
        return

    def createLock(self: logging.Handler) -> None:
        create_lock(self)
        _convert(self.lock, hub_thread)

    createLock._sse_flush = True  # type: ignore[attr-defined]
    logging.Handler.createLock = createLock  # type: ignore[method-assign]
