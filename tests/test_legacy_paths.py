"""The flat module paths of 0.2 keep working after the 1.0 reshape.

``import flask_sse_flush.frames`` (and the rest) gives the very module of
the new path, so code written against 0.2, including its ``mock.patch``
targets, runs unchanged.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from unittest import mock

import pytest

import flask_sse_flush

MOVED = {
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


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_an_old_path_is_the_new_module(old: str, new: str) -> None:
    before = importlib.import_module(f"flask_sse_flush.{old}")
    assert before is importlib.import_module(f"flask_sse_flush.{new}")
    assert getattr(flask_sse_flush, old) is before


@pytest.mark.parametrize(("old", "new"), sorted(MOVED.items()))
def test_an_old_path_works_in_a_fresh_interpreter(old: str, new: str) -> None:
    """First thing imported, before anything else of the package."""
    code = (
        f"import flask_sse_flush.{old} as old\n"
        f"import flask_sse_flush.{new} as new\n"
        "assert old is new, (old, new)\n"
        f"from flask_sse_flush.{old} import __all__ as names\n"
        "assert names == new.__all__\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_names_imported_from_old_paths() -> None:
    from flask_sse_flush.blueprint import create_render_blueprint
    from flask_sse_flush.frames import Event, decode_events
    from flask_sse_flush.stream import EventStream

    from flask_sse_flush.jobs import Progress, RenderJob

    assert create_render_blueprint is flask_sse_flush.create_render_blueprint
    assert Event is flask_sse_flush.Event and EventStream is flask_sse_flush.EventStream
    assert Progress is flask_sse_flush.Progress
    assert RenderJob.__module__ == "flask_sse_flush.jobs.job"
    assert callable(decode_events)


def test_a_patch_on_an_old_path_patches_the_new_module() -> None:
    from flask_sse_flush.wsgi import transport

    with mock.patch("flask_sse_flush.transport.set_tcp_nodelay", return_value=True) as patched:
        assert transport.set_tcp_nodelay is patched


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = flask_sse_flush.nothing_here  # type: ignore[attr-defined]
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("flask_sse_flush.nothing_here")


def test_the_process_child_still_runs_from_its_old_path() -> None:
    """``python -m flask_sse_flush.processes`` ran the child's ``main()`` in 0.2."""
    result = subprocess.run(
        [sys.executable, "-m", "flask_sse_flush.processes"],
        input="{not json\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "in main" in result.stderr and "JSONDecodeError" in result.stderr, result.stderr
    assert "KeyError" not in result.stderr
