"""The ``Broker`` contract, written once and run against every broker.

:class:`BrokerContract` uses only the public protocol, so a Redis broker
keeps the same promises by subclassing it with its own ``make_broker``.
Tests that look inside one broker live in that broker's subclass.
"""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from flask_sse_flush import (
    BrokerUnavailable,
    Event,
    JobEnded,
    StreamClosed,
    TooManyJobs,
    UnknownJob,
)
from flask_sse_flush.brokers import Broker, MemoryBroker, RedisBroker, event_id, parse_event_id
from flask_sse_flush.testing import RedisServer, free_port, parse_events
from tests.timing import assert_under

TIMEOUT = 10.0


class Collector:
    """A subscriber that records what it is sent; thread-safe enough for lists."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.closed = threading.Event()
        self.sent_after_close = 0
        # Events sent from the thread that made the subscriber: the replay
        # inside subscribe(), as opposed to live events from a publisher.
        self.owner = threading.get_ident()
        self.replayed = 0

    def deliver(self, frame: bytes, level: str | None) -> None:
        if self.closed.is_set():
            self.sent_after_close += 1
        if threading.get_ident() == self.owner:
            self.replayed += 1
        (event,) = parse_events(frame)
        assert level == ("progress" if event.event == "progress" else None)
        # As published: JSON data back as objects, so events compare equal.
        data = event.json() if event.text.startswith(("{", "[")) else event.data
        self.events.append(Event(data, event=event.event, id=event.id))

    def close(self) -> None:
        self.closed.set()

    @property
    def seqs(self) -> list[int]:
        return [parse_event_id(e.id)[1] for e in self.events if e.id is not None]


class Gone:
    """A subscriber whose client has left: every ``send`` raises StreamClosed."""

    def __init__(self) -> None:
        self.calls = 0
        self.closed = False

    def deliver(self, frame: bytes, level: str | None) -> None:
        self.calls += 1
        raise StreamClosed("the client left")

    def close(self) -> None:
        self.closed = True


def ev(job_id: str, seq: int, name: str = "progress", data: Any = None) -> Event:
    return Event({"n": seq} if data is None else data, event=name, id=event_id(job_id, seq))


def until(condition: Any, timeout: float = TIMEOUT) -> None:
    """Wait for ``condition()``: a broker may deliver live events from another thread.

    The memory broker delivers inside ``publish``, so its checks pass at
    once; the Redis broker's reader delivers a moment later.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.002)


