"""``flask-sse-doctor`` against real layers: gunicorn direct, and nginx set up to hold events back.

Each case runs the real command line (``python -m flask_sse_flush doctor``
and the ``flask-sse-doctor`` script) against the blueprint's diagnostic
route and checks its exit status and verdict.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flask_sse_flush.testing import free_port
from tests.browser.support import run_nginx

from .support import HOST, Server, raw_get, running_server

DIAGNOSE = "/render/diagnose?n=20&interval=0.05"

NGINX = """
    access_log off;
    {temp_paths}
    # Buffering on, and the app's X-Accel-Buffering: no taken away.
    server {
        listen HOST:BUFFERED;
        location / {
            proxy_pass http://HOST:UPSTREAM;
            proxy_buffering on;
            proxy_hide_header X-Accel-Buffering;
            proxy_ignore_headers X-Accel-Buffering;
        }
    }
    # Only the header hidden: nginx still honours it, and passes events at
    # once; but it would buffer any stream that lost it.
    server {
        listen HOST:HIDDEN;
        location / {
            proxy_pass http://HOST:UPSTREAM;
            proxy_buffering on;
            proxy_hide_header X-Accel-Buffering;
        }
    }
    # As docs/deploy/nginx.conf says: buffering off for the streams.
    server {
        listen HOST:GOOD;
        location / {
            proxy_pass http://HOST:UPSTREAM;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
    # The app's Content-Encoding: identity taken away, and gzip for streams.
    server {
        listen HOST:GZIP;
        gzip on;
        gzip_types text/event-stream;
        gzip_min_length 1;
        gzip_proxied any;
        location / {
            proxy_pass http://HOST:UPSTREAM;
            proxy_hide_header Content-Encoding;
        }
    }
"""


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server("gunicorn-gevent", tmp_path_factory.mktemp("doctor")) as server:
        yield server


@pytest.fixture(scope="module")
def nginx(app_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    ports = {name: free_port() for name in ("buffered", "hidden", "good", "gzip")}
    http = NGINX.replace("HOST", HOST).replace("UPSTREAM", str(app_server.port))
    for name, port in ports.items():
        http = http.replace(name.upper(), str(port))
    with run_nginx(http, tmp_path_factory.mktemp("doctor-nginx"), list(ports.values())):
        yield ports


def doctor(url: str, *extra: str, script: bool = False) -> tuple[int, str]:
    if script:
        command = [str(Path(sys.executable).with_name("flask-sse-doctor")), url, *extra]
    else:
        command = [sys.executable, "-m", "flask_sse_flush", "doctor", url, *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout


def verdict(url: str) -> tuple[int, dict[str, Any]]:
    status, out = doctor(url, "--json")
    return status, json.loads(out)


def test_direct_to_gunicorn_is_ok(app_server: Server) -> None:
    url = f"http://{HOST}:{app_server.port}{DIAGNOSE}"
    status, report = verdict(url)
    assert status == 0, report
    assert report["ok"] is True and report["culprits"] == []
    assert report["events"] == 20 and report["diagnostic"] is True
    assert report["delays"]["p95"] < 0.1
    status, human = doctor(url, script=True)
    assert status == 0
    assert "OK: events arrive as they are sent." in human


def test_a_buffering_proxy_is_named(app_server: Server, nginx: dict[str, int]) -> None:
    url = f"http://{HOST}:{nginx['buffered']}{DIAGNOSE}"
    status, report = verdict(url)
    assert status != 0
    assert report["ok"] is False
    assert "proxy-buffering" in report["culprits"], report
    status, human = doctor(url)
    assert status != 0 and "CULPRIT proxy-buffering" in human


def test_a_proxy_that_buffers_streams_without_the_header_is_named(
    app_server: Server, nginx: dict[str, int]
) -> None:
    # The client sees no X-Accel-Buffering from any nginx; the second probe
    # (accel=0) shows that this one buffers a stream that lacks it.
    status, report = verdict(f"http://{HOST}:{nginx['hidden']}{DIAGNOSE}")
    assert status != 0 and "proxy-buffering" in report["culprits"], report
    assert report["delays"]["p95"] < 0.1  # this stream itself got through


def test_nginx_set_up_as_the_docs_say_is_ok(app_server: Server, nginx: dict[str, int]) -> None:
    status, report = verdict(f"http://{HOST}:{nginx['good']}{DIAGNOSE}")
    assert status == 0, report
    assert report["ok"] is True and report["without_opt_out"]["p95"] < 0.1


def test_compression_is_named(app_server: Server, nginx: dict[str, int]) -> None:
    url = f"http://{HOST}:{nginx['gzip']}{DIAGNOSE}"
    status, report = verdict(url)
    assert status != 0
    assert report["ok"] is False
    assert "compression" in report["culprits"], report
    assert report["headers"]["content-encoding"] == "gzip"


def test_an_unreachable_url_is_exit_status_2() -> None:
    status, report = verdict(f"http://{HOST}:{free_port()}/render/diagnose")
    assert status == 2 and report["ok"] is False and "cannot connect" in report["error"]


def test_the_diagnostic_route_is_bounded(app_server: Server) -> None:
    for query in ("n=0", "n=201", "interval=2", "n=200&interval=0.5", "n=x"):
        with raw_get(app_server.port, f"/render/diagnose?{query}") as response:
            assert response.status == 400, query
            assert response.headers["content-type"] == "application/json"


def test_flask_sse_doctor_in_flasks_own_command_line(app_server: Server, tmp_path: Path) -> None:
    flask = str(Path(sys.executable).with_name("flask"))
    app = f"app:create_app({str(tmp_path)!r})"
    url = f"http://{HOST}:{app_server.port}{DIAGNOSE}"
    done = subprocess.run(
        [flask, "--app", app, "sse", "doctor", "--json", url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["ok"] is True
