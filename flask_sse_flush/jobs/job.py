"""Running a render job and reporting its progress; framework-free.

A job may run in any thread or greenlet, or later in another process: it
only needs a ``publish(event)`` callable. Nothing here imports Flask.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, TypedDict

from ..brokers.base import Broker, JobState, JobStatus, StatusChange, event_id
from ..exceptions import BrokerUnavailable, Cancelled, JobEnded, RenderError, UnknownJob
from ..runtime import home_hub, hub_safe_lock
from ..wire.frames import Event

__all__ = [
    "CompleteData",
    "ErrorData",
    "ErrorMessage",
    "JobState",
    "Progress",
    "ProgressData",
    "RenderFunction",
    "RenderJob",
    "error_message",
    "new_job_id",
    "run_job",
]

log = logging.getLogger(__name__)


class ProgressData(TypedDict):
    """The data of a ``progress`` event."""

    progress: int
    phase: str


class CompleteData(TypedDict):
    """The data of the original service's ``complete`` event."""

    filename: str
    url: str


class ErrorData(TypedDict):
    """The data of an ``error`` event."""

    message: str


#: Event types a job's own lifecycle sends, which :meth:`Progress.event` refuses.
_RESERVED_EVENTS = frozenset({"progress", "complete", "error", "gap", "keepalive"})