class BrokerContract:
    """Promises every broker keeps; subclass and implement :meth:`make_broker`."""

    def make_broker(self, **kwargs: Any) -> Broker:
        raise NotImplementedError

    # -- create / status -----------------------------------------------------

    def test_create_starts_a_queued_job(self) -> None:
        broker = self.make_broker()
        created = broker.create("job")
        assert created.id == "job"
        assert created.state == "queued"
        status = broker.status("job")
        assert status is not None
        assert (status.state, status.progress, status.phase) == ("queued", None, None)
        assert (status.result, status.error) == (None, None)
        assert (status.last_seq, status.final_seq) == (0, None)
        assert not status.ended

    def test_create_refuses_a_taken_id(self) -> None:
        broker = self.make_broker()
        broker.create("job")
        broker.publish("job", 1, ev("job", 1))
        with pytest.raises(ValueError):
            broker.create("job")
        status = broker.status("job")
        assert status is not None and status.last_seq == 1  # the first job is intact

    @pytest.mark.parametrize(
        "job_id", ["", "a b", "x-y", "a\nb", "a/b", "é", "a" * 129, "job-1", "a\x00"]
    )
    def test_create_refuses_an_id_that_cannot_name_a_job(self, job_id: str) -> None:
        broker = self.make_broker()
        with pytest.raises(ValueError):
            broker.create(job_id)
        if job_id:
            assert broker.status(job_id) is None

    @pytest.mark.parametrize("job_id", ["a", "a" * 128, "Job_1.2:3", "0"])
    def test_create_accepts_ids_made_of_letters_digits_and_punctuation(self, job_id: str) -> None:
        broker = self.make_broker()
        broker.create(job_id)
        assert broker.status(job_id) is not None
        assert parse_event_id(event_id(job_id, 7)) == (job_id, 7)

    def test_unknown_job(self) -> None:
        broker = self.make_broker()
        broker.create("known")
        assert broker.status("unknown") is None
        assert broker.subscribe("unknown", Collector()) is False
        assert broker.cancel("unknown") is False
        assert broker.unsubscribe("unknown", Collector()) == 0

    # -- publish / update ----------------------------------------------------

    def test_publish_applies_change_and_counts_events(self) -> None:
        broker = self.make_broker()
        broker.create("job")
        broker.update("job", {"state": "running"})
        broker.publish("job", 1, ev("job", 1), change={"progress": 5, "phase": "bundling"})
        status = broker.status("job")
        assert status is not None
        assert (status.state, status.progress, status.phase) == ("running", 5, "bundling")
        assert (status.last_seq, status.final_seq) == (1, None)
        # An event without a change moves only last_seq.
        broker.publish("job", 2, ev("job", 2, "note", "hello"))
        status = broker.status("job")
        assert status is not None
        assert (status.progress, status.phase, status.last_seq) == (5, "bundling", 2)
        broker.publish(
            "job",
            3,
            ev("job", 3, "complete", {"url": "u"}),
            change={"state": "complete", "result": {"url": "u"}},
            final=True,
        )
        status = broker.status("job")
        assert status is not None
        assert status.ended
        assert (status.state, status.last_seq, status.final_seq) == ("complete", 3, 3)
        assert status.to_json() == {
            "id": "job",
            "state": "complete",
            "progress": 5,
            "phase": "bundling",
            "result": {"url": "u"},
            "error": None,
        }

    def test_update_changes_status_without_an_event(self) -> None:
        broker = self.make_broker()
        broker.create("job")
        subscriber = Collector()
        broker.subscribe("job", subscriber)
        updated = broker.update("job", {"state": "running", "phase": "warming up"})
        assert (updated.state, updated.phase, updated.last_seq) == ("running", "warming up", 0)
        assert broker.status("job") == updated
        assert subscriber.events == []

    def test_publish_after_the_final_event_is_refused(self) -> None:
        broker = self.make_broker()
        broker.create("job")
        broker.publish("job", 1, ev("job", 1, "error", {"message": "x"}), final=True)
        with pytest.raises(JobEnded):
            broker.publish("job", 2, ev("job", 2))
        status = broker.status("job")
        assert status is not None and (status.last_seq, status.final_seq) == (1, 1)
        late = Collector()
        broker.subscribe("job", late)
        assert late.seqs == [1]

    def test_a_broken_subscriber_costs_the_others_nothing(self) -> None:
        broker = self.make_broker()
        broker.create("job")

        class Broken:
            def deliver(self, frame: bytes, level: str | None) -> None:
                raise RuntimeError("a bug in a custom subscriber")

            def close(self) -> None:
                raise RuntimeError("and in its close")

        before, after = Collector(), Collector()
        for subscriber in (before, Broken(), after):
            broker.subscribe("job", subscriber)
        broker.publish("job", 1, ev("job", 1))
        broker.publish("job", 2, ev("job", 2, "complete", {}), final=True)
        until(lambda: before.closed.is_set() and after.closed.is_set())
        assert before.seqs == after.seqs == [1, 2]

    def test_a_slow_delivery_holds_up_no_subscribe_leave_or_cancel(self) -> None:
        # A publisher fanning out to many streams (here: one slow one) must not
        # hold a lock that a hub greenlet attaching, leaving or cancelling waits on.
        broker = self.make_broker()
        broker.create("job")
        entered, release = threading.Event(), threading.Event()

        class Slow:
            def deliver(self, frame: bytes, level: str | None) -> None:
                entered.set()
                release.wait(5)

            def close(self) -> None:
                pass

        broker.subscribe("job", Slow())
        publisher = threading.Thread(target=lambda: broker.publish("job", 1, ev("job", 1)))
        publisher.start()
        try:
            assert entered.wait(5)
            started = time.monotonic()
            other = Collector()
            assert broker.subscribe("job", other)
            broker.unsubscribe("job", other)
            assert broker.status("job") is not None
            assert broker.cancel("job")
            took = time.monotonic() - started
        finally:
            release.set()
            publisher.join(5)
        assert took < 1.0, f"held up {took:.2f} s behind a delivery"
        assert other.seqs == [1]  # replayed from the log, exactly once

    # -- subscribe / replay ----------------------------------------------------

    def test_subscribe_from_the_start_replays_then_goes_live(self) -> None:
        broker = self.make_broker()
        broker.create("job")
        for seq in (1, 2, 3):
            broker.publish("job", seq, ev("job", seq))
        subscriber = Collector()
        assert broker.subscribe("job", subscriber, after=0) is True
        assert subscriber.seqs == [1, 2, 3]
        broker.publish("job", 4, ev("job", 4, "note", "live"))
        until(lambda: len(subscriber.seqs) >= 4)
        assert subscriber.seqs == [1, 2, 3, 4]
        assert subscriber.events[-1] == ev("job", 4, "note", "live")
        assert not subscriber.closed.is_set()

    @pytest.mark.parametrize("after", [0, 1, 2, 4, 5, 9])
    def test_subscribe_after_replays_only_later_events(self, after: int) -> None:
        broker = self.make_broker()
        broker.create("job")
        for seq in range(1, 6):
            broker.publish("job", seq, ev("job", seq, "note"))
        subscriber = Collector()
        assert broker.subscribe("job", subscriber, after=after)
        assert subscriber.seqs == [seq for seq in range(1, 6) if seq > after]
        broker.publish("job", 6, ev("job", 6, "note"))
        until(lambda: subscriber.seqs[-1:] == [6])
        assert subscriber.seqs.count(6) == 1

    def test_replayed_events_are_the_published_ones(self) -> None:
        broker = self.make_broker()
        broker.create("job")
        published = [
            ev("job", 1, "progress", {"progress": 1, "phase": "a"}),
            ev("job", 2, "note", "line one\nline two"),
            ev("job", 3, "complete", {"filename": "f", "url": "u"}),
        ]
        for seq, event in enumerate(published, 1):
            broker.publish("job", seq, event, final=seq == 3)
        subscriber = Collector()
        broker.subscribe("job", subscriber)
        assert [e.encode() for e in subscriber.events] == [e.encode() for e in published]

    def test_final_event_closes_subscribers(self) -> None:
        broker = self.make_broker()
        broker.create("job")
        subscribers = [Collector() for _ in range(3)]
        for subscriber in subscribers:
            broker.subscribe("job", subscriber)
        broker.publish("job", 1, ev("job", 1))
        broker.publish("job", 2, ev("job", 2, "complete", {}), final=True)
        until(lambda: all(subscriber.closed.is_set() for subscriber in subscribers))
        for subscriber in subscribers:
            assert subscriber.seqs == [1, 2]
            assert subscriber.closed.is_set()
            assert subscriber.sent_after_close == 0

    def test_subscribe_to_an_ended_job_replays_then_closes(self) -> None:
        broker = self.make_broker()
        broker.create("job")
        broker.publish("job", 1, ev("job", 1))
        broker.publish("job", 2, ev("job", 2, "complete", {}), final=True)
        everything, tail, nothing = Collector(), Collector(), Collector()
        assert broker.subscribe("job", everything, after=0)
        assert broker.subscribe("job", tail, after=1)
        assert broker.subscribe("job", nothing, after=2)
        assert (everything.seqs, tail.seqs, nothing.seqs) == ([1, 2], [2], [])
        for subscriber in (everything, tail, nothing):
            assert subscriber.closed.is_set()
            assert subscriber.sent_after_close == 0

    def test_unsubscribe_returns_how_many_are_left(self) -> None:
        broker = self.make_broker()
        broker.create("job")
        a, b, c = Collector(), Collector(), Collector()
        for subscriber in (a, b, c):
            broker.subscribe("job", subscriber)
        assert broker.unsubscribe("job", b) == 2
        assert broker.unsubscribe("job", b) == 2  # not attached any more
        assert broker.unsubscribe("job", Collector()) == 2
        broker.publish("job", 1, ev("job", 1))
        until(lambda: a.seqs == c.seqs == [1])
        assert b.seqs == []
        assert broker.unsubscribe("job", a) == 1
        assert broker.unsubscribe("job", c) == 0

    def test_a_subscriber_that_has_gone_is_dropped(self) -> None:
        broker = self.make_broker()
        broker.create("job")
        before, gone, after = Collector(), Gone(), Collector()
        for subscriber in (before, gone, after):
            broker.subscribe("job", subscriber)
        broker.publish("job", 1, ev("job", 1))  # must not raise
        until(lambda: before.seqs == after.seqs == [1] and gone.calls == 1)
        until(lambda: broker.unsubscribe("job", gone) == 2)  # forgotten
        broker.publish("job", 2, ev("job", 2))
        until(lambda: before.seqs == after.seqs == [1, 2])
        assert gone.calls == 1  # forgotten after its first StreamClosed
        broker.publish("job", 3, ev("job", 3, "complete", {}), final=True)
        until(lambda: before.closed.is_set() and after.closed.is_set())
        assert gone.calls == 1

    def test_a_subscriber_that_is_gone_during_replay_is_not_attached(self) -> None:
        broker = self.make_broker()
        broker.create("job")
        broker.publish("job", 1, ev("job", 1))
        gone = Gone()
        broker.subscribe("job", gone)  # must not raise
        broker.publish("job", 2, ev("job", 2))
        assert gone.calls == 1
        assert broker.unsubscribe("job", gone) == 0

    def test_fan_out_to_many_subscribers(self) -> None:
        broker = self.make_broker()
        broker.create("job")
        subscribers = [Collector() for _ in range(20)]
        for subscriber in subscribers:
            broker.subscribe("job", subscriber)

        def publish_all() -> None:
            for seq in range(1, 200):
                broker.publish("job", seq, ev("job", seq, "progress" if seq % 3 else "note"))
            broker.publish("job", 200, ev("job", 200, "complete", {}), final=True)

        publisher = threading.Thread(target=publish_all)
        publisher.start()
        publisher.join(TIMEOUT)
        assert not publisher.is_alive()
        until(lambda: all(subscriber.closed.is_set() for subscriber in subscribers))
        expected = [ev("job", seq, "progress" if seq % 3 else "note") for seq in range(1, 200)]
        for subscriber in subscribers:
            assert subscriber.closed.is_set()
            assert subscriber.events[:-1] == expected
            assert subscriber.events[-1].event == "complete"
            assert subscriber.seqs == list(range(1, 201))

    def test_resubscribing_while_publishing_misses_and_repeats_nothing(self) -> None:
        # Each client reconnects at random moments with after = the last id
        # it saw, as EventSource does with Last-Event-ID. Every client must
        # see 1..N exactly once, in order, however the attach races publish.
        total = 2000
        broker = self.make_broker(max_events=total + 10)
        broker.create("job")
        errors: list[BaseException] = []

        def publish_all() -> None:
            try:
                pacing = random.Random(1)
                for seq in range(1, total):
                    broker.publish("job", seq, ev("job", seq, "note"))
                    if pacing.random() < 0.05:
                        time.sleep(0.0005)
                broker.publish("job", total, ev("job", total, "complete", {}), final=True)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        seen: list[list[int]] = [[] for _ in range(8)]
        attaches = [0] * len(seen)
        replayed = [0] * len(seen)

        def client(index: int) -> None:
            try:
                rng = random.Random(100 + index)
                # A guard against a hang, not a speed bound: 2,000 publishes
                # and thousands of attaches take ~6 s on an idle 2-core
                # machine, and several times that under load.
                deadline = time.monotonic() + 6 * TIMEOUT
                while time.monotonic() < deadline:
                    connection = Collector()
                    after = seen[index][-1] if seen[index] else 0
                    attaches[index] += 1
                    assert broker.subscribe("job", connection, after=after)
                    time.sleep(rng.random() * 0.002)  # connected for a while
                    broker.unsubscribe("job", connection)
                    seen[index].extend(connection.seqs)
                    replayed[index] += connection.replayed
                    if connection.closed.is_set():
                        return
                    time.sleep(rng.random() * 0.002)  # away: events pile up to replay
                errors.append(TimeoutError(f"client {index} never saw the end"))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(seen))]
        threads.append(threading.Thread(target=publish_all))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(6 * TIMEOUT + 5)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        for index, seqs in enumerate(seen):
            assert seqs == list(range(1, total + 1)), f"client {index}"
        # The clients really did reconnect, and got missed events replayed.
        assert sum(attaches) > 3 * len(seen)
        assert sum(replayed) > 0

    # -- admission and the log's bound ---------------------------------------------

    def test_create_refuses_a_job_past_the_limit_until_one_ends(self) -> None:
        broker = self.make_broker()
        broker.create("a", limit=2)
        broker.create("b", limit=2)
        with pytest.raises(TooManyJobs) as refused:
            broker.create("c", limit=2)
        assert refused.value.retry_after > 0
        assert broker.status("c") is None
        broker.create("c", limit=3)  # a higher limit admits it
        broker.publish("a", 1, ev("a", 1, "complete", {}), final=True)
        broker.create("d", limit=3)  # a's slot is free again

    def test_what_the_bound_dropped_is_known_without_a_status_read_in_between(self) -> None:
        broker = self.make_broker(max_events=5)
        broker.create("job")
        for seq in range(1, 13):
            broker.publish("job", seq, ev("job", seq, "note"))
        late = Collector()  # no status() read before: the subscribe itself must know
        broker.subscribe("job", late, after=2)
        assert late.events[0].event == "gap"
        # A publish that changes the status keeps what earlier ones noted.
        broker.publish("job", 13, ev("job", 13, "note"))
        progress = ev("job", 14, "progress", {"progress": 5})
        broker.publish("job", 14, progress, change={"progress": 5})
        status = broker.status("job")
        assert status is not None
        assert (status.last_seq, status.lost_through, status.progress) == (14, 9, 5)

    def test_a_replay_past_what_the_bound_dropped_starts_with_a_gap_event(self) -> None:
        broker = self.make_broker(max_events=5)
        broker.create("job")
        for seq in range(1, 13):
            broker.publish("job", seq, ev("job", seq, "note"))
        status = broker.status("job")
        assert status is not None and status.lost_through == 7
        late = Collector()
        broker.subscribe("job", late, after=2)
        gap, *rest = late.events
        assert gap.event == "gap" and gap.id is None
        assert gap.json()["after"] == "job-2"
        assert gap.json()["lostThrough"] == "job-7"
        assert gap.json()["job"]["id"] == "job"
        assert [parse_event_id(e.id)[1] for e in rest if e.id] == [8, 9, 10, 11, 12]
        # A client that has everything the log still holds gets no gap.
        current = Collector()
        broker.subscribe("job", current, after=9)
        assert current.seqs == [10, 11, 12]
        assert all(e.event == "note" for e in current.events)

    # -- cancel ----------------------------------------------------------------

    def test_cancel_runs_the_callbacks_once(self) -> None:
        broker = self.make_broker()
        broker.create("job")
        calls: list[str] = []
        broker.on_cancel("job", lambda: calls.append("a"))
        broker.on_cancel("job", lambda: calls.append("b"))
        assert calls == []
        assert broker.cancel("job") is True
        assert sorted(calls) == ["a", "b"]
        broker.cancel("job")  # asking again does not stop it twice
        assert sorted(calls) == ["a", "b"]

    def test_on_cancel_after_cancel_runs_at_once(self) -> None:
        broker = self.make_broker()
        broker.create("job")
        assert broker.cancel("job")
        calls: list[int] = []
        broker.on_cancel("job", lambda: calls.append(1))
        assert calls == [1]

    def test_cancel_of_an_ended_job_is_refused(self) -> None:
        broker = self.make_broker()
        broker.create("job")
        calls: list[int] = []
        broker.on_cancel("job", lambda: calls.append(1))
        broker.publish(
            "job", 1, ev("job", 1, "complete", {}), change={"state": "complete"}, final=True
        )
        assert broker.cancel("job") is False
        assert calls == []
        status = broker.status("job")
        assert status is not None and status.ended

    def test_cancel_is_per_job(self) -> None:
        broker = self.make_broker()
        broker.create("a")
        broker.create("b")
        calls: list[str] = []
        broker.on_cancel("a", lambda: calls.append("a"))
        broker.on_cancel("b", lambda: calls.append("b"))
        assert broker.cancel("b")
        assert calls == ["b"]


