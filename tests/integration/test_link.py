"""The seeds' bug on a real link: 20 ms each way between two network namespaces.

On loopback Linux acknowledges at once, and an app that writes each event
in two pieces without ``TCP_NODELAY`` looks as fast as any other.
``benchmarks.link`` builds a link with a real round trip (two namespaces of
its own, TUN devices, a relay that delays every packet 20 ms), where
Nagle's algorithm makes every second piece of an event wait for the ACK of
the first, a whole round trip.

Over it: ours adds nothing to the one-way delay, on gunicorn and on
werkzeug (which sets no ``TCP_NODELAY`` of its own); the naive app on
werkzeug is a round trip late, every event; and the doctor, from the
client's side, names ``nagle`` for a naive diagnostic stream and nothing for
the library's. Skips only where the link cannot be built (not root, no
``/dev/net/tun``, no ``ip``).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

import pytest

from benchmarks.link import Link, LinkUnavailable, doctor, open_link, server_command, tick_delays
from tests.timing import assert_under, percentile

DELAY = 0.020  # each way
TICKS, INTERVAL = 40, 0.1
_PORTS = itertools.count(8101)


@pytest.fixture(scope="module")
def link() -> Iterator[Link]:
    with contextlib.ExitStack() as stack:
        try:
            made = stack.enter_context(open_link(DELAY))
        except LinkUnavailable as exc:
            pytest.skip(f"no delayed link can be built here: {exc}")
        yield made


def delays_ms(link: Link, server: str, app: str) -> list[float]:
    port = next(_PORTS)
    with link.serve(server_command(server, app, port), port):
        delays = tick_delays(link, port, count=TICKS, interval=INTERVAL)
    assert len(delays) == TICKS, f"{len(delays)} of {TICKS} ticks arrived"
    return [d * 1000 for d in delays]


def test_the_link_has_its_round_trip(link: Link) -> None:
    # A TCP handshake is one round trip: 40 ms, not loopback's microseconds.
    round_trip = link.round_trip()
    assert 2 * DELAY * 0.95 < round_trip < 2 * DELAY + 0.030, round_trip


@pytest.mark.parametrize("server", ["gunicorn", "gunicorn-stream", "werkzeug"])
def test_ours_adds_nothing_to_the_one_way_delay(link: Link, server: str) -> None:
    ms = delays_ms(link, server, "benchmarks.contenders.ours:app")
    what = f"ours on {server}: p95 ms beyond the one-way delay"
    assert_under(percentile(ms, 95), 5.0, what, ms)


def test_the_naive_app_waits_a_round_trip_per_event(link: Link) -> None:
    # werkzeug sets no TCP_NODELAY (gunicorn does, on its listening socket):
    # each event's second piece waits for the client's ACK of the first,
    # one round trip (40 ms) even though Linux acknowledges at once. With
    # no delay on the link the wait would vanish, or be at most a delayed
    # ACK's 40 ms, 20 ms less after subtracting a one-way delay that was
    # not there: the bound cannot pass on a link without its round trip.
    ms = delays_ms(link, "werkzeug", "benchmarks.contenders.bare:naive_app")
    assert percentile(ms, 50) > 30.0, ms
    assert sum(1 for d in ms if d > 30.0) >= 0.9 * len(ms), ms


@pytest.mark.parametrize("query", ["", "?n=20&interval=0.05"], ids=["default", "pile-up"])
def test_the_doctor_names_nagle_for_a_naive_stream(link: Link, query: str) -> None:
    # 50 ms apart, closer than two round trips: each event also waits for
    # the ACK of the one before, and arrives a round trip after it.
    port = next(_PORTS)
    app = "benchmarks.contenders.naive_diagnose:naive_app"
    with link.serve(server_command("werkzeug", app, port), port):
        report = doctor(link, port, "/render/diagnose" + query)
    assert report["culprits"] == ["nagle"], report
    assert report["exit_status"] == 1 and report["ok"] is False
    assert 2 * DELAY * 0.95 < report["round_trip"] < 2 * DELAY + 0.030, report


def test_the_doctor_finds_nothing_wrong_with_ours(link: Link) -> None:
    port = next(_PORTS)
    app = "benchmarks.contenders.naive_diagnose:app"  # the library's diagnostic route
    with link.serve(server_command("gunicorn", app, port), port):
        report = doctor(link, port)
    assert report["culprits"] == [] and report["ok"] is True, report
    assert report["exit_status"] == 0
