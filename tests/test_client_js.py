"""``SSEFlushSource``, the client: as the app serves it, and its own tests in Node.

The Node suites (``tests/js/*.test.mjs``, Node's own test runner) check the
parser against the cases the Python decoder is tested with
(``tests/sse_cases.json``) and the reconnection logic on a fake clock and a
fake ``fetch``: no sleeps, no sockets. They run on the files exactly as
the app serves them. The real thing, in real browsers against a real
server, is ``tests/browser/test_client.py``.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
from pathlib import Path

import pytest
from flask import Flask

from flask_sse_flush import SSEFlush, create_render_blueprint
from flask_sse_flush.testing import parse_events
from tests.js_support import node, write_client

HERE = Path(__file__).resolve().parent
SUITES = sorted((HERE / "js").glob("*.test.mjs"))
FILES = ("sse-flush.js", "sse-flush.mjs", "sse-flush.d.ts")


def render(payload: dict[str, object], progress: object) -> dict[str, str]:
    return {"filename": "a.mp4", "url": "/a.mp4"}


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)
    SSEFlush(app)
    app.register_blueprint(create_render_blueprint(render))
    return app


def test_the_node_suites(app: Flask, tmp_path: Path) -> None:
    write_client(tmp_path)
    result = subprocess.run(
        [node(), "--test", *map(str, SUITES)],
        env={"SSE_FLUSH_CLIENT_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    summary = re.findall(r"^# (tests|pass|fail) (\d+)$", result.stdout, re.M)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    counts = dict(summary)
    assert int(counts["fail"]) == 0 and int(counts["pass"]) >= 50, counts


def test_the_client_is_served_with_an_etag_and_revalidated(app: Flask) -> None:
    client = app.test_client()
    script = client.get("/sse-flush.js")
    assert script.status_code == 200
    assert script.content_type == "text/javascript; charset=utf-8"
    assert script.headers["Cache-Control"] == "no-cache"
    assert script.headers["X-Content-Type-Options"] == "nosniff"
    assert b"globalThis.SSEFlushSource = SSEFlushSource" in script.data
    etag = script.headers["ETag"]
    again = client.get("/sse-flush.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""
    module = client.get("/sse-flush.mjs")
    assert module.headers["ETag"] != etag
    assert module.data.rstrip().endswith(b"export default SSEFlushSource;")
    types = client.get("/sse-flush.d.ts")
    assert b"export declare class SSEFlushSource extends EventTarget" in types.data


def test_the_script_is_at_most_8_kib_gzipped(app: Flask) -> None:
    served = app.test_client().get("/sse-flush.js").data
    assert len(gzip.compress(served, 9)) <= 8 * 1024


def test_the_script_and_the_module_carry_one_text(app: Flask) -> None:
    client = app.test_client()
    body = (HERE.parent / "flask_sse_flush" / "web" / "client" / "body.js").read_text()
    for name in ("sse-flush.js", "sse-flush.mjs"):
        assert body.strip() in client.get(f"/{name}").get_data(as_text=True)


def test_the_render_blueprint_alone_serves_the_client_under_its_prefix() -> None:
    app = Flask(__name__)
    app.register_blueprint(create_render_blueprint(render, url_prefix="/api"))
    client = app.test_client()
    assert client.get("/api/sse-flush.js").status_code == 200
    assert client.get("/sse-flush.js").status_code == 404


def test_the_extension_and_the_blueprint_serve_it_once() -> None:
    app = Flask(__name__)
    app.register_blueprint(create_render_blueprint(render))
    SSEFlush(app)
    rules = [r.rule for r in app.url_map.iter_rules() if r.rule.startswith("/sse-flush")]
    assert sorted(rules) == sorted(f"/{name}" for name in FILES)


def test_client_false_serves_nothing() -> None:
    app = Flask(__name__)
    SSEFlush(app, client=False)
    app.register_blueprint(create_render_blueprint(render, client=False))
    assert app.test_client().get("/sse-flush.js").status_code == 404


def test_an_app_route_of_the_same_path_wins() -> None:
    app = Flask(__name__)

    @app.get("/sse-flush.js")
    def own() -> str:
        return "mine"

    SSEFlush(app)
    assert app.test_client().get("/sse-flush.js").data == b"mine"


@pytest.mark.parametrize(("keepalive", "header"), [(None, "15"), (7.5, "7.5"), (2, "2")])
def test_a_render_stream_announces_its_keepalive_and_its_final_events(
    keepalive: float | None, header: str
) -> None:
    app = Flask(__name__)
    app.register_blueprint(create_render_blueprint(render, keepalive=keepalive))
    response = app.test_client().get("/render/stream?data=" + json.dumps({"a": 1}))
    assert response.headers["SSE-Flush-Keepalive"] == header
    assert response.headers["SSE-Flush-Final"] == "complete, error"
    assert parse_events(response)[-1].event == "complete"


def test_cross_origin_pages_may_read_those_headers() -> None:
    app = Flask(__name__)
    app.register_blueprint(create_render_blueprint(render, cors_origins=["http://page.test"]))
    response = app.test_client().get(
        "/render/stream?data=%7B%7D", headers={"Origin": "http://page.test"}
    )
    exposed = {h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert exposed == {"Retry-After", "SSE-Flush-Keepalive", "SSE-Flush-Final"}
