"""Tables, the docs page and the plot, from a results JSON."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS_PAGE = ROOT / "docs" / "benchmarks.rst"
PLOT = ROOT / "docs" / "_static" / "bench-latency.png"
LIMIT, PEER, FLOOR, OURS = "raw-asyncio", "sse-starlette", "bare-gevent", "ours-gevent"
REDIS = "ours-redis"
CLUSTER = "ours-cluster"
#: The most Redis connections a worker of ``ours-redis`` should hold: the
#: broker's command pool (3) and its one pub/sub reader.
CONNECTIONS_GOAL = 4


def _get(result: dict[str, Any], name: str, *path: str) -> float:
    node: Any = result["contenders"].get(name, {})
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return math.nan
        node = node[key]
    return float(node) if isinstance(node, (int, float)) else math.nan


def level_at_most(result: dict[str, Any], wanted: int) -> str | None:
    """The plan's level ``wanted``, else its largest below (``--quick`` has tiny ones)."""
    below = [lv for lv in result["plan"]["levels"] if int(lv) <= wanted]
    return max(below, key=int) if below else None


def metrics(result: dict[str, Any]) -> list[tuple[str, tuple[str, ...], str, bool]]:
    """(title, path, unit, higher is better) of every headline figure."""
    levels = list(result["plan"]["levels"])
    rows: list[tuple[str, tuple[str, ...], str, bool]] = []
    for level in levels:
        rows.append((f"p50 @{level}", ("levels", level, "p50", "median"), "ms", False))
        rows.append((f"p99 @{level}", ("levels", level, "p99", "median"), "ms", False))
    big = [lv for lv in levels if int(lv) >= 1_000]
    for level in big:
        rows.append((f"fan-out {level}", ("levels", level, "fanout", "median"), "ms", False))
    top = levels[-1]
    rows.append((f"KiB/stream @{top}", ("levels", top, "rss_per_stream_kib"), "KiB", False))
    rows.append((f"held @{top}", ("levels", top, "held"), "", True))
    rows.append(("events/s", ("throughput", "median"), "/s", True))
    rows.append(("CPU job p99", ("cpu_job", "p99", "median"), "ms", False))
    rows.append(("CPU job p99, process", ("cpu_job_process", "p99", "median"), "ms", False))
    rows.append(("Redis publishes/s", ("publish", "median"), "/s", True))
    if (at := level_at_most(result, 1_000)) is not None:
        path = ("levels", at, "redis_connections_max")
        rows.append((f"Redis conns/worker @{at}", path, "", False))
        path = ("levels", at, "redis_connections_node_max")
        rows.append((f"Redis conns/worker/node @{at}", path, "", False))
        path = ("levels", at, "redis_pubsub_node_max")
        rows.append((f"pub/sub conns/worker/node @{at}", path, "", False))
    return rows


def _fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    if unit == "/s" or value >= 1000:
        return f"{value:,.0f}"
    if unit == "":
        return f"{value:,.0f}"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _ratio(value: float, other: float) -> str:
    if math.isnan(value) or math.isnan(other) or other == 0:
        return "-"
    return f"{value / other:.2f}x"


def rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    names = list(result["contenders"])
    header = ["metric", *names, f"ours/{LIMIT}", f"ours/{PEER}", f"ours/{FLOOR}"]
    body = []
    for title, path, unit, _ in metrics(result):
        values = [_get(result, name, *path) for name in names]
        if all(math.isnan(v) for v in values):
            continue  # e.g. a figure the results predate, or a skipped contender's
        ours = _get(result, OURS, *path)
        body.append([
            f"{title} ({unit})" if unit else title,
            *(_fmt(v, unit) for v in values),
            _ratio(ours, _get(result, LIMIT, *path)),
            _ratio(ours, _get(result, PEER, *path)),
            _ratio(ours, _get(result, FLOOR, *path)),
        ])  # fmt: skip
    return header, body


