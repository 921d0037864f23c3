"""Detached jobs, status, cancellation, resume and limits, over Flask's test client."""

from __future__ import annotations

import json
import threading
import time
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_sse_flush import Cancelled, Event, Progress, create_render_blueprint, run_job
from flask_sse_flush.brokers import RedisBroker
from flask_sse_flush.testing import RedisServer, iter_events, parse_events
from flask_sse_flush.wire.frames import EventDecoder


class Gated:
    """A render that reports, then waits for the test to let it go on."""

    def __init__(self, reports: int = 3) -> None:
        self.reports = reports
        self.calls = 0
        self.go = threading.Event()
        self.reported = threading.Event()
        self.cancelled = threading.Event()

    def __call__(self, payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
        self.calls += 1
        try:
            for i in range(1, self.reports + 1):
                progress(10 * i, "rendering")
            self.reported.set()
            while not self.go.wait(0.01):
                progress(10 * self.reports, "rendering")  # a repeat: checks for cancel
            progress(100, "rendering")
        except Cancelled:
            self.cancelled.set()
            raise
        return {"filename": "f.mp4", "url": "/download/f.mp4"}


def make_client(render: Any, **options: Any) -> tuple[Flask, FlaskClient]:
    app = Flask(__name__)
    app.register_blueprint(create_render_blueprint(render, **options))
    return app, app.test_client()


def stream_url(payload: Any) -> str:
    return "/render/stream?data=" + quote(json.dumps(payload))


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_post_starts_a_detached_job_and_reports_its_urls() -> None:
    render = Gated()
    _, client = make_client(render)
    response = client.post("/render", json={"month": 3})
    assert response.status_code == 202
    body = response.get_json()
    job = body["id"]
    assert body["stream"] == f"/render/stream?job={job}"
    assert body["status"] == f"/render/{job}"
    assert response.headers["Location"] == body["status"]
    assert render.reported.wait(5)
    status = client.get(body["status"]).get_json()
    assert status == {
        "id": job,
        "state": "running",
        "progress": 30,
        "phase": "rendering",
        "result": None,
        "error": None,
    }
    render.go.set()
    events = parse_events(client.get(body["stream"], buffered=False))
    assert [e.json()["progress"] for e in events[:-1]] == [10, 20, 30, 100]
    assert events[-1].event == "complete"
    wait_for(lambda: client.get(body["status"]).get_json()["state"] == "complete")
    assert client.get(body["status"]).get_json()["result"] == {
        "filename": "f.mp4",
        "url": "/download/f.mp4",
    }
    assert render.calls == 1


def test_many_subscribers_each_get_every_event() -> None:
    render = Gated()
    _, client = make_client(render)
    job = client.post("/render", json={}).get_json()["id"]
    assert render.reported.wait(5)
    responses = [client.get(f"/render/stream?job={job}", buffered=False) for _ in range(20)]
    render.go.set()
    for response in responses:
        events = parse_events(response)
        assert [e.id for e in events] == [f"{job}-{n}" for n in range(1, 6)]
        assert events[-1].event == "complete"


def test_delete_cancels_and_the_stream_says_so() -> None:
    render = Gated()
    _, client = make_client(render)
    job = client.post("/render", json={}).get_json()["id"]
    assert render.reported.wait(5)
    response = client.get(f"/render/stream?job={job}", buffered=False)
    cancel = client.delete(f"/render/{job}")
    assert cancel.status_code == 202
    assert render.cancelled.wait(5)
    events = parse_events(response)
    assert events[-1].event == "error"
    assert "cancel" in events[-1].json()["message"]
    wait_for(lambda: client.get(f"/render/{job}").get_json()["state"] == "cancelled")
    again = client.delete(f"/render/{job}")
    assert again.status_code == 409
    assert again.get_json()["state"] == "cancelled"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/render/0123456789abcdef0123456789abcdef"),
        ("delete", "/render/nope"),
        ("get", "/render/stream?job=nope"),
    ],
)
def test_unknown_jobs_are_json_404(method: str, path: str) -> None:
    _, client = make_client(Gated())
    response = getattr(client, method)(path)
    assert response.status_code == 404
    assert "unknown job" in response.get_json()["error"]


