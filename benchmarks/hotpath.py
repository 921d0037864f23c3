"""The library's own cost per stream of a broadcast, the socket's send left out.

::

    python -m benchmarks.hotpath                       # 10,000 streams: about 5 s
    python -m benchmarks.hotpath --streams 200 --rounds 3

Under ``gunicorn -k gevent`` a frame published on the hub goes to each
waiting stream's socket in the publisher's own call
(``flask_sse_flush.wsgi.direct``). At 10,000 streams a broadcast is 10,000
of those calls, each a ``send()`` (the kernel's share, the same for every
server) and the Python around it: the broker's loop, the stream's lock and
state, the writer's checks and bookkeeping. This measures that Python
alone, in one process under gevent: each stream gets the writer its
gunicorn worker would give it, over a stand-in socket whose ``send`` is
one C call that takes the whole frame, and the broker's fan-out sends one
frame to every stream, with the garbage collector off, ``--rounds`` times.
It prints the best round's time per stream. Every frame must have gone the
direct way (none queued): it checks that, so a change that quietly turned
the writer off could not look fast.

Monkey-patching happens in :func:`main`, never at import.
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

FRAME = b'event: tick\ndata: {"seq": 1, "t": 1234567890123}\n\n'


class _Socket:
    """Takes every byte at once, as a roomy socket does, without the kernel's work."""

    send = len


class _Response:
    """What a :class:`~flask_sse_flush.wsgi.direct.DirectWriter` reads of gunicorn's."""

    chunked = True
    sent = 0


def measure(streams: int, rounds: int) -> float:
    """Best time per stream of one broadcast, in nanoseconds (gevent must be active)."""
    from flask_sse_flush import EventStream
    from flask_sse_flush.brokers.base import fan_out
    from flask_sse_flush.wsgi.direct import DirectWriter

    subscribers: list[Any] = []
    writers = []
    for _ in range(streams):
        stream = EventStream(keepalive=15.0)
        writer = DirectWriter(_Response(), _Socket(), stream)  # type: ignore[arg-type]
        stream._direct = writer  # what the stream's body does as it waits
        subscribers.append(stream)
        writers.append(writer)
    best = float("inf")
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            began = time.perf_counter()
            gone = fan_out("bench", subscribers, FRAME, None)
            best = min(best, time.perf_counter() - began)
            if gone:
                raise RuntimeError(f"{len(gone)} streams refused the frame")
    finally:
        if enabled:
            gc.enable()
    queued = sum(stream.pending for stream in subscribers)
    written = {writer.direct_bytes for writer in writers}
    if queued or written != {rounds * len(FRAME)}:
        raise RuntimeError(f"not every frame went the direct way ({queued} queued)")
    for writer in writers:
        writer.disarm()
    return best / streams * 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    if args.streams < 1 or args.rounds < 1:
        parser.error("--streams and --rounds must be at least 1")

    from gevent import monkey

    monkey.patch_all()  # as gunicorn's gevent worker does
    import gevent

    cost = gevent.spawn(measure, args.streams, args.rounds).get()
    print(
        f"direct writer (gunicorn -k gevent): {cost:.0f} ns per stream, best of "
        f"{args.rounds} broadcasts to {args.streams:,} streams (send() left out)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
