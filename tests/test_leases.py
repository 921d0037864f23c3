"""Leases: a job whose runner dies ends, once, on every worker; nothing lives for ever.

Real parts: the run's ``redis-server``, and runners in child processes that
the tests kill with ``SIGKILL`` (no graceful stop, no ``atexit``, nothing).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flask_sse_flush import Event
from flask_sse_flush.brokers import RedisBroker
from flask_sse_flush.brokers.base import event_id, parse_event_id
from flask_sse_flush.testing import parse_events
from tests.redis_calls import lua_calls
from tests.timing import assert_under

ROOT = Path(__file__).resolve().parent.parent
LEASE = 1.0
#: What a lapsed lease may take to end its job: the lease, a keeper's round
#: (a third of it), and room for a busy 2-core machine.
DEADLINE = LEASE + 5.0
MESSAGE = "the worker running this job stopped; start it again"


class Collector:
    """A stream stand-in: the events it is sent, and whether it was closed."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.closed = threading.Event()

    def deliver(self, frame: bytes, level: str | None) -> None:
        self.events.extend(parse_events(frame))

    def close(self) -> None:
        self.closed.set()

    def of(self, name: str) -> list[Event]:
        return [e for e in self.events if e.event == name]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture
def brokers(redis_server: Any, redis_prefix: str) -> Iterator[Callable[..., RedisBroker]]:
    made: list[RedisBroker] = []

    def make(**options: Any) -> RedisBroker:
        options.setdefault("lease", LEASE)
        broker = RedisBroker(redis_server.url, prefix=redis_prefix, **options)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


def hand_off(broker: RedisBroker, job_id: str) -> None:
    """What a render blueprint does with a job its executor callable queued."""

    def cancel() -> None:
        pass

    broker.on_cancel(job_id, cancel)
    broker.forget(job_id, cancel)


RUNNER = """
import sys, time
from flask_sse_flush.brokers import RedisBroker
from flask_sse_flush.jobs import RenderJob, run_job

url, prefix, lease, mode, job_id = sys.argv[1:6]
broker = RedisBroker(url, prefix=prefix, lease=float(lease))

def render(payload, progress):
    progress(10, "bundling")
    progress(30, "rendering")
    print("running", flush=True)
    time.sleep(600)  # killed long before

if mode == "web":
    RenderJob(render, {}, broker, job_id=job_id).run()
else:
    run_job(render, job_id, {}, broker)
"""


