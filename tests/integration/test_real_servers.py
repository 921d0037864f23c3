"""The render stream on real servers, read over a raw socket as it arrives.

Each test asserts *when* events arrive relative to when the job sent them:
reading the whole body at the end would prove nothing about buffering.
"""

from __future__ import annotations

import re
import time
import uuid

import pytest

from flask_sse_flush.testing import parse_events
from tests.timing import assert_p95_under, assert_under

from .support import Server, raw_get, stream_path

LATENCY_P95_LIMIT = 0.100  # seconds: the product promise
HEADERS_LIMIT = 0.5  # seconds from request to headers


def _log_name() -> str:
    return f"job-{uuid.uuid4().hex}.jsonl"


def test_headers_arrive_before_the_first_report(server: Server) -> None:
    log = server.log_file(_log_name())
    payload = {"log": str(log), "delay_first": 1.5, "steps": 2, "interval": 0.01}
    with raw_get(server.port, stream_path(payload)) as response:
        assert response.status == 200
        waited = response.headers_at - response.requested_at
        assert_under(waited, HEADERS_LIMIT, f"{server.kind}: headers (s)")
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache, no-transform"
        assert response.headers["x-accel-buffering"] == "no"
        assert "connection" not in response.headers or server.kind != "wsgiref"
        arrivals = list(response.arrivals())
    sent = [r for r in server.read_log(log.name) if "percent" in r]
    # The headers really came before the job's first report was even made.
    assert response.headers_at < sent[0]["sent"]
    assert [a.event.event for a in arrivals] == ["progress", "progress", "complete"]


def test_each_event_arrives_before_the_next_is_sent(server: Server) -> None:
    log = server.log_file(_log_name())
    steps, interval = 12, 0.1
    payload = {"log": str(log), "steps": steps, "interval": interval}
    with raw_get(server.port, stream_path(payload)) as response:
        arrivals = list(response.arrivals())
    sent = [r for r in server.read_log(log.name) if "percent" in r]
    progress = [a for a in arrivals if a.event.event == "progress"]
    assert [a.event.json()["progress"] for a in progress] == [r["percent"] for r in sent]
    assert len(progress) == steps
    for i, arrival in enumerate(progress[:-1]):
        assert arrival.at < sent[i + 1]["sent"], f"event {i} waited for event {i + 1}"
    latencies = [a.at - r["sent"] for a, r in zip(progress, sent, strict=True)]
    assert min(latencies) >= -0.005  # same clock: nothing arrives before it is sent
    assert_p95_under(latencies, LATENCY_P95_LIMIT, f"{server.kind}: p95 latency (s)")
    assert arrivals[-1].event.event == "complete"
    assert arrivals[-1].event.json() == {"filename": "out.mp4", "url": "/download/out.mp4"}
    ids = [a.event.id for a in arrivals]
    assert all(ids) and len(set(ids)) == len(ids)
    job = ids[0].rsplit("-", 1)[0]  # type: ignore[union-attr]
    assert ids == [f"{job}-{n}" for n in range(1, len(ids) + 1)]


@pytest.mark.parametrize("native", ["", "1"], ids=["thread", "native-thread"])
def test_events_from_a_thread_beside_the_stream_arrive_in_real_time(
    server: Server, native: str
) -> None:
    # Under gevent, "thread" is a greenlet and "native-thread" a real OS thread.
    with raw_get(server.port, f"/timed?count=25&interval=0.02&native={native}") as response:
        arrivals = list(response.arrivals())
    assert [a.event.json()["i"] for a in arrivals] == list(range(25))
    latencies = [a.at - a.event.json()["sent"] for a in arrivals]
    assert_p95_under(latencies, LATENCY_P95_LIMIT, f"{server.kind}: native thread, p95 (s)")


