"""The Node mirror: the progress mappings, computed as JavaScript does, and
the ``send_*`` helpers writing to a real ``EventStream``."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections.abc import Callable, Generator, Iterator
from decimal import Decimal
from typing import cast

import pytest

from flask_sse_flush import (
    EventStream,
    SSEFlushError,
    StreamClosed,
    map_bundle_progress,
    map_render_progress,
    send_complete_event,
    send_error_event,
    send_event,
    send_keepalive,
    send_progress_event,
)
from flask_sse_flush.wire.frames import EventDecoder

# -- the mappings ----------------------------------------------------------

# Computed with node v20: [p, 25 + Math.round(p * 75)]. The p values with
# many digits are the floats for which p * 75 is exactly 0.49999999999999994,
# 0.5, -0.49999999999999994, -0.5, -0.5000000000000001, 1.5, -1.5, 2.5,
# -2.5, 74.5 and 4503599627370495.5 (+/-): halves, where Python's round()
# (halves to even) and floor(x + 0.5) both differ from Math.round.
RENDER_TABLE: list[tuple[float, int]] = [
    (0, 25),
    (1, 100),
    (0.5, 63),
    (0.1, 33),
    (0.006666666666666666, 25),
    (0.006666666666666667, 26),
    (-0.006666666666666666, 25),
    (-0.006666666666666667, 25),
    (-0.006666666666666668, 24),
    (0.02, 27),
    (-0.02, 24),
    (0.03333333333333333, 28),
    (-0.03333333333333333, 23),
    (0.9933333333333333, 100),
    (60047995031606.61, 4503599627370521),
    (-60047995031606.61, -4503599627370470),
    (0.99, 99),
    (0.333, 50),
    (2, 175),
    (-1, -50),
]

# Computed with node v20: [p, Math.floor(p * 0.25)].
BUNDLE_TABLE: list[tuple[float, int]] = [
    (0, 0),
    (1, 0),
    (3, 0),
    (4, 1),
    (7, 1),
    (50, 12),
    (99, 24),
    (100, 25),
    (99.99999999999999, 24),
    (3.9999999999999996, 0),
    (-0.5, -1),
    (-4, -1),
    (-4.000000000000001, -2),
    (1e-320, 0),
    (0.1, 0),
    (250.5, 62),
]


@pytest.mark.parametrize(("p", "expected"), RENDER_TABLE)
def test_map_render_progress_matches_javascript_table(p: float, expected: int) -> None:
    result = map_render_progress(p)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(("p", "expected"), BUNDLE_TABLE)
def test_map_bundle_progress_matches_javascript_table(p: float, expected: int) -> None:
    result = map_bundle_progress(p)
    assert result == expected
    assert type(result) is int


def test_the_table_holds_exact_halves() -> None:
    # Guards the table itself: these inputs must hit the halves they name.
    assert 0.006666666666666667 * 75 == 0.5
    assert -0.03333333333333333 * 75 == -2.5
    assert 0.006666666666666666 * 75 == 0.49999999999999994
    assert 60047995031606.61 * 75 == 4503599627370495.5
    # ... where Python's own rounding would be wrong.
    assert round(0.5) == 0
    assert round(-2.5) == -2 and round(2.5) == 2


def _inputs() -> list[float]:
    rng = random.Random(20240611)
    values: list[float] = [float(i) for i in range(101)]
    values += [k / 150 for k in range(151)]
    values += [(2 * k + 1) / 2 / 75 for k in range(-10, 10)]  # near halves of p * 75
    values += [(2 * k + 1) / 2 for k in range(-10, 10)]  # halves
    values += [rng.uniform(-1, 2) for _ in range(40)]
    values += [rng.uniform(-150, 150) for _ in range(20)]
    values += [p for p, _ in RENDER_TABLE] + [p for p, _ in BUNDLE_TABLE]
    return [float(v) for v in values]


NODE = shutil.which("node")

NODE_SCRIPT = """
let input = "";
process.stdin.on("data", (c) => (input += c));
process.stdin.on("end", () => {
  const ps = JSON.parse(input);
  console.log(JSON.stringify({
    bundle: ps.map((p) => Math.floor(p * 0.25)),
    render: ps.map((p) => 25 + Math.round(p * 75)),
  }));
});
"""


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_mappings_match_node_on_many_inputs() -> None:
    assert NODE is not None
    inputs = _inputs()
    assert len(inputs) > 300
    result = subprocess.run(
        [NODE, "-e", NODE_SCRIPT],
        input=json.dumps(inputs),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    expected = json.loads(result.stdout)
    ours_bundle = [map_bundle_progress(p) for p in inputs]
    ours_render = [map_render_progress(p) for p in inputs]
    bundle_diff = [
        (p, o, e) for p, o, e in zip(inputs, ours_bundle, expected["bundle"], strict=True) if o != e
    ]
    render_diff = [
        (p, o, e) for p, o, e in zip(inputs, ours_render, expected["render"], strict=True) if o != e
    ]
    assert bundle_diff == []
    assert render_diff == []


@pytest.mark.parametrize("mapping", [map_bundle_progress, map_render_progress])
@pytest.mark.parametrize("value", ["5", None, True, False, [1], Decimal("0.5"), 1j])
def test_mappings_reject_non_numbers(mapping: Callable[[float], int], value: object) -> None:
    with pytest.raises(TypeError):
        mapping(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("mapping", [map_bundle_progress, map_render_progress])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_mappings_reject_non_finite(mapping: Callable[[float], int], value: float) -> None:
    with pytest.raises(ValueError):
        mapping(value)


# -- the send_* helpers on a real EventStream --------------------------------


@pytest.fixture
def stream() -> Iterator[EventStream]:
    stream = EventStream(keepalive=None)
    yield stream
    stream.close()


def open_body(stream: EventStream) -> Generator[bytes, None, None]:
    """Start the body and check its opening frame dispatches no event."""
    body = cast("Generator[bytes, None, None]", iter(stream))
    opening = next(body)
    assert opening.endswith(b"\n\n")
    assert EventDecoder().feed(opening) == []
    return body


def test_send_helpers_write_exact_frames(stream: EventStream) -> None:
    body = open_body(stream)
    send_event(stream, "custom", {"a": 1, "b": "é"})
    send_event(stream, "text", "line 1\nline 2")
    send_progress_event(stream, 42, "rendering")
    send_complete_event(stream, "video.mp4", "https://cdn.example/video.mp4")
    send_error_event(stream, "it broke")
    send_keepalive(stream)
    stream.close()
    assert list(body) == [
        'event: custom\ndata: {"a":1,"b":"é"}\n\n'.encode(),
        b"event: text\ndata: line 1\ndata: line 2\n\n",
        b'event: progress\ndata: {"progress":42,"phase":"rendering"}\n\n',
        b'event: complete\ndata: {"filename":"video.mp4","url":"https://cdn.example/video.mp4"}\n\n',
        b'event: error\ndata: {"message":"it broke"}\n\n',
        b": keepalive\n\n",
    ]


def test_each_send_is_one_chunk_available_before_close(stream: EventStream) -> None:
    body = open_body(stream)
    send_progress_event(stream, 1, "bundling")
    assert next(body) == b'event: progress\ndata: {"progress":1,"phase":"bundling"}\n\n'
    send_keepalive(stream)
    assert next(body) == b": keepalive\n\n"
    stream.close()
    assert list(body) == []


SENDERS: list[Callable[[EventStream], None]] = [
    lambda s: send_event(s, "x", {"k": 1}),
    lambda s: send_progress_event(s, 5, "bundling"),
    lambda s: send_complete_event(s, "f", "u"),
    lambda s: send_error_event(s, "m"),
    send_keepalive,
]


@pytest.mark.parametrize("send", SENDERS)
def test_sending_on_a_closed_stream_raises_stream_closed(
    stream: EventStream, send: Callable[[EventStream], None]
) -> None:
    body = open_body(stream)
    stream.close()
    with pytest.raises(StreamClosed):
        send(stream)
    assert list(body) == []


@pytest.mark.parametrize("send", SENDERS)
def test_sending_after_the_client_left_raises_stream_closed(
    stream: EventStream, send: Callable[[EventStream], None]
) -> None:
    body = open_body(stream)
    body.close()  # what a WSGI server does when a write fails
    with pytest.raises(StreamClosed):
        send(stream)


def test_stream_closed_is_an_sse_flush_error() -> None:
    assert issubclass(StreamClosed, SSEFlushError)


@pytest.mark.parametrize("name", ["a\nb", "a\rdata: x", "a\x00"])
def test_send_event_refuses_an_injected_name(stream: EventStream, name: str) -> None:
    body = open_body(stream)
    with pytest.raises(ValueError):
        send_event(stream, name, {})
    stream.close()
    assert list(body) == []
