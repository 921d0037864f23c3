"""A disconnect storm on two workers and Redis: 200 clients drop and resume with
``Last-Event-ID`` at random moments while 20 jobs run, some failing, some
cancelled. Every client ends with each event once, in order, and one terminal
event; the server is healthy after. And on a Redis Cluster under four
workers, a primary killed mid-run."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flask_sse_flush.brokers import parse_event_id
from flask_sse_flush.testing import RedisCluster, RedisServer

from .support import Server, raw_get, stream_path
from .test_scale_out import TERMINAL, scaled_server

CLIENTS, JOBS = 200, 20


def follow(
    port: int,
    job_id: str,
    rng: random.Random,
    drops: list[int | None],
    pause: float = 0.05,
) -> dict[str, Any]:
    """A client that drops its stream at random and resumes with ``Last-Event-ID``
    until the job's terminal event: the numbers and names it saw, the ``gap``
    events' ``lostThrough`` numbers, its legs, and the ``503`` answers it
    retried (the event store mid-failover)."""
    ids: list[int] = []
    names: list[str | None] = []
    gaps: list[int] = []
    headers: dict[str, str] = {}
    legs = unavailable = 0
    while not names or names[-1] not in TERMINAL:
        legs += 1
        assert legs < 60, f"a client of {job_id} never saw the end"
        drop_after = rng.choice(drops)
        with raw_get(port, f"/render/stream?job={job_id}", headers, timeout=30) as stream:
            if stream.status == 204:
                break  # the terminal event was delivered already
            if stream.status == 503:  # mid-failover: a client tries again
                assert stream.json()["error"].startswith("the event store")
                unavailable += 1
                time.sleep(0.5)
                continue
            assert stream.status == 200, stream.status
            seen = 0
            for arrival in stream.arrivals():
                event = arrival.event
                if event.event == "gap":
                    gaps.append(parse_event_id(event.json()["lostThrough"])[1])
                elif event.id:
                    ids.append(parse_event_id(event.id)[1])
                    names.append(event.event)
                    seen += 1
                if event.event in TERMINAL or (drop_after and seen >= drop_after):
                    break
        if ids:
            headers = {"Last-Event-ID": f"{job_id}-{ids[-1]}"}
        time.sleep(rng.random() * pause)
    return {
        "ids": ids, "names": names, "gaps": gaps, "legs": legs, "job": job_id,
        "unavailable": unavailable,
    }  # fmt: skip


@pytest.fixture(scope="module")
def two_workers(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    with scaled_server(
        redis_server, tmp_path_factory.mktemp("chaos"), workers=2, options=["--backlog", "2048"]
    ) as server:
        yield server


def test_a_disconnect_storm_loses_and_repeats_nothing(two_workers: Server, tmp_path: Path) -> None:
    port = two_workers.port
    kinds = ["complete"] * 12 + ["error"] * 4 + ["cancelled"] * 4
    jobs: list[str] = []
    for n, kind in enumerate(kinds):
        payload: dict[str, Any] = {"steps": 40, "interval": 0.03, "log": str(tmp_path / f"j{n}")}
        if kind == "error":
            payload["fail"] = "/srv/secret: it broke"
        with raw_get(port, "/render", method="POST", body=json.dumps(payload).encode()) as r:
            assert r.status == 202
            jobs.append(r.json()["id"])
    results: list[dict[str, Any]] = [{} for _ in range(CLIENTS)]

    def client(index: int) -> None:
        drops = [1, 2, 3, 5, 8, None]
        results[index] = follow(port, jobs[index % JOBS], random.Random(index), drops)

    def canceller() -> None:
        time.sleep(0.4)
        for job_id, kind in zip(jobs, kinds, strict=True):
            if kind == "cancelled":
                with raw_get(port, f"/render/{job_id}", method="DELETE") as r:
                    assert r.status == 202

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    threads.append(threading.Thread(target=canceller))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    reconnects = 0
    for index, result in enumerate(results):
        assert result, f"client {index} failed"
        assert result["unavailable"] == 0, f"client {index}: the store said 503"
        kind = kinds[index % JOBS]
        assert result["ids"] == list(range(1, len(result["ids"]) + 1)), f"client {index}"
        terminal = [n for n in result["names"] if n in TERMINAL]
        assert terminal == [result["names"][-1]], f"client {index}: {result['names'][-3:]}"
        assert terminal == (["complete"] if kind == "complete" else ["error"])
        reconnects += result["legs"] - 1
    assert reconnects > CLIENTS  # it really was a storm
    for job_id, kind in zip(jobs, kinds, strict=True):
        with raw_get(port, f"/render/{job_id}") as r:
            status = r.json()
        assert status["state"] == kind
        if kind == "error":
            assert status["error"] == "the render failed (RuntimeError)"

    # Healthy after: a new stream runs to its end, and nothing answered 500.
    with raw_get(port, stream_path({"steps": 3, "interval": 0})) as stream:
        assert [a.event.event for a in stream.arrivals()][-1] == "complete"
    # The only tracebacks are the failing renders' own, logged server-side.
    log = two_workers.log_file("server.out").read_text("utf-8", "replace")
    assert log.count("Traceback") == log.count("failed\nTraceback") == kinds.count("error"), log[
        -3000:
    ]


def test_a_redis_cluster_primary_killed_mid_run_loses_nothing_silently(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Four workers on a 6-node cluster; 12 jobs spread over its slots, 36
    clients dropping and resuming; a primary is killed mid-run and its replica
    takes over. Every client ends with its job's ``complete``, each event once
    and in order, and a ``gap`` (before the hole) naming exactly what the
    failover lost, if anything."""
    jobs_count, clients_count = 12, 36
    (tmp_path / "server").mkdir()
    with (
        RedisCluster() as cluster,
        scaled_server(cluster, tmp_path / "server", queue=redis_server) as server,
    ):
        port = server.port
        jobs: list[str] = []
        for n in range(jobs_count):
            payload = {"steps": 60, "interval": 0.05, "log": str(tmp_path / f"j{n}")}
            with raw_get(port, "/render", method="POST", body=json.dumps(payload).encode()) as r:
                assert r.status == 202
                jobs.append(r.json()["id"])
        results: list[dict[str, Any]] = [{} for _ in range(clients_count)]

        def client(index: int) -> None:
            rng = random.Random(index)
            results[index] = follow(port, jobs[index % jobs_count], rng, [3, 8, 15, None], 0.1)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients_count)]
        for thread in threads:
            thread.start()
        time.sleep(1.2)  # mid-run: about a third of each job's events sent
        victim = cluster.primaries()[0]
        cluster.kill(victim)
        for thread in threads:
            thread.join(150)
        assert not any(thread.is_alive() for thread in threads)
        lost = 0
        for index, result in enumerate(results):
            assert result, f"client {index} failed"
            ids = result["ids"]
            assert ids == sorted(set(ids)), f"client {index}: an event twice or out of order"
            assert result["names"][-1] == "complete", f"client {index}: {result['names'][-3:]}"
            missing = set(range(1, ids[-1] + 1)) - set(ids)
            # Every hole was announced, by a gap naming the last event it lost.
            for seq in missing:
                assert any(through >= seq for through in result["gaps"]), (index, seq, result)
            lost += len(missing)
        for job_id in jobs:
            with raw_get(port, f"/render/{job_id}") as r:
                assert r.json()["state"] == "complete"
        # Healthy after: a new stream runs to its end.
        with raw_get(port, stream_path({"steps": 3, "interval": 0})) as stream:
            assert [a.event.event for a in stream.arrivals()][-1] == "complete"
        log = server.log_file("server.out").read_text("utf-8", "replace")
        assert "Traceback" not in log, log[-3000:]
        print(
            f"primary killed: {lost} events lost (each announced by a gap), "
            f"{sum(r['unavailable'] for r in results)} resumes answered 503 mid-failover, "
            f"over {clients_count} clients"
        )
