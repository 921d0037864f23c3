"""``GET /render/diagnose``: events that carry their send time, for the doctor.

The doctor (:mod:`flask_sse_flush.tools.doctor`) reads them and measures
each event's true delay through every layer between the app and itself.
"""

from __future__ import annotations

import time

from flask import Response, request

from ..exceptions import StreamClosed
from ..runtime import start_greenlet
from ..wire.frames import Event
from ..wsgi.stream import EventStream
from .responses import json_error, stream_headers

__all__ = ["diagnose_view", "diagnostic_stream"]

DIAGNOSE_COUNT, DIAGNOSE_INTERVAL = 20, 0.1
DIAGNOSE_MAX_COUNT, DIAGNOSE_MAX_SECONDS, DIAGNOSE_MAX_OPEN = 200, 30.0, 4
_diagnosing: list[int] = [0]


def diagnostic_stream(
    count: int, interval: float, keepalive_event: bool = False, *, opt_out: bool = True
) -> Response:
    """``count`` ``diagnose`` events ``interval`` seconds apart, then ``done``.

    Each carries ``{"i", "n", "sent", "t0"}``: the server's wall-clock send
    time and the stream's start, so a client measures each event's delay
    whatever the two clocks say. ``opt_out=False`` leaves out
    ``X-Accel-Buffering: no``: what a proxy does to a stream that does not
    ask it not to buffer.
    """
    if _diagnosing[0] >= DIAGNOSE_MAX_OPEN:
        return json_error(503, "too many diagnostic streams; try again", **{"Retry-After": "5"})
    stream = EventStream(keepalive=5.0, keepalive_event=keepalive_event)
    _diagnosing[0] += 1
    stream.on_close(lambda: _diagnosing.__setitem__(0, _diagnosing[0] - 1))
    started = time.time()

    def produce() -> None:
        try:
            for i in range(count):
                if i:
                    time.sleep(interval)
                data = {"i": i, "n": count, "sent": time.time(), "t0": started}
                stream.send(Event(data, event="diagnose"))
            stream.send(Event({"n": count}, event="done"))
            stream.close()
        except StreamClosed:
            pass  # the client left

    response = stream.response()
    if not opt_out:
        response.headers.pop("X-Accel-Buffering", None)
    start_greenlet(produce, "flask-sse-flush diagnose")
    return response


def diagnose_view(keepalive_event: bool) -> Response:
    """Answer ``GET /render/diagnose?n=&interval=&accel=`` (the route is on).

    ``n`` events (at most :data:`DIAGNOSE_MAX_COUNT`, default 20)
    ``interval`` seconds apart (0 to 1, default 0.1; at most
    :data:`DIAGNOSE_MAX_SECONDS` in all); ``accel=0`` leaves out
    ``X-Accel-Buffering: no``. Bad arguments get a ``400``.
    """
    try:
        count = int(request.args.get("n", DIAGNOSE_COUNT))
        interval = float(request.args.get("interval", DIAGNOSE_INTERVAL))
    except ValueError:
        return json_error(400, "n must be an integer and interval a number of seconds")
    if not (1 <= count <= DIAGNOSE_MAX_COUNT) or not (0 <= interval <= 1):
        return json_error(400, f"n must be 1 to {DIAGNOSE_MAX_COUNT}, interval 0 to 1 s")
    if count * interval > DIAGNOSE_MAX_SECONDS:
        return json_error(400, f"n * interval must be at most {DIAGNOSE_MAX_SECONDS} s")
    if request.method == "HEAD":
        return stream_headers()
    opt_out = request.args.get("accel") != "0"
    return diagnostic_stream(count, interval, keepalive_event, opt_out=opt_out)
