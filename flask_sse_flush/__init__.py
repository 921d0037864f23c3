"""Server-Sent Events from Flask that arrive in real time.

One frame per write, an opening frame that flushes the headers, headers
that switch proxy buffering off, and ``TCP_NODELAY`` on the client socket.
"""

from __future__ import annotations

from .blueprint import create_render_blueprint
from .exceptions import (
    BrokerUnavailable,
    Cancelled,
    InvalidPayload,
    JobEnded,
    JobNotStarted,
    PayloadTooLarge,
    RenderError,
    SSEFlushError,
    StreamClosed,
    TooManyJobs,
    TooManyStreams,
    UnknownJob,
)
from .extension import SSEFlush
from .frames import Coalescing, Event, comment
from .headers import SSE_HEADERS, setup_sse_headers
from .jobs import Progress, RenderFunction, RenderJob, run_job
from .lifecycle import shutdown
from .mirror import (
    map_bundle_progress,
    map_render_progress,
    send_complete_event,
    send_error_event,
    send_event,
    send_keepalive,
    send_progress_event,
)
from .runtime import call_on_hub, set_job_switch_interval
from .service import JobService, QueuedJob
from .settings import Settings
from .stream import EventStream, sse_response
from .transport import set_tcp_nodelay

__version__ = "0.2.0"

__all__ = [
    "SSE_HEADERS",
    "BrokerUnavailable",
    "Cancelled",
    "Coalescing",
    "Event",
    "EventStream",
    "InvalidPayload",
    "JobEnded",
    "JobNotStarted",
    "JobService",
    "PayloadTooLarge",
    "Progress",
    "QueuedJob",
    "RenderError",
    "RenderFunction",
    "RenderJob",
    "SSEFlush",
    "SSEFlushError",
    "Settings",
    "StreamClosed",
    "TooManyJobs",
    "TooManyStreams",
    "UnknownJob",
    "__version__",
    "call_on_hub",
    "comment",
    "create_render_blueprint",
    "map_bundle_progress",
    "map_render_progress",
    "run_job",
    "send_complete_event",
    "send_error_event",
    "send_event",
    "send_keepalive",
    "send_progress_event",
    "set_job_switch_interval",
    "set_tcp_nodelay",
    "setup_sse_headers",
    "shutdown",
    "sse_response",
]
