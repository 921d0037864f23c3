"""The store: this process's command connections to Redis, its keys and its Lua scripts.

Each job is two keys: a hash with its status and a Redis Stream with its
events, the stream entry ids derived from the event numbers (``0-<n>``), so a
publish retried after a lost reply is recognised and dropped, never stored
twice (and, while it runs, a list of the progress entries newer ones replaced,
which its log's bound drops next). One Lua script per change (``scripts/``,
one ``.lua`` file each) keeps the hash, the stream, its bound and the live
notification in one atomic step. An event channel is a hash and a stream too.

On a Redis Cluster (any node's URL, found out at connect, or
``redis+cluster://``) the names carry hash tags, so all of one job's or
channel's keys and its pub/sub channel share a slot; what spans jobs (the
active jobs, for admission and lease sweeps) lives in a slot of its own and
is kept in steps of its own (``admit``, ``keep``, ``release``, ``overdue``).

Commands go through a small blocking pool (``max_connections``, per node
on a cluster) and one retry loop. The store knows the names of the keys and channels and what the
scripts answer; it knows nothing of this process's streams or of the reader.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
import json
import logging
import os
import queue
import secrets
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, unquote

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
BUSY = "every connection to the event store (Redis) is busy"
#: What the log says when this process's pool had no connection free for a
#: call's whole wait; said at most every ``BUSY_LOG_EVERY`` seconds.
BUSY_LOG = (
    "every one of this process's %d Redis connections stayed busy for %.1f s "
    "(Redis answers; raise the broker's max_connections if this goes on)"
)
BUSY_LOG_EVERY = 10.0


def pool_exhausted(exc: BaseException) -> bool:
    """Whether ``exc`` is redis-py's blocking pool giving up its wait for a free
    connection: a busy process, not an unreachable Redis."""
    return isinstance(exc.__context__, queue.Empty) or str(exc) == "No connection available."


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
    subscribers: Any
    append: Any
    position: Any
    renew: Any
    lapsed: Any
    admit: Any
    keep: Any
    release: Any
    overdue: Any
    read_log: Any
    read_channel: Any

    @classmethod
    def register(cls, client: Any) -> _Scripts:
        return cls(
            create=client.register_script(_lua("create")),
            publish=client.register_script(_lua("publish")),
            update=client.register_script(_lua("update")),
            cancel=client.register_script(_lua("cancel")),
            subscribers=client.register_script(_lua("subscribers")),
            append=client.register_script(_lua("append")),
            position=client.register_script(_lua("position")),
            renew=client.register_script(_lua("renew")),
            lapsed=client.register_script(_lua("lapsed")),
            admit=client.register_script(_lua("admit")),
            keep=client.register_script(_lua("keep")),
            release=client.register_script(_lua("release")),
            overdue=client.register_script(_lua("overdue")),
            read_log=client.register_script(_lua("read_log")),
            read_channel=client.register_script(_lua("read_channel")),
        )


#: Why a broker refuses a Sentinel whose master is a cluster node.
SENTINEL_CLUSTER = (
    "{url} names a Redis Cluster node: Sentinel does not manage clusters; "
    "use the node's redis:// URL, or redis+cluster://"
)

#: Channels whose last append a process remembers (see :meth:`Store.append`).
MAX_REMEMBERED_CHANNELS = 10_000

#: The most lapsed-lease candidates one keeper round checks on a cluster.
MAX_OVERDUE = 500

SENTINEL_SCHEME = "redis+sentinel://"
CLUSTER_SCHEME = "redis+cluster://"


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names a master behind Sentinel."""
    return url.startswith(SENTINEL_SCHEME)


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names the seed nodes of a Redis Cluster."""
    return url.startswith(CLUSTER_SCHEME)


@dataclass(frozen=True)
class SentinelURL:
    """``redis+sentinel://[[user]:password@]host:port[,host:port...]/<master>[/<db>]``."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class ClusterURL:
    """``redis+cluster://[[user]:password@]host:port[,host:port...]``: a cluster's seed nodes."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None

    @property
    def first(self) -> str:
        """The ``redis://`` URL of the first node, with the user and password."""
        host, port = self.nodes[0]
        auth = ""
        if self.username or self.password:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password or '', safe='')}@"
        return f"redis://{auth}{'[' + host + ']' if ':' in host else host}:{port}/0"


