"""``Progress`` and ``RenderJob``: deduplication, event order, ids, errors,
cancellation, and the job's status as its broker records it."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest

from flask_sse_flush import Cancelled, Event, Progress, SSEFlushError
from flask_sse_flush.brokers import JobStatus, MemoryBroker, StatusChange
from flask_sse_flush.jobs import RenderJob
from flask_sse_flush.testing import parse_events

# -- Progress ---------------------------------------------------------------


def recorder() -> tuple[Progress, list[tuple[int, str]]]:
    emitted: list[tuple[int, str]] = []
    return Progress(lambda percent, phase: emitted.append((percent, phase))), emitted


def test_progress_drops_repeats_and_keeps_phase_changes() -> None:
    progress, emitted = recorder()
    progress(5, "bundling")
    progress(5, "bundling")
    progress(5.9, "bundling")  # floors to 5: a repeat
    progress(5, "rendering")  # same percent, new phase: a change
    progress(5, "rendering")
    progress(6, "rendering")
    assert emitted == [(5, "bundling"), (5, "rendering"), (6, "rendering")]
    assert progress.last == (6, "rendering")


def test_progress_sends_a_value_again_after_a_change() -> None:
    progress, emitted = recorder()
    progress(10, "a")
    progress(20, "a")
    progress(10, "a")
    assert emitted == [(10, "a"), (20, "a"), (10, "a")]


def test_progress_floors_floats_to_ints() -> None:
    progress, emitted = recorder()
    progress(0.0, "a")
    progress(99.99, "a")
    progress(100.0, "a")
    assert emitted == [(0, "a"), (99, "a"), (100, "a")]
    assert all(type(percent) is int for percent, _ in emitted)


def test_progress_last_starts_empty() -> None:
    progress, _ = recorder()
    assert progress.last is None
    assert not progress.cancelled


@pytest.mark.parametrize("percent", [True, False, "5", None, [5], 1j])
def test_progress_rejects_non_numbers(percent: object) -> None:
    progress, emitted = recorder()
    with pytest.raises(TypeError):
        progress(percent, "a")  # type: ignore[arg-type]
    assert emitted == []


@pytest.mark.parametrize(
    "percent", [float("nan"), float("inf"), float("-inf"), -1, -0.001, 100.001, 101]
)
def test_progress_rejects_values_outside_0_to_100(percent: float) -> None:
    progress, emitted = recorder()
    with pytest.raises(ValueError):
        progress(percent, "a")
    assert emitted == []


@pytest.mark.parametrize("phase", [None, 5, b"bundling"])
def test_progress_rejects_a_non_string_phase(phase: object) -> None:
    progress, emitted = recorder()
    with pytest.raises(TypeError):
        progress(5, phase)  # type: ignore[arg-type]
    assert emitted == []


def test_progress_raises_cancelled_after_cancel() -> None:
    progress, emitted = recorder()
    progress(1, "a")
    progress.cancel()
    assert progress.cancelled
    with pytest.raises(Cancelled):
        progress(2, "a")
    with pytest.raises(Cancelled):
        progress(1, "a")  # even a repeat
    assert emitted == [(1, "a")]
    assert issubclass(Cancelled, SSEFlushError)


# -- RenderJob ----------------------------------------------------------------


def as_sent(frame: bytes) -> list[Event]:
    """The events a frame carries, their JSON data parsed back into objects."""
    return [Event(e.json(), event=e.event, id=e.id) for e in parse_events(frame)]


class Collector:
    """A subscriber that keeps every event it is sent."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.closed = False

    def deliver(self, frame: bytes, level: str | None) -> None:
        assert not self.closed, "an event was sent after close()"
        self.events.extend(as_sent(frame))

    def close(self) -> None:
        self.closed = True


Summary = list[tuple[str | None, str | None, Any]]


def summary(events: list[Event]) -> Summary:
    return [(e.event, e.id, e.data) for e in events]


def seq_numbers(events: list[Event], job_id: str) -> list[int]:
    numbers = []
    for event in events:
        assert event.id is not None
        prefix, _, n = event.id.rpartition("-")
        assert prefix == job_id
        numbers.append(int(n))
    return numbers


