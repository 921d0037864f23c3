"""The demo in real Chromium, Firefox and WebKit: directly, behind nginx with
its default buffering, and behind nginx with gzip on for event streams.

The page's own handlers update the progress bar; the harness records, with
``performance.now()``, when each update happened, and the render's reporter
logs when each event was sent, on the server's monotonic clock. Before and
after the render the page measures how far its clock is from the server's
(``/__ping`` answers with the server's monotonic time), and latencies are
taken on the server's clock, following any drift between the two samples.
Wall clocks are no use here: they are adjusted while a run goes on, and a
browser's and the machine's drifted 20 ms apart within one render.
"""

from __future__ import annotations

import json
import statistics
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.support import Server
from tests.timing import assert_p95_under

from .support import ENGINES, SCREENSHOTS, Nginx, browser, missing_tools, require, screenshot

LATENCY_P95_LIMIT_MS = 100.0


def sent_times(server: Server) -> dict[tuple[int, str], float]:
    sent: dict[tuple[int, str], float] = {}
    for record in server.read_log("sent.jsonl"):
        progress, phase = record["progress"]
        sent.setdefault((progress, phase), record["t"] * 1000)
    return sent


def to_server_clock(report: dict[str, Any]) -> Callable[[float], float]:
    """The page's clock reading ``t`` (ms) as the server's, from the median
    of the samples taken before the render and of those taken after it,
    with the drift between the two spread evenly over the time between."""

    def median(samples: list[dict[str, float]]) -> tuple[float, float]:
        assert samples, "the page took no clock samples"
        return statistics.median(s["at"] for s in samples), statistics.median(
            s["offset"] for s in samples
        )

    (at_0, offset_0), (at_1, offset_1) = median(report["clockBefore"]), median(report["clockAfter"])
    drift = (offset_1 - offset_0) / (at_1 - at_0) if at_1 > at_0 else 0.0
    return lambda t: t - (offset_0 + drift * (t - at_0))


def base_url(via: str, demo_server: Server, nginx: Nginx | None) -> str:
    if via == "direct":
        return f"http://127.0.0.1:{demo_server.port}"
    assert nginx is not None
    port = nginx.plain_port if via == "nginx" else nginx.gzip_port
    return f"http://127.0.0.1:{port}"


@pytest.fixture(params=["direct", "nginx", "nginx-gzip"])
def via(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("engine", ENGINES)
def test_progress_is_live_in_every_engine(
    engine: str, via: str, display: str, demo_server: Server, request: pytest.FixtureRequest
) -> None:
    require(*missing_tools(engine))
    proxy = None if via == "direct" else request.getfixturevalue("nginx")
    run = f"{engine}-{via}-{uuid.uuid4().hex[:8]}"
    url = f"{base_url(via, demo_server, proxy)}/__harness?run={run}"
    demo_server.log_file("sent.jsonl").unlink(missing_ok=True)  # one render at a time
    with browser(engine, display, url, demo_server.log_dir, run) as harness:
        harness.wait_for("mid")
        screenshot(display, SCREENSHOTS / f"{engine}-{via}-mid-render.png")
        report = harness.wait_for("done")
        screenshot(display, SCREENSHOTS / f"{engine}-{via}-complete.png")

    sent = sent_times(demo_server)
    shown = [e for e in report["seen"] if (e["progress"], e["phase"]) in sent]
    # On the server's clock (see the module's docstring).
    on_server = to_server_clock(report)
    latencies = [on_server(e["t"]) - sent[(e["progress"], e["phase"])] for e in shown]
    assert len(shown) >= 20, f"{engine} showed only {len(shown)} progress events"
    # Shown as they happen, not in a burst at the end:
    assert shown[-1]["t"] - shown[0]["t"] > 1000, "all progress arrived at once"
    assert_p95_under(latencies, LATENCY_P95_LIMIT_MS, f"{engine} {via}: shown after sent, p95 (ms)")
    assert min(latencies) > -5, "an event was shown before it was sent (clock skew?)"
    assert report["progressbar"] == 100
    assert report["fill"] == "100%"
    assert report["link"] and report["link"].startswith("/download/recap-")
    assert report["resultClass"] == ""
    _check_video(demo_server, report["link"])


def _check_video(server: Server, link: str) -> None:
    import imageio_ffmpeg

    video = Path(server.log_dir) / "videos" / link.rsplit("/", 1)[1]
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(video))
    assert frames > 0 and seconds > 1


@pytest.mark.parametrize("engine", ENGINES)
def test_a_failed_render_shows_its_message(engine: str, display: str, demo_server: Server) -> None:
    require(*missing_tools(engine))
    run = f"{engine}-fail-{uuid.uuid4().hex[:8]}"
    url = f"http://127.0.0.1:{demo_server.port}/__harness?run={run}&fail=1"
    with browser(engine, display, url, demo_server.log_dir, run) as harness:
        report: dict[str, Any] = harness.wait_for("done")
        screenshot(display, SCREENSHOTS / f"{engine}-failed.png")
    assert report["resultClass"] == "error"
    assert "simulated failure" in report["result"], json.dumps(report)[:500]
    assert report["link"] is None


@pytest.mark.parametrize("engine", ENGINES)
def test_the_demo_survives_a_reload_mid_render(
    engine: str, display: str, demo_server: Server
) -> None:
    """Reloaded mid-render, the demo page follows the same render on: its
    log holds every event once (the events before the reload kept, the rest
    resumed from the last id), each with its delay, and the video plays."""
    require(*missing_tools(engine))
    run = f"{engine}-reload-{uuid.uuid4().hex[:8]}"
    url = f"http://127.0.0.1:{demo_server.port}/__reload?run={run}"
    with browser(engine, display, url, demo_server.log_dir, run) as harness:
        report: dict[str, Any] = harness.wait_for("done", timeout=90)
    before, after = report["before"], report["after"]
    assert len(before) >= 15 and after[: len(before)] == before, "the log before the reload"
    ids = [row["id"] for row in after]
    job = ids[0].rsplit("-", 1)[0]
    assert ids == [f"{job}-{n}" for n in range(1, len(ids) + 1)], ids
    assert len(ids) > len(before) + 5, "the render went on after the reload"
    assert [row["type"] for row in after][-1] == "complete"
    assert all(row["delay"].endswith(" ms") for row in after), after[:3]
    assert report["video"].startswith("/download/recap-") and not report["videoHidden"]
