"""The store: this process's command connections to Redis, its keys and its Lua scripts.

Each job is two keys: a hash with its status and a Redis Stream with its
events, the stream entry ids derived from the event numbers (``0-<n>``), so a
publish retried after a lost reply is recognised and dropped, never stored
twice (and, while it runs, a list of the progress entries newer ones replaced,
which its log's bound drops next). One Lua script per change (``scripts/``,
one ``.lua`` file each) keeps the hash, the stream, its bound and the live
notification in one atomic step. An event channel is a hash and a stream too.

Commands go through a small blocking pool (``max_connections``) and one
retry loop. The store knows the names of the keys and channels and what the
scripts answer; it knows nothing of this process's streams or of the reader.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote

from ...channels import Position, new_epoch
from ...exceptions import BrokerUnavailable, JobEnded, TooManyJobs, UnknownJob
from ...runtime import new_lock
from ..base import JobStatus, StatusChange

__all__ = ["UNAVAILABLE", "Entry", "Store"]

log = logging.getLogger(__name__)

R = TypeVar("R")

#: One logged event: its number, its frame and its coalescing level.
Entry = tuple[int, bytes, "str | None"]

UNAVAILABLE = "the event store (Redis) is unavailable"


@functools.cache
def _lua(name: str) -> str:
    """The source of ``scripts/<name>.lua``, read once per process."""
    return (importlib.resources.files(__package__) / "scripts" / f"{name}.lua").read_text("utf-8")


@dataclass(frozen=True)
class _Scripts:
    """The Lua scripts, registered with one client (each runs by its SHA1)."""

    create: Any
    publish: Any
    update: Any
    cancel: Any
    count_subscribers: Any
    append: Any
    position: Any
    renew: Any
    lapsed: Any

    @classmethod
    def register(cls, client: Any) -> _Scripts:
        return cls(
            create=client.register_script(_lua("create")),
            publish=client.register_script(_lua("publish")),
            update=client.register_script(_lua("update")),
            cancel=client.register_script(_lua("cancel")),
            count_subscribers=client.register_script(_lua("count_subscribers")),
            append=client.register_script(_lua("append")),
            position=client.register_script(_lua("position")),
            renew=client.register_script(_lua("renew")),
            lapsed=client.register_script(_lua("lapsed")),
        )


#: Why a broker on a Redis Cluster node refuses to start (its scripts would
#: fail with CROSSSLOT on the first job): said once, in the log and the error.
CLUSTER_UNSUPPORTED = (
    "{url} is a Redis Cluster node: the broker does not support Redis Cluster yet "
    "(its scripts touch keys in several slots); use one Redis server, or one behind "
    "Sentinel (redis+sentinel://)"
)

#: Channels whose last append a process remembers (see :meth:`Store.append`).
MAX_REMEMBERED_CHANNELS = 10_000

SENTINEL_SCHEME = "redis+sentinel://"


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names a master behind Sentinel."""
    return url.startswith(SENTINEL_SCHEME)