def targets(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The figures the Redis work aims at, as ratios (reported, never asserted).

    A target appears once its figure was measured: none for results that
    predate the Redis contender or skipped it.
    """
    header = ["target", "figure", "against", "ratio"]
    found: list[list[str]] = []

    def ms(value: float) -> str:
        return "-" if math.isnan(value) else f"{_fmt(value, 'ms')} ms"

    def add(title: str, value: float, other: float, against: str, shown: str = "") -> None:
        if not math.isnan(value):
            found.append([title, shown or ms(value), against, _ratio(value, other)])

    def versus(name: str, *path: str) -> tuple[float, str]:
        value = _get(result, name, *path)
        return value, f"{name}: {ms(value)}"

    if (at := level_at_most(result, 100)) is not None:
        path = ("levels", at, "p99", "median")
        add(f"p99 @{at}, Redis against memory", _get(result, REDIS, *path), *versus(OURS, *path))
    measured = [set(result["contenders"].get(n, {}).get("levels", {})) for n in (OURS, REDIS)]
    both = [lv for lv in result["plan"]["levels"] if all(lv in m for m in measured)]
    if both:
        top = max(both, key=int)
        path = ("levels", top, "fanout", "median")
        add(f"fan-out {top}, Redis (2 workers) against memory (1)", _get(result, REDIS, *path),
            *versus(OURS, *path))  # fmt: skip
    if (at := level_at_most(result, 1_000)) is not None:
        conns = _get(result, REDIS, "levels", at, "redis_connections_max")
        add(f"Redis connections per worker @{at}", conns, float(CONNECTIONS_GOAL),
            f"goal: at most {CONNECTIONS_GOAL}", _fmt(conns, ""))  # fmt: skip
    measured = [set(result["contenders"].get(n, {}).get("levels", {})) for n in (REDIS, CLUSTER)]
    both = [lv for lv in result["plan"]["levels"] if all(lv in m for m in measured)]
    if both:
        top = max(both, key=int)
        path = ("levels", top, "fanout", "median")
        add(f"fan-out {top}, Redis Cluster against one Redis (2 workers each)",
            _get(result, CLUSTER, *path), *versus(REDIS, *path))  # fmt: skip
        path = ("levels", top, "p99", "median")
        add(f"p99 @{top}, Redis Cluster against one Redis", _get(result, CLUSTER, *path),
            *versus(REDIS, *path))  # fmt: skip
    cluster_rate, one_rate = (_get(result, n, "publish", "median") for n in (CLUSTER, REDIS))
    add("publishes/s, Redis Cluster (3 primaries) against one Redis", cluster_rate, one_rate,
        f"{REDIS}: {_fmt(one_rate, '/s')}/s", f"{_fmt(cluster_rate, '/s')}/s")  # fmt: skip
    if (at := level_at_most(result, 1_000)) is not None:
        for key, goal, what in (
            ("redis_pubsub_node_max", 1, "pub/sub connections per worker per primary"),
            ("redis_connections_node_max", CONNECTIONS_GOAL, "connections per worker per node"),
        ):
            conns = _get(result, CLUSTER, "levels", at, key)
            add(f"Redis Cluster: {what} @{at}", conns, float(goal), f"goal: at most {goal}",
                _fmt(conns, ""))  # fmt: skip
    process = _get(result, OURS, "cpu_job_process", "p99", "median")
    add("CPU job p99, executor='process', against sse-starlette",
        process, *versus(PEER, "cpu_job", "p99", "median"))  # fmt: skip
    thread, _ = versus(OURS, "cpu_job", "p99", "median")
    add("CPU job p99, executor='process', against 'thread'", process, thread,
        f"{OURS}, thread: {ms(thread)}")  # fmt: skip
    return header, found


def _aligned(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in pairs)

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in body)]


def table(result: dict[str, Any]) -> str:
    out = _aligned(*rows(result))
    top = max(map(int, result["plan"]["levels"]))
    walls = [f"  {n}: stops at {max(map(int, c['levels']))} streams: {c['wall']}"
             for n, c in result["contenders"].items()
             if c.get("wall") and max(map(int, c["levels"])) < top]  # fmt: skip
    if walls:
        out += ["", "Walls:", *walls]
    header, found = targets(result)
    if found:
        out += ["", "Targets (ratios reported, not asserted):", *_aligned(header, found)]
    skipped = result.get("skipped") or {}
    if skipped:
        out += ["", "Skipped:", *(f"  {name}: {why}" for name, why in skipped.items())]
    return "\n".join(out)


def plot(result: dict[str, Any], path: Path = PLOT) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, data in result["contenders"].items():
        levels = sorted(int(k) for k in data["levels"] if "p99" in data["levels"][k])
        for axis, key in ((left, "p50"), (right, "p99")):
            values = [data["levels"][str(lv)][key]["median"] for lv in levels]
            axis.plot(levels, values, marker="o", label=name)
    for axis, key in ((left, "p50"), (right, "p99")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("concurrent streams")
        axis.set_ylabel(f"{key} event latency (ms)")
        axis.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle("Event latency against concurrency (median of runs, log-log)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rst_table(header: list[str], body: list[list[str]]) -> str:
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in [header, *body]:
        lines.append("   * - " + row[0])
        lines += [f"     - {cell}" for cell in row[1:]]
    return "\n".join(lines)


PAGE = """\
.. This page is generated by ``make bench`` (benchmarks/report.py); edit that, not this.

Benchmarks
==========

Measured by ``make bench`` on {date}, in {seconds:.0f} s, on {cpu} ({cpus} cores),
Python {python}. Every contender is its own server process on 127.0.0.1; the
clients are other processes reading raw sockets and timestamping each event
when its bytes arrive. Each figure is the median of {runs} runs (the JSON in
``benchmarks/results/latest.json`` has min and max too). Absolute times move
with the machine's load; the ratios, measured side by side, are what to read.

.. image:: _static/bench-latency.png
   :alt: Median p50 and p99 event latency against the number of concurrent
         streams, one line per contender.

The contenders
--------------

{contenders}

Results
-------

Latencies in milliseconds, from the send timestamp inside each event to its
arrival. Our broadcasts are published from a native OS thread, as the
blueprint runs its jobs by default, so each event crosses from that thread to
the hub; the bare generator publishes from a greenlet, the asyncio servers
from their loop. *fan-out N*: time until the last of N subscribers has one broadcast
event. *KiB/stream*: server memory (RSS) added per open idle stream with
keepalives running. *held*: streams that stayed open and received every
event. *events/s*: one client, events sent back to back. *CPU job p99*: latency
of {cpu_streams} other streams while a job holds the GIL for {cpu_seconds:g} s,
run the way each stack's users would (ours: the default native-thread
executor; the bare generator: a greenlet, as ``threading.Thread`` is under
gevent; sse-starlette: ``run_in_threadpool``; the limit: ``asyncio.to_thread``).{extra}

