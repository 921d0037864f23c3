"""The embedded broker: every job's log and subscribers in this process."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from ..channels import Position, channel_event_id, check_channel, new_epoch, replay_channel
from ..exceptions import JobEnded, StreamClosed, TooManyJobs, UnknownJob
from ..runtime import new_lock
from ..wire.frames import PROGRESS_COALESCING, Coalescing, Event, split_at_id
from .base import (
    JobStatus,
    StatusChange,
    Subscriber,
    close_subscriber,
    fan_out,
    gap_event,
    valid_job_id,
)

__all__ = ["MemoryBroker"]

log = logging.getLogger(__name__)

#: One logged event: its number, its frame and its coalescing level.
_Entry = tuple[int, bytes, "str | None"]


@dataclass(eq=False, kw_only=True)
class _Live:
    """Who gets a log's live events: a job's streams, or a channel's followers.

    Insertion-ordered, O(1) to leave; a fan-out iterates a snapshot taken
    under the log's lock, rebuilt only after the membership changed. Call
    every method with that lock held.
    """

    subscribers: dict[Subscriber, None] = field(default_factory=dict)
    snapshot: tuple[Subscriber, ...] | None = ()

    def members(self) -> tuple[Subscriber, ...]:
        """The subscribers now."""
        if self.snapshot is None:
            self.snapshot = tuple(self.subscribers)
        return self.snapshot

    def join(self, subscriber: Subscriber) -> None:
        """Add a subscriber."""
        self.subscribers[subscriber] = None
        self.snapshot = None

    def leave(self, subscriber: Subscriber) -> None:
        """Remove a subscriber if it is one."""
        if self.subscribers.pop(subscriber, False) is None:
            self.snapshot = None


@dataclass(eq=False, kw_only=True)
class _Job(_Live):
    """One job's status, log and streams, guarded by ``lock``."""

    status: JobStatus
    lock: Any
    # By number while the job runs (so the bound can drop any entry in O(1));
    # a tuple once it has ended (a retained job takes no more events).
    events: collections.OrderedDict[int, _Entry] | tuple[_Entry, ...] = field(
        default_factory=collections.OrderedDict
    )
    # The bound's bookkeeping, made by the first level: each level's newest
    # entry, and the entries newer ones of their level replaced, which the
    # log drops the next time it passes its bound.
    newest: dict[str, int] | None = None
    stale: list[int] | None = None
    on_cancel: list[Callable[[], Any]] = field(default_factory=list)
    cancelled: bool = False
    ended_at: float | None = None
    # The last event published and the last the log dropped, not yet in
    # ``status``: a publish that changes nothing else only notes them, and
    # the status copy is made when someone reads it (a read comes with a
    # request; a publish with every event).
    unapplied: int | None = None
    unapplied_lost: int = 0

    def current(self) -> JobStatus:
        """The status with every publish in it; call with the lock held."""
        if self.unapplied is not None:
            fields = {"last_seq": self.unapplied}
            if self.unapplied_lost:
                fields["lost_through"] = self.unapplied_lost
            self.status = self.status.changed(None, **fields)
            self.unapplied, self.unapplied_lost = None, 0
        return self.status


@dataclass(eq=False, kw_only=True)
class _Channel(_Live):
    """One channel's log and followers (its subscribers), guarded by ``lock``."""

    epoch: str
    lock: Any
    log: collections.deque[tuple[int, bytes, str | None, float]]
    last: int = 0
    touched: float = 0.0
    # Events logged and still to be sent, each with the followers it goes to
    # (those at its append: a later follower replayed it from the log). One
    # publisher at a time sends them, in order, outside the lock, so events
    # published at once from several threads reach every follower in order
    # and no publisher (a greenlet on the hub) waits behind another's fan-out.
    pending: collections.deque[tuple[bytes, str | None, tuple[Subscriber, ...]]] = field(
        default_factory=collections.deque
    )
    sending: bool = False
    #: Purged: whoever still holds it must look the channel up again.
    dead: bool = False

    def expire(self, before: float) -> None:
        """Drop the events published before ``before``; call with the lock held."""
        log = self.log
        while log and log[0][3] < before:
            log.popleft()


