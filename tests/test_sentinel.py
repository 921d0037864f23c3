"""Behind Sentinel: the broker follows the master through a failover.

Real parts: a master and a replica (``redis-server``) and three sentinels
(``redis-server --sentinel``), all on loopback ports of the test's own.
The master is stopped mid-job; the job's stream carries on after the
replica's promotion with every event once and in order, and a ``gap``
only where writes were lost.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flask_sse_flush import BrokerUnavailable, Event
from flask_sse_flush.brokers import RedisBroker
from flask_sse_flush.brokers.base import parse_event_id
from flask_sse_flush.testing import RedisServer, free_port, stop_process
from tests.test_leases import Collector

MASTER = "jobs"


class Node(RedisServer):
    """A redis-server with options of its own (a replica's ``replicaof``)."""

    def __init__(self, *options: str) -> None:
        super().__init__()
        self.options = list(options)

    def command(self) -> list[str]:
        return [*super().command(), *self.options]

    def kill(self) -> None:
        """Gone at once, as a crashed host: ``SIGKILL``."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait(10)


class Sentinels:
    """Three sentinels watching ``master``: a quorum of two, a second to call it down."""

    def __init__(self, master: Node, folder: Path) -> None:
        self.ports = [free_port() for _ in range(3)]
        self.processes: list[subprocess.Popen[bytes]] = []
        for port in self.ports:
            config = folder / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {master.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 5000\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
            )
            command = [master.executable, str(config), "--sentinel"]
            command += ["--logfile", str(folder / f"sentinel-{port}.log")]
            self.processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.ports)
        return f"redis+sentinel://{hosts}/{MASTER}/0"

    def master_port(self) -> int | None:
        import redis

        for port in self.ports:
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis(port=port, socket_timeout=1)
                try:
                    answer = client.sentinel_get_master_addr_by_name(MASTER)
                finally:
                    client.close()
                if answer:
                    return int(answer[1])
        return None

    def stop(self) -> None:
        for process in self.processes:
            stop_process(process)


@pytest.fixture
def sentinel_setup(tmp_path: Path) -> Iterator[tuple[Node, Node, Sentinels]]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    pytest.importorskip("redis")
    master = Node()
    master.start()
    replica = Node("--replicaof", "127.0.0.1", str(master.port))
    replica.start()
    sentinels = Sentinels(master, tmp_path)
    try:
        deadline = time.monotonic() + 20
        while sentinels.master_port() != master.port:
            assert time.monotonic() < deadline, "the sentinels never agreed on the master"
            time.sleep(0.1)
        yield master, replica, sentinels
    finally:
        sentinels.stop()
        for node in (replica, master):
            node.stop()
            shutil.rmtree(node.directory, ignore_errors=True)


def test_a_job_carries_on_through_a_failover(
    sentinel_setup: tuple[Node, Node, Sentinels],
) -> None:
    master, replica, sentinels = sentinel_setup
    runner = RedisBroker(sentinels.url, prefix="sentinel:", lease=5.0, outage_timeout=60.0)
    watcher = RedisBroker(sentinels.url, prefix="sentinel:", lease=5.0, outage_timeout=60.0)
    try:
        runner.create("failover")
        stream = Collector()
        assert watcher.subscribe("failover", stream)
        total = 40
        published: list[int] = []

        def publish_all() -> None:
            for n in range(1, total + 1):
                final = n == total
                name = "complete" if final else "progress"
                data: dict[str, Any] = {"n": n}
                runner.publish(
                    "failover",
                    n,
                    Event(data, event=name, id=f"failover-{n}"),
                    change={"state": "complete", "result": data} if final else None,
                    final=final,
                )
                published.append(n)
                time.sleep(0.05)

        publisher = threading.Thread(target=publish_all)
        publisher.start()
        while len(published) < 10:
            time.sleep(0.01)
        master.kill()  # mid-job: the sentinels promote the replica
        publisher.join(60)
        assert not publisher.is_alive(), "the publisher never got past the failover"
        assert stream.closed.wait(20), "the stream never ended"
        assert sentinels.master_port() == replica.port
        ids = [parse_event_id(e.id)[1] for e in stream.events if e.id is not None]
        assert ids == sorted(set(ids)), f"out of order or twice: {ids}"
        assert stream.events[-1].event == "complete"
        gaps = [e for e in stream.events if e.event == "gap"]
        if ids != list(range(1, total + 1)):
            # Writes the master acknowledged but never replicated: said, not hidden.
            assert gaps, f"a hole without a gap: {ids}"
        status = watcher.status("failover")
        assert status is not None and status.state == "complete"
    finally:
        runner.close()
        watcher.close()


def test_sentinel_urls_are_checked() -> None:
    for bad in (
        "redis+sentinel://127.0.0.1:26379",
        "redis+sentinel://127.0.0.1/jobs",
        "redis+sentinel://127.0.0.1:26379/jobs/zero",
        "redis+sentinel://127.0.0.1:99999/jobs",
    ):
        with pytest.raises(ValueError, match="Sentinel URL"):
            RedisBroker(bad)
    broker = RedisBroker("redis+sentinel://:secret@127.0.0.1:1,127.0.0.1:2/jobs/3")
    broker.close()


def test_a_cluster_node_with_no_slots_is_unavailable_not_an_error(tmp_path: Path) -> None:
    """A node in cluster mode is used as a cluster (see test_cluster.py); one
    whose cluster serves no slot yet is unavailable, as Redis away is."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    # The bus port explicitly: port + 10000 may be taken, or past 65535.
    node = Node(
        "--cluster-enabled", "yes", "--cluster-config-file", str(tmp_path / "n.conf"),
        "--cluster-port", str(free_port()),
    )  # fmt: skip
    node.start()
    broker = RedisBroker(node.url, request_timeout=1.0)
    try:
        with pytest.raises(BrokerUnavailable, match="unavailable"):
            broker.status("job")
        with pytest.raises(BrokerUnavailable, match="unavailable"):
            broker.create("job")
        assert broker._store.cluster
    finally:
        broker.close()
        node.stop()
        shutil.rmtree(node.directory, ignore_errors=True)
