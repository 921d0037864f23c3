"""Whether gevent runs this process, and the unpatched primitives beside it.

Under ``gunicorn -k gevent`` the standard library is monkey-patched:
``threading``, ``queue`` and ``time.sleep`` belong to gevent and are only
safe inside the hub's own OS thread. This module is the one place that
asks; the rest of :mod:`flask_sse_flush.runtime` builds on it.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["gevent_is_active", "native_thread_ident", "new_lock", "original"]


def gevent_is_active() -> bool:
    """Whether gevent has monkey-patched ``threading`` in this process."""
    monkey = sys.modules.get("gevent.monkey")
    # getattr: another thread may be importing gevent.monkey right now.
    is_patched = getattr(monkey, "is_module_patched", None)
    return is_patched is not None and bool(is_patched("threading"))


def original(module: str, name: str) -> Any:
    """The standard library's own ``module.name``, as it was before gevent patched it."""
    from gevent.monkey import get_original

    return get_original(module, name)


def native_thread_ident() -> Callable[[], int]:
    """A function returning the calling OS thread's id (not a greenlet's)."""
    if gevent_is_active():
        get_ident: Callable[[], int] = original("_thread", "get_ident")
        return get_ident
    return threading.get_ident


def new_lock() -> Any:
    """Return a lock that is safe across OS threads even under gevent.

    Hold it only for a few statements: a greenlet that blocks on it would
    block its whole hub.
    """
    if gevent_is_active():
        return original("_thread", "allocate_lock")()
    return threading.Lock()
