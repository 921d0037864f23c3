"""The README's two front doors, tried as a new user tries them.

Each test builds a throwaway venv holding only what the user would have,
runs the README's commands as written and checks what a person would see.
They run in ``make smoke`` (part of ``make test``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest

from flask_sse_flush.testing import free_port
from tests.integration.support import raw_get

from .support import (
    HOST,
    INSTALL_TIMEOUT,
    REPO,
    clean_env,
    interrupt,
    new_venv,
    port_is_free,
    read_quickstart,
    session,
    wait_until_listening,
)

FORM = {"month": 3, "year": 2026, "books": ["Middlemarch", "Piranesi"]}


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    if shutil.which("make") is None:
        pytest.fail("make is not installed (.ci/run installs it)")


def test_make_run_serves_the_demo_from_a_clean_venv(tmp_path: Path) -> None:
    port = free_port()
    venv = tmp_path / "venv"
    log = tmp_path / "make-run.log"
    env = clean_env(
        SSE_FLUSH_DEMO_OUTPUT_DIR=str(tmp_path / "videos"),
        # gunicorn's control socket goes here, not beside another gunicorn's.
        XDG_RUNTIME_DIR=str(tmp_path),
    )
    command = [
        "make",
        "--no-print-directory",
        "-C",
        str(REPO),
        "run",
        f"VENV={venv}",
        f"PORT={port}",
    ]
    with session(command, log=log, env=env) as make:
        wait_until_listening(make, port, INSTALL_TIMEOUT, log)

        with raw_get(port, "/", {"Accept": "text/html"}) as page:
            html = page.body().decode()
        assert page.status == 200, html[:500]
        assert 'role="progressbar"' in html and "new SSEFlushSource(" in html

        path = "/render/stream?data=" + quote(json.dumps(FORM))
        with raw_get(port, path, timeout=120) as response:
            assert response.status == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            arrivals = list(response.arrivals())
        events = [a.event for a in arrivals]
        progress = [e.json() for e in events if e.event == "progress"]
        assert events[-1].event == "complete", [e.event for e in events]
        assert len(progress) >= 20
        assert progress[0]["phase"] == "bundling"
        # The demo stamps each event with its send time (SSE_FLUSH_SEND_TIME):
        # the page shows each event's delay.
        assert {k: progress[-1][k] for k in ("progress", "phase")} == {
            "progress": 100,
            "phase": "rendering",
        }
        assert all(isinstance(p["sent"], float) for p in progress)
        # Live, not all at once at the end.
        firsts = [a.at for a in arrivals if a.event.event == "progress"]
        assert arrivals[-1].at - firsts[0] > 1.0

        url = events[-1].json()["url"]
        with raw_get(port, url, {"Accept": "*/*"}) as download:
            video = download.body()
        assert download.status == 200
        assert download.headers["content-type"] == "video/mp4"
        assert video[4:8] == b"ftyp"
        saved = tmp_path / "download.mp4"
        saved.write_bytes(video)
        counted = subprocess.run(
            [str(venv / "bin" / "python"), "-c",
             "import sys, imageio_ffmpeg as f; print(*f.count_frames_and_secs(sys.argv[1]))",
             str(saved)],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        frames, seconds = counted.stdout.split()
        assert int(frames) == 240 and float(seconds) == pytest.approx(8.0)

        interrupt(make)
    assert port_is_free(port), "the server still listens after Ctrl-C"
    assert_served_cleanly(log)


def test_the_readme_quickstart_runs_as_written(tmp_path: Path) -> None:
    quickstart = read_quickstart()
    # The install line, pointed at this checkout instead of the index.
    words = quickstart.install.split()
    assert words[:2] == ["pip", "install"] and len(words) == 3, quickstart.install
    requirement = words[2].strip("'\"")
    assert requirement.startswith("flask-sse-flush["), requirement
    local = f"{REPO}{requirement[len('flask-sse-flush') :]}"
    install_log = tmp_path / "install.log"
    venv = new_venv(tmp_path / "venv", local, log=install_log)

    project = tmp_path / "project"
    project.mkdir()
    for name, text in quickstart.files.items():
        (project / name).write_text(text)
    env = clean_env(venv, XDG_RUNTIME_DIR=str(tmp_path))

    # Served from a venv holding nothing but the install line: what gunicorn's
    # gevent worker imports must come with the extra.
    serve = quickstart.serve
    bind = re.search(rf"{re.escape(HOST)}:(\d+)", serve)
    assert bind, f"the quickstart should bind to {HOST}:<port>: {serve}"
    port = int(bind.group(1))
    if not port_is_free(port):  # as written, unless something else holds that port here
        port = free_port()
        serve = serve.replace(bind.group(0), f"{HOST}:{port}")
    log = tmp_path / "gunicorn.log"
    with session(["bash", "-c", f"exec {serve}"], log=log, cwd=project, env=env) as server:
        wait_until_listening(server, port, 60, log)
        with raw_get(port, "/render/stream?data=%7B%7D", timeout=30) as response:
            assert response.status == 200
            assert response.headers["x-accel-buffering"] == "no"
            events = [a.event for a in response.arrivals()]
        assert [e.event for e in events] == ["progress", "complete"]
        assert events[0].json() == {"progress": 50, "phase": "rendering"}
        assert events[1].json()["filename"] == "out.mp4"
        interrupt(server)
    assert port_is_free(port)
    assert_served_cleanly(log)

    # Then the test file, with pytest added, as the README runs it.
    with install_log.open("ab") as out:
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "pytest"],
            check=True, stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT, env=env,
        )  # fmt: skip
    tested = subprocess.run(
        ["bash", "-c", quickstart.test], cwd=project, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "1 passed" in tested.stdout


def assert_served_cleanly(log: Path) -> None:
    """gunicorn served without an error and shut down when Ctrl-C came.

    Ctrl-C signals the whole process group, so a gevent worker may get a
    second quit signal while it is already exiting and print gevent's
    ``SystemExit`` report: that comes after the signal and is not an error.
    """
    output = log.read_text(errors="replace")
    serving, signal, _ = output.partition("Handling signal: int")
    assert signal, f"gunicorn never saw the Ctrl-C:\n{output[-4000:]}"
    assert "Traceback" not in serving and "[ERROR]" not in serving, serving[-4000:]
    assert "Shutting down: Master" in output, output[-4000:]
