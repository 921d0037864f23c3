"""The benchmark client's bookkeeping: every tick counted and parsed, however the chunks fall."""

from __future__ import annotations

import random

import pytest

from benchmarks.client import Stream

FRAMES = b"".join(
    b'event: tick\ndata: {"seq":%d,"t":%d}\n\n: keepalive\n\n' % (seq, 1_000 + seq)
    for seq in range(200)
)


@pytest.mark.parametrize("seed", range(20))
def test_ticks_cut_anywhere_are_each_counted_once_and_parsed_whole(seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(FRAMES)), rng.randint(1, 600)))
    stream = Stream(None, 0)  # type: ignore[arg-type]  # no socket: chunks are handed in
    stream.status = b"HTTP/1.1 200 OK"
    for number, (start, end) in enumerate(zip([0, *cuts], [*cuts, len(FRAMES)], strict=True)):
        stream.keep(FRAMES[start:end], 10_000 + number)
    assert stream.counted == 200
    stream.parse()
    assert [seq for seq, _ in stream.ticks] == list(range(200))
    # Each tick's latency is taken from the chunk that completed it, never
    # from a number the chunk cut short.
    for seq, latency in stream.ticks:
        assert 10_000 - (1_000 + seq) <= latency <= 10_000 + len(cuts) - (1_000 + seq)
