"""``create_render_blueprint``: render jobs and their event streams over HTTP.

Validation happens before a single SSE byte is sent: bad input gets a
JSON error and no job starts. Jobs run off the request (a native thread by
default), publish to a broker, and every stream is a subscriber of a job:
attached at the start, after a ``Last-Event-ID``, or to a detached job.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, NoReturn

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    jsonify,
    request,
    url_for,
)
from werkzeug.exceptions import HTTPException

from .brokers.base import Broker, event_id, parse_event_id
from .brokers.memory import MemoryBroker
from .brokers.redis import RedisBroker
from .exceptions import (
    BrokerUnavailable,
    InvalidPayload,
    JobEnded,
    PayloadTooLarge,
    SSEFlushError,
    StreamClosed,
    TooManyJobs,
    TooManyStreams,
)
from .extension import SSEFlushState, app_state
from .extension import json_error as _json_error
from .frames import Coalescing, Event
from .headers import setup_sse_headers
from .jobs import ErrorMessage, RenderFunction
from .jobs import error_message as default_error_message
from .lifecycle import lifecycle
from .metrics import METRICS
from .processes import ProcessRender
from .runtime import install_logging_locks, start_greenlet
from .service import (
    ANYONE,
    RETRY_AFTER_SECONDS,
    Anyone,
    Executor,
    JobService,
    QueuedJob,
    Spawn,
    spawner,
)
from .settings import CONFIG_KEYS, DisconnectPolicy, Settings
from .stream import EventStream

__all__ = [
    "DisconnectPolicy",
    "Executor",
    "Identity",
    "QueuedJob",
    "Spawn",
    "Validator",
    "cors",
    "create_render_blueprint",
    "parse_payload",
]

log = logging.getLogger(__name__)

#: The app config key naming the Redis to use when no ``broker`` is passed.
REDIS_URL_KEY = "SSE_FLUSH_REDIS_URL"

#: ``validate(payload) -> payload``: check (and maybe transform) the request's
#: JSON object; raise :class:`ValueError`, :class:`TypeError` or
#: :class:`LookupError` to reject it with a ``400``. Returning ``None``
#: keeps the payload as it was.
Validator = Callable[[dict[str, Any]], "Mapping[str, Any] | None"]


#: ``identity() -> str | None``: who is calling, inside the request (a user
#: id, a session's account, a token's subject); ``None`` for anonymous.
Identity = Callable[[], "str | None"]


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def parse_payload(
    raw: str | None,
    validate: Validator | None = None,
    *,
    max_payload: int | None = None,
    source: str = "query parameter 'data'",
) -> dict[str, Any]:
    """Turn the ``data`` query parameter (or a request body) into a render payload.

    :param raw: the URL-decoded ``data`` value, or ``None`` if absent.
    :param validate: the app's validation hook, if any.
    :param max_payload: the largest accepted size, in UTF-8 bytes.
    :param source: what ``raw`` is, for error messages.
    :raises InvalidPayload: the payload is missing, not a JSON object, or
        rejected by ``validate``; the message says which.
    :raises PayloadTooLarge: ``raw`` is longer than ``max_payload`` bytes.
    """
    if raw is None or raw == "":
        raise InvalidPayload(f"missing {source}: a JSON object is required")
    if max_payload is not None and len(raw.encode("utf-8", "surrogatepass")) > max_payload:
        raise PayloadTooLarge(f"payload too large: {source} may be at most {max_payload} bytes")
    try:
        payload = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidPayload(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidPayload(f"{source} must be a JSON object, not {type(payload).__name__}")
    if validate is not None:
        try:
            checked = validate(payload)
        except InvalidPayload:
            raise  # already says what is wrong, with its status (413 stays 413)
        except (ValueError, TypeError, LookupError) as exc:
            raise InvalidPayload(str(exc) or f"invalid payload ({type(exc).__name__})") from None
        if checked is not None:
            if not isinstance(checked, Mapping):
                raise TypeError(
                    f"validate must return a mapping or None, not {type(checked).__name__}"
                )
            payload = dict(checked)
    return payload


def _http_error(exc: HTTPException) -> Response:
    return _json_error(exc.code or 500, exc.description or exc.name)


def _error_response(exc: SSEFlushError) -> Response:
    """The JSON answer to an error a view raised on purpose: the status it carries."""
    status = getattr(exc, "status", None)
    if not isinstance(status, int):
        log.error("unexpected %s in a render view: %s", type(exc).__name__, exc)
        return _json_error(503, "the render service failed; try again later")
    message = str(exc)
    if isinstance(exc, BrokerUnavailable):
        log.warning("broker unavailable: %s", exc)
        message = "the event store is unavailable; try again later"  # not its internals
    headers = {}
    if isinstance(exc, (TooManyJobs, TooManyStreams)) and str(request.endpoint).endswith(
        ".render_stream"
    ):
        METRICS.stream_refused()
    if isinstance(exc, TooManyJobs):
        headers["Retry-After"] = str(exc.retry_after)
    elif status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return _json_error(status, message, **headers)


def _owner(who: str | Anyone | None) -> str | None:
    """The owner a new job gets: the caller's identity (none without an ``identity`` hook)."""
    return None if isinstance(who, Anyone) else who


