"""The demo app: validation, a real render, and downloads that cannot escape."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient

from examples.demo import create_app
from examples.demo.render import RenderError, RenderSettings, clean_old_files, render_video
from flask_sse_flush import Progress
from flask_sse_flush.testing import parse_events

pytest.importorskip("PIL")
imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")

GOOD = {"month": 3, "year": 2026, "books": ["Middlemarch", "Piranesi"]}


@pytest.fixture
def client(tmp_path: Path) -> FlaskClient:
    return create_app(output_dir=tmp_path).test_client()


def stream(payload: object) -> str:
    return "/render/stream?data=" + quote(json.dumps(payload))


def test_page_has_an_accessible_progress_bar(client: FlaskClient) -> None:
    page = client.get("/").get_data(as_text=True)
    assert 'role="progressbar"' in page
    assert 'aria-valuenow="0"' in page
    assert '<label for="month">' in page
    assert "new SSEFlushSource(" in page and "new EventSource(" in page


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({**GOOD, "month": 13}, "month"),
        ({**GOOD, "year": "2026"}, "year"),
        ({**GOOD, "books": []}, "at least one book"),
        ({**GOOD, "books": ["x" * 61]}, "60 characters"),
        ({**GOOD, "books": "Middlemarch"}, "list of titles"),
    ],
)
def test_bad_forms_are_400(client: FlaskClient, payload: object, fragment: str) -> None:
    response = client.get(stream(payload))
    assert response.status_code == 400
    assert fragment in response.get_json()["error"]


def test_a_real_render_streams_progress_and_makes_a_valid_mp4(
    client: FlaskClient, tmp_path: Path
) -> None:
    events = parse_events(client.get(stream(GOOD), buffered=False))
    progress = [e.json() for e in events if e.event == "progress"]
    phases = [p["phase"] for p in progress]
    assert phases.index("rendering") > phases.index("bundling") == 0
    values = [p["progress"] for p in progress]
    assert values == sorted(values) and values[-1] == 100
    assert max(p["progress"] for p in progress if p["phase"] == "bundling") == 25
    assert len(progress) >= 20
    complete = events[-1]
    assert complete.event == "complete"
    filename = complete.json()["filename"]
    assert complete.json()["url"] == f"/download/{filename}"
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(tmp_path / filename))
    assert frames == 240 and seconds == pytest.approx(8.0)
    download = client.get(complete.json()["url"])
    try:
        assert download.status_code == 200
        assert download.mimetype == "video/mp4"
        assert download.data[4:8] == b"ftyp"  # an MP4 file
    finally:
        download.close()


def test_a_failed_render_ends_with_its_message(client: FlaskClient) -> None:
    events = parse_events(client.get(stream({**GOOD, "fail": True}), buffered=False))
    assert events[-1].event == "error"
    assert "simulated failure" in events[-1].json()["message"]


@pytest.mark.parametrize(
    "path",
    [
        "/download/../setup.cfg",
        "/download/..%2Fsetup.cfg",
        "/download/%2E%2E/%2E%2E/etc/passwd",
        "/download/setup.cfg",
        "/download/recap-0123456789abcdef0123456789abcdef.mp4",
        "/download/recap-0123456789abcdef0123456789abcdef.mp4%00.txt",
        "/download/",
    ],
)
def test_downloads_serve_only_the_demos_own_videos(
    client: FlaskClient, tmp_path: Path, path: str
) -> None:
    (tmp_path / "setup.cfg").write_text("secret")
    response = client.get(path)
    assert response.status_code == 404
    assert b"secret" not in response.data


def test_old_videos_are_cleaned_up(tmp_path: Path) -> None:
    import time

    settings = RenderSettings(output_dir=tmp_path, ffmpeg="ffmpeg", max_age=60, max_files=2)
    names = [f"recap-{i:032x}.mp4" for i in range(4)]
    for age, name in enumerate(names):
        path = tmp_path / name
        path.write_bytes(b"x")
        os.utime(path, (time.time() - age * 20, time.time() - age * 20))
    (tmp_path / "notes.txt").write_text("not ours")
    stale, fresh = tmp_path / f"recap-{9:032x}.part.mp4", tmp_path / f"recap-{8:032x}.part.mp4"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")  # still being encoded
    os.utime(stale, (time.time() - 120, time.time() - 120))
    clean_old_files(settings)
    expected = [*names[:2], "notes.txt", fresh.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected)


@pytest.mark.skipif(not hasattr(os, "nice"), reason="needs os.nice")
@pytest.mark.parametrize("niceness", [0, 7])
def test_the_encoder_runs_at_a_lower_cpu_priority(
    tmp_path: Path, niceness: int, caplog: pytest.LogCaptureFixture
) -> None:
    # A stand-in ffmpeg that reports the priority it was started with, then fails.
    fake = tmp_path / "ffmpeg"
    fake.write_text('#!/bin/sh\necho "niceness=$(nice)" >&2\nexit 3\n')
    fake.chmod(0o755)
    settings = RenderSettings(
        output_dir=tmp_path / "out", ffmpeg=str(fake), niceness=niceness, seconds=0.1
    )
    progress = Progress(lambda percent, phase: None)
    with pytest.raises(RenderError, match="ffmpeg failed") as failure:
        render_video({**GOOD, "fail": False}, progress, settings)
    expected = min(19, os.nice(0) + niceness)
    # The tool's own words go to the log, never to the user.
    assert f"niceness={expected}" in caplog.text
    assert str(failure.value) == "ffmpeg failed (3)"
    assert progress.last is not None and progress.last[1] == "rendering"
