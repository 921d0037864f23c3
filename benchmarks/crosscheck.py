"""An independent check of ``make bench``'s latencies.

    python -m benchmarks.crosscheck                    # against benchmarks/results/latest.json
    python -m benchmarks.crosscheck --results FILE     # against another run's results
    python -m benchmarks.crosscheck --quick            # tiny sizes: checks the code runs

``make bench`` measures with :mod:`benchmarks.client` (non-blocking
connects in batches, a regular expression over the chunks kept, three runs
per level). This harness shares none of that code: blocking connects, one
``epoll`` loop per process that only stamps and keeps each chunk while
events flow, every frame split out and every ``tick``'s data parsed as JSON
afterwards, and one publish of thirty events in place of three runs of ten
at many streams. What the two share is what is measured,
not how: the servers (each contender's own command line, on 127.0.0.1),
where the processes run (:mod:`benchmarks.placement`), one stream measured
on three servers of its own, each once, and the figures' definitions.

Each event carries its send time (``"t"``, ``time_ns()`` in the server, the
same clock as the client's on one machine); a client stamps every chunk the
moment ``recv`` returns it. Three figures per contender:

* ``p50_1``: median latency of one stream;
* ``p99_many`` and ``fanout_many`` at the many-streams level (10,000 by
  default): the 99th percentile of every event's latency, and the median over
  events of the time until the *last* stream had it; each over ten events in
  a row, as in one run of ``make bench``, and the median of three such.

Absolute times drift on a shared machine; the comparison is of ratios (ours
against the bare generator and against the raw asyncio limit), each taken
within one run. A ratio *agrees* when it is within the noise of the results
it is checked against: the spread of that run's own repeats (the largest
over the run's max/min of the two figures), and never tighter than 15 %.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import select
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask_sse_flush.testing import free_port, server_process

from .contenders import Contender, discover
from .placement import Placement, describe, placement

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

#: Checked by default: ours in both workers, and what the goals compare them with.
CONTENDERS = ("raw-asyncio", "bare-gevent", "ours-gevent", "ours-stream")
#: (contender, reference) pairs whose ratios are compared.
RATIOS = (
    ("ours-gevent", "bare-gevent"),
    ("ours-gevent", "raw-asyncio"),
    ("ours-stream", "bare-gevent"),
    ("ours-stream", "raw-asyncio"),
)
#: The figures compared, and where a ``make bench`` result holds each.
FIGURES = {"p50_1": ("1", "p50"), "p99_many": ("many", "p99"), "fanout_many": ("many", "fanout")}
#: The smallest noise allowed for: one run's repeats can agree by chance.
MIN_NOISE = 0.15
#: The many-streams level, as in ``make bench``'s plan.
MANY = 10_000
#: The runs of ``make bench`` a level's figures are the median of: here, blocks
#: of one publish at many streams, and servers of their own at one stream.
RUNS = 3
PER_PROCESS = 5_000
REQUEST = b"GET /sub HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"


# -- the client process ------------------------------------------------------


class _Conn:
    __slots__ = ("opened", "pending", "sock", "ticks")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = b""
        self.opened = False
        self.ticks = 0


def _frames(conn: _Conn, data: bytes, now: int, seen: dict[int, list[int]]) -> None:
    """Split what arrived into frames; note every tick's latency."""
    pending = conn.pending + data
    if not conn.opened:
        head, sep, rest = pending.partition(b"\r\n\r\n")
        if not sep:
            conn.pending = pending
            return
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode("latin-1"))
        conn.opened, pending = True, rest
    # The body is chunked: the chunk-size lines sit between frames, never
    # inside one (each frame is written whole), so a frame is found by its
    # blank line and a size line before it is skipped like any other line.
    *frames, conn.pending = pending.split(b"\n\n")
    for frame in frames:
        for line in frame.split(b"\n"):
            if line.startswith(b"data: "):
                body = json.loads(line[6:])
                seen.setdefault(body["seq"], []).append(now - body["t"])
                conn.ticks += 1