def _default_broker(app: Flask, coalescing: Coalescing | None, settings: Settings) -> Broker:
    """A RedisBroker on ``SSE_FLUSH_REDIS_URL`` when the app sets it, else a MemoryBroker.

    Every blueprint of an app with the same Redis URL and coalescing shares
    one RedisBroker, so a worker holds one set of connections, not one per
    blueprint; an app with :class:`~flask_sse_flush.SSEFlush` shares the
    extension's broker.
    """
    state = app.extensions.get("sse_flush")
    if coalescing is None and isinstance(state, SSEFlushState) and state.broker is not None:
        return state.broker
    options: dict[str, Any] = {"retention": settings.retention, "max_events": settings.max_events}
    if coalescing is not None:
        options["coalesce"] = coalescing
    url = app.config.get(REDIS_URL_KEY)
    if not url:
        return MemoryBroker(**options)
    shared: dict[tuple[str, Coalescing | None], Broker] = app.extensions.setdefault(
        "sse_flush.redis", {}
    )
    key = (str(url), coalescing)
    if key not in shared:
        options.pop("coalesce", None)
        if coalescing is not None:
            options["coalesce"] = coalescing
        shared[key] = RedisBroker(str(url), **options)
    return shared[key]


_CORS_METHODS = "GET, HEAD, POST, DELETE"


def _origins(origins: Collection[str]) -> frozenset[str]:
    if isinstance(origins, str):
        raise TypeError("cors_origins must be a list of origins, not one string")
    allowed = set()
    for origin in origins:
        if not isinstance(origin, str):
            raise TypeError(f"an origin must be a str, not {type(origin).__name__}")
        scheme, sep, rest = origin.partition("://")
        if origin == "*" or not sep or scheme not in ("http", "https") or not rest or "/" in rest:
            raise ValueError(
                f"an origin is 'scheme://host[:port]' (no '*', no path), not {origin!r}"
            )
        allowed.add(origin.lower())
    return frozenset(allowed)


