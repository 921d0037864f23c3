"""The stream worker's timer wheel: one loop timer for every parked stream's keepalive
and rotation, on gevent's real loop.

Each parked stream asks to be called back at a moment; the wheel calls it
back once that moment has come (never before, at most a resolution after,
plus what a busy machine adds), once per request, and stops its timer when
nothing is left to wait for.
"""

from __future__ import annotations

import time
from typing import Any

import gevent
import pytest

from flask_sse_flush.wsgi.worker import _Wheel

# A busy two-CPU machine may run a loop callback this late.
LATE = 0.3


class Due:
    """What the wheel sees of a parked stream: its slot and its callback."""

    def __init__(self, wheel: _Wheel | None = None, again: float | None = None) -> None:
        self._slot: int | None = None
        self.calls: list[float] = []
        self.wheel, self.again = wheel, again

    def _on_tick(self) -> None:
        self.calls.append(time.monotonic())
        if self.again is not None and self.wheel is not None:
            self.wheel.add(self, time.monotonic() + self.again)  # type: ignore[arg-type]
            self.again = None


@pytest.fixture
def wheel() -> Any:
    made = _Wheel(gevent.get_hub().loop)
    yield made
    made.close()


def wait_until(check: Any, seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the wheel never called back"
        gevent.sleep(0.01)


def test_each_is_called_back_once_its_moment_has_come_never_before(wheel: _Wheel) -> None:
    start = time.monotonic()
    waits = [0.0, 0.12, 0.05, 0.3, -1.0]  # a moment already past is called back at once
    items = [Due() for _ in waits]
    for item, wait in zip(items, waits, strict=True):
        wheel.add(item, start + wait)  # type: ignore[arg-type]
    wait_until(lambda: all(item.calls for item in items))
    gevent.sleep(0.2)
    for item, wait in zip(items, waits, strict=True):
        assert len(item.calls) == 1, "called back more than once"
        late = item.calls[0] - (start + max(wait, 0.0))
        assert 0.0 <= late < _Wheel.RESOLUTION + LATE, (wait, late)
    assert not wheel._timer.active, "the timer runs with nothing to wait for"


def test_asking_again_replaces_the_earlier_moment(wheel: _Wheel) -> None:
    item = Due()
    start = time.monotonic()
    wheel.add(item, start + 0.05)  # type: ignore[arg-type]
    wheel.add(item, start + 0.25)  # type: ignore[arg-type]
    wait_until(lambda: bool(item.calls))
    gevent.sleep(0.1)
    assert len(item.calls) == 1
    assert item.calls[0] >= start + 0.25


def test_a_discarded_stream_is_never_called_back(wheel: _Wheel) -> None:
    kept, dropped = Due(), Due()
    start = time.monotonic()
    wheel.add(kept, start + 0.1)  # type: ignore[arg-type]
    wheel.add(dropped, start + 0.1)  # type: ignore[arg-type]
    wheel.discard(dropped)  # type: ignore[arg-type]
    wheel.discard(dropped)  # twice is harmless
    wait_until(lambda: bool(kept.calls))
    gevent.sleep(0.1)
    assert dropped.calls == [] and dropped._slot is None


def test_a_callback_may_ask_again_and_the_timer_starts_again_after_stopping(
    wheel: _Wheel,
) -> None:
    item = Due(wheel, again=0.1)
    wheel.add(item, time.monotonic())  # type: ignore[arg-type]
    wait_until(lambda: len(item.calls) == 2)
    assert item.calls[1] - item.calls[0] >= 0.1
    wait_until(lambda: not wheel._timer.active)
    later = Due()
    wheel.add(later, time.monotonic() + 0.05)  # type: ignore[arg-type]
    wait_until(lambda: bool(later.calls))
