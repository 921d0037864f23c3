"""Reading event streams in tests.

With Flask's test client, ask for an unbuffered response so events can be
read while the job is still running::

    response = client.get("/render/stream?data=%7B%7D", buffered=False)
    for event in iter_events(response):
        ...

These read what a browser would: they parse with the WHATWG rules
(:class:`~flask_sse_flush.frames.EventDecoder`).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from typing import Any

from werkzeug.wrappers import Response as BaseResponse

from .frames import Event, decode_events

__all__ = ["iter_chunks", "iter_events", "parse_events"]

#: What :func:`iter_events` and :func:`parse_events` read: a Werkzeug or
#: Flask (test) response, an object with ``iter_bytes()`` (httpx), raw
#: ``bytes``/``str``, or any iterable of ``bytes`` chunks.
StreamSource = BaseResponse | bytes | str | Iterable[bytes] | Any


def iter_chunks(source: StreamSource) -> Iterator[bytes]:
    """Yield the body of ``source`` chunk by chunk, as the server yields them."""
    if isinstance(source, str):
        yield source.encode("utf-8")
    elif isinstance(source, (bytes, bytearray, memoryview)):
        yield bytes(source)
    elif isinstance(source, BaseResponse):
        yield from source.iter_encoded()
    elif callable(getattr(source, "iter_bytes", None)):
        client_response: Any = source  # httpx.Response and look-alikes
        yield from client_response.iter_bytes()
    else:
        for chunk in source:
            yield chunk.encode("utf-8") if isinstance(chunk, str) else bytes(chunk)


def iter_events(source: StreamSource) -> Generator[Event, None, None]:
    """Yield each :class:`~flask_sse_flush.Event` of ``source`` as it completes.

    Reads incrementally: with ``client.get(..., buffered=False)`` the first
    event is yielded while the server is still producing the rest. Closing
    the iterator early (``break``) closes the response, which ends the
    server side's stream just as a client disconnect would.

    Each event's ``id`` is the ``id`` field of its own block (``None`` if it
    had none). Comments (keepalives) are skipped.
    """
    try:
        yield from decode_events(iter_chunks(source))
    finally:
        close = getattr(source, "close", None)
        if callable(close):
            close()


def parse_events(source: StreamSource) -> list[Event]:
    """Read ``source`` to its end and return all its events."""
    return list(iter_events(source))
