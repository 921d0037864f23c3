from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_sse_flush import Cancelled, Progress, RenderError, create_render_blueprint
from flask_sse_flush.brokers import MemoryBroker, RedisBroker
from flask_sse_flush.testing import iter_events, parse_events


def url(payload: Any, prefix: str = "") -> str:
    return f"{prefix}/render/stream?data={quote(json.dumps(payload))}"


class Recorder:
    """A render callable that records its calls and can be steered."""

    def __init__(self, steps: int = 3, interval: float = 0.0) -> None:
        self.calls: list[dict[str, Any]] = []
        self.steps = steps
        self.interval = interval
        self.cancelled = threading.Event()
        self.thread_names: list[str] = []

    def __call__(self, payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        self.calls.append(payload)
        self.thread_names.append(threading.current_thread().name)
        try:
            for i in range(self.steps):
                progress(50, "bundling")  # repeated on purpose: sent once
                progress(round(100 * (i + 1) / self.steps), "rendering")
                time.sleep(self.interval)
        except Cancelled:
            self.cancelled.set()
            raise
        if "fail" in payload:
            raise RuntimeError(payload["fail"])
        return {"filename": "a.mp4", "url": "/download/a.mp4"}


def make_app(render: Any, config: dict[str, Any] | None = None, **options: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(config or {})
    app.register_blueprint(create_render_blueprint(render, **options))
    return app


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def client(recorder: Recorder) -> FlaskClient:
    return make_app(recorder).test_client()


def test_stream_carries_progress_then_complete_with_ids(
    client: FlaskClient, recorder: Recorder
) -> None:
    response = client.get(url({"month": 5}), buffered=False)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    events = parse_events(response)
    assert [(e.event, e.json()) for e in events] == [
        ("progress", {"progress": 50, "phase": "bundling"}),
        ("progress", {"progress": 33, "phase": "rendering"}),
        ("progress", {"progress": 50, "phase": "bundling"}),
        ("progress", {"progress": 67, "phase": "rendering"}),
        ("progress", {"progress": 50, "phase": "bundling"}),
        ("progress", {"progress": 100, "phase": "rendering"}),
        ("complete", {"filename": "a.mp4", "url": "/download/a.mp4"}),
    ]
    assert recorder.calls == [{"month": 5}]
    job = events[0].id.rsplit("-", 1)[0]  # type: ignore[union-attr]
    assert [e.id for e in events] == [f"{job}-{n}" for n in range(1, 8)]


@pytest.mark.parametrize("how", ["option", "config"])
def test_send_time_stamps_each_event_with_the_server_clock(how: str) -> None:
    def render(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
        progress(10, "bundling")
        progress.event("note", {"text": "hi"})
        progress.event("plain", "not an object")
        return {"filename": "a.mp4", "url": "/a.mp4"}

    app = Flask(__name__)
    if how == "config":
        app.config["SSE_FLUSH_SEND_TIME"] = True
    options = {"send_time": True} if how == "option" else {}
    app.register_blueprint(create_render_blueprint(render, **options))
    client = app.test_client()
    before = time.time() * 1000
    events = parse_events(client.get(url({}), buffered=False))
    after = time.time() * 1000
    stamped = [e.json() for e in events if e.event != "plain"]
    assert [{k: v for k, v in d.items() if k != "sent"} for d in stamped] == [
        {"progress": 10, "phase": "bundling"},
        {"text": "hi"},
        {"filename": "a.mp4", "url": "/a.mp4"},
    ]
    sent = [d["sent"] for d in stamped]
    assert before <= sent[0] <= sent[1] <= sent[2] <= after
    assert [e.text for e in events if e.event == "plain"] == ["not an object"]
    # The job's status keeps the render's own result.
    job = events[0].id.rsplit("-", 1)[0]  # type: ignore[union-attr]
    assert client.get(f"/render/{job}").get_json()["result"] == {
        "filename": "a.mp4",
        "url": "/a.mp4",
    }


def test_send_time_must_be_a_bool() -> None:
    app = Flask(__name__)
    app.config["SSE_FLUSH_SEND_TIME"] = "yes"
    with pytest.raises(ValueError, match="send_time must be True or False"):
        app.register_blueprint(create_render_blueprint(lambda p, pr: {}))


def test_repeated_progress_is_dropped() -> None:
    def render(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
        for _ in range(5):
            progress(10, "bundling")
        progress(10.9, "bundling")  # floors to 10: still a repeat
        progress(10, "rendering")
        return {}

    events = parse_events(make_app(render).test_client().get(url({}), buffered=False))
    assert [e.json() for e in events[:-1]] == [
        {"progress": 10, "phase": "bundling"},
        {"progress": 10, "phase": "rendering"},
    ]
    assert events[-1].event == "complete"


def test_render_exception_becomes_one_error_event(client: FlaskClient) -> None:
    events = parse_events(client.get(url({"fail": "out of disk"}), buffered=False))
    assert events[-1].event == "error"
    # Its own text stays in the server's log: it may hold paths or secrets.
    assert events[-1].json() == {"message": "the render failed (RuntimeError)"}
    assert [e.event for e in events].count("error") == 1
    assert "complete" not in [e.event for e in events]


def test_render_returning_a_non_dict_is_an_error() -> None:
    events = parse_events(
        make_app(lambda p, progress: ["nope"]).test_client().get(url({}), buffered=False)
    )
    assert [e.event for e in events] == ["error"]
    assert events[0].json()["message"] == "the render failed (TypeError)"


def test_events_flow_while_the_job_works() -> None:
    gate = threading.Event()

    def render(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
        progress(1, "bundling")
        assert gate.wait(5), "the test never read the first event"
        progress(2, "bundling")
        return {}

    response = make_app(render).test_client().get(url({}), buffered=False)
    events = iter_events(response)
    first = next(events)  # would deadlock if the job ran in the generator's thread
    assert first.json() == {"progress": 1, "phase": "bundling"}
    gate.set()
    assert [e.event for e in events] == ["progress", "complete"]


@pytest.mark.parametrize(
    ("query", "status", "fragment"),
    [
        ("/render/stream", 400, "missing query parameter 'data'"),
        ("/render/stream?data=", 400, "missing query parameter 'data'"),
        ("/render/stream?data=%7Bbad", 400, "not valid JSON"),
        ("/render/stream?data=NaN", 400, "not valid JSON"),
        ("/render/stream?data=%5B%5D", 400, "must be a JSON object"),
        ("/render/stream?data=%22s%22", 400, "must be a JSON object"),
        ("/render/stream?data=" + "%5B" * 10_000 + "%5D" * 10_000, 400, "not valid JSON"),
        ("/render/stream?data=" + "%5B" * 100_000, 413, "payload too large"),
    ],
)
def test_bad_input_is_a_json_400_and_no_job(
    client: FlaskClient, recorder: Recorder, query: str, status: int, fragment: str
) -> None:
    response = client.get(query)
    assert response.status_code == status
    assert response.mimetype == "application/json"
    assert fragment in response.get_json()["error"]
    assert recorder.calls == []


def test_payload_over_max_payload_is_413(recorder: Recorder) -> None:
    client = make_app(recorder, max_payload=100).test_client()
    response = client.get(url({"x": "y" * 200}))
    assert response.status_code == 413
    assert "at most 100 bytes" in response.get_json()["error"]
    assert recorder.calls == []


def test_max_payload_from_app_config(recorder: Recorder) -> None:
    app = make_app(recorder, {"SSE_FLUSH_MAX_PAYLOAD": 10})
    assert app.test_client().get(url({"x": "y" * 20})).status_code == 413


def test_settings_are_resolved_once_at_registration(recorder: Recorder) -> None:
    app = make_app(recorder, {"SSE_FLUSH_MAX_PAYLOAD": 10}, max_jobs=3)
    app.config["SSE_FLUSH_MAX_PAYLOAD"] = 10_000  # too late: read at registration
    assert app.test_client().get(url({"x": "y" * 20})).status_code == 413
    settings = app.extensions["sse_flush"]["sse_flush"].settings
    assert (settings.max_payload, settings.max_jobs, settings.keepalive) == (10, 3, 15.0)
    with pytest.raises(AttributeError):
        settings.max_jobs = 4


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"SSE_FLUSH_KEEPALIVE": 0}, "keepalive"),
        ({"SSE_FLUSH_MAX_JOBS": "many"}, "max_jobs"),
        ({"SSE_FLUSH_RETRY": -1}, "retry"),
        ({"SSE_FLUSH_MAX_STREAM_SECONDS": 0}, "max_stream_seconds"),
    ],
)
def test_a_bad_config_value_fails_at_registration(
    recorder: Recorder, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_app(recorder, config)


def test_a_bad_option_fails_when_the_blueprint_is_made(recorder: Recorder) -> None:
    with pytest.raises(ValueError, match="max_payload"):
        create_render_blueprint(recorder, max_payload=0)
    with pytest.raises(ValueError, match="coalesce is declared by the broker"):
        create_render_blueprint(recorder, broker=MemoryBroker(), coalesce=["progress"])


@pytest.mark.parametrize("error", [ValueError("month must be 1-12"), KeyError("month")])
def test_validate_hook_rejection_is_a_400(recorder: Recorder, error: Exception) -> None:
    def validate(payload: dict[str, Any]) -> None:
        raise error

    client = make_app(recorder, validate=validate).test_client()
    response = client.get(url({"month": 13}))
    assert response.status_code == 400
    assert response.get_json() == {"error": str(error)}
    assert recorder.calls == []


def test_validate_hook_may_transform_the_payload(recorder: Recorder) -> None:
    client = make_app(recorder, validate=lambda p: {**p, "checked": True}).test_client()
    parse_events(client.get(url({"a": 1}), buffered=False))
    assert recorder.calls == [{"a": 1, "checked": True}]


def test_url_prefix_and_keepalive_from_config() -> None:
    def render(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
        time.sleep(0.35)
        return {}

    app = make_app(render, {"SSE_FLUSH_KEEPALIVE": 0.1}, url_prefix="/api")
    response = app.test_client().get(url({}, prefix="/api"), buffered=False)
    chunks = list(response.iter_encoded())
    response.close()
    assert chunks[0].endswith(b": stream open\n\n")
    assert chunks.count(b": keepalive\n\n") >= 2
    assert chunks[-1].startswith(b"event: complete")
    assert app.test_client().get(url({})).status_code == 404


def test_retry_option_in_the_opening_frame(recorder: Recorder) -> None:
    client = make_app(recorder, retry=3000).test_client()
    response = client.get(url({}), buffered=False)
    opening = next(response.iter_encoded())
    assert re.fullmatch(rb"id: [0-9a-f]{32}-0\nretry: 3000\n: stream open\n\n", opening)
    response.close()


def test_executor_option_may_be_a_callable(recorder: Recorder) -> None:
    started: list[str] = []

    def spawn(job: Any) -> None:
        started.append("job")
        threading.Thread(target=job, name="custom-pool").start()

    client = make_app(recorder, executor=spawn).test_client()
    events = parse_events(client.get(url({}), buffered=False))
    assert started == ["job"]
    assert recorder.thread_names == ["custom-pool"]
    assert events[-1].event == "complete"


@pytest.mark.parametrize("executor", ["thread", "greenlet"])
def test_named_executors_run_the_job_beside_the_stream(executor: str) -> None:
    recorder = Recorder()
    client = make_app(recorder, executor=executor).test_client()
    events = parse_events(client.get(url({}), buffered=False))
    assert events[-1].event == "complete"
    assert recorder.thread_names[0] != threading.current_thread().name


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="executor"):
        create_render_blueprint(Recorder(), executor="fork")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_disconnect"):
        create_render_blueprint(Recorder(), on_disconnect="stop")  # type: ignore[arg-type]


def test_disconnect_with_cancel_policy_cancels_the_job() -> None:
    recorder = Recorder(steps=1000, interval=0.005)
    app = make_app(recorder, on_disconnect="cancel")
    response = app.test_client().get(url({}), buffered=False)
    events = iter_events(response)
    next(events)
    events.close()  # closes the response, as a server does when the client leaves
    assert recorder.cancelled.wait(5)


def test_disconnect_by_default_lets_the_job_continue() -> None:
    recorder = Recorder(steps=20, interval=0.005)
    app = make_app(recorder)
    response = app.test_client().get(url({}), buffered=False)
    events = iter_events(response)
    job = next(events).id.rsplit("-", 1)[0]  # type: ignore[union-attr]
    events.close()
    service = app.extensions["sse_flush"]["sse_flush"]
    deadline = time.monotonic() + 5
    while service.broker.status(job).state != "complete" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert service.broker.status(job).state == "complete"
    assert not recorder.cancelled.is_set()


def test_render_must_be_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        create_render_blueprint("not a function")  # type: ignore[arg-type]


def _call_validated(app: Flask, query: str) -> tuple[str, list[tuple[str, str]], bytes]:
    """Call ``app`` through the stdlib WSGI conformance checker."""
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"], _, environ["QUERY_STRING"] = query.partition("?")
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen["status"], seen["headers"] = status, headers
        return lambda data: None

    result = validator(app)(environ, start_response)
    try:
        body: Iterator[bytes] = iter(result)
        data = b"".join(body)
    finally:
        result.close()  # type: ignore[attr-defined]
    return seen["status"], seen["headers"], data


def test_conforms_to_pep_3333_under_wsgiref_validator(recorder: Recorder) -> None:
    app = make_app(recorder)
    status, headers, body = _call_validated(app, url({"a": 1}))
    assert status == "200 OK"
    names = {name.lower() for name, _ in headers}
    assert "connection" not in names
    events = parse_events(body)
    assert [e.event for e in events][-1] == "complete"
    status, headers, body = _call_validated(app, "/render/stream?data=%5B%5D")
    assert status.startswith("400")
    assert "must be a JSON object" in json.loads(body)["error"]


def test_sse_flush_redis_url_gives_every_blueprint_one_shared_redis_broker() -> None:
    app = Flask(__name__)
    app.config["SSE_FLUSH_REDIS_URL"] = "redis://127.0.0.1:1/0"  # not connected until used
    app.register_blueprint(create_render_blueprint(lambda p, progress: {}))
    app.register_blueprint(
        create_render_blueprint(lambda p, progress: {}, name="b", url_prefix="/b")
    )
    services = app.extensions["sse_flush"]
    assert isinstance(services["sse_flush"].broker, RedisBroker)
    assert services["sse_flush"].broker is services["b"].broker
    assert services["sse_flush"].broker.url == "redis://127.0.0.1:1/0"
    other = Flask(__name__)
    other.register_blueprint(create_render_blueprint(lambda p, progress: {}))
    assert isinstance(other.extensions["sse_flush"]["sse_flush"].broker, MemoryBroker)


def test_an_unreachable_redis_is_a_json_503_not_a_500() -> None:
    app = Flask(__name__)
    app.register_blueprint(
        create_render_blueprint(
            lambda p, progress: {},
            broker=RedisBroker("redis://127.0.0.1:1/0", request_timeout=0.2, socket_timeout=0.2),
        )
    )
    client = app.test_client()
    for response in (
        client.get("/render/stream?data=%7B%7D"),
        client.get("/render/0123abcd"),
        client.get("/render/stream", headers={"Last-Event-ID": "0123abcd-3"}),
        client.delete("/render/0123abcd"),
        client.post("/render", json={}),
    ):
        assert response.status_code == 503
        assert response.headers["Retry-After"].isdigit()
        assert response.get_json() == {"error": "the event store is unavailable; try again later"}
        assert response.mimetype == "application/json"


SECRET = "/srv/app/secret_module.py: db password=hunter2"


def leaky(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    progress(10, "bundling")
    if payload.get("user"):
        raise RenderError("the title is too long for the cover")
    raise RuntimeError(SECRET)


@pytest.mark.parametrize("executor", ["thread", "greenlet"])
def test_an_unexpected_exception_leaks_nothing_to_the_client(executor: str) -> None:
    app = Flask(__name__)
    app.register_blueprint(create_render_blueprint(leaky, executor=executor))
    client = app.test_client()
    events = parse_events(client.get(url({}), buffered=False))
    assert events[-1].event == "error"
    message = events[-1].json()["message"]
    assert message == "the render failed (RuntimeError)"
    job_id = (events[-1].id or "").rsplit("-", 1)[0]
    status = client.get(f"/render/{job_id}").get_json()
    assert status["error"] == message
    for text in (message, json.dumps(status)):
        assert "secret" not in text and "/srv" not in text and "Traceback" not in text


def test_a_render_error_reaches_the_user_as_written() -> None:
    app = Flask(__name__)
    app.register_blueprint(create_render_blueprint(leaky))
    events = parse_events(app.test_client().get(url({"user": True}), buffered=False))
    assert events[-1].json() == {"message": "the title is too long for the cover"}


def test_the_error_message_hook_decides_what_the_client_reads() -> None:
    seen: list[BaseException] = []

    def message(exc: BaseException) -> str:
        seen.append(exc)
        return f"sorry ({len(seen)})"

    def broken_hook(exc: BaseException) -> str:
        raise ValueError("a bug in the hook")

    app = Flask(__name__)
    app.register_blueprint(create_render_blueprint(leaky, error_message=message))
    app.register_blueprint(
        create_render_blueprint(leaky, name="b", url_prefix="/b", error_message=broken_hook)
    )
    client = app.test_client()
    events = parse_events(client.get(url({}), buffered=False))
    assert events[-1].json() == {"message": "sorry (1)"}
    assert isinstance(seen[0], RuntimeError)
    # A hook that fails falls back to the default: still nothing leaks.
    events = parse_events(client.get("/b" + url({}), buffered=False))
    assert events[-1].json() == {"message": "the render failed (RuntimeError)"}


def test_a_stream_rotates_at_max_stream_seconds_and_resumes_exactly() -> None:
    """Each leg ends after an event with a retry hint; the next, with the
    last id, goes on from there: every event once, and ``complete``."""

    def render(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
        for n in range(1, 21):
            progress(n * 5, "rendering")
            time.sleep(0.03)
        return {"filename": "a.mp4", "url": "/a.mp4"}

    app = make_app(render, {"SSE_FLUSH_MAX_STREAM_SECONDS": 0.15})
    client = app.test_client()
    response = client.get(url({}), buffered=False)
    job_id: str | None = None
    seen: list[int] = []
    legs = 0
    while True:
        legs += 1
        assert legs < 40
        chunks = list(response.iter_encoded())
        response.close()
        events = parse_events(b"".join(chunks))
        for event in events:
            if event.id and event.event is not None:
                job_id, seq = event.id.rsplit("-", 1)
                seen.append(int(seq))
        if events and events[-1].event == "complete":
            break
        assert chunks[-1].startswith(b"retry: "), chunks[-3:]
        assert job_id is not None
        response = client.get(
            f"/render/stream?job={job_id}",
            headers={"Last-Event-ID": f"{job_id}-{seen[-1]}"},
            buffered=False,
        )
    assert seen == list(range(1, len(seen) + 1))
    assert legs >= 3
