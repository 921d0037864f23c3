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
- writes coalesce. While one is in flight for a job, a change that leaves
  the job with streams here does not write: it marks the job, and the
  writer in flight writes again with the newest count. When a worker's
  thousands of streams of one job end at once (a deploy, a network blip),
  that is a few round trips, not one per stream through a pool of three
  connections. A change that leaves none here always writes, and waits for
  the total: that answer (is any stream of the job left, on any worker?) is
  what the disconnect policy acts on.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from ...exceptions import BrokerUnavailable
from ...runtime import new_lock
from .store import Store

__all__ = ["Presence"]

#: The most writes one caller makes for the changes of others before it
#: returns (the next change, or the lease keeper, writes the rest).
MAX_ROUNDS = 8


class Presence:
    """This process's count of each job's streams, written to Redis (see the module).

    No I/O under its lock: under gevent it is a native lock, and a greenlet
    that yielded holding it would freeze the hub.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = new_lock()
        self._counts: dict[str, int] = {}
        #: Writes in flight per job.
        self._writing: dict[str, int] = {}
        #: Jobs whose count changed while a write of theirs was in flight.
        self._dirty: set[str] = set()
        #: The total Redis last answered, per job with streams here.
        self._known: dict[str, int] = {}
        self._versions: Iterator[int] = itertools.count(1)

    def change(self, job_id: str, delta: int, *, write: bool = True) -> int:
        """Add ``delta`` (``+1`` or ``-1``) to this process's streams of ``job_id``.

        ``write=False`` changes the count here only, for the lease keeper's
        next round to write (undoing a change whose request failed).

        :returns: the job's streams on every live process: exact when none
            is left here, else at least this process's own.
        :raises BrokerUnavailable: Redis stayed away past the store's
            ``request_timeout`` (the count here is right regardless, and
            reaches Redis with a later write).
        """
        with self._lock:
            count = max(0, self._counts.get(job_id, 0) + delta)
            if count:
                self._counts[job_id] = count
            else:
                self._counts.pop(job_id, None)
                self._known.pop(job_id, None)
            if not write or (count and self._writing.get(job_id)):
                self._dirty.add(job_id)  # the writer in flight, or the keeper, writes it
                return max(count, self._known.get(job_id, count))
            self._writing[job_id] = self._writing.get(job_id, 0) + 1
        try:
            return self._write(job_id)
        finally:
            with self._lock:
                left = self._writing[job_id] - 1
                if left:
                    self._writing[job_id] = left
                else:
                    del self._writing[job_id]

    def _write(self, job_id: str) -> int:
        """Write the job's count, then again while others changed it meanwhile."""
        total = self._write_once(job_id)  # the caller's own change: its failure is the caller's
        for _ in range(MAX_ROUNDS - 1):
            with self._lock:
                if job_id not in self._dirty:
                    break
            try:
                total = self._write_once(job_id)
            except BrokerUnavailable:
                break  # still marked: the lease keeper's round writes it
        return total

    def _write_once(self, job_id: str) -> int:
        with self._lock:
            self._dirty.discard(job_id)
            count = self._counts.get(job_id, 0)
            version = next(self._versions)
        try:
            total = self.store.set_subscribers(job_id, count, version)
        except BrokerUnavailable:
            with self._lock:
                self._dirty.add(job_id)
            raise
        with self._lock:
            if job_id in self._counts:  # still has streams here
                self._known[job_id] = total
        return total

    def renew(self) -> None:
        """Write every count this process holds, and those not yet written.

        The lease keeper's round: it renews this process's presence in each
        job it has streams of, and puts right a count a failed write left.
        """
        with self._lock:
            due = set(self._counts) | self._dirty
            self._dirty.clear()
            counts = {job_id: (self._counts.get(job_id, 0), next(self._versions)) for job_id in due}
        if not counts:
            return
        try:
            self.store.renew_presence(counts)
        except BrokerUnavailable:
            with self._lock:
                self._dirty.update(counts)
            raise
