"""The timer wheel behind keepalives (``flask_sse_flush.runtime.wheel``), on a real gevent loop."""

from __future__ import annotations

import time
from collections.abc import Iterator

import gevent
import pytest

from flask_sse_flush.runtime.wheel import Wheel


class Member:
    """Records when it was called, and in which turn of the loop."""

    def __init__(self, turns: list[int], log: list[tuple[Member, float, int]]) -> None:
        self._slot: int | None = None
        self.turns = turns
        self.log = log
        self.again: tuple[Wheel, float] | None = None  # added back, once, when called

    def _on_tick(self) -> None:
        self.log.append((self, time.monotonic(), self.turns[0]))
        if self.again is not None:
            wheel, due = self.again
            self.again = None
            wheel.add(self, due)


@pytest.fixture
def loop_turns() -> Iterator[list[int]]:
    """The number of the loop's current turn (a prepare watcher counts them)."""
    turns = [0]
    watcher = gevent.get_hub().loop.prepare()
    watcher.start(lambda: turns.__setitem__(0, turns[0] + 1))
    yield turns
    watcher.stop()
    watcher.close()


@pytest.fixture
def wheel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Wheel]:
    """A wheel on the hub's loop; no error may reach the hub while it turns."""
    hub = gevent.get_hub()
    errors: list[object] = []
    monkeypatch.setattr(hub, "handle_error", lambda *args: errors.append(args))
    made = Wheel(hub.loop)
    yield made
    made.close()
    assert errors == []


def until_empty(wheel: Wheel, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while len(wheel) and time.monotonic() < deadline:
        gevent.sleep(0.01)
    gevent.sleep(Wheel.RESOLUTION * 2)  # a turn with nothing left: the timer stops


def test_members_are_called_once_due_never_sooner(wheel: Wheel, loop_turns: list[int]) -> None:
    log: list[tuple[Member, float, int]] = []
    start = time.monotonic()
    members = {Member(loop_turns, log): start + 0.02 * i for i in range(1, 8)}
    for member, due in members.items():
        wheel.add(member, due)
    until_empty(wheel)
    called = [m for m, _, _ in log]
    assert len(called) == len(set(called)) == len(members)
    assert set(called) == set(members)
    for member, at, _ in log:
        # Never sooner; later by two slots at most, and what a busy machine adds.
        assert members[member] <= at <= members[member] + 2 * Wheel.RESOLUTION + 0.5
    assert gevent.get_hub().loop.activecnt == 1  # the prepare watcher: the wheel's timer stopped


def test_members_due_together_are_called_oldest_first(wheel: Wheel, loop_turns: list[int]) -> None:
    log: list[tuple[Member, float, int]] = []
    members = [Member(loop_turns, log) for _ in range(Wheel.BATCH * 3)]
    due = time.monotonic() + 0.05
    for member in members:
        wheel.add(member, due)
    until_empty(wheel)
    assert [m for m, _, _ in log] == members


def test_a_member_may_take_others_off_the_wheel_in_its_call(
    wheel: Wheel, loop_turns: list[int]
) -> None:
    log: list[tuple[Member, float, int]] = []
    members = [Member(loop_turns, log) for _ in range(5)]

    def first_call() -> None:
        log.append((members[0], time.monotonic(), loop_turns[0]))
        for other in members[1:]:
            wheel.discard(other)

    members[0]._on_tick = first_call  # type: ignore[method-assign]
    due = time.monotonic() + 0.05
    for member in members:
        wheel.add(member, due)
    until_empty(wheel)
    assert [m for m, _, _ in log] == [members[0]]
    assert gevent.get_hub().loop.activecnt == 1  # the wheel's timer stopped: no error midway


def test_a_discarded_member_is_not_called_and_one_added_back_is_called_again(
    wheel: Wheel, loop_turns: list[int]
) -> None:
    log: list[tuple[Member, float, int]] = []
    gone, back = Member(loop_turns, log), Member(loop_turns, log)
    now = time.monotonic()
    wheel.add(gone, now + 0.05)
    wheel.add(back, now + 0.05)
    back.again = (wheel, now + 0.15)
    wheel.discard(gone)
    until_empty(wheel)
    assert [m for m, _, _ in log] == [back, back]
    assert log[1][1] >= now + 0.15


def test_many_due_at_once_are_called_a_batch_per_turn_of_the_loop(
    wheel: Wheel, loop_turns: list[int]
) -> None:
    """Ten thousand members due together never hold the loop for more than a batch:
    other timers and I/O run between batches."""
    log: list[tuple[Member, float, int]] = []
    discarded: list[Member] = []

    class Discarding(Member):
        """The first called takes ten members still waiting for their batch off the wheel."""

        def _on_tick(self) -> None:
            super()._on_tick()
            if not discarded:
                discarded.extend([m for m in members if m._slot is not None][:10])
                for member in discarded:
                    wheel.discard(member)

    members = [Discarding(loop_turns, log) for _ in range(10_000)]
    due = time.monotonic() + 0.05
    for member in members:
        wheel.add(member, due)
    until_empty(wheel)
    called = [m for m, _, _ in log]
    assert len(discarded) == 10
    assert len(called) == len(set(called)) == len(members) - len(discarded)
    assert not set(discarded) & set(called)
    per_turn: dict[int, int] = {}
    for _, _, turn in log:
        per_turn[turn] = per_turn.get(turn, 0) + 1
    # A batch is a few hundred (Wheel.BATCH); ten thousand in one turn is the hazard.
    assert max(per_turn.values()) <= min(Wheel.BATCH, 1_000), per_turn
    assert len(per_turn) >= len(called) // min(Wheel.BATCH, 1_000)


def test_the_timer_stops_when_nothing_waits(wheel: Wheel, loop_turns: list[int]) -> None:
    log: list[tuple[Member, float, int]] = []
    member = Member(loop_turns, log)
    wheel.add(member, time.monotonic() + 0.2)
    wheel.discard(member)
    gevent.sleep(Wheel.RESOLUTION * 3)
    assert gevent.get_hub().loop.activecnt == 1  # the prepare watcher alone
    assert log == []


def test_close_forgets_every_member(wheel: Wheel, loop_turns: list[int]) -> None:
    log: list[tuple[Member, float, int]] = []
    member = Member(loop_turns, log)
    wheel.add(member, time.monotonic() + 0.05)
    wheel.close()
    gevent.sleep(0.15)
    assert log == []
    assert member._slot is None
