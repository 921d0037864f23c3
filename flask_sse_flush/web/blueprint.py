"""``create_render_blueprint``: render jobs and their event streams over HTTP.

Validation happens before a single SSE byte is sent: bad input gets a
JSON error and no job starts. Jobs run off the request (a native thread by
default), publish to a broker, and every stream is a subscriber of a job:
attached at the start, after a ``Last-Event-ID``, or to a detached job.
This module maps the routes to their views (:mod:`~flask_sse_flush.web.views`)
and, when the blueprint is registered, resolves its settings and makes the
app's job service.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from flask import Blueprint, Flask
from werkzeug.exceptions import HTTPException

from ..brokers.base import Broker
from ..exceptions import SSEFlushError
from ..jobs.job import ErrorMessage, RenderFunction
from ..jobs.job import error_message as default_error_message
from ..jobs.processes import ProcessRender
from ..jobs.service import Executor, JobService, QueuedJob, Spawn, spawner
from ..ops.lifecycle import lifecycle
from ..wire.frames import Coalescing
from .client import serve_client
from .cors import cors
from .settings import DisconnectPolicy, Settings
from .state import REDIS_URL_KEY, app_broker, app_state, gevent_integration
from .views import Identity, RenderViews, Validator, parse_payload

__all__ = [
    "REDIS_URL_KEY",
    "DisconnectPolicy",
    "Executor",
    "Identity",
    "QueuedJob",
    "Spawn",
    "Validator",
    "cors",
    "create_render_blueprint",
    "gevent_integration",
    "parse_payload",
]


def create_render_blueprint(
    render: RenderFunction,
    *,
    name: str = "sse_flush",
    url_prefix: str | None = None,
    keepalive: float | None = None,
    retry: int | None = None,
    validate: Validator | None = None,
    broker: Broker | None = None,
    executor: Executor = "thread",
    on_disconnect: DisconnectPolicy = "continue",
    max_payload: int | None = None,
    max_jobs: int | None = None,
    buffer: int | None = 256,
    coalesce: Coalescing | Collection[str] | None = None,
    error_message: ErrorMessage | None = None,
    identity: Identity | None = None,
    max_jobs_per_identity: int | None = None,
    max_streams: int | None = None,
    max_query: int | None = None,
    max_headers: int | None = None,
    cors_origins: Collection[str] | None = None,
    cors_credentials: bool = True,
    keepalive_event: bool | None = None,
    diagnose: bool | None = None,
    max_stream_seconds: float | None = None,
    client: bool = True,
    send_time: bool | None = None,
) -> Blueprint:
    """Return a blueprint that runs render jobs and streams their progress.

    Routes (under ``url_prefix``):

    ``GET /render/stream?data=<url-encoded JSON object>``
        Validate the payload, start ``render(payload, progress)`` and stream
        its ``progress`` events ``{"progress": int, "phase": str}``, then one
        ``complete`` (the dict ``render`` returned) or ``error``
        ``{"message": str}``. Every event has an id ``<job>-<n>``.
    ``GET /render/stream?job=<id>``
        Attach to a running or recent job: its events so far, then live.
    ``Last-Event-ID`` header (or ``lastEventId`` query parameter)
        On either form, resume the job that id names with exactly the events
        after it: ``render`` never runs twice for one logical request. Once
        the terminal event has been delivered: ``204 No Content``, which
        tells ``EventSource`` to stop reconnecting.
    ``POST /render`` with a JSON object body
        Start a detached job: ``202`` with ``{"id", "stream", "status"}``.
    ``GET /render/<id>``
        ``{"id", "state", "progress", "phase", "result", "error"}``.
    ``GET /sse-flush.js``, ``/sse-flush.mjs``, ``/sse-flush.d.ts``
        The :doc:`browser client </client>` (unless ``client=False``, or
        the app serves those paths already).
    ``DELETE /render/<id>``
        Cancel cooperatively: the job's next ``progress()`` raises
        :class:`~flask_sse_flush.Cancelled`; its stream ends with an
        ``error`` event saying so. ``202``, or ``409`` if it had ended.

    Errors are JSON ``{"error": "..."}``: ``400`` bad input or a garbage
    ``Last-Event-ID``, ``404`` unknown (or purged) job, ``413`` payload over
    ``max_payload``, ``429`` (with ``Retry-After``) over ``max_jobs``,
    ``503`` (with ``Retry-After``) if the executor refused the job or the
    broker is unavailable. A ``HEAD`` request is validated and answered with
    the stream's headers; it never starts, subscribes to or cancels a job.

    Settings are resolved once, when the blueprint is registered on an app:
    an explicit argument, else the app's ``SSE_FLUSH_*`` config, else the
    default (:class:`~flask_sse_flush.web.settings.Settings`). Each app the
    blueprint is registered on gets its own
    :class:`~flask_sse_flush.jobs.service.JobService` (and, unless ``broker`` is
    given, its own :class:`~flask_sse_flush.brokers.MemoryBroker`).

    :param render: ``render(payload, progress) -> dict``.
    :param name: the blueprint's name (``url_for`` prefix; the key in
        ``app.extensions["sse_flush"]``).
    :param url_prefix: mount point of the routes.
    :param keepalive: seconds of silence before a keepalive comment; else
        ``SSE_FLUSH_KEEPALIVE``, else 15.
    :param retry: reconnection delay (ms) announced to browsers; else
        ``SSE_FLUSH_RETRY``, else none (the browser's default).
    :param validate: a :data:`Validator` hook.
    :param broker: where job events and status live; else a
        :class:`~flask_sse_flush.brokers.RedisBroker` on the app's
        ``SSE_FLUSH_REDIS_URL`` if it sets one, else a new
        :class:`~flask_sse_flush.brokers.MemoryBroker` (one process only).
    :param executor: how jobs run: ``"thread"`` (default; a native OS thread
        even under gevent, so CPU-bound or blocking work never stalls the
        worker's other streams), ``"greenlet"`` (I/O-bound jobs under
        gevent), ``"process"`` (each job's ``render`` in a child process of
        its own, so a CPU-bound render never shares the worker's GIL;
        ``render`` must be a module-level function; see
        :mod:`flask_sse_flush.jobs.processes`), or a callable that receives a
        :class:`~flask_sse_flush.jobs.service.QueuedJob` and starts it (``job()``
        runs it; ``job.id`` and ``job.payload`` are what a queue needs) and
        returns (outside gevent, e.g. ``ThreadPoolExecutor(8).submit``; under
        gevent such a pool's workers are greenlets).
    :param on_disconnect: ``"continue"`` (default: the job runs on, so a
        reconnect can resume it) or ``"cancel"`` (cancel the job when its
        last client leaves).
    :param max_payload: largest payload accepted, in bytes; else
        ``SSE_FLUSH_MAX_PAYLOAD``, else 65536.
    :param max_jobs: most jobs running at once in the broker's store (this
        process with the memory broker; every worker with Redis); else
        ``SSE_FLUSH_MAX_JOBS``, else 32.
    :param buffer: events that may wait for a slow client before its
        queued progress events are coalesced to the latest.
    :param coalesce: which event types are levels (only the newest
        matters), for the broker the blueprint makes; progress by default.
        A broker passed in declares its own (``MemoryBroker(coalesce=...)``):
        passing both is an error, so the two can never disagree.
    :param error_message: ``error_message(exc) -> str``, what the ``error``
        event and the job's status say when ``render`` raised ``exc``. By
        default (:func:`~flask_sse_flush.jobs.error_message`) a
        :class:`~flask_sse_flush.RenderError`'s own message, otherwise only
        "the render failed (<class>)": an exception's text may hold paths
        or secrets, and goes to the server's log instead.
    :param identity: ``identity() -> str | None``, called inside each
        request: the caller's identity, or ``None`` for an anonymous one.
        A job belongs to the identity that started it, stored with the job
        (so it holds across workers with Redis); every route that names a
        job (``?job=``, ``Last-Event-ID`` or ``lastEventId``, ``GET`` and
        ``DELETE /render/<id>``) answers any other identity with the same
        ``404`` as an unknown job. Without it, any caller who knows a job's
        id (128 random bits) may use it.
    :param max_jobs_per_identity: the most jobs one identity may have
        running at once (in the whole store: across workers with Redis); a
        start over it gets ``429`` with ``Retry-After``. Else
        ``SSE_FLUSH_MAX_JOBS_PER_IDENTITY``, else no limit. Anonymous
        callers (``identity()`` returning ``None``) share only ``max_jobs``.
    :param max_streams: the most streams open at once in one worker
        process; one more gets ``503`` with ``Retry-After``. Else
        ``SSE_FLUSH_MAX_STREAMS``, else, under gunicorn,
        ``worker_connections`` less 5 % (room for the requests that are not
        streams), else no limit.
    :param max_query: the longest query string accepted, in bytes (``413``
        beyond); else ``SSE_FLUSH_MAX_QUERY``, else room for a ``data``
        payload of ``max_payload`` bytes, URL-encoded.
    :param max_headers: the most bytes of request headers accepted (``431``
        beyond); else ``SSE_FLUSH_MAX_HEADERS``, else 32 KiB.
    :param cors_origins: origins (``"https://app.example"``) whose pages may
        use these routes across origins, with cookies: see :func:`~flask_sse_flush.web.cors.cors`.
        ``None`` (the default) sends no CORS headers at all.
    :param cors_credentials: whether listed origins may send credentials
        (``Access-Control-Allow-Credentials: true``).
    :param keepalive_event: send keepalives as an ``event: keepalive``
        instead of a comment, for proxies and CDNs that ignore comment lines
        and cut a stream after their idle timeout.
    :param diagnose: serve ``GET /render/diagnose?n=&interval=``: ``n``
        events (at most 200, default 20) ``interval`` seconds apart (0 to 1,
        default 0.1; at most 30 s in all), each carrying the server's send
        time, then ``event: done``; what ``flask-sse-doctor`` measures true
        per-event delay with (``accel=0`` leaves out ``X-Accel-Buffering``,
        to see whether a proxy buffers streams that do not opt out). At
        most 4 run at once per worker (``503`` beyond). ``None`` (the
        default): on only when ``app.debug``.
    :param max_stream_seconds: rotate streams: one open that long ends
        after an event with a jittered ``retry:`` hint, and the browser
        resumes exactly; for proxies and platforms that cut long responses
        (:ref:`deploy-rotate`). ``None`` (the default): the app's
        ``SSE_FLUSH_MAX_STREAM_SECONDS``, else never.
    :param send_time: stamp each event whose data is an object with
        ``"sent"``, the server's time of sending it (ms since the epoch), for
        pages that show each event's delay; else ``SSE_FLUSH_SEND_TIME``,
        else off.
    :param client: serve the browser client, ``SSEFlushSource``, beside
        the routes (:doc:`/client`).
    :raises ValueError: an option is out of range (checked again, with the
        app's config, at registration).

    .. versionchanged:: 1.0
       ``max_stream_seconds``, ``send_time``; ``client`` (the routes of ``SSEFlushSource``).
    """
    if not callable(render):
        raise TypeError(f"render must be callable, not {type(render).__name__}")
    if broker is not None and coalesce is not None:
        raise ValueError(
            "coalesce is declared by the broker: pass it to the broker "
            "(e.g. MemoryBroker(coalesce=...)), not to create_render_blueprint"
        )
    spawn = spawner(executor)
    if executor == "process":
        render = ProcessRender(render)  # TypeError now if the child could not import it
    explicit: dict[str, Any] = {
        "keepalive": keepalive,
        "retry": retry,
        "max_payload": max_payload,
        "max_jobs": max_jobs,
        "buffer": buffer,
        "on_disconnect": on_disconnect,
        "max_jobs_per_identity": max_jobs_per_identity,
        "max_streams": max_streams,
        "max_query": max_query,
        "max_headers": max_headers,
        "keepalive_event": keepalive_event,
        "max_stream_seconds": max_stream_seconds,
        "send_time": send_time,
    }
    Settings.resolve({}, **explicit)  # bad arguments fail here, not at registration
    coalescing = Coalescing.of(coalesce) if coalesce is not None else None
    views = RenderViews(name, validate=validate, identity=identity, diagnose=diagnose)
    blueprint = Blueprint(name, __name__, url_prefix=url_prefix)

    def register(state: Any) -> None:
        app: Flask = state.app
        settings = Settings.resolve(app.config, **explicit)
        gevent_integration(app)
        store = broker if broker is not None else app_broker(app, settings, coalescing)
        jobs = JobService(
            render,
            store,
            spawn,
            settings,
            error_message=error_message or default_error_message,
            context=app.app_context,
        )
        app_state(app)[name] = jobs
        lifecycle().add_service(jobs)
        if client:
            serve_client(app, state.url_prefix)

    blueprint.record_once(register)
    blueprint.register_error_handler(SSEFlushError, views.error)
    # Werkzeug's own errors inside these views (MAX_CONTENT_LENGTH, a
    # client gone mid-body) answer in the same JSON shape, not HTML.
    blueprint.register_error_handler(HTTPException, views.http_error)
    if cors_origins is not None:
        cors(blueprint, cors_origins, credentials=cors_credentials)
    blueprint.before_request(views.check_sizes)
    blueprint.add_url_rule("/render/stream", view_func=views.render_stream, methods=["GET"])
    blueprint.add_url_rule("/render", view_func=views.render_detached, methods=["POST"])
    blueprint.add_url_rule("/render/diagnose", view_func=views.diagnose_stream, methods=["GET"])
    blueprint.add_url_rule("/render/<job_id>", view_func=views.job_status, methods=["GET"])
    blueprint.add_url_rule("/render/<job_id>", view_func=views.cancel_job, methods=["DELETE"])
    return blueprint
