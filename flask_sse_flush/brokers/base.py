"""The ``Broker`` protocol: what every event store behind the streams promises.

A broker keeps each job's event log and status, replays a log after a
given event id, fans new events out to subscribers, and carries
cancellation to wherever the job runs. The in-memory broker serves one
process; the Redis broker (:class:`~flask_sse_flush.brokers.RedisBroker`)
serves many workers and hosts with the same promises, checked by the same
test suite.

A broker hands its subscribers *frames*: the encoded bytes of each event
and its coalescing level (:class:`~flask_sse_flush.wire.frames.Coalescing`),
which is what a remote store can hand over without rebuilding events.

Event ids are ``"<job id>-<n>"``: ``n`` counts the job's events from 1, so
an id names the job *and* the place in it. That is what lets a reconnecting
``EventSource`` (which sends back only ``Last-Event-ID``) resume the very
job it was watching.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypedDict

from ..channels import Position
from ..exceptions import StreamClosed
from ..wire.frames import Event

__all__ = [
    "GAP_EVENT",
    "TERMINAL_STATES",
    "Broker",
    "JobState",
    "JobStatus",
    "StatusChange",
    "Subscriber",
    "event_id",
    "gap_event",
    "parse_event_id",
]

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "complete", "error", "cancelled"]
TERMINAL_STATES: frozenset[str] = frozenset({"complete", "error", "cancelled"})

_JOB_ID = re.compile(r"[A-Za-z0-9_.:]{1,128}")
_MAX_SEQ = 2**63 - 1


def event_id(job_id: str, seq: int) -> str:
    """The id of a job's ``seq``-th event."""
    return f"{job_id}-{seq}"


def parse_event_id(text: str) -> tuple[str, int]:
    """Split an event id (e.g. a ``Last-Event-ID``) into job id and number.

    :raises ValueError: ``text`` is not an id this library produced.
    """
    job_id, dash, seq = text.rpartition("-")
    if (
        not dash
        or not _JOB_ID.fullmatch(job_id)
        or not (seq.isascii() and seq.isdigit())
        or len(seq) > 19
        or not 0 <= int(seq) <= _MAX_SEQ
    ):
        raise ValueError(f"not an event id of this server: {text[:80]!r}")
    return job_id, int(seq)


def valid_job_id(job_id: str) -> bool:
    """Whether ``job_id`` can name a job (and so appear in event ids)."""
    return bool(_JOB_ID.fullmatch(job_id))


class StatusChange(TypedDict, total=False):
    """Fields of a :class:`JobStatus` to change together with a publish."""

    state: JobState
    progress: int
    phase: str
    result: dict[str, Any]
    error: str


@dataclass(frozen=True)
class JobStatus:
    """A snapshot of one job, as ``GET /render/<id>`` reports it."""

    id: str
    state: JobState = "queued"
    progress: int | None = None
    phase: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    #: The number of the last event published (0 before the first).
    last_seq: int = 0
    #: The number of the terminal event, once the job has ended.
    final_seq: int | None = None
    #: The identity that created the job (``None``: an anonymous caller, or
    #: no ``identity`` hook). Never shown in :meth:`to_json`.
    owner: str | None = None
    #: Events up to this number may be missing from the log: dropped past
    #: the log's bound, or lost by the store. A replay after an older id
    #: starts with a :func:`gap_event`.
    lost_through: int = 0
    #: The missing events are those after this number (and up to
    #: :attr:`lost_through`): a hole in the middle of the log, where a
    #: failover lost writes; 0 when any event up to ``lost_through`` may be
    #: missing. Never shown in :meth:`to_json`.
    #:
    #: .. versionadded:: 1.0
    lost_after: int = 0

    @property
    def ended(self) -> bool:
        """Whether the job reached ``complete``, ``error`` or ``cancelled``."""
        return self.state in TERMINAL_STATES

    def changed(self, change: StatusChange | None, **fields: Any) -> JobStatus:
        """Return a copy with ``change`` and ``fields`` applied.

        :raises TypeError: a name that is not a field.
        """
        # What dataclasses.replace does, without its per-call introspection:
        # every published event changes a job's status.
        updates = {**(change or {}), **fields}
        unknown = updates.keys() - _STATUS_FIELDS
        if unknown:
            raise TypeError(f"JobStatus has no field {sorted(unknown)[0]!r}")
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.__dict__.update(updates)
        return copy

    def to_json(self) -> dict[str, Any]:
        """The public JSON shape: id, state, progress, phase, result, error."""
        return {
            "id": self.id,
            "state": self.state,
            "progress": self.progress,
            "phase": self.phase,
            "result": self.result,
            "error": self.error,
        }


