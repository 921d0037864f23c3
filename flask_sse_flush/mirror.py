"""The helpers of the original Node ``server/lib/sse.ts``, with Python names.

Each is a thin wrapper over the real API (:class:`~flask_sse_flush.Event`,
:class:`~flask_sse_flush.EventStream`), keeping the original's meaning so
that ported code reads the same.
"""

from __future__ import annotations

import math
from typing import Any

from .jobs.job import CompleteData, ErrorData, ProgressData
from .wire.frames import Event
from .wsgi.headers import setup_sse_headers
from .wsgi.stream import KEEPALIVE, EventStream

__all__ = [
    "map_bundle_progress",
    "map_render_progress",
    "send_complete_event",
    "send_error_event",
    "send_event",
    "send_keepalive",
    "send_progress_event",
    "setup_sse_headers",
]


def send_event(stream: EventStream, name: str, data: Any) -> None:
    """Send one named event; ``sendEvent(res, name, data)``.

    :param stream: the client's stream.
    :param name: the event type.
    :param data: a string, or anything JSON-serialisable.
    :raises StreamClosed: the stream has ended.
    """
    stream.send(Event(data, event=name))


def send_progress_event(stream: EventStream, progress: int, phase: str) -> None:
    """Send ``progress`` ``{"progress", "phase"}``; ``sendProgressEvent``."""
    data: ProgressData = {"progress": progress, "phase": phase}
    send_event(stream, "progress", data)


def send_complete_event(stream: EventStream, filename: str, url: str) -> None:
    """Send ``complete`` ``{"filename", "url"}``; ``sendCompleteEvent``."""
    data: CompleteData = {"filename": filename, "url": url}
    send_event(stream, "complete", data)


def send_error_event(stream: EventStream, message: str) -> None:
    """Send ``error`` ``{"message"}``; ``sendErrorEvent``."""
    data: ErrorData = {"message": message}
    send_event(stream, "error", data)


def send_keepalive(stream: EventStream) -> None:
    """Send the ``: keepalive`` comment; ``sendKeepalive``."""
    stream.send(KEEPALIVE)


def _number(p: float, name: str) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{name} takes a number, not {type(p).__name__}")
    if not math.isfinite(p):
        raise ValueError(f"{name} takes a finite number, not {p!r}")
    return float(p)


def _js_round(x: float) -> int:
    """JavaScript's ``Math.round``: the nearest integer, halves toward +∞.

    Python's :func:`round` sends halves to the even neighbour (``round(0.5)``
    is 0, ``Math.round(0.5)`` is 1). ``floor(x + 0.5)`` is wrong too, for
    0.49999999999999994, whose sum rounds up to 1.0 in binary floating point;
    ``x - floor(x)`` is exact, so compare that instead.
    """
    down = math.floor(x)
    return down + 1 if x - down >= 0.5 else down


def map_bundle_progress(p: float) -> int:
    """Map bundling progress (0 to 100) to overall progress (0 to 25).

    ``mapBundleProgress``: ``Math.floor(p * 0.25)``.
    """
    return math.floor(_number(p, "map_bundle_progress") * 0.25)


def map_render_progress(p: float) -> int:
    """Map rendering progress (0 to 1) to overall progress (25 to 100).

    ``mapRenderProgress``: ``25 + Math.round(p * 75)``, rounding halves up
    as JavaScript does.
    """
    return 25 + _js_round(_number(p, "map_render_progress") * 75)
