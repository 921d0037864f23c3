"""Server-Sent Events from Flask that arrive in real time.

Whole frames written as they come (never split, never held for the
next), an opening frame that flushes the headers, headers that switch
proxy buffering off, and ``TCP_NODELAY`` on the client socket.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ._legacy import MOVED_MODULES
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
from .jobs.job import Progress, RenderFunction, run_job
from .jobs.service import QueuedJob
from .mirror import (
    map_bundle_progress,
    map_render_progress,
    send_complete_event,
    send_error_event,
    send_event,
    send_keepalive,
    send_progress_event,
)
from .ops.lifecycle import shutdown
from .web.blueprint import create_render_blueprint
from .web.extension import SSEFlush
from .wire.frames import Event, comment
from .wsgi.headers import SSE_HEADERS, setup_sse_headers
from .wsgi.stream import EventStream, sse_response
from .wsgi.transport import set_tcp_nodelay

__version__ = "0.2.0"

# Names that were public in 0.2 and now live only in their modules (the
# runtime's hub plumbing, the resolved settings, the service behind a
# blueprint): still importable from here, for code written against 0.2.
_MOVED = {
    "Coalescing": "wire.frames",
    "JobService": "jobs.service",
    "RenderJob": "jobs.job",
    "Settings": "web.settings",
    "call_on_hub": "runtime",
    "set_job_switch_interval": "runtime",
}

# The flat module paths of 0.2 (``flask_sse_flush.frames``, ...) are files
# in ``_legacy/`` that alias the module of the new path: the package looks
# there too, after its own folder.
__path__.append(os.path.join(os.path.dirname(__file__), "_legacy"))


def __getattr__(name: str) -> Any:
    if name in MOVED_MODULES:
        return importlib.import_module(f"flask_sse_flush.{name}")
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module 'flask_sse_flush' has no attribute {name!r}")
    return getattr(importlib.import_module(f"flask_sse_flush.{module}"), name)


__all__ = [
    "SSE_HEADERS",
    "BrokerUnavailable",
    "Cancelled",
    "Event",
    "EventStream",
    "InvalidPayload",
    "JobEnded",
    "JobNotStarted",
    "PayloadTooLarge",
    "Progress",
    "QueuedJob",
    "RenderError",
    "RenderFunction",
    "SSEFlush",
    "SSEFlushError",
    "StreamClosed",
    "TooManyJobs",
    "TooManyStreams",
    "UnknownJob",
    "__version__",
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
    "set_tcp_nodelay",
    "setup_sse_headers",
    "shutdown",
    "sse_response",
]
