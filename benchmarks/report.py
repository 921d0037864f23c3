"""Tables, the docs page and the plot, from a results JSON."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .placement import PIN_FROM

ROOT = Path(__file__).resolve().parent.parent
DOCS_PAGE = ROOT / "docs" / "benchmarks.rst"
PLOT = ROOT / "docs" / "_static" / "bench-latency.png"
LIMIT, PEER, FLOOR, OURS = "raw-asyncio", "sse-starlette", "bare-gevent", "ours-gevent"
STREAM = "ours-stream"  # ours on the stream worker
SCALE = "ours-scale"  # 40,000 streams, 4 stream workers, Redis
REDIS = "ours-redis"
CLUSTER = "ours-cluster"
#: The largest level every contender that goes that far is measured at;
#: ``ours-scale`` alone goes beyond.
COMMON_TOP = 10_000
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
    top = level_at_most(result, COMMON_TOP) or levels[-1]
    rows.append((f"KiB/stream @{top}", ("levels", top, "rss_per_stream_kib"), "KiB", False))
    rows.append((f"held @{top}", ("levels", top, "held"), "", True))
    rows.append(("events/s", ("throughput", "median"), "/s", True))
    native = ("native_publish", "p50", "median")
    rows.append(("p50 @1, native-thread publisher", native, "ms", False))
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


def goals(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The figures the close-to-the-wire work aims at: ratio, bound, and whether it holds.

    Each is a ratio of figures measured in this run (or an absolute bound
    where the goal is one); a goal whose figures were not measured (a
    quick run, a skipped contender) is left out.
    """
    header = ["goal", "figure", "against", "ratio", "bound", "met"]
    found: list[list[str]] = []
    if result.get("mode") != "full":
        return header, found  # the goals are set at the full plan's sizes
    top = str(level_at_most(result, COMMON_TOP) or "")
    scale_levels = result.get("contenders", {}).get(SCALE, {}).get("levels", {})
    scale_level = max(scale_levels, key=int, default="0")

    def add(
        title: str,
        value: float,
        other: float,
        against: str,
        bound: float,
        higher: bool = False,
        unit: str = "ms",
        absolute: bool = False,
    ) -> None:
        if math.isnan(value) or (not absolute and (math.isnan(other) or other == 0)):
            return
        ratio = value if absolute else value / other
        met = ratio >= bound if higher else ratio <= bound
        shown = f"{_fmt(value, unit)} {unit}".strip()
        found.append([title, shown, against, "-" if absolute else f"{ratio:.2f}x",
                      (">= " if higher else "<= ") + (f"{bound:g} {unit}" if absolute else
                                                       f"{bound:g}x"),
                      "yes" if met else "NO"])  # fmt: skip

    def fig(name: str, *path: str) -> float:
        return _get(result, name, *path)

    def against(name: str, value: float, unit: str = "ms") -> str:
        return f"{name}: {_fmt(value, unit)} {unit}".strip()

    p50 = ("levels", "1", "p50", "median")
    floor = fig(FLOOR, *p50)
    add("p50 @1", fig(OURS, *p50), floor, against(FLOOR, floor), 1.1)
    add("p50 @1, stream worker", fig(STREAM, *p50), floor, against(FLOOR, floor), 1.1)
    rate = ("throughput", "median")
    for other, bound in ((FLOOR, 1.5), (LIMIT, 0.8)):
        value = fig(other, *rate)
        for name in (OURS, STREAM):
            title = "events/s" + (", stream worker" if name == STREAM else "")
            add(title, fig(name, *rate), value, against(other, value, "/s"), bound, True, "/s")
    if top:
        for key, what in (("fanout", f"fan-out {top}"), ("p99", f"p99 @{top}")):
            path = ("levels", top, key, "median")
            limit = fig(LIMIT, *path)
            for name in (OURS, STREAM):
                title = what + (", stream worker" if name == STREAM else "")
                add(title, fig(name, *path), limit, against(LIMIT, limit), 1.2)
        kib = ("levels", top, "rss_per_stream_kib")
        limit, bare = fig(LIMIT, *kib), fig(FLOOR, *kib)
        add(f"KiB/stream @{top}, stream worker", fig(STREAM, *kib), math.nan, "goal", 8.0,
            unit="KiB", absolute=True)  # fmt: skip
        add(f"KiB/stream @{top}, stream worker", fig(STREAM, *kib), limit,
            against(LIMIT, limit, "KiB"), 1.5, unit="KiB")  # fmt: skip
        add(f"KiB/stream @{top}, -k gevent", fig(OURS, *kib), bare, against(FLOOR, bare, "KiB"),
            0.999, unit="KiB")  # fmt: skip
    if scale_level != "0":
        level = result["contenders"][SCALE]["levels"][scale_level]
        held, delivered = float(level.get("held", 0)), fig(SCALE, "levels", scale_level,
                                                           "delivered", "min")  # fmt: skip
        add(f"{int(scale_level):,} streams, 4 workers, Redis: held", held, math.nan, "goal",
            float(scale_level), True, "", absolute=True)  # fmt: skip
        add(f"{int(scale_level):,} streams: broadcasts delivered (worst run)", delivered,
            math.nan, "goal", 1.0, True, "", absolute=True)  # fmt: skip
        if top:
            one = fig(STREAM, "levels", top, "fanout", "median")
            add(f"fan-out {int(scale_level):,} over 4 workers", fig(SCALE, "levels", scale_level,
                "fanout", "median"), one, against(f"{STREAM} @{top}", one), 1.5)  # fmt: skip
    return header, found


