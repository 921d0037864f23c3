"""Servers that cannot stream well say so, once, at the first stream: named, with the fix."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flask_sse_flush.wsgi.servers import GUNICORN_SYNC, UWSGI_GEVENT

from .support import raw_get, running_server, stream_path


def read_log_for(path: Path, text: str, timeout: float = 5.0) -> str:
    """The server's output, once ``text`` is in it (or ``timeout`` passed)."""
    deadline = time.monotonic() + timeout
    while True:
        log = path.read_text("utf-8", "replace")
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("kind", "message"),
    [("gunicorn-sync", GUNICORN_SYNC), ("uwsgi-gevent-unpatched", UWSGI_GEVENT)],
)
def test_one_warning_at_the_first_stream(kind: str, message: str, tmp_path: Path) -> None:
    with running_server(kind, tmp_path) as server:
        for _ in range(3):
            with raw_get(server.port, stream_path({"steps": 1, "interval": 0})) as response:
                assert [a.event.event for a in response.arrivals()][-1] == "complete"
        log = read_log_for(tmp_path / "server.out", message)
    assert log.count(message) == 1, log[-3000:]


def test_well_configured_servers_say_nothing(tmp_path: Path) -> None:
    for kind in ("gunicorn-gevent", "uwsgi-gevent", "uwsgi-threads"):
        folder = tmp_path / kind
        folder.mkdir()
        with running_server(kind, folder) as server:
            with raw_get(server.port, stream_path({"steps": 1, "interval": 0})) as response:
                list(response.arrivals())
            log = (folder / "server.out").read_text("utf-8", "replace")
        assert "flask-sse-flush:" not in log, (kind, log[-2000:])
