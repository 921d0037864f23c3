"""``benchmarks/placement.py``: where a benchmark level's server and clients run.

Real processes, real affinities (``/proc`` and ``sched_getaffinity``): a
server of one process and its child are pinned, every thread of each, for
the length of a ``with`` and let go after; a client starts on the other
CPUs; a server of several workers is never pinned.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.placement import PIN_FROM, Placement, describe, placement

CPUS = frozenset(os.sched_getaffinity(0))
needs_two = pytest.mark.skipif(len(CPUS) < 2, reason="one CPU: nothing to place apart")

# A "server": a process with a second thread, and a child process of its own.
SERVER = """
import subprocess, sys, threading, time
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("ready", child.pid, flush=True)
time.sleep(60)
"""


def _affinities(pid: int) -> dict[int, frozenset[int]]:
    """Every thread of ``pid``, and its CPUs."""
    return {
        int(task.name): frozenset(os.sched_getaffinity(int(task.name)))
        for task in Path(f"/proc/{pid}/task").iterdir()
    }


@pytest.fixture
def server() -> Iterator[tuple[int, int]]:
    with subprocess.Popen(
        [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True
    ) as process:
        child = None
        try:
            assert process.stdout is not None
            word, pid = process.stdout.readline().split()
            assert word == "ready"
            child = int(pid)
            deadline = time.monotonic() + 10
            while len(_affinities(process.pid)) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            yield process.pid, child
        finally:
            if child is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            process.kill()


@needs_two
def test_a_server_of_one_process_and_its_clients_get_halves_of_the_cpus() -> None:
    few, many = placement(1), placement(10_000)
    for where in (few, many):
        assert where.pinned
        assert where.server and where.clients
        assert not where.server & where.clients
        assert where.server | where.clients == CPUS
    # Below PIN_FROM the clients poll without sleeping; above, they sleep.
    assert few.spin and not many.spin
    assert not placement(PIN_FROM).spin and placement(PIN_FROM - 1).spin
    assert describe(few) == {
        "pinned": True,
        "server_cpus": sorted(few.server),
        "client_cpus": sorted(few.clients),
        "spin": True,
    }


def test_a_server_of_several_workers_is_never_pinned() -> None:
    for streams in (1, 10_000):
        where = placement(streams, workers=2)
        assert not where.pinned and not where.spin
        assert where.preexec() is None
        assert describe(where) == {"pinned": False}


@needs_two
def test_every_thread_of_the_server_and_its_child_is_pinned_then_let_go(
    server: tuple[int, int],
) -> None:
    pid, child = server
    where = placement(1)
    with where.server_on(pid):
        inside = {**_affinities(pid), **_affinities(child)}
        assert len(inside) >= 3  # the main thread, the second one, the child
        assert set(inside.values()) == {where.server}
    after = {**_affinities(pid), **_affinities(child)}
    assert set(after.values()) == {CPUS}


@needs_two
def test_a_client_starts_on_the_clients_cpus() -> None:
    where = placement(10_000)
    code = "import os; print(sorted(os.sched_getaffinity(0)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=where.preexec(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(sorted(where.clients))


def test_nothing_is_pinned_where_nothing_is_placed(server: tuple[int, int]) -> None:
    pid, child = server
    before = {**_affinities(pid), **_affinities(child)}
    with Placement().server_on(pid):
        assert {**_affinities(pid), **_affinities(child)} == before