{table}

{walls}{targets}

What the numbers say
--------------------

* On loopback, Nagle's algorithm costs nothing measurable: acknowledgements
  come back at once, so the naive two-writes pattern is not slowed here. On a
  real network with delayed ACKs it stalls up to 40 ms (Linux) or 200 ms
  (Windows) per event; see :doc:`buffering`. The benchmark does not stage it.
* Latency at high concurrency is mostly fan-out: one worker writes the event
  to N sockets one after another, so the last subscriber waits for N writes.
* A CPU-bound job in a greenlet stops every stream of its worker (the bare
  generator's *CPU job* figure). In a native thread, each socket write of
  the worker gives up the GIL and waits up to a switch interval to get it
  back: at Python's default 5 ms, a broadcast to many streams queues behind
  the job again and again (the raw asyncio server, whose job runs in
  ``asyncio.to_thread``, shows it). The library lowers the interval to
  0.5 ms while its jobs run (``set_job_switch_interval``), which keeps other
  streams within tens of milliseconds. uvicorn with uvloop writes from C
  without giving up the GIL, so sse-starlette does not suffer it.
"""


REDIS_TEXT = """

``ours-redis`` is ``ours-gevent``'s app on a ``RedisBroker``, under gunicorn
with two gevent workers, against a ``redis-server`` of the run's own on
loopback (in memory: no append-only file). The streams of the one job spread
over both workers as the kernel hands their connections out (the split at
each level is in the JSON), and every event goes from the publishing
worker's native thread through one Lua step and ``PUBLISH`` in Redis to each
worker's pub/sub reader, which fans it out to that worker's streams. *Redis
conns/worker*: the most connections one worker held to Redis while those
streams were open, idle and receiving, counted with ``CLIENT LIST`` by the
names the broker gives them.

``ours-cluster`` is the same app and workers on a 6-node Redis Cluster of
the run's own (3 primaries, 3 replicas, made with ``redis-cli --cluster
create``): the job's keys and channel share one slot, its events go out
with ``SPUBLISH``, and each worker holds one pub/sub connection per primary
that serves a channel it wants. *Redis conns/worker/node* and *pub/sub
conns/worker/node*: the most one worker held to one node. *Redis
publishes/s*: events one process stores and sends through a
``RedisBroker`` from {publish_jobs} threads, each publishing its own job's
events back to back; on the cluster the jobs spread over the primaries."""

PROCESS_TEXT = """

