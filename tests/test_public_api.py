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