def test_reconnect_with_last_event_id_resumes_the_same_job() -> None:
    render = Gated(reports=3)
    _, client = make_client(render)
    url = stream_url({"a": 1})
    first = iter_events(client.get(url, buffered=False))
    seen = [next(first) for _ in range(3)]
    first.close()  # the network blip
    render.go.set()
    resumed = parse_events(
        client.get(url, headers={"Last-Event-ID": seen[-1].id or ""}, buffered=False)
    )
    job = seen[0].id.rsplit("-", 1)[0]  # type: ignore[union-attr]
    assert [e.id for e in seen + resumed] == [f"{job}-{n}" for n in range(1, 6)]
    assert resumed[-1].event == "complete"
    assert render.calls == 1
    # The terminal event was delivered: the next reconnect is told to stop.
    final = client.get(url, headers={"Last-Event-ID": resumed[-1].id or ""})
    assert final.status_code == 204
    assert render.calls == 1


def test_a_stream_cut_before_its_first_event_still_resumes_its_job() -> None:
    render = Gated(reports=2)
    _, client = make_client(render)
    url = stream_url({})
    response = client.get(url, buffered=False)
    decoder = EventDecoder()
    assert decoder.feed(next(response.iter_encoded())) == []
    response.close()  # cut before any event
    job, seq = decoder.last_event_id.rsplit("-", 1)
    assert seq == "0"
    render.go.set()
    resumed = parse_events(
        client.get(url, headers={"Last-Event-ID": decoder.last_event_id}, buffered=False)
    )
    assert [e.id for e in resumed] == [f"{job}-{n}" for n in range(1, 5)]
    assert render.calls == 1


def test_resume_by_query_parameter_after_completion() -> None:
    render = Gated(reports=2)
    render.go.set()
    _, client = make_client(render)
    events = parse_events(client.get(stream_url({}), buffered=False))
    job = events[0].id.rsplit("-", 1)[0]  # type: ignore[union-attr]
    replay = parse_events(
        client.get(f"/render/stream?job={job}&lastEventId={job}-1", buffered=False)
    )
    assert [e.id for e in replay] == [e.id for e in events[1:]]


@pytest.mark.parametrize(
    "last_id", ["garbage", "-", "x-", "abc-1.5", "a b-1", "x-" + "9" * 30, "é-1"]
)
def test_garbage_last_event_id_is_a_json_400(last_id: str) -> None:
    render = Gated()
    _, client = make_client(render)
    response = client.get(stream_url({}), headers={"Last-Event-ID": last_id})
    assert response.status_code == 400
    assert "Last-Event-ID" in response.get_json()["error"]
    assert render.calls == 0


def test_last_event_id_ahead_of_the_job_is_400() -> None:
    render = Gated()
    render.go.set()
    _, client = make_client(render)
    events = parse_events(client.get(stream_url({}), buffered=False))
    job = events[0].id.rsplit("-", 1)[0]  # type: ignore[union-attr]
    response = client.get(stream_url({}), headers={"Last-Event-ID": f"{job}-999"})
    assert response.status_code == 400


def test_last_event_id_of_another_job_than_query_job_is_400() -> None:
    _, client = make_client(Gated())
    response = client.get("/render/stream?job=abc", headers={"Last-Event-ID": "def-1"})
    assert response.status_code == 400


