"""This process's streams of each job, as counted in Redis.

Each process writes its own count of a job's streams into the job's hash
(see ``scripts/subscribers.lua``), and ``on_disconnect="cancel"`` reads the
sum. The count is *set*, not added to: a write carries this process's whole
count of the job's streams and a version, and Redis keeps the write with
the highest version. So:

- writes may land in any order (two greenlets on two pooled connections)
  and Redis still ends on the newest count;
- a write that failed (Redis away, every pooled connection busy) costs
  nothing lasting: the next one, or the lease keeper's next round, which
  writes every count this process holds, puts it right;
- a stream's leaving coalesces. While a write is in flight for a job, a
  stream that leaves with others of the job still here does not write: it
  marks the job, and the writer in flight writes again with the newest
  count (up to eight writes in a row, within 0.1 s; past that, the next
  change or the keeper's round). When a worker's thousands of streams of
  one job end at once (a deploy, a network blip), that is a few dozen round
  trips, not one per stream through a pool of three connections;
- a stream that comes always writes before it is served, and so does a
  change that leaves none here, which waits for the total: that answer (is
  any stream of the job left, on any worker?) is what the disconnect
  policy acts on.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator

from ...exceptions import BrokerUnavailable
from ...runtime import new_lock
from ..base import Subscriber
from .store import Store

__all__ = ["Presence"]

#: The most writes one caller makes in a row: its own, then those for the
#: changes of others meanwhile (the next change, or the keeper, writes the rest)...
MAX_ROUNDS = 8
#: ... and for how long it goes on making them (seconds).
FOLLOW_UP_SECONDS = 0.1


class Presence:
    """This process's streams of each job, counted in Redis (see the module).

    It holds the streams themselves, not a number: a stream is counted once
    however it leaves (its client's unsubscribe, the fan-out finding it
    gone, the job's end, an outage). No I/O under its lock: under gevent it
    is a native lock, and a greenlet that yielded holding it would freeze
    the hub.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = new_lock()
        self._streams: dict[str, set[Subscriber]] = {}
        #: Writes in flight per job.
        self._writing: dict[str, int] = {}
        #: Jobs whose count changed since their last write began.
        self._dirty: set[str] = set()
        self._versions: Iterator[int] = itertools.count(1)

    def add(self, job_id: str, subscriber: Subscriber) -> int:
        """Count ``subscriber`` among this process's streams of ``job_id``.

        Always written before it returns, so a stream is counted in Redis
        before it is served (another worker's last client leaving must not
        see none here).

        :returns: the job's streams on every live process, at least this
            process's own.
        :raises BrokerUnavailable: Redis stayed away past the store's
            ``request_timeout`` (the stream stays counted here, and reaches
            Redis with a later write).
        """
        with self._lock:
            self._streams.setdefault(job_id, set()).add(subscriber)
        return self._changed(job_id, coalesce=False)

    def remove(self, job_id: str, subscriber: Subscriber) -> int:
        """Count ``subscriber`` no more (if it still is).

        :returns: the job's streams on every live process: exact when none
            is left here (then always written and read back: this is what
            the disconnect policy acts on), else at least this process's own.
        :raises BrokerUnavailable: as :meth:`add`.
        """
        with self._lock:
            streams = self._streams.get(job_id)
            if streams is not None:
                streams.discard(subscriber)
        return self._changed(job_id, coalesce=True)

    def drop(self, job_id: str, subscribers: Iterable[Subscriber]) -> None:
        """Count these streams no more, writing nothing now: the keeper's
        next round does (an ended job, an outage, a stream the fan-out
        found gone, a failed request). No I/O: safe in the reader."""
        with self._lock:
            streams = self._streams.get(job_id)
            if streams is None:
                return
            streams.difference_update(subscribers)
            self._settle(job_id, streams)
            self._dirty.add(job_id)

    def _settle(self, job_id: str, streams: set[Subscriber]) -> int:
        """Forget a job with no stream here; its count. Lock held."""
        if not streams:
            self._streams.pop(job_id, None)
        return len(streams)

    def _changed(self, job_id: str, *, coalesce: bool) -> int:
        """Write the job's count (unless ``coalesce`` and a write in flight
        will, and streams are left here); the total."""
        with self._lock:
            count = self._settle(job_id, self._streams.get(job_id, set()))
            self._dirty.add(job_id)
            if coalesce and count and self._writing.get(job_id):
                return count  # not 0, which is all a caller acts on; the writer in flight writes it
            self._writing[job_id] = self._writing.get(job_id, 0) + 1
        total = self._write(job_id)
        return max(count, total) if count else total

    def _write(self, job_id: str) -> int:
        """Write the job's count, then again while it changed meanwhile (at
        most ``MAX_ROUNDS`` writes, for at most ``FOLLOW_UP_SECONDS``).

        The caller is counted in ``_writing``; it leaves in the same locked
        step that finds nothing more to write, so a change made after that
        step writes for itself.
        """
        total = 0
        started = time.monotonic()
        for round_ in range(MAX_ROUNDS):
            with self._lock:
                if round_ and (
                    job_id not in self._dirty or time.monotonic() - started > FOLLOW_UP_SECONDS
                ):  # the first write is the caller's own; the rest, the keeper's if need be
                    self._left(job_id)
                    return total
                self._dirty.discard(job_id)
                count = len(self._streams.get(job_id, ()))
                version = next(self._versions)
            try:
                total = self.store.set_subscribers(job_id, count, version)
            except BaseException as exc:
                with self._lock:
                    self._dirty.add(job_id)  # the keeper's next round writes it
                    self._left(job_id)
                if round_ and isinstance(exc, BrokerUnavailable):
                    return total  # the caller's own change was written
                raise
        with self._lock:
            self._left(job_id)
        return total

    def _left(self, job_id: str) -> None:
        """A writer of ``job_id`` is done; lock held."""
        left = self._writing[job_id] - 1
        if left:
            self._writing[job_id] = left
        else:
            del self._writing[job_id]

    def renew(self) -> None:
        """Write every count this process holds, and those not yet written.

        The lease keeper's round: it renews this process's presence in each
        job it has streams of, and puts right a count a failed write left.
        """
        with self._lock:
            due = set(self._streams) | self._dirty
            self._dirty.clear()
            counts = {
                job_id: (len(self._streams.get(job_id, ())), next(self._versions)) for job_id in due
            }
        if not counts:
            return
        written: set[str] = set()
        try:
            written = self.store.renew_presence(counts)
        finally:
            with self._lock:
                self._dirty.update(set(counts) - written)