def _hosts_and_path(
    url: str, scheme: str, form: str, kind: str
) -> tuple[list[tuple[str, int]], str, str, str]:
    """The ``host:port`` list, path, user and password of a multi-host URL."""
    rest = url[len(scheme) :]
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        hosts, userinfo = netloc, ""
    username, _, password = userinfo.partition(":")
    found = []
    for part in hosts.split(","):
        host, colon, port = part.strip().rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"a {kind} URL names each host as host:port ({form})")
        found.append((host, int(port)))
    return found, path, unquote(username), unquote(password)


def parse_cluster_url(url: str) -> ClusterURL:
    """Read a ``redis+cluster://`` URL: one or more nodes of the cluster to start from.

    :raises ValueError: not such a URL, or a part of it is missing or wrong.
    """
    form = "redis+cluster://host:port[,host:port...]"
    if not is_cluster_url(url):
        raise ValueError(f"a Redis Cluster URL is {form}, not {url[:200]!r}")
    nodes, path, username, password = _hosts_and_path(url, CLUSTER_SCHEME, form, "Redis Cluster")
    if path.strip("/") not in ("", "0"):
        raise ValueError(f"a Redis Cluster has one database (0), not {path.strip('/')!r}")
    return ClusterURL(tuple(nodes), username or None, password or None)