def test_max_jobs_gives_429_with_retry_after() -> None:
    render = Gated()
    _, client = make_client(render, max_jobs=1)
    assert client.post("/render", json={}).status_code == 202
    busy = client.post("/render", json={})
    assert busy.status_code == 429
    assert int(busy.headers["Retry-After"]) > 0
    assert "too many" in busy.get_json()["error"]
    assert client.get(stream_url({})).status_code == 429
    render.go.set()
    wait_for(lambda: client.post("/render", json={}).status_code == 202)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"", 400, "missing the request body"),
        (b"{nope", 400, "not valid JSON"),
        (b"[1]", 400, "must be a JSON object"),
        (b"\xff\xfe", 400, "UTF-8"),
        (b'{"x": "' + b"y" * 70_000 + b'"}', 413, "too large"),
    ],
)
def test_post_bad_bodies(body: bytes, status: int, fragment: str) -> None:
    render = Gated()
    _, client = make_client(render)
    response = client.post("/render", data=body, content_type="application/json")
    assert response.status_code == status
    assert fragment in response.get_json()["error"]
    assert render.calls == 0


def test_validate_applies_to_posted_jobs() -> None:
    def validate(payload: dict[str, Any]) -> None:
        if "month" not in payload:
            raise ValueError("month is required")

    render = Gated()
    _, client = make_client(render, validate=validate)
    response = client.post("/render", json={})
    assert response.status_code == 400
    assert response.get_json() == {"error": "month is required"}


def test_service_is_found_in_app_extensions() -> None:
    app, _ = make_client(Gated(), name="videos")
    service = app.extensions["sse_flush"]["videos"]
    assert service.running == 0


def test_head_validates_but_starts_nothing() -> None:
    render = Gated()
    _, client = make_client(render)
    response = client.head(stream_url({}))
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert client.head("/render/stream?data=%5B%5D").status_code == 400
    time.sleep(0.05)
    assert render.calls == 0


def test_an_executor_that_refuses_gives_503_and_ends_the_job() -> None:
    def refuse(job: Any) -> None:
        raise RuntimeError("pool shut down")

    app, client = make_client(Gated(), executor=refuse)
    response = client.get(stream_url({}))
    assert response.status_code == 503
    assert "could not be started" in response.get_json()["error"]
    service = app.extensions["sse_flush"]["sse_flush"]
    assert service.running == 0
    assert service.running_jobs() == []
    (job,) = list(service.broker._jobs)  # the refused job ended; nobody waits on it
    assert service.broker.status(job).state == "error"


def test_validate_raising_payload_too_large_keeps_its_413() -> None:
    from flask_sse_flush import PayloadTooLarge

    def validate(payload: dict[str, Any]) -> None:
        raise PayloadTooLarge("too many books")

    _, client = make_client(Gated(), validate=validate)
    response = client.get(stream_url({}))
    assert response.status_code == 413
    assert response.get_json() == {"error": "too many books"}


def test_head_never_subscribes_starts_or_cancels_a_job() -> None:
    # curl -I on a detached job whose last client leaving would cancel it.
    render = Gated()
    app, client = make_client(render, on_disconnect="cancel")
    job = client.post("/render", json={}).get_json()["id"]
    assert render.reported.wait(5)
    service = app.extensions["sse_flush"]["sse_flush"]
    for response in (
        client.head(f"/render/stream?job={job}"),
        client.head("/render/stream", headers={"Last-Event-ID": f"{job}-1"}),
        client.head(f"/render/stream?lastEventId={job}-2"),
        client.head(f"/render/stream?job={job}", headers={"Last-Event-ID": f"{job}-0"}),
    ):
        assert response.status_code == 200
        assert response.mimetype == "text/event-stream"
        assert service.broker.subscribers(job) == 0
        response.close()  # what a server does with a HEAD body it never sends
    time.sleep(0.05)
    assert not render.cancelled.is_set()
    assert client.get(f"/render/{job}").get_json()["state"] == "running"
    assert render.calls == 1
    assert client.head("/render/stream?job=nope").status_code == 404
    render.go.set()


