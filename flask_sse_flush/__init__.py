"""Server-Sent Events from Flask that arrive in real time.

One frame per write, an opening frame that flushes the headers, headers
that switch proxy buffering off, and ``TCP_NODELAY`` on the client socket.
"""

from __future__ import annotations

from .blueprint import create_render_blueprint
from .exceptions import Cancelled, InvalidPayload, PayloadTooLarge, SSEFlushError, StreamClosed
from .frames import Event, comment
from .headers import SSE_HEADERS, setup_sse_headers
from .jobs import Progress, RenderJob
from .mirror import (
    map_bundle_progress,
    map_render_progress,
    send_complete_event,
    send_error_event,
    send_event,
    send_keepalive,
    send_progress_event,
)
from .stream import EventStream, sse_response
from .transport import set_tcp_nodelay

__version__ = "0.1.0"

__all__ = [
    "SSE_HEADERS",
    "Cancelled",
    "Event",
    "EventStream",
    "InvalidPayload",
    "PayloadTooLarge",
    "Progress",
    "RenderJob",
    "SSEFlushError",
    "StreamClosed",
    "__version__",
    "comment",
    "create_render_blueprint",
    "map_bundle_progress",
    "map_render_progress",
    "send_complete_event",
    "send_error_event",
    "send_event",
    "send_keepalive",
    "send_progress_event",
    "set_tcp_nodelay",
    "setup_sse_headers",
    "sse_response",
]