def client(
    port: int, count: int, expect: int, timeout: float, source: str, spin: bool
) -> dict[str, Any]:
    """Hold ``count`` streams until each has ``expect`` ticks (or ``timeout``).

    ``spin``: poll without sleeping (:mod:`benchmarks.placement`).
    """
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    poller = select.epoll()
    conns: dict[int, _Conn] = {}
    seen: dict[int, list[int]] = {}
    batch = 200  # connected and answered before the next: the accept queue never overflows
    for start in range(0, count, batch):
        waiting = set()
        for _ in range(min(batch, count - start)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((source, 0))
            sock.connect(("127.0.0.1", port))
            sock.sendall(REQUEST)
            sock.setblocking(False)
            conns[sock.fileno()] = _Conn(sock)
            poller.register(sock.fileno(), select.EPOLLIN)
            waiting.add(sock.fileno())
        deadline = time.monotonic() + 30
        while waiting and time.monotonic() < deadline:
            for fd, _ in poller.poll(1.0):
                data = conns[fd].sock.recv(65536)
                _frames(conns[fd], data, time.time_ns(), seen)
                if conns[fd].opened:
                    waiting.discard(fd)
        if waiting:
            raise SystemExit(f"{len(waiting)} streams did not open in 30 s")
    print(f"ready {len(conns)}", flush=True)
    # While events flow, a chunk is only stamped and kept (and its ticks
    # counted, to know when to stop): a client that parsed as it read would
    # be slower than the fastest servers at 10,000 streams, and measured
    # instead of them. The frames are parsed once the level is over.
    arrived: list[tuple[_Conn, int, bytes]] = []
    counted = dict.fromkeys(conns, 0)
    left = len(conns)
    deadline = time.monotonic() + timeout
    wait = 0.0 if spin else 0.5
    gc.disable()  # a collection mid-broadcast would walk every chunk kept
    try:
        while left and time.monotonic() < deadline:
            for fd, _ in poller.poll(wait):
                conn = conns[fd]
                data = conn.sock.recv(65536)
                arrived.append((conn, time.time_ns(), data))
                if not data:
                    poller.unregister(fd)
                    left -= counted[fd] < expect
                    continue
                before = counted[fd]
                counted[fd] += data.count(b"event: tick")
                if before < expect <= counted[fd]:
                    left -= 1
    finally:
        gc.enable()
    for conn in conns.values():
        conn.sock.close()
    poller.close()
    for conn, now, data in arrived:
        _frames(conn, data, now, seen)
    complete = sum(conn.ticks >= expect for conn in conns.values())
    return {"connected": len(conns), "complete": complete, "seen": seen}


# -- the coordinator -----------------------------------------------------------


def _get(port: int, path: str) -> Any:
    with socket.create_connection(("127.0.0.1", port), 30) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if not status.startswith(b"HTTP/1.") or b" 200 " not in status:
        raise RuntimeError(f"GET {path}: {status.decode('latin-1')}")
    return json.loads(body)


@contextlib.contextmanager
def _clients(
    port: int, streams: int, expect: int, timeout: float, where: Placement
) -> Iterator[list[Any]]:
    processes = []
    try:
        for index, start in enumerate(range(0, streams, PER_PROCESS)):
            count = min(PER_PROCESS, streams - start)
            source = f"127.0.0.{2 + index}"  # ephemeral ports of its own
            command = [sys.executable, "-m", "benchmarks.crosscheck", "--client", str(port),
                       str(count), str(expect), str(timeout), source,
                       str(int(where.spin))]  # fmt: skip
            pin = where.preexec()
            processes.append(
                subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, preexec_fn=pin)
            )
        for process in processes:
            assert process.stdout is not None
            line = process.stdout.readline().split()
            if not line or line[0] != b"ready":
                raise RuntimeError("a client process did not open its streams")
        results: list[Any] = []
        yield results
        for process in processes:
            stdout, _ = process.communicate(timeout=timeout + 60)
            results.append(json.loads(stdout))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)


def _level(
    port: int, pid: int, streams: int, count: int, interval: float, workers: int, blocks: int = 1
) -> dict[str, Any]:
    timeout = count * interval + 30
    where = placement(streams, workers)
    with where.server_on(pid), _clients(port, streams, count, timeout, where) as results:
        deadline = time.monotonic() + 30
        while _get(port, "/count")["n"] < streams and time.monotonic() < deadline:
            time.sleep(0.05)
        _get(port, f"/pub?count={count}&interval={interval}")
    seen: dict[int, list[int]] = {}
    for result in results:
        for seq, values in result["seen"].items():
            seen.setdefault(int(seq), []).extend(values)
    if not seen:
        raise RuntimeError(f"no event reached any of {streams} streams")
    # The figures of ``make bench``'s runs, each over ``count // blocks``
    # events in order, and the median of those: a 99th percentile over 30
    # broadcasts is another figure than one over 10 (it catches rarer
    # stalls), whoever measures it.
    order = sorted(seen)
    size = max(1, len(order) // blocks)
    figures = []
    for start in range(0, size * blocks, size):
        block = [seen[seq] for seq in order[start : start + size]]
        latencies = sorted(v / 1e6 for values in block for v in values)
        if latencies:
            figures.append({
                "p50": statistics.median(latencies),
                # By rank: the value below which 99 % of latencies fall.
                "p99": latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)],
                "fanout": statistics.median(max(values) / 1e6 for values in block),
            })  # fmt: skip
    delivered = sum(len(values) for values in seen.values())
    return {
        "streams": streams,
        "complete": sum(r["complete"] for r in results),
        "delivered": delivered / (streams * count),
        **{key: statistics.median(f[key] for f in figures) for key in ("p50", "p99", "fanout")},
        "placement": describe(where),
    }


