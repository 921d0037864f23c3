"""The embedded broker: every job's log and subscribers in this process."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from .._concurrency import new_lock, newest_of_each_level
from ..exceptions import StreamClosed
from ..frames import Event
from .base import JobStatus, StatusChange, Subscriber, valid_job_id

__all__ = ["MemoryBroker"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Job:
    status: JobStatus
    lock: Any
    events: collections.deque[tuple[int, Event]] = field(default_factory=collections.deque)
    subscribers: list[Subscriber] = field(default_factory=list)
    on_cancel: list[Callable[[], Any]] = field(default_factory=list)
    cancelled: bool = False
    ended_at: float | None = None


class MemoryBroker:
    """Keeps each job's events in memory and fans them out to its streams.

    Serves the jobs and streams of one process (one gunicorn worker). Use
    one broker per app; the blueprint makes one if you pass none.

    :param retention: seconds a job's log is kept after the job ends, so
        late reconnects can still replay it; then it is purged.
    :param max_events: the most events kept per job. Past it, the log
        keeps only the newest event of each type in ``coalesce`` (progress
        is a level, not a history) and every other event, so a job that
        reports 100,000 times does not hold 100,000 events.
    :param coalesce: event types that only matter as their latest value.
    :param clock: the time source, in seconds (tests may pass their own).
    """

    def __init__(
        self,
        *,
        retention: float = 600.0,
        max_events: int = 1000,
        coalesce: Collection[str] = ("progress",),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if retention < 0:
            raise ValueError(f"retention must be >= 0 seconds, not {retention!r}")
        if max_events < 2:
            raise ValueError(f"max_events must be at least 2, not {max_events!r}")
        self.retention = retention
        self.max_events = max_events
        self._coalesce = frozenset(coalesce)
        self._clock = clock
        self._jobs: dict[str, _Job] = {}
        self._lock = new_lock()
        self._next_purge = 0.0

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

    def create(self, job_id: str) -> JobStatus:
        if not valid_job_id(job_id):
            raise ValueError(f"a job id is 1 to 128 letters, digits or '_.:', not {job_id[:80]!r}")
        self._purge()
        status = JobStatus(id=job_id)
        with self._lock:
            if job_id in self._jobs:
                raise ValueError(f"job {job_id!r} exists already")
            self._jobs[job_id] = _Job(status=status, lock=new_lock())
        return status

    def _require(self, job_id: str) -> _Job:
        job = self._job(job_id)
        if job is None:
            raise KeyError(f"unknown job {job_id!r}")
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
        with job.lock:
            if job.ended_at is not None:
                raise ValueError(f"job {job_id!r} has ended; it takes no more events")
            job.events.append((seq, event))
            if len(job.events) > self.max_events:
                self._compact(job)
            extra: dict[str, Any] = {"last_seq": seq}
            if final:
                extra["final_seq"] = seq
                job.ended_at = self._clock()
            job.status = job.status.changed(change, **extra)
            # Delivered under the job's lock, so a subscriber attaching at
            # the same moment gets each event exactly once, in order.
            for subscriber in list(job.subscribers):
                try:
                    subscriber.send(event)
                except StreamClosed:
                    job.subscribers.remove(subscriber)
            if final:
                for subscriber in job.subscribers:
                    subscriber.close()
                job.subscribers.clear()
                job.on_cancel.clear()

    def _compact(self, job: _Job) -> None:
        events = list(job.events)  # indexing a deque's middle is O(n)
        levels = (e.event if e.event in self._coalesce else None for _, e in events)
        kept = [events[i] for i in newest_of_each_level(levels)]
        # Events that cannot be coalesced still may not grow without bound.
        job.events = collections.deque(kept[-self.max_events :])

    def update(self, job_id: str, change: StatusChange) -> JobStatus:
        job = self._require(job_id)
        with job.lock:
            job.status = job.status.changed(change)
            return job.status

    def status(self, job_id: str) -> JobStatus | None:
        job = self._job(job_id)
        return None if job is None else job.status

    def subscribe(self, job_id: str, subscriber: Subscriber, after: int = 0) -> bool:
        job = self._job(job_id)
        if job is None:
            return False
        with job.lock:
            try:
                for seq, event in job.events:
                    if seq > after:
                        subscriber.send(event)
            except StreamClosed:
                return True
            if job.ended_at is not None:
                subscriber.close()
            else:
                job.subscribers.append(subscriber)
        return True

    def unsubscribe(self, job_id: str, subscriber: Subscriber) -> int:
        job = self._jobs.get(job_id)
        if job is None:
            return 0
        with job.lock:
            if subscriber in job.subscribers:
                job.subscribers.remove(subscriber)
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

    def on_cancel(self, job_id: str, callback: Callable[[], Any]) -> None:
        job = self._require(job_id)
        with job.lock:
            if not job.cancelled:
                job.on_cancel.append(callback)
                return
        callback()