@dataclass(frozen=True)
class SentinelURL:
    """``redis+sentinel://[[user]:password@]host:port[,host:port...]/<master>[/<db>]``."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelURL:
    """Read a ``redis+sentinel://`` URL.

    The user and password, if any, are the master's (and its replicas');
    the sentinels are asked without.

    :raises ValueError: not such a URL, or a part of it is missing or wrong.
    """
    form = "redis+sentinel://host:port[,host:port...]/<master-name>[/<db>]"
    if not is_sentinel_url(url):
        raise ValueError(f"a Sentinel URL is {form}, not {url[:200]!r}")
    rest = url[len(SENTINEL_SCHEME) :]
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        hosts, userinfo = netloc, ""
    username, _, password = userinfo.partition(":")
    sentinels = []
    for part in hosts.split(","):
        host, colon, port = part.strip().rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"a Sentinel URL names each sentinel as host:port ({form})")
        sentinels.append((host, int(port)))
    names = [name for name in path.split("/") if name] if path else []
    if not names or len(names) > 2:
        raise ValueError(f"a Sentinel URL names its master after the hosts ({form})")
    if len(names) == 2 and not names[1].isdigit():
        raise ValueError(f"the database of a Sentinel URL is a number, not {names[1]!r}")
    return SentinelURL(
        tuple(sentinels),
        unquote(names[0]),
        int(names[1]) if len(names) == 2 else 0,
        unquote(username) or None,
        unquote(password) or None,
    )


class _SentinelMaster:
    """Where the master is now: what redis-py's ``SentinelManagedConnection`` asks its pool.

    Each new connection (the pool's, and the reader's) asks the sentinels;
    when the answer changes (a failover), the pool's idle connections to the
    old master are closed, so none of them writes there again.
    """

    is_master = True
    check_connection = False

    def __init__(self, sentinel: Any, service_name: str, pool: Any) -> None:
        self.sentinel = sentinel
        self.service_name = service_name
        self._pool = pool
        self.address: tuple[str, int] | None = None

    def get_master_address(self) -> tuple[str, int]:
        address: tuple[str, int] = self.sentinel.discover_master(self.service_name)
        if address != self.address:
            if self.address is not None:
                log.warning("Redis master %r is now at %s:%s", self.service_name, *address)
            self.address = address
            self._pool.disconnect(inuse_connections=False)
        return address

    def rotate_slaves(self) -> Iterator[tuple[str, int]]:
        yield self.get_master_address()  # the broker only ever talks to the master


def sentinel_pool(redis: Any, url: SentinelURL, options: dict[str, Any]) -> Any:
    """A blocking pool of connections to the master that ``url``'s sentinels name."""
    from redis.sentinel import Sentinel, SentinelManagedConnection

    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(url.sentinels),
        sentinel_kwargs={
            "socket_timeout": options["socket_connect_timeout"],
            "socket_connect_timeout": options["socket_connect_timeout"],
            "protocol": 2,
        },
    )
    pool = redis.BlockingConnectionPool(
        connection_class=SentinelManagedConnection,
        db=url.db,
        username=url.username,
        password=url.password,
        **options,
    )
    pool.connection_kwargs["connection_pool"] = _SentinelMaster(sentinel, url.master, pool)
    return pool


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


def _entries(raw: list[Any]) -> list[Entry]:
    entries = []
    for entry_id, fields in raw:
        seq = int(entry_id.split(b"-", 1)[1])
        level = fields.get(b"l") or b""
        entries.append((seq, fields[b"f"], level.decode("utf-8") or None))
    return entries


