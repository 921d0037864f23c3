"""Cross-origin EventSource with credentials, in real Chromium.

One gunicorn serves the render API on one port and two pages on two others
(each port is an origin of its own). The blueprint lists only the first
page's origin in ``cors_origins``: that page's ``EventSource(url,
{withCredentials: true})`` gets every event, and its cookie reaches the
``identity`` hook (the job belongs to the page's user); the other page's
browser refuses the response.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from flask_sse_flush.testing import free_port
from tests.integration.support import HOST, Server, running_server

from .support import browser, missing_tools, require

APP_DIR = Path(__file__).resolve().parent / "cors"


@pytest.fixture(scope="module")
def cors_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    allowed, refused = free_port(), free_port()
    log_dir = tmp_path_factory.mktemp("cors")
    with running_server(
        "gunicorn-gevent",
        log_dir,
        app_dir=APP_DIR,
        options=["--bind", f"{HOST}:{allowed}", "--bind", f"{HOST}:{refused}"],
        env={"CORS_ALLOWED_ORIGIN": f"http://{HOST}:{allowed}"},
    ) as server:
        yield server, allowed, refused


def open_page(display: str, server: Server, page_port: int, user: str) -> dict[str, Any]:
    run = f"cors-{page_port}-{uuid.uuid4().hex[:8]}"
    api = f"http://{HOST}:{server.port}"
    url = f"http://{HOST}:{page_port}/__page?run={run}&user={user}&api={api}"
    with browser("chromium", display, url, server.log_dir, run) as harness:
        return harness.wait_for("done", timeout=60)


def test_an_allowed_origin_streams_with_its_credentials(display: str, cors_server: Any) -> None:
    require(*missing_tools("chromium"))
    server, allowed, _ = cors_server
    report = open_page(display, server, allowed, "alice")
    assert report["origin"] == f"http://{HOST}:{allowed}"
    assert report["reason"] == "complete", report
    names = [e["event"] for e in report["events"]]
    assert names == ["progress"] * 5 + ["complete"], names
    # The cookie went along: the job is alice's, and nobody else's.
    job_id = report["events"][0]["id"].rsplit("-", 1)[0]
    status = f"http://{HOST}:{server.port}/render/{job_id}"
    assert httpx.get(status, cookies={"user": "alice"}).json()["state"] == "complete"
    assert httpx.get(status, cookies={"user": "bob"}).status_code == 404


def test_another_origin_is_refused_by_the_browser(display: str, cors_server: Any) -> None:
    require(*missing_tools("chromium"))
    server, _, refused = cors_server
    report = open_page(display, server, refused, "mallory")
    assert report["events"] == [], report
    assert report["reason"] == "closed" and report["readyState"] == 2, report


def test_headers_for_allowed_and_other_origins(cors_server: Any) -> None:
    server, allowed, refused = cors_server
    api = f"http://{HOST}:{server.port}"
    origin = f"http://{HOST}:{allowed}"
    preflight = httpx.options(
        f"{api}/render",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "DELETE" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-headers"] == "content-type"
    assert "Origin" in preflight.headers["vary"]
    other = httpx.options(
        f"{api}/render",
        headers={"Origin": f"http://{HOST}:{refused}", "Access-Control-Request-Method": "POST"},
    )
    assert not [h for h in other.headers if h.startswith("access-control-")]
    missing = httpx.get(f"{api}/render/{'0' * 32}", headers={"Origin": origin})
    assert missing.status_code == 404 and missing.json()["error"]
    assert missing.headers["access-control-allow-origin"] == origin
