"""The demo's render job: draw a short "reading recap" video and encode it.

Two phases, reported as the original service did:

* bundling: Pillow draws every frame (0-100 % of frames, through
  :func:`~flask_sse_flush.map_bundle_progress`, so 0-25 % overall);
* rendering: ffmpeg (the binary the ``imageio-ffmpeg`` package ships)
  encodes them to H.264 MP4 and reports each encoded frame on
  ``-progress pipe:1`` (0-1 through
  :func:`~flask_sse_flush.map_render_progress`, so 25-100 % overall).

Both phases are CPU-heavy, and both run in child processes at a lower CPU
priority (``niceness``) with a bounded thread count: a render that took
every core would delay every user's progress events, its own included.
The job itself (a native thread, the blueprint's default executor) only
starts the children and relays their progress lines.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

from flask_sse_flush import Progress, map_bundle_progress, map_render_progress
from flask_sse_flush import RenderError as LibraryRenderError
from flask_sse_flush.runtime import call_on_hub

__all__ = [
    "FILENAME",
    "RenderError",
    "RenderSettings",
    "clean_old_files",
    "find_ffmpeg",
    "render_video",
    "validate_payload",
]

log = logging.getLogger(__name__)

#: The script that draws the frames, in a child process.
DRAW = Path(__file__).with_name("draw.py")
#: The names of the files the demo writes; nothing else is ever served.
FILENAME = re.compile(r"recap-[0-9a-f]{32}\.mp4")
#: A video still being encoded (or left by a crash): cleaned up, never served.
PARTIAL = re.compile(r"recap-[0-9a-f]{32}\.part\.mp4")
MAX_BOOKS = 8
MAX_TITLE = 60


class RenderError(LibraryRenderError):
    """The render failed; its message is shown to the user."""


@dataclass(frozen=True)
class RenderSettings:
    """Where and how the demo renders."""

    output_dir: Path
    #: The ffmpeg binary; found once, up front (finding it runs ffmpeg, and
    #: gevent's subprocess cannot run from a job's native thread).
    ffmpeg: str
    width: int = 1280
    height: int = 720
    fps: int = 30
    seconds: float = 8.0
    #: Finished videos kept at most this long, and at most ``max_files``.
    max_age: float = 3600.0
    max_files: int = 20
    #: How much lower the drawing and encoding processes run than the
    #: server (``nice`` increments; 0 leaves them alone). The worker's socket
    #: writes must not queue behind a render for a core.
    niceness: int = 10
    #: The most threads ffmpeg's encoder and filters may use. ffmpeg 7's
    #: command line still runs its demuxer, decoder, encoder and muxer in
    #: threads of their own, so it may use a little more than one core.
    ffmpeg_threads: int = 1


def validate_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """Check the form's payload; raise :class:`ValueError` with a readable message."""
    month, year, books = payload.get("month"), payload.get("year"), payload.get("books", [])
    if isinstance(month, bool) or not isinstance(month, int) or not 1 <= month <= 12:
        raise ValueError("month must be a whole number from 1 to 12")
    if isinstance(year, bool) or not isinstance(year, int) or not 1900 <= year <= 2100:
        raise ValueError("year must be a whole number from 1900 to 2100")
    if not isinstance(books, list) or not all(isinstance(b, str) for b in books):
        raise ValueError("books must be a list of titles")
    books = [b.strip() for b in books if b.strip()]
    if not books:
        raise ValueError("add at least one book")
    if len(books) > MAX_BOOKS:
        raise ValueError(f"at most {MAX_BOOKS} books")
    if any(len(b) > MAX_TITLE for b in books):
        raise ValueError(f"a title may be at most {MAX_TITLE} characters")
    return {"month": month, "year": year, "books": books, "fail": bool(payload.get("fail"))}


def find_ffmpeg() -> str:
    """The ffmpeg binary that the ``imageio-ffmpeg`` package ships."""
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def render_video(
    payload: dict[str, Any], progress: Progress, settings: RenderSettings
) -> dict[str, str]:
    """Draw and encode one video; return the ``complete`` event's data."""
    if payload.get("fail"):
        progress(map_bundle_progress(0), "bundling")
        time.sleep(0.5)
        raise RenderError("the renderer failed (a simulated failure, as asked)")
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    clean_old_files(settings)
    name = f"recap-{uuid4().hex}.mp4"
    total = round(settings.fps * settings.seconds)
    with tempfile.TemporaryDirectory(prefix="recap-frames-") as frames_dir:
        # The children run as gevent subprocesses on the worker's hub (where
        # gevent can wait for them), reporting as they go; this thread waits.
        call_on_hub(lambda: _draw(settings, payload, Path(frames_dir), total, progress))
        call_on_hub(
            lambda: _encode(settings, Path(frames_dir), settings.output_dir / name, total, progress)
        )
    return {"filename": name, "url": f"/download/{name}"}