def scale_floor(result: dict[str, Any]) -> str:
    """The 40,000-stream fan-out against the CPU work it takes, as a sentence ("" if unmeasured).

    A broadcast is work for the servers, Redis and the clients alike, all
    on this machine's CPUs: the fan-out can shrink against one worker's
    only as far as there are CPUs for the added work.
    """
    levels = result.get("contenders", {}).get(SCALE, {}).get("levels", {})
    top = str(level_at_most(result, COMMON_TOP) or "")
    if result.get("mode") != "full" or not levels or not top:
        return ""
    level = max(levels, key=int)
    cpus = int(result["machine"]["cpu_count"] or 1)
    work = _get(result, SCALE, "levels", level, "cpu_ms_per_event")
    fanout = _get(result, SCALE, "levels", level, "fanout", "median")
    one_work = _get(result, STREAM, "levels", top, "cpu_ms_per_event")
    one = _get(result, STREAM, "levels", top, "fanout", "median")
    if any(math.isnan(x) or x <= 0 for x in (work, fanout, one_work, one)):
        return ""
    more = work / one_work
    return (
        f"A broadcast to {int(level):,} streams over 4 workers cost this machine "
        f"{work:.0f} ms of CPU time in all (servers, Redis and clients, from "
        f"``/proc/stat``), {more:.2f} times the {one_work:.0f} ms of one to "
        f"{int(top):,} streams on one stream worker; on the same {cpus} CPUs its "
        f"fan-out took {fanout / one:.2f} times as long ({fanout:.1f} against "
        f"{one:.1f} ms). Within 1.5 times, the machine would do {more:.2f} times "
        f"the work in 1.5 times the time: {more / 1.5:.1f} times the CPUs the "
        f"smaller broadcast kept busy."
    )


def link_table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The 20 ms link's rows: ms beyond the one-way delay, per app and server."""
    link = result.get("link") or {}
    header = ["app", "server", "events", "p50 (ms)", "p95 (ms)", "max (ms)", "late"]
    body = [
        [row["target"], row["server"], f"{row['events']}/{row['expected']}",
         f"{row.get('p50_ms', math.nan):.1f}", f"{row.get('p95_ms', math.nan):.1f}",
         f"{row.get('max_ms', math.nan):.1f}", f"{row.get('late_share', math.nan):.0%}"]
        for row in link.get("results", [])
    ]  # fmt: skip
    return header, body


def doctor_lines(result: dict[str, Any]) -> list[str]:
    """What the doctor said of each case over the link."""
    return [
        f"{v['target']} on {v['server']}: "
        + (", ".join(v["culprits"]) if v.get("culprits") else "nothing wrong")
        for v in (result.get("link") or {}).get("doctor", [])
    ]


def link_text(result: dict[str, Any]) -> str:
    """The docs page's section on the link, or nothing if the run has none."""
    link = result.get("link")
    header, body = link_table(result)
    if not link or not body:
        return ""
    doctor = "\n".join(f"* {line}" for line in doctor_lines(result)) or "* (not run)"
    return LINK_TEXT.format(
        delay=link["delay_ms"], round_trip=link["round_trip_ms"], count=link["count"],
        interval=link["interval"] * 1000, late=link["late_ms"], table=rst_table(header, body),
        doctor=doctor,
    )  # fmt: skip


