"""The answers every view of the library gives: JSON errors, and streams opened or refused.

One place, so the channel streams of the extension and the render routes
admit, refuse and send clients elsewhere alike.
"""

from __future__ import annotations

from flask import Response, jsonify

from ..exceptions import TooManyStreams
from ..ops.lifecycle import lifecycle
from ..wsgi.headers import setup_sse_headers
from ..wsgi.stream import EventStream
from .settings import Settings

__all__ = ["admit_stream", "come_back", "json_error", "open_stream", "stream_headers"]


def json_error(status: int, message: str, **headers: str) -> Response:
    """The JSON answer ``{"error": message}`` every route of the library refuses with."""
    response = jsonify(error=message)
    response.status_code = status
    response.headers.update(headers)
    return response


def stream_headers() -> Response:
    """An event stream's headers and no body: the answer to ``HEAD``."""
    return setup_sse_headers(Response(status=200))


def come_back(last_event_id: str | None = None) -> Response:
    """A stream for a stopping worker: a retry hint and the end.

    The browser reconnects (with ``last_event_id``, if given) and reaches
    another worker.
    """
    stream = EventStream(keepalive=None, retry=lifecycle().hint(), last_event_id=last_event_id)
    stream.close()
    return stream.response()


def admit_stream(settings: Settings) -> None:
    """Refuse one more stream over ``max_streams`` (this worker's, or the server's cap).

    :raises TooManyStreams: the worker holds its most streams (a ``503``).
    """
    limit = settings.max_streams or lifecycle().max_streams
    if limit is not None and lifecycle().open_streams >= limit:
        raise TooManyStreams(f"this server holds its most streams ({limit}); try again later")


def open_stream(settings: Settings, last_event_id: str | None) -> EventStream:
    """A new stream with the app's keepalive, retry and buffer settings."""
    return EventStream(
        keepalive=settings.keepalive,
        keepalive_event=settings.keepalive_event,
        retry=settings.retry,
        last_event_id=last_event_id,
        buffer=settings.buffer,
        max_seconds=settings.max_stream_seconds,
    )
