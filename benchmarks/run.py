"""``make bench``: our streams against the peers and the limit, in one run.

Every contender is a separate server process on 127.0.0.1; clients are
other processes reading raw sockets. All figures of one run are measured on
the same machine within minutes of each other: absolute times drift on a
shared machine, ratios measured together hold.

    python -m benchmarks.run            # full: about 10 minutes
    python -m benchmarks.run --quick    # tiny sizes, < 60 s, asserts nothing

A contender that needs Redis (``ours-redis``) gets a ``redis-server`` of its
own for its measurement, on a free loopback port, stopped afterwards
(``ours-cluster``: a 6-node Redis Cluster); where no ``redis-server`` (or
redis-py) is installed it is skipped with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from flask_sse_flush.testing import RedisCluster, RedisServer, free_port, server_process

from .client import raise_open_file_limit
from .contenders import REDIS_URL_ENV, Contender, discover
from .placement import Placement, children, describe, placement

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


CONTENDERS = discover()


@dataclass(frozen=True)
class Plan:
    levels: dict[int, tuple[int, float]]  # streams -> (events per run, interval)
    runs: int
    burst: int
    cpu_streams: int
    cpu_seconds: float
    idle_seconds: float
    settle: float = 1.0  # seconds after a CPU job's events are due, for the last to land


FULL = Plan(
    levels={
        1: (200, 0.005),
        100: (50, 0.02),
        1_000: (20, 0.1),
        10_000: (10, 0.5),
        40_000: (10, 1.0),  # ours-scale only: 4 workers on Redis
    },
    runs=3,
    burst=100_000,
    cpu_streams=100,
    cpu_seconds=3.0,
    idle_seconds=2.5,
)
QUICK = Plan(
    levels={1: (10, 0.005), 10: (5, 0.01)},
    runs=3,
    burst=1_000,
    cpu_streams=5,
    cpu_seconds=0.3,
    idle_seconds=0.2,
    settle=0.3,
)


def get_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return json.loads(response.read())


def tree_rss_kib(pid: int) -> int:
    """RSS of a process and its children (a gunicorn master and its workers)."""
    total = 0
    for each in [pid, *children(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy (every CPU, every process) since boot.

    From ``/proc/stat``: all but idle and I/O wait. Over a stretch of a
    benchmark on an otherwise idle machine, it is what servers, clients and
    Redis together used, whichever CPU ran them.
    """
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def streams_per_worker(master: int, port: int) -> dict[str, int]:
    """How many established connections to ``port`` each child of ``master`` holds."""
    inodes: set[str] = set()
    suffix = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[1].endswith(suffix) and fields[3] == "01":  # ESTABLISHED
                    inodes.add(f"socket:[{fields[9]}]")
    counts = {}
    for pid in children(master):
        n = 0
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    n += os.readlink(fd.path) in inodes
        counts[str(pid)] = n
    return counts


class Skip(Exception):
    """A contender cannot be measured here (e.g. no redis-server); the reason."""


def redis_missing() -> str | None:
    """Why a contender needing Redis cannot run here, or None."""
    if shutil.which("redis-server") is None:
        return "no redis-server installed (Debian: apt-get install redis-server)"
    if importlib.util.find_spec("redis") is None:
        return 'redis-py is not installed (pip install "flask-sse-flush[redis]")'
    return None


