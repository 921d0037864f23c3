"""The Redis broker: every job's log and status in Redis, for many workers and hosts.

Each job is two keys: a hash with its status and a Redis Stream with its
events, the stream entry ids derived from the event numbers (``0-<n>``), so a
publish retried after a lost reply is recognised and dropped, never stored
twice (and, while it runs, a list of the progress entries newer ones replaced,
which its log's bound drops next). One Lua script per change keeps the hash,
the stream, its bound and the live notification in one atomic step.

Live events reach the streams of a worker through **one** pub/sub
connection per process, whatever the number of streams: a reader (a
greenlet under gevent, a thread otherwise) subscribes to the channel of each
job the process serves and fans every event out to that job's local
streams. Replay comes from the Redis Stream, so a reconnecting client gets
exactly the events after its ``Last-Event-ID`` from whichever worker it
lands on. Commands go through a small blocking pool (``max_connections``),
so a worker holds at most ``max_connections + 1`` connections to Redis.

Why pub/sub for live events and not ``XREAD`` over every job's stream: a
blocking ``XREAD`` names every key it waits on, so each wake-up costs the
number of jobs served (10,000 keys re-sent per event at 10,000 streams),
and adding a job means interrupting it. A channel per job costs nothing per
event beyond the event itself, and a subscribe is one command. The stream
stays the source of truth: each subscription, and every reconnect of the
reader, catches up from it, so an event published while a channel was not
yet (or no longer) subscribed is never lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ...channels import Position, channel_gap_event, check_channel, new_epoch
from ...exceptions import BrokerUnavailable, JobEnded, StreamClosed, TooManyJobs, UnknownJob
from ...frames import PROGRESS_COALESCING, Coalescing, Event, split_at_id
from ...runtime import gevent_is_active, home_hub, new_lock, run_in_hub, start_greenlet
from ..base import (
    JobStatus,
    StatusChange,
    Subscriber,
    close_subscriber,
    fan_out,
    gap_event,
    valid_job_id,
)

__all__ = ["RedisBroker"]

log = logging.getLogger(__name__)

R = TypeVar("R")

#: One logged event: its number, its frame and its coalescing level.
_Entry = tuple[int, bytes, "str | None"]

_CREATE = """
local job, active = KEYS[1], KEYS[2]
if redis.call('EXISTS', job) == 1 then
  if redis.call('HGET', job, 'epoch') == ARGV[3] then return 'ok' end
  return 'taken'
end
local limit, owner, owner_limit = tonumber(ARGV[2]), ARGV[5], tonumber(ARGV[6])
if limit or owner_limit then
  -- Forget jobs whose keys are gone (lost data) or that ended unseen,
  -- and count the owner's.
  local owned = 0
  for _, id in ipairs(redis.call('SMEMBERS', active)) do
    local st = redis.call('HMGET', ARGV[4] .. id, 'state', 'final_seq', 'owner')
    if (not st[1]) or st[2] then
      redis.call('SREM', active, id)
    elseif owner ~= '' and st[3] == owner then
      owned = owned + 1
    end
  end
  if limit and redis.call('SCARD', active) >= limit then return 'full' end
  if owner_limit and owned >= owner_limit then return 'owner full' end
end
redis.call('HSET', job, 'state', 'queued', 'last_seq', 0, 'epoch', ARGV[3],
  'lost_through', 0, 'subs', 0)
if owner ~= '' then redis.call('HSET', job, 'owner', owner) end
redis.call('SADD', active, ARGV[1])
return 'ok'
"""

# KEYS: job hash, log stream, active set, replaced level entries (a list).
# ARGV: job id, seq, frame, level, final (1/0), max events, retention (ms),
# channel, may recreate (1/0), new epoch, owner ('' for none), then the
# status change as field, value pairs.
_PUBLISH = """
local job, stream, active, replaced = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local seq = tonumber(ARGV[2])
if redis.call('EXISTS', job) == 0 then
  if ARGV[9] ~= '1' then return 'unknown' end
  -- The store lost this job while it ran (a restart without persistence,
  -- an eviction): start its log again and say what was lost.
  redis.call('DEL', stream, replaced)
  redis.call('HSET', job, 'state', 'running', 'last_seq', seq - 1, 'epoch', ARGV[10],
    'lost_through', seq - 1, 'subs', 0)
  if ARGV[11] ~= '' then redis.call('HSET', job, 'owner', ARGV[11]) end
  redis.call('SADD', active, ARGV[1])
end
local st = redis.call('HMGET', job, 'last_seq', 'final_seq', 'lost_through')
local last = tonumber(st[1])
if st[2] then
  if seq <= tonumber(st[2]) then return 'dup' end
  return 'ended'
end
if seq <= last then return 'dup' end
if seq > last + 1 then
  -- Events between were lost (the store came back from an older state).
  redis.call('HSET', job, 'lost_through', seq - 1, 'epoch', ARGV[10])
end
redis.call('XADD', stream, '0-' .. seq, 'f', ARGV[3], 'l', ARGV[4])
for i = 12, #ARGV, 2 do redis.call('HSET', job, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', job, 'last_seq', seq)
-- Each level's newest entry is named in the hash ('lv:<level>'); the entry
-- it replaced waits in a list until the log next passes its bound. So a
-- publish deletes each entry once and never reads the whole log: O(1)
-- amortised, however long the log.
local level = ARGV[4]
if level ~= '' then
  local previous = redis.call('HGET', job, 'lv:' .. level)
  if previous then redis.call('RPUSH', replaced, previous) end
  redis.call('HSET', job, 'lv:' .. level, seq)
