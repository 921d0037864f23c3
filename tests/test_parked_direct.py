"""A parked stream's direct writes (the stream worker's fan-out fast path), and when they stop.

A stream the worker parked is written in the publisher's own call while
nothing waits before the frame. Any refusal (another thread's frame, a full
socket) or a frame sent in part unhooks that path until the loop has written
what waits: nothing overtakes a frame that waits. Each scenario
(``tests/parked_scenarios.py``) runs in a process of its own under gevent,
as the worker does, with real sockets (a socketpair), the hub's real loop
and wheel, and a stand-in for the worker's few fields.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.parked_scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_parked_direct_writes(name: str) -> None:
    script = (
        "from gevent import monkey\nmonkey.patch_all()\n"
        f"from tests.parked_scenarios import run\nrun({name!r})\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-c", script],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
