"""``create_render_blueprint``: the ``/render/stream`` endpoint.

Validation happens before a single SSE byte is sent: bad input gets a
``400`` with a JSON body and no job starts. Only then is the job started
beside the stream, whose events flow as the job reports them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from flask import Blueprint, Response, current_app, jsonify, request

from ._concurrency import start_beside
from .exceptions import InvalidPayload, PayloadTooLarge
from .jobs import RenderFunction, RenderJob
from .stream import EventStream

__all__ = ["Spawn", "Validator", "create_render_blueprint", "parse_payload"]

log = logging.getLogger(__name__)

#: ``validate(payload) -> payload``: check (and maybe transform) the request's
#: JSON object; raise :class:`ValueError`, :class:`TypeError` or
#: :class:`LookupError` to reject it with a ``400``. Returning ``None``
#: keeps the payload as it was.
Validator = Callable[[dict[str, Any]], "Mapping[str, Any] | None"]
#: ``spawn(job)``: start ``job()`` concurrently and return without waiting.
Spawn = Callable[[Callable[[], None]], object]

DEFAULT_KEEPALIVE = 15.0
DEFAULT_MAX_PAYLOAD = 64 * 1024


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def parse_payload(
    raw: str | None, validate: Validator | None = None, *, max_payload: int | None = None
) -> dict[str, Any]:
    """Turn the ``data`` query parameter into a render payload.

    :param raw: the URL-decoded ``data`` value, or ``None`` if absent.
    :param validate: the app's validation hook, if any.
    :param max_payload: the largest accepted size, in UTF-8 bytes.
    :raises InvalidPayload: the payload is missing, not a JSON object, or
        rejected by ``validate``; the message says which.
    :raises PayloadTooLarge: ``raw`` is longer than ``max_payload`` bytes.
    """
    if raw is None or raw == "":
        raise InvalidPayload("missing query parameter 'data': a URL-encoded JSON object")
    if max_payload is not None and len(raw.encode("utf-8", "surrogatepass")) > max_payload:
        raise PayloadTooLarge(f"payload too large: 'data' may be at most {max_payload} bytes")
    try:
        payload = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidPayload(f"'data' is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidPayload(f"'data' must be a JSON object, not {type(payload).__name__}")
    if validate is not None:
        try:
            checked = validate(payload)
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


def _json_error(status: int, message: str) -> tuple[Response, int]:
    return jsonify(error=message), status


def create_render_blueprint(
    render: RenderFunction,
    *,
    name: str = "sse_flush",
    url_prefix: str | None = None,
    keepalive: float | None = None,
    retry: int | None = None,
    validate: Validator | None = None,
    spawn: Spawn | None = None,
    max_payload: int | None = None,
) -> Blueprint:
    """Return a blueprint that streams a render job's progress over SSE.

    ``GET /render/stream?data=<url-encoded JSON object>`` validates the
    payload, starts ``render(payload, progress)`` beside the stream and
    streams ``progress`` events ``{"progress": int, "phase": str}``, then one
    ``complete`` event (the dict ``render`` returned) or one ``error`` event
    ``{"message": str}``. Every event has an id. Bad input gets
    ``400``/``413`` with ``{"error": "..."}`` and starts nothing.

    If the client disconnects, the job is cancelled: its next ``progress()``
    call raises :class:`~flask_sse_flush.Cancelled`.

    :param render: ``render(payload, progress) -> dict``.
    :param name: the blueprint's name (``url_for`` prefix).
    :param url_prefix: mount point; the route is ``<url_prefix>/render/stream``.
    :param keepalive: seconds of silence before a keepalive comment; else
        ``SSE_FLUSH_KEEPALIVE``, else 15.
    :param retry: reconnection delay (ms) announced to browsers; else
        ``SSE_FLUSH_RETRY``, else none (the browser's default).
    :param validate: a :data:`Validator` hook.
    :param spawn: how a job is started beside its stream, e.g.
        ``ThreadPoolExecutor(8).submit``; by default a greenlet under
        gevent, a daemon thread otherwise.
    :param max_payload: largest ``data`` accepted, in bytes; else
        ``SSE_FLUSH_MAX_PAYLOAD``, else 65536. Larger gets ``413``.
    """
    if not callable(render):
        raise TypeError(f"render must be callable, not {type(render).__name__}")
    start: Spawn = spawn if spawn is not None else _start_job

    blueprint = Blueprint(name, __name__, url_prefix=url_prefix)

    @blueprint.get("/render/stream")
    def render_stream() -> Any:
        limit = _option(max_payload, "MAX_PAYLOAD", DEFAULT_MAX_PAYLOAD)
        try:
            payload = parse_payload(request.args.get("data"), validate, max_payload=limit)
        except InvalidPayload as exc:
            return _json_error(exc.status, str(exc))

        stream = EventStream(
            keepalive=_option(keepalive, "KEEPALIVE", DEFAULT_KEEPALIVE),
            retry=_option(retry, "RETRY", None),
        )
        job = RenderJob(render, payload, stream.send)
        stream.on_close(job.cancel)
        response = stream.response()

        def run() -> None:
            try:
                job.run()
            finally:
                stream.close()

        start(run)
        log.debug("started render job %s", job.id)
        return response

    return blueprint


def _start_job(job: Callable[[], None]) -> None:
    start_beside(job, name="flask-sse-flush render")
