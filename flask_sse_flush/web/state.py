"""What the library keeps on an app: the extension's state, its broker, the gevent fix.

Nothing here is global: every app holds its own state in
``app.extensions["sse_flush"]``, made by whichever of the extension or a
render blueprint comes first.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from ..brokers.base import Broker
from ..brokers.memory import MemoryBroker
from ..brokers.redis import RedisBroker
from ..jobs.service import JobService
from ..runtime import gevent_is_active, home_hub, install_logging_locks
from ..wire.frames import Coalescing
from .settings import CONFIG_KEYS, Settings

__all__ = [
    "EXTENSION_KEY",
    "REDIS_URL_KEY",
    "SSEFlushState",
    "app_broker",
    "app_state",
    "gevent_integration",
]

#: Where an app keeps the library's state: ``app.extensions[EXTENSION_KEY]``.
EXTENSION_KEY = "sse_flush"

#: The app config key naming the Redis to use when no ``broker`` is passed.
REDIS_URL_KEY = "SSE_FLUSH_REDIS_URL"

_REDIS_BROKERS = "sse_flush.redis"
_GEVENT_INTEGRATION = "sse_flush.gevent"


class SSEFlushState(dict[str, JobService]):
    """What :class:`~flask_sse_flush.SSEFlush` keeps on an app: ``app.extensions["sse_flush"]``.

    A mapping of each render blueprint's name to its
    :class:`~flask_sse_flush.jobs.service.JobService` (as before there was an
    extension), with the app's broker and settings as attributes.
    """

    broker: Broker | None = None
    settings: Settings | None = None


def app_state(app: Flask) -> SSEFlushState:
    """The extension state of ``app``, made (keeping what blueprints stored) if need be."""
    found = app.extensions.get(EXTENSION_KEY)
    if isinstance(found, SSEFlushState):
        return found
    state = SSEFlushState(found or {})
    app.extensions[EXTENSION_KEY] = state
    return state


def app_broker(app: Flask, settings: Settings, coalescing: Coalescing | None = None) -> Broker:
    """The broker for ``app``'s channels or jobs, when none is passed in.

    The extension's broker if the app has one (and no other coalescing is
    asked for). Otherwise a :class:`~flask_sse_flush.brokers.RedisBroker` on
    ``SSE_FLUSH_REDIS_URL`` when the app sets it, one per URL and coalescing
    for the whole app (a worker holds one set of connections, not one per
    blueprint); else a new :class:`~flask_sse_flush.brokers.MemoryBroker`.
    """
    state = app_state(app)
    if coalescing is None and state.broker is not None:
        return state.broker
    options: dict[str, Any] = {"retention": settings.retention, "max_events": settings.max_events}
    if coalescing is not None:
        options["coalesce"] = coalescing
    url = app.config.get(REDIS_URL_KEY)
    if not url:
        return MemoryBroker(**options)
    shared: dict[tuple[str, Coalescing | None], Broker] = app.extensions.setdefault(
        _REDIS_BROKERS, {}
    )
    key = (str(url), coalescing)
    if key not in shared:
        shared[key] = RedisBroker(str(url), lease=settings.lease, **options)
    return shared[key]


def gevent_integration(app: Flask) -> bool:
    """Prepare ``app``'s process for gevent; call it when initialising an app.

    Installs :func:`~flask_sse_flush.runtime.install_logging_locks` (job
    threads that log never hang on a gevent lock) unless the app's config
    sets ``SSE_FLUSH_GEVENT_LOGGING_LOCKS = False``; once per app, however
    many blueprints or extensions call it. Under gevent it also notes the
    main thread's hub, the home of the broker's sockets
    (:func:`~flask_sse_flush.runtime.home_hub`), for native threads that
    come before any request. The extension's ``init_app`` and
    the render blueprint's registration call it. See
    :ref:`servers-gevent-logging`.

    :returns: whether the app asked for the logging fix.
    :raises ValueError: the config value is not ``True`` or ``False``.

    .. versionadded:: 0.2.0
    """
    key = CONFIG_KEYS["gevent_logging_locks"]
    wanted = Settings(gevent_logging_locks=app.config.get(key, True)).gevent_logging_locks
    if _GEVENT_INTEGRATION not in app.extensions:
        app.extensions[_GEVENT_INTEGRATION] = wanted
        if gevent_is_active():
            home_hub()  # in the main thread: remembered for the native threads to come
        if wanted:
            install_logging_locks()
    return bool(app.extensions[_GEVENT_INTEGRATION])
