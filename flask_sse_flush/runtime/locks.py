"""Logging from native job threads under gevent, without a deadlock.

gevent's monkey-patching turns every :mod:`logging` handler's lock (and
logging's module lock) into a gevent lock, and a gevent lock does not work
across OS threads: a native job thread that waits for a handler lock held
by another thread waits in its own hub and is never woken (measured with
gevent 26: two job threads logging at once hung one of them for good, and
the job never published its end). A render that logs, or a failing render
whose traceback the library logs, is enough.

:func:`install_logging_locks` gives those locks a :class:`HybridLock`, a
lock that is right on both sides: a real OS lock underneath, waited on with
a blocking call in a native thread (only that thread waits) and by polling
with ``gevent.sleep`` in the hub's own thread (the hub runs on meanwhile).
It converts the locks of the handlers that exist then and, through
:meth:`logging.Handler.createLock`, those made later.
:func:`uninstall_logging_locks` undoes it. Importing this module touches
nothing: the app's initialisation installs it (see
:ref:`servers-gevent-logging`), or a process without an app calls
:func:`install_logging_locks` itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any

from .detect import gevent_is_active, native_thread_ident, new_lock, original

__all__ = [
    "HybridLock",
    "hub_safe_lock",
    "install_logging_locks",
    "logging_locks_installed",
    "uninstall_logging_locks",
]

_MAX_POLL = 0.005

log = logging.getLogger(__name__)


class HybridLock:
    """A lock shared by the hub's greenlets and native threads (see the module).

    :param hub_thread: the OS thread id of the hub whose greenlets use it.
    """

    def __init__(self, hub_thread: int) -> None:
        self._lock = original("_thread", "allocate_lock")()
        self._hub_thread = hub_thread
        self._ident = native_thread_ident()
        # One entry per caller waiting right now (list.append and pop are atomic):
        # an uninstall must not swap the lock out from under a waiter.
        self._waiting: list[None] = []

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(False):
            return True
        if not blocking:
            return False
        self._waiting.append(None)
        try:
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
        finally:
            self._waiting.pop()

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return bool(self._lock.locked())

    def waiting(self) -> int:
        """How many callers wait for the lock right now."""
        return len(self._waiting)

    def _at_fork_reinit(self) -> None:
        self._lock = original("_thread", "allocate_lock")()
        self._waiting = []

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


def _is_free(rlock: Any, block: Any) -> bool:
    """Whether nobody holds ``rlock`` and nobody waits for its ``block``."""
    if getattr(rlock, "_count", 0) or getattr(rlock, "_owner", None) is not None:
        return False
    waiting = getattr(block, "linkcount", None) or getattr(block, "waiting", None)
    return not (callable(waiting) and waiting())


def _hub_thread() -> int:
    """The OS thread whose greenlets share logging's locks with job threads.

    The caller's, when it runs a gevent hub (an app is initialised in the
    server's hub thread); else gevent's main thread, whose hub a server runs
    (an install from a thread of its own).
    """
    from gevent import hub
    from gevent._hub_local import get_hub_if_exists

    if get_hub_if_exists() is not None:
        return native_thread_ident()()
    return int(hub.MAIN_THREAD_IDENT)


class _LoggingLocks:
    """The process's one logging fix: who holds it, and what it changed.

    Every change happens under ``_guard``, a real OS lock held for a few
    statements only (no I/O, no logging), so installs and uninstalls from
    any threads see one consistent state.
    """

    def __init__(self) -> None:
        self._guard = new_lock()
        self._holders = 0
        #: The hub thread the locks were converted for; ``None``: not converted.
        self._hub_thread: int | None = None
        #: Each converted RLock -> (its original ``_block``, the HybridLock given).
        self._converted: weakref.WeakKeyDictionary[Any, tuple[Any, HybridLock]] = (
            weakref.WeakKeyDictionary()
        )
        self._create_lock: Callable[[logging.Handler], None] | None = None
        self._subscribed = False

    def installed(self) -> bool:
        with self._guard:
            return self._hub_thread is not None

    def install(self) -> bool:
        with self._guard:
            self._holders += 1
            if self._hub_thread is None:
                if gevent_is_active():
                    self._convert_all()
                else:
                    self._await_gevent()
            return self._hub_thread is not None

    def uninstall(self) -> bool:
        with self._guard:
            if self._holders == 0:
                return False
            self._holders -= 1
            if self._holders:
                return False
            self._stop_awaiting_gevent()
            return self._restore_all()

    def adopt(self, rlock: Any) -> None:
        """Convert a handler lock made after the install (the createLock hook)."""
        with self._guard:
            if self._hub_thread is not None:
                self._convert(rlock, self._hub_thread)

    def _convert(self, rlock: Any, hub_thread: int) -> None:
        """Give a free ``threading._RLock`` a :class:`HybridLock` underneath."""
        block = getattr(rlock, "_block", None)
        if block is None or isinstance(block, HybridLock) or not _is_free(rlock, block):
            return  # not a Python RLock, converted already, or in use right now: leave it
        # Holding the old block while swapping it keeps out anyone who tries it meanwhile.
        if not block.acquire(False):
            return
        try:
            hybrid = HybridLock(hub_thread)
            rlock._block = hybrid
            self._converted[rlock] = (block, hybrid)
        finally:
            block.release()

    def _convert_all(self) -> None:
        hub_thread = _hub_thread()
        self._hub_thread = hub_thread
        self._convert(getattr(logging, "_lock", None), hub_thread)
        handlers = [ref() for ref in list(getattr(logging, "_handlerList", []))]
        handlers.append(logging.lastResort)
        for handler in handlers:
            if handler is not None:
                self._convert(handler.lock, hub_thread)
        if self._create_lock is None:
            self._create_lock = logging.Handler.createLock
            logging.Handler.createLock = _create_lock  # type: ignore[method-assign]

    def _restore_all(self) -> bool:
        if self._hub_thread is None:
            return False
        self._hub_thread = None  # the hook converts nothing from now on
        for rlock, (block, hybrid) in list(self._converted.items()):
            if rlock._block is not hybrid or not hybrid.acquire(False):
                continue  # held: it stays a HybridLock, which is right on both sides
            try:
                if _is_free(rlock, hybrid):
                    rlock._block = block
                    del self._converted[rlock]
            finally:
                hybrid.release()
        if self._create_lock is not None and logging.Handler.__dict__["createLock"] is (
            _create_lock
        ):
            # Put back only if nobody wrapped it after us; else the hook stays, inert.
            restored: Any = self._create_lock
            logging.Handler.createLock = restored  # type: ignore[method-assign]
            self._create_lock = None
        return True

    def _await_gevent(self) -> None:
        """Finish the install when gevent has patched everything (an app made before it)."""
        if self._subscribed or importlib.util.find_spec("gevent") is None:
            return
        # zope.event: gevent's own dependency, where its patching announces itself.
        importlib.import_module("zope.event").subscribers.append(self._on_gevent_event)
        self._subscribed = True

    def _stop_awaiting_gevent(self) -> None:
        if not self._subscribed:
            return
        subscribers = sys.modules["zope.event"].subscribers
        if self._on_gevent_event in subscribers:
            subscribers.remove(self._on_gevent_event)
        self._subscribed = False

    def _on_gevent_event(self, event: object) -> None:
        if type(event).__name__ != "GeventDidPatchAllEvent":
            return
        try:
            with self._guard:
                if self._holders and self._hub_thread is None and gevent_is_active():
                    self._convert_all()
        except Exception:  # never break gevent's patching; say so instead
            log.exception("flask-sse-flush could not make logging's locks safe for threads")


# logging's locks are one per process, so this holder is too.
_LOGGING_LOCKS = _LoggingLocks()


def _create_lock(self: logging.Handler) -> None:
    original_create_lock = _LOGGING_LOCKS._create_lock or _BASE_CREATE_LOCK
    original_create_lock(self)
    _LOGGING_LOCKS.adopt(self.lock)


_BASE_CREATE_LOCK = logging.Handler.createLock


def install_logging_locks() -> bool:
    """Make :mod:`logging`'s locks safe for native threads under gevent.

    Converts the lock of every handler that exists (and logging's module
    lock) to a :class:`HybridLock`, and hooks :meth:`logging.Handler.createLock`
    so that handlers made later get one too. Call it in the hub's thread,
    where the app is initialised: :func:`flask_sse_flush.web.state.gevent_integration`
    calls it for each app unless ``SSE_FLUSH_GEVENT_LOGGING_LOCKS`` is false.

    Each call counts as one holder, and only the first converts anything;
    :func:`uninstall_logging_locks` releases one, and the last restores. Safe
    to call from several threads at once. Without gevent's monkey-patching
    nothing is touched; if gevent patches everything later in the process
    (an app made before gunicorn's gevent worker patches, e.g. with
    ``--preload``), the install happens then.

    :returns: whether logging's locks are converted now.

    .. versionadded:: 0.2.0
    """
    return _LOGGING_LOCKS.install()


def uninstall_logging_locks() -> bool:
    """Release one :func:`install_logging_locks`; the last one restores logging.

    Puts back the original lock of every converted handler that nobody holds
    or waits for (one in use keeps its :class:`HybridLock`, which is correct
    with or without gevent) and the original :meth:`logging.Handler.createLock`,
    unless something wrapped it after the install (the hook then stays,
    converting nothing). Call it when no job thread logs any more, e.g. at
    shutdown or in a test. Without holders it does nothing.

    :returns: whether this call restored logging's locks.

    .. versionadded:: 0.2.0
    """
    return _LOGGING_LOCKS.uninstall()


def logging_locks_installed() -> bool:
    """Whether :mod:`logging`'s locks are converted in this process now.

    .. versionadded:: 0.2.0
    """
    return _LOGGING_LOCKS.installed()
