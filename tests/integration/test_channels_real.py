"""Channels for real: ``gunicorn -k gevent -w 4`` on a real ``redis-server``,
and on a real 6-node Redis Cluster.

Events published from a request, a thread, a native thread and another
process (``SSEFlush(redis_url=...)`` with no app) reach raw-socket clients on
every worker and a browser's ``EventSource``, each once and in order, in
time; clients that drop resume on any worker with exactly what they missed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from flask_sse_flush.channels import parse_channel_event_id, parse_cursor
from flask_sse_flush.testing import RedisServer
from tests.browser.support import ENGINES, browser, missing_tools, require
from tests.integration.support import Arrival, Server, raw_get, redis_or_cluster, running_server
from tests.timing import assert_p95_under

APP_DIR = Path(__file__).resolve().parent / "channels"
WORKERS = 4


@pytest.fixture(scope="module", params=["redis", "cluster"])
def scaled(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """Four workers on one Redis, then on a 6-node Redis Cluster."""
    store = redis_or_cluster(request, redis_server)
    env = {"FLASK_SSE_FLUSH_REDIS_URL": store.url, "FLASK_SSE_FLUSH_MAX_EVENTS": "50"}
    with running_server(
        "gunicorn-gevent",
        tmp_path_factory.mktemp(f"channels-{request.param}"),
        app_dir=APP_DIR,
        options=["--workers", str(WORKERS)],
        env=env,
    ) as server:
        server.redis_url = store.url  # type: ignore[attr-defined]
        yield server


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def post(server: Server, path: str, body: Any) -> Any:
    with raw_get(server.port, path, method="POST", body=json.dumps(body).encode()) as response:
        assert response.status == 200, response.body()
        return response.json()


def headlines(response: Any, count: int) -> list[Arrival]:
    got = []
    for arrival in response.arrivals():
        if arrival.event.event == "headline":
            got.append(arrival)
            if len(got) == count:
                break
    return got


class Reader(threading.Thread):
    """Reads ``count`` headlines off a response as they arrive."""

    def __init__(self, response: Any, count: int) -> None:
        super().__init__(daemon=True)
        self.response, self.count = response, count
        self.got: list[Arrival] = []
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.got = headlines(self.response, self.count)
        except BaseException as exc:  # reported by result()
            self.error = exc

    def result(self, timeout: float = 60.0) -> list[Arrival]:
        self.join(timeout)
        assert not self.is_alive(), "the client did not get every event in time"
        if self.error is not None:
            raise self.error
        return self.got


def stream_pids(server: Server, path: str, tries: int = 40) -> set[str]:
    """The workers that answer ``path`` over that many fresh connections."""
    pids = set()
    for _ in range(tries):
        with raw_get(server.port, path) as response:
            pids.add(response.headers["x-worker-pid"])
    return pids


def test_publish_from_anywhere_reaches_every_worker_and_a_browser(
    scaled: Server, display: str
) -> None:
    require(*missing_tools("chromium"))
    channel = "news"
    run = f"news-{uuid.uuid4().hex[:8]}"
    url = f"http://127.0.0.1:{scaled.port}/__page?run={run}"
    clients = [raw_get(scaled.port, f"/stream?channel={channel}", timeout=60) for _ in range(12)]
    with browser("chromium", display, url, scaled.log_dir, run) as page:
        page.wait_for("open", timeout=60)
        responses = [client.__enter__() for client in clients]
        try:
            pids = {response.headers["x-worker-pid"] for response in responses}
            assert len(pids) >= 2, "the clients should be spread over several workers"
            # Each client reads in a thread of its own, so arrival times are
            # when the bytes came, not when the test got round to reading.
            readers = [Reader(response, 20) for response in responses]
            published = []
            for how in ("request", "thread", "native"):
                for n in range(5):
                    body = {"from": how, "n": n, "last": False}
                    published.append(post(scaled, f"/publish/{how}?channel={channel}", body)["id"])
                    time.sleep(0.02)
            process = subprocess.run(
                [sys.executable, str(APP_DIR / "app.py"), scaled.redis_url, channel, "5"],  # type: ignore[attr-defined]
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            published += [json.loads(line) for line in process.stdout.split()]
            assert len(published) == 20
            delays = []
            for reader in readers:
                got = reader.result()
                assert [a.event.id for a in got] == published  # once each, in order
                froms = [a.event.json()["from"] for a in got]
                assert froms == ["request"] * 5 + ["thread"] * 5 + ["native"] * 5 + ["process"] * 5
                delays += [a.at - a.event.json()["sent"] for a in got]
            assert_p95_under(delays, 0.1, "publish to a raw client, 4 workers on Redis (s)")
            report = page.wait_for("done", timeout=60)
        finally:
            for client in clients:
                client.__exit__(None, None, None)
    assert [e["id"] for e in report["events"]] == published
    offset = report["clockOffset"]  # the page's clock ahead of the server's monotonic one, ms
    browser_delays = [(e["at"] - offset) / 1000 - e["data"]["mono"] for e in report["events"]]
    assert_p95_under(browser_delays, 0.1, "publish to Chromium's EventSource (s)")


def test_a_client_that_drops_resumes_exactly_on_any_worker(scaled: Server) -> None:
    for channels in ([unique("solo")], [unique("a"), unique("b"), unique("c")]):
        query = "&".join(f"channel={name}" for name in channels)
        assert len(stream_pids(scaled, f"/stream?{query}")) >= 2
        published: list[dict[str, Any]] = []
        received: list[dict[str, Any]] = []
        pids = set()

        def publish(names: list[str] = channels, log: list[dict[str, Any]] = published) -> None:
            body = {"ch": names[len(log) % len(names)], "n": len(log)}
            post(scaled, f"/publish/request?channel={body['ch']}", body)
            log.append(body)

        last_id = None
        rounds = 0
        # at least six resumes, and on until they have landed on two workers: which
        # worker accepts a connection is up to the workers, so a fixed count can miss
        while rounds < 6 or (len(pids) < 2 and rounds < 40):
            rounds += 1
            headers = {} if last_id is None else {"Last-Event-ID": last_id}
            with raw_get(scaled.port, f"/stream?{query}", headers) as response:
                pids.add(response.headers["x-worker-pid"])
                for _ in range(3):  # published while this client listens
                    publish()
                got = headlines(response, len(published) - len(received))
            stamps = ("sent", "mono")
            received += [{k: v for k, v in a.event.json().items() if k not in stamps} for a in got]
            last_id = got[-1].event.id
            assert last_id is not None and set(parse_cursor(last_id)) == set(channels)
            for _ in range(3):  # published while it is away: the resume gets them
                publish()
        assert len(pids) >= 2, "the resumes should land on several workers"
        missed = published[-3:]  # the last round's, never read
        assert sorted(received, key=lambda e: e["n"]) == published[:-3], missed
        for name in channels:  # in order within each channel
            mine = [e["n"] for e in received if e["ch"] == name]
            assert mine == sorted(mine)


def test_past_the_history_a_resume_starts_with_gap(scaled: Server) -> None:
    channel = unique("bounded")
    ids = [post(scaled, f"/publish/request?channel={channel}", {"n": n})["id"] for n in range(60)]
    with raw_get(scaled.port, f"/stream?channel={channel}", {"Last-Event-ID": ids[0]}) as response:
        arrivals = response.arrivals()
        gap = next(arrivals).event
        assert gap.event == "gap" and gap.json()["resumed"] == ids[9]
        rest = [next(arrivals).event for _ in range(50)]
    assert [e.id for e in rest] == ids[10:]
    _, first = parse_channel_event_id(ids[0])
    assert first.seq == 1


def test_authorize_guards_the_sse_route(scaled: Server) -> None:
    with raw_get(scaled.port, "/sse?channel=news&channel=secret-plans") as response:
        assert response.status == 403
        assert response.json() == {"error": "channel 'secret-plans' is not allowed"}
    channel = unique("open")
    with raw_get(scaled.port, f"/sse?channel={channel}") as response:
        assert response.status == 200
        post(scaled, f"/publish/request?channel={channel}", {"ok": True})
        (arrival,) = headlines(response, 1)
        assert arrival.event.json()["ok"] is True


def test_a_worker_whose_first_publish_comes_from_a_native_thread_keeps_serving(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The broker's sockets belong to the worker's hub, whichever thread used it
    first: a native thread that publishes and exits takes nothing with it."""
    env = {"FLASK_SSE_FLUSH_REDIS_URL": redis_server.url}
    channel = unique("first")
    with running_server("gunicorn-gevent", tmp_path, app_dir=APP_DIR, env=env) as server:
        ids = [post(server, f"/publish/native?channel={channel}", {"n": 0})["id"]]
        resume = {"Last-Event-ID": ids[0]}
        with raw_get(server.port, f"/stream?channel={channel}", resume) as response:
            for n, how in enumerate(["native", "request", "thread", "native"], start=1):
                ids.append(post(server, f"/publish/{how}?channel={channel}", {"n": n})["id"])
            got = headlines(response, 4)
        assert [a.event.id for a in got] == ids[1:]
    assert "greenlet.error" not in (tmp_path / "server.out").read_text()


