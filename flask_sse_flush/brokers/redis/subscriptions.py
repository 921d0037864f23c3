"""What this process listens to in Redis, and for whom: its streams of jobs and channels.

A stream joins a job (or a channel) in two steps: it replays the log from
the store up to some number, then joins the job's local entry, whose
``seq`` says how far the pub/sub reader has delivered. If the reader has
passed the stream's number meanwhile, the stream reads the difference and
asks again; if not, the reader catches it up. So every event reaches each
stream once and in order, whichever way it came. After every reconnect of
the reader each entry is unsynced and caught up from the log again, so an
event published while nothing listened is never lost.

The jobs whose cancellation this process awaits are listened to here too,
on the one cancel channel (on a cluster, each job's own, in its slot).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...channels import Position, replay_channel
from ...exceptions import BrokerUnavailable, StreamClosed, UnknownJob
from ...runtime import new_lock
from ...wire.frames import Event
from ..base import JobStatus, Subscriber, close_subscriber, fan_out, gap_event
from .presence import Presence
from .store import UNAVAILABLE, Entry, Store

__all__ = ["Local", "Subscriptions"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Local:
    """The streams of one job (or channel) in this process, fed by the reader."""

    job_id: str
    channel: bytes
    lock: Any
    # Streams that have every event up to `seq`.
    members: dict[Subscriber, None] = field(default_factory=dict)
    # Streams that replayed up to their own number, which may be behind or
    # ahead of `seq`; they join `members` once `seq` has passed it.
    joining: dict[Subscriber, int] = field(default_factory=dict)
    # A channel's joiners: the epoch their number counts in (it may not be
    # the local's, when the log started again around their join).
    joining_epoch: dict[Subscriber, str] = field(default_factory=dict)
    seq: int = 0
    synced: bool = False
    #: A channel's name and the epoch of its log that ``seq`` counts in
    #: (``None`` for a job).
    name: str | None = None
    epoch: str | None = None

    def count(self) -> int:
        return len(self.members) + len(self.joining)

    def promote(self) -> None:
        """Move joiners that `seq` has caught up with to the members; lock held."""
        for subscriber, last in list(self.joining.items()):
            if last <= self.seq:
                del self.joining[subscriber]
                self.joining_epoch.pop(subscriber, None)
                self.members[subscriber] = None

    def advance(self, seq: int) -> list[Subscriber]:
        """Take live event ``seq`` (the next): who gets it; lock held.

        The members, and the joiners whose replay stopped before it; then
        the joiners it caught up with become members.
        """
        self.seq = seq
        recipients = [*self.members, *(s for s, last in self.joining.items() if last < seq)]
        self.promote()
        return recipients

    def behind(self) -> int:
        """The number the furthest-behind stream has everything up to; lock held."""
        marks = list(self.joining.values())
        if self.members or self.synced:
            marks.append(self.seq)
        return min(marks, default=self.seq)

    def settle(self, start: int, last: int) -> list[tuple[Subscriber, int]] | None:
        """After a read of the log from ``start`` up to ``last``: whom to send what.

        Every stream and the number it has everything up to, once this read
        covers them all (each is at or past ``start``): the local is then
        synced at ``last``, and live from there. ``None`` when a stream joined
        behind the read meanwhile (read again from its place). Lock held.
        """
        targets = [*((s, self.seq) for s in self.members), *self.joining.items()]
        if not all(mark >= start for _, mark in targets):
            return None
        self.seq = max(self.seq, last)
        self.synced = True
        for subscriber, mark in targets:
            if subscriber in self.joining:
                self.joining[subscriber] = max(mark, self.seq)
        self.promote()
        return targets

    def drop(self, subscriber: Subscriber) -> None:
        self.members.pop(subscriber, None)
        self.joining.pop(subscriber, None)
        self.joining_epoch.pop(subscriber, None)

    def take_all(self) -> list[Subscriber]:
        """Detach and return every stream of the job here; takes the lock."""
        with self.lock:
            subscribers = [*self.members, *self.joining]
            self.members.clear()
            self.joining.clear()
            self.joining_epoch.clear()
        return subscribers


def replay(subscriber: Subscriber, status: JobStatus, entries: list[Entry], last: int) -> int:
    """Send ``subscriber`` the logged events after ``last``, with a ``gap`` event
    where some were lost; return the number it then has everything up to.

    The gap comes where the hole is: first, when events after ``last`` may
    be missing from the log's start (its bound dropped them, the store lost
    the job); after the events before it, when the hole is in the middle (a
    failover lost the writes after :attr:`~JobStatus.lost_after`).
    """
    lost = status.lost_through > last
    # The gap's "after": what comes before the hole reaches the stream first.
    hole = max(last, status.lost_after)
    for seq, frame, level in entries:
        if lost and seq > hole:
            subscriber.deliver(gap_event(status, hole).frame, None)
            lost = False
        if seq > last:
            subscriber.deliver(frame, level)
            last = seq
    if lost:
        subscriber.deliver(gap_event(status, hole).frame, None)
    return max(last, status.lost_through)


class Subscriptions:
    """This process's streams of jobs and channels, and its awaited cancellations.

    The reader calls the ``on_*`` methods, :meth:`wanted_channels` and
    :meth:`resync`; the broker calls the rest, on the worker's hub.

    :param store: the store the logs are read from.
    :param changed: tells the reader the wanted channels changed (starting
        it if need be).
    :param wake: wakes the reader, if there is one.
    """

    def __init__(self, store: Store, changed: Callable[[], None], wake: Callable[[], None]) -> None:
        self.store = store
        self._changed = changed
        self._wake = wake
        # No I/O under this lock or a Local's: under gevent they are native
        # locks, and a greenlet that yielded while holding one would freeze the hub.
        self.lock = new_lock()
        self.jobs: dict[str, Local] = {}
        self.channels: dict[str, Local] = {}  # by name
        self.cancel_callbacks: dict[str, list[Callable[[], Any]]] = {}
        #: This process's count of each job's streams, in Redis.
        self.presence = Presence(store)

    # -- jobs ----------------------------------------------------------------------

    def subscribe(self, job_id: str, subscriber: Subscriber, after: int) -> bool:
        """Replay a job's log after ``after`` to ``subscriber``, then every new event."""
        status, entries = self.store.read_log(job_id, after)
        if status is None:
            return False
        # A number ahead of the log (the service refuses those) means "from now on".
        last = min(after, status.last_seq)
        counted = gone = False
        try:
            while True:
                last = replay(subscriber, status, entries, last)
                if status.final_seq is not None:
                    break  # the replay held the terminal event
                if not counted:
                    counted = True
                    self.presence.add(job_id, subscriber)
                if self._join(job_id, subscriber, last):
                    return True
                # The reader delivered events past our replay meanwhile: read on.
                status, entries = self.store.read_log(job_id, last)
                if status is None:
                    break
        except StreamClosed:
            gone = True
        except BaseException:
            if counted:  # the keeper's next round writes it: no second wait on Redis
                self.presence.drop(job_id, [subscriber])
            raise
        if counted:
            with contextlib.suppress(BrokerUnavailable):  # the count here is right: see Presence
                self.presence.remove(job_id, subscriber)
        if not gone:
            close_subscriber(subscriber)
        return True

    def _join(self, job_id: str, subscriber: Subscriber, last: int) -> bool:
        """Attach a stream that has the job's events up to ``last``, if the reader allows.

        ``False`` when the reader has delivered past ``last`` already: the
        caller replays the difference and asks again.
        """
        with self.lock:  # so the job's local entry cannot be dropped meanwhile
            local = self.jobs.get(job_id)
            new = local is None
            if local is None:
                channel = self.store.job_channel(job_id)
                local = self.jobs[job_id] = Local(job_id, channel, new_lock())
            with local.lock:
                joined = not local.synced or local.seq <= last
                if joined:
                    # The reader catches this stream up from `last`, or has
                    # not passed it yet: every later event reaches it.
                    local.joining[subscriber] = last
        if new:
            self._changed()
        return joined

    def unsubscribe(self, job_id: str, subscriber: Subscriber) -> int:
        """Detach ``subscriber``; the job's streams on every worker left."""
        self._forget(job_id, [subscriber])
        try:
            # Written even if the fan-out or the job's end uncounted it
            # already: the answer then counts this worker's streams as they are.
            return self.presence.remove(job_id, subscriber)
        except BrokerUnavailable:
            return 1  # unknown while Redis is away: never count a job as abandoned

    def _forget(self, job_id: str, subscribers: list[Subscriber]) -> None:
        """Drop streams from the job's local entry (no I/O: the reader calls it)."""
        emptied = False
        with self.lock:
            local = self.jobs.get(job_id)
            if local is not None:
                with local.lock:
                    for subscriber in subscribers:
                        local.drop(subscriber)
                    if not local.count():
                        del self.jobs[job_id]
                        emptied = True
        if emptied:
            self._changed()

    def _gone(self, job_id: str, subscribers: list[Subscriber]) -> None:
        """Streams the fan-out found gone: forgotten here, uncounted with the
        keeper's next write or their own unsubscribe (the reader writes nothing)."""
        if subscribers:
            self._forget(job_id, subscribers)
            self.presence.drop(job_id, subscribers)

    def _on_job_message(self, job_id: str, data: bytes) -> None:
        local = self.jobs.get(job_id)
        if local is None:
            return
        seq_text, final_text, level_text, frame = data.split(b"\n", 3)
        seq, final = int(seq_text), final_text == b"1"
        with local.lock:
            if not local.synced or seq <= local.seq:
                return  # a catch-up delivered it already
            if seq > local.seq + 1:
                gap = True
            else:
                gap = False
                recipients = local.advance(seq)
        if gap:
            # Only after a reconnect or a lost store: the log has what we missed.
            self.catch_up(local)
            return
        level = level_text.decode("utf-8") or None
        gone = fan_out(job_id, recipients, frame, level)
        if final:
            self._ended(local)
        else:
            self._gone(job_id, gone)

    def catch_up(self, local: Local) -> None:
        """Bring a job's (or channel's) local streams up to date from its log; mark it synced."""
        if local.name is not None:
            self._channel_catch_up(local)
            return
        while True:
            with local.lock:
                start = local.behind()
            status, entries = self.store.read_log(local.job_id, start)
            if status is None:
                # Lost by the store: its publisher starts the log again, and
                # the next event brings a catch-up that reports the gap.
                with local.lock:
                    local.synced = True
                return
            with local.lock:
                targets = local.settle(start, status.last_seq)
            if targets is not None:
                break  # everyone is covered by this read: from here on, live
            # A stream joined behind our read meanwhile: read from its place.
        gone: list[Subscriber] = []
        for subscriber, last in targets:
            try:
                replay(subscriber, status, entries, last)
            except StreamClosed:
                gone.append(subscriber)
            except Exception:
                log.exception("subscriber %r of job %s failed", subscriber, local.job_id)
                gone.append(subscriber)
        if status.final_seq is not None:
            self._ended(local)
        else:
            self._gone(local.job_id, gone)

    def _ended(self, local: Local) -> None:
        with self.lock:
            if self.jobs.get(local.job_id) is local:
                del self.jobs[local.job_id]
        for subscriber in self._take_all(local):
            close_subscriber(subscriber)
        self._wake()

    def _take_all(self, local: Local) -> list[Subscriber]:
        """Take every stream off ``local``; a job's are counted here no more (no I/O)."""
        subscribers = local.take_all()
        if local.name is None:
            self.presence.drop(local.job_id, subscribers)
        return subscribers

    # -- channels ------------------------------------------------------------------

    def follow(self, name: str, subscriber: Subscriber, after: Position) -> None:
        """Replay a channel's log after ``after`` to ``subscriber``, then every new event."""
        epoch, last, entries = self._read_channel(name, after.seq)
        if epoch != after.epoch and after.seq:
            epoch, last, entries = self._read_channel(name, 0)  # another log: from its start
        try:
            mark = replay_channel(name, subscriber, after, epoch, last, entries)
            while not self._join_channel(name, subscriber, epoch, mark):
                # The reader delivered past our replay meanwhile: read on.
                now, last, entries = self._read_channel(name, mark)
                if now != epoch:
                    # The log started again since: the reader's catch-up
                    # sends the gap and the new log from our place.
                    self._join_channel(name, subscriber, epoch, mark, force=True)
                    return
                mark = replay_channel(name, subscriber, Position(epoch, mark), epoch, last, entries)
        except StreamClosed:
            return

    def _read_channel(self, name: str, after: int) -> tuple[str, int, list[Entry]]:
        """A channel's epoch, last number and events after ``after``; starts a log if none."""
        epoch, last, entries = self.store.read_channel(name, after)
        if epoch is None:
            # No log (expired, or lost): start one, so every place has an epoch.
            self.store.position(name)
            epoch, last, entries = self.store.read_channel(name, after)
        assert epoch is not None
        return epoch, last, entries

    def _join_channel(
        self, name: str, subscriber: Subscriber, epoch: str, mark: int, *, force: bool = False
    ) -> bool:
        """Attach a follower that has the log of ``epoch`` up to ``mark``, if the reader allows.

        ``False`` when the reader has delivered that log past ``mark`` already
        (the caller replays the difference and asks again). A follower whose
        epoch is not the local's joins at once and sends the local to a
        catch-up, which gives it the gap and the log it does not have.
        """
        with self.lock:
            local = self.channels.get(name)
            new = local is None
            if local is None:
                pubsub = self.store.channel_pubsub(name)
                local = self.channels[name] = Local(name, pubsub, new_lock(), name=name)
            with local.lock:
                if local.synced and local.epoch == epoch and local.seq > mark and not force:
                    return False
                local.joining[subscriber] = mark
                local.joining_epoch[subscriber] = epoch
                resync = local.synced and local.epoch != epoch
                if resync:
                    local.synced = False
        if new or resync:
            self._changed()
        return True

    def unfollow(self, name: str, subscriber: Subscriber) -> None:
        emptied = False
        with self.lock:
            local = self.channels.get(name)
            if local is not None:
                with local.lock:
                    local.drop(subscriber)
                    if not local.count():
                        del self.channels[name]
                        emptied = True
        if emptied:
            self._changed()

    def _on_channel_message(self, local: Local, data: bytes) -> None:
        seq_text, epoch_text, level_text, frame = data.split(b"\n", 3)
        seq = int(seq_text)
        with local.lock:
            if not local.synced:
                return  # its catch-up, to come, reads the log
            gap = epoch_text.decode() != local.epoch or seq > local.seq + 1
            if not gap:
                if seq <= local.seq:
                    return  # a catch-up delivered it already
                recipients = local.advance(seq)
        if gap:
            # After a reconnect, or a log that started again: read what we missed.
            self._channel_catch_up(local)
            return
        assert local.name is not None
        level = level_text.decode() or None
        for subscriber in fan_out(local.name, recipients, frame, level):
            self.unfollow(local.name, subscriber)

    def _channel_catch_up(self, local: Local) -> None:
        """Bring a channel's local followers up to date from its log; mark it synced.

        Each follower gets what it lacks from its own place: a follower on
        another epoch than the log's (the log started again) or behind what
        the log still holds gets a ``gap`` event first, never a silent hole.
        """
        name = local.name
        assert name is not None
        while True:
            with local.lock:
                start = local.behind()
            epoch, last, entries = self._read_channel(name, start)
            with local.lock:
                targets = self._channel_targets(local)
            if start and any(at.epoch != epoch for _, at in targets):
                start = 0  # someone counts in another log: read this one from its start
                epoch, last, entries = self._read_channel(name, 0)
            with local.lock:
                targets = self._channel_targets(local)
                if any(
                    (at.epoch != epoch and start) or (at.epoch == epoch and at.seq < start)
                    for _, at in targets
                ):
                    continue  # a follower joined behind our read meanwhile
                local.epoch, local.seq, local.synced = epoch, last, True
                local.members.clear()
                local.joining.clear()
                local.joining_epoch.clear()
                for subscriber, at in targets:
                    ahead = at.epoch == epoch and at.seq > last
                    if ahead:  # it read the log further than we did: live from its place
                        local.joining[subscriber] = at.seq
                        local.joining_epoch[subscriber] = epoch
                    else:
                        local.members[subscriber] = None
                break
        gone: list[Subscriber] = []
        for subscriber, at in targets:
            if at.epoch == epoch and at.seq >= last:
                continue  # it has all this read holds (or more: it read later)
            try:
                replay_channel(name, subscriber, at, epoch, last, entries)
            except StreamClosed:
                gone.append(subscriber)
            except Exception:
                log.exception("follower %r of channel %s failed", subscriber, name)
                gone.append(subscriber)
        for subscriber in gone:
            self.unfollow(name, subscriber)

    @staticmethod
    def _channel_targets(local: Local) -> list[tuple[Subscriber, Position]]:
        """Every follower of a channel here and its place; lock held."""
        here = [(s, Position(local.epoch, local.seq)) for s in local.members if local.epoch]
        return here + [
            (s, Position(local.joining_epoch.get(s, local.epoch or ""), mark))
            for s, mark in local.joining.items()
        ]

    # -- cancellation --------------------------------------------------------------

    def on_cancel(self, job_id: str, callback: Callable[[], Any]) -> None:
        """Call ``callback`` once the job is cancelled, from any worker."""
        with self.lock:
            self.cancel_callbacks.setdefault(job_id, []).append(callback)
        self._changed()
        exists, cancelled = self.store.cancel_state(job_id)
        if not exists:
            with self.lock:
                self.cancel_callbacks.pop(job_id, None)
            raise UnknownJob(job_id)
        if cancelled:
            self.cancelled(job_id)  # cancelled before we listened

    def forget_cancel(self, job_id: str, callback: Callable[[], Any]) -> bool:
        """Stop calling ``callback``; ``True`` if no callback waits on the job any more."""
        with self.lock:
            callbacks = self.cancel_callbacks.get(job_id, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                self.cancel_callbacks.pop(job_id, None)
                return True
        return False

    def drop_cancel(self, job_id: str) -> None:
        """Forget every callback of a job (it has ended)."""
        with self.lock:
            self.cancel_callbacks.pop(job_id, None)

    def cancelled(self, job_id: str) -> None:
        """Call the job's cancel callbacks of this process, once."""
        with self.lock:
            callbacks = self.cancel_callbacks.pop(job_id, [])
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("cancel callback of job %s failed", job_id)

    # -- for the reader ------------------------------------------------------------

    def wanted_channels(self) -> set[bytes]:
        """The pub/sub channels the reader should be subscribed to now."""
        with self.lock:
            wanted = {local.channel for local in self.jobs.values()}
            wanted.update(local.channel for local in self.channels.values())
            wanted.update(self.store.cancel_channel(job_id) for job_id in self.cancel_callbacks)
        return wanted

    def on_lost(self, channels: set[bytes]) -> None:
        """The reader lost the connection carrying ``channels``: their entries catch up again.

        (Cancels sent meanwhile reached no one: they are read again when the
        cancel channel is subscribed again, :meth:`on_subscribe`.)
        """
        with self.lock:
            locals_ = [*self.jobs.values(), *self.channels.values()]
        for local in locals_:
            if local.channel in channels:
                with local.lock:
                    local.synced = False

    def on_subscribe(self, channel: bytes) -> None:
        """Redis confirmed a subscription: catch its streams up from the log."""
        if self.store.is_cancel_channel(channel):
            # Cancels published while we did not listen reached no one.
            with self.lock:
                jobs = [j for j in self.cancel_callbacks if self.store.cancel_channel(j) == channel]
            for awaited in jobs:
                if self.store.cancelled(awaited):
                    self.cancelled(awaited)
            return
        name, job_id = self.store.channel_of(channel), self.store.job_of(channel)
        local: Local | None = None
        if name is not None:
            local = self.channels.get(name)
        elif job_id is not None:
            local = self.jobs.get(job_id)
        if local is not None:
            self.catch_up(local)

    def resync(self, subscribed: set[bytes], new: set[bytes]) -> None:
        """Catch up the unsynced entries whose channel stays subscribed.

        A job whose last stream left and whose next one came before the
        reader looked keeps its channel, so no new confirmation will catch
        its new streams up (a second catch-up, on a confirmation still to
        come, repeats nothing).
        """
        with self.lock:
            locals_ = [*self.jobs.values(), *self.channels.values()]
        for local in [local for local in locals_ if not local.synced]:
            if local.channel in subscribed and local.channel not in new:
                self.catch_up(local)

    def on_message(self, channel: bytes, data: bytes) -> None:
        """An event (or a cancellation) arrived on ``channel``."""
        if self.store.is_cancel_channel(channel):
            self.cancelled(data.decode("utf-8", "replace"))
            return
        name = self.store.channel_of(channel)
        if name is not None:
            followed = self.channels.get(name)
            if followed is not None:
                self._on_channel_message(followed, data)
            return
        job_id = self.store.job_of(channel)
        if job_id is not None:
            self._on_job_message(job_id, data)

    def on_outage(self, channels: set[bytes]) -> None:
        """The connection carrying ``channels`` stayed away past ``outage_timeout``:
        end their local streams with an error (on one Redis, every stream)."""
        with self.lock:
            locals_ = [
                local
                for local in [*self.jobs.values(), *self.channels.values()]
                if local.channel in channels
            ]
            for local in locals_:
                if local.name is None:
                    self.jobs.pop(local.job_id, None)
                else:
                    self.channels.pop(local.name, None)
        if not locals_:
            return
        # Not the job's end: no id (the browser resumes from its last event)
        # and "reconnect": true, so a client can tell it from a job's error.
        frame = Event(
            {"message": f"{UNAVAILABLE}; reconnect to resume", "reconnect": True}, event="error"
        ).frame
        log.error(
            "Redis unreachable for %.0f s: ending %d jobs' streams",
            self.store.outage_timeout,
            len(locals_),
        )
        for local in locals_:
            for subscriber in self._take_all(local):
                with contextlib.suppress(Exception):
                    subscriber.deliver(frame, None)
                close_subscriber(subscriber)

    def close_all(self) -> None:
        """End every stream of this process (the broker is closing)."""
        with self.lock:
            locals_ = [*self.jobs.values(), *self.channels.values()]
            self.jobs, self.channels = {}, {}
        for local in locals_:
            for subscriber in self._take_all(local):
                close_subscriber(subscriber)
