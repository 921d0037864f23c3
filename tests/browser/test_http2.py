"""HTTP/2 terminated by nginx in front of gunicorn on HTTP/1.1: streams run at once.

Browsers open at most six HTTP/1.1 connections per host, so a seventh
progress stream would stall; over HTTP/2 they share one connection. nginx
(TLS with a certificate made for the test, ``http2``) proxies to
``gunicorn -k gevent`` over HTTP/1.1, as ``docs/deploy/nginx-http2.conf``
says. Eight streams on one httpx connection, and eight ``EventSource``
objects in one Chromium page, all progress at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from flask_sse_flush.testing import free_port
from flask_sse_flush.wire.frames import EventDecoder
from tests.integration.support import (
    HOST,
    Server,
    h2_streams,
    running_server,
    self_signed_cert,
    stream_path,
)
from tests.timing import assert_p95_under, assert_under

from .support import browser, missing_tools, nginx_binary, require, run_nginx

STREAMS = 8
CONF = Path(__file__).resolve().parents[2] / "docs" / "deploy" / "nginx-http2.conf"


@dataclass
class Proxy:
    port: int
    work: Path

    def requests(self, path: str) -> list[tuple[str, str]]:
        """(nginx connection number, protocol) of each logged request for ``path``."""
        lines = (self.work / "access.log").read_text().splitlines()
        return [(line.split()[0], line.split()[1]) for line in lines if path in line]


@contextlib.contextmanager
def nginx_http2(upstream: int, work: Path) -> Iterator[Proxy]:
    """nginx with TLS and HTTP/2 on a free port, the deploy guide's server block inside."""
    nginx_binary()
    work.mkdir(parents=True, exist_ok=True)
    cert, key = self_signed_cert(work)
    port = free_port()
    server_block = CONF.read_text().split("# BEGIN server", 1)[1].split("# END server", 1)[0]
    server_block = (
        server_block.replace("443", str(port), 1)
        .replace("/etc/ssl/sse/cert.pem", str(cert))
        .replace("/etc/ssl/sse/key.pem", str(key))
        .replace("127.0.0.1:8000", f"{HOST}:{upstream}")
        .replace("listen ", f"listen {HOST}:", 1)
    )
    http = (
        "log_format conn '$connection $server_protocol $request';\n"
        "access_log {dir}/access.log conn;\n{temp_paths}\n" + server_block
    )
    with run_nginx(http, work, [port]):
        yield Proxy(port, work)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server("gunicorn-gevent", tmp_path_factory.mktemp("h2-upstream")) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(upstream: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    with nginx_http2(upstream.port, tmp_path_factory.mktemp("h2-nginx")) as running:
        yield running


def sent_times(log: Path) -> dict[int, float]:
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return {r["percent"]: r["sent"] for r in records if "percent" in r}


def test_eight_streams_on_one_connection_arrive_as_they_are_sent(
    upstream: Server, proxy: Proxy
) -> None:
    # A frame-level client: what arrives when, on the wire.
    logs = [upstream.log_file(f"h2-{uuid.uuid4().hex}.jsonl") for _ in range(STREAMS)]
    paths = [stream_path({"log": str(log), "steps": 20, "interval": 0.1}) for log in logs]
    started = time.time()
    streams = h2_streams(proxy.port, paths)
    latencies = []
    for log, arrivals in zip(logs, streams, strict=True):
        sent = sent_times(log)
        progress = [a for a in arrivals if a.event.event == "progress"]
        assert [a.event.json()["progress"] for a in progress] == sorted(sent)
        assert arrivals[-1].event.event == "complete"
        assert_under(progress[0].at - started, 1.0, "HTTP/2 via nginx: first event (s)")
        latencies += [a.at - sent[a.event.json()["progress"]] for a in progress]
    assert_p95_under(latencies, 0.100, "HTTP/2 via nginx, frame-level client: p95 (s)")
    logged = proxy.requests("/render/stream")[-STREAMS:]
    assert {p for _, p in logged} == {"HTTP/2.0"}
    assert len({c for c, _ in logged}) == 1, "the streams did not share one connection"


def test_eight_streams_on_one_httpx_connection_all_run_at_once(
    upstream: Server, proxy: Proxy
) -> None:
    # httpx's HTTP/2 hands a stream the events another stream's reader
    # received only after the connection's next read (its read lock), so
    # it adds up to one send interval to some events: 40 ms here.
    logs = [upstream.log_file(f"h2x-{uuid.uuid4().hex}.jsonl") for _ in range(STREAMS)]
    arrivals: list[list[tuple[float, int]]] = [[] for _ in range(STREAMS)]
    versions: list[str] = []
    started = time.time()

    async def main() -> None:
        async with httpx.AsyncClient(http2=True, verify=False, timeout=30) as client:

            async def read(index: int) -> None:
                payload = {"log": str(logs[index]), "steps": 25, "interval": 0.04}
                url = f"https://{HOST}:{proxy.port}{stream_path(payload)}"
                async with client.stream("GET", url) as response:
                    versions.append(response.http_version)
                    decoder = EventDecoder()
                    async for chunk in response.aiter_bytes():
                        now = time.time()
                        for event in decoder.feed(chunk):
                            if event.event == "progress":
                                arrivals[index].append((now, event.json()["progress"]))

            await asyncio.gather(*(read(i) for i in range(STREAMS)))

    asyncio.run(main())
    assert versions == ["HTTP/2"] * STREAMS
    logged = proxy.requests("/render/stream")[-STREAMS:]
    assert len({c for c, _ in logged}) == 1, "the streams did not share one connection"
    latencies = []
    for index, got in enumerate(arrivals):
        sent = sent_times(logs[index])
        assert [p for _, p in got] == sorted(sent), f"stream {index}"
        assert_under(got[0][0] - started, 1.0, "HTTP/2 via nginx, httpx: first event (s)")
        latencies += [at - sent[p] for at, p in got]
    assert_p95_under(latencies, 0.100, "HTTP/2 via nginx, httpx: event latency p95 (s)")


def test_eight_event_sources_in_one_chromium_page_progress_at_once(
    display: str, upstream: Server, proxy: Proxy
) -> None:
    require(*missing_tools("chromium"))
    run = f"h2-{uuid.uuid4().hex[:8]}"
    url = f"https://{HOST}:{proxy.port}/__eight?run={run}&n={STREAMS}"
    with browser("chromium", display, url, upstream.log_dir, run) as harness:
        report: dict[str, Any] = harness.wait_for("done", timeout=60)
    streams = report["streams"]
    assert len(streams) == STREAMS
    assert all(s["complete"] for s in streams), streams
    logged = proxy.requests("/render/stream")[-STREAMS:]
    assert {p for _, p in logged} == {"HTTP/2.0"}
    assert len({c for c, _ in logged}) == 1, "the page's streams did not share one connection"
    firsts = [s["first"] for s in streams]
    # All progress at once: every stream's first event before any stream ends.
    assert max(firsts) < min(s["last"] for s in streams), streams