def test_frames_queued_together_leave_together_and_whole(server: Server) -> None:
    count = 2000
    with raw_get(server.port, f"/burst?count={count}") as response:
        chunked = "chunked" in response.headers.get("transfer-encoding", "")
        chunks = list(response.body_chunks())
    events = parse_events(chunks)
    assert [e.json()["i"] for e in events] == list(range(count))
    if not chunked:
        return  # the body arrives as the socket gives it: no write boundaries to see
    for chunk in chunks:  # every chunk holds whole frames, never a piece of one
        assert chunk.endswith(b"\n\n"), chunk[-40:]
        assert chunk.startswith((b"event: tick\n", b":")), chunk[:40]
    if server.kind in ("gunicorn-gevent", "gunicorn-stream"):
        # The burst is queued before the body asks for its first event: it
        # leaves in writes of up to 64 KiB, not one write per event.
        assert len(chunks) <= 10, f"{len(chunks)} chunks for {count} events"


def test_tcp_nodelay_is_set_on_the_server_side(server: Server) -> None:
    payload = {"steps": 1, "interval": 0}
    with raw_get(server.port, stream_path(payload)) as response:
        list(response.arrivals())
    records = [r for r in server.read_log("nodelay.jsonl") if r["path"] == "/render/stream"]
    assert records, "the server logged no request"
    assert records[-1]["after"] == 1
    if server.kind in ("werkzeug", "wsgiref"):
        # These servers do not set it themselves: the library did.
        assert records[-1]["before"] == 0


def test_job_failure_ends_the_stream_with_an_error_event(server: Server) -> None:
    payload = {"steps": 2, "interval": 0, "fail": "disk full"}
    with raw_get(server.port, stream_path(payload)) as response:
        events = [a.event for a in response.arrivals()]
    assert [e.event for e in events] == ["progress", "progress", "error"]
    assert events[-1].json() == {"message": "the render failed (RuntimeError)"}


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("", "missing query parameter 'data'"),
        ("?data=%7Bnot%20json", "not valid JSON"),
        ("?data=%5B1%2C2%5D", "must be a JSON object"),
    ],
)
def test_bad_input_gets_a_json_400_and_no_stream(server: Server, query: str, fragment: str) -> None:
    with raw_get(server.port, "/render/stream" + query) as response:
        assert response.status == 400
        assert response.headers["content-type"] == "application/json"
        assert fragment in response.json()["error"]


def test_client_disconnect_cancels_the_job_under_the_cancel_policy(server: Server) -> None:
    log = server.log_file(_log_name())
    payload = {"log": str(log), "steps": 200, "interval": 0.02}
    with raw_get(server.port, "/cancelling" + stream_path(payload)) as response:
        next(response.arrivals())
    # The server notices at its next failed write, then the job's next report.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if any("cancelled" in r for r in server.read_log(log.name)):
            break
        time.sleep(0.05)
    records = server.read_log(log.name)
    assert any("cancelled" in r for r in records), records[-3:]
    assert len([r for r in records if "percent" in r]) < 200


def test_keepalive_comments_keep_their_period(server: Server) -> None:
    log = server.log_file(_log_name())
    payload = {"log": str(log), "delay_first": 2.5, "steps": 1, "interval": 0}
    with raw_get(server.port, stream_path(payload)) as response:
        chunks: list[tuple[float, float, bytes]] = []
        for chunk in response.body_chunks():
            chunks.append((time.monotonic(), time.time(), chunk))
    # Periods on the monotonic clock: a step of the wall clock is no late keepalive.
    start = chunks[0][0]
    keepalives = [t - start for t, _, c in chunks if c == b": keepalive\n\n"]
    # Both sides' wall-clock times, so that a failure tells which side was late:
    # the job's own send times (server) beside each chunk's arrival (client).
    seen = {
        "arrived": [(round(wall, 3), chunk[:24]) for _, wall, chunk in chunks],
        "job": server.read_log(log.name),
    }
    assert re.fullmatch(rb"id: [0-9a-f]{32}-0\n: stream open\n\n", chunks[0][2]), seen
    # keepalive=1.0 in the test app, 2.5 s of silence: two keepalives.
    assert len(keepalives) == 2, seen
    assert keepalives[0] == pytest.approx(1.0, abs=0.3), seen
    assert keepalives[1] - keepalives[0] == pytest.approx(1.0, abs=0.3), seen