def _draw(
    settings: RenderSettings,
    payload: dict[str, Any],
    folder: Path,
    total: int,
    progress: Progress,
) -> None:
    spec = {
        "width": settings.width,
        "height": settings.height,
        "fps": settings.fps,
        "seconds": settings.seconds,
        "month": payload["month"],
        "year": payload["year"],
        "books": payload["books"],
    }
    # Run by its path, not as a module: the demo is not installed, and the
    # child need not start where the examples folder is importable.
    command = [sys.executable, str(DRAW), json.dumps(spec), str(folder)]
    progress(map_bundle_progress(0), "bundling")
    _run_child(
        command,
        settings,
        "drawing",
        lambda done: progress(map_bundle_progress(100 * done / total), "bundling"),
    )


def _encode(
    settings: RenderSettings, frames: Path, target: Path, total: int, progress: Progress
) -> None:
    partial = target.with_suffix(".part.mp4")
    threads = str(max(1, settings.ffmpeg_threads))
    command = [
        settings.ffmpeg, "-hide_banner", "-loglevel", "error", "-nostats", "-y",
        "-threads", threads, "-framerate", str(settings.fps), "-i", str(frames / "%05d.png"),
        "-c:v", "libx264", "-preset", "medium", "-pix_fmt", "yuv420p",
        "-threads", threads, "-filter_threads", threads,
        "-movflags", "+faststart", "-progress", "pipe:1", "-stats_period", "0.1",
        str(partial),
    ]  # fmt: skip
    progress(map_render_progress(0), "rendering")
    try:
        _run_child(
            command,
            settings,
            "ffmpeg",
            lambda done: progress(map_render_progress(min(1.0, done / total)), "rendering"),
        )
    except BaseException:
        partial.unlink(missing_ok=True)  # cancelled or failed: leave no half file
        raise
    partial.rename(target)
    progress(map_render_progress(1.0), "rendering")


def _lowered(command: list[str], niceness: int) -> list[str]:
    """``command`` run at a lower CPU priority, through ``nice``, where there is one.

    ``nice`` sets the priority and then becomes the command (same process),
    so killing it kills the command; no Python code runs between fork and
    exec in a process whose other threads may hold locks.
    """
    nice = shutil.which("nice") if niceness > 0 else None
    return [nice, "-n", str(niceness), *command] if nice else command


def _run_child(
    command: list[str], settings: RenderSettings, what: str, on_frame: Callable[[int], None]
) -> None:
    """Run a child that prints ``frame=<n>`` lines; report each ``n``."""
    # Its error output goes to a file: a pipe read only after stdout ends
    # would block a child that writes more than a pipe holds.
    with (
        tempfile.TemporaryFile() as errors,
        subprocess.Popen(
            _lowered(command, settings.niceness),
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        ) as process,
    ):
        assert process.stdout is not None
        try:
            for line in process.stdout:
                key, _, value = line.strip().partition("=")
                if key == "frame" and value.isdigit():
                    on_frame(int(value))
        except BaseException:
            process.kill()  # cancelled: stop now
            raise
        process.wait()
        errors.seek(0)
        message = errors.read().decode("utf-8", "replace").strip()[-300:]
    if process.returncode != 0:
        # The tool's own words (paths, versions) stay in the server's log.
        log.error("%s failed (%d): %s", what, process.returncode, message)
        raise RenderError(f"{what} failed ({process.returncode})")


def clean_old_files(settings: RenderSettings) -> None:
    """Delete finished videos older than ``max_age``, and beyond ``max_files``."""
    if not settings.output_dir.is_dir():
        return
    videos = []
    now = time.time()
    for path in settings.output_dir.iterdir():
        if PARTIAL.fullmatch(path.name):
            try:
                if now - path.stat().st_mtime > settings.max_age:
                    path.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
        elif FILENAME.fullmatch(path.name):
            try:
                videos.append((path.stat().st_mtime, path))
            except FileNotFoundError:  # another render's cleanup got there first
                continue
    videos.sort(reverse=True)
    for index, (mtime, path) in enumerate(videos):
        if index >= settings.max_files or now - mtime > settings.max_age:
            path.unlink(missing_ok=True)


def default_output_dir() -> Path:
    """Where videos go unless ``SSE_FLUSH_DEMO_OUTPUT_DIR`` says otherwise."""
    return Path(tempfile.gettempdir()) / "flask-sse-flush-demo"