@pytest.mark.parametrize("kind", ["gunicorn-gevent", "gunicorn-gthread"])
def test_a_render_reads_current_app_streamed_and_detached(
    kind: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {"FLASK_SSE_FLUSH_REDIS_URL": redis_server.url}
    with running_server(kind, tmp_path, app_dir=APP_DIR, env=env) as server:
        with raw_get(server.port, "/render/stream?data=" + quote("{}")) as response:
            events = [a.event for a in response.arrivals()]
        assert [e.event for e in events] == ["progress"] * 3 + ["complete"]
        assert events[-1].json()["filename"] == "from-config.mp4"
        with raw_get(server.port, "/render", method="POST", body=b"{}") as response:
            assert response.status == 202
            job = response.json()["id"]
        with raw_get(server.port, f"/render/stream?job={job}") as response:
            events = [a.event for a in response.arrivals()]
        assert events[-1].event == "complete"
        assert events[-1].json()["filename"] == "from-config.mp4"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_native_event_source_follows_rotating_streams_exactly(
    engine: str, scaled: Server, display: str
) -> None:
    """``max_stream_seconds=2`` and a 10-second job: the browser's own
    ``EventSource`` obeys each ``retry:`` hint, comes back to the same URL
    with ``Last-Event-ID`` on any worker, and sees every event once."""
    require(*missing_tools(engine))
    run = f"rotate-{engine}-{uuid.uuid4().hex[:8]}"
    url = f"http://127.0.0.1:{scaled.port}/__rotate?run={run}"
    with browser(engine, display, url, scaled.log_dir, run) as page:
        report = page.wait_for("done", timeout=90)
    ids = [event["id"] for event in report["events"]]
    job = ids[0].rsplit("-", 1)[0]
    assert ids == [f"{job}-{n}" for n in range(1, 42)], ids
    assert [e["type"] for e in report["events"]][-1] == "complete"
    assert report["opens"] >= 4, report["opens"]  # it did rotate, and reconnect
