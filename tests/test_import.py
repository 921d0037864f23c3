"""Importing the package does nothing but define names.

Each check runs in a fresh interpreter: it imports what the package itself
imports from elsewhere (Flask, logging, prometheus-client), notes the state
of the process, imports the package's modules and compares. No thread or
child process, no metric registered, logging's locks untouched, no gevent
monkey-patching, no signal handler, no ``atexit`` hook, no process-wide
setting changed. Work of that kind happens when an app is initialised or a
stream opens (see :mod:`flask_sse_flush.ops.metrics`, :mod:`flask_sse_flush.ops.lifecycle`).
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import flask_sse_flush

PACKAGE = Path(flask_sse_flush.__file__).parent
#: What a user imports.
USER_MODULES = ["flask_sse_flush", "flask_sse_flush.brokers", "flask_sse_flush.testing"]
#: Every module (``__main__`` runs the command line: it is not imported, it is run).
ALL_MODULES = [
    m.name
    for m in pkgutil.walk_packages([str(PACKAGE)], "flask_sse_flush.")
    if not m.name.endswith("__main__")
]

PROBE = r"""
import atexit, json, logging, os, signal, socket, sys, threading, time
import flask, werkzeug  # what the package builds on; their own imports are theirs
import prometheus_client

def os_threads():
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None

def children():
    if not os.path.isdir("/proc"):
        return []
    found = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                with open(f"/proc/{stat}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid():
                found.append(int(stat))
    return found

def metric_names():
    return sorted(m.name for m in prometheus_client.REGISTRY.collect())

def handler_locks():
    handlers = [ref() for ref in list(logging._handlerList)] + [logging.lastResort]
    return [
        (id(h.lock), id(getattr(h.lock, "_block", None)))
        for h in handlers if h is not None and h.lock is not None
    ]

def patched():
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None:
        return []
    return [m for m in ("socket", "thread", "threading", "time", "select", "ssl", "os", "queue",
                        "subprocess", "signal") if monkey.is_module_patched(m)]

SIGNALS = [s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)]

def state():
    return {
        "threads": sorted(t.name for t in threading.enumerate()),
        "active_count": threading.active_count(),
        "os_threads": os_threads(),
        "children": children(),
        "metrics": metric_names(),
        "logging_module_lock": [id(logging._lock), id(getattr(logging._lock, "_block", None))],
        "handler_locks": handler_locks(),
        "createLock": id(logging.Handler.createLock),
        "root_handlers": [id(h) for h in logging.root.handlers],
        "root_level": logging.root.level,
        "gevent_patched": patched(),
        "socket": id(socket.socket),
        "thread_lock": id(threading.Lock),
        "sleep": id(time.sleep),
        "signals": {int(s): repr(signal.getsignal(s)) for s in SIGNALS},
        "atexit": atexit._ncallbacks(),
        "switch_interval": sys.getswitchinterval(),
        "excepthooks": [id(sys.excepthook), id(threading.excepthook)],
        "meta_path": [id(f) for f in sys.meta_path],
        "socket_timeout": socket.getdefaulttimeout(),
        "environ": sorted(os.environ.items()),
    }

import importlib
first, *modules = sys.argv[1:]
for name in filter(None, first.split(",")):
    importlib.import_module(name)
before = state()
for name in modules:
    importlib.import_module(name)
time.sleep(0.2)  # anything started in the background has had time to show
after = state()
print(json.dumps({k: [before[k], after[k]] for k in before if before[k] != after[k]}))
"""


def import_changes(modules: list[str], first: tuple[str, ...] = ()) -> dict[str, list[object]]:
    """What importing ``modules`` changed, after importing ``first``, in a new interpreter."""
    pytest.importorskip("prometheus_client")
    environ = {k: v for k, v in os.environ.items() if k != "SSE_FLUSH_METRICS"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(first), *modules],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )
    assert result.returncode == 0, result.stderr
    changes: dict[str, list[object]] = json.loads(result.stdout.strip().splitlines()[-1])
    return changes


def test_importing_what_users_import_has_no_side_effects() -> None:
    assert import_changes(USER_MODULES) == {}


def test_importing_every_module_has_no_side_effects() -> None:
    assert "flask_sse_flush.ops.metrics" in ALL_MODULES
    assert "flask_sse_flush.ops.lifecycle" in ALL_MODULES
    assert import_changes(ALL_MODULES) == {}


def test_importing_under_gevent_has_no_side_effects() -> None:
    """gevent imported (not patched) before the package: it still starts nothing."""
    pytest.importorskip("gevent")
    assert import_changes(USER_MODULES, first=("gevent", "gevent.monkey")) == {}
