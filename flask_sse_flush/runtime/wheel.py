"""A timer wheel: when many streams are next due (a keepalive, a rotation), with one loop timer.

Each member sits in the slot of the moment it is next due, rounded up to
:attr:`Wheel.RESOLUTION`, so it is never called early and at most two
slots late (the loop timer that turns the wheel runs at its own phase). A
write does not move a member: when its slot comes and it turns out not due
(it wrote since), it puts itself in a later slot.

Why not a timer per stream: each fired once a keepalive period, found its
busy stream not due and made a new watcher (under ``-k gevent``, it also
woke the stream's greenlet to find that out). As every stream had written
in the same broadcast, ten thousand such callbacks came due together and
held the hub for tens of milliseconds, and the broadcast that fell in
that time waited for them.

Members whose slot has come are called oldest first, at most
:attr:`Wheel.BATCH` in one turn of the loop: the rest wait for its next
turn, after the timers and I/O that came due meanwhile (a broadcast's
publisher among them), so the hub is never held for longer than a batch
takes (well under a millisecond).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Any, Protocol

__all__ = ["Timed", "Wheel"]

#: The slot of a member whose time has come, waiting for its batch.
_LATE = -1


class Timed(Protocol):
    """What a wheel times: its slot, kept by the wheel, and what to call when due."""

    _slot: int | None

    def _on_tick(self) -> None: ...


class Wheel:
    """When each member is next due; calls ``member._on_tick()`` then, on the loop's thread.

    :param loop: the gevent loop whose timers drive it; use it only from
        that loop's thread. Its timer runs while any member waits, not
        otherwise.
    """

    #: How finely due times are told apart, seconds.
    RESOLUTION = 0.05
    #: The most members called in one turn of the loop.
    BATCH = 256

    def __init__(self, loop: Any) -> None:
        self._slots: dict[int, dict[Timed, None]] = {}
        # Their slot has come: called a batch a turn, oldest first.
        self._late: OrderedDict[Timed, None] = OrderedDict()
        self._done = math.floor(time.monotonic() / self.RESOLUTION)  # every slot up to it came
        self._timer: Any = loop.timer(self.RESOLUTION, self.RESOLUTION)  # repeats
        # Runs each batch: a one-shot timer started from its own callback
        # fires on the loop's next turn, never twice in one.
        self._batch: Any = loop.timer(0.0)
        self._running = False

    def __len__(self) -> int:
        """How many members wait."""
        return sum(map(len, self._slots.values())) + len(self._late)

    def add(self, member: Timed, due: float) -> None:
        """Have ``member._on_tick()`` called once ``due`` (``time.monotonic()``) has come."""
        self.discard(member)
        if not self._running:  # stopped since: no slot in between to look at
            self._done = max(self._done, math.floor(time.monotonic() / self.RESOLUTION))
        slot = max(math.ceil(due / self.RESOLUTION), self._done + 1)
        members = self._slots.get(slot)
        if members is None:
            members = self._slots[slot] = {}
        members[member] = None
        member._slot = slot
        if not self._running:
            self._running = True
            self._timer.start(self._turn)

    def discard(self, member: Timed) -> None:
        """Take ``member`` off the wheel, if it is on it."""
        slot = member._slot
        if slot is None:
            return
        member._slot = None
        if slot == _LATE:
            self._late.pop(member, None)
            return
        members = self._slots.get(slot)
        if members is not None:
            members.pop(member, None)
            if not members:
                del self._slots[slot]

    def _turn(self) -> None:
        now = math.floor(time.monotonic() / self.RESOLUTION)
        late = self._late
        while self._done < now:  # every slot that has come, a late timer's too
            self._done += 1
            members = self._slots.pop(self._done, None)
            if members is None:
                continue
            for member in members:
                member._slot = _LATE
            late.update(members)
        if late:
            if not self._batch.active:
                self._batch.start(self._call_late)
        elif not self._slots:
            self._running = False
            self._timer.stop()

    def _call_late(self) -> None:
        late = self._late
        called = 0
        while late and called < self.BATCH:  # a call may take others off the wheel
            member, _ = late.popitem(last=False)
            member._slot = None
            member._on_tick()  # which may put it back
            called += 1
        if late:
            self._batch.start(self._call_late)
        elif not self._slots and self._running:
            self._running = False
            self._timer.stop()

    def close(self) -> None:
        """Forget every member and let go of the loop's timers."""
        for member in [*self._late, *(m for ms in self._slots.values() for m in ms)]:
            member._slot = None
        self._slots.clear()
        self._late.clear()
        self._running = False
        for timer in (self._timer, self._batch):
            timer.stop()
            timer.close()