def cors(blueprint: Blueprint, origins: Collection[str], *, credentials: bool = True) -> None:
    """Answer the listed origins' cross-origin requests to ``blueprint``'s routes.

    A request whose ``Origin`` is listed gets ``Access-Control-Allow-Origin``
    (that origin: never ``*``, which browsers refuse with credentials) and,
    with ``credentials``, ``Access-Control-Allow-Credentials: true`` (what
    ``new EventSource(url, {withCredentials: true})`` and ``fetch(...,
    {credentials: "include"})`` need). A preflight (``OPTIONS`` with
    ``Access-Control-Request-Method``) also gets the methods, the headers it
    asked for, and a ``Max-Age`` of 10 minutes. Any other origin gets no
    CORS header, so its browser refuses the response. Every answer varies
    on ``Origin``.

    :raises ValueError: an origin is ``"*"`` or not ``scheme://host[:port]``.
    """
    allowed = _origins(origins)

    @blueprint.after_request
    def allow_origin(response: Response) -> Response:
        response.vary.add("Origin")
        origin = request.headers.get("Origin")
        if origin is None or origin.lower() not in allowed:
            return response
        headers = response.headers
        headers["Access-Control-Allow-Origin"] = origin
        if credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            headers["Access-Control-Allow-Methods"] = _CORS_METHODS
            asked = request.headers.get("Access-Control-Request-Headers")
            if asked:
                headers["Access-Control-Allow-Headers"] = asked[:1024]
            headers["Access-Control-Max-Age"] = "600"
        return response


def _header_bytes(environ: Mapping[str, Any]) -> int:
    return (
        sum(
            len(key) - 5 + len(str(value))
            for key, value in environ.items()
            if key.startswith("HTTP_")
        )
        + len(str(environ.get("CONTENT_TYPE", "")))
        + len(str(environ.get("CONTENT_LENGTH", "")))
    )


DIAGNOSE_COUNT, DIAGNOSE_INTERVAL = 20, 0.1
DIAGNOSE_MAX_COUNT, DIAGNOSE_MAX_SECONDS, DIAGNOSE_MAX_OPEN = 200, 30.0, 4
_diagnosing: list[int] = [0]


def diagnostic_stream(
    count: int, interval: float, keepalive_event: bool = False, *, opt_out: bool = True
) -> Response:
    """``count`` ``diagnose`` events ``interval`` seconds apart, then ``done``.

    Each carries ``{"i", "n", "sent", "t0"}``: the server's wall-clock send
    time and the stream's start, so a client measures each event's delay
    whatever the two clocks say. ``opt_out=False`` leaves out
    ``X-Accel-Buffering: no``: what a proxy does to a stream that does not
    ask it not to buffer.
    """
    if _diagnosing[0] >= DIAGNOSE_MAX_OPEN:
        return _json_error(503, "too many diagnostic streams; try again", **{"Retry-After": "5"})
    stream = EventStream(keepalive=5.0, keepalive_event=keepalive_event)
    _diagnosing[0] += 1
    stream.on_close(lambda: _diagnosing.__setitem__(0, _diagnosing[0] - 1))
    started = time.time()

    def produce() -> None:
        try:
            for i in range(count):
                if i:
                    time.sleep(interval)
                data = {"i": i, "n": count, "sent": time.time(), "t0": started}
                stream.send(Event(data, event="diagnose"))
            stream.send(Event({"n": count}, event="done"))
            stream.close()
        except StreamClosed:
            pass  # the client left

    response = stream.response()
    if not opt_out:
        response.headers.pop("X-Accel-Buffering", None)
    start_greenlet(produce, "flask-sse-flush diagnose")
    return response


def gevent_integration(app: Flask) -> bool:
    """Prepare ``app``'s process for gevent; call it when initialising an app.

    Installs :func:`~flask_sse_flush.runtime.install_logging_locks` (job
    threads that log never hang on a gevent lock) unless the app's config
    sets ``SSE_FLUSH_GEVENT_LOGGING_LOCKS = False``; once per app, however
    many blueprints or extensions call it. The render blueprint calls it when
    it is registered. See :ref:`servers-gevent-logging`.

    :returns: whether the app asked for the logging fix.
    :raises ValueError: the config value is not ``True`` or ``False``.

    .. versionadded:: 0.2.0
    """
    key = CONFIG_KEYS["gevent_logging_locks"]
    wanted = Settings(gevent_logging_locks=app.config.get(key, True)).gevent_logging_locks
    if _GEVENT_INTEGRATION not in app.extensions:
        app.extensions[_GEVENT_INTEGRATION] = wanted
        if wanted:
            install_logging_locks()
    return bool(app.extensions[_GEVENT_INTEGRATION])


