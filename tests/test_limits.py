"""Limits that fail clearly, CORS headers, and the graceful stop, on Flask's test client.

The real-server halves are in ``tests/integration/test_shutdown.py`` (a
gunicorn worker's ``SIGTERM``) and ``tests/browser/test_cors.py`` (Chromium).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask, request
from flask.testing import FlaskClient

from flask_sse_flush import EventStream, Progress, TooManyJobs, create_render_blueprint
from flask_sse_flush.brokers import Broker, MemoryBroker, RedisBroker
from flask_sse_flush.ops.lifecycle import SHUTDOWN_MESSAGE, Lifecycle
from flask_sse_flush.testing import RedisServer, fresh_lifecycle, iter_chunks, parse_events
from flask_sse_flush.wire.frames import EventDecoder

GATE = threading.Event()


def render(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    progress(10, "bundling")
    if payload.get("wait"):
        deadline = time.monotonic() + float(payload["wait"])
        while not GATE.is_set() and time.monotonic() < deadline:
            progress(20, "rendering")
            time.sleep(0.02)
    return {"filename": "f.mp4", "url": "/f.mp4"}


@pytest.fixture(autouse=True)
def gate() -> Iterator[None]:
    GATE.clear()
    yield
    GATE.set()


@pytest.fixture
def life() -> Iterator[Lifecycle]:
    with fresh_lifecycle() as fresh:
        yield fresh


def client_for(**options: Any) -> FlaskClient:
    app = Flask(__name__)
    app.register_blueprint(create_render_blueprint(render, **options))
    return app.test_client()


def url(payload: dict[str, Any]) -> str:
    return "/render/stream?data=" + quote(json.dumps(payload))


def assert_json_error(response: Any, status: int, fragment: str) -> None:
    assert response.status_code == status, response.get_data()[:300]
    assert response.mimetype == "application/json"
    assert fragment in response.get_json()["error"]


# -- jobs per identity -------------------------------------------------------


def test_jobs_per_identity_is_429_for_that_identity_only(broker: Broker, life: Lifecycle) -> None:
    client = client_for(
        broker=broker, identity=lambda: request.headers.get("X-User"), max_jobs_per_identity=2
    )
    alice, bob = {"X-User": "alice"}, {"X-User": "bob"}
    started = [client.post("/render", json={"wait": 10}, headers=alice) for _ in range(2)]
    assert [r.status_code for r in started] == [202, 202]
    over = client.post("/render", json={"wait": 10}, headers=alice)
    assert_json_error(over, 429, "you have too many render jobs running (at most 2)")
    assert int(over.headers["Retry-After"]) > 0
    stream = client.get(url({}), headers=alice)
    assert_json_error(stream, 429, "at most 2")
    assert client.post("/render", json={}, headers=bob).status_code == 202
    # Anonymous callers are not one identity: only max_jobs bounds them.
    assert client.post("/render", json={}).status_code == 202
    GATE.set()
    deadline = time.monotonic() + 10
    while client.get(started[0].get_json()["status"], headers=alice).get_json()["state"] not in (
        "complete",
        "error",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.1)
    assert client.post("/render", json={}, headers=alice).status_code == 202


def test_a_broker_refuses_an_owner_over_its_limit(broker: Broker) -> None:
    broker.create("j1", owner="alice", owner_limit=1)
    with pytest.raises(TooManyJobs, match="at most 1"):
        broker.create("j2", owner="alice", owner_limit=1)
    broker.create("j3", owner="bob", owner_limit=1)
    broker.create("j4", owner=None, owner_limit=1)


# -- streams per worker ------------------------------------------------------


def test_max_streams_is_a_503_with_retry_after_until_a_stream_ends(life: Lifecycle) -> None:
    client = client_for(max_streams=2)
    first = client.get(url({"wait": 10}), buffered=False)
    second = client.get(url({"wait": 10}), buffered=False)
    assert (first.status_code, second.status_code) == (200, 200)
    assert life.open_streams == 2
    third = client.get(url({"wait": 10}))
    assert_json_error(third, 503, "most streams (2)")
    assert int(third.headers["Retry-After"]) > 0
    first.close()
    assert life.open_streams == 1
    fourth = client.get(url({}), buffered=False)
    assert fourth.status_code == 200
    assert [e.event for e in parse_events(fourth)][-1] == "complete"
    second.close()
    assert life.open_streams == 0


def test_max_streams_comes_from_config(life: Lifecycle) -> None:
    app = Flask(__name__)
    app.config["SSE_FLUSH_MAX_STREAMS"] = 1
    app.register_blueprint(create_render_blueprint(render))
    client = app.test_client()
    first = client.get(url({"wait": 10}), buffered=False)
    assert_json_error(client.get(url({})), 503, "most streams (1)")
    first.close()


def test_bad_limits_fail_at_creation() -> None:
    for option in ("max_streams", "max_jobs_per_identity", "max_query", "max_headers"):
        with pytest.raises(ValueError, match=option):
            create_render_blueprint(render, **{option: 0})


# -- request sizes -----------------------------------------------------------


def test_a_query_string_over_max_query_is_a_json_413(life: Lifecycle) -> None:
    client = client_for(max_query=100)
    assert_json_error(client.get(url({"x": "y" * 200})), 413, "at most 100 bytes")
    assert_json_error(client.get("/render/abc?" + "q" * 200), 413, "query string")
    assert client.get(url({})).status_code == 200


def test_headers_over_max_headers_are_a_json_431(life: Lifecycle) -> None:
    client = client_for(max_headers=2048)
    response = client.get(url({}), headers={"X-Big": "b" * 4096})
    assert_json_error(response, 431, "at most 2048 bytes")
    assert client.get(url({}), headers={"X-Small": "s"}).status_code == 200


# -- CORS ----------------------------------------------------------------------


def test_cors_headers_only_for_listed_origins(life: Lifecycle) -> None:
    client = client_for(cors_origins=["https://app.example"])
    allowed = client.get(url({}), headers={"Origin": "https://app.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in allowed.headers["Vary"]
    assert allowed.mimetype == "text/event-stream"
    other = client.get(url({}), headers={"Origin": "https://evil.example"})
    assert not [k for k, _ in other.headers.items() if k.startswith("Access-Control-")]
    preflight = client.options(
        "/render/0123",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "DELETE"},
    )
    assert "DELETE" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Max-Age"] == "600"


def test_cors_without_credentials() -> None:
    app = Flask(__name__)
    app.register_blueprint(
        create_render_blueprint(render, cors_origins=["http://a.test:8080"], cors_credentials=False)
    )
    response = app.test_client().get("/render/x", headers={"Origin": "http://a.test:8080"})
    assert response.headers["Access-Control-Allow-Origin"] == "http://a.test:8080"
    assert "Access-Control-Allow-Credentials" not in response.headers


@pytest.mark.parametrize(
    "origins", [["*"], ["app.example"], ["https://app.example/path"], ["ftp://x"]]
)
def test_bad_cors_origins_fail_at_creation(origins: list[str]) -> None:
    with pytest.raises(ValueError, match="origin"):
        create_render_blueprint(render, cors_origins=origins)


def test_one_string_is_not_a_list_of_origins() -> None:
    with pytest.raises(TypeError, match="list of origins"):
        create_render_blueprint(render, cors_origins="https://app.example")


# -- graceful stop -------------------------------------------------------------


def test_close_with_retry_sends_the_hint_last() -> None:
    stream = EventStream(keepalive=None)
    stream.send(b"data: x\n\n")
    stream.close(retry=1500)
    decoder = EventDecoder()
    events = [e for chunk in stream for e in decoder.feed(chunk)]
    assert [e.data for e in events] == ["x"]
    assert decoder.retry == 1500
    assert stream.retry_sent
    with pytest.raises(ValueError, match="retry"):
        EventStream().close(retry=-1)


def stopped_stream(broker: Broker, life: Lifecycle) -> tuple[list[bytes], FlaskClient]:
    client = client_for(broker=broker)
    response = client.get(url({"wait": 10}), buffered=False)
    chunks = iter_chunks(response)
    received = [next(chunks), next(chunks)]  # the opening frame, the first event
    life.stop(grace=2.0)
    received += list(chunks)
    return received, client


def test_a_stop_sends_shared_store_streams_elsewhere_with_a_hint(
    redis_server: RedisServer, redis_prefix: str, life: Lifecycle
) -> None:
    broker = RedisBroker(redis_server.url, prefix=redis_prefix)
    try:
        started = time.monotonic()
        chunks, client = stopped_stream(broker, life)
        assert time.monotonic() - started < 1.5, "the stream waited for its job"
        decoder = EventDecoder()
        events = [e for c in chunks for e in decoder.feed(c)]
        assert decoder.retry is not None and 1000 <= decoder.retry < 2000
        assert "complete" not in [e.event for e in events]
        job_id = events[-1].id.rsplit("-", 1)[0]
        # A new stream on this stopping worker is sent on at once, without a job.
        again = client.get(url({}))
        decoder = EventDecoder()
        assert [e for c in iter_chunks(again) for e in decoder.feed(c)] == []
        assert decoder.retry is not None
        assert_json_error(client.post("/render", json={}), 503, "restarting")
        # At the deadline (grace less its margin) the job is ended, not left running.
        deadline = time.monotonic() + 5
        while client.get(f"/render/{job_id}").get_json()["state"] == "running":
            assert time.monotonic() < deadline, "the job was never ended"
            time.sleep(0.05)
        status = client.get(f"/render/{job_id}").get_json()
        assert (status["state"], status["error"]) == ("error", SHUTDOWN_MESSAGE)
    finally:
        broker.close()


def test_a_stop_keeps_memory_streams_until_their_job_ends(life: Lifecycle) -> None:
    chunks, _ = stopped_stream(MemoryBroker(), life)
    decoder = EventDecoder()
    for chunk in chunks:
        decoder.feed(chunk)
    assert decoder.retry is not None and 1000 <= decoder.retry < 2000  # after the end
    events = parse_events(b"".join(chunks))
    assert events[-1].event == "error"
    assert events[-1].json() == {"message": SHUTDOWN_MESSAGE, "retry": True}
    assert [e.event for e in events[:-1]] == ["progress"] * (len(events) - 1)
