"""The response headers that keep every layer from buffering an event stream."""

from __future__ import annotations

from typing import TypeVar

from flask import has_request_context, request
from werkzeug.wrappers import Response as BaseResponse

from .transport import set_tcp_nodelay

__all__ = [
    "EXPOSED_HEADERS",
    "FINAL_HEADER",
    "KEEPALIVE_HEADER",
    "SSE_HEADERS",
    "setup_sse_headers",
]

#: Headers every event stream carries. ``Connection`` is absent on purpose:
#: it is hop-by-hop, which PEP 3333 forbids applications to set (``wsgiref``
#: rejects it, gunicorn drops it); HTTP/1.1 connections persist by default.
SSE_HEADERS: dict[str, str] = {
    "Content-Type": "text/event-stream; charset=utf-8",
    # no-transform: proxies must not recompress or rewrite the body.
    "Cache-Control": "no-cache, no-transform",
    # nginx: pass the body through as it arrives (proxy_buffering off).
    "X-Accel-Buffering": "no",
    # Compressors buffer: gzip holds output until it has enough to compress.
    # Flask-Compress and nginx's gzip skip any response that already has a
    # Content-Encoding, so this keeps both off the stream, whatever their
    # mimetype lists say. Chromium, Firefox and WebKit read it as "none".
    "Content-Encoding": "identity",
}

#: A stream's keepalive period, in seconds (``15``): a client that hears
#: nothing for about twice that may call the connection dead.
KEEPALIVE_HEADER = "SSE-Flush-Keepalive"
#: The event types after which a stream is over (a render job's
#: ``complete, error``): a client need not reconnect after one.
FINAL_HEADER = "SSE-Flush-Final"
#: The response headers a cross-origin page's client reads.
EXPOSED_HEADERS = ("Retry-After", KEEPALIVE_HEADER, FINAL_HEADER)

R = TypeVar("R", bound=BaseResponse)


def setup_sse_headers(response: R) -> R:
    """Make ``response`` an unbuffered event stream and return it.

    Sets the :data:`SSE_HEADERS`, drops any ``Content-Length`` and, inside a
    request, sets ``TCP_NODELAY`` on the client socket
    (:func:`~flask_sse_flush.set_tcp_nodelay`). The Python counterpart of
    ``setupSSEHeaders(res)``.

    :param response: a Flask or Werkzeug response.
    """
    for name, value in SSE_HEADERS.items():
        response.headers[name] = value
    response.headers.pop("Content-Length", None)
    response.headers.pop("Connection", None)
    if has_request_context():
        set_tcp_nodelay(request.environ)
    return response