class TestRedisBroker(BrokerContract):
    """The same promises from Redis: one broker per test, under a prefix of its own."""

    @pytest.fixture(autouse=True)
    def _redis(self, redis_server: RedisServer, redis_prefix: str) -> Iterator[None]:
        self.server = redis_server
        self.prefix = redis_prefix
        self.brokers: list[RedisBroker] = []
        yield
        for broker in self.brokers:
            broker.close()

    def make_broker(self, **kwargs: Any) -> RedisBroker:
        broker = RedisBroker(self.server.url, prefix=self.prefix, **kwargs)
        self.brokers.append(broker)
        return broker

    def test_two_workers_share_one_store(self) -> None:
        # Two brokers are two processes' views: a job started by one streams,
        # resumes, reports and cancels through the other.
        one, two = self.make_broker(), self.make_broker()
        one.create("job")
        calls: list[int] = []
        one.on_cancel("job", lambda: calls.append(1))
        one.publish("job", 1, ev("job", 1), change={"state": "running", "progress": 1})
        watcher = Collector()
        assert two.subscribe("job", watcher)
        one.publish("job", 2, ev("job", 2))
        until(lambda: watcher.seqs == [1, 2])
        status = two.status("job")
        assert status is not None and (status.state, status.progress) == ("running", 1)
        assert two.subscribers("job") == 1
        assert two.cancel("job")
        until(lambda: calls == [1])  # reached the job's own process
        one.publish("job", 3, ev("job", 3, "error", {"message": "cancelled"}), final=True)
        until(watcher.closed.is_set)
        assert watcher.seqs == [1, 2, 3]

    def test_a_pool_with_no_connection_free_is_not_an_outage(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        # Redis answers; this process's one pooled connection is taken.
        broker = self.make_broker(max_connections=1, request_timeout=0.3)
        broker.create("job")
        pool = broker._connect().connection_pool
        try:
            taken = pool.get_connection()
        except TypeError:  # redis-py before 5.3 wants a command's name
            taken = pool.get_connection("PING")
        try:
            with (
                caplog.at_level(logging.WARNING, logger="flask_sse_flush"),
                pytest.raises(BrokerUnavailable, match=r"every connection .* is busy"),
            ):
                broker.status("job")
        finally:
            pool.release(taken)
        assert "1 Redis connections stayed busy for 0.3 s" in caplog.text
        assert "unreachable" not in caplog.text
        assert broker.status("job") is not None  # free again

    def test_close_ends_the_reader_before_it_returns(self) -> None:
        before = set(threading.enumerate())
        broker = self.make_broker()
        broker.create("job")
        watcher = Collector()
        broker.subscribe("job", watcher)
        broker.publish("job", 1, ev("job", 1))
        until(lambda: watcher.seqs == [1])  # live: the reader runs
        assert [t for t in threading.enumerate() if t not in before]
        broker.close()
        assert [t for t in threading.enumerate() if t not in before] == []

    def test_close_ends_a_reader_waiting_to_reconnect(self) -> None:
        # Nothing listens there: the reader retries with a backoff (up to 1 s).
        before = set(threading.enumerate())
        broker = RedisBroker(f"redis://127.0.0.1:{free_port()}/0", request_timeout=0.2)
        with pytest.raises(BrokerUnavailable):
            broker.on_cancel("job", lambda: None)  # wants the cancel channel: starts the reader
        time.sleep(2.0)  # into the longest waits of its backoff
        assert [t for t in threading.enumerate() if t not in before]
        started = time.monotonic()
        broker.close()
        assert [t for t in threading.enumerate() if t not in before] == []
        assert_under(time.monotonic() - started, 0.5, "close() with the reader reconnecting (s)")

    def test_a_retried_publish_is_stored_once(self) -> None:
        broker = self.make_broker()
        broker.create("job")
        watcher = Collector()
        broker.subscribe("job", watcher)
        for seq in (1, 2, 2, 1, 3):  # a reply lost, the publish sent again
            broker.publish("job", seq, ev("job", seq))
        until(lambda: watcher.seqs[-1:] == [3])
        assert watcher.seqs == [1, 2, 3]
        late = Collector()
        broker.subscribe("job", late)
        assert late.seqs == [1, 2, 3]

    def test_the_keys_expire_after_the_retention(self) -> None:
        broker = self.make_broker(retention=0.3)
        broker.create("job")
        broker.publish("job", 1, ev("job", 1, "complete", {}), final=True)
        assert broker.status("job") is not None
        until(lambda: broker.status("job") is None, timeout=5)
        assert broker.subscribe("job", Collector()) is False
        assert list(broker._connect().scan_iter(match=f"{self.prefix}*")) == []

    def test_zero_retention_forgets_an_ended_job_at_once(self) -> None:
        broker = self.make_broker(retention=0.0)
        broker.create("job")
        broker.publish("job", 1, ev("job", 1, "complete", {}), final=True)
        assert broker.status("job") is None

    def test_a_store_that_lost_a_running_job_is_rebuilt_with_a_gap(self) -> None:

        broker = self.make_broker()
        broker.create("job")
        watcher = Collector()
        broker.subscribe("job", watcher)
        for seq in (1, 2):
            broker.publish("job", seq, ev("job", seq, "note"))
        until(lambda: watcher.seqs == [1, 2])
        broker._connect().delete(broker._store.key("job", "job"), broker._store.key("log", "job"))
        broker.publish("job", 3, ev("job", 3, "note"))
        broker.publish("job", 4, ev("job", 4, "note"))
        status = broker.status("job")
        assert status is not None and (status.last_seq, status.lost_through) == (4, 2)
        until(lambda: watcher.seqs == [1, 2, 3, 4])  # live: nothing was missed here
        late = Collector()
        broker.subscribe("job", late, after=1)
        assert late.events[0].event == "gap"
        assert late.events[0].json()["lostThrough"] == "job-2"
        assert late.seqs == [3, 4]

    def test_an_unknown_job_is_not_rebuilt(self) -> None:
        broker = self.make_broker()
        with pytest.raises(UnknownJob):
            broker.publish("ghost", 1, ev("ghost", 1))
        assert broker.status("ghost") is None

    @pytest.mark.parametrize(
        "kwargs",
        [{"retention": -1.0}, {"max_events": 1}, {"outage_timeout": 0}, {"max_connections": 0}],
    )
    def test_bad_settings_are_refused(self, kwargs: dict[str, Any]) -> None:
        with pytest.raises(ValueError):
            RedisBroker(self.server.url, **kwargs)

    def test_connections_do_not_grow_with_streams_or_jobs(self) -> None:
        import redis

        broker = self.make_broker()
        watchers = []
        for n in range(200):
            broker.create(f"job{n}")
            for _ in range(5):
                watcher = Collector()
                broker.subscribe(f"job{n}", watcher)
                watchers.append(watcher)
        threads = [
            threading.Thread(
                target=lambda n=n: broker.publish(f"job{n}", 1, ev(f"job{n}", 1, "note"))
            )
            for n in range(200)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        until(lambda: all(w.seqs == [1] for w in watchers))
        clients = redis.Redis.from_url(self.server.url).client_list()
        ours = [c for c in clients if c["name"] == broker.client_name]
        assert 1 <= len(ours) <= broker.max_connections + 1

    def test_a_publish_past_the_bound_costs_the_same_however_long_the_log(self) -> None:
        # Past max_events each publish drops an entry or two; the script must
        # not read the whole log to find them. Measured as Redis's own CPU
        # time per publish (INFO commandstats), with a 100-fold longer log.
        import redis

        client = redis.Redis.from_url(self.server.url)

        def server_usec_per_publish(bound: int) -> float:
            broker = self.make_broker(max_events=bound)
            job = f"cost{bound}"
            broker.create(job)
            seq = 0

            def publish(count: int) -> None:
                nonlocal seq
                for _ in range(count):
                    seq += 1
                    name = "progress" if seq % 2 else "note"
                    broker.publish(job, seq, ev(job, seq, name))

            publish(2 * bound + 10)  # past the bound: notes, and the newest progress
            before = client.info("commandstats")["cmdstat_evalsha"]
            publish(400)
            after = client.info("commandstats")["cmdstat_evalsha"]
            status = broker.status(job)
            assert status is not None and status.lost_through > 0
            return float(after["usec"] - before["usec"]) / (after["calls"] - before["calls"])

        short, long = server_usec_per_publish(20), server_usec_per_publish(2000)
        assert long < 4 * short, (short, long)
        client.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestMemoryBroker(BrokerContract):
    def make_broker(self, **kwargs: Any) -> MemoryBroker:
        return MemoryBroker(**kwargs)

    # -- retention -------------------------------------------------------------

    def test_an_ended_job_is_kept_for_the_retention_period_then_purged(self) -> None:
        clock = FakeClock()
        broker = MemoryBroker(retention=60.0, clock=clock)
        broker.create("done")
        broker.create("running")
        broker.publish("done", 1, ev("done", 1))
        broker.publish("done", 2, ev("done", 2, "complete", {}), final=True)
        broker.publish("running", 1, ev("running", 1))

        clock.now += 59.0
        assert broker.status("done") is not None
        replay = Collector()
        assert broker.subscribe("done", replay)
        assert replay.seqs == [1, 2] and replay.closed.is_set()

        clock.now += 1.0
        assert broker.status("done") is None
        assert broker.subscribe("done", Collector()) is False
        assert broker.cancel("done") is False
        assert len(broker) == 1
        broker.create("done")  # the id is free again

        # A job that has not ended is never purged, however long it runs.
        clock.now += 10**6
        status = broker.status("running")
        assert status is not None and status.last_seq == 1

    def test_zero_retention_forgets_an_ended_job_at_once(self) -> None:
        clock = FakeClock()
        broker = MemoryBroker(retention=0.0, clock=clock)
        broker.create("job")
        broker.publish("job", 1, ev("job", 1, "complete", {}), final=True)
        assert broker.status("job") is None

    @pytest.mark.parametrize("kwargs", [{"retention": -1.0}, {"max_events": 1}, {"max_events": 0}])
    def test_bad_settings_are_refused(self, kwargs: dict[str, Any]) -> None:
        with pytest.raises(ValueError):
            MemoryBroker(**kwargs)

    # -- the bound on each job's log ---------------------------------------------

    def test_the_log_stays_bounded_and_keeps_every_other_event(self) -> None:
        broker = MemoryBroker(max_events=50)
        broker.create("job")
        custom: dict[int, Event] = {}
        seq = 0
        last_progress = 0
        for n in range(100_000):
            seq += 1
            broker.publish("job", seq, Event(str(n), event="progress", id=event_id("job", seq)))
            last_progress = seq
            if n % 25_000 == 24_999:
                seq += 1
                custom[seq] = ev("job", seq, "note", f"note {n}")
                broker.publish("job", seq, custom[seq])
            assert len(broker._jobs["job"].events) <= 50
        seq += 1
        custom[seq] = ev("job", seq, "complete", {"done": True})
        broker.publish("job", seq, custom[seq], final=True)
        assert len(broker._jobs["job"].events) <= 50

        replay = Collector()
        assert broker.subscribe("job", replay)
        assert len(replay.events) <= 50
        assert replay.seqs == sorted(set(replay.seqs))
        # Every non-progress event survives, in order, with the newest progress.
        assert [e for e in replay.events if e.event != "progress"] == list(custom.values())
        progress = [e for e in replay.events if e.event == "progress"]
        assert progress[-1].data == "99999"
        assert progress[-1].id == event_id("job", last_progress)
        assert replay.events[-1].event == "complete"
        status = broker.status("job")
        assert status is not None and status.last_seq == seq

    def test_a_resubscribe_after_coalesced_progress_gets_the_newest_level(self) -> None:
        broker = MemoryBroker(max_events=4)
        broker.create("job")
        for seq in range(1, 21):
            broker.publish("job", seq, ev("job", seq))
        replay = Collector()
        broker.subscribe("job", replay, after=3)
        assert replay.seqs[-1] == 20
        assert all(seq > 3 for seq in replay.seqs)
        assert len(replay.seqs) <= 4

    def test_a_publish_past_the_bound_costs_the_same_however_long_the_log(self) -> None:
        # Past max_events each publish drops an entry or two, without
        # touching the rest of the log: counted as the lines of Python the
        # publishes run, with a 100-fold longer log.
        def lines_per_publish(bound: int) -> float:
            broker = MemoryBroker(max_events=bound)
            broker.create("job")
            seq = 0

            def publish(count: int) -> None:
                nonlocal seq
                for _ in range(count):
                    seq += 1
                    name = "progress" if seq % 2 else "note"
                    broker.publish("job", seq, ev("job", seq, name))

            publish(2 * bound + 10)  # past the bound: notes, and the newest progress
            lines = 0

            def trace(frame: Any, event: str, arg: Any) -> Any:
                nonlocal lines
                if event == "line":
                    lines += 1
                return trace

            previous = sys.gettrace()
            sys.settrace(trace)
            try:
                publish(400)
            finally:
                sys.settrace(previous)
            status = broker.status("job")
            assert status is not None and status.lost_through > 0
            assert len(broker._jobs["job"].events) == bound
            return lines / 400

        short, long = lines_per_publish(20), lines_per_publish(2000)
        assert long < 1.5 * short, (short, long)


# -- event ids --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job_id", "seq"),
    [("job", 0), ("job", 1), ("a.b:c_d", 42), ("x" * 128, 2**63 - 1), ("0", 10**18)],
)
def test_event_id_round_trip(job_id: str, seq: int) -> None:
    text = event_id(job_id, seq)
    assert text == f"{job_id}-{seq}"
    assert parse_event_id(text) == (job_id, seq)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "x-",
        "-1",
        "-",
        "x-1.5",
        "x-١٢",  # Arabic-Indic digits: isdigit() is true, but not an id we made
        "x-²",
        "x-+1",
        "x- 1",
        "x-1 ",
        "x--1",
        "a b-1",
        "x-y-1",
        "a" * 10_000,
        "a" * 10_000 + "-1",
        "x-" + "1" * 10_000,
        "x-99999999999999999999",
        f"x-{2**63}",
        "x-1\n",
    ],
)
def test_parse_event_id_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_event_id(text)


