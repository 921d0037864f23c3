"""``SSEFlushSource`` in real Chromium, Firefox and WebKitGTK, against a real server.

The server is ``gunicorn -k gevent`` serving ``tests/browser/client/app.py``
(keepalives every second); the pages (``client/page.html``) load the client
as an app serves it, ``/sse-flush.js``, and post back what they saw. The
server logs every request, so each test also checks what the browser asked
for, and when: one request where one is due, none after the end.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from tests.integration.support import HOST, Server, raw_get, running_server
from tests.timing import assert_under

from .support import ENGINES, browser, missing_tools, require

APP_DIR = Path(__file__).resolve().parent / "client"
KEEPALIVE = 1.0  # the app's SSE_FLUSH_KEEPALIVE


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    checkout = ["--pythonpath", str(APP_DIR.parent.parent.parent)]
    with running_server(
        "gunicorn-gevent", tmp_path_factory.mktemp("client"), app_dir=APP_DIR, options=checkout
    ) as running:
        yield running


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    require(*missing_tools(name))
    return name


def new_run(engine: str, what: str) -> str:
    return f"{what}-{engine}-{uuid.uuid4().hex[:8]}"


def page_url(port: int, scenario: str, run: str, **params: Any) -> str:
    query = urlencode({"run": run, **params})
    return f"http://{HOST}:{port}/__page/{scenario}?{query}"


def requests_of(server: Server, run: str, prefix: str = "/render/stream") -> list[dict[str, Any]]:
    """The requests for this run's stream (its payload carries the run as a nonce)."""
    return [
        entry
        for entry in server.read_log("requests.jsonl")
        if entry["path"].startswith(prefix) and run in entry["path"]
    ]


def check_every_event_once(events: list[dict[str, Any]], count: int) -> None:
    ids = [event["id"] for event in events]
    job = ids[0].rsplit("-", 1)[0]
    assert ids == [f"{job}-{n}" for n in range(1, count + 1)], ids
    assert [e["type"] for e in events][-1] == "complete"
    progress = [e["progress"] for e in events if e["type"] == "progress"]
    assert progress == sorted(progress) and progress[-1] == 100


def test_a_render_shows_every_event_once_then_complete_and_asks_nothing_more(
    engine: str, server: Server, display: str
) -> None:
    run = new_run(engine, "render")
    url = page_url(server.port, "render", run, steps=20, interval=0.1)
    with browser(engine, display, url, server.log_dir, run) as page:
        report = page.wait_for("done", timeout=60)
        time.sleep(2 * KEEPALIVE + 1)  # long enough for any reconnection to show
        stream_requests = requests_of(server, run)
    check_every_event_once(report["events"], 21)
    assert report["state"] == 2  # CLOSED
    assert report["errors"] == []
    assert len(stream_requests) == 1, stream_requests


def test_an_authorization_header_reaches_the_identity_hook(
    engine: str, server: Server, display: str
) -> None:
    run = new_run(engine, "auth")
    token = f"user-{uuid.uuid4().hex[:6]}"
    url = page_url(server.port, "render", run, steps=5, interval=0.05, token=token)
    with browser(engine, display, url, server.log_dir, run) as page:
        report = page.wait_for("done", timeout=60)
    (request,) = requests_of(server, run)
    assert request["authorization"] == f"Bearer {token}"
    job = report["events"][0]["id"].rsplit("-", 1)[0]
    # The job belongs to that identity: its owner sees it, anyone else gets 404.
    for who, status in ((token, 200), ("someone-else", 404), (None, 404)):
        headers = {"Authorization": f"Bearer {who}"} if who else {}
        with raw_get(server.port, f"/render/{job}", headers) as response:
            assert response.status == status, who


def test_a_reload_mid_job_resumes_from_the_last_id(
    engine: str, server: Server, display: str
) -> None:
    run = new_run(engine, "reload")
    url = page_url(server.port, "render", run, steps=30, interval=0.15, reload_at=10)
    with browser(engine, display, url, server.log_dir, run) as page:
        report = page.wait_for("done", timeout=60)
    assert report["loads"] == 2, "the page did reload"
    check_every_event_once(report["events"], 31)
    first, second = requests_of(server, run)
    assert first["last_event_id"] is None
    # The reloaded page came back with the last id it had shown (the 10th, or
    # one the page still showed while its reload began).
    assert second["last_event_id"] == report["shownAtLoad"]
    assert report["shownAtLoad"] in [e["id"] for e in report["events"][9:12]]


