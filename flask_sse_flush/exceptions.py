"""Exceptions raised by flask-sse-flush, all rooted in :class:`SSEFlushError`."""

from __future__ import annotations

__all__ = ["Cancelled", "InvalidPayload", "PayloadTooLarge", "SSEFlushError", "StreamClosed"]


class SSEFlushError(Exception):
    """Base class of every error this library raises on purpose.

    Catch it to handle any of them; the subclasses say what went wrong.
    """


class StreamClosed(SSEFlushError):
    """An event was sent on an :class:`~flask_sse_flush.EventStream` that has ended.

    The stream ends when :meth:`~flask_sse_flush.EventStream.close` is
    called or when its client disconnects. A job that sees this can stop:
    nobody is listening any more.
    """


class Cancelled(SSEFlushError):
    """The job was cancelled; raised by the next ``progress()`` call.

    A render callable may catch it to clean up, then should return or
    re-raise. The stream ends with an ``error`` event saying the job was
    cancelled.
    """


class InvalidPayload(SSEFlushError, ValueError):
    """The request's payload was rejected.

    Raise it (or any :class:`ValueError`) from a ``validate`` hook; the
    blueprint answers ``400`` with ``{"error": str(exc)}`` and starts no job.
    """

    #: The HTTP status the blueprint answers with.
    status = 400


class PayloadTooLarge(InvalidPayload):
    """The request's payload is larger than the configured ``max_payload``."""

    status = 413
