"""Shared by every test: the timing margins report at the end of a run."""

from __future__ import annotations

import pytest

from tests.timing import measurements


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    checked = measurements()
    if not checked:
        return
    terminalreporter.section("timing bounds, tightest first")
    for m in checked[:8]:
        terminalreporter.write_line(
            f"{m.used:6.0%} of bound  {m.value:.4g} < {m.limit:.4g}  {m.what}  {m.test}"
        )
