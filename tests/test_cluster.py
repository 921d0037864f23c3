"""On a Redis Cluster: the same promises, one slot per job or channel, sharded pub/sub.

Real parts: six ``redis-server`` nodes in cluster mode (three primaries,
three replicas) on loopback ports of the test's own, made into a cluster
with ``redis-cli --cluster create``. The broker contract, the channel
contract and the lease tests run again on it, unchanged; the tests here
add what only a cluster has: hash tags, connections per node, a primary
killed mid-job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from flask_sse_flush import Event
from flask_sse_flush.brokers import RedisBroker
from flask_sse_flush.brokers.base import parse_event_id
from flask_sse_flush.testing import RedisCluster
from tests import test_brokers, test_channels
from tests.test_leases import (  # the lease tests, run again on the cluster
    Collector,
    brokers,
    test_a_closed_broker_s_keeper_has_ended,
    test_a_dead_worker_s_streams_stop_counting,
    test_a_job_whose_end_could_not_be_stored_ends_once_redis_answers,
    test_a_killed_runner_s_job_ends_once_on_every_worker,
    test_a_late_keeper_s_streams_count_again,
    test_a_live_runner_keeps_its_job_however_long_it_is_quiet,
    test_a_queued_job_s_keys_outlive_its_queue_lease,
    test_a_queued_job_waits_its_queue_timeout_then_ends,
    test_an_ended_job_stays_ended_when_a_job_worker_starts_it,
    test_no_key_is_ever_without_a_lifetime,
    wait_for,
)
from tests.timing import assert_under

__all__ = [
    "brokers",
    "test_a_closed_broker_s_keeper_has_ended",
    "test_a_dead_worker_s_streams_stop_counting",
    "test_a_job_whose_end_could_not_be_stored_ends_once_redis_answers",
    "test_a_killed_runner_s_job_ends_once_on_every_worker",
    "test_a_late_keeper_s_streams_count_again",
    "test_a_live_runner_keeps_its_job_however_long_it_is_quiet",
    "test_a_queued_job_s_keys_outlive_its_queue_lease",
    "test_a_queued_job_waits_its_queue_timeout_then_ends",
    "test_an_ended_job_stays_ended_when_a_job_worker_starts_it",
    "test_no_key_is_ever_without_a_lifetime",
]


@pytest.fixture
def redis_server(redis_cluster: RedisCluster) -> RedisCluster:
    """The lease tests' Redis is the cluster here (its ``url`` names one node)."""
    return redis_cluster


def ev(job: str, seq: int, name: str = "note") -> Event:
    return Event({"n": seq}, event=name, id=f"{job}-{seq}")


class OnTheCluster:
    """A Redis test class's tests, on the session's cluster, under a prefix of their own."""

    @pytest.fixture(autouse=True)
    def _redis(self, redis_cluster: RedisCluster, redis_prefix: str) -> Iterator[None]:
        self.server = redis_cluster
        self.prefix = redis_prefix
        self.brokers: list[RedisBroker] = []
        yield
        for broker in self.brokers:
            broker.close()


class TestClusterBroker(OnTheCluster, test_brokers.TestRedisBroker):  # type: ignore[misc]
    """The broker contract and the Redis broker's own tests, on the cluster."""

    # One Redis's own: its connection count and its server's CPU time per
    # script (see the cluster's below, per node).
    test_connections_do_not_grow_with_streams_or_jobs = None  # type: ignore[assignment]
    test_a_publish_past_the_bound_costs_the_same_however_long_the_log = None  # type: ignore[assignment]
    test_close_ends_a_reader_waiting_to_reconnect = None  # type: ignore[assignment]
    # One Redis's one pool: a cluster has a pool per node, and redis-py reads
    # the slots again when a node's is exhausted (docs/scaling.rst).
    test_a_pool_with_no_connection_free_is_not_an_outage = None  # type: ignore[assignment]


class TestClusterChannels(OnTheCluster, test_channels.TestRedisChannels):  # type: ignore[misc]
    """The channel contract on the cluster."""


# -- what only a cluster has -----------------------------------------------------------


def test_a_job_s_and_a_channel_s_keys_each_share_one_slot(
    redis_cluster: RedisCluster, redis_prefix: str
) -> None:
    broker = RedisBroker(redis_cluster.url, prefix=redis_prefix)
    try:
        broker.create("tagged", limit=10, owner="ann", owner_limit=5)
        stream = Collector()
        assert broker.subscribe("tagged", stream)
        for seq in range(1, 4):
            broker.publish("tagged", seq, ev("tagged", seq, "progress"))
        broker.append("news", Event({"n": 1}))
        client = broker._connect()
        keys = [key.decode() for key in client.scan_iter(match=f"{redis_prefix}*")]
        slots: dict[str, set[int]] = {}
        for key in keys:
            tag = key[key.index("{") + 1 : key.index("}")]
            slots.setdefault(tag, set()).add(client.keyslot(key))
        assert set(slots) == {"tagged", "news", "active"}, keys
        assert all(len(found) == 1 for found in slots.values()), slots
        assert len(set().union(*slots.values())) == 3  # three slots, not one
    finally:
        broker.close()


