"""Exceptions raised by flask-sse-flush, all rooted in :class:`SSEFlushError`."""

from __future__ import annotations

__all__ = [
    "RETRY_AFTER_SECONDS",
    "BrokerUnavailable",
    "Cancelled",
    "InvalidPayload",
    "JobEnded",
    "JobNotStarted",
    "PayloadTooLarge",
    "RenderError",
    "SSEFlushError",
    "StreamClosed",
    "TooManyJobs",
    "UnknownJob",
]


#: The ``Retry-After`` (seconds) of a ``429`` or ``503``.
RETRY_AFTER_SECONDS = 5


class SSEFlushError(Exception):
    """Base class of every error this library raises on purpose.

    Catch it to handle any of them; the subclasses say what went wrong.
    """


class RenderError(SSEFlushError):
    """A render failed with a message meant for its user.

    Raise it (or a subclass) from a render callable: the ``error`` event and
    the job's status carry ``str(exc)`` as it is. Any other exception's
    text stays in the server's log; the client is told only that the
    render failed, and the exception's class (see
    :func:`~flask_sse_flush.jobs.error_message`), so no path, secret or
    ``repr`` of the app's internals reaches a browser.

    .. versionadded:: 0.2
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


class UnknownJob(SSEFlushError, LookupError):
    """No job has that id: it never existed, or its log was purged after its retention.

    The blueprint answers ``404`` with a JSON body.
    """

    status = 404

    def __init__(self, job_id: str) -> None:
        super().__init__(f"unknown job {job_id[:80]!r} (never started, or purged)")
        self.job_id = job_id


class JobEnded(SSEFlushError):
    """The job has ended (``complete``, ``error`` or ``cancelled``): it takes no more events."""

    status = 409


class TooManyJobs(SSEFlushError):
    """``max_jobs`` jobs are running already; try again later.

    The blueprint answers ``429`` with ``Retry-After: <retry_after>``.
    """

    status = 429

    def __init__(self, message: str, retry_after: int = RETRY_AFTER_SECONDS) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @classmethod
    def at_limit(cls, limit: int) -> TooManyJobs:
        """The error for a store that holds ``limit`` running jobs already."""
        return cls(f"too many render jobs running (at most {limit}); try again later")

    @classmethod
    def for_owner(cls, limit: int) -> TooManyJobs:
        """The error for an identity that has ``limit`` running jobs already."""
        return cls(f"you have too many render jobs running (at most {limit}); try again later")


class TooManyStreams(SSEFlushError):
    """This worker holds ``max_streams`` open streams already; try again later.

    The blueprint answers ``503`` with ``Retry-After: 1``: a stream ends
    every moment somewhere, so a client may try again soon.
    """

    status = 503
    #: The ``Retry-After`` of its ``503``, seconds.
    retry_after = 1


class JobNotStarted(SSEFlushError):
    """The executor refused the job (a full pool, a queue that is down); it was ended.

    The blueprint answers ``503`` with ``Retry-After``.
    """

    status = 503


class BrokerUnavailable(SSEFlushError):
    """The broker (the event store) cannot be reached or failed.

    Raise it from a broker for any failure of its store. The blueprint
    answers ``503`` with ``Retry-After`` and a JSON body, never a ``500``.
    """

    status = 503
