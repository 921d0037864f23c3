"""Real nginx in front of gunicorn, read over raw sockets as bytes arrive.

With nginx's defaults (``proxy_buffering on``) an event stream is held
back and batched; ``X-Accel-Buffering: no`` lets each event through at once.
The control route, a plain generator without that header, shows the
buffering is real, so these tests can fail.
"""

from __future__ import annotations

import time
import zlib

from flask_sse_flush.wire.frames import EventDecoder
from tests.integration.support import Server, raw_get
from tests.timing import assert_p95_under

from .support import Nginx

LIMIT = 0.100


def _ticks(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[dict[str, str], list[float]]:
    """Headers, and each event's latency (arrival minus the send time it carries)."""

    with raw_get(port, path, headers) as response:
        gzipped = response.headers.get("content-encoding") == "gzip"
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        decoder = EventDecoder()
        latencies = []
        for chunk in response.body_chunks():
            now = time.time()
            data = inflate.decompress(chunk) if gzipped else chunk
            latencies += [now - e.json()["sent"] for e in decoder.feed(data)]
        return response.headers, latencies


def test_library_stream_passes_nginx_default_buffering(demo_server: Server, nginx: Nginx) -> None:
    headers, latencies = _ticks(nginx.plain_port, "/__library/stream")
    assert "x-accel-buffering" not in headers  # nginx consumed it
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert len(latencies) == 10
    assert_p95_under(latencies, LIMIT, "through nginx, p95 (s)")


def test_control_without_the_header_is_batched_by_nginx(demo_server: Server, nginx: Nginx) -> None:
    _, direct = _ticks(demo_server.port, "/__control/stream")
    assert_p95_under(direct, LIMIT, "control, direct, p95 (s)")  # the generator itself is fine...
    _, proxied = _ticks(nginx.plain_port, "/__control/stream")
    assert len(proxied) == 10
    # ...but nginx held the first events back until the response ended.
    assert proxied[0] > 0.5, proxied


def test_gzip_on_for_event_streams_does_not_touch_library_streams(
    demo_server: Server, nginx: Nginx
) -> None:
    accept = {"Accept-Encoding": "gzip"}
    control_headers, _ = _ticks(nginx.gzip_port, "/__control/stream", accept)
    assert control_headers.get("content-encoding") == "gzip"  # the config does gzip streams
    headers, latencies = _ticks(nginx.gzip_port, "/__library/stream", accept)
    assert headers.get("content-encoding") == "identity"
    assert len(latencies) == 10
    assert_p95_under(latencies, LIMIT, "through nginx with gzip, p95 (s)")