def test_an_executor_receives_a_queued_job_with_its_id_and_payload() -> None:
    queued: list[Any] = []
    app, client = make_client(Gated(reports=1), executor=queued.append)
    created = client.post("/render", json={"month": 3}).get_json()
    (job,) = queued
    assert (job.id, job.payload) == (created["id"], {"month": 3})
    json.dumps(job.payload)  # what a queue needs, and nothing more
    service = app.extensions["sse_flush"]["sse_flush"]
    assert service.running_jobs() == [job.id]
    threading.Thread(target=job).start()  # calling it runs the job here
    job_state = lambda: client.get(created["status"]).get_json()["state"]  # noqa: E731
    wait_for(lambda: job_state() == "running")
    service.broker.cancel(job.id)
    wait_for(lambda: job_state() == "cancelled")
    assert service.wait(5)
    assert service.running_jobs() == []


def test_the_service_waits_for_its_running_jobs_with_a_deadline() -> None:
    render = Gated()
    app, client = make_client(render)
    ids = [client.post("/render", json={}).get_json()["id"] for _ in range(2)]
    service = app.extensions["sse_flush"]["sse_flush"]
    assert sorted(service.running_jobs()) == sorted(ids)
    started = time.monotonic()
    assert service.wait(0.1) is False
    assert time.monotonic() - started < 2
    render.go.set()
    assert service.wait(5) is True
    assert service.running == 0 and service.running_jobs() == []


def test_the_extension_form() -> None:
    from flask_sse_flush import SSEFlush
    from flask_sse_flush.jobs.service import JobService

    render = Gated(reports=1)
    with pytest.warns(DeprecationWarning, match="render_blueprint"):
        sse = SSEFlush(render, url_prefix="/api", name="videos")
    first, second = Flask("first"), Flask("second")
    second.config["SSE_FLUSH_MAX_JOBS"] = 1
    sse.init_app(first)
    sse.init_app(second)
    assert isinstance(sse.service(first), JobService)
    assert sse.service(first) is not sse.service(second)  # one service per app
    assert sse.service(first).broker is not sse.service(second).broker
    assert (sse.service(first).settings.max_jobs, sse.service(second).settings.max_jobs) == (32, 1)
    with first.app_context():
        assert sse.service() is sse.service(first)
    assert first.test_client().post("/api/render", json={}).status_code == 202
    with pytest.raises(LookupError, match="not initialised"):
        sse.service(Flask("third"))
    with pytest.warns(DeprecationWarning):
        SSEFlush(Gated(), app=Flask("direct"))  # app= initialises at once
    render.go.set()
    assert sse.service(first).wait(5)


def test_a_broker_failure_is_a_json_503_not_a_500() -> None:
    from flask_sse_flush import BrokerUnavailable
    from flask_sse_flush.brokers import MemoryBroker

    class Down(MemoryBroker):
        def status(self, job_id: str) -> Any:
            raise BrokerUnavailable("connection refused by 127.0.0.1:6379")

    _, client = make_client(Gated(), broker=Down())
    for response in (
        client.get("/render/abc"),
        client.delete("/render/abc"),
        client.get("/render/stream?job=abc"),
        client.get("/render/stream", headers={"Last-Event-ID": "abc-1"}),
    ):
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert response.get_json() == {"error": "the event store is unavailable; try again later"}


def test_a_job_queued_elsewhere_frees_its_slot_when_it_ends() -> None:
    # An executor that hands jobs to a queue never runs job() here; the slot
    # is freed once the broker says the job ended (its worker published it).
    queued: list[Any] = []
    app, client = make_client(Gated(), executor=queued.append, max_jobs=1)
    assert client.post("/render", json={}).status_code == 202
    assert client.post("/render", json={}).status_code == 429
    service = app.extensions["sse_flush"]["sse_flush"]
    done = Event({"filename": "f.mp4", "url": "/f.mp4"}, event="complete", id=f"{queued[0].id}-1")
    change: Any = {"state": "complete", "result": done.json()}
    service.broker.publish(queued[0].id, 1, done, change=change, final=True)  # as its worker
    assert client.post("/render", json={}).status_code == 202
    assert service.running == 1


