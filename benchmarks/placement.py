"""Where a level runs: the server on some CPUs, its clients on the others.

In a deployment the clients are browsers on other machines; here they share
the server's machine, and where the kernel runs each decides a figure as
much as the server does. Unpinned, on two CPUs:

* at thousands of streams a broadcast keeps the server and the clients busy
  at once; a client woken on the server's CPU takes turns with it for the
  whole broadcast, one that stays on its own CPU does not, and which happens
  differs between runs and between harnesses (70 or 90 ms for the same
  server's fan-out to 10,000 streams);
* at one stream, an event's latency is the time to wake its client: about
  20 µs on the server's own CPU and 90 µs on the other (a virtual machine's
  idle CPU is slow to wake), and the kernel picks one for a whole level.

So both harnesses run a server of one process on the first half of the CPUs
and its clients on the other half, at every level and for every contender
alike; and below :data:`PIN_FROM` streams a client polls without sleeping,
so no wake-up is in what it measures (above, a broadcast keeps it busy
anyway, and several client processes spinning on one CPU would take it from
each other). What is measured is then the server's: from the send time in an
event to its bytes reaching the client's socket.

Servers of several worker processes are not pinned: they are there to use
every CPU, and on a small machine no half is left for the clients.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The fewest streams of a level whose clients sleep in ``epoll`` between events.
PIN_FROM = 1_000


@dataclass(frozen=True)
class Placement:
    """The CPUs of the server and of the clients (both empty: not pinned)."""

    server: frozenset[int] = frozenset()
    clients: frozenset[int] = frozenset()
    #: Whether the clients poll without sleeping.
    spin: bool = False

    @property
    def pinned(self) -> bool:
        return bool(self.server and self.clients)

    def preexec(self) -> Callable[[], None] | None:
        """A ``preexec_fn`` for :class:`subprocess.Popen`: the child runs on the clients' CPUs."""
        if not self.pinned:
            return None
        cpus = set(self.clients)
        return lambda: os.sched_setaffinity(0, cpus)

    @contextlib.contextmanager
    def server_on(self, pid: int) -> Iterator[None]:
        """Run every thread of process ``pid`` and of its children on the server's CPUs."""
        if not self.pinned:
            yield
            return
        threads = _threads(pid)
        _set(threads, self.server)
        try:
            yield
        finally:
            _set(_threads(pid), frozenset(os.sched_getaffinity(0)))


def placement(streams: int, workers: int = 1) -> Placement:
    """Where a level of ``streams`` streams runs, for a server of ``workers`` processes."""
    cpus = sorted(os.sched_getaffinity(0))
    if workers > 1 or len(cpus) < 2:
        return Placement()
    half = len(cpus) // 2
    return Placement(frozenset(cpus[:half]), frozenset(cpus[half:]), spin=streams < PIN_FROM)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a gunicorn master's workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _threads(pid: int) -> list[int]:
    """The thread ids of ``pid`` and of its child processes."""
    found = []
    for each in [pid, *children(pid)]:
        with contextlib.suppress(OSError):
            found += [int(task.name) for task in Path(f"/proc/{each}/task").iterdir()]
    return found


def _set(threads: list[int], cpus: frozenset[int]) -> None:
    for tid in threads:
        with contextlib.suppress(ProcessLookupError):  # a thread that has ended
            os.sched_setaffinity(tid, cpus)


def describe(value: Placement) -> dict[str, Any]:
    """The placement as the results record it."""
    if not value.pinned:
        return {"pinned": False}
    return {
        "pinned": True,
        "server_cpus": sorted(value.server),
        "client_cpus": sorted(value.clients),
        "spin": value.spin,
    }