class MemoryBroker:
    """Keeps each job's events in memory and fans them out to its streams.

    Serves the jobs and streams of one process (one gunicorn worker). Use
    one broker per app; the blueprint makes one if you pass none.

    A job's lock guards its log and its list of subscribers, and is held
    only for a few statements: a publish appends and takes a snapshot of
    the subscribers under it, then delivers to them *outside* it, so a hub
    greenlet that subscribes, leaves or cancels never waits behind a
    native-thread job's fan-out to thousands of streams. Replay-then-live
    stays exact: a new subscriber's replay and its registration are one
    step under the lock, so each event reaches it once, either from the
    log or from a fan-out whose snapshot came after it.

    :param retention: seconds a job's log is kept after the job ends, so
        late reconnects can still replay it; then it is purged.
    :param max_events: the most events kept per job. Past it, the log
        keeps only the newest event of each level (``coalesce``) and every
        other event, so a job that reports 100,000 times does not hold
        100,000 events.
    :param coalesce: which event types are levels
        (:class:`~flask_sse_flush.wire.frames.Coalescing`, or the types
        themselves); progress by default. Streams receive each frame with
        its level, so they coalesce by this same policy.
    :param clock: the time source, in seconds (tests may pass their own).
    """

    #: The store lives in this process: its streams cannot resume elsewhere.
    shared = False

    def __init__(
        self,
        *,
        retention: float = 600.0,
        max_events: int = 1000,
        coalesce: Coalescing | Collection[str] = PROGRESS_COALESCING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if retention < 0:
            raise ValueError(f"retention must be >= 0 seconds, not {retention!r}")
        if max_events < 2:
            raise ValueError(f"max_events must be at least 2, not {max_events!r}")
        self.retention = retention
        self.max_events = max_events
        self.coalescing = Coalescing.of(coalesce)
        self._clock = clock
        self._jobs: dict[str, _Job] = {}
        self._lock = new_lock()
        self._next_purge = 0.0
        self._active = 0  # jobs created and not ended
        self._owned: dict[str, int] = {}  # the same, per owner (never zero)
        self._channels: dict[str, _Channel] = {}

    def __len__(self) -> int:
        """How many jobs (running, or ended and retained) the broker holds."""
        return len(self._jobs)

    def _purge(self) -> None:
        now = self._clock()
        if now < self._next_purge:
            return
        self._next_purge = now + min(1.0, self.retention)
        with self._lock:
            expired = [
                job_id
                for job_id, job in self._jobs.items()
                if job.ended_at is not None and now - job.ended_at >= self.retention
            ]
            for job_id in expired:
                del self._jobs[job_id]
            for name, channel in list(self._channels.items()):
                if channel.subscribers or now - channel.touched < self.retention:
                    continue
                with channel.lock:  # nobody follows or sends it in between
                    if channel.subscribers or channel.sending:
                        continue
                    channel.dead = True
                del self._channels[name]
        if expired:
            log.debug("purged %d ended jobs", len(expired))

    def _job(self, job_id: str) -> _Job | None:
        self._purge()
        job = self._jobs.get(job_id)
        if (
            job is not None
            and job.ended_at is not None
            and self._clock() - job.ended_at >= self.retention
        ):
            return None
        return job

    def create(
        self,
        job_id: str,
        *,
        limit: int | None = None,
        owner: str | None = None,
        owner_limit: int | None = None,
    ) -> JobStatus:
        if not valid_job_id(job_id):
            raise ValueError(f"a job id is 1 to 128 letters, digits or '_.:', not {job_id[:80]!r}")
        self._purge()
        status = JobStatus(id=job_id, owner=owner)
        with self._lock:
            if job_id in self._jobs:
                raise ValueError(f"job {job_id!r} exists already")
            if limit is not None and self._active >= limit:
                raise TooManyJobs.at_limit(limit)
            if owner is not None:
                owned = self._owned.get(owner, 0)
                if owner_limit is not None and owned >= owner_limit:
                    raise TooManyJobs.for_owner(owner_limit)
                self._owned[owner] = owned + 1
            self._jobs[job_id] = _Job(status=status, lock=new_lock())
            self._active += 1
        return status

    def _require(self, job_id: str) -> _Job:
        job = self._job(job_id)
        if job is None:
            raise UnknownJob(job_id)
        return job

    def publish(
        self,
        job_id: str,
        seq: int,
        event: Event,
        *,
        change: StatusChange | None = None,
        final: bool = False,
    ) -> None:
        job = self._require(job_id)
        frame, level = event.frame, self.coalescing.level(event.event)
        with job.lock:
            if job.ended_at is not None:
                raise JobEnded(f"job {job_id!r} has ended; it takes no more events")
            assert isinstance(job.events, collections.OrderedDict)  # not ended: checked above
            job.events[seq] = (seq, frame, level)
            if level is not None:
                if job.newest is None or job.stale is None:
                    job.newest, job.stale = {}, []
                replaced = job.newest.get(level)
                if replaced is not None:
                    job.stale.append(replaced)
                job.newest[level] = seq
            lost = self._compact(job) if len(job.events) > self.max_events else 0
            if change is None and not final:
                job.unapplied = seq  # the common case: no status copy per event
                if lost:
                    job.unapplied_lost = lost
            else:
                self._change(job, seq, change, lost, final)
            members = job.members()
            if final:
                # No one joins an ended job's fan-out: a late subscriber
                # replays the log and is closed at once.
                job.subscribers = {}
                job.snapshot = ()
                job.on_cancel = []
                job.events = tuple(job.events.values())
                job.newest = job.stale = None
        # Outside the lock: 10,000 deliveries must not hold up the hub.
        gone: list[Subscriber] = []
        try:
            gone = fan_out(job_id, members, frame, level)
        finally:
            if final:
                for subscriber in members:
                    close_subscriber(subscriber)
        if gone and not final:
            with job.lock:
                for subscriber in gone:
                    job.leave(subscriber)

    def _change(
        self, job: _Job, seq: int, change: StatusChange | None, lost: int, final: bool
    ) -> None:
        """Fold event ``seq``, ``change`` and what the log ``lost`` into the status; lock held."""
        extra: dict[str, Any] = {"last_seq": seq}
        lost = lost or job.unapplied_lost
        if lost:
            extra["lost_through"] = lost
        if final:
            extra["final_seq"] = seq
            job.ended_at = self._clock()
            with self._lock:
                self._active -= 1
                owner = job.status.owner
                if owner is not None and owner in self._owned:
                    self._owned[owner] -= 1
                    if not self._owned[owner]:
                        del self._owned[owner]
        job.unapplied, job.unapplied_lost = None, 0  # this copy has them
        job.status = job.status.changed(change, **extra)

    def _compact(self, job: _Job) -> int:
        """Trim ``job``'s log; the last seq it dropped from the front (0: none)."""
        # Keep the newest event of each level and every other event: drop
        # the entries replaced since the last time, each once, so a publish
        # costs O(1) amortised however long the log is.
        assert isinstance(job.events, collections.OrderedDict)
        events = job.events
        if job.stale:
            for seq in job.stale:
                del events[seq]
            job.stale.clear()
        # Events that cannot be coalesced still may not grow without bound;
        # a replay from before the oldest one dropped starts with a gap event.
        lost = 0
        while len(events) > self.max_events:
            lost, (_, _, level) = events.popitem(last=False)
            if level is not None and job.newest is not None and job.newest.get(level) == lost:
                del job.newest[level]
        return lost

    def update(self, job_id: str, change: StatusChange) -> JobStatus:
        job = self._require(job_id)
        with job.lock:
            job.status = job.current().changed(change)
            return job.status

    def status(self, job_id: str) -> JobStatus | None:
        job = self._job(job_id)
        if job is None:
            return None
        if job.unapplied is None:
            return job.status
        with job.lock:
            return job.current()

    def subscribe(self, job_id: str, subscriber: Subscriber, after: int = 0) -> bool:
        job = self._job(job_id)
        if job is None:
            return False
        with job.lock:
            # Replay and registration in one step (a log holds at most
            # max_events frames, so this stays short).
            try:
                status = job.current()
                if after < status.lost_through:
                    subscriber.deliver(gap_event(status, after).frame, None)
                logged = job.events
                entries = logged.values() if isinstance(logged, dict) else logged
                for seq, frame, level in entries:
                    if seq > after:
                        subscriber.deliver(frame, level)
            except StreamClosed:
                return True
            if job.ended_at is None:
                job.join(subscriber)
                return True
        close_subscriber(subscriber)
        return True

    def unsubscribe(self, job_id: str, subscriber: Subscriber) -> int:
        job = self._jobs.get(job_id)
        if job is None:
            return 0
        with job.lock:
            job.leave(subscriber)
            return len(job.subscribers)

    def subscribers(self, job_id: str) -> int:
        """How many subscribers a job has now (0 for an unknown job)."""
        job = self._jobs.get(job_id)
        return 0 if job is None else len(job.subscribers)

    def cancel(self, job_id: str) -> bool:
        job = self._job(job_id)
        if job is None:
            return False
        with job.lock:
            if job.ended_at is not None:
                return False
            if job.cancelled:
                return True  # asked before: the callbacks have run
            job.cancelled = True
            callbacks = list(job.on_cancel)
        for callback in callbacks:
            callback()
        return True

    def forget(self, job_id: str, callback: Callable[[], Any]) -> None:
        job = self._jobs.get(job_id)
        if job is None:
            return
        with job.lock:
            if callback in job.on_cancel:
                job.on_cancel.remove(callback)

    def on_cancel(self, job_id: str, callback: Callable[[], Any]) -> None:
        job = self._require(job_id)
        with job.lock:
            if not job.cancelled:
                job.on_cancel.append(callback)
                return
        callback()

    # -- channels --------------------------------------------------------------

    def _channel(self, name: str) -> _Channel:
        """The channel (made if need be), its retention renewed; lock it and check ``dead``."""
        check_channel(name)
        self._purge()
        with self._lock:
            channel = self._channels.get(name)
            if channel is None:
                channel = self._channels[name] = _Channel(
                    epoch=new_epoch(),
                    lock=new_lock(),
                    log=collections.deque(maxlen=self.max_events),
                )
            channel.touched = self._clock()
        return channel

    def append(self, channel: str, event: Event) -> str:
        """Number ``event`` as ``channel``'s next, log it and send it to every follower.

        :returns: the event's id (:func:`~flask_sse_flush.channels.channel_event_id`).
        :raises ValueError: ``channel`` is not a valid name, or ``event``
            carries an id or retry field of its own.

        .. versionadded:: 1.0
        """
        head, tail = split_at_id(event)
        level = self.coalescing.level(event.event)
        while True:
            ch = self._channel(channel)
            with ch.lock:
                if ch.dead:
                    continue  # purged just now: a new log
                now = self._clock()
                seq = ch.last = ch.last + 1
                event_id = channel_event_id(channel, Position(ch.epoch, seq))
                frame = b"%sid: %s\n%s" % (head, event_id.encode(), tail)
                ch.log.append((seq, frame, level, now))
                ch.touched = now
                ch.pending.append((frame, level, ch.members()))
                if ch.sending:
                    return event_id  # the publisher sending now sends it too, in order
                ch.sending = True
            break
        self._send_pending(channel, ch)
        return event_id

    def _send_pending(self, name: str, ch: _Channel) -> None:
        try:
            while True:
                with ch.lock:
                    if not ch.pending:
                        ch.sending = False
                        return
                    frame, level, members = ch.pending.popleft()
                gone = fan_out(name, members, frame, level) if members else []
                if gone:
                    with ch.lock:
                        for subscriber in gone:
                            ch.leave(subscriber)
        except BaseException:
            with ch.lock:  # the next publisher sends what is left
                ch.sending = False
            raise

    def position(self, channel: str) -> Position:
        """Where ``channel``'s log is now: its epoch and its last event's number.

        .. versionadded:: 1.0
        """
        ch = self._channel(channel)
        with ch.lock:
            return Position(ch.epoch, ch.last)

    def follow(self, channel: str, subscriber: Subscriber, after: Position) -> None:
        """Send ``channel``'s logged events after ``after``, then every new one.

        Replay and attachment are one step: each event reaches the
        subscriber once, in order. When the log no longer reaches back to
        ``after`` (events dropped by its bound or retention, ``after``
        names an epoch the log no longer has, or a place ahead of it), the
        replay starts with a :func:`~flask_sse_flush.channels.channel_gap_event`.

        .. versionadded:: 1.0
        """
        while True:
            ch = self._channel(channel)
            with ch.lock:
                if ch.dead:
                    continue  # purged just now: follow the new log
                ch.expire(self._clock() - self.retention)
                try:
                    replay_channel(channel, subscriber, after, ch.epoch, ch.last, list(ch.log))
                except StreamClosed:
                    return
                ch.join(subscriber)
                return

    def unfollow(self, channel: str, subscriber: Subscriber) -> None:
        """Stop sending ``channel``'s events to ``subscriber``.

        .. versionadded:: 1.0
        """
        ch = self._channels.get(channel)
        if ch is None:
            return
        with ch.lock:
            ch.leave(subscriber)