end
local bound = tonumber(ARGV[6])
if redis.call('XLEN', stream) > bound then
  -- Keep the newest event of each level and every other event; past the
  -- bound, drop the oldest and remember the newest number dropped.
  for _, n in ipairs(redis.call('LRANGE', replaced, 0, -1)) do
    redis.call('XDEL', stream, '0-' .. n)
  end
  redis.call('DEL', replaced)
  local over = redis.call('XLEN', stream) - bound
  if over > 0 then
    local lost = tonumber(redis.call('HGET', job, 'lost_through')) or 0
    for _, entry in ipairs(redis.call('XRANGE', stream, '-', '+', 'COUNT', over)) do
      redis.call('XDEL', stream, entry[1])
      local n = tonumber(string.sub(entry[1], 3))
      if n > lost then lost = n end
      local name = 'lv:' .. entry[2][4]
      if entry[2][4] ~= '' and tonumber(redis.call('HGET', job, name)) == n then
        redis.call('HDEL', job, name)
      end
    end
    redis.call('HSET', job, 'lost_through', lost)
  end
end
if ARGV[5] == '1' then
  -- No publish follows: what the list names stays in the frozen log.
  redis.call('DEL', replaced)
  redis.call('HSET', job, 'final_seq', seq)
  redis.call('SREM', active, ARGV[1])
  local ms = tonumber(ARGV[7])
  if ms > 0 then
    redis.call('PEXPIRE', job, ms)
    redis.call('PEXPIRE', stream, ms)
  else
    redis.call('DEL', job, stream)
  end
end
redis.call('PUBLISH', ARGV[8], ARGV[2] .. '\\n' .. ARGV[5] .. '\\n' .. ARGV[4] .. '\\n' .. ARGV[3])
return 'ok'
"""

_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

_CANCEL = """
local st = redis.call('HMGET', KEYS[1], 'state', 'final_seq', 'cancelled')
if (not st[1]) or st[2] then return 0 end
if st[3] then return 1 end
redis.call('HSET', KEYS[1], 'cancelled', 1)
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""

_COUNT_SUBSCRIBERS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = redis.call('HINCRBY', KEYS[1], 'subs', ARGV[1])
if n < 0 then redis.call('HSET', KEYS[1], 'subs', 0); n = 0 end
return n
"""

# A channel is a hash (its epoch and last number) and a Redis Stream (its
# log, entry ids 0-<n>, trimmed to max events by XADD itself: O(1) a publish).
# KEYS: meta hash, log stream. ARGV: new epoch, channel name, frame head,
# frame tail, max events, retention (ms), pub/sub channel, level.
_APPEND = """
local meta, log = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  -- A new log, or one the store lost: a new epoch, so resumes can tell.
  epoch = ARGV[1]
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch, 'last', 0)
end
local seq = redis.call('HINCRBY', meta, 'last', 1)
local frame = ARGV[3] .. 'id: ' .. ARGV[2] .. '-' .. epoch .. '.' .. seq .. '\\n' .. ARGV[4]
redis.call('XADD', log, 'MAXLEN', ARGV[5], '0-' .. seq, 'f', frame, 'l', ARGV[8])
local ms = tonumber(ARGV[6])
if ms > 0 then
  redis.call('PEXPIRE', meta, ms)
  redis.call('PEXPIRE', log, ms)
else
  redis.call('DEL', log)
  redis.call('PEXPIRE', meta, 60000)