def start_runner(redis_server: Any, prefix: str, mode: str, job_id: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", RUNNER, redis_server.url, prefix, str(LEASE), mode, job_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if line.strip() != "running":
        kill(child)
        raise AssertionError(f"the runner did not start: {line!r} {child.stderr.read()!r}")
    return child


def kill(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    for pipe in (child.stdout, child.stderr):
        if pipe is not None:
            pipe.close()
    assert child.returncode == -signal.SIGKILL


@pytest.mark.parametrize("mode", ["web", "job-worker"])
def test_a_killed_runner_s_job_ends_once_on_every_worker(
    redis_server: Any, redis_prefix: str, brokers: Callable[..., RedisBroker], mode: str
) -> None:
    job_id = f"lease_{mode.replace('-', '_')}"
    web = brokers()
    if mode == "job-worker":
        # A web worker created it and handed it to a queue.
        web.create(job_id, limit=1)
        hand_off(web, job_id)
    child = start_runner(redis_server, redis_prefix, mode, job_id)
    try:
        others = [brokers(), brokers()]  # two other workers, a stream each
        streams = [Collector(), Collector()]
        for broker, stream in zip(others, streams, strict=True):
            assert broker.subscribe(job_id, stream)
        wait_for(lambda: all(len(s.of("progress")) == 2 for s in streams), 10, "progress")
    finally:
        kill(child)
    killed = time.monotonic()
    took = wait_for(lambda: all(s.of("error") for s in streams), DEADLINE + 5, "the error event")
    assert_under(took, DEADLINE, f"SIGKILL ({mode}) to the error event on 2 brokers, 1 s lease (s)")
    assert took >= LEASE * 0.5, "ended before the lease could lapse"
    time.sleep(LEASE)  # every keeper has had another round: still one error
    for stream in streams:
        (error,) = stream.of("error")
        assert error.json() == {"message": MESSAGE, "retry": True}
        assert error.id == event_id(job_id, 3)  # numbered after the job's last event
        assert [parse_event_id(e.id or "")[1] for e in stream.events] == [1, 2, 3]
        assert stream.closed.is_set()
    assert streams[0].events == streams[1].events  # the same event on every worker
    status = web.status(job_id)
    assert status is not None and status.state == "error" and status.error == MESSAGE
    # Its max_jobs slot is free again.
    web.create(f"{job_id}_next", limit=1)
    assert time.monotonic() - killed < DEADLINE + LEASE + 5


def test_a_live_runner_keeps_its_job_however_long_it_is_quiet(
    brokers: Callable[..., RedisBroker],
) -> None:
    runner, other = brokers(), brokers()
    runner.create("quiet")
    runner.publish("quiet", 1, Event({"progress": 1}, event="progress", id="quiet-1"))
    stream = Collector()
    assert other.subscribe("quiet", stream)
    time.sleep(LEASE * 4)  # no event for four leases: the runner's keeper renews it
    assert stream.of("error") == []
    status = other.status("quiet")
    assert status is not None and not status.ended
    runner.publish(
        "quiet",
        2,
        Event({"filename": "a.mp4", "url": "/a.mp4"}, event="complete", id="quiet-2"),
        change={"state": "complete", "result": {"filename": "a.mp4", "url": "/a.mp4"}},
        final=True,
    )
    wait_for(lambda: bool(stream.of("complete")), 10, "the complete event")
    assert stream.of("error") == []


def test_a_queued_job_waits_its_queue_timeout_then_ends(
    brokers: Callable[..., RedisBroker],
) -> None:
    web = brokers(queue_timeout=3.0)
    web.create("queued", limit=1)
    hand_off(web, "queued")  # to a queue that nobody reads
    stream = Collector()
    watcher = brokers()
    assert watcher.subscribe("queued", stream)
    time.sleep(LEASE * 2)  # past the lease: a queued job has the queue's
    assert stream.events == []
    wait_for(lambda: bool(stream.of("error")), 3.0 + DEADLINE, "the queued job's end")
    assert stream.of("error")[0].json()["retry"] is True


def test_a_closed_broker_s_keeper_has_ended(brokers: Callable[..., RedisBroker]) -> None:
    broker = brokers()
    broker.create("keeper")
    before = {t.name for t in threading.enumerate()}
    assert "flask-sse-flush redis leases" in before
    broker.close()
    after = {t.name for t in threading.enumerate()}
    assert "flask-sse-flush redis leases" not in after


def pttls(redis_server: Any, prefix: str) -> dict[str, int]:
    import redis

    if hasattr(redis_server, "nodes"):  # a cluster: its keys are on every primary
        client = redis.RedisCluster.from_url(redis_server.url)
    else:
        client = redis.Redis.from_url(redis_server.url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        return {key.decode(): client.pttl(key) for key in keys}
    finally:
        client.close()


def test_no_key_is_ever_without_a_lifetime(
    redis_server: Any, redis_prefix: str, brokers: Callable[..., RedisBroker]
) -> None:
    def check(stage: str) -> None:
        found = pttls(redis_server, redis_prefix)
        assert found, stage
        forever = {key: ttl for key, ttl in found.items() if ttl < 0}
        assert forever == {}, f"{stage}: keys without a TTL: {json.dumps(forever)}"

    runner = brokers(retention=30.0)
    runner.create("ttl", limit=5, owner="ann", owner_limit=2)
    check("queued")
    stream = Collector()
    runner.subscribe("ttl", stream)
    runner.update("ttl", {"state": "running"})
    for n in range(1, 8):
        runner.publish("ttl", n, Event({"progress": n}, event="progress", id=f"ttl-{n}"))
    check("running and streaming")
    runner.cancel("ttl")
    check("cancelled")
    runner.publish(
        "ttl", 8, Event({"message": "x"}, event="error", id="ttl-8"), change={"state": "error"},
        final=True,
    )  # fmt: skip
    check("ended")
    runner.append("news", Event({"n": 1}))
    check("a channel")


def test_lease_options_are_checked(redis_server: Any) -> None:
    for bad in ({"lease": 0}, {"lease": -1.0}, {"queue_timeout": 0}):
        with pytest.raises(ValueError, match="must be a positive number of seconds"):
            RedisBroker(redis_server.url, **bad)


def test_a_job_whose_end_could_not_be_stored_ends_once_redis_answers(
    brokers: Callable[..., RedisBroker],
) -> None:
    """The render returned but its terminal event was refused (Redis away past
    ``outage_timeout``): the process runs the job no more, so its lease lapses
    and a worker ends it, instead of it staying ``running`` for ever."""
    from flask_sse_flush import BrokerUnavailable
    from flask_sse_flush.jobs import RenderJob

    class RefusesTheEnd(RedisBroker):
        def publish(self, job_id: str, seq: int, event: Event, **options: Any) -> None:
            if options.get("final"):
                raise BrokerUnavailable("Redis is away")
            super().publish(job_id, seq, event, **options)

    runner = RefusesTheEnd(brokers().url, prefix=brokers().prefix, lease=LEASE)
    try:
        job = RenderJob(lambda payload, progress: {"filename": "a", "url": "/a"}, {}, runner)
        job.run()
        watcher = brokers()
        stream = Collector()
        assert watcher.subscribe(job.id, stream)
        wait_for(lambda: bool(stream.of("error")), DEADLINE, "the lapsed job's end")
        status = watcher.status(job.id)
        assert status is not None and status.state == "error"
    finally:
        runner.close()


WATCHER = """
import sys, time
from flask_sse_flush.brokers import RedisBroker

url, prefix, lease, job_id = sys.argv[1:5]
broker = RedisBroker(url, prefix=prefix, lease=float(lease))

class Stream:
    def deliver(self, frame, level):
        pass

    def close(self):
        pass

assert broker.subscribe(job_id, Stream())
print("attached", flush=True)
time.sleep(600)  # killed long before
"""


def test_a_dead_worker_s_streams_stop_counting(
    redis_server: Any, redis_prefix: str, brokers: Callable[..., RedisBroker]
) -> None:
    """What ``on_disconnect="cancel"`` decides with: the job's live clients."""
    runner = brokers()
    runner.create("watched")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", WATCHER, redis_server.url, redis_prefix, str(LEASE), "watched"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "attached", child.stderr.read()
        here = brokers()
        stream = Collector()
        assert here.subscribe("watched", stream)
        assert here.subscribers("watched") == 2
        time.sleep(LEASE * 2)  # a live process keeps its streams counted
        assert here.subscribers("watched") == 2
    finally:
        kill(child)
    wait_for(lambda: here.subscribers("watched") == 1, DEADLINE, "the dead worker's stream")
    assert here.unsubscribe("watched", stream) == 0  # the last live client left


def test_an_outage_longer_than_the_lease_ends_no_healthy_job() -> None:
    """Redis away for twice the lease: when it answers again the keepers
    renew before any of them looks for lapsed leases."""
    from flask_sse_flush.testing import RedisServer

    with RedisServer() as server:
        runner = RedisBroker(server.url, prefix="outage:", lease=LEASE)
        watcher = RedisBroker(server.url, prefix="outage:", lease=LEASE)
        try:
            runner.create("through")
            runner.publish("through", 1, Event({"progress": 1}, event="progress", id="through-1"))
            stream = Collector()
            assert watcher.subscribe("through", stream)
            time.sleep(LEASE)  # the keepers have had their rounds
            server.restart(down=LEASE * 2)
            time.sleep(LEASE * 3)  # every keeper is back, and has looked
            assert stream.of("error") == []
            status = watcher.status("through")
            assert status is not None and not status.ended
            complete = Event({"filename": "a", "url": "/a"}, event="complete", id="through-2")
            runner.publish("through", 2, complete, change={"state": "complete"}, final=True)
            wait_for(lambda: bool(stream.of("complete")), 10, "the complete event")
            assert stream.of("error") == []
        finally:
            runner.close()
            watcher.close()


def test_a_queued_job_s_keys_outlive_its_queue_lease(
    redis_server: Any, redis_prefix: str, brokers: Callable[..., RedisBroker]
) -> None:
    web = brokers()  # the default queue_timeout: 600 s
    web.create("waiting", limit=1)
    hand_off(web, "waiting")

    def lifetime() -> int:
        return pttls(redis_server, redis_prefix).get(web._store.key("job", "waiting"), -1)

    wait_for(lambda: lifetime() > 600_000, 5, "the queue lease's lifetime")


def test_an_ended_job_stays_ended_when_a_job_worker_starts_it(
    brokers: Callable[..., RedisBroker],
) -> None:
    """A job worker's "running" that comes after a lapsed lease ended the job."""
    broker = brokers()
    broker.create("late")
    broker.publish(
        "late", 1, Event({"message": "gone"}, event="error", id="late-1"),
        change={"state": "error", "error": "gone"}, final=True,
    )  # fmt: skip
    status = broker.update("late", {"state": "running"})
    assert status.ended and status.state == "error"


def test_a_late_keeper_s_streams_count_again(
    redis_server: Any, redis_prefix: str, brokers: Callable[..., RedisBroker]
) -> None:
    runner, late, other = brokers(), brokers(), brokers()
    runner.create("counted")
    assert late.subscribe("counted", Collector())
    assert other.subscribe("counted", Collector())
    assert other.subscribers("counted") == 2
    # Its presence lapsed (its keeper was late).
    other._connect().hset(other._store.key("job", "counted"), f"p:{late._store.process}", 0)
    assert other.subscribers("counted") == 1
    # Its keeper's next round: counted again, nothing forgotten.
    wait_for(lambda: other.subscribers("counted") == 2, 5, "the late process's streams")


def test_a_count_redis_holds_wrong_is_put_right_by_the_next_round(
    brokers: Callable[..., RedisBroker],
) -> None:
    """Each process writes its whole count of a job's streams, never a change
    to it: a write that never landed (Redis away, every pooled connection
    busy) leaves nothing wrong past the keeper's next round."""
    runner, here = brokers(), brokers()
    runner.create("recount")
    for _ in range(3):
        assert here.subscribe("recount", Collector())
    assert runner.subscribers("recount") == 3
    # As a decrement that never reached Redis would have left it.
    here._connect().hset(here._store.key("job", "recount"), f"s:{here._store.process}", 40)
    wait_for(lambda: runner.subscribers("recount") == 3, DEADLINE, "the count written whole")


def test_a_job_s_end_uncounts_its_streams(brokers: Callable[..., RedisBroker]) -> None:
    """Streams a job's end closes are counted no more, without their clients'
    unsubscribe: nothing of them is renewed afterwards."""
    runner, here = brokers(), brokers()
    runner.create("ends")
    streams = [Collector(), Collector()]
    for stream in streams:
        assert here.subscribe("ends", stream)
    assert runner.subscribers("ends") == 2
    complete = Event({"filename": "a", "url": "/a"}, event="complete", id=event_id("ends", 1))
    runner.publish("ends", 1, complete, change={"state": "complete"}, final=True)
    wait_for(lambda: all(s.closed.is_set() for s in streams), 10, "the streams' end")
    wait_for(lambda: runner.subscribers("ends") == 0, DEADLINE, "the ended job's streams")
    fields = here._connect().hgetall(here._store.key("job", "ends"))
    assert f"s:{here._store.process}".encode() not in fields
    time.sleep(LEASE)  # keeper rounds: none brings them back
    assert runner.subscribers("ends") == 0


def test_writes_of_a_count_that_cross_keep_the_newest(brokers: Callable[..., RedisBroker]) -> None:
    """Two writes of one process's count on two pooled connections may land in
    either order: Redis keeps the later one's."""
    broker = brokers()
    broker.create("crossed")
    store = broker._store
    assert store.set_subscribers("crossed", 5, version=10) == 5
    assert store.set_subscribers("crossed", 2, version=9) == 5  # sent first, landed last
    assert store.set_subscribers("crossed", 0, version=11) == 0
    assert store.set_subscribers("crossed", 7, version=10) == 0  # never brings a count back
    assert store.set_subscribers("crossed", 1, version=12) == 1
    assert store.subscribers("crossed") == 1


def test_streams_that_leave_together_write_their_count_a_few_times(
    redis_server: Any, brokers: Callable[..., RedisBroker]
) -> None:
    """A crowd of a job's streams ending at once (a deploy, a network blip):
    the count reaches 0 exactly, and the disconnect policy still sees the last
    one leave, in far fewer writes than there were streams."""
    streams = 200
    # Keepers that sweep once in a while: the calls counted are the crowd's.
    runner, here = brokers(lease=60), brokers(lease=60, max_connections=3)
    runner.create("crowd")
    crowd = [Collector() for _ in range(streams)]
    for stream in crowd:
        assert here.subscribe("crowd", stream)
    assert runner.subscribers("crowd") == streams
    barrier = threading.Barrier(streams)
    remaining: list[int] = []

    def leave(stream: Collector) -> None:
        barrier.wait()
        remaining.append(here.unsubscribe("crowd", stream))

    before = lua_calls(redis_server.url)
    threads = [threading.Thread(target=leave, args=(stream,)) for stream in crowd]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    calls = lua_calls(redis_server.url) - before
    assert len(remaining) == streams
    assert remaining.count(0) == 1  # the last to leave, and only it, sees none left
    assert runner.subscribers("crowd") == 0
    # One write per stream before; the keepers' rounds add a few.
    assert calls < streams / 4, f"{calls} script calls for {streams} streams leaving"
