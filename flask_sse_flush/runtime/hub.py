"""The bridge from a job's native OS thread back to the gevent hub that started it."""

from __future__ import annotations

import contextvars
import gc
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .detect import gevent_is_active, native_thread_ident, new_lock

__all__ = [
    "HUB_POLL_INTERVAL",
    "call_on_hub",
    "home_hub",
    "post_to_hub",
    "run_in_hub",
    "started_by",
]

R = TypeVar("R")

log = logging.getLogger(__name__)

_MAIN_HUB: contextvars.ContextVar[Any] = contextvars.ContextVar("flask_sse_flush_main_hub")

#: How often (seconds) a thread waiting in :func:`call_on_hub` checks that
#: the hub is still there to answer.
HUB_POLL_INTERVAL = 0.25


def started_by(hub: Any) -> contextvars.Context:
    """A context in which :func:`call_on_hub` reaches ``hub``; a new thread runs in it."""
    context = contextvars.copy_context()
    context.run(_MAIN_HUB.set, hub)
    return context


def call_on_hub(function: Callable[[], R], *, timeout: float | None = None) -> R:
    """Run ``function`` in a greenlet of the hub that started this job; return its result.

    For the parts of a native-thread job that need gevent's cooperative
    machinery, chiefly subprocesses: gevent's ``subprocess`` waits on its
    child through the main loop's watchers, which no other thread can use.
    The calling thread blocks (only itself) until the greenlet is done; an
    exception in ``function`` is raised here. Without gevent, or when
    already on that hub, ``function`` is simply called.

    :param timeout: the most seconds to wait; then the greenlet is killed
        and :class:`TimeoutError` raised. ``None`` waits as long as it runs.
    :raises TimeoutError: ``timeout`` passed.
    :raises RuntimeError: the hub stopped (its worker is shutting down)
        before it ran ``function`` to the end; the caller never hangs on a
        hub that is gone.

    .. versionadded:: 0.1
    """
    return run_in_hub(_MAIN_HUB.get(None), function, timeout=timeout)


def home_hub() -> Any:
    """The gevent hub that owns this worker's sockets, as seen from the calling thread.

    In a native job thread (:func:`~flask_sse_flush.runtime.start_native_thread`),
    the hub that started it; anywhere else the main thread's hub, which in a
    gevent worker serves every request. A native thread the application
    started itself gets the main thread's hub too, not one of its own: a hub
    made for a thread ends with the thread, and a socket made in it (a
    pooled Redis connection, say) would be useless afterwards. Only when the
    main thread has no hub at all is it the calling thread's own. ``None``
    without gevent.
    """
    if not gevent_is_active():
        return None
    hub = _MAIN_HUB.get(None)
    if hub is not None:
        return hub
    return _main_thread_hub()


class _Remembered:
    """The main thread's hub, once known: ``(pid, hub)``; a native thread cannot ask for it."""

    found: tuple[int, Any] | None = None
    searched_pid = 0  # the process whose heap was searched (once is enough)


def _main_thread_hub() -> Any:
    import gevent
    from gevent.hub import MAIN_THREAD_IDENT

    pid = os.getpid()
    if native_thread_ident()() == MAIN_THREAD_IDENT:
        hub = gevent.get_hub()
        _Remembered.found = (pid, hub)
        return hub
    found = _Remembered.found
    if found is not None and found[0] == pid and _alive(found[1]):
        return found[1]
    if _Remembered.searched_pid != pid:
        hub = _search_main_hub()
        _Remembered.searched_pid = pid
        if hub is not None:
            _Remembered.found = (pid, hub)
            return hub
        log.warning(
            "no running gevent hub in this process's main thread; a native thread "
            "uses a hub of its own, which ends with it (see flask_sse_flush.runtime.home_hub)"
        )
    return gevent.get_hub()


def _search_main_hub() -> Any:
    """The main thread's hub, looked for among all objects (a thread-local hides it).

    ``None`` when there is none, when the main thread does not run in this
    process (forked from another thread), or when ``gc.freeze()`` hid it.
    """
    from gevent.hub import Hub

    running = sys._current_frames()  # the live threads of this process
    hubs = (o for o in gc.get_objects() if isinstance(o, Hub) and o.main_hub and _alive(o))
    return next((hub for hub in hubs if hub.thread_ident in running), None)


def _alive(hub: Any) -> bool:
    return not hub.dead and getattr(hub, "loop", None) is not None


def run_in_hub(hub: Any, function: Callable[[], R], *, timeout: float | None = None) -> R:
    """Run ``function`` in a greenlet of ``hub`` and wait for its result.

    What :func:`call_on_hub` does for a job's own hub, for any hub: a
    socket made in one hub's thread can be used only there, so a shared
    client (the Redis broker's) sends every call to its home hub. Called
    in ``hub``'s own thread, or with ``hub=None``, ``function`` simply runs.
    Same errors as :func:`call_on_hub`.
    """
    if hub is None or native_thread_ident()() == hub.thread_ident:
        return function()
    import gevent

    done = new_lock()
    done.acquire()
    outcome: dict[str, Any] = {}

    def run() -> None:
        # Hub callbacks run in order, so a greenlet the caller gave up on
        # before it started sees `abandoned` and never calls `function`.
        if outcome.get("abandoned"):
            return
        outcome["greenlet"] = gevent.getcurrent()
        try:
            outcome["value"] = function()
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            done.release()

    def abandon() -> None:
        outcome["abandoned"] = True
        greenlet = outcome.get("greenlet")
        if greenlet is not None:
            greenlet.kill(TimeoutError, block=False)

    loop = getattr(hub, "loop", None)
    if loop is None or hub.dead:
        raise RuntimeError("the gevent hub that started this job has stopped")
    loop.run_callback_threadsafe(gevent.spawn, run)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        wait = HUB_POLL_INTERVAL
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        if done.acquire(True, wait):
            break
        if not _alive(hub):
            if done.acquire(False):
                break
            raise RuntimeError("the gevent hub that started this job has stopped")
        if deadline is not None and time.monotonic() >= deadline:
            if done.acquire(False):
                break
            hub.loop.run_callback_threadsafe(abandon)
            raise TimeoutError(f"call_on_hub: {function!r} did not finish in {timeout} s")
    if "error" in outcome:
        raise outcome["error"]
    result: R = outcome["value"]
    return result


def post_to_hub(hub: Any, function: Callable[[], object]) -> None:
    """Run ``function`` on ``hub``'s loop soon, without waiting for it.

    For quick bookkeeping that must happen in the hub's thread (a metric
    whose lock is a gevent lock) from a native thread. ``function`` runs as
    a loop callback: it must not block or switch. Called in the hub's own
    thread, or with ``hub=None``, it runs at once. A hub that has stopped
    drops it.
    """
    if hub is None or native_thread_ident()() == hub.thread_ident:
        function()
        return
    loop = getattr(hub, "loop", None)
    if loop is not None and not hub.dead:
        loop.run_callback_threadsafe(function)