class Progress:
    """The ``progress(percent, phase)`` reporter handed to a render callable.

    Repeats of the same ``(percent, phase)`` are dropped, so a render may
    report as often as it likes: only changes reach the client. Once the job
    is cancelled, the next call raises :class:`~flask_sse_flush.Cancelled`.

    :param emit: called with ``(percent, phase)`` for each change.
    :param send: called with ``(event name, data)`` for each :meth:`event`;
        ``None`` where the reporter has no stream of its own.
    """

    def __init__(
        self,
        emit: Callable[[int, str], object],
        send: Callable[[str, Any], object] | None = None,
    ) -> None:
        self._emit = emit
        self._send = send
        self._last: tuple[int, str] | None = None
        self._cancelled = False
        self._on_cancel: list[Callable[[], object]] = []

    @property
    def last(self) -> tuple[int, str] | None:
        """The last ``(percent, phase)`` reported, or ``None``."""
        return self._last

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` has been called."""
        return self._cancelled

    def cancel(self) -> None:
        """Make the next call raise :class:`~flask_sse_flush.Cancelled`."""
        self._cancelled = True
        callbacks, self._on_cancel = self._on_cancel, []
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], object]) -> None:
        """Also call ``callback()`` when the job is cancelled (at once if it was).

        For a render that waits on something else (a child process, a remote
        call) and must pass the cancellation on rather than wait for its
        next report.
        """
        if self._cancelled:
            callback()
        else:
            self._on_cancel.append(callback)

    def event(self, name: str, data: Any) -> None:
        """Send an event of the render's own on its job's stream, between its progress events.

        It is numbered, logged and resumed like every event of the job (a
        log line, a preview's URL, a partial result), from a render in any
        executor (``"process"`` relays it from the child). Names the job's
        own lifecycle uses are refused.

        :param name: the event type; not ``progress``, ``complete``,
            ``error``, ``gap`` or ``keepalive``.
        :param data: a str or anything JSON-serialisable.
        :raises Cancelled: the job was cancelled.
        :raises ValueError: a reserved or invalid name.
        :raises TypeError: ``data`` is not JSON-serialisable.

        .. versionadded:: 1.0
        """
        if self._cancelled:
            raise Cancelled("the job was cancelled")
        if name in _RESERVED_EVENTS:
            raise ValueError(f"{name!r} is an event the job sends itself; choose another name")
        Event(data, event=name)  # a bad name or data fails here, in the render
        if self._send is None:
            raise RuntimeError("this progress reporter has no stream to send events to")
        self._send(name, data)

    def __call__(self, percent: float, phase: str) -> None:
        """Report progress.

        :param percent: 0 to 100; a float is rounded down, so 100 means done.
        :param phase: what the job is doing, e.g. ``"bundling"``.
        :raises Cancelled: the job was cancelled (e.g. its client left).
        :raises ValueError: ``percent`` is not a number from 0 to 100.
        :raises TypeError: ``phase`` is not a string.
        """
        if self._cancelled:
            raise Cancelled("the job was cancelled")
        if isinstance(percent, bool) or not isinstance(percent, (int, float)):
            raise TypeError(f"percent must be a number from 0 to 100, not {percent!r}")
        if not (math.isfinite(percent) and 0 <= percent <= 100):
            raise ValueError(f"percent must be a number from 0 to 100, not {percent!r}")
        if not isinstance(phase, str):
            raise TypeError(f"phase must be a str, not {type(phase).__name__}")
        value = (math.floor(percent), phase)
        if value == self._last:
            return
        self._last = value
        self._emit(*value)


#: ``render(payload, progress) -> dict``: does the work, returns the
#: ``complete`` event's data; an exception becomes an ``error`` event.
RenderFunction = Callable[[dict[str, Any], Progress], Mapping[str, Any]]


def _cancelled_message(exc: Cancelled) -> str:
    reason = str(exc)
    if "cancel" in reason.lower():
        return reason
    return f"the job was cancelled: {reason}" if reason else "the job was cancelled"


#: ``error_message(exc) -> str``: what the ``error`` event and the job's
#: status say when the render raised ``exc``.
ErrorMessage = Callable[[BaseException], str]


def error_message(exc: BaseException) -> str:
    """The default text of the ``error`` event of a render that raised ``exc``.

    A :class:`~flask_sse_flush.RenderError` says what its message says;
    anything else says ``"the render failed (<exception class>)"`` and
    nothing of its message, which may hold paths, queries or secrets (the
    full traceback goes to the server's log).
    """
    if isinstance(exc, RenderError):
        return str(exc) or "the render failed"
    # A failure in a child process names the class it had there.
    name = getattr(exc, "type_name", None) or type(exc).__name__
    return f"the render failed ({name})"


def new_job_id() -> str:
    """A fresh job id: 128 random bits from :mod:`secrets`, as 32 hex digits.

    Job ids are capabilities (whoever knows one can attach to the job), so
    they are unguessable.
    """
    return secrets.token_hex(16)


class RenderJob:
    """One run of a render callable, publishing its events through a broker.

    Events are ``progress`` (:class:`ProgressData`), then exactly one
    ``complete`` (the mapping ``render`` returned) or ``error``
    (:class:`ErrorData`). Each has an id ``"<job id>-<n>"``, ``n`` counting
    from 1, so an id names both the job and the place in it.

    Creating a job registers it with the broker in state ``queued``; the
    broker's :meth:`~flask_sse_flush.brokers.Broker.cancel` reaches
    :meth:`cancel`. :meth:`run` may run in any thread or greenlet.

    :param render: the render callable.
    :param payload: the validated request payload.
    :param broker: where the job's events and status go.
    :param job_id: the job's id; :func:`new_job_id` by default.
    :param limit: refuse to create the job while this many jobs run in the
        broker's store (:class:`~flask_sse_flush.TooManyJobs`).
    :param existing: the job was created already (by a web worker that
        handed it to a queue): run it under its id, numbering its events
        after those already published. See :func:`run_job`.
    :param error_message: what the ``error`` event says for an exception
        of the render (:func:`error_message` by default).
    :param owner: the identity the new job belongs to (see the blueprint's
        ``identity`` option).
    :param owner_limit: refuse to create the job while ``owner`` has this
        many jobs running (:class:`~flask_sse_flush.TooManyJobs`).
    :param send_time: add ``"sent"`` (the time of publishing, ms since the
        epoch) to each event whose data is an object.
    :raises UnknownJob: ``existing`` and the broker has no such job.
    :raises JobEnded: ``existing`` and the job has ended already.
    """

    def __init__(
        self,
        render: RenderFunction,
        payload: dict[str, Any],
        broker: Broker,
        *,
        job_id: str | None = None,
        limit: int | None = None,
        existing: bool = False,
        error_message: ErrorMessage = error_message,
        owner: str | None = None,
        owner_limit: int | None = None,
        send_time: bool = False,
    ) -> None:
        self.id = job_id if job_id is not None else new_job_id()
        self._send_time = send_time
        self._error_message = error_message
        self.payload = payload
        self.broker = broker
        self._render = render
        self._next = 1
        self._ended = False  # the terminal event is published
        # Set by stop(): from then on only stop()'s own error event is published.
        self._stopped = False
        #: The job's state as this object last set it (``"queued"`` until it runs).
        self.state: JobState = "queued"
        # Numbering and publishing happen under one lock, so that reports
        # from several threads still leave in id order. It is held across the
        # publish, which under gevent waits for the hub (a Redis broker's
        # call), and the hub takes it too (a graceful stop's deadline calls
        # stop()): so a lock that waits cooperatively on the hub, never one
        # that blocks the hub's thread while the holder waits for that hub.
        self._lock = hub_safe_lock(home_hub())
        self.progress = Progress(self._on_progress, self._on_event)
        if existing:
            status = broker.status(self.id)
            if status is None:
                raise UnknownJob(self.id)
            if status.ended:
                raise JobEnded(f"job {self.id!r} has already ended")
            self._next = status.last_seq + 1
        else:
            broker.create(self.id, limit=limit, owner=owner, owner_limit=owner_limit)
        broker.on_cancel(self.id, self.cancel)

    def status(self) -> JobStatus:
        """The job's current status, as the broker has it."""
        status = self.broker.status(self.id)
        if status is None:
            raise UnknownJob(self.id)
        return status

    def cancel(self) -> None:
        """Ask the job to stop: its next ``progress()`` call raises."""
        self.progress.cancel()

    def abort(self, message: str) -> None:
        """End a job that will never run (its executor refused it) with an error."""
        self._fail(message)

    def stop(self, message: str, **data: Any) -> bool:
        """End the job now with an ``error`` event, and cancel its render.

        What a graceful stop of the server does to a job that has not
        finished in time: the render's next ``progress()`` raises
        :class:`~flask_sse_flush.Cancelled`, and whatever it does after
        that publishes nothing.

        :param message: the ``error`` event's message.
        :param data: more fields of the ``error`` event.
        :returns: whether the job was still running (``False``: it had ended).
        """
        # Flag first: the render's reports and its own end publish nothing
        # from here on, so the lock is ours once the publish in flight (at
        # most one) returns, and the render cannot end the job "cancelled"
        # before this error is published.
        self._stopped = True
        self.cancel()
        change: StatusChange = {"state": "error", "error": message}
        return self._end("error", {"message": message, **data}, change, stopping=True)

    def _fail(self, message: str, state: JobState = "error") -> None:
        self._end("error", {"message": message}, {"state": state, "error": message})

    def _publish(
        self,
        name: str,
        data: Any,
        change: StatusChange,
        *,
        final: bool = False,
        stopping: bool = False,
    ) -> bool:
        """Number the event and publish it; a number is used only once it is sent.

        :returns: ``False`` when nothing was published because the job has
            ended, or is being stopped and this is not :meth:`stop`'s event.
        """
        with self._lock:
            if self._ended or (self._stopped and not stopping):
                return False
            if final:
                self.state = change.get("state", "error")
            seq = self._next
            if self._send_time and isinstance(data, dict):
                data = {**data, "sent": round(time.time() * 1000, 3)}
            event = Event(data, event=name, id=event_id(self.id, seq))
            self.broker.publish(self.id, seq, event, change=change, final=final)
            self._next = seq + 1
            self._ended = final
            return True

    def _on_event(self, name: str, data: Any) -> None:
        self._publish(name, data, {})

    def _on_progress(self, percent: int, phase: str) -> None:
        data: ProgressData = {"progress": percent, "phase": phase}
        self._publish("progress", data, {"progress": percent, "phase": phase})

    def _end(self, name: str, data: Any, change: StatusChange, *, stopping: bool = False) -> bool:
        """Publish the terminal event; ``False`` if the job had ended (or is being stopped)."""
        try:
            return self._publish(name, data, change, final=True, stopping=stopping)
        except BrokerUnavailable:
            # The store stayed away past its outage timeout: a second publish
            # would only wait that long again. Streams got their own error.
            log.error("job %s ended but its event store is unavailable", self.id)
            return True
        except Exception:
            log.exception("job %s could not publish its %s event", self.id, name)
        # Never leave subscribers waiting on a job that has stopped.
        message = f"the job ended but its {name} event could not be published"
        try:
            self._publish(
                "error",
                {"message": message},
                {"state": "error", "error": message},
                final=True,
                stopping=stopping,
            )
        except Exception:
            log.exception("job %s could not publish its error event either", self.id)
        return True

    def _message(self, exc: BaseException) -> str:
        try:
            message: object = self._error_message(exc)  # an app's hook: check it
            if isinstance(message, str):
                return message
            log.error("error_message returned %r, not a str", message)
        except Exception:
            log.exception("the error_message hook failed for job %s", self.id)
        return error_message(exc)

    def run(self) -> None:
        """Run the render to its end and publish the terminal event.

        Exceptions of the render become its ``error`` event; only a
        :class:`BaseException` that is not an :class:`Exception` (a
        ``gevent.Timeout``, ``SystemExit``) is raised again, after that event.
        """
        try:
            with self._lock:
                if self._ended or self._stopped:
                    return  # stopped before it ran: stop() has published its end
                # Under the lock, so a stop() meanwhile cannot be overwritten
                # by "running" in the store.
                self.broker.update(self.id, {"state": "running"})
                self.state = "running"
            result = self._render(self.payload, self.progress)
            if self.progress.cancelled:
                # The render caught Cancelled and returned: still cancelled.
                raise Cancelled("the job was cancelled")
            if not isinstance(result, Mapping):
                raise TypeError(
                    f"render must return a dict (the complete event's data), "
                    f"not {type(result).__name__}"
                )
            complete = dict(result)
            Event(complete)  # fails here, as a render error, if not JSON-serialisable
        except Cancelled as exc:
            self._fail(_cancelled_message(exc), "cancelled")
        except Exception as exc:
            log.exception("render job %s failed", self.id)
            self._fail(self._message(exc))
        except BaseException as exc:
            # gevent.Timeout, GreenletExit, SystemExit: not errors of the
            # render's own, but its clients must still hear that it ended.
            self._fail(f"the job was stopped ({type(exc).__name__})")
            raise
        else:
            self._end("complete", complete, {"state": "complete", "result": complete})
        finally:
            # Whether or not its terminal event could be stored: this process
            # runs the job no more (a broker with leases stops renewing it).
            release = getattr(self.broker, "release", None)
            if release is not None:
                release(self.id)


def run_job(
    render: RenderFunction,
    job_id: str,
    payload: dict[str, Any],
    broker: Broker,
    *,
    error_message: ErrorMessage = error_message,
) -> JobStatus | None:
    """Run, in this process, a job that a render blueprint created and handed to a queue.

    For job workers (RQ, Celery, a plain process): the blueprint's
    ``executor`` callable enqueues ``(job.id, job.payload)``; the worker
    calls ``run_job(render, job_id, payload, broker)`` with a broker on the
    same store (a :class:`~flask_sse_flush.brokers.RedisBroker`). The
    render's progress, then its ``complete`` or ``error`` event, reach
    every stream on every web worker; a ``DELETE /render/<id>`` sent to any
    of them makes the render's next ``progress()`` raise
    :class:`~flask_sse_flush.Cancelled`.

    :param error_message: what the ``error`` event says for an exception of
        the render (as the blueprint's option).
    :returns: the job's status once it has ended (``None`` if the store has
        purged it already, as a zero ``retention`` does).
    :raises UnknownJob: the store has no such job (never created, or purged).
    :raises JobEnded: the job has ended already (e.g. a retried task).

    .. versionadded:: 0.2
    """
    job = RenderJob(
        render, payload, broker, job_id=job_id, existing=True, error_message=error_message
    )
    job.run()
    return broker.status(job_id)
