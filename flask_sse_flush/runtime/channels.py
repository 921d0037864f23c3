"""Channels: many writers (any thread or greenlet), one reader (a stream).

A stream's generator reads its channel; a job in a native OS thread, a
greenlet or the broker's fan-out writes to it. Under gevent the reader is a
greenlet and a writer may be another OS thread, which must not touch the
hub: the gevent channel wakes its reader through a loop *async watcher*,
the one primitive libev and libuv make safe to signal from any OS thread.
Without gevent, a plain ``threading.Condition`` does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from typing import Any, Generic, Protocol, TypeVar

from ..wire.frames import newest_of_each_level
from .detect import gevent_is_active, native_thread_ident, new_lock

__all__ = ["Channel", "Empty", "Overflow", "new_channel"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Empty(Exception):
    """Nothing arrived on a channel before the timeout."""


class Overflow(Exception):
    """A channel's reader fell too far behind: the channel let go of what waited.

    Raised by the ``put`` that found ``overflow`` items waiting that cannot
    be coalesced, and by every ``put`` and ``get`` after it.
    """


class Channel(Protocol[T]):
    """A many-writer, one-reader FIFO whose ``put`` never blocks.

    An item put with a ``level`` key is a level, not a log entry (progress
    is one): when more than ``limit`` items wait, only the newest item of
    each level stays queued. Items without a key are never coalesced; they
    are bounded by the overflow policy instead: once ``overflow`` of them
    wait, the next ``put`` drops *everything* queued and raises
    :class:`Overflow`, and so does every ``put`` and ``get`` after it. The
    reader is then too slow to be kept up to date item by item; its owner
    ends it, and it catches up from a log (a stream's client reconnects
    with its ``Last-Event-ID``).
    """

    def put(
        self,
        item: T,
        level: Hashable | None = None,
        stamp: float | None = None,
        *,
        bounded: bool = True,
        schedule: bool = True,
    ) -> None:
        """Queue ``item``; ``stamp`` (a time) comes back as :attr:`stamp` when it is read.

        ``bounded=False`` queues it past the overflow bound (an end marker:
        closing must not overflow a channel that was just within it).
        ``schedule=False``: a caller in the hub's own thread will call the
        listener itself (:meth:`_HubChannel.listen`), so no wake-up is
        scheduled for it; from any other thread the reader is woken as ever.
        """
        ...

    def get(self, timeout: float | None) -> T:
        """Return the next item; raise :class:`Empty` after ``timeout`` seconds."""
        ...

    def get_ready(self, budget: int, stamps: list[float | None] | None = None) -> list[T]:
        """Return the items already queued, oldest first, without waiting.

        Whole items only, while their ``len()`` adds up to at most
        ``budget`` (the first is always taken); an item without a length
        (an end marker) is taken and ends the list. Each item's ``stamp`` is
        appended to ``stamps`` when given. Returns ``[]`` when nothing waits
        or the channel has overflowed (the next :meth:`get` raises).
        """
        ...

    def pending(self) -> int:
        """How many items wait to be read."""
        ...

    #: How many items coalescing has dropped so far.
    coalesced: int
    #: The ``stamp`` the item :meth:`get` returned last was put with (or ``None``).
    stamp: float | None

    def close(self) -> None: ...


class _Queue(Generic[T]):
    """The bounded, coalescing FIFO both channels share; callers hold a lock.

    Items and their levels sit in parallel lists rather than one list of
    pairs: a put then allocates no tuple, which matters when one event fans
    out to 10,000 streams (each tuple would feed the garbage collector).
    The levels list is made only once a level arrives, so a stream that
    never carries one keeps a single list.

    Lists read from ``head`` rather than deques: an empty list costs 56
    bytes where a deque keeps a 64-slot block (about 600), and memory per
    idle stream counts at 10,000 streams. Reading advances ``head``; the
    lists are emptied (freeing their arrays) when the reader catches up and
    cut when more than half of a long one is read, so each read stays O(1)
    amortised.
    """

    def __init__(self, limit: int | None, overflow: int | None = None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"a channel's limit must be at least 1, not {limit}")
        if overflow is not None and overflow < 1:
            raise ValueError(f"a channel's overflow must be at least 1, not {overflow}")
        self.limit = limit
        self.overflow = overflow
        self.overflowed = False
        self.plain = 0  # items waiting without a level: what coalescing cannot shrink
        self.items: list[Any] = []  # T, or None where an item was read
        self.head = 0  # the next item to read
        self.levels: list[Hashable | None] | None = None
        # Coalesce when the queue passes this; raised while frames that
        # cannot be coalesced fill it, so each put stays O(1) amortised.
        self._threshold = limit
        self._warned = False
        self.coalesced = 0
        # Put times, beside the items (floats: nothing for the garbage
        # collector, unlike a tuple per item); made by the first stamp.
        self.stamps: list[float] | None = None
        self.stamp: float | None = None

    def push(
        self, item: T, level: Hashable | None, stamp: float | None = None, bounded: bool = True
    ) -> None:
        if self.overflowed:
            raise Overflow
        if level is None:
            if bounded and self.overflow is not None and self.plain >= self.overflow:
                self._overflow()
            self.plain += 1
        if stamp is not None or self.stamps is not None:
            if self.stamps is None:
                self.stamps = [0.0] * len(self.items)
            self.stamps.append(0.0 if stamp is None else stamp)
        self.items.append(item)
        if level is None and self.levels is None:
            return
        if self.levels is None:
            self.levels = [None] * (len(self.items) - 1)
        self.levels.append(level)
        # Only a level can make room (by replacing its older self), so only a
        # level triggers coalescing; an end marker never drops what waits.
        if level is not None and self._threshold is not None and self.pending() > self._threshold:
            self._coalesce(self.levels)

    def _coalesce(self, levels: list[Hashable | None]) -> None:
        # Runs once per `limit` puts at most, so it costs O(1) per put.
        head = self.head
        old_levels = levels[head:]
        keep = newest_of_each_level(old_levels)
        items = self.items
        self.coalesced += len(items) - head - len(keep)
        self.items = [items[head + i] for i in keep]
        self.levels = [old_levels[i] for i in keep]
        if self.stamps is not None:
            stamps = self.stamps
            self.stamps = [stamps[head + i] for i in keep]
        self.head = 0
        assert self.limit is not None
        # Past the limit with frames that cannot be coalesced: wait for another
        # `limit` puts before trying again, not one.
        plain = sum(1 for i in keep if old_levels[i] is None)
        self._threshold = self.limit if len(keep) <= self.limit else plain + self.limit
        if len(keep) > self.limit and not self._warned:
            self._warned = True
            log.warning("a slow client has %d events queued that cannot be coalesced", len(keep))

    def _overflow(self) -> None:
        # Let go of the memory now: the reader may not read again for long.
        self.overflowed = True
        self.items, self.levels, self.stamps, self.head = [], None, None, 0
        self.plain = 0
        raise Overflow

    def pending(self) -> int:
        return len(self.items) - self.head

    def pop_ready(self, budget: int, stamps: list[float | None] | None) -> list[T]:
        taken: list[T] = []
        while self.head < len(self.items) and not self.overflowed:
            first: Any = self.items[self.head]
            size = len(first) if isinstance(first, (bytes, bytearray)) else None
            if taken and size is not None and size > budget:
                break
            taken.append(self.pop())
            if stamps is not None:
                stamps.append(self.stamp)
            if size is None:
                break
            budget -= size
        return taken

    def pop(self) -> T:
        if self.overflowed:
            raise Overflow
        head, items, levels = self.head, self.items, self.levels
        item: T = items[head]
        if levels is None or levels[head] is None:
            self.plain -= 1
        if self.stamps is not None:
            self.stamp = self.stamps[head]
        head += 1
        if head == len(items):  # caught up: let go of the arrays
            self.items, self.head = [], 0
            if levels is not None:
                self.levels = []
            if self.stamps is not None:
                self.stamps = []
        elif head >= 64 and 2 * head >= len(items):  # cut what was read
            del items[:head]
            if levels is not None:
                del levels[:head]
            if self.stamps is not None:
                del self.stamps[:head]
            self.head = 0
        else:
            items[head - 1] = None  # drop the reference now
            self.head = head
        if self._threshold != self.limit and self.pending() <= (self.limit or 0):
            self._threshold = self.limit
        return item


class _ThreadChannel(_Queue[T]):
    """A channel for ordinary OS threads."""

    def __init__(self, limit: int | None, overflow: int | None = None) -> None:
        super().__init__(limit, overflow)
        self._ready = threading.Condition(threading.Lock())

    def put(
        self,
        item: T,
        level: Hashable | None = None,
        stamp: float | None = None,
        *,
        bounded: bool = True,
        schedule: bool = True,
    ) -> None:
        with self._ready:
            try:
                self.push(item, level, stamp, bounded)
            finally:
                self._ready.notify()  # an overflow wakes the reader too

    def get(self, timeout: float | None) -> T:
        with self._ready:
            if not self._ready.wait_for(lambda: self.pending() or self.overflowed, timeout):
                raise Empty
            return self.pop()

    def get_ready(self, budget: int, stamps: list[float | None] | None = None) -> list[T]:
        with self._ready:
            return self.pop_ready(budget, stamps)

    def close(self) -> None:
        pass


class _HubChannel(_Queue[T]):
    """A channel read by a greenlet, written from any greenlet or OS thread.

    The reader parks on a ``Waiter`` and a put wakes it through one hub
    callback, as gevent's own queues do; that costs a third of setting a
    ``gevent.event.Event``, which counts when one event fans out to 10,000
    streams.
    """

    def __init__(self, limit: int | None, overflow: int | None = None) -> None:
        import gevent
        from gevent.hub import Waiter

        super().__init__(limit, overflow)
        self._hub: Any = gevent.get_hub()
        self._hub_thread: int = self._hub.thread_ident
        self._get_ident: Callable[[], int] = native_thread_ident()
        self._new_waiter: Callable[..., Any] = Waiter
        # A native lock: the writer may be another OS thread. Held only for a
        # few statements, so the hub never waits on it for long.
        self._lock: Any = new_lock()
        self._waiter: Any = None
        self._wake_pending = False
        # Made by the first get(), on the hub: a stream that is never served
        # (a view that answers 403 instead) then leaves no started watcher,
        # which would keep itself alive in the loop for good.
        self._watcher: Any = None
        self._timer: Any = None  # get()'s timeout, and the seconds it was made for
        self._timer_after: float | None = None
        self._closed = False
        # A reader without a greenlet (listen()): called on the hub instead.
        self._listener: Callable[[], Any] | None = None

    def listen(self, callback: Callable[[], Any]) -> None:
        """Have ``callback()`` called on the hub whenever items arrive; call it on the hub.

        For a reader that is not a greenlet (a stream the worker parked): it
        reads with :meth:`get_ready` from the callback, which must neither
        block nor switch. Replaces :meth:`get`; once per channel.
        """
        with self._lock:
            self._listener = callback
            if self._watcher is None and not self._closed:
                self._watcher = self._hub.loop.async_()
                self._watcher.start(self._wake)

    def put(
        self,
        item: T,
        level: Hashable | None = None,
        stamp: float | None = None,
        *,
        bounded: bool = True,
        schedule: bool = True,
    ) -> None:
        with self._lock:
            try:
                self.push(item, level, stamp, bounded)
            except Overflow:
                # The reader wakes to find it (it cannot be waiting on an
                # empty channel, but its owner may close it meanwhile).
                self._wake_reader_after_overflow()
                raise
            if self._get_ident() != self._hub_thread:
                # Another OS thread may not touch the hub: the async watcher
                # wakes it. Before the first get() there is no watcher and
                # nobody to wake: that get() finds the item.
                if self._watcher is not None and not self._closed:
                    self._watcher.send()
                return
        if self._listener is not None:
            if schedule and not self._wake_pending:
                self._wake_pending = True
                self._hub.loop.run_callback(self._wake)
        elif self._waiter is not None and not self._wake_pending:
            self._wake_pending = True
            self._hub.loop.run_callback(self._wake)

    def _wake_reader_after_overflow(self) -> None:
        """Wake the reader once the channel overflowed; lock held."""
        if self._get_ident() != self._hub_thread:
            if self._watcher is not None and not self._closed:
                self._watcher.send()
        elif (self._waiter is not None or self._listener is not None) and not self._wake_pending:
            self._wake_pending = True
            self._hub.loop.run_callback(self._wake)

    def _wake(self) -> None:
        """Resume the parked reader (or call the listener); runs in the hub greenlet."""
        self._wake_pending = False
        if self._listener is not None:
            if not self._closed:
                self._listener()
            return
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.switch(True)

    def get(self, timeout: float | None) -> T:
        while True:
            with self._lock:
                if self.pending() or self.overflowed:
                    return self.pop()
                if self._watcher is None and not self._closed:
                    self._watcher = self._hub.loop.async_()
                    self._watcher.start(self._wake)
            # No put can slip in between: a greenlet's put cannot run before
            # this one switches away, and a thread's put wakes the hub through
            # the watcher, whose callback finds the waiter set below.
            waiter = self._new_waiter(self._hub)
            self._waiter = waiter
            timer = None
            if timeout is not None:
                timer = self._timer
                if timer is None or self._timer_after != timeout:
                    # One timer per timeout (a stream's keepalive never
                    # changes), for every wait: making one and closing it
                    # cost more than the rest of a wait. A repeating one,
                    # so that again() starts it for the whole timeout
                    # however the last wait ended; stopped after each.
                    if timer is not None:
                        timer.close()
                    timer = self._timer = self._hub.loop.timer(timeout, timeout)
                    self._timer_after = timeout
                # From now, not from the loop's cached time: after a busy
                # stretch (or CPU taken by other processes) that time lags,
                # and the keepalive came up to 40 % early.
                timer.again(waiter.switch, False, update=True)
            try:
                woken = waiter.get()
            finally:
                if self._waiter is waiter:
                    self._waiter = None
                if timer is not None:
                    timer.stop()
            if not woken and not self.pending() and not self.overflowed:
                raise Empty

    def get_ready(self, budget: int, stamps: list[float | None] | None = None) -> list[T]:
        with self._lock:
            return self.pop_ready(budget, stamps)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # The listener (a parked stream's method) keeps the stream that
            # keeps this channel: let go, or only a full collection frees them.
            self._listener = None
            if self._watcher is not None:
                self._watcher.stop()
                self._watcher.close()
            if self._timer is not None:
                self._timer.close()
                self._timer = None


def new_channel(limit: int | None = None, overflow: int | None = None) -> Channel[Any]:
    """Return a channel suited to the current process (gevent or threads).

    :param limit: how many items may wait before levels are coalesced;
        ``None`` for no limit.
    :param overflow: how many items without a level may wait; one more
        overflows the channel (see :class:`Channel`). ``None``: no bound.
    """
    if gevent_is_active():
        return _HubChannel(limit, overflow)
    return _ThreadChannel(limit, overflow)
