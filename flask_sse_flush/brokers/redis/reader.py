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

    def on_connect(self) -> None:
        """The reader (re)connected: what it missed must be read from the store."""

    def on_subscribe(self, channel: bytes) -> None:
        """Redis confirmed the subscription to ``channel``."""

    def resync(self, subscribed: set[bytes], new: set[bytes]) -> None:
        """Catch up what needs it among ``subscribed``, except the ``new`` channels."""

    def on_message(self, channel: bytes, data: bytes) -> None:
        """A message arrived on ``channel``."""

    def on_outage(self) -> None:
        """Redis stayed unreachable past ``outage_timeout``."""


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
        self._subscribed: dict[str, set[bytes]] = {}
        self._connected_once = False
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
        down_since: float | None = None
        failed = False
        while not self._stopped:
            try:
                self._connect()
                if down_since is not None:
                    log.warning("Redis reader connected again")
                down_since, failed, delay = None, False, 0.05
                self.listener.on_connect()
                self._serve()
            except (*store.errors, BrokerUnavailable, store.redis.RedisError) as exc:
                if self.stopping():
                    break
                now = time.monotonic()
                if down_since is None:
                    down_since = now
                    if store.down_since is None:
                        store.down_since = now
                    log.warning("Redis reader lost its connection (%s); reconnecting", exc)
                if not failed and now - down_since >= store.outage_timeout:
                    failed = True
                    self.listener.on_outage()
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
        self.store.connect()
        if self._connected_once:
            self.store.refresh()  # a cluster's slots may have moved meanwhile
        self._connected_once = True
        self._connections = {}

    def _disconnect(self) -> None:
        connections, self._connections = self._connections, {}
        for connection in connections.values():
            with contextlib.suppress(Exception):
                connection.disconnect()

    def _serve(self) -> None:
        """Subscribe to the wanted channels and hand on what arrives, until stopped.

        One Redis: one connection. A cluster: one per primary serving a
        wanted channel's slot, made as needed; a channel the cluster moved
        (``MOVED`` to a subscribe, a ``sunsubscribe`` we did not ask for) or
        a lost node ends this serve: the caller reads the slots again and
        every stream catches up from the log.
        """
        store = self.store
        subscribe, unsubscribe = store.subscribe_commands
        connections = self._connections
        subscribed: dict[str, set[bytes]] = {}
        last_heard: dict[str, float] = {}
        pinged: dict[str, bool] = {}
        self._subscribed = subscribed
        while not self._stopped:
            wanted: dict[str, set[bytes]] = {}
            for channel in self.listener.wanted_channels():
                wanted.setdefault(store.pubsub_route(channel), set()).add(channel)
            new_all: set[bytes] = set()
            for route in {*wanted, *subscribed}:
                channels, held = wanted.get(route, set()), subscribed.get(route, set())
                new, old = channels - held, held - channels
                if new:
                    connection = connections.get(route)
                    if connection is None:
                        connection = connections[route] = store.pubsub_connection(route)
                        last_heard[route], pinged[route] = time.monotonic(), False
                    self._send(connection, subscribe, new)
                    new_all |= new
                if old:
                    self._send(connections[route], unsubscribe, old)
                subscribed[route] = (held | new) - old
                if not subscribed[route] and store.cluster:
                    # No channel left on that primary: its connection goes too.
                    del subscribed[route]
                    with contextlib.suppress(Exception):
                        connections.pop(route).disconnect()
            everything = set().union(*subscribed.values())
            self.listener.resync(everything, new_all)
            ready = [r for r, c in connections.items() if c.can_read(timeout=0)]
            if not ready:
                sockets = {c._sock: r for r, c in connections.items()}
                found, _, _ = select.select([*sockets, self._wake_r], [], [], self.HEALTH_INTERVAL)
                if self._wake_r in found:
                    self._drain()
                ready = [sockets[sock] for sock in found if sock in sockets]
                if not found:
                    now = time.monotonic()
                    for route, connection in connections.items():
                        if pinged[route] and now - last_heard[route] > 2 * self.HEALTH_INTERVAL:
                            raise store.redis.ConnectionError(f"no answer to PING ({route})")
                        if subscribed.get(route):
                            connection.send_command("PING")
                            pinged[route] = True
                if not ready:
                    continue
            for route in ready:
                for message in self._messages(connections[route]):
                    last_heard[route], pinged[route] = time.monotonic(), False
                    self._handle(message, subscribed[route])

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

    def _handle(self, message: Any, subscribed: set[bytes]) -> None:
        if not isinstance(message, list) or len(message) < 2:
            return
        kind, channel = message[0], message[1]
        if kind in (b"message", b"smessage"):
            self.listener.on_message(channel, message[2])
        elif kind in (b"subscribe", b"ssubscribe"):
            self.listener.on_subscribe(channel)
        elif kind == b"sunsubscribe" and channel in subscribed:
            # The cluster moved the channel's slot (resharding, a failover):
            # read the slots again and subscribe where it lives now.
            raise self.store.redis.ConnectionError(f"Redis Cluster moved {channel!r}")