_GEVENT_INTEGRATION = "sse_flush.gevent"


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
    default (:class:`~flask_sse_flush.settings.Settings`). Each app the
    blueprint is registered on gets its own
    :class:`~flask_sse_flush.service.JobService` (and, unless ``broker`` is
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
        :mod:`flask_sse_flush.processes`), or a callable that receives a
        :class:`~flask_sse_flush.service.QueuedJob` and starts it (``job()``
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
        use these routes across origins, with cookies: see :func:`cors`.
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
    :raises ValueError: an option is out of range (checked again, with the
        app's config, at registration).
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
    }
    Settings.resolve({}, **explicit)  # bad arguments fail here, not at registration
    coalescing = Coalescing.of(coalesce) if coalesce is not None else None
    blueprint = Blueprint(name, __name__, url_prefix=url_prefix)

    @blueprint.record_once
    def register(state: Any) -> None:
        app: Flask = state.app
        settings = Settings.resolve(app.config, **explicit)
        gevent_integration(app)
        store = broker if broker is not None else _default_broker(app, coalescing, settings)
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

    def service() -> JobService:
        found: JobService = current_app.extensions["sse_flush"][name]
        return found

    blueprint.register_error_handler(SSEFlushError, _error_response)
    # Werkzeug's own errors inside these views (MAX_CONTENT_LENGTH, a
    # client gone mid-body) answer in the same JSON shape, not HTML.
    blueprint.register_error_handler(HTTPException, _http_error)
    if cors_origins is not None:
        cors(blueprint, cors_origins, credentials=cors_credentials)

    @blueprint.before_request
    def check_sizes() -> Response | None:
        settings = service().settings
        if len(request.query_string) > settings.query_limit:
            limit = settings.query_limit
            return _json_error(
                413, f"payload too large: the query string may be at most {limit} bytes"
            )
        if _header_bytes(request.environ) > settings.max_headers:
            return _json_error(
                431, f"request headers too large: at most {settings.max_headers} bytes"
            )
        return None

    def caller() -> str | Anyone | None:
        if identity is None:
            return ANYONE
        who = identity()
        if who is not None and not isinstance(who, str):
            raise TypeError(f"identity() must return a str or None, not {type(who).__name__}")
        return who

    def read_payload(raw: str | None, source: str) -> dict[str, Any]:
        limit = service().settings.max_payload
        return parse_payload(raw, validate, max_payload=limit, source=source)

    def stream_headers() -> Response:
        return setup_sse_headers(Response(status=200))

    def come_back(last_event_id: str | None = None) -> Response:
        """A stream for a stopping worker: a retry hint and the end, no job."""
        stream = EventStream(keepalive=None, retry=lifecycle().hint(), last_event_id=last_event_id)
        stream.close()
        return stream.response()

    def admit_stream(settings: Settings) -> None:
        limit = settings.max_streams or lifecycle().max_streams
        if limit is not None and lifecycle().open_streams >= limit:
            raise TooManyStreams(f"this server holds its most streams ({limit}); try again later")

    def attach(
        job_id: str, after: int, who: str | Anyone | None, *, admitted: bool = False
    ) -> Response:
        jobs = service()
        try:
            if jobs.resume(job_id, after, who) is None:
                # The terminal event was delivered: 204 stops EventSource's retries.
                return Response(status=204)
        except ValueError as exc:
            return _json_error(400, str(exc))
        if request.method == "HEAD":
            # Flask answers HEAD with the GET view, and a server closes a
            # HEAD body unread: a subscription would end at once and, under
            # on_disconnect="cancel", cancel the job. `curl -I` must not.
            return stream_headers()
        settings = jobs.settings
        shared = getattr(jobs.broker, "shared", False)
        if lifecycle().stopping and shared:
            # Any other worker serves this job: go there.
            return come_back(event_id(job_id, after))
        if not admitted:
            admit_stream(settings)
        stream = EventStream(
            keepalive=settings.keepalive,
            keepalive_event=settings.keepalive_event,
            retry=settings.retry,
            # Even a stream cut before its first event then reconnects with a
            # Last-Event-ID, and resumes this job rather than starting another.
            last_event_id=event_id(job_id, after),
            buffer=settings.buffer,
        )
        jobs.attach(job_id, stream, after)
        lifecycle().track(stream, shared)
        return stream.response()

    @blueprint.get("/render/stream")
    def render_stream() -> Response:
        last_id = request.headers.get("Last-Event-ID") or request.args.get("lastEventId")
        job_param = request.args.get("job")
        if last_id:
            try:
                job_id, after = parse_event_id(last_id.strip())
            except ValueError as exc:
                return _json_error(400, f"bad Last-Event-ID: {exc}")
            if job_param is not None and job_param != job_id:
                return _json_error(400, "Last-Event-ID names another job than ?job=")
            return attach(job_id, after, caller())
        if job_param is not None:
            return attach(job_param, 0, caller())
        payload = read_payload(request.args.get("data"), "query parameter 'data'")
        if request.method == "HEAD":
            # A link checker or `curl -I` must not start a render.
            return stream_headers()
        if lifecycle().stopping:
            return come_back()  # the browser starts it again on another worker
        admit_stream(service().settings)
        who = caller()  # once: it decides the owner and is checked on attach
        job = service().start(payload, _owner(who))
        return attach(job.id, 0, who, admitted=True)

    @blueprint.post("/render")
    def render_detached() -> Response:
        if lifecycle().stopping:
            return _json_error(503, "the server is restarting; try again", **{"Retry-After": "1"})
        limit = service().settings.max_payload
        too_large = _json_error(413, f"payload too large: the body may be at most {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            return too_large
        body = request.stream.read(limit + 1)
        if len(body) > limit:
            return too_large
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return _json_error(400, "the request body must be a UTF-8 JSON object")
        job = service().start(read_payload(text, "the request body"), _owner(caller()))
        status_url = url_for(".job_status", job_id=job.id)
        response = jsonify(
            id=job.id, stream=url_for(".render_stream", job=job.id), status=status_url
        )
        response.status_code = 202
        response.headers["Location"] = status_url
        return response

    @blueprint.get("/render/diagnose")
    def diagnose_stream() -> Response:
        if not (current_app.debug if diagnose is None else diagnose):
            return _json_error(404, "not found: the diagnostic route is off (diagnose=True)")
        try:
            count = int(request.args.get("n", DIAGNOSE_COUNT))
            interval = float(request.args.get("interval", DIAGNOSE_INTERVAL))
        except ValueError:
            return _json_error(400, "n must be an integer and interval a number of seconds")
        if not (1 <= count <= DIAGNOSE_MAX_COUNT) or not (0 <= interval <= 1):
            return _json_error(400, f"n must be 1 to {DIAGNOSE_MAX_COUNT}, interval 0 to 1 s")
        if count * interval > DIAGNOSE_MAX_SECONDS:
            return _json_error(400, f"n * interval must be at most {DIAGNOSE_MAX_SECONDS} s")
        if request.method == "HEAD":
            return stream_headers()
        opt_out = request.args.get("accel") != "0"
        return diagnostic_stream(
            count, interval, service().settings.keepalive_event, opt_out=opt_out
        )

    @blueprint.get("/render/<job_id>")
    def job_status(job_id: str) -> Response:
        return jsonify(service().status(job_id, caller()).to_json())

    @blueprint.delete("/render/<job_id>")
    def cancel_job(job_id: str) -> Response:
        jobs = service()
        who = caller()
        try:
            status = jobs.cancel(job_id, who)
        except JobEnded as exc:
            response = jsonify({**jobs.status(job_id, who).to_json(), "error": str(exc)})
            response.status_code = 409
            return response
        response = jsonify(status.to_json())
        response.status_code = 202
        return response

    return blueprint