def test_a_redis_cluster_url_lists_seed_nodes_and_is_checked(
    redis_cluster: RedisCluster, redis_prefix: str
) -> None:
    # The first seed is down: the next one leads to the cluster.
    dead = f"127.0.0.1:{redis_cluster.nodes[0].bus_port}"  # type: ignore[attr-defined]
    live = ",".join(f"127.0.0.1:{node.port}" for node in redis_cluster.nodes[1:3])
    broker = RedisBroker(f"redis+cluster://{dead},{live}", prefix=redis_prefix)
    try:
        broker.create("seeded")
        assert broker.status("seeded") is not None
    finally:
        broker.close()
    for bad, message in [
        ("redis+cluster://", "names each host as host:port"),
        ("redis+cluster://h:0", "names each host as host:port"),
        ("redis+cluster://h:1/3", "one database"),
    ]:
        with pytest.raises(ValueError, match=message):
            RedisBroker(bad)


def node_clients(cluster: RedisCluster, name: str) -> dict[int, list[dict[str, Any]]]:
    """Each node's connections named ``name``, by port."""
    import redis

    found = {}
    for node in cluster.live():
        client = redis.Redis(port=node.port)
        try:
            found[node.port] = [c for c in client.client_list() if c["name"] == name]
        finally:
            client.close()
    return found


