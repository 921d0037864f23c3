from __future__ import annotations

import importlib
from pathlib import Path

import flask_sse_flush

CONTRACT = [
    "Event",
    "comment",
    "setup_sse_headers",
    "send_event",
    "send_progress_event",
    "send_complete_event",
    "send_error_event",
    "send_keepalive",
    "map_bundle_progress",
    "map_render_progress",
    "EventStream",
    "sse_response",
    "set_tcp_nodelay",
    "create_render_blueprint",
    "Progress",
    "SSEFlushError",
    "Cancelled",
]


def test_contract_names_import_from_the_package() -> None:
    for name in CONTRACT:
        assert hasattr(flask_sse_flush, name), name
        assert name in flask_sse_flush.__all__, name


def test_all_is_exactly_what_the_package_exports() -> None:
    for name in flask_sse_flush.__all__:
        assert getattr(flask_sse_flush, name) is not None


def test_testing_helpers() -> None:
    testing = importlib.import_module("flask_sse_flush.testing")
    assert callable(testing.iter_events)
    assert callable(testing.parse_events)


def test_version_and_typed_marker() -> None:
    assert flask_sse_flush.__version__.count(".") == 2
    assert (Path(flask_sse_flush.__file__).parent / "py.typed").is_file()


def test_exceptions_share_one_root() -> None:
    for name in ("Cancelled", "StreamClosed", "InvalidPayload", "PayloadTooLarge"):
        assert issubclass(getattr(flask_sse_flush, name), flask_sse_flush.SSEFlushError)
    assert issubclass(flask_sse_flush.InvalidPayload, ValueError)


def test_names_moved_out_of_the_public_api_still_import_for_0_2_code() -> None:
    # Internals that 0.2 exported: documented in their modules now, not in
    # __all__, but a 0.2 import keeps working.
    moved = {
        "Coalescing": "frames",
        "JobService": "service",
        "RenderJob": "jobs",
        "Settings": "settings",
        "call_on_hub": "runtime",
        "set_job_switch_interval": "runtime",
    }
    for name, module in moved.items():
        assert name not in flask_sse_flush.__all__
        home = importlib.import_module(f"flask_sse_flush.{module}")
        assert getattr(flask_sse_flush, name) is getattr(home, name)
    assert len(flask_sse_flush.__all__) == 34
    try:
        flask_sse_flush.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")
