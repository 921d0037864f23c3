"""The reader: a process's pub/sub connections to Redis, and the loop that reads them.

Live events reach the streams of a worker through **one** pub/sub
connection per process (on a Redis Cluster, one per primary that serves a
wanted channel, with sharded pub/sub), whatever the number of streams: the reader (a
greenlet under gevent, a thread otherwise) subscribes to the channel of
each job and event channel the process serves and hands every message to
its listener, which fans it out to the local streams. It pings Redis when
the connection is quiet, reconnects with backoff when it is lost, and
after every reconnect has the listener catch each stream up from the log.

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
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

from ...exceptions import BrokerUnavailable
from ...runtime import start_greenlet
from .store import Store

__all__ = ["Listener", "Reader"]

log = logging.getLogger(__name__)


class Listener(Protocol):
    """What the reader subscribes for, and where its messages go."""

    def wanted_channels(self) -> set[bytes]:
        """The channels to be subscribed to now."""

    def on_lost(self, channels: set[bytes]) -> None:
        """The connection carrying ``channels`` was lost: their streams catch up once back."""

    def on_subscribe(self, channel: bytes) -> None:
        """Redis confirmed the subscription to ``channel``."""

    def resync(self, subscribed: set[bytes], new: set[bytes]) -> None:
        """Catch up what needs it among ``subscribed``, except the ``new`` channels."""

    def on_message(self, channel: bytes, data: bytes) -> None:
        """A message arrived on ``channel``."""

    def on_outage(self, channels: set[bytes]) -> None:
        """The connection carrying ``channels`` stayed lost past ``outage_timeout``."""


class _Moved(Exception):
    """The cluster moved a subscribed channel's slot (it sent ``sunsubscribe``)."""


class _Route:
    """The state of one pub/sub connection's route (a cluster's primary, or the one Redis)."""

    def __init__(self) -> None:
        self.subscribed: set[bytes] = set()
        self.last_heard = 0.0
        self.pinged = False
        #: Since when its connection has failed, and when to try it again.
        self.down_since: float | None = None
        self.retry_at = 0.0
        self.delay = 0.05
        #: Whether its streams were ended for an outage (once per outage).
        self.failed = False
        #: The channels wanted on it (its streams end past outage_timeout).
        self.wanted: set[bytes] = set()
        #: Whether it went down because the cluster moved a channel (no outage).
        self.moved = False
        #: Unsubscribes sent whose reply has not come yet, by channel.
        self.leaving: dict[bytes, int] = {}

    def heard(self, now: float) -> None:
        self.last_heard, self.pinged = now, False

    def up(self) -> None:
        self.down_since, self.failed, self.delay = None, False, 0.05


