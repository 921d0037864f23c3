"""The 0.2 module paths, kept for code written against them.

Version 1.0 gave each concern a folder (:doc:`/path`); ``import
flask_sse_flush.frames`` and the other flat paths of 0.2 still work and
give the very module object of the new path (so a ``mock.patch`` on either
path patches both). The package finds these files through its own
``__path__``; new code imports the new paths.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

#: Each 0.2 module, and where it lives now.
MOVED_MODULES = {
    "blueprint": "web.blueprint",
    "cli": "tools.cli",
    "doctor": "tools.doctor",
    "extension": "web.extension",
    "frames": "wire.frames",
    "headers": "wsgi.headers",
    "lifecycle": "ops.lifecycle",
    "metrics": "ops.metrics",
    "processes": "jobs.processes",
    "servers": "wsgi.servers",
    "service": "jobs.service",
    "settings": "web.settings",
    "stream": "wsgi.stream",
    "transport": "wsgi.transport",
}


def alias(old_name: str) -> ModuleType:
    """Make ``old_name`` (``flask_sse_flush.frames``) the module of its new path."""
    short = old_name.rpartition(".")[2]
    module = importlib.import_module(f"flask_sse_flush.{MOVED_MODULES[short]}")
    sys.modules[old_name] = module
    return module
