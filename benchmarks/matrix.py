"""The server compatibility table: every WSGI server, measured, written into the docs.

    python -m benchmarks.matrix            # about 2 minutes
    python -m benchmarks.matrix --quick    # fewer events, for CI

Each server serves the integration app (``tests/integration/app.py``) on
127.0.0.1. For each: whether it streams at all, the p95 delay of 20 events
sent 50 ms apart (read on a raw socket, send times from the job's own log,
same clock), whether ``TCP_NODELAY`` is on the client socket, how long a
client that hangs up during a silence holds its stream (from the close
to its subscription's end), the keepalive period (1 s in the app),
and any warning the library logged. Writes
``benchmarks/results/matrix.json`` and ``docs/_generated/compat.rst``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import uuid
from importlib import metadata
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flask_sse_flush import servers  # noqa: E402
from tests.integration.support import raw_get, running_server, stream_path  # noqa: E402

SERVERS = {
    "gunicorn-gevent": "gunicorn ``-k gevent``",
    "gunicorn-gevent_pywsgi": "gunicorn ``-k gevent_pywsgi``",
    "gunicorn-gthread": "gunicorn ``-k gthread --threads 16``",
    "gunicorn-sync": "gunicorn ``-k sync``",
    "gevent": "``gevent.pywsgi.WSGIServer``",
    "uwsgi-threads": "uWSGI ``--threads 16``",
    "uwsgi-gevent": "uWSGI ``--gevent 1000 --gevent-early-monkey-patch``",
    "waitress": "waitress (``threads=16``)",
    "werkzeug": "werkzeug dev server",
    "wsgiref": "stdlib ``wsgiref``",
}
#: The warnings the library logs at a server's first stream, by the name the table shows.
WARNINGS = {
    "gunicorn's own HTTP/2": servers.GUNICORN_HTTP2,
    "sync worker: a stream holds the worker; --timeout kills it": servers.GUNICORN_SYNC,
    "uWSGI gevent without monkey-patching": servers.UWSGI_GEVENT,
    "uWSGI without threads": servers.UWSGI_THREADS,
}
RESULTS = ROOT / "benchmarks" / "results" / "matrix.json"
TABLE = ROOT / "docs" / "_generated" / "compat.rst"


def _log(server: Any, name: str) -> list[dict[str, Any]]:
    path = server.log_file(name)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def measure(kind: str, log_dir: Path, events: int) -> dict[str, Any]:
    row: dict[str, Any] = {"server": kind}
    with running_server(kind, log_dir) as server:
        name = f"m-{uuid.uuid4().hex}.jsonl"
        payload = {"log": str(server.log_file(name)), "steps": events, "interval": 0.05}
        with raw_get(server.port, stream_path(payload)) as response:
            arrivals = [a for a in response.arrivals() if a.event.event == "progress"]
        sent = [r["sent"] for r in _log(server, name) if "percent" in r]
        delays = sorted(a.at - s for a, s in zip(arrivals, sent, strict=False))
        row["streams"] = len(arrivals) == events
        row["p95_ms"] = 1000 * delays[min(len(delays) - 1, math.ceil(0.95 * len(delays)) - 1)]
        nodelay = [r for r in _log(server, "nodelay.jsonl") if r["path"] == "/render/stream"]
        row["nodelay"] = bool(nodelay) and nodelay[-1]["after"] == 1
        # Hang-up during a silence: the job says nothing for 30 s (the
        # app's keepalive is 1 s); the client leaves after the opening frame.
        payload = {"delay_first": 30, "steps": 1, "interval": 0}
        with raw_get(server.port, stream_path(payload)) as response:
            opening = next(response.body_chunks())
            left = time.time()
        job = opening.split(b"id: ", 1)[1].split(b"-", 1)[0].decode()
        cleanup = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and cleanup is None:
            with raw_get(server.port, f"/__subscribers/{job}", {"Connection": "close"}) as r:
                if r.json()["n"] == 0:
                    cleanup = time.time() - left
            time.sleep(0.01)
        row["disconnect_s"] = cleanup
        # Keepalive: 2.5 s of silence with keepalive=1.0.
        payload = {"delay_first": 2.5, "steps": 1, "interval": 0}
        with raw_get(server.port, stream_path(payload)) as response:
            times = [time.time() for chunk in response.body_chunks() if chunk == b": keepalive\n\n"]
        row["keepalive_s"] = (times[1] - times[0]) if len(times) >= 2 else None
        output = (log_dir / "server.out").read_text("utf-8", "replace")
        row["warnings"] = [name for name, message in WARNINGS.items() if message in output]
    return row


def _cell(value: Any, unit: str = "") -> str:
    if value is None:
        return "not noticed"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.2f}{unit}" if isinstance(value, float) else str(value)


def write_table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    lines = [
        ".. Generated by `python -m benchmarks.matrix`; do not edit.",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - server",
        "     - streams",
        "     - p95 delay",
        "     - ``TCP_NODELAY``",
        "     - hang-up noticed after",
        "     - keepalive period",
        "     - warning logged",
    ]
    for row in rows:
        lines += [
            f"   * - {SERVERS[row['server']]}",
            f"     - {_cell(row['streams'])}",
            f"     - {row['p95_ms']:.1f} ms",
            f"     - {_cell(row['nodelay'])}",
            f"     - {_cell(row['disconnect_s'], ' s')}",
            f"     - {_cell(row['keepalive_s'], ' s')}",
            f"     - {'; '.join(row['warnings']) or 'none'}",
        ]
    lines += [
        "",
        f"Measured {meta['date']} on {meta['machine']}, Python {meta['python']}, "
        f"{meta['events']} events 50 ms apart per server.",
        "",
    ]
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    TABLE.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 events per server, no files")
    parser.add_argument("--only", nargs="*", help="servers to measure")
    args = parser.parse_args()
    events = 5 if args.quick else 20
    rows = []
    with TemporaryDirectory() as tmp:
        for kind in args.only or list(SERVERS):
            folder = Path(tmp) / kind
            folder.mkdir()
            row = measure(kind, folder, events)
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.quick:
        return
    versions: dict[str, str | None] = {}
    for package in ("gunicorn", "gevent", "waitress", "pyuwsgi", "werkzeug", "flask"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.system()} {platform.machine()}, {_cpus()} CPUs",
        "python": platform.python_version(),
        "events": events,
        "versions": versions,
    }
    RESULTS.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    write_table(rows, meta)
    print(f"wrote {TABLE.relative_to(ROOT)} and {RESULTS.relative_to(ROOT)}")


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


if __name__ == "__main__":
    main()