@dataclass
class RedisProbe:
    """Samples, during a level, the Redis connections of each worker and its streams.

    A ``RedisBroker`` names every connection it opens ``<prefix>:<pid>``
    (its ``client_name``): ``CLIENT LIST`` on the benchmark's own Redis tells
    how many each worker holds.
    """

    urls: list[str]  # every node (one, or each node of a cluster)
    prefix: str
    master: int
    port: int
    connections: dict[str, int] = field(default_factory=dict)  # worker pid -> most seen
    #: The most connections a worker held to one node, and pub/sub ones among them.
    per_node: int = 0
    pubsub_per_node: int = 0
    workers: dict[str, int] = field(default_factory=dict)  # worker pid -> its streams

    def sample(self) -> None:
        import redis

        name = self.prefix.rstrip(":")
        now: dict[str, int] = {}
        for url in self.urls:
            with contextlib.closing(redis.Redis.from_url(url, socket_timeout=10)) as client:
                listed = client.client_list()
            here: dict[str, int] = {}
            pubsub: dict[str, int] = {}
            for entry in listed:
                head, _, pid = str(entry.get("name", "")).rpartition(":")
                if head == name and pid.isdigit():
                    here[pid] = here.get(pid, 0) + 1
                    if int(entry.get("sub", 0)) or int(entry.get("ssub", 0)):
                        pubsub[pid] = pubsub.get(pid, 0) + 1
            for pid, n in here.items():
                now[pid] = now.get(pid, 0) + n
            self.per_node = max([self.per_node, *here.values()])
            self.pubsub_per_node = max([self.pubsub_per_node, *pubsub.values()])
        for pid, n in now.items():
            self.connections[pid] = max(n, self.connections.get(pid, 0))

    def count_streams(self) -> None:
        self.workers = streams_per_worker(self.master, self.port)

    def take(self) -> dict[str, Any]:
        """The figures of the level, and a fresh start for the next one."""
        out = {
            "redis_connections": dict(self.connections),
            "redis_connections_max": max(self.connections.values(), default=0),
            "redis_connections_node_max": self.per_node,
            "redis_pubsub_node_max": self.pubsub_per_node,
            "redis_nodes": len(self.urls),
            "worker_streams": dict(self.workers),
        }
        self.connections, self.workers = {}, {}
        self.per_node = self.pubsub_per_node = 0
        return out


@contextlib.contextmanager
def server(
    contender: Contender, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(extra_env or {}))
    command = contender.command(port)
    with server_process(command, port, cwd=ROOT, env=env, stdout=subprocess.DEVNULL) as process:
        yield port, process


@dataclass
class Clients:
    """Client processes holding ``total`` streams between them."""

    port: int
    total: int
    expect: int
    timeout: float
    placement: Placement = field(default_factory=Placement)
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    connected: int = 0

    def __enter__(self) -> Clients:
        per = 5_000
        for index, start in enumerate(range(0, self.total, per)):
            n = min(per, self.total - start)
            # Past 20,000 streams, each client process connects from a
            # loopback address of its own (127.0.0.2, ...): one address's
            # ephemeral ports run out below 28,000 connections to one port,
            # and 127.0.0.1 keeps its own for the runner's requests.
            source = [f"127.0.0.{2 + index}"] if self.total > 20_000 else []
            self.processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.client",
                        "streams",
                        str(self.port),
                        str(n),
                        str(self.expect),
                        str(self.timeout),
                        *source,
                        *(["--spin"] if self.placement.spin else []),
                    ],
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    text=True,
                    preexec_fn=self.placement.preexec(),
                )
            )
        for process in self.processes:
            assert process.stdout is not None
            line = process.stdout.readline().split()
            self.connected += int(line[1]) if line and line[0] == "ready" else 0
        return self

    def results(self) -> list[dict[str, Any]]:
        out = []
        for process in self.processes:
            stdout, _ = process.communicate(timeout=self.timeout + 60)
            out.append(json.loads(stdout))
        return out

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)


