"""``create_render_blueprint``: render jobs and their event streams over HTTP.

Validation happens before a single SSE byte is sent: bad input gets a
JSON error and no job starts. Jobs run off the request (a native thread by
default), publish to a broker, and every stream is a subscriber of a job:
attached at the start, after a ``Last-Event-ID``, or to a detached job.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal, NoReturn, TypeAlias, Union

from flask import Blueprint, Flask, Response, current_app, jsonify, request, url_for

from ._concurrency import JOB_SWITCH_INTERVAL, new_lock, start_greenlet, start_native_thread
from .brokers.base import Broker, event_id, parse_event_id
from .brokers.memory import MemoryBroker
from .exceptions import InvalidPayload, PayloadTooLarge
from .headers import setup_sse_headers
from .jobs import RenderFunction, RenderJob
from .stream import EventStream

__all__ = [
    "DisconnectPolicy",
    "Executor",
    "RenderService",
    "Spawn",
    "Validator",
    "create_render_blueprint",
    "parse_payload",
]

log = logging.getLogger(__name__)

#: ``validate(payload) -> payload``: check (and maybe transform) the request's
#: JSON object; raise :class:`ValueError`, :class:`TypeError` or
#: :class:`LookupError` to reject it with a ``400``. Returning ``None``
#: keeps the payload as it was.
Validator = Callable[[dict[str, Any]], "Mapping[str, Any] | None"]
#: ``spawn(job)``: start ``job()`` concurrently and return without waiting.
Spawn = Callable[[Callable[[], None]], object]
#: How jobs run: ``"thread"`` (a native OS thread, even under gevent),
#: ``"greenlet"`` (under gevent; for I/O-bound jobs), or a :data:`Spawn`.
Executor: TypeAlias = Union[Literal["thread", "greenlet"], Spawn]  # noqa: UP007
#: What a client's disconnect does to its job.
DisconnectPolicy: TypeAlias = Literal["continue", "cancel"]

DEFAULT_KEEPALIVE = 15.0
DEFAULT_MAX_PAYLOAD = 64 * 1024
DEFAULT_MAX_JOBS = 32
RETRY_AFTER_SECONDS = 5


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


def _option(value: Any, key: str, default: Any) -> Any:
    """Explicit argument first, then ``SSE_FLUSH_*`` app config, then default."""
    if value is not None:
        return value
    return current_app.config.get(f"SSE_FLUSH_{key}", default)


def _json_error(status: int, message: str, **headers: str) -> Response:
    response = jsonify(error=message)
    response.status_code = status
    response.headers.update(headers)
    return response


def _unknown_job(job_id: str) -> Response:
    return _json_error(404, f"unknown job {job_id[:80]!r} (never started, or purged)")


def _spawner(executor: Executor, switch_interval: float | None) -> Spawn:
    if executor == "thread":
        return lambda job: start_native_thread(job, "flask-sse-flush job", switch_interval)
    if executor == "greenlet":
        return lambda job: start_greenlet(job, name="flask-sse-flush job")
    if callable(executor):
        return executor
    raise ValueError(f"executor must be 'thread', 'greenlet' or a callable, not {executor!r}")


class RenderService:
    """The state behind one render blueprint: its broker and running jobs.

    Found at ``app.extensions["sse_flush"][<blueprint name>]`` once the
    blueprint is registered.
    """

    def __init__(
        self,
        render: RenderFunction,
        broker: Broker,
        spawn: Spawn,
        on_disconnect: DisconnectPolicy,
    ) -> None:
        self.render = render
        self.broker = broker
        self.on_disconnect = on_disconnect
        self._spawn = spawn
        self._lock = new_lock()
        self._running = 0

    @property
    def running(self) -> int:
        """Jobs of this blueprint queued or running in this process."""
        return self._running

    def start(self, payload: dict[str, Any], max_jobs: int | None) -> RenderJob | None:
        """Create and start a job; ``None`` if ``max_jobs`` are already running."""
        with self._lock:
            if max_jobs is not None and self._running >= max_jobs:
                return None
            self._running += 1
        try:
            job = RenderJob(self.render, payload, self.broker)
        except BaseException:
            self._finished()
            raise
        try:
            self._spawn(lambda: self._run(job))
        except BaseException as exc:
            # The job will never run: end it, so nobody waits on it.
            job.abort(f"the job could not be started ({type(exc).__name__})")
            self._finished()
            raise
        log.debug("started render job %s", job.id)
        return job

    def _run(self, job: RenderJob) -> None:
        try:
            job.run()
        finally:
            self._finished()

    def _finished(self) -> None:
        with self._lock:
            self._running -= 1

    def detach(self, job_id: str, stream: EventStream) -> None:
        """A stream has ended: unsubscribe it, and apply the disconnect policy."""
        remaining = self.broker.unsubscribe(job_id, stream)
        if remaining == 0 and self.on_disconnect == "cancel" and self.broker.cancel(job_id):
            log.debug("cancelled job %s: its last client left", job_id)


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
    switch_interval: float | None = JOB_SWITCH_INTERVAL,
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
    ``503`` if the executor refused the job. A ``HEAD`` request is
    validated and answered with the stream's headers, and starts nothing.

    :param render: ``render(payload, progress) -> dict``.
    :param name: the blueprint's name (``url_for`` prefix; the key in
        ``app.extensions["sse_flush"]``).
    :param url_prefix: mount point of the routes.
    :param keepalive: seconds of silence before a keepalive comment; else
        ``SSE_FLUSH_KEEPALIVE``, else 15.
    :param retry: reconnection delay (ms) announced to browsers; else
        ``SSE_FLUSH_RETRY``, else none (the browser's default).
    :param validate: a :data:`Validator` hook.
    :param broker: where job events and status live; a new
        :class:`~flask_sse_flush.brokers.MemoryBroker` by default.
    :param executor: how jobs run: ``"thread"`` (default; a native OS thread
        even under gevent, so CPU-bound or blocking work never stalls the
        worker's other streams), ``"greenlet"`` (I/O-bound jobs under
        gevent), or a callable that starts ``job()`` and returns (outside
        gevent, e.g. ``ThreadPoolExecutor(8).submit``; under gevent such a
        pool's workers are greenlets).
    :param on_disconnect: ``"continue"`` (default: the job runs on, so a
        reconnect can resume it) or ``"cancel"`` (cancel the job when its
        last client leaves).
    :param max_payload: largest payload accepted, in bytes; else
        ``SSE_FLUSH_MAX_PAYLOAD``, else 65536.
    :param max_jobs: most jobs running at once in this process; else
        ``SSE_FLUSH_MAX_JOBS``, else 32.
    :param buffer: events that may wait for a slow client before its
        queued progress events are coalesced to the latest.
    :param switch_interval: with ``executor="thread"`` under gevent, the
        interpreter's GIL switch interval while jobs run (0.5 ms; restored
        when the last job ends). Each socket write of the worker releases
        the GIL and must win it back from a CPU-bound job; at the default
        5 ms, one broadcast to 100 streams waits behind the job 100 times.
        ``None`` leaves the interpreter's setting alone.
    """
    if not callable(render):
        raise TypeError(f"render must be callable, not {type(render).__name__}")
    if on_disconnect not in ("continue", "cancel"):
        raise ValueError(f"on_disconnect must be 'continue' or 'cancel', not {on_disconnect!r}")
    service = RenderService(
        render,
        broker if broker is not None else MemoryBroker(),
        _spawner(executor, switch_interval),
        on_disconnect,
    )
    blueprint = Blueprint(name, __name__, url_prefix=url_prefix)

    @blueprint.record_once
    def register(state: Any) -> None:
        app: Flask = state.app
        app.extensions.setdefault("sse_flush", {})[name] = service

    def read_payload(raw: str | None, source: str) -> dict[str, Any]:
        limit = _option(max_payload, "MAX_PAYLOAD", DEFAULT_MAX_PAYLOAD)
        return parse_payload(raw, validate, max_payload=limit, source=source)

    def start(payload: dict[str, Any]) -> RenderJob | Response:
        limit = _option(max_jobs, "MAX_JOBS", DEFAULT_MAX_JOBS)
        try:
            job = service.start(payload, limit)
        except Exception:
            log.exception("could not start a render job")
            return _json_error(503, "the render job could not be started; try again later")
        if job is None:
            return _json_error(
                429,
                f"too many render jobs running (at most {limit}); try again later",
                **{"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        return job

    def attach(job_id: str, after: int) -> Response:
        status = service.broker.status(job_id)
        if status is None:
            return _unknown_job(job_id)
        if after > status.last_seq:
            return _json_error(400, f"Last-Event-ID is ahead of job {job_id!r}'s events")
        if status.final_seq is not None and after >= status.final_seq:
            # The terminal event was delivered: 204 stops EventSource's retries.
            return Response(status=204)
        stream = EventStream(
            keepalive=_option(keepalive, "KEEPALIVE", DEFAULT_KEEPALIVE),
            retry=_option(retry, "RETRY", None),
            # Even a stream cut before its first event then reconnects with a
            # Last-Event-ID, and resumes this job rather than starting another.
            last_event_id=event_id(job_id, after),
            buffer=buffer,
        )
        stream.on_close(lambda: service.detach(job_id, stream))
        if not service.broker.subscribe(job_id, stream, after):
            return _unknown_job(job_id)
        return stream.response()

    def stream_headers() -> Response:
        return setup_sse_headers(Response(status=200))

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
            return attach(job_id, after)
        if job_param is not None:
            return attach(job_param, 0)
        try:
            payload = read_payload(request.args.get("data"), "query parameter 'data'")
        except InvalidPayload as exc:
            return _json_error(exc.status, str(exc))
        if request.method == "HEAD":
            # Flask answers HEAD with the GET view; a link checker or
            # `curl -I` must not start a render.
            return stream_headers()
        job = start(payload)
        return job if isinstance(job, Response) else attach(job.id, 0)

    @blueprint.post("/render")
    def render_detached() -> Response:
        limit = _option(max_payload, "MAX_PAYLOAD", DEFAULT_MAX_PAYLOAD)
        too_large = _json_error(413, f"payload too large: the body may be at most {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            return too_large
        body = request.stream.read(limit + 1)
        if len(body) > limit:
            return too_large
        try:
            payload = read_payload(body.decode("utf-8"), "the request body")
        except UnicodeDecodeError:
            return _json_error(400, "the request body must be a UTF-8 JSON object")
        except InvalidPayload as exc:
            return _json_error(exc.status, str(exc))
        job = start(payload)
        if isinstance(job, Response):
            return job
        status_url = url_for(".job_status", job_id=job.id)
        response = jsonify(
            id=job.id, stream=url_for(".render_stream", job=job.id), status=status_url
        )
        response.status_code = 202
        response.headers["Location"] = status_url
        return response

    @blueprint.get("/render/<job_id>")
    def job_status(job_id: str) -> Response:
        status = service.broker.status(job_id)
        if status is None:
            return _unknown_job(job_id)
        return jsonify(status.to_json())

    @blueprint.delete("/render/<job_id>")
    def cancel_job(job_id: str) -> Response:
        status = service.broker.status(job_id)
        if status is None:
            return _unknown_job(job_id)
        if not service.broker.cancel(job_id):
            response = jsonify({**status.to_json(), "error": f"job {job_id!r} has already ended"})
            response.status_code = 409
            return response
        response = jsonify((service.broker.status(job_id) or status).to_json())
        response.status_code = 202
        return response

    return blueprint
