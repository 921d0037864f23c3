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
from importlib.machinery import ModuleSpec
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


def alias(name: str, spec: ModuleSpec | None = None) -> ModuleType | None:
    """Make the 0.2 module ``name`` (``flask_sse_flush.frames``) the module of its new path.

    Run as a script (``python -m flask_sse_flush.processes``: ``name`` is
    ``"__main__"``), do what the 0.2 module did as a script: the process
    executor's child runs ``main()``; the others did nothing.
    """
    full = spec.name if spec is not None else name
    target = f"flask_sse_flush.{MOVED_MODULES[full.rpartition('.')[2]]}"
    module = importlib.import_module(target)
    if name == "__main__":
        if full.endswith(".processes"):
            sys.exit(module.main())
        return None
    sys.modules[name] = module
    return module
