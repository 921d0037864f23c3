"""The facade: :class:`RedisBroker`, the Broker protocol over its store, subscriptions, reader.

It checks arguments, runs each call where the broker's sockets live (the
worker's hub under gevent) and keeps the bookkeeping of the jobs this
process publishes; the work is done by the parts:

* ``store``: the command connections, the retries, the keys and the Lua
  scripts;
* ``subscriptions``: this process's streams of jobs and channels, their
  replay and catch-up, and the cancellations it awaits;
* ``reader``: the one pub/sub connection of the process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from ...channels import Position, check_channel
from ...exceptions import BrokerUnavailable
from ...runtime import gevent_is_active, home_hub, new_lock, run_in_hub
from ...wire.frames import PROGRESS_COALESCING, Coalescing, Event, split_at_id
from ..base import JobStatus, StatusChange, Subscriber, valid_job_id
from .leases import Leases
from .reader import Reader
from .store import (
    Store,
    is_cluster_url,
    is_sentinel_url,
    parse_cluster_url,
    parse_sentinel_url,
)
from .subscriptions import Subscriptions

__all__ = ["RedisBroker"]

R = TypeVar("R")


class RedisBroker:
    """Keeps each job's events and status in Redis; streams on any worker or host.

    The same promises as :class:`~flask_sse_flush.brokers.MemoryBroker`
    (replay-then-live with each event once and in order, a bounded log,
    coalesced progress, retention, cancellation), across every process
    that uses the same Redis: a resume, an attach, a status request or a
    cancel may land on any worker. Needs ``pip install
    "flask-sse-flush[redis]"``. Chosen with ``broker=RedisBroker(url)`` or
    the app config key ``SSE_FLUSH_REDIS_URL``.

    Faults: when Redis cannot be reached, publishes (a job's events) retry
    with backoff for ``outage_timeout`` seconds before failing; the reader
    reconnects with backoff and catches every stream up from its last event
    when Redis is back. Requests retry for ``request_timeout`` seconds, then
    fail with :class:`~flask_sse_flush.BrokerUnavailable` (a ``503``). Past
    ``outage_timeout`` open streams receive an ``error`` event saying the
    event store is unavailable and end; their browsers resume once Redis
    answers again.

    Under gevent every Redis call runs on the worker's hub (a call from a
    native job thread is handed to it), because a gevent socket belongs to
    the hub that made it. Make the broker in the worker (an app factory
    does), not before gunicorn forks.

    :param url: the Redis URL, e.g. ``redis://127.0.0.1:6379/0``, or a
        master behind Sentinel,
        ``redis+sentinel://host:port[,host:port...]/<master-name>[/<db>]``
        (a user and password before the hosts are the master's): the
        broker follows the master through a failover, and its publishes
        and reader retry across it (:ref:`scaling-sentinel`). Any node
        of a Redis Cluster works too (found out at the first call), or
        several: ``redis+cluster://host:port[,host:port...]``; keys then
        carry hash tags and live events use sharded pub/sub, one
        connection per primary (:ref:`scaling-cluster`).
    :param prefix: the start of every key and channel name.
    :param retention: seconds a job's keys are kept after it ends.
    :param max_events: the most events kept per job (see ``MemoryBroker``).
    :param lease: seconds a job's runner may go without renewing its lease
        (this process renews it every third of that) before any other
        worker ends the job with an ``error`` event (:mod:`.leases`).
    :param queue_timeout: seconds a job handed to a queue (an executor
        callable) may wait for a job worker before it ends the same way.
    :param coalesce: which event types are levels; progress by default.
    :param outage_timeout: seconds Redis may be unreachable before jobs'
        publishes fail and open streams end with an ``error`` event.
    :param request_timeout: seconds a request's call retries while Redis
        is unreachable before a ``503``.
    :param max_connections: command connections per process (the reader
        adds one); on a cluster, per node.
    :param socket_timeout: seconds before a Redis call that gets no answer
        counts as failed.
    :raises ImportError: redis-py is not installed.
    :raises ValueError: an option is out of range.

    .. versionadded:: 0.2
    """

    #: Every worker and host with the same store serves every job.
    shared = True

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "sse_flush:",
        retention: float = 600.0,
        max_events: int = 1000,
        lease: float = 10.0,
        queue_timeout: float = 600.0,
        coalesce: Coalescing | Collection[str] = PROGRESS_COALESCING,
        outage_timeout: float = 30.0,
        request_timeout: float = 5.0,
        max_connections: int = 3,
        socket_timeout: float = 5.0,
    ) -> None:
        try:
            import redis
        except ImportError:
            raise ImportError(
                'RedisBroker needs redis-py: pip install "flask-sse-flush[redis]"'
            ) from None
        if retention < 0:
            raise ValueError(f"retention must be >= 0 seconds, not {retention!r}")
        if max_events < 2:
            raise ValueError(f"max_events must be at least 2, not {max_events!r}")
        for name, value in (
            ("lease", lease),
            ("queue_timeout", queue_timeout),
            ("outage_timeout", outage_timeout),
            ("request_timeout", request_timeout),
            ("socket_timeout", socket_timeout),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections!r}")
        self._redis = redis
        self.url = url
        self.prefix = prefix
        self.retention = retention
        self.max_events = max_events
        self.lease = lease
        self.queue_timeout = queue_timeout
        self.coalescing = Coalescing.of(coalesce)
        self.outage_timeout = outage_timeout
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.socket_timeout = socket_timeout
        if is_sentinel_url(url):
            parse_sentinel_url(url)  # a malformed URL fails here
        elif is_cluster_url(url):
            parse_cluster_url(url)
        else:
            redis.ConnectionPool.from_url(url)  # a malformed URL fails here
        self._reset()

    def _reset(self) -> None:
        """Forget every connection and local stream (new, or after a fork)."""
        self._pid = os.getpid()
        self._hub: Any = None
        self._lock = new_lock()
        self._store = Store(
            self._redis,
            url=self.url,
            prefix=self.prefix,
            retention=self.retention,
            max_events=self.max_events,
            lease=self.lease,
            queue_timeout=self.queue_timeout,
            outage_timeout=self.outage_timeout,
            request_timeout=self.request_timeout,
            max_connections=self.max_connections,
            socket_timeout=self.socket_timeout,
            client_name=self.client_name,
        )
        self._subscriptions = Subscriptions(
            self._store, changed=self._reader_wants_change, wake=self._wake_reader
        )
        # The jobs this process publishes, and their owners: if the store
        # loses one, its next publish rebuilds it, owner included.
        self._publishing: dict[str, str | None] = {}
        # Jobs handed to a queue since the keeper's last round.
        self._handed: set[str] = set()
        self._reader: Reader | None = None
        self._leases: Leases | None = None

    def __repr__(self) -> str:
        return f"<RedisBroker {self.url!r} prefix={self.prefix!r}>"

    @property
    def client_name(self) -> str:
        """The name this process's connections carry in Redis's ``CLIENT LIST``."""
        return f"{self.prefix.rstrip(':')}:{self._pid}"

    @property
    def _cancel_callbacks(self) -> dict[str, list[Callable[[], Any]]]:
        """The callbacks of the jobs whose cancellation this process awaits."""
        return self._subscriptions.cancel_callbacks

    def _connect(self) -> Any:
        """This process's redis-py client."""
        return self._store.connect()

    def _call(self, function: Callable[[], R]) -> R:
        """Run ``function`` where the broker's sockets live (the worker's hub)."""
        if self._pid != os.getpid():
            self._reset()  # forked: the parent's sockets and reader are not ours
        if self._store.closed:
            raise BrokerUnavailable("the RedisBroker was closed")
        if gevent_is_active():
            if self._hub is None:
                self._hub = home_hub()
            return run_in_hub(self._hub, function)
        return function()

    # -- the Broker protocol -------------------------------------------------------

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
        return self._call(lambda: self._create(job_id, limit, owner, owner_limit))

    def _create(
        self, job_id: str, limit: int | None, owner: str | None, owner_limit: int | None
    ) -> JobStatus:
        self._store.create(job_id, limit, owner, owner_limit)
        with self._lock:
            self._publishing[job_id] = owner
        self._keep_leases()
        return JobStatus(id=job_id, owner=owner)

    def publish(
        self,
        job_id: str,
        seq: int,
        event: Event,
        *,
        change: StatusChange | None = None,
        final: bool = False,
    ) -> None:
        frame, level = event.frame, self.coalescing.level(event.event)
        self._call(lambda: self._publish(job_id, seq, frame, level, change, final))

    def _publish(
        self,
        job_id: str,
        seq: int,
        frame: bytes,
        level: str | None,
        change: StatusChange | None,
        final: bool,
    ) -> None:
        self._store.publish(
            job_id,
            seq,
            frame,
            level,
            change,
            final,
            recreate=job_id in self._publishing,
            owner=self._publishing.get(job_id),
        )
        if final:
            with self._lock:
                self._publishing.pop(job_id, None)
            self._subscriptions.drop_cancel(job_id)

    def update(self, job_id: str, change: StatusChange) -> JobStatus:
        def update() -> JobStatus:
            status = self._store.update(job_id, change)
            if not status.ended:
                with self._lock:
                    self._publishing[job_id] = status.owner  # e.g. run_job in a job worker
                    self._handed.discard(job_id)
                self._keep_leases()
            return status

        return self._call(update)

    def status(self, job_id: str) -> JobStatus | None:
        if not valid_job_id(job_id):
            return None
        return self._call(lambda: self._store.status(job_id))

    def subscribe(self, job_id: str, subscriber: Subscriber, after: int = 0) -> bool:
        if not valid_job_id(job_id):
            return False

        def subscribe() -> bool:
            self._keep_leases()  # a worker with streams ends the jobs whose runner stopped
            return self._subscriptions.subscribe(job_id, subscriber, after)

        return self._call(subscribe)

    def unsubscribe(self, job_id: str, subscriber: Subscriber) -> int:
        return self._call(lambda: self._subscriptions.unsubscribe(job_id, subscriber))

    def subscribers(self, job_id: str) -> int:
        """How many streams, on every worker, are attached to a job now."""
        return self._call(lambda: self._store.subscribers(job_id))

    def cancel(self, job_id: str) -> bool:
        if not valid_job_id(job_id):
            return False
        answer = self._call(lambda: self._store.cancel(job_id))
        if answer:
            # This process's own, at once.
            self._call(lambda: self._subscriptions.cancelled(job_id))
        return answer

    def on_cancel(self, job_id: str, callback: Callable[[], Any]) -> None:
        self._call(lambda: self._subscriptions.on_cancel(job_id, callback))

    def forget(self, job_id: str, callback: Callable[[], Any]) -> None:
        # Not through _call: bookkeeping only, no I/O, safe from any thread
        # (the service calls it holding a lock of its own).
        if self._pid != os.getpid():
            return  # forked: these maps are the parent's, and _call resets them
        if self._subscriptions.forget_cancel(job_id, callback):
            # No job object of this process waits on it any more (a job
            # worker's run_job, in this process too, would still be there).
            with self._lock:
                self._publishing.pop(job_id, None)
                self._handed.add(job_id)  # its lease becomes the queue's

    def release(self, job_id: str) -> None:
        """This process runs ``job_id`` no more: its render has returned.

        Its lease is no longer renewed. Had its terminal event been stored,
        nothing changes; if not (Redis stayed away past ``outage_timeout``),
        the lease lapses and a worker ends the job with its ``error`` event
        once Redis answers again, rather than the job staying ``running``.
        Bookkeeping only, from any thread.

        .. versionadded:: 1.0.0
        """
        if self._pid != os.getpid():
            return
        with self._lock:
            self._publishing.pop(job_id, None)

    # -- channels ------------------------------------------------------------------

    def append(self, channel: str, event: Event) -> str:
        """Number ``event`` as ``channel``'s next, log it and send it to every follower.

        From any process with the same Redis: the number is given, the
        event logged (the log trimmed to ``max_events``, its keys' lifetime
        renewed to ``retention``) and sent to every follower in one Lua step.

        :returns: the event's id.
        :raises ValueError: ``channel`` is not a valid name, or ``event``
            carries an id or retry field of its own.
        :raises BrokerUnavailable: Redis stayed unreachable past
            ``outage_timeout``.

        .. versionadded:: 1.0
        """
        check_channel(channel)
        head, tail = split_at_id(event)
        level = self.coalescing.level(event.event) or ""
        epoch, seq = self._call(lambda: self._store.append(channel, head, tail, level))
        return f"{channel}-{epoch}.{seq}"

    def position(self, channel: str) -> Position:
        """Where ``channel``'s log is now: its epoch and its last event's number.

        .. versionadded:: 1.0
        """
        check_channel(channel)
        return self._call(lambda: self._store.position(channel))

    def follow(self, channel: str, subscriber: Subscriber, after: Position) -> None:
        """Send ``channel``'s logged events after ``after``, then every new one.

        The same promise as :meth:`MemoryBroker.follow
        <flask_sse_flush.brokers.MemoryBroker.follow>`, on any worker: the
        replay comes from the channel's log in Redis, live events through
        this process's one pub/sub connection.

        :raises ValueError: ``after`` is ahead of the channel's log.

        .. versionadded:: 1.0
        """
        check_channel(channel)
        self._call(lambda: self._subscriptions.follow(channel, subscriber, after))

    def unfollow(self, channel: str, subscriber: Subscriber) -> None:
        """Stop sending ``channel``'s events to ``subscriber``.

        .. versionadded:: 1.0
        """
        self._call(lambda: self._subscriptions.unfollow(channel, subscriber))

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Stop the reader and close this process's connections to Redis.

        Open streams of this process end. Further calls raise
        :class:`~flask_sse_flush.BrokerUnavailable`.
        """
        if self._pid != os.getpid() or self._store.closed:
            return

        def close() -> None:
            self._store.closed = True
            reader, self._reader = self._reader, None
            leases, self._leases = self._leases, None
            if reader is not None:
                reader.stop()
            if leases is not None:
                leases.stop()
            self._subscriptions.close_all()
            self._store.disconnect()
            if reader is not None:
                # The reader is ours to end: nothing of this broker outlives close().
                reader.join(self.socket_timeout + 1.0)
            if leases is not None:
                leases.join(self.socket_timeout + 1.0)

        self._call_even_closed(close)

    def _call_even_closed(self, function: Callable[[], None]) -> None:
        if gevent_is_active() and self._hub is not None:
            run_in_hub(self._hub, function)
        else:
            function()

    # -- leases --------------------------------------------------------------------

    def _keep_leases(self) -> None:
        """Start this process's lease keeper, once (call where the sockets live)."""
        with self._lock:
            if self._leases is not None or self._store.closed:
                return
            self._leases = Leases(
                self._store,
                running=self._running,
                handed=self._handed_now,
                handed_done=self._handed_renewed,
                renew_presence=self._subscriptions.presence.renew,
            )
        self._leases.start()

    def _running(self) -> set[str]:
        with self._lock:
            return set(self._publishing)

    def _handed_now(self) -> set[str]:
        with self._lock:
            return set(self._handed)

    def _handed_renewed(self, handed: set[str]) -> None:
        with self._lock:
            self._handed -= handed

    # -- the reader ----------------------------------------------------------------

    def _reader_wants_change(self) -> None:
        """Tell the reader the set of channels changed (starting it if need be)."""
        if self._reader is None:
            self._reader = Reader(self._store, self._subscriptions)
            self._reader.start()
        else:
            self._reader.wake()

    def _wake_reader(self) -> None:
        if self._reader is not None:
            self._reader.wake()