def test_werkzeug_errors_in_the_views_are_json() -> None:
    app, client = make_client(Gated())
    app.config["MAX_CONTENT_LENGTH"] = 10
    response = client.post(
        "/render", data=b"{" + b" " * 100 + b"}", content_type="application/json"
    )
    assert response.status_code == 413
    assert response.is_json and "error" in response.get_json()


def test_the_extension_outside_an_app_context_says_so() -> None:
    from flask_sse_flush import SSEFlush

    with pytest.warns(DeprecationWarning):
        sse = SSEFlush(Gated())
    with pytest.raises(LookupError, match="no app context"):
        sse.service()


def test_a_web_worker_forgets_the_jobs_it_hands_to_a_job_worker(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    # Two brokers on one Redis: the web worker's and a job worker's process.
    # The web worker keeps nothing per job once its executor has queued it,
    # so a busy queue cannot grow it; cancelling a queued job still works.
    web = RedisBroker(redis_server.url, prefix=redis_prefix)
    worker = RedisBroker(redis_server.url, prefix=redis_prefix)
    queue: list[tuple[str, dict[str, Any]]] = []

    def render(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
        progress(50, "rendering")
        return {"filename": f"{payload['n']}.mp4", "url": "/f"}

    try:
        _, client = make_client(
            render,
            executor=lambda job: queue.append((job.id, job.payload)),
            broker=web,
            max_jobs=1000,
        )
        ids = [client.post("/render", json={"n": n}).get_json()["id"] for n in range(200)]
        assert len(queue) == 200
        assert web._publishing == {} and web._cancel_callbacks == {}

        assert client.delete(f"/render/{ids[0]}").status_code == 202
        for job_id, payload in queue:  # the job worker takes them from the queue
            run_job(render, job_id, payload, worker)
        states = [client.get(f"/render/{job_id}").get_json()["state"] for job_id in ids]
        assert states == ["cancelled"] + ["complete"] * 199
        for broker in (web, worker):
            assert broker._publishing == {} and broker._cancel_callbacks == {}
    finally:
        web.close()
        worker.close()


def test_a_job_queued_by_a_callable_executor_may_still_run_here_later(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    # An executor of the app's own that calls the job later in this process
    # (a pool): the job is heard again when it starts, so a cancel reaches it.
    web = RedisBroker(redis_server.url, prefix=redis_prefix)
    later: list[Any] = []
    render = Gated()
    try:
        _, client = make_client(render, executor=later.append, broker=web)
        job_id = client.post("/render", json={}).get_json()["id"]
        assert web._cancel_callbacks == {}
        thread = threading.Thread(target=later[0])
        thread.start()
        wait_for(lambda: client.get(f"/render/{job_id}").get_json()["state"] == "running")
        assert client.delete(f"/render/{job_id}").status_code == 202
        wait_for(lambda: client.get(f"/render/{job_id}").get_json()["state"] == "cancelled")
        thread.join(5)
        assert web._publishing == {} and web._cancel_callbacks == {}
    finally:
        render.go.set()
        web.close()


def test_a_stream_ended_as_too_slow_does_not_cancel_its_job() -> None:
    # With no levels, progress cannot be coalesced: a client that reads
    # nothing is ended as too slow (4 x buffer frames). That is not a
    # client leaving, so on_disconnect="cancel" leaves its job running.
    from flask_sse_flush.brokers import MemoryBroker

    render = Gated(reports=10)
    app, client = make_client(
        render, on_disconnect="cancel", buffer=2, broker=MemoryBroker(coalesce=())
    )
    response = client.get("/render/stream?data=%7B%7D", buffered=False)
    assert response.status_code == 200
    assert render.reported.wait(5)
    service = app.extensions["sse_flush"]["sse_flush"]
    (job,) = service.running_jobs()
    wait_for(lambda: service.broker.subscribers(job) == 0)  # dropped from the fan-out
    assert len(list(response.response)) <= 1  # the opening frame at most: it ended
    response.close()
    time.sleep(0.05)
    assert not render.cancelled.is_set()
    render.go.set()
    assert service.wait(5)
    assert service.status(job).state == "complete"