class FreezingProxy:
    """A TCP relay to ``upstream`` whose :meth:`freeze` silently stops every
    connection it has: nothing is forwarded either way, and nothing is closed
    (no FIN, no RST), as when a NAT or a Wi-Fi change drops a connection.
    Connections made after a freeze work."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.listener = socket.create_server((HOST, 0))
        self.port: int = self.listener.getsockname()[1]
        self.frozen: set[int] = set()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.threads: list[threading.Thread] = []
        self.closed = False
        self.lock = threading.Lock()
        self._start(self._accept)

    def _start(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection((HOST, self.upstream))
            with self.lock:
                pair = len(self.pairs)
                self.pairs.append((client, upstream))
            for source, target in ((client, upstream), (upstream, client)):
                source.settimeout(0.05)
                self._start(self._pump, pair, source, target)

    def _pump(self, pair: int, source: socket.socket, target: socket.socket) -> None:
        while not self.closed:
            if pair in self.frozen:
                time.sleep(0.05)
                continue
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if pair in self.frozen:  # read just as it froze: it never arrives
                continue
            try:
                if not data:
                    target.shutdown(socket.SHUT_WR)
                    return
                target.sendall(data)
            except OSError:
                return

    def freeze(self) -> None:
        with self.lock:
            self.frozen.update(range(len(self.pairs)))

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        for pair in self.pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.close()
        for thread in self.threads:
            thread.join(5)


def test_a_connection_that_goes_silent_is_noticed_and_resumed(
    engine: str, server: Server, display: str
) -> None:
    proxy = FreezingProxy(server.port)
    try:
        run = new_run(engine, "silent")
        url = page_url(
            proxy.port, "render", run, steps=40, interval=0.25,
            report=f"http://{HOST}:{server.port}",
        )  # fmt: skip
        with browser(engine, display, url, server.log_dir, run) as page:
            deadline = time.monotonic() + 60
            while not requests_of(server, run):
                assert time.monotonic() < deadline, "the page never asked for its stream"
                time.sleep(0.05)
            time.sleep(2.0)  # some events, then the network drops the connection
            frozen_at = time.time()
            proxy.freeze()
            report = page.wait_for("done", timeout=60)
    finally:
        proxy.close()
    check_every_event_once(report["events"], 41)
    first, *later = requests_of(server, run)
    assert first["last_event_id"] is None
    assert later, "it never reconnected"
    resumed = later[0]
    assert resumed["last_event_id"], "the reconnection carried no Last-Event-ID"
    # Silence for about two keepalive periods means dead: well within three.
    assert_under(resumed["t"] - frozen_at, 3 * KEEPALIVE, f"{engine}: silent link to resumed (s)")


def test_a_503_is_retried_after_its_retry_after_and_then_completes(
    engine: str, server: Server, display: str
) -> None:
    run = new_run(engine, "busy")
    url = page_url(server.port, "render", run, steps=8, interval=0.1, prefix="/limited")
    # A stream that holds the limited blueprint's only place (max_streams=1).
    hold = "/limited/render/stream?data=" + quote(json.dumps({"steps": 300, "interval": 0.2}))
    with raw_get(server.port, hold, timeout=60) as blocker:
        assert blocker.status == 200
        with browser(engine, display, url, server.log_dir, run) as page:
            deadline = time.monotonic() + 60
            while not requests_of(server, run, "/limited"):
                assert time.monotonic() < deadline, "the page never asked for its stream"
                time.sleep(0.02)
            blocker.sock.close()  # the place frees up before the retry comes
            report = page.wait_for("done", timeout=60)
    refused, admitted = requests_of(server, run, "/limited")
    assert refused["status"] == 503 and admitted["status"] == 200
    waited = admitted["t"] - refused["t"]
    assert waited >= 0.9, waited  # Retry-After: 1, jittered up to 20 %
    assert_under(waited, 2.5, f"{engine}: a 503 with Retry-After: 1 to its retry (s)")
    (error,) = report["errors"]
    assert error["status"] == 503 and error["state"] == 0  # CONNECTING
    assert 1000 <= error["retryIn"] <= 1200
    check_every_event_once(report["events"], 9)


def test_a_403_ends_with_an_error_event_carrying_the_status_and_no_retry(
    engine: str, server: Server, display: str
) -> None:
    run = new_run(engine, "refused")
    url = page_url(server.port, "refused", run)
    with browser(engine, display, url, server.log_dir, run) as page:
        report = page.wait_for("done", timeout=60)
    assert report["errors"] == [{"status": 403, "state": 2}]
    assert report["state"] == 2
    asked = requests_of(server, run, "/sse")
    assert [r["status"] for r in asked] == [403]


@pytest.mark.parametrize("client", ["SSEFlushSource", "EventSource"])
def test_rotating_streams_lose_nothing(
    client: str, engine: str, server: Server, display: str
) -> None:
    """``max_stream_seconds=2`` and a 10-second job, with ours and the native client."""
    run = new_run(engine, "rotate")
    native = "1" if client == "EventSource" else "0"
    url = page_url(server.port, "render", run, prefix="/rotating", native=native)
    with browser(engine, display, url, server.log_dir, run) as page:
        report = page.wait_for("done", timeout=90)
    check_every_event_once(report["events"], 41)
    assert report["opens"] >= 4, report["opens"]  # it did rotate, and came back
    requests = requests_of(server, run, "/rotating")
    assert all(r["last_event_id"] for r in requests[1:])


@pytest.mark.parametrize("close_leader", [False, True])
def test_tabs_share_one_stream(
    close_leader: bool, engine: str, server: Server, display: str
) -> None:
    """Two tabs of one origin, ``shareTabs: true``: one stream between them,
    every event in both; when the leader tab goes, the other carries on from
    the last id, losing and repeating nothing."""
    run = new_run(engine, "tabs")
    params: dict[str, Any] = {"steps": 40, "interval": 0.2}
    if close_leader:
        params["close_at"] = 15
    url = page_url(server.port, "tabs", run, **params)
    with browser(engine, display, url, server.log_dir, run) as page:
        second = page.wait_for("done-B", timeout=90)
        first = None if close_leader else page.wait_for("done-A", timeout=30)
        if close_leader:
            page.wait_for("closed", timeout=5)  # the leader was gone before the end
    requests = requests_of(server, run)
    check_every_event_once(second["events"], 41)
    if close_leader:
        assert len(requests) == 2, requests  # the leader's, then the new leader's
        assert requests[1]["last_event_id"], "the new leader did not resume"
    else:
        assert first is not None
        check_every_event_once(first["events"], 41)
        assert len(requests) == 1, requests