CLOSE_UNDER_GEVENT = """
import gc, sys, time
import gevent, greenlet
from flask_sse_flush.brokers import RedisBroker


def live_greenlets():
    gc.collect()
    return [g for g in gc.get_objects() if isinstance(g, greenlet.greenlet) and not g.dead]


class Collector:
    def __init__(self):
        self.frames = []

    def deliver(self, frame, level):
        self.frames.append(frame)

    def close(self):
        pass


import redis

redis.Redis.from_url(sys.argv[1]).ping()  # gevent's resolver starts its threads once
gevent.sleep(0)
before = len(live_greenlets())
broker = RedisBroker(sys.argv[1], prefix=sys.argv[2])
broker.create("job")
watcher = Collector()
broker.subscribe("job", watcher)
from flask_sse_flush import Event
broker.publish("job", 1, Event("x", event="progress", id="job-1"))
deadline = time.monotonic() + 10
while not watcher.frames:
    assert time.monotonic() < deadline
    gevent.sleep(0.01)
assert len(live_greenlets()) > before  # the reader
broker.close()
left = live_greenlets()
assert len(left) == before, left
print("ok")
"""


def test_close_under_gevent_leaves_no_reader_greenlet(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    pytest.importorskip("gevent")
    script = "from gevent import monkey\nmonkey.patch_all()\n" + CLOSE_UNDER_GEVENT
    result = subprocess.run(
        [sys.executable, "-c", script, redis_server.url, redis_prefix],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.startswith("ok"), result.stdout