#: The event type of the frame a replay starts with when the log can no
#: longer replay exactly after the client's ``Last-Event-ID``.
GAP_EVENT = "gap"


_STATUS_FIELDS = frozenset(field.name for field in dataclasses.fields(JobStatus))


def gap_event(status: JobStatus, after: int) -> Event:
    """The ``gap`` event: events after ``after`` were lost; here is the job now.

    Sent first when a stream resumes after event ``after`` but the log has
    lost events up to :attr:`JobStatus.lost_through` (the log's bound
    dropped them, or the store lost its data). It has no ``id``, so the
    browser's ``lastEventId`` is not moved by it; its data says which events
    are missing and carries the job's current status, so a client can
    redraw instead of silently showing a hole::

        {"after": "<job>-<after>", "lostThrough": "<job>-<n>", "job": {status}}
    """
    return Event(
        {
            "after": event_id(status.id, after),
            "lostThrough": event_id(status.id, status.lost_through),
            "job": status.to_json(),
        },
        event=GAP_EVENT,
    )


class Subscriber(Protocol):
    """Where a broker delivers a job's events: an :class:`~flask_sse_flush.EventStream`.

    ``deliver`` takes one complete encoded frame and its coalescing level
    (``None`` for an event that is never dropped). It must not block; it
    raises :class:`~flask_sse_flush.StreamClosed` once the subscriber has
    gone, and the broker then forgets it. ``close`` ends the subscriber
    after the frames already delivered.
    """

    def deliver(self, frame: bytes, level: str | None) -> None: ...

    def close(self) -> None: ...


