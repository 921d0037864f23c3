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

import pytest

from tests.gevent_run import run_under_gevent
from tests.parked_scenarios import SCENARIOS


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_parked_direct_writes(name: str) -> None:
    run_under_gevent(f"from tests.parked_scenarios import run\nrun({name!r})\n")


@pytest.mark.parametrize(
    "name",
    [
        "a_finished_parked_stream_is_freed_without_the_collector",
        "a_finished_stream_under_gevent_is_freed_without_the_collector",
    ],
)
def test_a_finished_stream_leaves_no_cycle(name: str) -> None:
    # A cycle through a finished stream would keep it, its queue and its
    # socket until a full collection, which at scale comes seldom and costs much.
    run_under_gevent(f"from tests.parked_scenarios import {name}\n{name}()\n")