def parse_sentinel_url(url: str) -> SentinelURL:
    """Read a ``redis+sentinel://`` URL.

    The user and password, if any, are the master's (and its replicas');
    the sentinels are asked without.

    :raises ValueError: not such a URL, or a part of it is missing or wrong.
    """
    form = "redis+sentinel://host:port[,host:port...]/<master-name>[/<db>]"
    if not is_sentinel_url(url):
        raise ValueError(f"a Sentinel URL is {form}, not {url[:200]!r}")
    sentinels, path, username, password = _hosts_and_path(url, SENTINEL_SCHEME, form, "Sentinel")
    names = [name for name in path.split("/") if name] if path else []
    if not names or len(names) > 2:
        raise ValueError(f"a Sentinel URL names its master after the hosts ({form})")
    if len(names) == 2 and not names[1].isdigit():
        raise ValueError(f"the database of a Sentinel URL is a number, not {names[1]!r}")
    return SentinelURL(
        tuple(sentinels),
        unquote(names[0]),
        int(names[1]) if len(names) == 2 else 0,
        username or None,
        password or None,
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

    sentinel = Sentinel(
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


def _tracked(base: type, made: weakref.WeakSet[Any]) -> type:
    """``base`` (a redis-py connection class) whose connections are remembered in ``made``.

    A cluster client forgets a failed node's pool when it reads the slots
    again, without closing its connections; the store closes them all.
    """

    class Tracked(base):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.add(self)

    return Tracked


def cluster_client(
    redis: Any,
    url: str,
    seeds: Collection[tuple[str, int]],
    options: Any,
    made: weakref.WeakSet[Any],
) -> Any:
    """A Redis Cluster client starting from ``url``'s node (and ``seeds``).

    Each node gets a blocking pool of at most ``max_connections``
    connections: a call waits for a free one (``timeout``) rather than open
    more. The client follows ``MOVED`` and ``ASK`` itself and reads the
    slots again after a node fails; the store's retry loop waits out a
    failover.
    """
    from redis.cluster import ClusterNode, RedisCluster
    from redis.connection import SSLConnection
    from redis.exceptions import RedisClusterException

    options = dict(options)
    base = SSLConnection if url.startswith("rediss://") else redis.Connection
    options["connection_class"] = _tracked(base, made)
    retry = options.pop("retry")  # the cluster's own; its nodes' connections never retry
    try:
        return RedisCluster(
            url=url,
            startup_nodes=[ClusterNode(host, port) for host, port in seeds],
            connection_pool_class=redis.BlockingConnectionPool,
            require_full_coverage=False,
            retry=retry,
            **options,
        )
    except (IndexError, KeyError) as exc:  # redis-py's answer to a cluster with no primary
        raise RedisClusterException("the Redis Cluster has no primary serving slots") from exc


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
        lost_after=int(fields.get(b"lost_after", b"0")),
        owner=_text(fields.get(b"owner")),
    )


def _refuse(answer: bytes, limit: int | None, owner_limit: int | None) -> None:
    """Raise the admission error an admission script answered, if any."""
    if answer == b"full":
        assert limit is not None
        raise TooManyJobs.at_limit(limit)
    if answer == b"owner full":
        assert owner_limit is not None
        raise TooManyJobs.for_owner(owner_limit)


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
    for entry_id, pairs in raw:
        seq = int(entry_id.split(b"-", 1)[1])
        fields = dict(zip(pairs[::2], pairs[1::2], strict=True))
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
        # On a cluster, a failover's "cluster down", "try again" and a slot
        # no node serves for now are outages too.
        from redis.exceptions import ClusterError, RedisClusterException, TryAgainError

        self.errors: tuple[type[BaseException], ...] = (
            redis.ConnectionError,
            redis.TimeoutError,
            OSError,
            ClusterError,
            TryAgainError,
            RedisClusterException,
        )
        #: Whether Redis is a cluster (known once connected): keys carry hash tags.
        self.cluster = False
        #: A cluster's command connections, to close them all (see _tracked).
        self._made: weakref.WeakSet[Any] = weakref.WeakSet()
        #: Since when (monotonic) each cluster primary has answered (see check_nodes).
        self._steady_since: dict[str, float] = {}
        #: Since when Redis has been unreachable (monotonic), ``None`` while it answers.
        self.down_since: float | None = None
        #: Since when (monotonic) Redis has answered again after its last outage.
        self.up_since = time.monotonic()
        #: When (monotonic) the log last said the pool was exhausted.
        self._busy_logged = -BUSY_LOG_EVERY
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
            if is_cluster_url(self.url):
                seeds = parse_cluster_url(self.url)
                self.cluster = True
                client = cluster_client(redis, seeds.first, seeds.nodes[1:], options, self._made)
            else:
                if is_sentinel_url(self.url):
                    pool = sentinel_pool(redis, parse_sentinel_url(self.url), options)
                else:
                    pool = redis.BlockingConnectionPool.from_url(self.url, **options)
                client = redis.Redis(connection_pool=pool)
                # A plain URL may name any node of a cluster: asked once, here.
                if client.info("cluster").get("cluster_enabled"):
                    pool.disconnect()
                    if is_sentinel_url(self.url):
                        raise BrokerUnavailable(SENTINEL_CLUSTER.format(url=self.url))
                    self.cluster = True
                    client = cluster_client(redis, self.url, (), options, self._made)
            self._scripts = _Scripts.register(client)
            self._client = client
        return self._client

    def ready(self) -> None:
        """Connect (retrying) if not yet: the names of keys depend on the kind of Redis."""
        if self._client is None:
            self.run(lambda client: None)

    def refresh(self) -> None:
        """Read a cluster's slots again (a pub/sub connection was moved or lost)."""
        if self.cluster and self._client is not None:
            self._client.nodes_manager.initialize()

    def slot(self, channel: bytes) -> int:
        """A cluster's slot of ``channel``."""
        return int(self.connect().keyslot(channel))

    def node_of(self, key: str | bytes) -> str:
        """Which node serves ``key`` (a key or a pub/sub channel): ``""`` on one
        Redis, else the address (``host:port``) of the primary serving its slot.

        It names the reader's pub/sub connection of a channel, and the round
        trip a batch of commands to ``key`` goes in (:meth:`_per_node`).
        """
        if not self.cluster:
            return ""
        client = self.connect()
        return str(client.nodes_manager.get_node_from_slot(client.keyslot(key)).name)

    def pubsub_connection(self, route: str) -> Any:
        """A new pub/sub connection to ``route`` (a node, see :meth:`node_of`), connected."""
        client = self.connect()
        if self.cluster:
            node = client.get_node(node_name=route)
            if node is None or node.redis_connection is None:
                raise self.redis.ConnectionError(f"no Redis Cluster node {route} now")
            pool = node.redis_connection.connection_pool
        else:
            pool = client.connection_pool
        connection = pool.connection_class(**pool.connection_kwargs)
        connection.connect()
        return connection

    @property
    def subscribe_commands(self) -> tuple[str, str]:
        """The commands that subscribe and unsubscribe: sharded ones on a cluster."""
        return ("SSUBSCRIBE", "SUNSUBSCRIBE") if self.cluster else ("SUBSCRIBE", "UNSUBSCRIBE")

    @property
    def publish_command(self) -> str:
        """What the scripts publish with: ``SPUBLISH`` (to the keys' own slot) on a cluster."""
        return "SPUBLISH" if self.cluster else "PUBLISH"

    @property
    def scripts(self) -> _Scripts:
        if self._scripts is None:
            self.connect()
            assert self._scripts is not None
        return self._scripts

    def disconnect(self) -> None:
        """Close the pool's connections (the broker is closing)."""
        if self._client is not None:
            if self.cluster:
                self._client.close()
                for connection in list(self._made):  # those of nodes it forgot too
                    with contextlib.suppress(Exception):
                        connection.disconnect()
            else:
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
                busy = pool_exhausted(exc)
                if busy:  # Redis answers: no outage begins
                    if now - self._busy_logged >= BUSY_LOG_EVERY:
                        self._busy_logged = now
                        log.warning(BUSY_LOG, self.max_connections, self.request_timeout)
                elif self.down_since is None:
                    self.down_since = now
                    log.warning("Redis unreachable (%s); retrying", exc)
                limit = self.outage_timeout if persistent else self.request_timeout
                down = self.down_since
                if now - started >= limit or (
                    not persistent and down is not None and now - down >= self.outage_timeout
                ):
                    raise BrokerUnavailable(BUSY if busy and down is None else UNAVAILABLE) from exc
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
        """The key of a job's or channel's ``kind`` of data.

        On a cluster the name is a hash tag (``<prefix><kind>:{<name>}``), so
        every key and pub/sub channel of one job or channel is in one slot
        and each script touches one slot. On one Redis the names are those
        of 0.2, so a job in flight survives an upgrade.
        """
        if self.cluster:
            return f"{self.prefix}{kind}:{{{name}}}"
        return f"{self.prefix}{kind}:{name}"

    def _named(self, kind: str, pubsub: bytes) -> str | None:
        """The name in a pub/sub channel made by :meth:`key` for ``kind``, if it is one."""
        start = f"{self.prefix}{kind}:".encode()
        if not pubsub.startswith(start):
            return None
        name = pubsub[len(start) :]
        if self.cluster:
            if not (name.startswith(b"{") and name.endswith(b"}")):
                return None
            name = name[1:-1]
        return name.decode("utf-8", "replace")

    def job_channel(self, job_id: str) -> bytes:
        """The pub/sub channel of a job's live events."""
        return self.key("ev", job_id).encode()

    def job_of(self, channel: bytes) -> str | None:
        """The job whose live events ``channel`` carries, if it is a job's."""
        return self._named("ev", channel)

    def cancel_channel(self, job_id: str) -> bytes:
        """The pub/sub channel that carries the cancellation of ``job_id``.

        One channel for every job on one Redis; on a cluster the job's own,
        in its slot (a script publishes only to its keys' slot).
        """
        if self.cluster:
            return self.key("cancel", job_id).encode()
        return f"{self.prefix}cancel".encode()

    def is_cancel_channel(self, channel: bytes) -> bool:
        if self.cluster:
            return self._named("cancel", channel) is not None
        return channel == f"{self.prefix}cancel".encode()

    def channel_pubsub(self, name: str) -> bytes:
        """The pub/sub channel of an event channel's live events."""
        return self.key("ch", name).encode()

    def channel_of(self, pubsub: bytes) -> str | None:
        """The event channel whose live events ``pubsub`` carries, if it is one's."""
        return self._named("ch", pubsub)

    def channel_keys(self, name: str) -> list[str]:
        """An event channel's meta hash and log stream."""
        return [self.key("chan", name), self.key("clog", name)]

    def job_keys(self, job_id: str) -> list[str]:
        """A job's status hash, log stream and list of replaced level entries."""
        return [self.key("job", job_id), self.key("log", job_id), self.key("old", job_id)]

    @property
    def active_key(self) -> str:
        """The active jobs: a set on one Redis, a sorted set of its own slot on a cluster."""
        return f"{self.prefix}{{active}}" if self.cluster else f"{self.prefix}active"

    @property
    def _owners_key(self) -> str:
        return f"{self.prefix}{{active}}:owners"

    @property
    def _owned_prefix(self) -> str:
        return f"{self.prefix}{{active}}:o:"

    # -- jobs ----------------------------------------------------------------------

    def create(
        self, job_id: str, limit: int | None, owner: str | None, owner_limit: int | None
    ) -> None:
        self.ready()
        epoch = os.urandom(8).hex()
        keys = [self.key("job", job_id)]
        if self.cluster:
            admitted = self._admit(job_id, limit, owner, owner_limit)
        else:
            keys.append(self.active_key)
        args = [job_id, "" if limit is None else str(limit), epoch, f"{self.prefix}job:"]
        args += ["" if owner is None else owner]
        args += ["" if owner is None or owner_limit is None else str(owner_limit)]
        args += [str(self.lease_ms), str(self.alive_ms)]
        answer = self.run(lambda client: self.scripts.create(keys=keys, args=args))
        if answer == b"taken":
            if self.cluster and admitted:
                self.release([job_id])  # counted for this create, which made nothing
            raise ValueError(f"job {job_id!r} exists already")
        _refuse(answer, limit, owner_limit)

    def _admit(
        self, job_id: str, limit: int | None, owner: str | None, owner_limit: int | None
    ) -> bool:
        """Count a new job as active on a cluster, within the limits; whether it was new."""
        keys = [self.active_key, self._owners_key, self._owned_prefix + (owner or "")]
        args = [job_id, "" if limit is None else limit, owner or ""]
        args += ["" if owner is None or owner_limit is None else owner_limit]
        args += [self.lease_ms, self.alive_ms]
        answer = self.run(lambda client: self.scripts.admit(keys=keys, args=args))
        _refuse(answer, limit, owner_limit)
        return bool(answer == b"ok")

    def release(self, job_ids: Collection[str]) -> None:
        """Stop counting jobs as active on a cluster (they ended, or are gone)."""
        if self.cluster and job_ids:
            keys = [self.active_key, self._owners_key]
            args = [self._owned_prefix, *job_ids]
            self.run(lambda client: self.scripts.release(keys=keys, args=args))

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
        self.ready()
        keys = self.job_keys(job_id)
        if not self.cluster:
            keys.append(self.active_key)
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
            self.publish_command,
            *_change_args(change),
        ]
        # A lapsed job's end is the keeper's: it must not wait out an outage
        # (and its own renewals) the way a runner's publish does.
        answer = self.run(
            lambda client: self.scripts.publish(keys=keys, args=args), persistent=not if_lapsed
        )
        if final and answer in (b"ok", b"dup") and self.cluster:
            # On a cluster the active set is another slot's: a step of its
            # own. The event is stored: a failure here must not fail the
            # publish (a keeper's sweep finds the entry overdue and ended).
            try:
                self.release([job_id])
            except BrokerUnavailable as exc:
                log.warning("job %s ended; its active entry is left to the sweep: %s", job_id, exc)
        if if_lapsed:
            return bool(answer == b"ok")
        if answer == b"unknown":
            raise UnknownJob(job_id)
        if answer == b"ended":
            raise JobEnded(f"job {job_id!r} has ended; it takes no more events")
        return True

    def renew(self, job_ids: Collection[str], *, queued: bool = False) -> dict[str, str]:
        """Renew the leases of the jobs this process runs (or has queued).

        One round trip (on a cluster, one per node: a node that does not
        answer costs only its own jobs' renewals, which are left out).

        :returns: each job's answer: ``"ok"``, ``"ended"``, ``"unknown"`` or
            ``"started"`` (queued only: a job worker runs it now).
        :raises BrokerUnavailable: Redis (on a cluster: every node asked)
            did not answer.
        """
        self.ready()
        lease = self.queue_timeout_ms if queued else self.lease_ms
        # A queued job's keys outlive its queue lease, so that a job nobody
        # ran still ends with its error event rather than vanish.
        lifetime = self.queue_timeout_ms + self.alive_ms if queued else self.alive_ms
        args = [lease, lifetime, "1" if queued else "0"]

        def renew(client: Any, ids: list[str]) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for job_id in ids:
                keys = self.job_keys(job_id)
                if not self.cluster:
                    keys.append(self.active_key)
                self._queue(pipe, "renew", keys, args)
            return list(pipe.execute())

        answers = {
            job_id: (_text(answer) or "", int(lease_end), _text(owner) or "")
            for job_id, (answer, lease_end, owner) in self._per_node(job_ids, renew).items()
        }
        if self.cluster:
            self._keep_active(answers)
        return {job_id: answer for job_id, (answer, _, _) in answers.items()}

    def _queue(self, pipe: Any, script: str, keys: list[str], args: list[Any]) -> None:
        """Queue ``scripts/<script>.lua`` on ``pipe``.

        By its SHA1 on one Redis (redis-py loads it if need be); by its source
        on a cluster, whose pipeline sends each call to its own node, where the
        script may not be cached.
        """
        if self.cluster:
            pipe.execute_command("EVAL", _lua(script), len(keys), *keys, *args)
        else:
            getattr(self.scripts, script)(keys=keys, args=args, client=pipe)

    def _per_node(
        self, job_ids: Collection[str], call: Callable[[Any, list[str]], list[Any]]
    ) -> dict[str, Any]:
        """``call`` on the ids, in one round trip per node (one for one Redis).

        A node that stays unreachable leaves its ids out; if every node
        does, :class:`BrokerUnavailable` is raised.
        """
        groups: dict[str, list[str]] = {}
        for job_id in job_ids:
            groups.setdefault(self.node_of(self.key("job", job_id)), []).append(job_id)
        found: dict[str, Any] = {}
        failed: BrokerUnavailable | None = None
        for ids in groups.values():
            try:
                answers = self.run(lambda client, ids=ids: call(client, ids))  # type: ignore[misc]
            except BrokerUnavailable as exc:
                failed = exc
                continue
            found.update(zip(ids, answers, strict=True))
        if failed is not None and not found:
            raise failed
        return found

    def _keep_active(self, answers: dict[str, tuple[str, int, str]]) -> None:
        """After renewals on a cluster: move the jobs' entries of the active set on.

        Best effort: the active set's node may be away; the next round (or
        the sweep, for an entry left behind) puts it right.
        """
        kept = [(job, end, owner) for job, (said, end, owner) in answers.items() if said == "ok"]
        gone = [job for job, (said, _, _) in answers.items() if said in ("ended", "unknown")]
        try:
            if kept:
                keys = [self.active_key, self._owners_key]
                args: list[Any] = [self._owned_prefix, self.alive_ms]
                args += [part for entry in kept for part in entry]
                self.run(lambda client: self.scripts.keep(keys=keys, args=args))
            self.release(gone)
        except BrokerUnavailable as exc:
            log.debug("the active jobs' set was not kept this round: %s", exc)

    def check_nodes(self) -> None:
        """On a cluster: ping every primary, and note since when each has answered.

        A lease keeper ends a job whose lease lapsed only once its node has
        answered this process for a whole lease (:meth:`steady`): a replica
        just promoted, or a node back from an outage, holds leases its
        runners could not renew meanwhile.
        """
        if not self.cluster:
            return
        now = time.monotonic()
        try:
            primaries = self.connect().get_primaries()
        except self.errors:
            return
        seen = set()
        for node in primaries:
            seen.add(node.name)
            try:
                node.redis_connection.ping()
            except (*self.errors, self.redis.RedisError):
                self._steady_since.pop(node.name, None)
            else:
                self._steady_since.setdefault(node.name, now)
        for name in set(self._steady_since) - seen:
            del self._steady_since[name]

    def steady(self, node: str, seconds: float) -> bool:
        """Whether ``node`` has answered every :meth:`check_nodes` for ``seconds``."""
        since = self._steady_since.get(node)
        return since is not None and time.monotonic() - since >= seconds

    def lapsed(self) -> list[tuple[str, int]]:
        """The running jobs whose lease has lapsed: ``(job id, last seq)``, on Redis' clock.

        On a cluster, the candidates: each is ended only if its own node
        finds its lease lapsed too.
        """
        self.ready()
        if self.cluster:
            return self._overdue()
        keys = [self.active_key]
        args = [f"{self.prefix}job:", self.alive_ms]
        found = self.run(lambda client: self.scripts.lapsed(keys=keys, args=args))
        return [(_text(found[i]) or "", int(found[i + 1] or 0)) for i in range(0, len(found), 2)]

    def _overdue(self) -> list[tuple[str, int]]:
        keys = [self.active_key, self._owners_key]
        args = [self.alive_ms, MAX_OVERDUE]
        lease = self.lease_ms / 1000.0
        ids = [
            job_id
            for job_id in (
                _text(found) or ""
                for found in self.run(lambda client: self.scripts.overdue(keys=keys, args=args))
            )
            # Only on a node that has answered for a whole lease: its runners
            # have renewed there by then (see check_nodes).
            if self.steady(self.node_of(self.key("job", job_id)), lease)
        ]
        if not ids:
            return []

        def read(client: Any, ids: list[str]) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(self.key("job", job_id), "state", "final_seq", "last_seq")
            return list(pipe.execute())

        found, gone = [], []
        for job_id, (state, final, last) in self._per_node(ids, read).items():
            if state is None or final is not None:
                gone.append(job_id)  # lost with its node, or ended just now
            else:
                found.append((job_id, int(last or 0)))
        self.release(gone)
        return found

    def update(self, job_id: str, change: StatusChange) -> JobStatus:
        self.ready()
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
        self.ready()
        fields = self.run(lambda client: client.hgetall(self.key("job", job_id)))
        return _status(job_id, fields)

    def read_log(self, job_id: str, after: int) -> tuple[JobStatus | None, list[Entry]]:
        """The job's status and its logged events after ``after``, read atomically."""
        self.ready()
        keys = [self.key("job", job_id), self.key("log", job_id)]
        flat, raw = self.run(lambda client: self.scripts.read_log(keys=keys, args=[after]))
        status = _status(job_id, dict(zip(flat[::2], flat[1::2], strict=True)))
        return status, ([] if status is None else _entries(raw))

    def set_subscribers(self, job_id: str, count: int, version: int) -> int:
        """Set this process's streams of a job to ``count`` (unless a write of a
        later ``version`` came first); return every live process's."""
        return self._subscribers(job_id, str(count), version)

    def subscribers(self, job_id: str) -> int:
        """The streams attached to a job now, on every live process."""
        return self._subscribers(job_id, "", 0)

    def _subscribers(self, job_id: str, count: str, version: int) -> int:
        self.ready()
        keys = [self.key("job", job_id)]
        args = self._presence(count, version)
        total = self.run(lambda client: self.scripts.subscribers(keys=keys, args=args))
        return max(0, int(total))

    def _presence(self, count: str, version: int) -> list[Any]:
        """``subscribers.lua``'s arguments: ``count`` ('' reads), this process, ``version``."""
        return [count, self.process, version, self.lease_ms]

    def renew_presence(self, counts: Mapping[str, tuple[int, int]]) -> set[str]:
        """Write this process's streams of each job (count, version), renewing its
        presence; return the jobs written (on a cluster, a node away leaves its out).

        :raises BrokerUnavailable: no node could be written.
        """
        self.ready()
        if not counts:
            return set()

        def renew(client: Any, ids: list[str]) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for job_id in ids:
                count, version = counts[job_id]
                args = self._presence(str(count), version)
                self._queue(pipe, "subscribers", [self.key("job", job_id)], args)
            return list(pipe.execute())

        return set(self._per_node(list(counts), renew))

    def cancel(self, job_id: str) -> bool:
        """Mark a running job cancelled and tell every worker; ``False`` if none runs."""
        self.ready()
        keys = [self.key("job", job_id)]
        args = [self.cancel_channel(job_id), job_id, self.publish_command]
        return bool(self.run(lambda c: self.scripts.cancel(keys, args)))

    def cancel_state(self, job_id: str) -> tuple[bool, bool]:
        """Whether the job exists, and whether it was cancelled."""
        self.ready()
        state, cancelled = self.run(
            lambda client: client.hmget(self.key("job", job_id), "state", "cancelled")
        )
        return state is not None, cancelled is not None

    def cancelled(self, job_id: str) -> bool:
        """Whether the job was cancelled."""
        self.ready()
        key = self.key("job", job_id)
        return self.run(lambda client: client.hget(key, "cancelled")) is not None

    # -- event channels ------------------------------------------------------------

    def append(self, channel: str, head: bytes, tail: bytes, level: str) -> tuple[str, int]:
        """Number, log and send a channel's next event; its epoch and number."""
        self.ready()
        # One token for all the retries of this append (see append.lua).
        token = f"{self.key('ctok', channel)}:{secrets.token_hex(16)}"
        keys = [*self.channel_keys(channel), token]
        args: list[Any] = [
            new_epoch(),
            channel,
            head,
            tail,
            self.max_events,
            round(self.retention * 1000),
            self.channel_pubsub(channel),
            level,
            *self._last_append(channel),
            self.publish_command,
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
        self.ready()
        keys = self.channel_keys(channel)
        args = [new_epoch(), round(self.retention * 1000)]
        epoch, seq = self.run(lambda client: self.scripts.position(keys=keys, args=args))
        return Position(epoch.decode(), int(seq))

    def read_channel(self, name: str, after: int) -> tuple[str | None, int, list[Entry]]:
        """A channel's epoch, last number and logged events after ``after``, read at once."""
        self.ready()
        keys = self.channel_keys(name)
        epoch, last, raw = self.run(
            lambda client: self.scripts.read_channel(keys=keys, args=[after])
        )
        if epoch is None:
            return None, 0, []
        return epoch.decode(), int(last), _entries(raw)
