"""HTTP/2: gunicorn's own (streams of a connection served in turn) warns once.

The proxy-terminated setup, nginx with HTTP/2 in front of gunicorn on
HTTP/1.1, is tested with httpx and Chromium in ``tests/browser/test_http2.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import httpx

from flask_sse_flush.testing import parse_events
from flask_sse_flush.wsgi.servers import GUNICORN_HTTP2

from .support import HOST, running_server, self_signed_cert


def test_gunicorn_http2_logs_one_warning_naming_the_problem_and_the_fix(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    options = ["--certfile", str(cert), "--keyfile", str(key), "--http-protocols", "h2,h1"]
    with running_server("gunicorn-gevent", tmp_path, options=options, tls=True) as server:
        url = f"https://{HOST}:{server.port}/render/stream?data=" + quote(json.dumps({"steps": 2}))
        with httpx.Client(http2=True, verify=False, timeout=20) as client:
            for _ in range(3):
                response = client.get(url)
                assert response.http_version == "HTTP/2"
                assert [e.event for e in parse_events(response.content)][-1] == "complete"
                # No connection-specific header over HTTP/2 (RFC 9113 8.2.2).
                assert "connection" not in response.headers
                assert "transfer-encoding" not in response.headers
        log = (tmp_path / "server.out").read_text("utf-8", "replace")
    assert log.count("gunicorn's own HTTP/2") == 1, log[-2000:]
    assert "serves the streams of one connection one after another" in GUNICORN_HTTP2
    assert "Terminate HTTP/2 in a proxy" in log
