"""The render routes' views: what each request to ``/render...`` is answered with.

:class:`RenderViews` holds what a blueprint was made with (the hooks, the
name of its service) and answers its routes;
:func:`~flask_sse_flush.create_render_blueprint` maps the routes to its
methods. The work itself is the job service's
(:class:`~flask_sse_flush.jobs.service.JobService`): the views parse,
check and translate, and every refusal is JSON.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from flask import Response, current_app, jsonify, request, url_for
from werkzeug.exceptions import HTTPException

from ..brokers.base import event_id, parse_event_id
from ..exceptions import (
    BrokerUnavailable,
    InvalidPayload,
    JobEnded,
    PayloadTooLarge,
    SSEFlushError,
    TooManyJobs,
    TooManyStreams,
)
from ..jobs.service import ANYONE, RETRY_AFTER_SECONDS, Anyone, JobService
from ..ops.lifecycle import lifecycle
from ..ops.metrics import METRICS
from ..wsgi.headers import FINAL_HEADER
from .diagnose import diagnose_view
from .responses import admit_stream, come_back, json_error, open_stream, stream_headers

__all__ = ["Identity", "RenderViews", "Validator", "parse_payload"]

log = logging.getLogger(__name__)

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


def _owner(who: str | Anyone | None) -> str | None:
    """The owner a new job gets: the caller's identity (none without an ``identity`` hook)."""
    return None if isinstance(who, Anyone) else who