end
redis.call('PUBLISH', ARGV[7], seq .. '\\n' .. epoch .. '\\n' .. ARGV[8] .. '\\n' .. frame)
return {epoch, seq}
"""

# KEYS: meta hash, log stream. ARGV: new epoch, retention (ms).
_POSITION = """
local st = redis.call('HMGET', KEYS[1], 'epoch', 'last')
if st[1] then return {st[1], tonumber(st[2])} end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'last', 0)
local ms = tonumber(ARGV[2])
redis.call('PEXPIRE', KEYS[1], ms > 0 and ms or 60000)
return {ARGV[1], 0}
"""

_UNAVAILABLE = "the event store (Redis) is unavailable"


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8")


def _status(job_id: str, fields: dict[bytes, bytes]) -> JobStatus | None:
    if not fields:
        return None
    state = _text(fields.get(b"state")) or "queued"
    progress = fields.get(b"progress")
    result = fields.get(b"result")
    final = fields.get(b"final_seq")
    return JobStatus(
        id=job_id,
        state=state,  # type: ignore[arg-type]
        progress=None if progress is None else int(progress),
        phase=_text(fields.get(b"phase")),
        result=None if result is None else json.loads(result),
        error=_text(fields.get(b"error")),
        last_seq=int(fields.get(b"last_seq", b"0")),
        final_seq=None if final is None else int(final),
        lost_through=int(fields.get(b"lost_through", b"0")),
        owner=_text(fields.get(b"owner")),
    )


def _change_args(change: StatusChange | None) -> list[str]:
    args: list[str] = []
    for name, value in (change or {}).items():
        if value is None:
            continue
        if name == "result":
            value = json.dumps(value, separators=(",", ":"))
        args += [name, str(value)]
    return args


def _entries(raw: list[Any]) -> list[_Entry]:
    entries = []
    for entry_id, fields in raw:
        seq = int(entry_id.split(b"-", 1)[1])
        level = fields.get(b"l") or b""
        entries.append((seq, fields[b"f"], level.decode("utf-8") or None))
    return entries


@dataclass(eq=False)
class _Local:
    """The streams of one job in this process, fed by the reader."""

    job_id: str
    channel: bytes
    lock: Any
    # Streams that have every event up to `seq`.
    members: dict[Subscriber, None] = field(default_factory=dict)
    # Streams that replayed up to their own number, which may be behind or
    # ahead of `seq`; they join `members` once `seq` has passed it.
    joining: dict[Subscriber, int] = field(default_factory=dict)
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
                self.members[subscriber] = None

    def drop(self, subscriber: Subscriber) -> None:
        self.members.pop(subscriber, None)
        self.joining.pop(subscriber, None)

    def take_all(self) -> list[Subscriber]:
        """Detach and return every stream of the job here; takes the lock."""
        with self.lock:
            subscribers = [*self.members, *self.joining]
            self.members.clear()
            self.joining.clear()
        return subscribers


def _replay(subscriber: Subscriber, status: JobStatus, entries: list[_Entry], last: int) -> int:
    """Send ``subscriber`` the logged events after ``last`` (a gap event first if
    some were lost); return the number it then has everything up to."""
    if status.lost_through > last:
        subscriber.deliver(gap_event(status, last).frame, None)
    for seq, frame, level in entries:
        if seq > last:
            subscriber.deliver(frame, level)
            last = seq
    return max(last, status.lost_through)


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

    :param url: the Redis URL, e.g. ``redis://127.0.0.1:6379/0``.
    :param prefix: the start of every key and channel name.
    :param retention: seconds a job's keys are kept after it ends.
    :param max_events: the most events kept per job (see ``MemoryBroker``).
    :param coalesce: which event types are levels; progress by default.
    :param outage_timeout: seconds Redis may be unreachable before jobs'
        publishes fail and open streams end with an ``error`` event.
    :param request_timeout: seconds a request's call retries while Redis
        is unreachable before a ``503``.
    :param max_connections: command connections per process (the reader
        adds one).
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
        self.coalescing = Coalescing.of(coalesce)
        self.outage_timeout = outage_timeout
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.socket_timeout = socket_timeout
        self._errors: tuple[type[BaseException], ...] = (
            redis.ConnectionError,
            redis.TimeoutError,
            OSError,
        )
        redis.ConnectionPool.from_url(url)  # a malformed URL fails here
        self._reset()

    def _reset(self) -> None:
        """Forget every connection and local stream (new, or after a fork)."""
        self._pid = os.getpid()
        self._hub: Any = None
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._lock = new_lock()
        self._locals: dict[str, _Local] = {}
        self._followed: dict[str, _Local] = {}  # channels, by name
        self._cancel_callbacks: dict[str, list[Callable[[], Any]]] = {}
        # The jobs this process publishes, and their owners: if the store
        # loses one, its next publish rebuilds it, owner included.
        self._publishing: dict[str, str | None] = {}
        self._down_since: float | None = None
        self._reader: _Reader | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<RedisBroker {self.url!r} prefix={self.prefix!r}>"

    # -- plumbing ----------------------------------------------------------------

    def _call(self, function: Callable[[], R]) -> R:
        """Run ``function`` where the broker's sockets live (the worker's hub)."""
        if self._pid != os.getpid():
            self._reset()  # forked: the parent's sockets and reader are not ours
        if self._closed:
            raise BrokerUnavailable("the RedisBroker was closed")
        if gevent_is_active():
            if self._hub is None:
                self._hub = home_hub()
            return run_in_hub(self._hub, function)
        return function()

    def _connect(self) -> Any:
        if self._client is None:
            redis = self._redis
            pool = redis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=self.max_connections,
                timeout=self.request_timeout,
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=min(2.0, self.socket_timeout),
                protocol=2,
                retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
                client_name=self.client_name,
            )
            client = redis.Redis(connection_pool=pool)
            self._scripts = {
                name: client.register_script(source)
                for name, source in (
                    ("create", _CREATE),
                    ("publish", _PUBLISH),
                    ("update", _UPDATE),
                    ("cancel", _CANCEL),
                    ("count", _COUNT_SUBSCRIBERS),
                    ("append", _APPEND),
                    ("position", _POSITION),
                )
            }
            self._client = client
        return self._client

    @property
    def client_name(self) -> str:
        """The name this process's connections carry in Redis's ``CLIENT LIST``."""
        return f"{self.prefix.rstrip(':')}:{self._pid}"

    def _run(self, command: Callable[[Any], R], *, persistent: bool = False) -> R:
        """Run a Redis command, retrying while Redis is unreachable.

        ``persistent`` (a job's publish) retries for ``outage_timeout``;
        a request's call for ``request_timeout``, or once when Redis has
        been down longer than ``outage_timeout`` already.
        """
        started = time.monotonic()
        delay = 0.05
        while True:
            try:
                result = command(self._connect())
            except self._errors as exc:
                if self._closed:
                    raise BrokerUnavailable("the RedisBroker was closed") from exc
                now = time.monotonic()
                if self._down_since is None:
                    self._down_since = now
                    log.warning("Redis unreachable (%s); retrying", exc)
                limit = self.outage_timeout if persistent else self.request_timeout
                if now - started >= limit or (
                    not persistent and now - self._down_since >= self.outage_timeout
                ):
                    raise BrokerUnavailable(_UNAVAILABLE) from exc
                time.sleep(delay)  # gevent's under gevent: the hub goes on
                delay = min(delay * 2, 1.0)
            except self._redis.RedisError as exc:
                log.error("Redis refused a command: %s", exc)
                raise BrokerUnavailable(_UNAVAILABLE) from exc
            else:
                if self._down_since is not None:
                    log.warning("Redis answers again")
                    self._down_since = None
                return result

    def _key(self, kind: str, job_id: str) -> str:
        return f"{self.prefix}{kind}:{job_id}"

    def _channel(self, job_id: str) -> bytes:
        return f"{self.prefix}ev:{job_id}".encode()

    @property
    def _cancel_channel(self) -> bytes:
        return f"{self.prefix}cancel".encode()

    def _read_log(self, job_id: str, after: int) -> tuple[JobStatus | None, list[_Entry]]:
        """The job's status and its logged events after ``after``, read atomically."""

        def read(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=True)
            pipe.hgetall(self._key("job", job_id))
            pipe.xrange(self._key("log", job_id), min=f"0-{after + 1}")
            return list(pipe.execute())

        fields, raw = self._run(read)
        status = _status(job_id, fields)
        return status, ([] if status is None else _entries(raw))

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
        epoch = os.urandom(8).hex()
        keys = [self._key("job", job_id), f"{self.prefix}active"]
        args = [job_id, "" if limit is None else str(limit), epoch, f"{self.prefix}job:"]
        args += ["" if owner is None else owner]
        args += ["" if owner is None or owner_limit is None else str(owner_limit)]
        answer = self._run(lambda client: self._scripts["create"](keys=keys, args=args))
        if answer == b"taken":
            raise ValueError(f"job {job_id!r} exists already")
        if answer == b"full":
            assert limit is not None
            raise TooManyJobs.at_limit(limit)
        if answer == b"owner full":
            assert owner_limit is not None
            raise TooManyJobs.for_owner(owner_limit)
        with self._lock:
            self._publishing[job_id] = owner
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
        keys = [self._key("job", job_id), self._key("log", job_id), f"{self.prefix}active"]
        keys.append(self._key("old", job_id))
        args: list[Any] = [
            job_id,
            seq,
            frame,
            level or "",
            "1" if final else "0",
            self.max_events,
            round(self.retention * 1000),
            self._channel(job_id),
            "1" if job_id in self._publishing else "0",
            os.urandom(8).hex(),
            self._publishing.get(job_id) or "",
            *_change_args(change),
        ]
        answer = self._run(
            lambda client: self._scripts["publish"](keys=keys, args=args), persistent=True
        )
        if answer == b"unknown":
            raise UnknownJob(job_id)
        if answer == b"ended":
            raise JobEnded(f"job {job_id!r} has ended; it takes no more events")
        if final:
            with self._lock:
                self._publishing.pop(job_id, None)
                self._cancel_callbacks.pop(job_id, None)

    def update(self, job_id: str, change: StatusChange) -> JobStatus:
        def update() -> JobStatus:
            key = self._key("job", job_id)
            args = _change_args(change)
            found = self._run(
                lambda client: (
                    self._scripts["update"](keys=[key], args=args) if args else client.exists(key)
                ),
                persistent=True,
            )
            status = self._status(job_id) if found else None
            if status is None:
                raise UnknownJob(job_id)
            if not status.ended:
                with self._lock:
                    self._publishing[job_id] = status.owner  # e.g. run_job in a job worker
            return status

        return self._call(update)

    def status(self, job_id: str) -> JobStatus | None:
        if not valid_job_id(job_id):
            return None
        return self._call(lambda: self._status(job_id))

    def _status(self, job_id: str) -> JobStatus | None:
        fields = self._run(lambda client: client.hgetall(self._key("job", job_id)))
        return _status(job_id, fields)

    def subscribe(self, job_id: str, subscriber: Subscriber, after: int = 0) -> bool:
        if not valid_job_id(job_id):
            return False
        return self._call(lambda: self._subscribe(job_id, subscriber, after))

    def _subscribe(self, job_id: str, subscriber: Subscriber, after: int) -> bool:
        status, entries = self._read_log(job_id, after)
        if status is None:
            return False
        # A number ahead of the log (the service refuses those) means "from now on".
        last = min(after, status.last_seq)
        counted = gone = False
        try:
            while True:
                last = _replay(subscriber, status, entries, last)
                if status.final_seq is not None:
                    break  # the replay held the terminal event
                if not counted:
                    self._count_subscribers(job_id, +1)
                    counted = True
                if self._join(job_id, subscriber, last):
                    return True
                # The reader delivered events past our replay meanwhile: read on.
                status, entries = self._read_log(job_id, last)
                if status is None:
                    break
        except StreamClosed:
            gone = True
        if counted:
            self._count_subscribers(job_id, -1)
        if not gone:
            close_subscriber(subscriber)
        return True

    def _count_subscribers(self, job_id: str, delta: int) -> int:
        key = self._key("job", job_id)
        count = self._run(lambda client: self._scripts["count"](keys=[key], args=[delta]))
        return int(count)

    def _join(self, job_id: str, subscriber: Subscriber, last: int) -> bool:
        """Attach a stream that has the job's events up to ``last``, if the reader allows.

        ``False`` when the reader has delivered past ``last`` already: the
        caller replays the difference and asks again.
        """
        with self._lock:  # so the job's local entry cannot be dropped meanwhile
            local = self._locals.get(job_id)
            new = local is None
            if local is None:
                local = self._locals[job_id] = _Local(job_id, self._channel(job_id), new_lock())
            with local.lock:
                joined = not local.synced or local.seq <= last
                if joined:
                    # The reader catches this stream up from `last`, or has
                    # not passed it yet: every later event reaches it.
                    local.joining[subscriber] = last
        if new:
            self._reader_wants_change()
        return joined

    def unsubscribe(self, job_id: str, subscriber: Subscriber) -> int:
        return self._call(lambda: self._unsubscribe(job_id, subscriber))

    def _unsubscribe(self, job_id: str, subscriber: Subscriber) -> int:
        # No I/O under these locks: under gevent they are native locks, and a
        # greenlet that yielded while holding one would freeze the hub.
        attached = emptied = False
        with self._lock:
            local = self._locals.get(job_id)
            if local is not None:
                with local.lock:
                    attached = subscriber in local.members or subscriber in local.joining
                    local.drop(subscriber)
                    if not local.count():
                        del self._locals[job_id]
                        emptied = True
        if emptied:
            self._reader_wants_change()
        try:
            if not attached:
                return self._subscribers(job_id)
            return self._count_subscribers(job_id, -1)
        except BrokerUnavailable:
            return 1  # unknown while Redis is away: never count a job as abandoned

    def subscribers(self, job_id: str) -> int:
        """How many streams, on every worker, are attached to a job now."""
        return self._call(lambda: self._subscribers(job_id))

    def _subscribers(self, job_id: str) -> int:
        count = self._run(lambda client: client.hget(self._key("job", job_id), "subs"))
        return 0 if count is None else max(0, int(count))

    def cancel(self, job_id: str) -> bool:
        if not valid_job_id(job_id):
            return False
        keys = [self._key("job", job_id)]
        args = [self._cancel_channel, job_id]
        answer = self._call(lambda: self._run(lambda c: self._scripts["cancel"](keys, args)))
        if answer:
            self._call(lambda: self._cancelled(job_id))  # this process's own, at once
        return bool(answer)

    def on_cancel(self, job_id: str, callback: Callable[[], Any]) -> None:
        self._call(lambda: self._on_cancel(job_id, callback))

    def _on_cancel(self, job_id: str, callback: Callable[[], Any]) -> None:
        with self._lock:
            self._cancel_callbacks.setdefault(job_id, []).append(callback)
        self._reader_wants_change()
        fields = self._run(
            lambda client: client.hmget(self._key("job", job_id), "state", "cancelled")
        )
        if fields[0] is None:
            with self._lock:
                self._cancel_callbacks.pop(job_id, None)
            raise UnknownJob(job_id)
        if fields[1] is not None:
            self._cancelled(job_id)  # cancelled before we listened

    def forget(self, job_id: str, callback: Callable[[], Any]) -> None:
        # Not through _call: bookkeeping only, no I/O, safe from any thread
        # (the service calls it holding a lock of its own).
        if self._pid != os.getpid():
            return  # forked: these maps are the parent's, and _call resets them
        with self._lock:
            callbacks = self._cancel_callbacks.get(job_id, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                # No job object of this process waits on it any more (a job
                # worker's run_job, in this process too, would still be there).
                self._cancel_callbacks.pop(job_id, None)
                self._publishing.pop(job_id, None)

    def _cancelled(self, job_id: str) -> None:
        with self._lock:
            callbacks = self._cancel_callbacks.pop(job_id, [])
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("cancel callback of job %s failed", job_id)

    # -- channels ------------------------------------------------------------------

    @property
    def _channel_prefix(self) -> bytes:
        return f"{self.prefix}ch:".encode()

    def _channel_keys(self, name: str) -> list[str]:
        return [self._key("chan", name), self._key("clog", name)]

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
        """
        check_channel(channel)
        head, tail = split_at_id(event)
        level = self.coalescing.level(event.event) or ""
        keys = self._channel_keys(channel)
        args: list[Any] = [
            new_epoch(),
            channel,
            head,
            tail,
            self.max_events,
            round(self.retention * 1000),
            self._channel_prefix + channel.encode(),
            level,
        ]
        epoch, seq = self._call(
            lambda: self._run(
                lambda client: self._scripts["append"](keys=keys, args=args), persistent=True
            )
        )
        return f"{channel}-{epoch.decode()}.{int(seq)}"

    def position(self, channel: str) -> Position:
        """Where ``channel``'s log is now: its epoch and its last event's number."""
        check_channel(channel)
        keys = self._channel_keys(channel)
        args = [new_epoch(), round(self.retention * 1000)]
        epoch, seq = self._call(
            lambda: self._run(lambda client: self._scripts["position"](keys=keys, args=args))
        )
        return Position(epoch.decode(), int(seq))

    def _read_channel(self, name: str, after: int) -> tuple[str | None, int, list[_Entry]]:
        """A channel's epoch, last number and logged events after ``after``, read at once."""
        meta, log_key = self._channel_keys(name)

        def read(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=True)
            pipe.hmget(meta, "epoch", "last")
            pipe.xrange(log_key, min=f"0-{after + 1}")
            return list(pipe.execute())

        (epoch, last), raw = self._run(read)
        if epoch is None:
            return None, 0, []
        return epoch.decode(), int(last), _entries(raw)

    def follow(self, channel: str, subscriber: Subscriber, after: Position) -> None:
        """Send ``channel``'s logged events after ``after``, then every new one.

        The same promise as :meth:`MemoryBroker.follow
        <flask_sse_flush.brokers.MemoryBroker.follow>`, on any worker: the
        replay comes from the channel's log in Redis, live events through
        this process's one pub/sub connection.

        :raises ValueError: ``after`` is ahead of the channel's log.
        """
        check_channel(channel)
        self._call(lambda: self._follow(channel, subscriber, after))

    def _follow(self, name: str, subscriber: Subscriber, after: Position) -> None:
        epoch, last, entries = self._read_channel(name, after.seq)
        if epoch is None:
            # No log (expired since the stream asked for its place): start one.
            self._run(
                lambda client: self._scripts["position"](
                    keys=self._channel_keys(name), args=[new_epoch(), round(self.retention * 1000)]
                )
            )
            epoch, last, entries = self._read_channel(name, after.seq)
            assert epoch is not None
        same = epoch == after.epoch
        if same and after.seq > last:
            raise ValueError(f"the cursor is ahead of channel {name!r}")
        if not same and after.seq:
            epoch, last, entries = self._read_channel(name, 0)
            assert epoch is not None
        start = after.seq if same else 0
        try:
            first = entries[0][0] if entries else last + 1
            if not same or (first > start + 1 and start < last):
                gap = channel_gap_event(name, after, Position(epoch, first - 1))
                subscriber.deliver(gap.frame, None)
            while True:
                for seq, frame, level in entries:
                    if seq > start:
                        subscriber.deliver(frame, level)
                        start = seq
                start = max(start, last)
                if self._join_channel(name, subscriber, epoch, start):
                    return
                # The reader delivered past our replay meanwhile: read on.
                now_epoch, last, entries = self._read_channel(name, start)
                if now_epoch != epoch:
                    return  # the log started again: the reader catches us up
        except StreamClosed:
            return

    def _join_channel(self, name: str, subscriber: Subscriber, epoch: str, last: int) -> bool:
        with self._lock:
            local = self._followed.get(name)
            new = local is None
            if local is None:
                pubsub = self._channel_prefix + name.encode()
                local = self._followed[name] = _Local(name, pubsub, new_lock(), name=name)
            with local.lock:
                joined = not local.synced or (local.epoch == epoch and local.seq <= last)
                if joined:
                    local.joining[subscriber] = last
        if new:
            self._reader_wants_change()
        return joined

    def unfollow(self, channel: str, subscriber: Subscriber) -> None:
        """Stop sending ``channel``'s events to ``subscriber``."""
        self._call(lambda: self._unfollow(channel, subscriber))

    def _unfollow(self, name: str, subscriber: Subscriber) -> None:
        emptied = False
        with self._lock:
            local = self._followed.get(name)
            if local is not None:
                with local.lock:
                    local.drop(subscriber)
                    if not local.count():
                        del self._followed[name]
                        emptied = True
        if emptied:
            self._reader_wants_change()

    def _on_channel_message(self, local: _Local, data: bytes) -> None:
        seq_text, epoch_text, level_text, frame = data.split(b"\n", 3)
        seq = int(seq_text)
        with local.lock:
            if not local.synced:
                return  # its catch-up, to come, reads the log
            gap = epoch_text.decode() != local.epoch or seq > local.seq + 1
            if not gap:
                if seq <= local.seq:
                    return  # a catch-up delivered it already
                local.seq = seq
                members = list(local.members)
                joining = [s for s, last in local.joining.items() if last < seq]
                local.promote()
        if gap:
            # After a reconnect, or a log that started again: read what we missed.
            self._channel_catch_up(local)
            return
        assert local.name is not None
        level = level_text.decode() or None
        for subscriber in fan_out(local.name, [*members, *joining], frame, level):
            self._unfollow(local.name, subscriber)

    def _channel_catch_up(self, local: _Local) -> None:
        """Bring a channel's local followers up to date from its log; mark it synced."""
        name = local.name
        assert name is not None
        while True:
            with local.lock:
                marks = list(local.joining.values())
                if local.members or local.synced:
                    marks.append(local.seq)
                start = min(marks, default=local.seq)
            epoch, last, entries = self._read_channel(name, start)
            with local.lock:
                if local.epoch is not None and epoch != local.epoch:
                    # A new log: every follower's place is before its first event.
                    local.epoch, local.seq, local.synced = epoch, 0, False
                    for subscriber in list(local.joining):
                        local.joining[subscriber] = 0
                    for subscriber in list(local.members):
                        local.joining[subscriber] = 0
                    local.members.clear()
                    continue
                local.epoch = epoch
                targets: list[tuple[Subscriber, int]] = [
                    *((s, local.seq) for s in local.members),
                    *local.joining.items(),
                ]
                if all(mark >= start for _, mark in targets):
                    local.seq = max(local.seq, last)
                    local.synced = True
                    for subscriber, mark in targets:
                        if subscriber in local.joining:
                            local.joining[subscriber] = max(mark, local.seq)
                    local.promote()
                    break
        gone: list[Subscriber] = []
        for subscriber, mark in targets:
            try:
                for seq, frame, level in entries:
                    if seq > mark:
                        subscriber.deliver(frame, level)
            except StreamClosed:
                gone.append(subscriber)
            except Exception:
                log.exception("follower %r of channel %s failed", subscriber, name)
                gone.append(subscriber)
        for subscriber in gone:
            self._unfollow(name, subscriber)

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Stop the reader and close this process's connections to Redis.

        Open streams of this process end. Further calls raise
        :class:`~flask_sse_flush.BrokerUnavailable`.
        """
        if self._pid != os.getpid() or self._closed:
            return

        def close() -> None:
            self._closed = True
            reader, self._reader = self._reader, None
            if reader is not None:
                reader.stop()
            with self._lock:
                locals_ = [*self._locals.values(), *self._followed.values()]
                self._locals, self._followed = {}, {}
            for local in locals_:
                for subscriber in local.take_all():
                    close_subscriber(subscriber)
            if self._client is not None:
                self._client.connection_pool.disconnect()
            if reader is not None:
                # The reader is ours to end: nothing of this broker outlives close().
                reader.join(self.socket_timeout + 1.0)

        self._call_even_closed(close)

    def _call_even_closed(self, function: Callable[[], None]) -> None:
        if gevent_is_active() and self._hub is not None:
            run_in_hub(self._hub, function)
        else:
            function()

    # -- the reader ----------------------------------------------------------------

    def _reader_wants_change(self) -> None:
        """Tell the reader the set of channels changed (starting it if need be)."""
        if self._reader is None:
            self._reader = _Reader(self)
            self._reader.start()
        else:
            self._reader.wake()

    def _wanted_channels(self) -> set[bytes]:
        with self._lock:
            wanted = {local.channel for local in self._locals.values()}
            wanted.update(local.channel for local in self._followed.values())
            if self._cancel_callbacks:
                wanted.add(self._cancel_channel)
        return wanted

    def _unsynced(self) -> list[_Local]:
        with self._lock:
            locals_ = [*self._locals.values(), *self._followed.values()]
        return [local for local in locals_ if not local.synced]

    def _on_message(self, channel: bytes, data: bytes) -> None:
        if channel == self._cancel_channel:
            self._cancelled(data.decode("utf-8", "replace"))
            return
        if channel.startswith(self._channel_prefix):
            followed = self._followed.get(channel[len(self._channel_prefix) :].decode())
            if followed is not None:
                self._on_channel_message(followed, data)
            return
        job_id = channel[len(self.prefix) + 3 :].decode("utf-8", "replace")
        local = self._locals.get(job_id)
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
                local.seq = seq
                members = list(local.members)
                joining = [s for s, last in local.joining.items() if last < seq]
                local.promote()
        if gap:
            # Only after a reconnect or a lost store: the log has what we missed.
            self._catch_up(local)
            return
        level = level_text.decode("utf-8") or None
        gone = fan_out(job_id, [*members, *joining], frame, level)
        if final:
            self._ended(local)
        elif gone:
            for subscriber in gone:
                self._unsubscribe(job_id, subscriber)

    def _catch_up(self, local: _Local) -> None:
        """Bring a job's local streams up to date from its log; mark it synced."""
        if local.name is not None:
            self._channel_catch_up(local)
            return
        while True:
            with local.lock:
                marks = list(local.joining.values())
                if local.members or local.synced:
                    marks.append(local.seq)
                start = min(marks, default=local.seq)
            status, entries = self._read_log(local.job_id, start)
            if status is None:
                # Lost by the store: its publisher starts the log again, and
                # the next event brings a catch-up that reports the gap.
                with local.lock:
                    local.synced = True
                return
            with local.lock:
                targets: list[tuple[Subscriber, int]] = [
                    *((s, local.seq) for s in local.members),
                    *local.joining.items(),
                ]
                if all(last >= start for _, last in targets):
                    # Everyone is covered by this read: from here on, live.
                    local.seq = max(local.seq, status.last_seq)
                    local.synced = True
                    for subscriber, last in targets:
                        if subscriber in local.joining:
                            local.joining[subscriber] = max(last, local.seq)
                    local.promote()
                    break
            # A stream joined behind our read meanwhile: read from its place.
        gone: list[Subscriber] = []
        for subscriber, last in targets:
            try:
                _replay(subscriber, status, entries, last)
            except StreamClosed:
                gone.append(subscriber)
            except Exception:
                log.exception("subscriber %r of job %s failed", subscriber, local.job_id)
                gone.append(subscriber)
        if status.final_seq is not None:
            self._ended(local)
        else:
            for subscriber in gone:
                self._unsubscribe(local.job_id, subscriber)

    def _ended(self, local: _Local) -> None:
        with self._lock:
            if self._locals.get(local.job_id) is local:
                del self._locals[local.job_id]
        for subscriber in local.take_all():
            close_subscriber(subscriber)
        if self._reader is not None:
            self._reader.wake()

    def _resync_all(self) -> None:
        with self._lock:
            locals_ = [*self._locals.values(), *self._followed.values()]
            jobs = list(self._cancel_callbacks)
        for local in locals_:
            with local.lock:
                local.synced = False
        # Cancels published while we were away reached no one.
        for job_id in jobs:
            if self._run(self._cancel_flag(job_id)) is not None:
                self._cancelled(job_id)

    def _cancel_flag(self, job_id: str) -> Callable[[Any], Any]:
        key = self._key("job", job_id)
        return lambda client: client.hget(key, "cancelled")

    def _fail_all(self) -> None:
        """Redis stayed away past ``outage_timeout``: end every local stream with an error."""
        with self._lock:
            locals_ = [*self._locals.values(), *self._followed.values()]
            self._locals, self._followed = {}, {}
        if not locals_:
            return
        # Not the job's end: no id (the browser resumes from its last event)
        # and "reconnect": true, so a client can tell it from a job's error.
        frame = Event(
            {"message": f"{_UNAVAILABLE}; reconnect to resume", "reconnect": True}, event="error"
        ).frame
        log.error(
            "Redis unreachable for %.0f s: ending %d jobs' streams",
            self.outage_timeout,
            len(locals_),
        )
        for local in locals_:
            for subscriber in local.take_all():
                with contextlib.suppress(Exception):
                    subscriber.deliver(frame, None)
                close_subscriber(subscriber)


class _Reader:
    """The one pub/sub connection of a process, and the loop that reads it.

    It alone touches the connection: other code changes the wanted set of
    channels and wakes it through a socket pair, so a new job's channel is
    subscribed at once rather than at the next poll.
    """

    #: Seconds of silence before the reader pings Redis, and twice that
    #: without an answer before it counts the connection as dead.
    HEALTH_INTERVAL = 2.0

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopped = False
        self._connection: Any = None
        self._thread: Any = None

    def start(self) -> None:
        self._thread = start_greenlet(self.run, name="flask-sse-flush redis reader")

    def join(self, timeout: float) -> None:
        """Wait until the reader has ended (after :meth:`stop`)."""
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the Redis reader did not end within %s s", timeout)

    def wake(self) -> None:
        # A full pair means a wake-up is pending already; closed, we are stopping.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def stopping(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        self._stopped = True
        self.wake()

    def run(self) -> None:
        broker = self.broker
        delay = 0.05
        down_since: float | None = None
        failed = False
        while not self._stopped:
            try:
                self._connect()
                if down_since is not None:
                    log.warning("Redis reader connected again")
                down_since, failed, delay = None, False, 0.05
                broker._resync_all()
                self._serve()
            except (*broker._errors, BrokerUnavailable, broker._redis.RedisError) as exc:
                if self.stopping():
                    break
                now = time.monotonic()
                if down_since is None:
                    down_since = now
                    if broker._down_since is None:
                        broker._down_since = now
                    log.warning("Redis reader lost its connection (%s); reconnecting", exc)
                if not failed and now - down_since >= broker.outage_timeout:
                    failed = True
                    broker._fail_all()
                self._pause(delay)
                delay = min(delay * 2, 1.0)
            except Exception:
                log.exception("the Redis reader failed; restarting it")
                self._pause(delay)
            finally:
                self._disconnect()
        self._wake_r.close()
        self._wake_w.close()

    def _connect(self) -> None:
        client = self.broker._connect()
        pool = client.connection_pool
        self._connection = pool.connection_class(**pool.connection_kwargs)
        self._connection.connect()

    def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.disconnect()

    def _serve(self) -> None:
        connection = self._connection
        subscribed: set[bytes] = set()
        last_heard = time.monotonic()
        pinged = False
        while not self._stopped:
            wanted = self.broker._wanted_channels()
            new, old = wanted - subscribed, subscribed - wanted
            if new:
                connection.send_command("SUBSCRIBE", *new)
                subscribed |= new
            if old:
                connection.send_command("UNSUBSCRIBE", *old)
                subscribed -= old
            # A job whose last stream left and whose next one came before
            # this loop ran keeps its channel, so no new confirmation will
            # catch its new streams up: do it now (a second catch-up, on a
            # confirmation still to come, repeats nothing).
            for local in self.broker._unsynced():
                if local.channel in subscribed and local.channel not in new:
                    self.broker._catch_up(local)
            if not connection.can_read(timeout=0):
                ready, _, _ = select.select(
                    [connection._sock, self._wake_r], [], [], self.HEALTH_INTERVAL
                )
                if self._wake_r in ready:
                    self._drain()
                if connection._sock not in ready:
                    if not ready:
                        if pinged and time.monotonic() - last_heard > 2 * self.HEALTH_INTERVAL:
                            raise self.broker._redis.ConnectionError("no answer to PING")
                        if subscribed:
                            connection.send_command("PING")
                            pinged = True
                    continue
            for message in self._messages(connection):
                last_heard, pinged = time.monotonic(), False
                self._handle(message)

    def _messages(self, connection: Any) -> Iterator[list[Any]]:
        yield connection.read_response()
        while connection.can_read(timeout=0):
            yield connection.read_response()

    def _pause(self, seconds: float) -> None:
        """Wait before reconnecting; a stop() (or any wake-up) cuts it short."""
        with contextlib.suppress(OSError):
            ready, _, _ = select.select([self._wake_r], [], [], seconds)
            if ready:
                self._drain()  # or the next pause would not wait at all

    def _drain(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _handle(self, message: Any) -> None:
        if not isinstance(message, list) or len(message) < 2:
            return
        kind, channel = message[0], message[1]
        broker = self.broker
        if kind == b"message":
            broker._on_message(channel, message[2])
        elif kind == b"subscribe" and channel != broker._cancel_channel:
            if channel.startswith(broker._channel_prefix):
                local = broker._followed.get(channel[len(broker._channel_prefix) :].decode())
            else:
                local = broker._locals.get(channel[len(broker.prefix) + 3 :].decode())
            if local is not None:
                broker._catch_up(local)