def crosscheck_table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The independent harness's ratios beside this run's."""
    check = result.get("crosscheck") or {}
    many = f"{check.get('streams', 0):,}"
    header = ["figure", "ratio", "harness", "make bench", "noise", "agrees"]
    body = [
        [row["figure"].replace("_1", " @1").replace("_many", f" @{many}"), row["ratio"],
         f"{row['harness']:.2f}x", f"{row['bench']:.2f}x", f"{row['noise']:.0%}",
         "yes" if row["agrees"] else "NO"]
        for row in check.get("rows", [])
    ]  # fmt: skip
    return header, body


def table(result: dict[str, Any]) -> str:
    out = _aligned(*rows(result))
    top = level_at_most(result, COMMON_TOP) or max(map(int, result["plan"]["levels"]))
    top = int(top)
    walls = [f"  {n}: stops at {max(map(int, c['levels']))} streams: {c['wall']}"
             for n, c in result["contenders"].items()
             if c.get("wall") and max(map(int, c["levels"])) < top]  # fmt: skip
    if walls:
        out += ["", "Walls:", *walls]
    header, found = targets(result)
    if found:
        out += ["", "Targets (ratios reported, not asserted):", *_aligned(header, found)]
    header, found = goals(result)
    if found:
        out += ["", "Goals (this run's figures against its own contenders):",
                *_aligned(header, found)]  # fmt: skip
        if floor := scale_floor(result):
            out += [floor.replace("``", "")]
    header, found = link_table(result)
    if found:
        link = result["link"]
        out += ["", f"The link: {link['delay_ms']:g} ms each way (round trip "
                f"{link['round_trip_ms']:.1f} ms), {link['count']} events "
                f"{link['interval'] * 1000:g} ms apart; ms beyond the one-way delay:",
                *_aligned(header, found)]  # fmt: skip
        out += [f"  doctor: {line}" for line in doctor_lines(result)]
    header, found = crosscheck_table(result)
    if found:
        out += ["", "The independent harness (benchmarks.crosscheck) against this run:",
                *_aligned(header, found)]  # fmt: skip
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
clients are other processes reading raw sockets (one ``epoll`` loop each, no
more, that only stamps and keeps each chunk while events flow and parses the
events afterwards, so that the clients are never what is measured) and
timestamping each event when its bytes arrive. Each figure is the median of {runs} runs (the JSON in
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
arrival. Our broadcasts are published from a greenlet, as a view or an
I/O-bound job publishes, and as the bare generator's ``threading.Thread`` does
(a greenlet under gevent); the asyncio servers publish from their loop.
*p50 @1, native-thread publisher*: ours again, published from a native OS
thread, as the blueprint runs CPU-bound jobs by default, so each event also
crosses from that thread to the hub. *fan-out N*: time until the last of N
subscribers has one broadcast event. *KiB/stream*: server memory (RSS) added
per open idle stream with keepalives running. *held*: streams that stayed open and received every
event. *events/s*: one client, events sent back to back. *CPU job p99*: latency
of {cpu_streams} other streams while a job holds the GIL for {cpu_seconds:g} s,
run the way each stack's users would (ours: the default native-thread
executor; the bare generator: a greenlet, as ``threading.Thread`` is under
gevent; sse-starlette: ``run_in_threadpool``; the limit: ``asyncio.to_thread``).{extra}

*Where each process runs* (``benchmarks/placement.py``, in both harnesses,
for every contender alike). A server of one process runs on the first half
of the machine's CPUs and its clients on the other half: clients on other
machines never take a server's CPU, and clients the kernel placed beside
the server would, a different number of times in each run. Below
{pin_from:,} streams a client polls without sleeping, so a wake-up of its
own (tens of microseconds on another CPU of a virtual machine) is not in
what it measures; from {pin_from:,} up a broadcast keeps it busy anyway.
Servers of several worker processes are not pinned: they are there to use
every CPU. *One stream* is measured on {runs} servers of their own, each
started, warmed up and measured once: a server's latency at one stream
differs more between its processes than between runs of one process. The
contenders take these runs in turn (a run of each, then again), so that a
slow spell of the machine, which can double every one-stream latency for
tens of seconds, falls on all of them alike.

{table}

{walls}{targets}{goals}{crosscheck}{link}

What the numbers say
--------------------

* On loopback, Nagle's algorithm costs nothing measurable: acknowledgements
  come back at once, so the naive two-writes pattern is not slowed there.
  Over a link with a real round trip it is (*The link*, below): each
  event's second write waits for the ACK of the first, a whole round trip,
  plus the client's delayed-ACK timer where it has one (200 ms on Windows);
  see :doc:`buffering`.
* Latency at high concurrency is mostly fan-out: one worker writes the event
  to N sockets one after another, so the last subscriber waits for N writes.
  A frame published on the hub goes to each waiting stream's socket in the
  publisher's own call, one ``send()`` per socket, under ``-k gevent`` as
  under the stream worker, which is why both come near the raw asyncio
  server's fan-out; the bare generator wakes each stream's greenlet, which
  then hands the frame to the server.
* On a machine with as few cores as clients and servers, where the
  kernel runs the client decides as much as the server does. When a send
  wakes the client on the worker's own CPU, the client preempts the worker
  after each write, and the two take turns on one core while the other
  idles: measured here unpinned, the stream worker is preempted about 1,100
  times per broadcast to 10,000 streams, the raw asyncio server a few times
  (its faster loop keeps the client busy on the other core, so no send has
  to wake it), and the same server's fan-out came out anywhere from 70 to
  90 ms. Hence the pinning at {pin_from:,} streams and more (*Where each
  process runs*, above): clients on other machines never take a server's
  CPU.
* Fan-out over several workers on one machine shares its cores: the
  workers write their own streams in parallel only as far as there are
  cores for them and for the clients.
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

GOALS_TEXT = """

