"""``SSEFlush``: the Flask extension. Publish to channels from anywhere, stream them from views.

::

    sse = SSEFlush(app)                       # or SSEFlush() + sse.init_app(app)

    @app.post("/news")
    def post_news():
        sse.publish("news", request.get_json(), event="headline")
        return "", 204

    @app.get("/news/stream")
    def news_stream():
        return sse.stream("news")             # exact resume with Last-Event-ID

The extension's state lives in ``app.extensions["sse_flush"]`` (an
:class:`SSEFlushState`); nothing is global, so one extension may serve
several apps and an app factory may make as many as it likes.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, has_app_context, request

from ..brokers.base import Broker
from ..brokers.redis import RedisBroker
from ..channels import (
    MAX_CHANNELS,
    ChannelMux,
    Position,
    check_channel,
    format_cursor,
    parse_cursor,
)
from ..exceptions import BrokerUnavailable, TooManyStreams
from ..jobs.job import RenderFunction
from ..jobs.service import JobService
from ..ops.lifecycle import lifecycle
from ..ops.metrics import install as install_metrics
from ..wire.frames import Event
from .blueprint import create_render_blueprint
from .client import serve_client
from .responses import admit_stream, come_back, json_error, open_stream, stream_headers
from .settings import Settings
from .state import EXTENSION_KEY, SSEFlushState, app_broker, app_state, gevent_integration

__all__ = ["Authorize", "SSEFlush", "SSEFlushState"]

log = logging.getLogger(__name__)

#: ``authorize(channel) -> bool``, called inside the request for each
#: channel a client asks ``GET /sse`` for; a false result refuses it (403).
Authorize = Callable[[str], object]


class SSEFlush:
    """Server-Sent Events for a Flask app: channels anyone may publish to, streams, render jobs.

    :param app: an app to initialise now (else call :meth:`init_app`).
    :param redis_url: use this Redis (a ``redis://`` URL) for every channel
        and job, instead of the app's ``SSE_FLUSH_REDIS_URL``. With it, the
        extension works without any app: ``SSEFlush(redis_url=URL).publish(...)``
        in a job worker, a CLI command or a cron job reaches every stream of
        every web worker on that Redis.
    :param broker: the broker to use (it wins over ``redis_url`` and the config).
    :param authorize: serve ``GET /sse?channel=<name>[&channel=<name>...]``,
        calling ``authorize(channel)`` inside the request for each channel:
        a false result answers ``403`` before any stream starts. Without it
        there is no such route: nothing is public by accident.
    :param url_prefix: where ``/sse`` and the client are mounted (e.g. ``"/api"``).
    :param client: serve the browser client, ``SSEFlushSource``, as
        ``/sse-flush.js`` (a classic script), ``/sse-flush.mjs`` (an ES
        module) and ``/sse-flush.d.ts`` (its types): :doc:`/client`.

    Per-deployment settings come from the app's ``SSE_FLUSH_*`` config
    (:doc:`/configuration`), read once by :meth:`init_app`.

    .. versionadded:: 1.0
       ``SSEFlush(app)``, ``publish``, ``stream``, ``authorize``,
       ``render_blueprint``, ``client``. The 0.2 form ``SSEFlush(render, ...)`` still
       works and warns: use :meth:`render_blueprint`.
    """

    def __init__(
        self,
        app: Flask | RenderFunction | None = None,
        /,
        *legacy_args: Any,
        redis_url: str | None = None,
        broker: Broker | None = None,
        authorize: Authorize | None = None,
        url_prefix: str | None = None,
        client: bool = True,
        **legacy_options: Any,
    ) -> None:
        self._legacy: Blueprint | None = None
        if app is None and "app" in legacy_options:
            app = legacy_options.pop("app")  # SSEFlush(app=app)
        if app is not None and not isinstance(app, Flask) and callable(app):
            # 0.2: SSEFlush(render, app=None, **blueprint options).
            warnings.warn(
                "SSEFlush(render, ...) is the 0.2 form: use SSEFlush(app) and "
                "app.register_blueprint(sse.render_blueprint(render, ...))",
                DeprecationWarning,
                stacklevel=2,
            )
            given = legacy_args[0] if legacy_args else legacy_options.pop("app", None)
            if url_prefix is not None:  # the blueprint's, in that form
                legacy_options["url_prefix"], url_prefix = url_prefix, None
            if broker is not None:
                legacy_options["broker"], broker = broker, None
            self._legacy = create_render_blueprint(app, **legacy_options)
            app = given
        elif legacy_args or legacy_options:
            unknown = ", ".join(sorted(legacy_options)) or "positional arguments"
            raise TypeError(f"SSEFlush() got unexpected arguments: {unknown}")
        if authorize is not None and not callable(authorize):
            raise TypeError(f"authorize must be callable, not {type(authorize).__name__}")
        if broker is None and redis_url is not None:
            broker = RedisBroker(redis_url)
        self._broker = broker
        self.authorize = authorize
        self.url_prefix = url_prefix
        self.client = client
        self._apps: list[Flask] = []
        if isinstance(app, Flask):
            self.init_app(app)
        elif app is not None:
            raise TypeError(f"app must be a Flask app, not {type(app).__name__}")

    # -- setup ---------------------------------------------------------------------

    def init_app(self, app: Flask) -> None:
        """Set the extension up on ``app``: settings, broker, and the ``/sse`` route.

        :raises ValueError: a ``SSE_FLUSH_*`` setting is out of range.
        """
        settings = Settings.resolve(app.config)
        install_metrics()  # registered when an app is initialised, never at import
        gevent_integration(app)  # logging's locks, unless SSE_FLUSH_GEVENT_LOGGING_LOCKS is off
        state = app_state(app)
        state.settings = settings
        if self._broker is not None:
            state.broker = self._broker
        if state.broker is None:
            state.broker = app_broker(app, settings)
        if self.authorize is not None:
            app.add_url_rule(
                f"{(self.url_prefix or '').rstrip('/')}/sse",
                endpoint="sse_flush_channels",
                view_func=self._channels_view,
                methods=["GET"],
            )
        if self._legacy is not None:
            app.register_blueprint(self._legacy)
        if self.client:
            serve_client(app, self.url_prefix)
        self._apps.append(app)

    def render_blueprint(self, render: RenderFunction, **options: Any) -> Blueprint:
        """The render-job routes (``/render/stream``, ``POST /render``, ...) as a blueprint.

        The same as :func:`~flask_sse_flush.create_render_blueprint`; its
        jobs use this extension's broker unless ``broker=`` is given.
        """
        return create_render_blueprint(render, **options)

    # -- the 0.2 form --------------------------------------------------------------

    @property
    def blueprint(self) -> Blueprint:
        """The render blueprint of the 0.2 form ``SSEFlush(render)``."""
        if self._legacy is None:
            raise AttributeError("no render blueprint: use sse.render_blueprint(render)")
        return self._legacy

    @property
    def name(self) -> str:
        """The 0.2 form's blueprint name."""
        return self.blueprint.name

    def service(self, app: Flask | None = None) -> JobService:
        """The 0.2 form's :class:`~flask_sse_flush.jobs.service.JobService` on ``app``.

        :raises LookupError: no app given, none current, or not initialised.
        """
        if app is None and not has_app_context():
            raise LookupError("no app given and no app context: pass the app")
        target = app if app is not None else current_app
        try:
            return app_state(target)[self.name]
        except KeyError:
            raise LookupError(f"SSEFlush {self.name!r} was not initialised on this app") from None

    # -- channels ------------------------------------------------------------------

    @property
    def broker(self) -> Broker:
        """The broker of the current app (or of the one app, or the one given).

        :raises RuntimeError: the extension is not set up anywhere, or serves
            several apps and none is current.
        """
        if has_app_context():
            state = current_app.extensions.get(EXTENSION_KEY)
            if isinstance(state, SSEFlushState) and state.broker is not None:
                return state.broker
        if self._broker is not None:
            return self._broker
        brokers = {id(app_state(app).broker): app_state(app).broker for app in self._apps}
        if len(brokers) == 1:
            (found,) = brokers.values()
            if found is not None:
                return found
        if not brokers:
            raise RuntimeError(
                "SSEFlush is not set up: call init_app(app), or pass redis_url= or broker="
            )
        raise RuntimeError("SSEFlush serves several apps: publish inside one's app context")

    def publish(self, channel: str, data: Any, event: str | None = None) -> str:
        """Send an event to every stream of ``channel``, now and on resume; return its id.

        From anywhere: a view, a thread, a greenlet, a job worker or a CLI
        command, with or without an app context. The event is logged in the
        channel's history (``SSE_FLUSH_MAX_EVENTS`` events, kept
        ``SSE_FLUSH_RETENTION`` seconds after the channel's last publish).

        :param channel: the channel's name (see
            :func:`~flask_sse_flush.channels.check_channel`).
        :param data: a str, or anything JSON-serialisable.
        :param event: the event type (``None``: the browser's ``message``).
        :returns: the event's id, its ``id:`` on a stream of this one channel
            (what the browser sends back as ``Last-Event-ID``).
        :raises ValueError: a bad channel or event name.
        :raises TypeError: ``data`` is not JSON-serialisable.
        :raises BrokerUnavailable: the store cannot be reached.
        """
        check_channel(channel)
        return self.broker.append(channel, Event(data, event=event))

    def stream(self, *channels: str) -> Response:
        """The streaming response for ``channels``, for a view of the app's own.

        Without a cursor the stream starts with what is published from now
        on. With one (the ``Last-Event-ID`` header a reconnecting
        ``EventSource`` sends, or a ``lastEventId`` query parameter), every
        channel resumes after the client's last event, exactly; a channel
        whose history no longer reaches back that far starts with a ``gap``
        event. A stream of several channels sends, as each event's id, a
        cursor of all of them (:mod:`flask_sse_flush.channels`).

        Call it inside the request. Bad input answers JSON
        ``{"error": ...}``: ``400`` for a bad channel name, more than
        :data:`~flask_sse_flush.channels.MAX_CHANNELS` channels or a
        malformed cursor (a cursor ahead of a channel's log, as after a
        failover that lost its last events, gets a ``gap`` instead);
        ``503`` (with ``Retry-After``) over ``SSE_FLUSH_MAX_STREAMS`` or
        when the store cannot be reached.
        """
        try:
            names = list(dict.fromkeys(check_channel(name) for name in channels))
        except (TypeError, ValueError) as exc:
            return json_error(400, str(exc))
        if not names:
            return json_error(400, "name at least one channel to stream")
        if len(names) > MAX_CHANNELS:
            return json_error(400, f"a stream may follow at most {MAX_CHANNELS} channels")
        cursor = request.headers.get("Last-Event-ID") or request.args.get("lastEventId")
        try:
            given = parse_cursor(cursor) if cursor else {}
        except ValueError as exc:
            return json_error(400, f"bad Last-Event-ID: {exc}")
        if request.method == "HEAD":
            return stream_headers()
        settings = self._settings()
        broker = self.broker
        try:
            positions: dict[str, Position] = {
                name: given[name] if name in given else broker.position(name) for name in names
            }
        except BrokerUnavailable:
            return json_error(
                503, "the event store is unavailable; try again later", **{"Retry-After": "1"}
            )
        opening = format_cursor(positions)
        if lifecycle().stopping:
            # A channel has no end to wait for here: go to another worker
            # (with Redis it resumes exactly; in memory, with a gap).
            return come_back(opening)
        try:
            admit_stream(settings)
        except TooManyStreams as exc:
            return json_error(503, str(exc), **{"Retry-After": str(exc.retry_after)})
        stream = open_stream(settings, opening)
        if len(names) == 1:
            followers: list[tuple[str, Any]] = [(names[0], stream)]
        else:
            followers = list(ChannelMux(stream, positions).followers())
        followed: list[tuple[str, Any]] = []
        try:
            for name, follower in followers:
                broker.follow(name, follower, positions[name])
                followed.append((name, follower))
        except BaseException as exc:
            # No stream will carry these followers: let them go, whatever failed.
            for name, follower in followed:
                broker.unfollow(name, follower)
            if isinstance(exc, BrokerUnavailable):
                return json_error(
                    503, "the event store is unavailable; try again later", **{"Retry-After": "1"}
                )
            raise
        for name, follower in followed:
            stream.on_close(lambda name=name, follower=follower: broker.unfollow(name, follower))
        # A graceful stop ends the stream at once with a retry hint, whatever
        # the broker: a channel stream never ends by itself.
        lifecycle().track(stream, True)
        return stream.response()

    def _settings(self) -> Settings:
        state = app_state(current_app)
        if state.settings is None:
            state.settings = Settings.resolve(current_app.config)
        return state.settings

    def _channels_view(self) -> Response:
        names = request.args.getlist("channel")
        if not names:
            return json_error(400, "name at least one channel: /sse?channel=<name>")
        if len(set(names)) > MAX_CHANNELS:  # before asking authorize about each
            return json_error(400, f"a stream may follow at most {MAX_CHANNELS} channels")
        for name in names:
            try:
                check_channel(name)
            except ValueError as exc:
                return json_error(400, str(exc))
        authorize = self.authorize
        assert authorize is not None
        for name in dict.fromkeys(names):
            if not authorize(name):
                return json_error(403, f"channel {name!r} is not allowed")
        return self.stream(*names)