*CPU job p99, process*: the same job with ``executor="process"``: the render
runs in a child process of its own, so it shares no GIL with the worker's
streams."""

TARGETS_TEXT = """

Targets
-------

What the Redis work aims at, as ratios of figures of this run (reported,
never asserted).

{table}"""


def write_docs(result: dict[str, Any], page: Path = DOCS_PAGE, image: Path = PLOT) -> list[Path]:
    """Write the docs page and its plot (to ``page`` and ``image``) from ``result``."""
    header, body = rows(result)
    measured = result["contenders"]
    from .run import PUBLISH_JOBS

    extra = REDIS_TEXT.replace("{publish_jobs}", str(PUBLISH_JOBS)) if REDIS in measured else ""
    if any("cpu_job_process" in data for data in measured.values()):
        extra += PROCESS_TEXT
    goals = targets(result)
    contenders = "\n".join(
        f"``{name}``\n    {data['label']}." for name, data in result["contenders"].items()
    )
    walls = "\n".join(
        f"* ``{name}`` stops at {max(map(int, data['levels']))} streams: {data['wall']}."
        for name, data in result["contenders"].items()
        if data.get("wall")
        and max(map(int, data["levels"])) < max(map(int, result["plan"]["levels"]))
    )
    skipped = "\n".join(
        f"* ``{name}`` was not measured: {why}." for name, why in result.get("skipped", {}).items()
    )
    walls = "\n".join(part for part in (walls, skipped) if part)
    text = PAGE.format(
        date=result["date"],
        seconds=result["seconds"],
        cpu=result["machine"]["cpu"] or "an unnamed CPU",
        cpus=result["machine"]["cpu_count"],
        python=result["versions"]["python"],
        runs=result["plan"]["runs"],
        cpu_streams=result["plan"]["cpu_streams"],
        cpu_seconds=result["plan"]["cpu_seconds"],
        contenders=contenders,
        extra=extra,
        table=rst_table(header, body),
        walls=walls,
        targets=TARGETS_TEXT.format(table=rst_table(*goals)) if goals[1] else "",
    )
    page.write_text(text)
    return [page, plot(result, image)]


def main() -> None:
    """Regenerate the docs page and plot from ``results/latest.json``."""
    import json

    result = json.loads((Path(__file__).resolve().parent / "results" / "latest.json").read_text())
    print(table(result))
    for path in write_docs(result):
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
