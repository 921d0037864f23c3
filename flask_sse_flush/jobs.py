"""Running a render job and reporting its progress; framework-free.

A job may run in any thread or greenlet, or later in another process: it
only needs a ``publish(event)`` callable. Nothing here imports Flask.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypedDict

from ._concurrency import new_lock
from .exceptions import Cancelled, StreamClosed
from .frames import Event

__all__ = [
    "CompleteData",
    "ErrorData",
    "JobState",
    "Progress",
    "ProgressData",
    "RenderFunction",
    "RenderJob",
]

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "complete", "error", "cancelled"]


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


class Progress:
    """The ``progress(percent, phase)`` reporter handed to a render callable.

    Repeats of the same ``(percent, phase)`` are dropped, so a render may
    report as often as it likes: only changes reach the client. Once the job
    is cancelled, the next call raises :class:`~flask_sse_flush.Cancelled`.

    :param emit: called with ``(percent, phase)`` for each change.
    """

    def __init__(self, emit: Callable[[int, str], object]) -> None:
        self._emit = emit
        self._last: tuple[int, str] | None = None
        self._cancelled = False

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


def error_message(exc: BaseException) -> str:
    """The text of an ``error`` event for ``exc``, as ``error.message`` was."""
    return str(exc) or type(exc).__name__


class RenderJob:
    """One run of a render callable, publishing its events in order.

    Events are ``progress`` (:class:`ProgressData`), then exactly one
    ``complete`` (the mapping ``render`` returned) or ``error``
    (:class:`ErrorData`). Each has an id ``"<job id>-<n>"``, ``n`` counting
    from 1, so an id names both the job and the place in it.

    :param render: the render callable.
    :param payload: the validated request payload.
    :param publish: receives each :class:`~flask_sse_flush.Event`. If it
        raises :class:`~flask_sse_flush.StreamClosed`, nobody is listening:
        the job is cancelled.
    :param job_id: the job's id; a random hex string by default.
    """

    def __init__(
        self,
        render: RenderFunction,
        payload: dict[str, Any],
        publish: Callable[[Event], object],
        *,
        job_id: str | None = None,
    ) -> None:
        self.id = job_id if job_id is not None else uuid.uuid4().hex
        self.payload = payload
        self.state: JobState = "queued"
        self.result: dict[str, Any] | None = None
        self.error: str | None = None
        self._render = render
        self._publish = publish
        self._next = 1
        # Numbering and publishing happen under one lock, so that reports
        # from several threads still leave in id order.
        self._lock = new_lock()
        self.progress = Progress(self._on_progress)

    def cancel(self) -> None:
        """Ask the job to stop: its next ``progress()`` call raises."""
        self.progress.cancel()

    def _publish_next(self, name: str, data: Any) -> None:
        """Number the event and publish it; a number is used only once it is sent."""
        with self._lock:
            event = Event(data, event=name, id=f"{self.id}-{self._next}")
            self._next += 1
            self._publish(event)

    def _on_progress(self, percent: int, phase: str) -> None:
        data: ProgressData = {"progress": percent, "phase": phase}
        try:
            self._publish_next("progress", data)
        except StreamClosed:
            self.cancel()
            raise Cancelled("the client went away") from None

    def _finish(self, name: str, data: Any) -> None:
        try:
            self._publish_next(name, data)
        except StreamClosed:
            log.debug("job %s ended (%s) after its client left", self.id, self.state)
        except Exception:
            log.exception("job %s could not publish its %s event", self.id, name)

    def _fail(self, message: str) -> None:
        self.error = message
        self._finish("error", {"message": message})

    def run(self) -> None:
        """Run the render to its end and publish the terminal event; never raises."""
        self.state = "running"
        try:
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
            self.state = "cancelled"
            self._fail(f"cancelled: {error_message(exc)}")
        except Exception as exc:
            log.exception("render job %s failed", self.id)
            self.state = "error"
            self._fail(error_message(exc))
        else:
            self.state = "complete"
            self.result = complete
            self._finish("complete", complete)
