"""Identity and ownership: another identity's job is an unknown job, on every route."""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask, request
from flask.testing import FlaskClient

from flask_sse_flush import Progress, create_render_blueprint
from flask_sse_flush.brokers import Broker, MemoryBroker, RedisBroker
from flask_sse_flush.testing import RedisServer, parse_events

GO = threading.Event()


def render(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    progress(10, "bundling")
    if payload.get("wait"):
        GO.wait(10)
    progress(90, "rendering")
    return {"filename": "f.mp4", "url": "/secret-download/f.mp4"}


def who() -> str | None:
    return request.headers.get("X-User")


def app_on(broker: Broker) -> FlaskClient:
    app = Flask(__name__)
    app.register_blueprint(create_render_blueprint(render, broker=broker, identity=who))
    return app.test_client()


def url(payload: dict[str, Any]) -> str:
    return "/render/stream?data=" + quote(json.dumps(payload))


A, B = {"X-User": "alice"}, {"X-User": "bob"}


def assert_unknown(response: Any, job_id: str) -> None:
    assert response.status_code == 404
    assert response.mimetype == "application/json"
    assert response.get_json() == {"error": f"unknown job {job_id!r} (never started, or purged)"}


def test_another_identity_gets_the_unknown_job_404_on_every_route(broker: Broker) -> None:
    GO.clear()
    client = app_on(broker)
    started = client.post("/render", json={"wait": True}, headers=A)
    assert started.status_code == 202
    job_id = started.get_json()["id"]
    never = "f" * 32  # a job that does not exist answers the very same
    for other in (B, {}):
        for target in (job_id, never):
            assert_unknown(client.get(f"/render/{target}", headers=other), target)
            assert_unknown(client.delete(f"/render/{target}", headers=other), target)
            assert_unknown(client.get(f"/render/stream?job={target}", headers=other), target)
            resume = {**other, "Last-Event-ID": f"{target}-1"}
            assert_unknown(client.get("/render/stream", headers=resume), target)
            assert_unknown(
                client.get(f"/render/stream?lastEventId={target}-0", headers=other), target
            )
            assert client.head(f"/render/stream?job={target}", headers=other).status_code == 404
    # The owner still gets everything, and B's tries cancelled nothing.
    status = client.get(f"/render/{job_id}", headers=A).get_json()
    assert status["state"] in ("queued", "running")
    stream = client.get(f"/render/stream?job={job_id}", headers=A, buffered=False)
    GO.set()
    events = parse_events(stream)
    assert [e.event for e in events] == ["progress", "progress", "complete"]
    resumed = client.get("/render/stream", headers={**A, "Last-Event-ID": f"{job_id}-1"})
    assert [e.id for e in parse_events(resumed)] == [f"{job_id}-2", f"{job_id}-3"]
    assert client.get(f"/render/{job_id}", headers=A).get_json()["result"]["url"].startswith("/")
    assert client.delete(f"/render/{job_id}", headers=A).status_code == 409
    assert_unknown(client.delete(f"/render/{job_id}", headers=B), job_id)


def test_an_anonymous_job_is_not_anyone_elses(broker: Broker) -> None:
    client = app_on(broker)
    events = parse_events(client.get(url({}), buffered=False))
    job_id = (events[-1].id or "").rsplit("-", 1)[0]
    assert client.get(f"/render/{job_id}").status_code == 200
    assert_unknown(client.get(f"/render/{job_id}", headers=A), job_id)


def test_an_identity_hook_that_returns_a_non_string_is_refused() -> None:
    app = Flask(__name__)
    app.testing = True  # the app's own bug: raised, as Flask does in tests
    app.register_blueprint(create_render_blueprint(render, identity=lambda: 42))  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError, match="identity"):
        app.test_client().get(url({}))


def test_job_ids_are_128_random_bits() -> None:
    client = app_on(MemoryBroker())
    ids = {client.post("/render", json={}).get_json()["id"] for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_ownership_is_kept_in_redis_for_every_worker(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    # Two apps on one Redis: two web workers.
    one, two = (RedisBroker(redis_server.url, prefix=redis_prefix) for _ in range(2))
    try:
        first, second = app_on(one), app_on(two)
        job_id = first.post("/render", json={}, headers=A).get_json()["id"]
        assert second.get(f"/render/{job_id}", headers=A).status_code == 200
        assert_unknown(second.get(f"/render/{job_id}", headers=B), job_id)
        assert_unknown(
            second.get("/render/stream", headers={**B, "Last-Event-ID": f"{job_id}-0"}), job_id
        )
    finally:
        one.close()
        two.close()
