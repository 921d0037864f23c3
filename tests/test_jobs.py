"""``Progress`` and ``RenderJob``: deduplication, event order, ids, errors and
cancellation."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest

from flask_sse_flush import Cancelled, Event, Progress, RenderJob, SSEFlushError, StreamClosed

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


def run_job(render: Any, *, job_id: str = "job") -> tuple[RenderJob, list[Event]]:
    events: list[Event] = []
    job = RenderJob(render, {"input": 1}, events.append, job_id=job_id)
    assert job.state == "queued"
    job.run()
    return job, events


RESULT = {"filename": "out.mp4", "url": "https://cdn.example/out.mp4"}


def test_render_job_publishes_progress_then_one_complete() -> None:
    seen: dict[str, Any] = {}

    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        seen["payload"] = payload
        seen["state"] = job.state
        progress(0, "bundling")
        progress(0, "bundling")
        progress(25, "bundling")
        progress(25, "rendering")
        progress(100, "rendering")
        return RESULT

    events: list[Event] = []
    job = RenderJob(render, {"input": 1}, events.append, job_id="j")
    job.run()
    assert seen == {"payload": {"input": 1}, "state": "running"}
    assert summary(events) == [
        ("progress", "j-1", {"progress": 0, "phase": "bundling"}),
        ("progress", "j-2", {"progress": 25, "phase": "bundling"}),
        ("progress", "j-3", {"progress": 25, "phase": "rendering"}),
        ("progress", "j-4", {"progress": 100, "phase": "rendering"}),
        ("complete", "j-5", RESULT),
    ]
    assert job.state == "complete"
    assert job.result == RESULT
    assert job.error is None


def test_render_job_frames_are_exact() -> None:
    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        progress(50, "rendering")
        return {"filename": "a", "url": "b"}

    _, events = run_job(render, job_id="x")
    assert [e.encode() for e in events] == [
        b'event: progress\nid: x-1\ndata: {"progress":50,"phase":"rendering"}\n\n',
        b'event: complete\nid: x-2\ndata: {"filename":"a","url":"b"}\n\n',
    ]


def test_render_job_default_id_is_random_hex() -> None:
    published: list[Event] = []
    a = RenderJob(lambda p, g: RESULT, {}, published.append)
    b = RenderJob(lambda p, g: RESULT, {}, published.append)
    assert a.id != b.id
    int(a.id, 16)
    a.run()
    assert [e.id for e in published] == [f"{a.id}-1"]


def test_render_job_accepts_any_mapping() -> None:
    _, events = run_job(lambda p, g: MappingProxyType(dict(RESULT)))
    assert summary(events) == [("complete", "job-1", RESULT)]


def test_render_exception_becomes_one_error_event() -> None:
    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        progress(10, "bundling")
        raise RuntimeError("ffmpeg exited with 1")

    job, events = run_job(render)
    assert summary(events) == [
        ("progress", "job-1", {"progress": 10, "phase": "bundling"}),
        ("error", "job-2", {"message": "ffmpeg exited with 1"}),
    ]
    assert job.state == "error"
    assert job.error == "ffmpeg exited with 1"
    assert job.result is None


def test_render_exception_without_message_still_has_a_message() -> None:
    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        raise KeyError

    job, events = run_job(render)
    assert [e.event for e in events] == ["error"]
    assert events[0].data["message"]
    assert job.state == "error"


@pytest.mark.parametrize("result", [None, ["filename"], "done", 42])
def test_render_returning_a_non_dict_is_an_error(result: object) -> None:
    job, events = run_job(lambda p, g: result)
    assert [e.event for e in events] == ["error"]
    assert isinstance(events[0].data["message"], str) and events[0].data["message"]
    assert job.state == "error"
    assert job.result is None


def test_render_returning_a_non_json_dict_is_an_error() -> None:
    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        progress(50, "rendering")
        return {"filename": "a", "url": object()}

    job, events = run_job(render)
    assert [e.event for e in events] == ["progress", "error"]
    numbers = seq_numbers(events, "job")
    assert numbers == sorted(set(numbers))
    assert job.state == "error"
    assert job.result is None


def test_ids_stay_consecutive_when_the_result_cannot_be_encoded() -> None:
    # "<job id>-<n>": n names the event's place in the job, so the error
    # event that replaces an unencodable complete event is number 2.
    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        progress(50, "rendering")
        return {"filename": "a", "url": object()}

    _, events = run_job(render)
    assert [e.id for e in events] == ["job-1", "job-2"]


def test_ids_are_strictly_increasing_in_every_outcome() -> None:
    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        for percent in range(0, 101, 7):
            progress(percent, "rendering")
        if payload["fail"]:
            raise ValueError("no")
        return RESULT

    for fail in (False, True):
        events: list[Event] = []
        RenderJob(render, {"fail": fail}, events.append, job_id="k").run()
        assert seq_numbers(events, "k") == list(range(1, len(events) + 1))
        assert [e.event for e in events].count("progress") == len(events) - 1
        assert events[-1].event == ("error" if fail else "complete")


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

    events: list[Event] = []
    job = RenderJob(render, {}, events.append, job_id="c")
    worker = threading.Thread(target=job.run)
    worker.start()
    try:
        assert started.wait(5)
        job.cancel()
    finally:
        go_on.set()
        worker.join(5)
    assert not worker.is_alive()
    assert len(raised) == 1
    assert job.state == "cancelled"
    assert job.result is None
    assert [e.event for e in events] == ["progress", "error"]
    assert [e.id for e in events] == ["c-1", "c-2"]
    assert "cancel" in events[-1].data["message"].lower()
    assert job.error is not None and "cancel" in job.error.lower()


def test_render_that_catches_cancelled_and_returns_still_ends_cancelled() -> None:
    # Cancelled's contract: a render "may catch it to clean up, then should
    # return or re-raise. The stream ends with an error event saying the job
    # was cancelled." Returning must not turn the job into a success.
    cleaned: list[bool] = []

    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        progress(10, "rendering")
        job.cancel()
        try:
            progress(20, "rendering")
        except Cancelled:
            cleaned.append(True)
            return RESULT
        return RESULT  # pragma: no cover - progress must raise

    events: list[Event] = []
    job = RenderJob(render, {}, events.append, job_id="r")
    job.run()
    assert cleaned == [True]
    assert job.state == "cancelled"
    assert [e.event for e in events] == ["progress", "error"]
    assert "cancel" in events[-1].data["message"].lower()


def test_stream_closed_on_publish_cancels_the_job() -> None:
    published: list[Event] = []
    seen: list[str] = []

    def publish(event: Event) -> None:
        if published:  # the client leaves after the first event
            raise StreamClosed("gone")
        published.append(event)

    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        progress(10, "rendering")
        seen.append("first ok")
        try:
            progress(20, "rendering")
        except Cancelled:
            seen.append("cancelled")
        try:
            progress(30, "rendering")
        except Cancelled:
            seen.append("cancelled again")
            raise
        return RESULT  # pragma: no cover - progress must raise

    job = RenderJob(render, {}, publish, job_id="s")
    job.run()  # must not raise
    assert seen == ["first ok", "cancelled", "cancelled again"]
    assert job.progress.cancelled
    assert job.state == "cancelled"
    assert summary(published) == [("progress", "s-1", {"progress": 10, "phase": "rendering"})]


def test_stream_closed_on_the_complete_event_does_not_raise() -> None:
    def publish(event: Event) -> None:
        raise StreamClosed("gone")

    job = RenderJob(lambda p, g: RESULT, {}, publish, job_id="t")
    job.run()
    assert job.state == "complete"
    assert job.result == RESULT


def test_run_never_raises_even_if_publish_fails() -> None:
    # RenderJob.run is documented as "never raises": it runs on a background
    # thread or greenlet, where an escaping exception is lost or crashes it.
    def publish(event: Event) -> None:
        raise RuntimeError("broker down")

    def render(payload: dict[str, Any], progress: Progress) -> Mapping[str, Any]:
        progress(10, "rendering")
        return RESULT

    job = RenderJob(render, {}, publish, job_id="u")
    job.run()
    assert job.state == "error"
