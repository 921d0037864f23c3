"""``python -m benchmarks.hotpath``: the direct writers' Python cost per stream, checked honest."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import hotpath
from flask_sse_flush.wsgi.direct import DirectWriter
from flask_sse_flush.wsgi.worker import ParkedStream

ROOT = Path(__file__).resolve().parent.parent


def test_the_command_prints_a_cost_per_stream() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.hotpath", "--streams", "200", "--rounds", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    match = re.fullmatch(
        r"direct writer \(gunicorn -k gevent\): (\d+) ns per stream, best of 3 broadcasts "
        r"to 200 streams \(send\(\) left out\)\n"
        r"parked stream \(StreamWorker\): (\d+) ns per stream, best of 3 broadcasts "
        r"to 200 streams \(send\(\) left out\)\n",
        result.stdout,
    )
    assert match, result.stdout + result.stderr
    assert int(match[1]) > 0 and int(match[2]) > 0


def test_a_writer_that_stopped_writing_directly_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    assert hotpath.measure(20, 2) > 0
    monkeypatch.setattr(DirectWriter, "__call__", lambda self, frame: False)
    with pytest.raises(RuntimeError, match="direct way"):
        hotpath.measure(20, 2)


def test_a_parked_stream_that_stopped_writing_directly_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert hotpath.measure_parked(20, 2) > 0
    monkeypatch.setattr(ParkedStream, "_direct", lambda self, frame: False)
    with pytest.raises(RuntimeError, match="direct way"):
        hotpath.measure_parked(20, 2)


def test_nonsense_is_refused() -> None:
    with pytest.raises(SystemExit):
        hotpath.main(["--streams", "0"])