def status_of(broker: MemoryBroker, job: RenderJob) -> JobStatus:
    status = broker.status(job.id)
    assert status is not None
    return status


def start_job(
    render: Any, *, job_id: str = "job", payload: dict[str, Any] | None = None
) -> tuple[RenderJob, MemoryBroker, Collector]:
    broker = MemoryBroker()
    job = RenderJob(render, {"input": 1} if payload is None else payload, broker, job_id=job_id)
    subscriber = Collector()
    assert broker.subscribe(job.id, subscriber)
    return job, broker, subscriber


def run_job(
    render: Any, *, job_id: str = "job", payload: dict[str, Any] | None = None
) -> tuple[JobStatus, list[Event]]:
    job, broker, subscriber = start_job(render, job_id=job_id, payload=payload)
    assert status_of(broker, job).state == "queued"
    job.run()
    status = status_of(broker, job)
    # Every outcome ends the job: the subscriber is closed after the last event.
    assert subscriber.closed
    assert status.ended
    assert status.last_seq == status.final_seq == len(subscriber.events)
    return status, subscriber.events


RESULT = {"filename": "out.mp4", "url": "https://cdn.example/out.mp4"}


def test_render_job_registers_itself_queued() -> None:
    broker = MemoryBroker()
    job = RenderJob(lambda p, g: RESULT, {}, broker, job_id="q")
    status = status_of(broker, job)
    assert status.state == "queued"
    assert status.last_seq == 0
    assert status.final_seq is None
    assert job.status() == status
    with pytest.raises(ValueError):
        RenderJob(lambda p, g: RESULT, {}, broker, job_id="q")  # the id is taken


def test_render_job_publishes_progress_then_one_complete() -> None:
    seen: dict[str, Any] = {}

    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        seen["payload"] = payload
        seen["state"] = status_of(broker, job).state
        progress(0, "bundling")
        progress(0, "bundling")
        progress(25, "bundling")
        progress(25, "rendering")
        seen["mid"] = status_of(broker, job)
        progress(100, "rendering")
        return RESULT

    job, broker, subscriber = start_job(render, job_id="j")
    job.run()
    assert seen["payload"] == {"input": 1}
    assert seen["state"] == "running"
    mid: JobStatus = seen["mid"]
    assert (mid.state, mid.progress, mid.phase, mid.last_seq) == ("running", 25, "rendering", 3)
    assert summary(subscriber.events) == [
        ("progress", "j-1", {"progress": 0, "phase": "bundling"}),
        ("progress", "j-2", {"progress": 25, "phase": "bundling"}),
        ("progress", "j-3", {"progress": 25, "phase": "rendering"}),
        ("progress", "j-4", {"progress": 100, "phase": "rendering"}),
        ("complete", "j-5", RESULT),
    ]
    assert subscriber.closed
    status = status_of(broker, job)
    assert status.state == "complete"
    assert status.result == RESULT
    assert status.error is None
    assert (status.progress, status.phase) == (100, "rendering")
    assert (status.last_seq, status.final_seq) == (5, 5)
    assert status.to_json() == {
        "id": "j",
        "state": "complete",
        "progress": 100,
        "phase": "rendering",
        "result": RESULT,
        "error": None,
    }


def test_render_job_frames_are_exact() -> None:
    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        progress(50, "rendering")
        return {"filename": "a", "url": "b"}

    _, events = run_job(render, job_id="x")
    assert [e.encode() for e in events] == [
        b'event: progress\nid: x-1\ndata: {"progress":50,"phase":"rendering"}\n\n',
        b'event: complete\nid: x-2\ndata: {"filename":"a","url":"b"}\n\n',
    ]


def test_a_late_subscriber_gets_the_whole_job_replayed() -> None:
    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        progress(50, "rendering")
        return RESULT

    job, broker, early = start_job(render, job_id="late")
    job.run()
    late = Collector()
    assert broker.subscribe(job.id, late)
    assert summary(late.events) == summary(early.events)
    assert [e.id for e in late.events] == ["late-1", "late-2"]
    assert late.closed


