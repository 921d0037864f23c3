"""Timing bounds the tests assert, recorded so each run reports its margins.

A timing test states a behavioural bound (p95 latency under 100 ms, headers
within 0.5 s); :func:`assert_under` checks it and records how close the
measurement came, and ``tests/conftest.py`` prints the tightest margins at
the end of the run. The figures are for reading, never asserted on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Measurement", "assert_p95_under", "assert_under", "measurements", "percentile"]


@dataclass(frozen=True)
class Measurement:
    test: str
    what: str
    value: float
    limit: float

    @property
    def used(self) -> float:
        """The share of the bound the measurement used (1.0 is on the bound)."""
        return self.value / self.limit if self.limit else float("inf")


_RECORDED: list[Measurement] = []


def measurements() -> list[Measurement]:
    """Every bound checked so far in this run, tightest first."""
    return sorted(_RECORDED, key=lambda m: m.used, reverse=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _current_test() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]


def assert_under(value: float, limit: float, what: str, detail: object = None) -> None:
    """Assert ``value < limit`` and record the margin."""
    _RECORDED.append(Measurement(_current_test(), what, value, limit))
    assert value < limit, f"{what}: {value:.4g} is not under {limit:.4g}; {detail!r}"[:4000]


def assert_p95_under(values: list[float], limit: float, what: str = "p95 latency") -> None:
    """Assert that the 95th percentile of ``values`` is under ``limit``."""
    assert values, f"{what}: nothing was measured"
    assert_under(percentile(values, 95), limit, what, [round(v, 4) for v in values])