class Reader:
    """The one pub/sub connection of a process, and the loop that reads it.

    It alone touches the connection: other code changes the wanted set of
    channels and wakes it through a socket pair, so a new job's channel is
    subscribed at once rather than at the next poll.
    """

    #: Seconds of silence before the reader pings Redis, and twice that
    #: without an answer before it counts the connection as dead.
    HEALTH_INTERVAL = 2.0

    def __init__(self, store: Store, listener: Listener) -> None:
        self.store = store
        self.listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopped = False
        #: The pub/sub connections, by route (one; on a cluster, one per primary).
        self._connections: dict[str, Any] = {}
        self._routes: dict[str, _Route] = {}
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
        store = self.store
        delay = 0.05
        while not self._stopped:
            try:
                store.connect()
                self._serve()
            except (*store.errors, BrokerUnavailable, store.redis.RedisError) as exc:
                if self.stopping():
                    break
                log.warning("Redis reader: %s; starting again", exc)
                self._pause(delay)
                delay = min(delay * 2, 1.0)
            except Exception:
                log.exception("the Redis reader failed; restarting it")
                self._pause(delay)
            finally:
                self._disconnect()
        self._wake_r.close()
        self._wake_w.close()

    def _disconnect(self) -> None:
        """Close every connection; what they carried is read from the store later."""
        connections, self._connections = self._connections, {}
        routes, self._routes = self._routes, {}
        for connection in connections.values():
            with contextlib.suppress(Exception):
                connection.disconnect()
        lost = set().union(*(route.subscribed for route in routes.values()))
        if lost and not self._stopped:
            self.listener.on_lost(lost)

    def _serve(self) -> None:
        """Subscribe to the wanted channels and hand on what arrives, until stopped.

        One Redis: one connection. A cluster: one per primary serving a
        wanted channel's slot, made as needed. A connection that fails (a
        lost node, a channel the cluster moved: ``MOVED`` to a subscribe, a
        ``sunsubscribe`` we did not ask for) is dropped alone: its channels'
        streams are marked for a catch-up, the cluster's slots are read
        again, and it is made again with backoff while the others go on.
        """
        store = self.store
        subscribe, unsubscribe = store.subscribe_commands
        connections = self._connections
        routes = self._routes
        while not self._stopped:
            now = time.monotonic()
            wanted: dict[str, set[bytes]] = {}
            for channel in self.listener.wanted_channels():
                try:
                    route_of = store.node_of(channel)
                except (*store.errors, store.redis.RedisError) as exc:
                    # No node serves its slot now (mid-failover): next round.
                    log.debug("no route for %r now: %s", channel, exc)
                    continue
                wanted.setdefault(route_of, set()).add(channel)
            new_all: set[bytes] = set()
            for name in {*wanted, *routes}:
                route = routes.setdefault(name, _Route())
                channels = route.wanted = wanted.get(name, set())
                if not channels and not route.subscribed:
                    # Nothing wanted there (any more): its connection goes too.
                    del routes[name]
                    with contextlib.suppress(Exception):
                        connections.pop(name).disconnect()
                    continue
                if route.down_since is not None and now < route.retry_at:
                    continue
                try:
                    new, old = channels - route.subscribed, route.subscribed - channels
                    if new:
                        connection = connections.get(name)
                        if connection is None:
                            connection = store.pubsub_connection(name)
                            connections[name] = connection
                            route.heard(now)
                        self._send(connection, subscribe, new)
                        new_all |= new
                    if old:
                        self._send(connections[name], unsubscribe, old)
                        for channel in old:  # its reply is ours, not a move
                            route.leaving[channel] = route.leaving.get(channel, 0) + 1
                    route.subscribed = (route.subscribed | new) - old
                except (*store.errors, store.redis.RedisError, BrokerUnavailable) as exc:
                    self._lose(name, route, exc)
                    continue
                if route.down_since is not None and route.subscribed:
                    log.log(
                        logging.INFO if route.moved else logging.WARNING,
                        "Redis reader connected again (%s)",
                        name or "redis",
                    )
                    route.up()
            everything = set().union(*(route.subscribed for route in routes.values()))
            self.listener.resync(everything, new_all)
            self._wait_and_read(routes, now)

    def _wait_and_read(self, routes: dict[str, _Route], now: float) -> None:
        """Wait for a message (or a wake-up, or a route's retry), then hand on what came."""
        store = self.store
        connections = self._connections
        ready = []
        for name, connection in list(connections.items()):
            try:
                if connection.can_read(timeout=0):
                    ready.append(name)
            except (*store.errors, store.redis.RedisError) as exc:
                self._lose(name, routes[name], exc)
        if not ready:
            waits = [route.retry_at - now for route in routes.values() if route.down_since]
            timeout = max(0.0, min([self.HEALTH_INTERVAL, *waits]))
            sockets = {c._sock: name for name, c in connections.items()}
            found, _, _ = select.select([*sockets, self._wake_r], [], [], timeout)
            if self._wake_r in found:
                self._drain()
            ready = [sockets[sock] for sock in found if sock in sockets]
            if not found:
                now = time.monotonic()
                for name, connection in list(connections.items()):
                    route = routes[name]
                    if route.pinged and now - route.last_heard > 2 * self.HEALTH_INTERVAL:
                        error = store.redis.ConnectionError("no answer to PING")
                        self._lose(name, route, error)
                    elif route.subscribed and now - route.last_heard >= self.HEALTH_INTERVAL:
                        try:
                            connection.send_command("PING")
                            route.pinged = True
                        except (*store.errors, store.redis.RedisError) as exc:
                            self._lose(name, route, exc)
        for name in ready:
            route = routes[name]
            try:
                for message in self._messages(connections[name]):
                    route.heard(time.monotonic())
                    self._handle(message, route)
            except (*store.errors, store.redis.RedisError, BrokerUnavailable, _Moved) as exc:
                self._lose(name, route, exc)

    def _lose(self, name: str, route: _Route, exc: BaseException) -> None:
        """A route's connection failed: drop it, mark its streams, retry it later."""
        store = self.store
        if self.stopping():
            return
        with contextlib.suppress(Exception):
            self._connections.pop(name).disconnect()
        lost, route.subscribed, route.leaving = route.subscribed, set(), {}
        now = time.monotonic()
        moved = isinstance(exc, _Moved | store.redis.exceptions.AskError)  # MOVED is an ASK
        if route.down_since is None:
            route.down_since, route.delay, route.moved = now, 0.05, moved
            if moved:
                log.info("Redis Cluster moved %s; following it", exc)
            else:
                if store.down_since is None:
                    store.down_since = now  # the keeper waits a lease before sweeping
                log.warning("Redis reader lost %s (%s); reconnecting", name or "redis", exc)
        route.retry_at = now + route.delay
        route.delay = min(route.delay * 2, 1.0)
        # What it carried must be read from the store once it is back.
        self.listener.on_lost(lost)
        with contextlib.suppress(Exception):
            store.refresh()  # a cluster's slots may have moved
        if not route.failed and now - route.down_since >= store.outage_timeout:
            route.failed = True
            self.listener.on_outage(route.wanted | lost)

    def _send(self, connection: Any, command: str, channels: set[bytes]) -> None:
        """(Un)subscribe ``channels``: one command on one Redis; on a cluster one
        per slot (a sharded command names channels of one slot), in one write."""
        if not self.store.cluster:
            connection.send_command(command, *channels)
            return
        by_slot: dict[int, list[bytes]] = {}
        for channel in channels:
            by_slot.setdefault(self.store.slot(channel), []).append(channel)
        commands = [(command, *group) for group in by_slot.values()]
        connection.send_packed_command(connection.pack_commands(commands))

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

    def _handle(self, message: Any, route: _Route) -> None:
        if not isinstance(message, list) or len(message) < 2:
            return
        kind, channel = message[0], message[1]
        if kind in (b"message", b"smessage"):
            self.listener.on_message(channel, message[2])
        elif kind in (b"subscribe", b"ssubscribe"):
            self.listener.on_subscribe(channel)
        elif kind == b"sunsubscribe" and route.leaving.get(channel):
            route.leaving[channel] -= 1  # the reply to our own unsubscribe
            if not route.leaving[channel]:
                del route.leaving[channel]
        elif kind == b"sunsubscribe" and channel in route.subscribed:
            # The cluster moved the channel's slot (resharding, a failover):
            # read the slots again and subscribe where it lives now.
            raise _Moved(channel.decode("utf-8", "replace"))
