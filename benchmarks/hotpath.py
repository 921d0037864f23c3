"""The library's own cost per stream of a broadcast, the socket's send left out.

::

    python -m benchmarks.hotpath                       # 10,000 streams: about 10 s
    python -m benchmarks.hotpath --streams 200 --rounds 3

Under ``gunicorn -k gevent`` a frame published on the hub goes to each
waiting stream's socket in the publisher's own call
(``flask_sse_flush.wsgi.direct``); under the stream worker
(``flask_sse_flush.wsgi.worker.StreamWorker``) to each parked stream's. At
10,000 streams a broadcast is 10,000 of those calls, each a ``send()`` (the
kernel's share, the same for every server) and the Python around it: the
broker's loop, the stream's lock and state, the writer's checks and
bookkeeping. This measures that Python alone, for each worker, in one
process under gevent: each stream gets the writer its gunicorn worker
would give it, over a stand-in socket whose ``send`` is one C call that
takes the whole frame, and the broker's fan-out sends one frame to every
stream, with the garbage collector off, ``--rounds`` times. It prints the
best round's time per stream. Every frame must have gone the direct way
(none queued): it checks that, so a change that quietly turned a writer
off could not look fast.

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


class _Parking:
    """What a parked stream reads of :class:`~flask_sse_flush.wsgi.worker.StreamWorker`."""

    def __init__(self, hub_thread: int) -> None:
        self._hub_thread = hub_thread
        self.sent_at_once = int  # the metrics' count, left out with the metrics


class _Response:
    """What a :class:`~flask_sse_flush.wsgi.direct.DirectWriter` reads of gunicorn's."""

    chunked = True
    sent = 0


def measure(streams: int, rounds: int) -> float:
    """Best time per stream of one broadcast to writers of ``-k gevent``, in nanoseconds.

    gevent must be active.
    """
    from flask_sse_flush import EventStream
    from flask_sse_flush.wsgi.direct import DirectWriter

    subscribers: list[Any] = []
    writers = []
    for _ in range(streams):
        stream = EventStream(keepalive=15.0)
        writer = DirectWriter(_Response(), _Socket(), stream)  # type: ignore[arg-type]
        stream._direct = writer  # what the stream's body does as it waits
        subscribers.append(stream)
        writers.append(writer)
    best = _broadcasts(subscribers, rounds)
    written = {writer.direct_bytes for writer in writers}
    if written != {rounds * len(FRAME)}:
        raise RuntimeError("not every frame went the direct way")
    for writer in writers:
        writer.disarm()
    return best / streams * 1e9


def measure_parked(streams: int, rounds: int) -> float:
    """Best time per stream of one broadcast to streams the stream worker parked, in ns.

    gevent must be active. Each stream is parked as
    :class:`~flask_sse_flush.wsgi.worker.StreamWorker` parks it, over the
    stand-in socket (its watchers made on one real descriptor, never started).
    """
    import socket

    import gevent

    from flask_sse_flush import EventStream
    from flask_sse_flush.wsgi.stream import StreamBody
    from flask_sse_flush.wsgi.worker import ParkedStream

    hub = gevent.get_hub()
    worker = _Parking(hub.thread_ident)
    subscribers: list[Any] = []
    parked = []
    left, right = socket.socketpair()
    with left, right:
        descriptor = left.fileno()
        for _ in range(streams):
            stream = EventStream(keepalive=15.0)
            stand_in: Any = _Socket()
            stand_in.fileno = lambda: descriptor
            body = StreamBody(stream.response(), stream)
            one = ParkedStream(worker, body, stand_in, True, hub.loop)  # type: ignore[arg-type]
            stream._direct = one._direct  # what the worker does once nothing waits
            subscribers.append(stream)
            parked.append(one)
        best = _broadcasts(subscribers, rounds)
        if any(one._out is not None or one._closing is not None for one in parked):
            raise RuntimeError("not every frame went the direct way")
        for one in parked:
            one._reader.close()
    return best / streams * 1e9


def _broadcasts(subscribers: list[Any], rounds: int) -> float:
    """The best of ``rounds`` broadcasts of :data:`FRAME` by the broker's fan-out, in seconds."""
    from flask_sse_flush.brokers.base import fan_out

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
    if queued:
        raise RuntimeError(f"not every frame went the direct way ({queued} queued)")
    return best


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

    for what, how in (
        ("direct writer (gunicorn -k gevent)", measure),
        ("parked stream (StreamWorker)", measure_parked),
    ):
        cost = gevent.spawn(how, args.streams, args.rounds).get()
        print(
            f"{what}: {cost:.0f} ns per stream, best of "
            f"{args.rounds} broadcasts to {args.streams:,} streams (send() left out)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
