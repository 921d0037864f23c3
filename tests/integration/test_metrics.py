"""Prometheus metrics on a real gunicorn worker, read from /metrics as a scraper would."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import Server, raw_get, running_server, stream_path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server("gunicorn-gevent", tmp_path_factory.mktemp("metrics")) as server:
        yield server


def scrape(server: Server) -> dict[str, float]:
    with raw_get(server.port, "/metrics", {"Connection": "close"}) as response:
        text = response.body().decode()
    values = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(sse_flush_[a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def wait_for(server: Server, name: str, value: float) -> dict[str, float]:
    deadline = time.monotonic() + 5
    while True:
        values = scrape(server)
        if values.get(name) == value or time.monotonic() > deadline:
            return values
        time.sleep(0.05)


def test_open_streams_rise_and_fall_with_real_connections(served: Server, tmp_path: Path) -> None:
    before = scrape(served)
    assert before["sse_flush_open_streams"] == 0
    payload = {"steps": 200, "interval": 0.05}
    with (
        raw_get(served.port, stream_path(payload)) as a,
        raw_get(served.port, stream_path(payload)) as b,
        raw_get(served.port, stream_path(payload)) as c,
    ):
        for response in (a, b, c):
            next(response.arrivals())
        during = wait_for(served, "sse_flush_open_streams", 3)
        assert during["sse_flush_open_streams"] == 3
        assert during['sse_flush_jobs{state="running"}'] >= 3
    # The clients hung up: the worker notices at once, not at a keepalive.
    after = wait_for(served, "sse_flush_open_streams", 0)
    assert after["sse_flush_open_streams"] == 0
    gone = 'sse_flush_streams_closed_total{reason="client_gone"}'
    assert after[gone] - before.get(gone, 0) == 3
    assert after["sse_flush_streams_opened_total"] - before["sse_flush_streams_opened_total"] == 3
    assert after["sse_flush_events_sent_total"] > before["sse_flush_events_sent_total"]


def test_a_finished_stream_counts_as_complete_and_its_job_as_ended(served: Server) -> None:
    before = scrape(served)
    with raw_get(served.port, stream_path({"steps": 3, "interval": 0})) as response:
        assert [a.event.event for a in response.arrivals()][-1] == "complete"
    after = wait_for(served, "sse_flush_open_streams", 0)
    complete = 'sse_flush_streams_closed_total{reason="complete"}'
    assert after[complete] - before.get(complete, 0) == 1
    ended = 'sse_flush_jobs_ended_total{state="complete"}'
    assert after[ended] - before.get(ended, 0) == 1
    assert after["sse_flush_event_queue_seconds_count"] > before.get(
        "sse_flush_event_queue_seconds_count", 0
    )