def measure(contender: Contender, many: int, quick: bool) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    workers = contender.workers

    @contextlib.contextmanager
    def serving() -> Iterator[tuple[int, int]]:
        port = free_port()
        command = contender.command(port)
        with server_process(command, port, cwd=ROOT, env=env, stdout=subprocess.DEVNULL) as server:
            _level(port, server.pid, 1, 20, 0.002, workers)  # warm up
            yield port, server.pid

    # One stream: RUNS servers of their own, as ``make bench`` measures it
    # (a server's latency differs more between its processes than between
    # runs of one); their median.
    ones = []
    for _ in range(RUNS):
        with serving() as (port, pid):
            ones.append(_level(port, pid, 1, 50 if quick else 200, 0.005, workers))
    with serving() as (port, pid):
        count, interval = (6, 0.01) if quick else (30, 0.5)
        spread = _level(port, pid, many, count, interval, workers, blocks=RUNS)
    return {
        "p50_1": statistics.median(one["p50"] for one in ones),
        "p50_1_servers": [one["p50"] for one in ones],
        "p99_many": spread["p99"], "fanout_many": spread["fanout"],
        "delivered": min(*(one["delivered"] for one in ones), spread["delivered"]),
        "placement_1": ones[0]["placement"], "placement_many": spread["placement"],
    }  # fmt: skip


def _bench(result: dict[str, Any], name: str, figure: str, many: int) -> tuple[float, float]:
    """``make bench``'s median of a figure, and the spread (max/min) of its runs."""
    level, key = FIGURES[figure]
    summary = result["contenders"][name]["levels"][str(many) if level == "many" else level][key]
    return summary["median"], summary["max"] / summary["min"]


def compare(
    mine: dict[str, dict[str, float]], bench: dict[str, Any], many: int
) -> list[dict[str, Any]]:
    """Each ratio as this harness and ``make bench`` measured it."""
    rows = []
    for figure in FIGURES:
        for name, reference in RATIOS:
            if name not in mine or reference not in mine:
                continue
            try:
                ours, ours_spread = _bench(bench, name, figure, many)
                theirs, theirs_spread = _bench(bench, reference, figure, many)
            except KeyError:
                continue
            harness = mine[name][figure] / mine[reference][figure]
            made = ours / theirs
            noise = max(MIN_NOISE, ours_spread * theirs_spread - 1)
            rows.append({
                "figure": figure, "ratio": f"{name} / {reference}", "harness": harness,
                "bench": made, "noise": noise,
                "agrees": abs(math.log(harness / made)) <= math.log1p(noise),
            })  # fmt: skip
    return rows


def run(names: tuple[str, ...], many: int, quick: bool) -> dict[str, Any]:
    """Measure each contender named; the figures by contender."""
    by_name = {c.name: c for c in discover()}
    out: dict[str, Any] = {}
    for name in names:
        print(f"    crosscheck {name}", flush=True)
        out[name] = measure(by_name[name], many, quick)
    return out


def text(rows: list[dict[str, Any]], many: int) -> str:
    lines = [f"{'figure':<12} {'ratio':<28} {'harness':>8} {'bench':>8} {'noise':>6}  agrees"]
    for row in rows:
        figure = row["figure"].replace("many", f"{many:,}")
        lines.append(
            f"{figure:<12} {row['ratio']:<28} {row['harness']:>7.2f}x {row['bench']:>7.2f}x"
            f" {row['noise']:>5.0%}  {'yes' if row['agrees'] else 'NO'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--client"]:
        port, count, expect = int(argv[1]), int(argv[2]), int(argv[3])
        result = client(port, count, expect, float(argv[4]), argv[5], argv[6] == "1")
        print(json.dumps(result), flush=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--streams", type=int, default=MANY, help="the many-streams level")
    parser.add_argument("--quick", action="store_true", help="tiny sizes; checks the code runs")
    parser.add_argument("--output", type=Path, help="where to write the JSON results")
    args = parser.parse_args(argv)
    many = 10 if args.quick else args.streams
    mine = run(CONTENDERS, many, args.quick)
    rows = []
    if args.results.exists():
        rows = compare(mine, json.loads(args.results.read_text()), many)
    print(text(rows, many) if rows else f"no figures to compare in {args.results}")
    output = args.output or RESULTS / ("crosscheck-quick.json" if args.quick else "crosscheck.json")
    output.write_text(json.dumps({"streams": many, "figures": mine, "rows": rows}, indent=1) + "\n")
    if args.quick:
        return 0
    return 0 if all(row["agrees"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
