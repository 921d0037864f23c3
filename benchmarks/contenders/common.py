"""What every contender serves, so one client measures them all alike.

* ``GET /sub``: an event stream subscribed to the server's broadcast;
  keepalive comments every second while idle.
* ``GET /pub?count=K&interval=S[&start=NS]``: broadcast K events, S seconds
  apart, to every subscriber; answers at once. With ``start`` (a
  ``time_ns()``), event *i* is due at ``start + i*S`` and carries that due
  time instead of its send time, so a stalled server shows as latency.
* ``GET /count``: ``{"n": subscribers}``.
* ``GET /burst?count=K``: a stream of K events sent as fast as possible.
* ``GET /cpu?seconds=S[&executor=NAME]``: start a job that holds the GIL
  for S seconds, the way that contender's users would run it beside their
  streams (ours: a render job on the library's executor NAME, ``thread``
  by default).

Every event is ``event: tick`` with data ``{"seq": n, "t": <time_ns at send>}``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask_sse_flush import Progress

KEEPALIVE = 1.0


def tick(seq: int, due: int | None = None) -> dict[str, int]:
    return {"seq": seq, "t": time.time_ns() if due is None else due}


def tick_frame(seq: int, due: int | None = None) -> bytes:
    t = time.time_ns() if due is None else due
    return b'event: tick\ndata: {"seq":%d,"t":%d}\n\n' % (seq, t)


def schedule(count: int, interval: float, start: int | None) -> list[int | None]:
    """Due times (ns) of the events of one /pub, or None for "when sent"."""
    if start is None:
        return [None] * count
    return [start + round(i * interval * 1e9) for i in range(count)]


def pause(interval: float, next_due: int | None) -> float:
    """How long to sleep before the next event."""
    if next_due is None:
        return interval
    return max(0.0, (next_due - time.time_ns()) / 1e9)


def burn(seconds: float) -> None:
    """Hold the GIL in pure Python for ``seconds``."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        sum(range(500))


def burn_render(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """A CPU-bound render: :func:`burn` for ``payload["seconds"]``, reporting progress.

    Module-level, so ``executor="process"`` can import it by name in its child.
    """
    seconds = float(payload["seconds"])
    for step in range(10):
        progress(step * 10, "burning")
        burn(seconds / 10)
    return {"seconds": seconds}