def test_render_job_default_id_is_random_hex() -> None:
    broker = MemoryBroker()
    a = RenderJob(lambda p, g: RESULT, {}, broker)
    b = RenderJob(lambda p, g: RESULT, {}, broker)
    assert a.id != b.id
    int(a.id, 16)
    subscriber = Collector()
    assert broker.subscribe(a.id, subscriber)
    a.run()
    assert [e.id for e in subscriber.events] == [f"{a.id}-1"]
    assert status_of(broker, b).state == "queued"  # untouched by a's run


def test_render_job_accepts_any_mapping() -> None:
    status, events = run_job(lambda p, g: MappingProxyType(dict(RESULT)))
    assert summary(events) == [("complete", "job-1", RESULT)]
    assert status.state == "complete"
    assert status.result == RESULT
    assert type(status.result) is dict


def test_render_exception_becomes_one_error_event() -> None:
    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        progress(10, "bundling")
        raise RuntimeError("ffmpeg exited with 1")

    status, events = run_job(render)
    assert summary(events) == [
        ("progress", "job-1", {"progress": 10, "phase": "bundling"}),
        ("error", "job-2", {"message": "the render failed (RuntimeError)"}),
    ]
    assert status.state == "error"
    assert status.error == "the render failed (RuntimeError)"
    assert status.result is None
    assert status.to_json() == {
        "id": "job",
        "state": "error",
        "progress": 10,
        "phase": "bundling",
        "result": None,
        "error": "the render failed (RuntimeError)",
    }


def test_render_exception_without_message_still_has_a_message() -> None:
    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        raise KeyError

    status, events = run_job(render)
    assert [e.event for e in events] == ["error"]
    assert events[0].data["message"]
    assert status.state == "error"
    assert status.error == events[0].data["message"]


@pytest.mark.parametrize("result", [None, ["filename"], "done", 42])
def test_render_returning_a_non_dict_is_an_error(result: object) -> None:
    status, events = run_job(lambda p, g: result)
    assert [e.event for e in events] == ["error"]
    assert isinstance(events[0].data["message"], str) and events[0].data["message"]
    assert status.state == "error"
    assert status.result is None
    assert status.error == events[0].data["message"]


def test_render_returning_a_non_json_dict_is_an_error() -> None:
    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        progress(50, "rendering")
        return {"filename": "a", "url": object()}

    status, events = run_job(render)
    assert [e.event for e in events] == ["progress", "error"]
    assert status.state == "error"
    assert status.result is None
    assert status.error


def test_ids_stay_consecutive_when_the_result_cannot_be_encoded() -> None:
    # "<job id>-<n>": n names the event's place in the job, so the error
    # event that replaces an unencodable complete event is number 2.
    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        progress(50, "rendering")
        return {"filename": "a", "url": object()}

    _, events = run_job(render)
    assert [e.id for e in events] == ["job-1", "job-2"]


def test_ids_are_consecutive_in_every_outcome() -> None:
    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        for percent in range(0, 101, 7):
            progress(percent, "rendering")
        if payload["fail"]:
            raise ValueError("no")
        return RESULT

    for fail in (False, True):
        status, events = run_job(render, job_id=f"k{int(fail)}", payload={"fail": fail})
        assert seq_numbers(events, f"k{int(fail)}") == list(range(1, len(events) + 1))
        assert [e.event for e in events].count("progress") == len(events) - 1 == 15
        assert events[-1].event == ("error" if fail else "complete")
        assert status.state == ("error" if fail else "complete")