class Broker(Protocol):
    """The event log, status and fan-out of every job.

    Errors: an unknown job raises :class:`~flask_sse_flush.UnknownJob`, a
    publish to an ended job :class:`~flask_sse_flush.JobEnded`, and a store
    that cannot be reached :class:`~flask_sse_flush.BrokerUnavailable`.
    The publishes of one job come one at a time, in ``seq`` order (a
    :class:`~flask_sse_flush.jobs.RenderJob` numbers and publishes under its own
    lock); a broker may deliver them to subscribers outside its own locks.
    """

    #: Whether the store is shared by other processes (Redis): a stream may
    #: then resume its job on any worker, so a stopping worker sends its
    #: streams elsewhere. ``False`` for a store that lives in this process.
    shared: bool = False

    def create(
        self,
        job_id: str,
        *,
        limit: int | None = None,
        owner: str | None = None,
        owner_limit: int | None = None,
    ) -> JobStatus:
        """Start a job's log in state ``queued``.

        :param owner: the identity the job belongs to, kept with it.
        :param limit: refuse the job if this many jobs that have not ended
            are in the store already (``max_jobs``; counted across every
            process the store serves).
        :param owner_limit: refuse the job if ``owner`` (not ``None``) has
            this many jobs that have not ended (``max_jobs_per_identity``).
        :raises ValueError: the id is taken or cannot name a job.
        :raises TooManyJobs: ``limit`` jobs are running already, or
            ``owner_limit`` jobs of ``owner``.
        """
        ...

    def publish(
        self,
        job_id: str,
        seq: int,
        event: Event,
        *,
        change: StatusChange | None = None,
        final: bool = False,
    ) -> None:
        """Append event number ``seq`` to the log and send it to every subscriber.

        ``change`` is applied to the status in the same step. ``final``
        marks the job's last event: subscribers are closed after it and the
        log is kept for the retention period, then purged.

        :raises UnknownJob: no such job.
        :raises JobEnded: the job's final event was published already.
        """
        ...

    def update(self, job_id: str, change: StatusChange) -> JobStatus:
        """Change a job's status without an event.

        :raises UnknownJob: no such job.
        """
        ...

    def status(self, job_id: str) -> JobStatus | None:
        """A job's status, or ``None`` if it is unknown or purged."""
        ...

    def subscribe(self, job_id: str, subscriber: Subscriber, after: int = 0) -> bool:
        """Send the logged events numbered above ``after``, then every new one.

        Replay and attachment are one step: no event is missed or sent
        twice. A job that has ended closes the subscriber after its replay.
        When the log has lost events after ``after`` (see
        :attr:`JobStatus.lost_through`), the replay starts with a
        :func:`gap_event`. Returns ``False`` for an unknown job.
        """
        ...

    def unsubscribe(self, job_id: str, subscriber: Subscriber) -> int:
        """Detach ``subscriber``; return how many subscribers the job has left."""
        ...

    def subscribers(self, job_id: str) -> int:
        """How many subscribers a job has now (0 for an unknown job)."""
        ...

    def cancel(self, job_id: str) -> bool:
        """Ask the job to stop; ``False`` if it is unknown or has ended."""
        ...

    def on_cancel(self, job_id: str, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` when the job is cancelled (at once if it was).

        :raises UnknownJob: no such job.
        """
        ...

    def forget(self, job_id: str, callback: Callable[[], Any]) -> None:
        """This process hands the job on: drop ``callback`` and what it keeps for the job here.

        What a web worker calls once an executor callable has queued a job
        for a job worker: ``callback`` (given to :meth:`on_cancel`) will not
        be called, and the job's events and status stay in the store as they
        are. So what a process keeps per job stays bounded by the jobs that
        run or are watched in it. Quick and without I/O; a no-op for a job
        it does not know.

        .. versionadded:: 0.2
        """
        ...

    # Channels: named logs anyone may append to (see :mod:`flask_sse_flush.channels`).

    def append(self, channel: str, event: Event) -> str:
        """Number ``event`` as ``channel``'s next, log it, send it to every follower.

        The broker numbers the event (publishers need not agree on numbers),
        gives it its id ``<channel>-<epoch>.<n>``, keeps at most
        ``max_events`` of the channel's events for ``retention`` seconds
        after its last publish, and delivers each event to every follower
        once and in order.

        :returns: the event's id.
        :raises ValueError: a bad channel name, or an event with an id or retry.

        .. versionadded:: 1.0
        """
        ...

    def position(self, channel: str) -> Position:
        """Where ``channel``'s log is now (its epoch and last number); starts it if need be.

        .. versionadded:: 1.0
        """
        ...

    def follow(self, channel: str, subscriber: Subscriber, after: Position) -> None:
        """Replay ``channel``'s events after ``after``, then send every new one.

        A replay that cannot be exact (events dropped, a log started again,
        a place ahead of the log after the store went back in time) starts
        with a ``gap`` event (:func:`~flask_sse_flush.channels.channel_gap_event`)
        and goes on from what the log has.

        .. versionadded:: 1.0
        """
        ...

    def unfollow(self, channel: str, subscriber: Subscriber) -> None:
        """Stop sending ``channel``'s events to ``subscriber``.

        .. versionadded:: 1.0
        """
        ...


def fan_out(
    job_id: str, subscribers: Iterable[Subscriber], frame: bytes, level: str | None
) -> list[Subscriber]:
    """Deliver one frame to each subscriber; return those that have gone.

    One broken subscriber must not cost the others the event: a subscriber
    that raises is logged and counted as gone, like one whose client left.
    """
    gone = []
    for subscriber in subscribers:
        try:
            subscriber.deliver(frame, level)
        except StreamClosed:
            gone.append(subscriber)
        except Exception:
            log.exception("subscriber %r of job %s failed; dropping it", subscriber, job_id)
            gone.append(subscriber)
    return gone


def close_subscriber(subscriber: Subscriber) -> None:
    """Close ``subscriber``, logging (not raising) what its ``close`` raises."""
    try:
        subscriber.close()
    except Exception:
        log.exception("closing subscriber %r failed", subscriber)