class RenderViews:
    """The views of one render blueprint, for every app it is registered on.

    :param name: the blueprint's name: its service is
        ``app.extensions["sse_flush"][name]`` in the current app.
    :param validate: the app's :data:`Validator`, if any.
    :param identity: the app's :data:`Identity` hook, if any.
    :param diagnose: whether ``/render/diagnose`` answers (``None``: in debug only).
    """

    def __init__(
        self,
        name: str,
        *,
        validate: Validator | None = None,
        identity: Identity | None = None,
        diagnose: bool | None = None,
    ) -> None:
        self.name = name
        self.validate = validate
        self.identity = identity
        self.diagnose = diagnose

    # -- what every view needs ----------------------------------------------------

    def service(self) -> JobService:
        """The current app's job service of this blueprint."""
        found: JobService = current_app.extensions["sse_flush"][self.name]
        return found

    def caller(self) -> str | Anyone | None:
        """Who is calling: the ``identity`` hook's answer, or anyone without one."""
        if self.identity is None:
            return ANYONE
        who = self.identity()
        if who is not None and not isinstance(who, str):
            raise TypeError(f"identity() must return a str or None, not {type(who).__name__}")
        return who

    def read_payload(self, raw: str | None, source: str) -> dict[str, Any]:
        limit = self.service().settings.max_payload
        return parse_payload(raw, self.validate, max_payload=limit, source=source)

    def attach(
        self, job_id: str, after: int, who: str | Anyone | None, *, admitted: bool = False
    ) -> Response:
        """The stream of job ``job_id`` after its event ``after`` (or why there is none)."""
        jobs = self.service()
        try:
            if jobs.resume(job_id, after, who) is None:
                # The terminal event was delivered: 204 stops EventSource's retries.
                return Response(status=204)
        except ValueError as exc:
            return json_error(400, str(exc))
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
        # Even a stream cut before its first event then reconnects with a
        # Last-Event-ID, and resumes this job rather than starting another.
        stream = open_stream(settings, event_id(job_id, after))
        jobs.attach(job_id, stream, after)
        lifecycle().track(stream, shared)
        response = stream.response()
        # A job's stream is over after these: a client need not come back.
        response.headers[FINAL_HEADER] = "complete, error"
        return response

    # -- hooks ---------------------------------------------------------------------

    def check_sizes(self) -> Response | None:
        """Before any view: refuse an oversized query string (413) or headers (431)."""
        settings = self.service().settings
        if len(request.query_string) > settings.query_limit:
            limit = settings.query_limit
            return json_error(
                413, f"payload too large: the query string may be at most {limit} bytes"
            )
        if _header_bytes(request.environ) > settings.max_headers:
            return json_error(
                431, f"request headers too large: at most {settings.max_headers} bytes"
            )
        return None

    @staticmethod
    def http_error(exc: HTTPException) -> Response:
        """Werkzeug's own errors (a body too large, a client gone) in the same JSON shape."""
        return json_error(exc.code or 500, exc.description or exc.name)

    @staticmethod
    def error(exc: SSEFlushError) -> Response:
        """The JSON answer to an error a view raised on purpose: the status it carries."""
        status = getattr(exc, "status", None)
        if not isinstance(status, int):
            log.error("unexpected %s in a render view: %s", type(exc).__name__, exc)
            return json_error(503, "the render service failed; try again later")
        message = str(exc)
        if isinstance(exc, BrokerUnavailable):
            log.warning("broker unavailable: %s", exc)
            message = "the event store is unavailable; try again later"  # not its internals
        headers = {}
        if isinstance(exc, (TooManyJobs, TooManyStreams)) and str(request.endpoint).endswith(
            ".render_stream"
        ):
            METRICS.stream_refused()
        if isinstance(exc, (TooManyJobs, TooManyStreams)):
            headers["Retry-After"] = str(exc.retry_after)
        elif status == 503:
            headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return json_error(status, message, **headers)

    # -- the routes ------------------------------------------------------------------

    def render_stream(self) -> Response:
        """``GET /render/stream``: start a job and stream it, or resume one."""
        last_id = request.headers.get("Last-Event-ID") or request.args.get("lastEventId")
        job_param = request.args.get("job")
        if last_id:
            try:
                job_id, after = parse_event_id(last_id.strip())
            except ValueError as exc:
                return json_error(400, f"bad Last-Event-ID: {exc}")
            if job_param is not None and job_param != job_id:
                return json_error(400, "Last-Event-ID names another job than ?job=")
            return self.attach(job_id, after, self.caller())
        if job_param is not None:
            return self.attach(job_param, 0, self.caller())
        payload = self.read_payload(request.args.get("data"), "query parameter 'data'")
        if request.method == "HEAD":
            # A link checker or `curl -I` must not start a render.
            return stream_headers()
        if lifecycle().stopping:
            return come_back()  # the browser starts it again on another worker
        admit_stream(self.service().settings)
        who = self.caller()  # once: it decides the owner and is checked on attach
        job = self.service().start(payload, _owner(who))
        return self.attach(job.id, 0, who, admitted=True)

    def render_detached(self) -> Response:
        """``POST /render``: start a detached job; ``202`` with where to follow it."""
        if lifecycle().stopping:
            return json_error(503, "the server is restarting; try again", **{"Retry-After": "1"})
        limit = self.service().settings.max_payload
        too_large = json_error(413, f"payload too large: the body may be at most {limit} bytes")
        if request.content_length is not None and request.content_length > limit:
            return too_large
        body = request.stream.read(limit + 1)
        if len(body) > limit:
            return too_large
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return json_error(400, "the request body must be a UTF-8 JSON object")
        payload = self.read_payload(text, "the request body")
        job = self.service().start(payload, _owner(self.caller()))
        status_url = url_for(".job_status", job_id=job.id)
        response = jsonify(
            id=job.id, stream=url_for(".render_stream", job=job.id), status=status_url
        )
        response.status_code = 202
        response.headers["Location"] = status_url
        return response

    def diagnose_stream(self) -> Response:
        """``GET /render/diagnose``: timed events for the doctor, when the route is on."""
        if not (current_app.debug if self.diagnose is None else self.diagnose):
            return json_error(404, "not found: the diagnostic route is off (diagnose=True)")
        return diagnose_view(self.service().settings.keepalive_event)

    def job_status(self, job_id: str) -> Response:
        """``GET /render/<id>``: the job's status."""
        return jsonify(self.service().status(job_id, self.caller()).to_json())

    def cancel_job(self, job_id: str) -> Response:
        """``DELETE /render/<id>``: cancel the job; ``202``, or ``409`` if it had ended."""
        jobs = self.service()
        who = self.caller()
        try:
            status = jobs.cancel(job_id, who)
        except JobEnded as exc:
            response = jsonify({**jobs.status(job_id, who).to_json(), "error": str(exc)})
            response.status_code = 409
            return response
        response = jsonify(status.to_json())
        response.status_code = 202
        return response