def test_progress_from_many_threads_leaves_in_id_order() -> None:
    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        def report(phase: str) -> None:
            for percent in range(101):
                progress(percent, phase)

        workers = [threading.Thread(target=report, args=(f"p{i}",)) for i in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(5)
        assert not any(worker.is_alive() for worker in workers)
        return RESULT

    status, events = run_job(render, job_id="m")
    assert seq_numbers(events, "m") == list(range(1, len(events) + 1))
    assert events[-1].event == "complete"
    assert status.state == "complete"


def test_cancel_mid_run_from_another_thread() -> None:
    started = threading.Event()
    go_on = threading.Event()
    raised: list[BaseException] = []

    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        progress(10, "rendering")
        started.set()
        assert go_on.wait(5)
        try:
            progress(20, "rendering")
        except Cancelled as exc:
            raised.append(exc)
            raise
        return RESULT

    job, broker, subscriber = start_job(render, job_id="c")
    worker = threading.Thread(target=job.run)
    worker.start()
    try:
        assert started.wait(5)
        assert broker.cancel(job.id)  # reaches the job through broker.on_cancel
    finally:
        go_on.set()
        worker.join(5)
    assert not worker.is_alive()
    assert len(raised) == 1
    status = status_of(broker, job)
    assert status.state == "cancelled"
    assert status.result is None
    assert [e.event for e in subscriber.events] == ["progress", "error"]
    assert [e.id for e in subscriber.events] == ["c-1", "c-2"]
    assert "cancel" in subscriber.events[-1].data["message"].lower()
    assert status.error is not None and "cancel" in status.error.lower()
    assert subscriber.closed
    assert not broker.cancel(job.id)  # it has ended


def test_job_cancel_method_also_cancels() -> None:
    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        job.cancel()
        progress(1, "rendering")
        return RESULT  # pragma: no cover - progress must raise

    job, broker, subscriber = start_job(render, job_id="d")
    job.run()
    assert status_of(broker, job).state == "cancelled"
    assert [e.event for e in subscriber.events] == ["error"]
    assert [e.id for e in subscriber.events] == ["d-1"]


def test_render_that_catches_cancelled_and_returns_still_ends_cancelled() -> None:
    # Cancelled's contract: a render "may catch it to clean up, then should
    # return or re-raise. The stream ends with an error event saying the job
    # was cancelled." Returning must not turn the job into a success.
    cleaned: list[bool] = []

    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        progress(10, "rendering")
        assert broker.cancel(job.id)
        try:
            progress(20, "rendering")
        except Cancelled:
            cleaned.append(True)
            return RESULT
        return RESULT  # pragma: no cover - progress must raise

    job, broker, subscriber = start_job(render, job_id="r")
    job.run()
    assert cleaned == [True]
    status = status_of(broker, job)
    assert status.state == "cancelled"
    assert status.result is None
    assert [e.event for e in subscriber.events] == ["progress", "error"]
    assert "cancel" in subscriber.events[-1].data["message"].lower()


class FailingBroker(MemoryBroker):
    """A memory broker whose ``publish`` raises for the chosen event types."""

    def __init__(self, failing: set[str | None]) -> None:
        super().__init__()
        self.failing = failing
        self.attempts: list[str | None] = []

    def publish(
        self,
        job_id: str,
        seq: int,
        event: Event,
        *,
        change: StatusChange | None = None,
        final: bool = False,
    ) -> None:
        self.attempts.append(event.event)
        if event.event in self.failing:
            raise RuntimeError("broker down")
        super().publish(job_id, seq, event, change=change, final=final)


def test_run_never_raises_even_if_publish_fails() -> None:
    # RenderJob.run is documented as "never raises": it runs on a background
    # thread or greenlet, where an escaping exception is lost or crashes it.
    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        progress(10, "rendering")
        return RESULT  # pragma: no cover - progress fails to publish

    broker = FailingBroker({"progress", "complete", "error"})
    job = RenderJob(render, {}, broker, job_id="u")
    job.run()
    # The progress report failed, which failed the render; the error event
    # and its fallback could not be published either, and nothing escaped.
    assert broker.attempts == ["progress", "error", "error"]


def test_a_failed_publish_does_not_use_up_an_id() -> None:
    # The progress event never reached the broker, so the error event that
    # follows is number 1: ids stay consecutive.
    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        progress(10, "rendering")
        return RESULT  # pragma: no cover - progress fails to publish

    broker = FailingBroker({"progress"})
    job = RenderJob(render, {}, broker, job_id="v")
    subscriber = Collector()
    assert broker.subscribe(job.id, subscriber)
    job.run()
    assert [(e.event, e.id) for e in subscriber.events] == [("error", "v-1")]
    assert subscriber.events[0].data["message"] == "the render failed (RuntimeError)"
    status = status_of(broker, job)
    assert status.state == "error"
    assert status.final_seq == 1


def test_run_never_raises_if_the_complete_event_cannot_be_published() -> None:
    broker = FailingBroker({"complete"})
    job = RenderJob(lambda p, g: RESULT, {}, broker, job_id="w")
    job.run()
    # The subscribers are not left waiting: a fallback error event ends the job.
    assert broker.attempts == ["complete", "error"]
    status = broker.status("w")
    assert status is not None
    assert status.state == "error"
    assert "could not be published" in (status.error or "")


def test_a_base_exception_still_ends_the_job_then_propagates() -> None:
    class Stop(BaseException):
        pass

    def render(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
        progress(10, "rendering")
        raise Stop

    broker = MemoryBroker()
    job = RenderJob(render, {}, broker, job_id="b")
    received: list[Event] = []

    class Sink:
        def deliver(self, frame: bytes, level: str | None) -> None:
            received.extend(as_sent(frame))

        def close(self) -> None:
            received.append(Event("closed", event="closed"))

    broker.subscribe("b", Sink())
    with pytest.raises(Stop):
        job.run()
    assert [e.event for e in received] == ["progress", "error", "closed"]
    assert "Stop" in received[1].json()["message"]
    status = broker.status("b")
    assert status is not None and status.state == "error" and status.final_seq == 2


# -- stop() under gevent --------------------------------------------------------

STOP_UNDER_GEVENT = """
import itertools, os, sys, time
import gevent
from gevent.monkey import get_original
from flask_sse_flush.jobs import RenderJob
from flask_sse_flush.brokers import MemoryBroker
from flask_sse_flush.ops.lifecycle import SHUTDOWN_MESSAGE
from flask_sse_flush.runtime import run_in_hub, start_greenlet, start_native_thread

EXECUTOR = sys.argv[1]


class HubBroker(MemoryBroker):
    # Every publish goes through the hub and switches there, as a RedisBroker's
    # does (its socket belongs to the hub).
    def publish(self, *args, **kwargs):
        def publish():
            gevent.sleep(0)
            MemoryBroker.publish(self, *args, **kwargs)
        run_in_hub(HUB, publish)


def spin(payload, progress):
    for i in itertools.count():
        progress(i % 100, "rendering")


def watchdog():
    get_original("time", "sleep")(10)
    print("the hub froze: stop() never returned", flush=True)
    os._exit(3)


HUB = gevent.get_hub()
get_original("_thread", "start_new_thread")(watchdog, ())
broker = HubBroker()
job = RenderJob(spin, {}, broker, job_id="spin")
start = start_native_thread if EXECUTOR == "thread" else start_greenlet
start(job.run, "job")
while (broker.status(job.id).last_seq or 0) < 50:
    gevent.sleep(0.01)
began = time.monotonic()
assert job.stop(SHUTDOWN_MESSAGE, retry=True)
took = time.monotonic() - began
while job.state != "error" or broker.status(job.id).state != "error":
    gevent.sleep(0.01)
status = broker.status(job.id)
assert status.state == "error" and status.error == SHUTDOWN_MESSAGE, status
assert not job.stop(SHUTDOWN_MESSAGE, retry=True)  # ended already
gevent.sleep(0.2)
assert broker.status(job.id).final_seq == status.final_seq  # nothing after it
print("ok", round(took, 3))
"""


@pytest.mark.parametrize("executor", ["thread", "greenlet"])
def test_stop_on_the_hub_while_the_job_holds_its_lock_across_a_hub_call(executor: str) -> None:
    # The job's lock is held across each publish, which waits for the hub;
    # stop() runs on that hub (a graceful stop's deadline). A lock that blocks
    # the hub's thread froze the worker: the publish never ran, nor the stop.
    pytest.importorskip("gevent")
    script = "from gevent import monkey\nmonkey.patch_all()\n" + STOP_UNDER_GEVENT
    result = subprocess.run(
        [sys.executable, "-c", script, executor], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.startswith("ok"), result.stdout