Goals
-----

What the close-to-the-wire work aims at, each a ratio of figures of this
run (or a bound of its own), and whether this run meets it.

{table}{floor}"""

LINK_TEXT = """

The link
--------

``python -m benchmarks.link`` (part of ``make bench``) builds a link with a
real round trip: two network namespaces of its own joined by TUN devices and
a relay that delays every packet {delay:g} ms each way (round trip measured
{round_trip:.1f} ms). Each app serves the broadcast on each server in the
server's namespace; a client in the other reads one stream and takes each
event's arrival less its send time less the one-way delay. {count} events,
{interval:g} ms apart (each alone on the wire: when Nagle's algorithm
bites). *late*: more than {late:g} ms beyond the one-way delay.

{table}

The doctor (``python -m flask_sse_flush doctor``), run from the client's
side of the same link:

{doctor}"""

CROSSCHECK_TEXT = """

Checked by a second harness
---------------------------

``python -m benchmarks.crosscheck`` (part of ``make bench``) measures the
same servers again with clients of its own: blocking connects, one ``epoll``
loop per process that only stamps and keeps each chunk while events flow,
every frame split out and its data parsed as JSON afterwards, one publish
of thirty events in place of three runs of ten at many streams (its figures
taken over each ten, as here); the same placement of processes, and one
stream on three servers of its own. It compares the
ratios it finds with this run's; a ratio *agrees* when the two are within
the noise of this run's own repeats (never less than 15 %).

{table}"""

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
    aims = globals()["goals"](result)
    check = crosscheck_table(result)
    contenders = "\n".join(
        f"``{name}``\n    {data['label']}." for name, data in result["contenders"].items()
    )
    walls = "\n".join(
        f"* ``{name}`` stops at {max(map(int, data['levels']))} streams: {data['wall']}."
        for name, data in result["contenders"].items()
        if data.get("wall")
        and max(map(int, data["levels"])) < int(level_at_most(result, COMMON_TOP) or 0)
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
        pin_from=PIN_FROM,
        contenders=contenders,
        extra=extra,
        table=rst_table(header, body),
        walls=walls,
        targets=TARGETS_TEXT.format(table=rst_table(*goals)) if goals[1] else "",
        goals=GOALS_TEXT.format(
            table=rst_table(*aims), floor=f"\n\n{floor}" if (floor := scale_floor(result)) else ""
        )
        if aims[1]
        else "",
        crosscheck=CROSSCHECK_TEXT.format(table=rst_table(*check)) if check[1] else "",
        link=link_text(result),
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