class Store:
    """One process's command connections to Redis, and every command the broker sends.

    Made anew in a forked process: the parent's sockets are not its own.
    Its calls block; under gevent the broker runs them on the worker's hub.
    """

    def __init__(
        self,
        redis: Any,
        *,
        url: str,
        prefix: str,
        retention: float,
        max_events: int,
        lease: float,
        queue_timeout: float,
        outage_timeout: float,
        request_timeout: float,
        max_connections: int,
        socket_timeout: float,
        client_name: str,
    ) -> None:
        #: The redis-py module.
        self.redis = redis
        self.url = url
        self.prefix = prefix
        self.retention = retention
        self.max_events = max_events
        self.lease_ms = round(lease * 1000)
        self.queue_timeout_ms = round(queue_timeout * 1000)
        #: How long a live job's keys last without a renewal: several leases,
        #: so only a job nobody renews or ends (every process gone) expires.
        self.alive_ms = max(6 * self.lease_ms, 60_000)
        self.outage_timeout = outage_timeout
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.socket_timeout = socket_timeout
        self.client_name = client_name
        #: The failures that mean "Redis is unreachable" (retried), not "refused".
        self.errors: tuple[type[BaseException], ...] = (
            redis.ConnectionError,
            redis.TimeoutError,
            OSError,
        )
        #: Since when Redis has been unreachable (monotonic), ``None`` while it answers.
        self.down_since: float | None = None
        #: Since when (monotonic) Redis has answered again after its last outage.
        self.up_since = time.monotonic()
        self.closed = False
        self._client: Any = None
        self._scripts: _Scripts | None = None
        #: This process's token in Redis, unique across hosts (pids are not).
        self.process = os.urandom(8).hex()
        #: Each channel's last append of this process: (epoch, seq), oldest first.
        self._appended: dict[str, tuple[str, int]] = {}
        self._appended_lock = new_lock()

    # -- connections ---------------------------------------------------------------

    def connect(self) -> Any:
        """The redis-py client over this process's pool, made at first use."""
        if self._client is None:
            redis = self.redis
            options: dict[str, Any] = {
                "max_connections": self.max_connections,
                "timeout": self.request_timeout,
                "socket_timeout": self.socket_timeout,
                "socket_connect_timeout": min(2.0, self.socket_timeout),
                "protocol": 2,
                "retry": redis.retry.Retry(redis.backoff.NoBackoff(), 0),
                "client_name": self.client_name,
            }
            if is_sentinel_url(self.url):
                pool = sentinel_pool(redis, parse_sentinel_url(self.url), options)
            else:
                pool = redis.BlockingConnectionPool.from_url(self.url, **options)
            client = redis.Redis(connection_pool=pool)
            if client.info("cluster").get("cluster_enabled"):
                pool.disconnect()
                raise BrokerUnavailable(CLUSTER_UNSUPPORTED.format(url=self.url))
            self._scripts = _Scripts.register(client)
            self._client = client
        return self._client

    @property
    def scripts(self) -> _Scripts:
        if self._scripts is None:
            self.connect()
            assert self._scripts is not None
        return self._scripts

    def disconnect(self) -> None:
        """Close the pool's connections (the broker is closing)."""
        if self._client is not None:
            self._client.connection_pool.disconnect()

    def run(self, command: Callable[[Any], R], *, persistent: bool = False) -> R:
        """Run a Redis command, retrying while Redis is unreachable.

        ``persistent`` (a job's publish) retries for ``outage_timeout``;
        a request's call for ``request_timeout``, or once when Redis has
        been down longer than ``outage_timeout`` already.
        """
        started = time.monotonic()
        delay = 0.05
        while True:
            try:
                result = command(self.connect())
            except self.errors as exc:
                if self.closed:
                    raise BrokerUnavailable("the RedisBroker was closed") from exc
                now = time.monotonic()
                if self.down_since is None:
                    self.down_since = now
                    log.warning("Redis unreachable (%s); retrying", exc)
                limit = self.outage_timeout if persistent else self.request_timeout
                if now - started >= limit or (
                    not persistent and now - self.down_since >= self.outage_timeout
                ):
                    raise BrokerUnavailable(UNAVAILABLE) from exc
                time.sleep(delay)  # gevent's under gevent: the hub goes on
                delay = min(delay * 2, 1.0)
            except self.redis.RedisError as exc:
                log.error("Redis refused a command: %s", exc)
                raise BrokerUnavailable(UNAVAILABLE) from exc
            else:
                if self.down_since is not None:
                    log.warning("Redis answers again")
                    self.down_since = None
                    self.up_since = time.monotonic()
                return result

    # -- names ---------------------------------------------------------------------

    def key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    def job_channel(self, job_id: str) -> bytes:
        """The pub/sub channel of a job's live events."""
        return f"{self.prefix}ev:{job_id}".encode()

    def job_of(self, channel: bytes) -> str:
        """The job whose live events ``channel`` carries."""
        return channel[len(self.prefix) + 3 :].decode("utf-8", "replace")

    @property
    def cancel_channel(self) -> bytes:
        """The one pub/sub channel of every job's cancellation."""
        return f"{self.prefix}cancel".encode()

    @property
    def channel_prefix(self) -> bytes:
        """The start of every event channel's pub/sub channel."""
        return f"{self.prefix}ch:".encode()

    def channel_keys(self, name: str) -> list[str]:
        """An event channel's meta hash and log stream."""
        return [self.key("chan", name), self.key("clog", name)]

    # -- jobs ----------------------------------------------------------------------

    def create(
        self, job_id: str, limit: int | None, owner: str | None, owner_limit: int | None
    ) -> None:
        epoch = os.urandom(8).hex()
        keys = [self.key("job", job_id), f"{self.prefix}active"]
        args = [job_id, "" if limit is None else str(limit), epoch, f"{self.prefix}job:"]
        args += ["" if owner is None else owner]
        args += ["" if owner is None or owner_limit is None else str(owner_limit)]
        args += [str(self.lease_ms), str(self.alive_ms)]
        answer = self.run(lambda client: self.scripts.create(keys=keys, args=args))
        if answer == b"taken":
            raise ValueError(f"job {job_id!r} exists already")
        if answer == b"full":
            assert limit is not None
            raise TooManyJobs.at_limit(limit)
        if answer == b"owner full":
            assert owner_limit is not None
            raise TooManyJobs.for_owner(owner_limit)

    def publish(
        self,
        job_id: str,
        seq: int,
        frame: bytes,
        level: str | None,
        change: StatusChange | None,
        final: bool,
        *,
        recreate: bool,
        owner: str | None,
        if_lapsed: bool = False,
    ) -> bool:
        """Log and send one event; ``recreate`` a job the store lost, for ``owner``.

        With ``if_lapsed``, only if the job's lease has lapsed (its runner
        stopped) and ``seq`` is still the next number: returns whether it
        was published.
        """
        keys = [self.key("job", job_id), self.key("log", job_id), f"{self.prefix}active"]
        keys.append(self.key("old", job_id))
        args: list[Any] = [
            job_id,
            seq,
            frame,
            level or "",
            "1" if final else "0",
            self.max_events,
            round(self.retention * 1000),
            self.job_channel(job_id),
            "1" if recreate else "0",
            os.urandom(8).hex(),
            owner or "",
            self.lease_ms,
            self.alive_ms,
            "1" if if_lapsed else "0",
            *_change_args(change),
        ]
        # A lapsed job's end is the keeper's: it must not wait out an outage
        # (and its own renewals) the way a runner's publish does.
        answer = self.run(
            lambda client: self.scripts.publish(keys=keys, args=args), persistent=not if_lapsed
        )
        if if_lapsed:
            return bool(answer == b"ok")
        if answer == b"unknown":
            raise UnknownJob(job_id)
        if answer == b"ended":
            raise JobEnded(f"job {job_id!r} has ended; it takes no more events")
        return True

    def renew(self, job_ids: Collection[str], *, queued: bool = False) -> dict[str, str]:
        """Renew the leases of the jobs this process runs (or has queued), in one round trip.

        :returns: each job's answer: ``"ok"``, ``"ended"`` or ``"unknown"``.
        """
        lease = self.queue_timeout_ms if queued else self.lease_ms
        # A queued job's keys outlive its queue lease, so that a job nobody
        # ran still ends with its error event rather than vanish.
        lifetime = self.queue_timeout_ms + self.alive_ms if queued else self.alive_ms
        ids = list(job_ids)

        def renew(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for job_id in ids:
                keys = [self.key("job", job_id), self.key("log", job_id)]
                keys += [self.key("old", job_id), f"{self.prefix}active"]
                args = [lease, lifetime, "1" if queued else "0"]
                self.scripts.renew(keys=keys, args=args, client=pipe)
            return list(pipe.execute())

        answers = self.run(renew) if ids else []
        return {job_id: _text(answer) or "" for job_id, answer in zip(ids, answers, strict=True)}

    def lapsed(self) -> list[tuple[str, int]]:
        """The running jobs whose lease has lapsed: ``(job id, last seq)``, on Redis' clock."""
        keys = [f"{self.prefix}active"]
        args = [f"{self.prefix}job:", self.alive_ms]
        found = self.run(lambda client: self.scripts.lapsed(keys=keys, args=args))
        return [(_text(found[i]) or "", int(found[i + 1] or 0)) for i in range(0, len(found), 2)]

    def update(self, job_id: str, change: StatusChange) -> JobStatus:
        key = self.key("job", job_id)
        args = _change_args(change)
        found = self.run(
            lambda client: (
                self.scripts.update(keys=[key], args=args) if args else client.exists(key)
            ),
            persistent=True,
        )
        status = self.status(job_id) if found else None  # 2: ended, left as it was
        if status is None:
            raise UnknownJob(job_id)
        return status

    def status(self, job_id: str) -> JobStatus | None:
        fields = self.run(lambda client: client.hgetall(self.key("job", job_id)))
        return _status(job_id, fields)

    def read_log(self, job_id: str, after: int) -> tuple[JobStatus | None, list[Entry]]:
        """The job's status and its logged events after ``after``, read atomically."""

        def read(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=True)
            pipe.hgetall(self.key("job", job_id))
            pipe.xrange(self.key("log", job_id), min=f"0-{after + 1}")
            return list(pipe.execute())

        fields, raw = self.run(read)
        status = _status(job_id, fields)
        return status, ([] if status is None else _entries(raw))

    def count_subscribers(self, job_id: str, delta: int) -> int:
        """Add ``delta`` to this process's streams of a job; return every live process's."""
        keys = [self.key("job", job_id), self.presence_key]
        args = [delta, self.process, f"{self.prefix}proc:", self.lease_ms]
        count = self.run(lambda client: self.scripts.count_subscribers(keys=keys, args=args))
        return max(0, int(count))

    def subscribers(self, job_id: str) -> int:
        """The streams attached to a job now, on every live process."""
        return self.count_subscribers(job_id, 0)

    @property
    def presence_key(self) -> str:
        """The key that says this process is alive (its streams count while it exists)."""
        return f"{self.prefix}proc:{self.process}"

    def renew_presence(self) -> None:
        """Keep this process's attached streams counted for another lease."""
        self.run(lambda client: client.set(self.presence_key, 1, px=self.lease_ms))

    def cancel(self, job_id: str) -> bool:
        """Mark a running job cancelled and tell every worker; ``False`` if none runs."""
        keys = [self.key("job", job_id)]
        args = [self.cancel_channel, job_id]
        return bool(self.run(lambda c: self.scripts.cancel(keys, args)))

    def cancel_state(self, job_id: str) -> tuple[bool, bool]:
        """Whether the job exists, and whether it was cancelled."""
        state, cancelled = self.run(
            lambda client: client.hmget(self.key("job", job_id), "state", "cancelled")
        )
        return state is not None, cancelled is not None

    def cancelled(self, job_id: str) -> bool:
        """Whether the job was cancelled."""
        key = self.key("job", job_id)
        return self.run(lambda client: client.hget(key, "cancelled")) is not None

    # -- event channels ------------------------------------------------------------

    def append(self, channel: str, head: bytes, tail: bytes, level: str) -> tuple[str, int]:
        """Number, log and send a channel's next event; its epoch and number."""
        # One token for all the retries of this append (see append.lua).
        keys = [*self.channel_keys(channel), f"{self.prefix}ctok:{channel}:{secrets.token_hex(16)}"]
        args: list[Any] = [
            new_epoch(),
            channel,
            head,
            tail,
            self.max_events,
            round(self.retention * 1000),
            self.channel_prefix + channel.encode(),
            level,
            *self._last_append(channel),
        ]
        epoch, seq = self.run(
            lambda client: self.scripts.append(keys=keys, args=args), persistent=True
        )
        # What this process last appended, so that a log that lost it (a
        # failover to a replica that lagged, a restart without persistence)
        # starts a new epoch rather than number other events the same.
        with self._appended_lock:
            appended = self._appended
            appended.pop(channel, None)
            appended[channel] = (epoch.decode(), int(seq))
            if len(appended) > MAX_REMEMBERED_CHANNELS:
                del appended[next(iter(appended))]
        return epoch.decode(), int(seq)

    def _last_append(self, channel: str) -> tuple[str, int]:
        with self._appended_lock:
            return self._appended.get(channel, ("", 0))

    def position(self, channel: str) -> Position:
        """Where ``channel``'s log is now, starting one if it has none."""
        keys = self.channel_keys(channel)
        args = [new_epoch(), round(self.retention * 1000)]
        epoch, seq = self.run(lambda client: self.scripts.position(keys=keys, args=args))
        return Position(epoch.decode(), int(seq))

    def read_channel(self, name: str, after: int) -> tuple[str | None, int, list[Entry]]:
        """A channel's epoch, last number and logged events after ``after``, read at once."""
        meta, log_key = self.channel_keys(name)

        def read(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=True)
            pipe.hmget(meta, "epoch", "last")
            pipe.xrange(log_key, min=f"0-{after + 1}")
            return list(pipe.execute())

        (epoch, last), raw = self.run(read)
        if epoch is None:
            return None, 0, []
        return epoch.decode(), int(last), _entries(raw)