def test_connections_are_one_pubsub_per_primary_and_three_commands_per_node(
    redis_cluster: RedisCluster, redis_prefix: str
) -> None:
    """1,000 streams over 100 jobs on one worker: one pub/sub connection per
    primary, at most three command connections per node."""
    broker = RedisBroker(redis_cluster.url, prefix=redis_prefix, max_connections=3)
    try:
        streams: list[Collector] = []
        for n in range(100):
            broker.create(f"job{n}")
            for _ in range(10):
                stream = Collector()
                assert broker.subscribe(f"job{n}", stream)
                streams.append(stream)
        threads = [
            threading.Thread(
                target=lambda n=n: broker.publish(f"job{n}", 1, ev(f"job{n}", 1)), daemon=True
            )
            for n in range(100)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        wait_for(
            lambda: all(len(stream.events) == 1 for stream in streams), 30, "every stream's event"
        )
        found = node_clients(redis_cluster, broker.client_name)
        primaries = {node.port for node in redis_cluster.primaries()}
        for port, clients in found.items():
            pubsub = [c for c in clients if int(c.get("ssub", 0)) or int(c.get("sub", 0))]
            commands = [c for c in clients if c not in pubsub]
            assert len(pubsub) == (1 if port in primaries else 0), (port, clients)
            assert len(commands) <= 3, (port, clients)
        assert sum(len(clients) for clients in found.values()) <= 3 * 3 + 3 * 3
    finally:
        broker.close()


def test_a_cancel_reaches_the_job_s_process_through_its_own_slot(
    redis_cluster: RedisCluster, redis_prefix: str
) -> None:
    one = RedisBroker(redis_cluster.url, prefix=redis_prefix)
    two = RedisBroker(redis_cluster.cluster_url, prefix=redis_prefix)
    try:
        calls: list[str] = []
        for job in ("a", "b", "c"):
            one.create(job)
            one.on_cancel(job, lambda job=job: calls.append(job))
        assert two.cancel("b")
        wait_for(lambda: calls == ["b"], 10, "the cancel")
        assert two.cancel("a") and two.cancel("c")
        wait_for(lambda: sorted(calls) == ["a", "b", "c"], 10, "the other cancels")
    finally:
        one.close()
        two.close()


def test_max_jobs_and_identity_limits_hold_across_workers(
    redis_cluster: RedisCluster, redis_prefix: str
) -> None:
    from flask_sse_flush import TooManyJobs

    one = RedisBroker(redis_cluster.url, prefix=redis_prefix)
    two = RedisBroker(redis_cluster.url, prefix=redis_prefix)
    try:
        one.create("j1", limit=3, owner="ann", owner_limit=2)
        two.create("j2", limit=3, owner="ann", owner_limit=2)
        with pytest.raises(TooManyJobs):
            one.create("j3", limit=3, owner="ann", owner_limit=2)
        two.create("j3", limit=3, owner="bob", owner_limit=2)
        with pytest.raises(TooManyJobs):
            one.create("j4", limit=3)
        with pytest.raises(ValueError, match="exists already"):
            two.create("j1", limit=10)
        one.publish("j1", 1, ev("j1", 1, "complete"), final=True)  # frees a slot of each
        two.create("j4", limit=3, owner="ann", owner_limit=2)
    finally:
        one.close()
        two.close()


# -- a primary killed mid-job ------------------------------------------------------------


def test_a_primary_killed_mid_job_loses_nothing_silently(redis_prefix: str) -> None:
    """The primary serving a job's slot dies mid-job (its replica takes over):
    the job goes on; its stream, on another worker, ends with every event
    once and in order and its ``complete``, with a ``gap`` only where the
    failover lost acknowledged writes."""
    with RedisCluster() as cluster:
        runner = RedisBroker(cluster.url, prefix=redis_prefix, outage_timeout=60.0)
        watcher = RedisBroker(cluster.cluster_url, prefix=redis_prefix, outage_timeout=60.0)
        try:
            runner.create("job")
            stream = Collector()
            assert watcher.subscribe("job", stream)
            primary = cluster.primary_of(runner._store.key("job", "job"))
            follower = Collector()
            watcher.follow("news", follower, watcher.position("news"))
            stall = 0.0
            for seq in range(1, 201):
                if seq == 60:
                    cluster.kill(primary)
                    killed = time.monotonic()
                runner.publish("job", seq, ev("job", seq))
                if seq == 60:
                    stall = time.monotonic() - killed
                if seq % 20 == 0:
                    runner.append("news", Event({"n": seq}))
            runner.publish("job", 201, ev("job", 201, "complete"), final=True)
            wait_for(stream.closed.is_set, 60, "the stream's end")
            names = [event.event for event in stream.events]
            assert names[-1] == "complete"
            seqs = [parse_event_id(event.id)[1] for event in stream.events if event.id]
            assert seqs == sorted(set(seqs)), "an event twice or out of order"
            numbered = [e for e in stream.events if e.event != "gap"]
            missing = set(range(1, 202)) - {parse_event_id(e.id)[1] for e in numbered if e.id}
            if missing:  # lost by the failover: said, before the hole
                gap = next(e for e in stream.events if e.event == "gap")
                assert parse_event_id(gap.json()["lostThrough"])[1] >= max(missing)
            status = watcher.status("job")
            assert status is not None and status.final_seq == 201
            # The job's publish waited out the failover (cluster-node-timeout 1 s).
            assert_under(stall, 30.0, "a cluster failover: the publish after the kill (s)")
            # The channel's events too: once, in order, and a gap before any hole.
            wait_for(
                lambda: [e.json()["n"] for e in follower.events if e.event != "gap"][-1:] == [200],
                30,
                "the channel's last event",
            )
            told = [e.event == "gap" for e in follower.events]
            data = [e.json()["n"] for e in follower.events if e.event != "gap"]
            assert data == sorted(set(data))
            assert data == list(range(20, 201, 20)) or any(told)
        finally:
            runner.close()
            watcher.close()


def test_writes_a_failover_lost_are_a_gap_never_a_hole_or_a_duplicate(redis_prefix: str) -> None:
    """The replica is cut off (stopped, its link closed) while the primary
    acknowledges events 21 to 30, then the primary dies and that replica takes over without them: a
    stream that saw them live goes on; a resume from before them gets a
    ``gap`` naming exactly 21 to 30; a channel's log starts a new epoch."""
    import os
    import signal

    with RedisCluster() as cluster:
        runner = RedisBroker(cluster.url, prefix=redis_prefix, outage_timeout=60.0)
        watcher = RedisBroker(cluster.url, prefix=redis_prefix, outage_timeout=60.0)
        try:
            # The job and a channel in one slot, so one failover loses both.
            from redis.crc import key_slot

            job = "lagged"
            slot = key_slot(job.encode())
            names = (f"news{n}" for n in range(100_000))
            channel = next(name for name in names if key_slot(name.encode()) == slot)
            runner.create(job)
            live = Collector()
            assert watcher.subscribe(job, live)
            for seq in range(1, 21):
                runner.publish(job, seq, ev(job, seq))
            before = [runner.append(channel, Event({"n": n})) for n in range(1, 4)]
            primary = cluster.primary_of(runner._store.key("job", job))
            (replica,) = cluster.replicas_of(primary)
            assert replica.process is not None
            wait_for(lambda: "lag=0" in cluster.ask(primary, "INFO", "replication"), 10, "sync")
            os.kill(replica.process.pid, signal.SIGSTOP)
            try:
                # Its link cut while it sleeps: what follows never reaches it.
                cluster.ask(primary, "CLIENT", "KILL", "TYPE", "replica")
                for seq in range(21, 31):  # acknowledged, never replicated
                    runner.publish(job, seq, ev(job, seq))
                lost = runner.append(channel, Event({"n": 4}))
                wait_for(lambda: len(live.events) == 30, 10, "the live events")
                cluster.kill(primary)
            finally:
                os.kill(replica.process.pid, signal.SIGCONT)
            cluster.wait_ok()
            for seq in range(31, 41):
                runner.publish(job, seq, ev(job, seq))
            runner.publish(job, 41, ev(job, 41, "complete"), final=True)
            after = runner.append(channel, Event({"n": 5}))
            wait_for(live.closed.is_set, 30, "the live stream's end")
            seqs = [parse_event_id(e.id)[1] for e in live.events if e.id]
            assert seqs == list(range(1, 42)) and not live.of("gap")
            resumed = Collector()
            assert watcher.subscribe(job, resumed, after=15)
            assert [e.event for e in resumed.events][5] == "gap"
            assert resumed.events[5].json()["lostThrough"] == f"{job}-30"
            numbered = [parse_event_id(e.id)[1] for e in resumed.events if e.id]
            assert numbered == [*range(16, 21), *range(31, 42)]
            # The channel: the lost append's number is not given again.
            from flask_sse_flush.channels import parse_channel_event_id

            old, new = parse_channel_event_id(lost)[1], parse_channel_event_id(after)[1]
            assert new.epoch != old.epoch
            follower = Collector()
            watcher.follow(channel, follower, old)
            assert follower.events[0].event == "gap"
            assert [e.json()["n"] for e in follower.events if e.event != "gap"] == [5]
            assert parse_channel_event_id(before[-1])[1].epoch == old.epoch
        finally:
            runner.close()
            watcher.close()


def test_a_job_and_a_channel_whose_slot_moves_go_on_live(redis_prefix: str) -> None:
    """Resharding moves the slot of a live job and channel to another
    primary: the old node unsubscribes the reader (``sunsubscribe``), which
    reads the slots again and listens on the new node; commands follow
    ``MOVED``. The streams get every event once and in order, no gap."""
    from redis.crc import key_slot

    with RedisCluster() as cluster:
        publisher = RedisBroker(cluster.url, prefix=redis_prefix)
        watcher = RedisBroker(cluster.cluster_url, prefix=redis_prefix)
        try:
            publisher.create("moving")
            stream, follower = Collector(), Collector()
            assert watcher.subscribe("moving", stream)
            watcher.follow("moving", follower, watcher.position("moving"))
            for n in range(1, 6):
                publisher.publish("moving", n, ev("moving", n))
                publisher.append("moving", Event({"n": n}))
            wait_for(lambda: len(stream.events) == len(follower.events) == 5, 10, "before")
            slot = key_slot(b"moving")
            source = cluster.primary_of(publisher._store.key("job", "moving"))
            target = next(node for node in cluster.primaries() if node is not source)
            cluster.move_slot(slot, target)
            assert cluster.primary_of(publisher._store.key("job", "moving")) is target
            for n in range(6, 11):
                publisher.publish("moving", n, ev("moving", n))
                publisher.append("moving", Event({"n": n}))
            wait_for(lambda: len(stream.events) == len(follower.events) == 10, 20, "after")
            assert [parse_event_id(e.id)[1] for e in stream.events if e.id] == list(range(1, 11))
            assert [e.json()["n"] for e in follower.events] == list(range(1, 11))
            assert not stream.of("gap") and not follower.of("gap")
        finally:
            publisher.close()
            watcher.close()


def test_a_failover_longer_than_the_lease_ends_no_healthy_job(redis_prefix: str) -> None:
    """The primary holding a quiet job's lease dies; the promotion takes
    longer than the lease, so its runner cannot renew meanwhile. The
    replica's copy of the lease has lapsed when it takes over, yet the
    other worker's keeper must not end the job: it waits until that node
    has answered for a whole lease, and by then the runner has renewed."""
    with RedisCluster() as cluster:
        runner = RedisBroker(cluster.url, prefix=redis_prefix, lease=1.0, outage_timeout=60.0)
        watcher = RedisBroker(cluster.url, prefix=redis_prefix, lease=1.0, outage_timeout=60.0)
        try:
            runner.create("steady")
            runner.publish("steady", 1, ev("steady", 1), change={"state": "running"})
            stream = Collector()
            assert watcher.subscribe("steady", stream)
            cluster.kill(cluster.primary_of(runner._store.key("job", "steady")))
            cluster.wait_ok()
            time.sleep(4.0)  # four leases after the promotion
            assert not stream.of("error"), stream.events
            status = watcher.status("steady")
            assert status is not None and status.state == "running"
            runner.publish("steady", 2, ev("steady", 2, "complete"), final=True)
            wait_for(stream.closed.is_set, 10, "the job's own end")
            assert [e.event for e in stream.events][-1] == "complete"
        finally:
            runner.close()
            watcher.close()