def summarise(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def runs_of(results: list[dict[str, Any]], per_run: int, runs: int) -> list[dict[int, list[int]]]:
    """Split every stream's ticks into the runs they belong to, by sequence number."""
    by_seq: dict[int, list[int]] = {}
    for result in results:
        for seq, latencies in result["by_seq"].items():
            by_seq.setdefault(int(seq), []).extend(latencies)
    seqs = sorted(by_seq)
    return [{s: by_seq[s] for s in seqs[r * per_run : (r + 1) * per_run]} for r in range(runs)]


def measure_level(port: int, streams: int, count: int, interval: float, plan: Plan,
                  pid: int, baseline: int, probe: RedisProbe | None = None, query: str = "",
                  workers: int = 1) -> dict[str, Any]:  # fmt: skip
    timeout = plan.runs * (count * interval + 5) + 30
    where = placement(streams, workers)
    with (
        where.server_on(pid),
        Clients(port, streams, count * plan.runs, timeout, where) as clients,
    ):
        deadline = time.monotonic() + 30
        while get_json(port, "/count")["n"] < clients.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(plan.idle_seconds)  # idle, keepalives running
        rss = tree_rss_kib(pid)
        if probe is not None:
            probe.count_streams()
            probe.sample()  # idle, every stream open
        busy = busy_cpu_seconds()
        for _ in range(plan.runs):
            get_json(port, f"/pub?count={count}&interval={interval}{query}")
            wait = count * interval + min(2.0, 0.2 + streams / 5_000)
            if probe is not None:  # and while the events flow
                time.sleep(count * interval / 2)
                probe.sample()
                wait -= count * interval / 2
            time.sleep(wait)
        busy = busy_cpu_seconds() - busy
        results = clients.results()
    held = sum(r["complete"] for r in results)
    per_run = []
    for run in runs_of(results, count, plan.runs):
        latencies = [v / 1e6 for values in run.values() for v in values]  # ms
        if not latencies:
            continue
        fanout = [max(values) / 1e6 for values in run.values()]
        per_run.append({
            "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
            "max": max(latencies), "fanout": statistics.median(fanout),
            "delivered": len(latencies) / (count * streams),
        })  # fmt: skip
    return {
        "streams": streams, "connected": clients.connected, "held": held,
        "rss_kib": rss, "rss_per_stream_kib": (rss - baseline) / max(1, clients.connected),
        "runs": per_run, "placement": describe(where), **summarise_runs(per_run),
        # The machine's CPU time per broadcast, all of it (between broadcasts
        # it idles): at 1,000 streams and more, where clients wait in epoll.
        "cpu_ms_per_event": busy * 1000 / (plan.runs * count),
        **(probe.take() if probe is not None else {}),
    }  # fmt: skip


def summarise_runs(per_run: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each figure of a level over its runs: median, min and max."""
    if not per_run:
        return {}
    keys = ("p50", "p99", "max", "fanout", "delivered")
    return {key: summarise([run[key] for run in per_run]) for key in keys}


def warm_up(port: int) -> None:
    """One stream and 20 events: the server's imports and code paths are warm."""
    with Clients(port, 1, 20, 30) as warm:
        get_json(port, "/pub?count=20&interval=0.001")
        warm.results()
    time.sleep(0.3)


def measure_once(
    contender: Contender,
    env: dict[str, str],
    nodes: list[str],
    level: tuple[int, int, float],
    plan: Plan,
) -> dict[str, Any]:
    """One run of a level on a server of its own, started and warmed up for it."""
    streams, count, interval = level
    once = dataclasses.replace(plan, runs=1)
    with server(contender, env) as (port, process):
        warm_up(port)
        baseline = tree_rss_kib(process.pid)
        probe = None
        if nodes:
            probe = RedisProbe(nodes, contender.redis_prefix, process.pid, port)
        return measure_level(
            port, streams, count, interval, once, process.pid, baseline, probe,
            workers=contender.workers,
        )  # fmt: skip


def measure_ones(contenders: list[Contender], plan: Plan) -> dict[str, dict[str, Any]]:
    """One stream, for every contender that needs no Redis: their runs taken in turn.

    The machine (a virtual one here) has slow spells lasting tens of
    seconds in which every one-stream latency is up to twice as long. Each
    contender's runs, one after the other, could all fall in one; taken in
    turn (a run of each, then again), a spell touches them all alike, and
    their ratios, which are what the goals compare, hold.
    """
    if 1 not in plan.levels:
        return {}
    count, interval = plan.levels[1]
    taking = [c for c in contenders if not (c.redis or c.redis_cluster) and _measures(c, 1)]
    runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in taking}
    for _ in range(plan.runs):
        for contender in taking:
            runs[contender.name].append(measure_once(contender, {}, [], (1, count, interval), plan))
    return {name: fresh_runs(levels) for name, levels in runs.items()}


def _measures(contender: Contender, streams: int) -> bool:
    """Whether ``contender`` is measured at ``streams`` streams."""
    return streams <= contender.max_streams and (
        contender.levels is None or streams in contender.levels
    )


def fresh_runs(levels: list[dict[str, Any]]) -> dict[str, Any]:
    """One level out of runs each on a server of its own (:func:`measure_once`).

    At one stream, a server's latency differs more between its processes
    than between runs of one process: measured here, three starts of one
    command gave 0.057, 0.078 and 0.12 ms, each start's own runs within
    10 % of each other (a fixed hash seed changed nothing). Runs of one
    process would agree with each other and not with the next process, as
    another harness's is. Several processes, each measured once, show that
    spread in the figures, and their median is not one process's chance.
    """
    per_run = [run for level in levels for run in level["runs"]]
    return {
        **levels[0], "connected": min(level["connected"] for level in levels),
        "held": min(level["held"] for level in levels), "servers": len(levels),
        "runs": per_run, **summarise_runs(per_run),
    }  # fmt: skip


def measure_throughput(port: int, plan: Plan) -> dict[str, Any]:
    rates = []
    for _ in range(plan.runs):
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.client", "burst", str(port), str(plan.burst)],
            cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        rates.append(json.loads(out.stdout)["rate"])
    return summarise(rates)


#: The jobs (and threads) of the publish measurement: enough for a cluster's
#: three primaries to share the work, as a deployment's many jobs do.
PUBLISH_JOBS = 12


def measure_publish(url: str, plan: Plan) -> dict[str, Any]:
    """Events a RedisBroker stores and sends per second, from ``PUBLISH_JOBS`` threads.

    Each thread publishes its own job's events as fast as the broker takes
    them (one Lua step and one (S)PUBLISH each), in this process, with the
    same pool size on one Redis and on a cluster.
    """
    import threading

    from flask_sse_flush import Event
    from flask_sse_flush.brokers import RedisBroker, event_id

    count = max(50, plan.burst // 50)
    rates = []
    for run in range(plan.runs):
        # A connection for each thread, and some for the lease keeper: no
        # thread waits on the pool (a waiter can starve behind busy threads).
        broker = RedisBroker(
            url, prefix=f"pub{run}:{os.getpid()}:", max_connections=PUBLISH_JOBS + 4, max_events=100
        )
        try:
            jobs = [f"job{n}" for n in range(PUBLISH_JOBS)]
            for job in jobs:
                broker.create(job)

            def publish(broker: RedisBroker, job: str) -> None:
                for seq in range(1, count + 1):
                    event = Event({"progress": seq % 100}, event="note", id=event_id(job, seq))
                    broker.publish(job, seq, event)

            threads = [threading.Thread(target=publish, args=(broker, job)) for job in jobs]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            rates.append(PUBLISH_JOBS * count / (time.perf_counter() - started))
        finally:
            broker.close()
    return summarise(rates)


def measure_cpu_job(port: int, plan: Plan, executor: str | None = None) -> dict[str, Any]:
    count, interval = max(5, int(plan.cpu_seconds / 0.05) - 10), 0.05
    how = "" if executor is None else f"&executor={executor}"
    runs = []
    with Clients(port, plan.cpu_streams, count * plan.runs, 120) as clients:
        for _ in range(plan.runs):
            # Events are due on a schedule fixed before the job starts: a
            # server the job stalls shows it as latency, even if it sends late.
            start = time.time_ns() + 200_000_000
            get_json(port, f"/pub?count={count}&interval={interval}&start={start}")
            get_json(port, f"/cpu?seconds={plan.cpu_seconds}{how}")
            time.sleep(max(0.0, (start - time.time_ns()) / 1e9) + plan.cpu_seconds + plan.settle)
        results = clients.results()
    for run in runs_of(results, count, plan.runs):
        latencies = [v / 1e6 for values in run.values() for v in values]
        if latencies:
            runs.append({"p50": percentile(latencies, 50), "p99": percentile(latencies, 99)})
    return {key: summarise([r[key] for r in runs]) for key in ("p50", "p99")} if runs else {}


def measure(
    contender: Contender, plan: Plan, ones: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Every figure of ``contender``; ``ones``: its one-stream level, if measured already."""
    print(f"  {contender.name}: {contender.label}", flush=True)
    with contextlib.ExitStack() as stack:
        env = {}
        nodes: list[str] = []
        if contender.redis or contender.redis_cluster:
            if (reason := redis_missing()) is not None:
                raise Skip(reason)
            try:  # in memory only: an append-only file would fsync every event
                if contender.redis_cluster:
                    cluster = stack.enter_context(RedisCluster())
                    nodes = [node.url for node in cluster.nodes]
                    env[REDIS_URL_ENV] = cluster.url
                else:
                    store = stack.enter_context(RedisServer(appendonly=False))
                    nodes = [store.url]
                    env[REDIS_URL_ENV] = store.url
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                raise Skip(f"redis-server did not start: {exc}") from exc
        port, process = stack.enter_context(server(contender, env))
        probe = None
        if nodes:
            probe = RedisProbe(nodes, contender.redis_prefix, process.pid, port)
        warm_up(port)
        baseline = tree_rss_kib(process.pid)
        levels = {}
        for streams, (count, interval) in plan.levels.items():
            if not _measures(contender, streams):
                continue
            if streams == 1 and ones and contender.name in ones:
                level = ones[contender.name]
            elif streams == 1:  # each run on a server of its own: see fresh_runs
                level = fresh_runs([
                    measure_once(contender, env, nodes, (streams, count, interval), plan)
                    for _ in range(plan.runs)
                ])  # fmt: skip
            else:
                level = measure_level(
                    port, streams, count, interval, plan, process.pid, baseline, probe,
                    workers=contender.workers,
                )  # fmt: skip
            levels[str(streams)] = level
            p50 = level.get("p50", {}).get("median", math.nan)
            note = f"    {streams:>6} streams: p50 {p50:.3f} ms"
            if probe is not None:
                split = "/".join(str(n) for n in level["worker_streams"].values())
                note += f", streams per worker {split}"
                note += f", Redis connections of a worker: at most {level['redis_connections_max']}"
                if len(nodes) > 1:
                    note += f" ({level['redis_connections_node_max']} on one node"
                    note += f", {level['redis_pubsub_node_max']} of them pub/sub)"
            print(note, flush=True)
        out: dict[str, Any] = {
            "label": contender.label, "wall": contender.wall, "baseline_rss_kib": baseline,
            "levels": levels,
        }  # fmt: skip
        if contender.native_publisher and 1 in plan.levels:
            count, interval = plan.levels[1]
            out["native_publish"] = measure_level(
                port,
                1,
                count,
                interval,
                plan,
                process.pid,
                baseline,
                query="&from=native",
                workers=contender.workers,
            )
        if contender.throughput:
            out["throughput"] = measure_throughput(port, plan)
        if nodes:
            out["publish"] = measure_publish(env[REDIS_URL_ENV], plan)
            print(f"    publish: {out['publish']['median']:,.0f} events/s", flush=True)
        for executor in contender.cpu_executors:
            key = "cpu_job" if executor is None else f"cpu_job_{executor}"
            out[key] = measure_cpu_job(port, plan, executor)
    return out


def versions() -> dict[str, str]:
    names = ["flask", "werkzeug", "gunicorn", "gevent", "sse-starlette", "starlette", "uvicorn"]
    found = {}
    for name in [*names, "redis"]:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    executable = shutil.which("redis-server")
    if executable is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
            out = subprocess.run(
                [executable, "--version"], capture_output=True, text=True, timeout=10
            )
            found["redis-server"] = out.stdout.split(" v=", 1)[1].split()[0]
    found["python"] = platform.python_version()
    found["flask-sse-flush"] = metadata.version("flask-sse-flush")
    return found


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(), "cpu": model, "cpu_count": os.cpu_count(),
        "memory_kib": int(Path("/proc/meminfo").read_text().split()[1]),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes; checks the code runs")
    parser.add_argument("--only", nargs="*", help="measure only these contenders")
    parser.add_argument("--output", type=Path, help="where to write the JSON results")
    parser.add_argument(
        "--levels", nargs="*", type=int, help="measure only these stream counts (of the plan's)"
    )
    parser.add_argument(
        "--no-link", action="store_true", help="skip the 20 ms link (benchmarks.link)"
    )
    parser.add_argument(
        "--no-crosscheck",
        action="store_true",
        help="skip the independent harness (benchmarks.crosscheck)",
    )
    args = parser.parse_args(argv)
    raise_open_file_limit()
    plan = QUICK if args.quick else FULL
    if args.levels:
        plan = dataclasses.replace(
            plan, levels={k: v for k, v in plan.levels.items() if k in args.levels}
        )
    started = time.monotonic()
    print(f"flask-sse-flush benchmark ({'quick' if args.quick else 'full'})", flush=True)
    contenders = [c for c in CONTENDERS if not args.only or c.name in args.only]
    measured, skipped = {}, {}
    contenders = [c for c in contenders if any(_measures(c, n) for n in plan.levels)]
    print("  one stream, each contender in turn (measure_ones)", flush=True)
    ones = measure_ones(contenders, plan)
    for contender in contenders:
        try:
            measured[contender.name] = measure(contender, plan, ones)
        except Skip as exc:
            skipped[contender.name] = str(exc)
            print(f"    note: {contender.name} skipped: {exc}", flush=True)
    link: dict[str, Any] | None = None
    if not args.quick and not args.only and not args.no_link:
        from .link import LinkUnavailable, measure_link

        print("  the 20 ms link (benchmarks.link)", flush=True)
        try:
            link = measure_link(progress=lambda text: print(f"    {text}", flush=True))
        except LinkUnavailable as exc:
            skipped["link"] = str(exc)
            print(f"    note: the link skipped: {exc}", flush=True)
    result = {
        "mode": "quick" if args.quick else "full",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine(),
        "versions": versions(),
        "plan": {"levels": {str(k): v for k, v in plan.levels.items()}, "runs": plan.runs,
                 "burst": plan.burst, "cpu_streams": plan.cpu_streams,
                 "cpu_seconds": plan.cpu_seconds},
        "contenders": measured,
        "skipped": skipped,
        **({"link": link} if link is not None else {}),
    }  # fmt: skip
    if not args.quick and not args.only and not args.levels and not args.no_crosscheck:
        from . import crosscheck

        print("  the independent harness (benchmarks.crosscheck)", flush=True)
        many = crosscheck.MANY
        figures = crosscheck.run(crosscheck.CONTENDERS, many, quick=False)
        result["crosscheck"] = {
            "streams": many,
            "figures": figures,
            "rows": crosscheck.compare(figures, result, many),
        }
        result["seconds"] = round(time.monotonic() - started, 1)
    from .report import table, write_docs

    print(table(result))
    output = args.output or RESULTS / ("quick.json" if args.quick else "latest.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output}")
    if not args.quick and not args.only and not args.levels:
        for path in write_docs(result):
            print(f"wrote {path.relative_to(ROOT)}")
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
