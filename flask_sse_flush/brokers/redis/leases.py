"""Leases: no job outlives the process running it.

The process that runs a job (a web worker's thread, greenlet or child
process; ``run_job`` in a job worker) holds a **lease** on it in Redis: a
time, on Redis' own clock, before which it must renew it. This process's
keeper (a greenlet under gevent, a thread otherwise) renews every lease it
holds each third of the lease, in one round trip, and with it the lifetime
of the job's keys. A publish renews it too.

When a process dies without a graceful stop (``SIGKILL``, the OOM killer,
a lost host), its leases lapse. The keeper of every other process with a
job or a stream looks for lapsed leases in the same round and ends each
such job with its terminal ``error`` event ``{"message": ..., "retry":
true}``, numbered after its last event: one Lua step that only succeeds
while the lease is still lapsed and the number still the next, so the job
ends exactly once, whichever worker gets there first, and frees its
``max_jobs`` and per-identity slots. Every stream attached to it, on every
worker, gets that event as it gets any other.

Streams attach with a lease too: each process counts its own streams of a
job in the job's hash, and they count while the process's presence there
(renewed in the same round, for each job it has streams of) has not
lapsed. The streams of a worker that died stop counting once it lapses, so
``on_disconnect="cancel"`` still cancels a job
when its last live client leaves.

A job handed to a queue (an executor callable) has no runner until a job
worker takes it: its lease is the broker's ``queue_timeout`` instead, and
a job nobody runs by then ends the same way.

Clock skew between hosts cannot end a healthy job: every comparison is made
inside Redis, against ``TIME``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from ...runtime import start_greenlet
from ...wire.frames import Event
from ..base import StatusChange, event_id
from .store import Store

__all__ = ["LAPSED_MESSAGE", "Leases"]

log = logging.getLogger(__name__)

#: What the ``error`` event of a job whose runner stopped says.
LAPSED_MESSAGE = "the worker running this job stopped; start it again"


class Leases:
    """This process's keeper: renews the leases it holds, ends jobs whose runner stopped.

    :param store: the broker's store.
    :param running: the ids of the jobs this process runs now.
    :param handed: takes the ids of the jobs this process handed to a queue
        since the last round (their lease becomes the queue's).
    :param handed_done: called with those ids once their queue lease is set.
    :param renew_presence: writes this process's count of each job's
        streams, renewing its presence there.
    """

    def __init__(
        self,
        store: Store,
        *,
        running: Callable[[], set[str]],
        handed: Callable[[], set[str]],
        handed_done: Callable[[set[str]], None],
        renew_presence: Callable[[], None],
    ) -> None:
        self.store = store
        self._renew_presence = renew_presence
        self._running = running
        self._handed = handed
        self._handed_done = handed_done
        self.interval = store.lease_ms / 3000.0
        self.lease = store.lease_ms / 1000.0
        # Since when (monotonic) every round reached Redis; None after a failure.
        self._healthy_since: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = start_greenlet(self.run, name="flask-sse-flush redis leases")

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        """Wait until the keeper has ended (after :meth:`stop`)."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the Redis lease keeper did not end within %s s", timeout)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.round()
            except Exception as exc:  # Redis away: the next round tries again
                self._healthy_since = None
                log.debug("lease round failed: %s", exc)
            # Jittered, so the workers of one deployment do not all sweep at once.
            self._stop.wait(self.interval * random.uniform(0.8, 1.0))

    def round(self) -> list[str]:
        """Renew, then end the lapsed jobs; return the ids of the jobs this round ended.

        Lapsed leases are looked for only once Redis has answered this
        keeper for a whole lease: after an outage (or a Sentinel failover,
        to a master with another clock) every live runner has renewed by
        then, so only the leases of runners that are gone are still lapsed.
        """
        # Each step on its own: one that fails (Redis, or on a cluster a
        # node, away) does not cost the others their renewal.
        failed: Exception | None = None
        handed = self._handed()
        running = self._running()
        for step in (
            lambda: self._renew_handed(handed),
            self._renew_presence,  # its streams still count
            lambda: self.store.renew(running),
            self.store.check_nodes,
        ):
            try:
                step()
            except Exception as exc:
                failed = exc
        if failed is not None:
            raise failed
        now = time.monotonic()
        if self.store.down_since is not None:
            self._healthy_since = None
            return []
        if self._healthy_since is None:
            self._healthy_since = now
        # An outage this round's calls waited out counts too (store.up_since).
        if now - max(self._healthy_since, self.store.up_since) < self.lease:
            return []
        ended = []
        for job_id, last in self.store.lapsed():
            if job_id not in running and self.end(job_id, last):
                ended.append(job_id)
        return ended

    def _renew_handed(self, handed: set[str]) -> None:
        if handed:
            self.store.renew(handed, queued=True)
            self._handed_done(handed)  # only once their queue lease is set

    def end(self, job_id: str, last: int) -> bool:
        """End ``job_id`` with its terminal ``error`` event, if its lease has still lapsed."""
        seq = last + 1
        event = Event(
            {"message": LAPSED_MESSAGE, "retry": True}, event="error", id=event_id(job_id, seq)
        )
        change: StatusChange = {"state": "error", "error": LAPSED_MESSAGE}
        done = self.store.publish(
            job_id, seq, event.frame, None, change, True, recreate=False, owner=None,
            if_lapsed=True,
        )  # fmt: skip
        if done:
            log.warning("render job %s ended: the worker running it stopped", job_id)
        return done
