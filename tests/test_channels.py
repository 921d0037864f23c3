"""Channels: ids and cursors, the channel contract of every broker, and the extension.

:class:`ChannelContract` uses only the brokers' public channel methods
(``append``, ``position``, ``follow``, ``unfollow``) and runs against the
memory broker and a real ``redis-server``.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request
from hypothesis import given
from hypothesis import strategies as st

from flask_sse_flush import Event, SSEFlush, StreamClosed
from flask_sse_flush.brokers import Broker, MemoryBroker, RedisBroker
from flask_sse_flush.channels import (
    MAX_CHANNELS,
    MAX_CURSOR,
    ChannelMux,
    Position,
    channel_event_id,
    check_channel,
    format_cursor,
    parse_channel_event_id,
    parse_cursor,
)
from flask_sse_flush.testing import RedisServer, iter_events, parse_events

TIMEOUT = 10.0


def until(condition: Any, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.002)


class Follower:
    """A subscriber that records the events it is sent."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.closed = False

    def deliver(self, frame: bytes, level: str | None) -> None:
        (event,) = parse_events(frame)
        self.events.append(event)

    def close(self) -> None:
        self.closed = True

    @property
    def seqs(self) -> list[int]:
        return [parse_channel_event_id(e.id)[1].seq for e in self.events if e.id]

    @property
    def data(self) -> list[str]:
        return [e.data for e in self.events if e.event != "gap"]


class Gone(Follower):
    def deliver(self, frame: bytes, level: str | None) -> None:
        raise StreamClosed("the client left")


# -- names, ids, cursors -------------------------------------------------------------


@pytest.mark.parametrize("name", ["news", "user/42", "a.b:c@d~e+f-g_h", "x" * 128])
def test_valid_channel_names(name: str) -> None:
    assert check_channel(name) == name


@pytest.mark.parametrize("name", ["", "a b", "a,b", "x" * 129, "é", "a\nb", "a\x00"])
def test_invalid_channel_names_say_what_a_name_is(name: str) -> None:
    with pytest.raises(ValueError, match="1 to 128 letters"):
        check_channel(name)


def test_a_channel_name_must_be_a_str() -> None:
    with pytest.raises(TypeError, match="must be a str"):
        check_channel(42)


names = st.from_regex(r"[A-Za-z0-9_.:@/~+\-]{1,128}", fullmatch=True)
positions = st.builds(
    Position, st.from_regex(r"[0-9a-f]{8}", fullmatch=True), st.integers(0, 2**63 - 1)
)


@given(names, positions)
def test_an_event_id_names_its_channel_and_place(name: str, at: Position) -> None:
    assert parse_channel_event_id(channel_event_id(name, at)) == (name, at)


@given(st.dictionaries(names, positions, min_size=1, max_size=MAX_CHANNELS))
def test_a_cursor_round_trips(cursor: dict[str, Position]) -> None:
    text = format_cursor(cursor)
    if len(text) <= MAX_CURSOR:
        assert parse_cursor(text) == cursor


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("news", "not a channel event id"),
        ("news-zz.1", "not a channel event id"),
        ("news-ab.x", "not a channel event id"),
        ("news-ab.99999999999999999999", "not a channel event id"),
        ("news-ab.1,news-ab.2", "twice"),
        (",".join(f"c{i}-ab.1" for i in range(MAX_CHANNELS + 1)), "more than"),
        ("c-ab." + "1" * MAX_CURSOR, "longer than"),
    ],
)
def test_a_bad_cursor_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_cursor(text)


def test_the_mux_gives_every_event_the_cursor_of_all_channels() -> None:
    target = Follower()
    mux = ChannelMux(target, {"a": Position("e1", 0), "b": Position("e2", 5)})
    mux.follower("a").deliver(Event("x", id="a-e1.1").frame, None)
    mux.follower("b").deliver(Event("y", event="note", id="b-e2.6").frame, None)
    gap = Event({"channel": "a"}, event="gap").frame
    mux.follower("a").deliver(gap, None)
    assert [e.id for e in target.events] == ["a-e1.1,b-e2.5", "a-e1.1,b-e2.6", None]
    assert [e.event for e in target.events] == [None, "note", "gap"]
    assert mux.cursor == "a-e1.1,b-e2.6"


# -- the channel contract of every broker -------------------------------------------


class ChannelContract:
    def make_broker(self, **kwargs: Any) -> Broker:
        raise NotImplementedError

    def test_publish_numbers_events_and_reaches_followers_in_order(self) -> None:
        broker = self.make_broker()
        start = broker.position("news")
        assert start.seq == 0
        follower = Follower()
        broker.follow("news", follower, start)
        ids = [broker.append("news", Event({"n": i}, event="headline")) for i in range(5)]
        assert [parse_channel_event_id(i) for i in ids] == [
            ("news", Position(start.epoch, n)) for n in range(1, 6)
        ]
        until(lambda: len(follower.events) == 5)
        assert [e.id for e in follower.events] == ids
        assert [e.event for e in follower.events] == ["headline"] * 5

    def test_a_follower_after_a_place_gets_exactly_what_came_after(self) -> None:
        broker = self.make_broker()
        ids = [broker.append("news", Event(str(i))) for i in range(6)]
        _, at = parse_channel_event_id(ids[2])
        follower = Follower()
        broker.follow("news", follower, at)
        broker.append("news", Event("6"))
        until(lambda: len(follower.events) == 4)
        assert follower.data == ["3", "4", "5", "6"]

    def test_without_a_place_a_follower_starts_from_now(self) -> None:
        broker = self.make_broker()
        broker.append("news", Event("old"))
        follower = Follower()
        broker.follow("news", follower, broker.position("news"))
        broker.append("news", Event("new"))
        until(lambda: follower.data == ["new"])

    def test_channels_are_apart(self) -> None:
        broker = self.make_broker()
        a, b = Follower(), Follower()
        broker.follow("a", a, broker.position("a"))
        broker.follow("b", b, broker.position("b"))
        broker.append("a", Event("for a"))
        broker.append("b", Event("for b"))
        until(lambda: a.data == ["for a"] and b.data == ["for b"])

    def test_past_the_history_bound_a_resume_starts_with_a_gap(self) -> None:
        broker = self.make_broker(max_events=3)
        ids = [broker.append("news", Event(str(i))) for i in range(6)]
        _, at = parse_channel_event_id(ids[0])
        follower = Follower()
        broker.follow("news", follower, at)
        gap, *rest = follower.events
        assert gap.event == "gap" and gap.id is None
        assert gap.json() == {"channel": "news", "after": ids[0], "resumed": ids[2]}
        assert [e.data for e in rest] == ["3", "4", "5"]
        # A place still inside the history resumes without a gap.
        exact = Follower()
        broker.follow("news", exact, parse_channel_event_id(ids[2])[1])
        assert exact.data == ["3", "4", "5"] and all(e.event != "gap" for e in exact.events)

    def test_a_place_in_a_log_that_no_longer_exists_gets_a_gap(self) -> None:
        broker = self.make_broker()
        broker.append("news", Event("now"))
        follower = Follower()
        broker.follow("news", follower, Position("0badcafe", 7))
        assert [e.event for e in follower.events] == ["gap", None]
        assert follower.events[0].json()["after"] == "news-0badcafe.7"
        assert follower.data == ["now"]

    def test_a_place_ahead_of_the_log_gets_a_gap_and_goes_on_from_now(self) -> None:
        # The store went back in time (a failover, a restart that lost the
        # last writes): the client's place is past the log. Not a client
        # error (a 400 would stop EventSource for good): a gap, then live.
        broker = self.make_broker()
        broker.append("news", Event("1"))
        at = broker.position("news")
        follower = Follower()
        broker.follow("news", follower, Position(at.epoch, 5))
        broker.append("news", Event("2"))
        until(lambda: follower.data == ["2"])
        assert follower.events[0].event == "gap"
        assert follower.events[0].json()["resumed"] == f"news-{at.epoch}.1"

    def test_an_unfollowed_or_gone_follower_gets_nothing_more(self) -> None:
        broker = self.make_broker()
        kept, left, gone = Follower(), Follower(), Gone()
        for follower in (kept, left, gone):
            broker.follow("news", follower, broker.position("news"))
        broker.unfollow("news", left)
        broker.append("news", Event("1"))
        broker.append("news", Event("2"))
        until(lambda: kept.data == ["1", "2"])
        assert left.events == []

    def test_bad_names_and_events_are_refused(self) -> None:
        broker = self.make_broker()
        with pytest.raises(ValueError, match="channel name"):
            broker.append("no spaces", Event("x"))
        with pytest.raises(ValueError, match="no id or retry"):
            broker.append("news", Event("x", id="mine"))

    def test_publishers_on_many_threads_reach_every_follower_once_in_order(self) -> None:
        broker = self.make_broker(max_events=5000)
        followers = [Follower() for _ in range(4)]
        for follower in followers:
            broker.follow("busy", follower, broker.position("busy"))

        def publish(thread: int) -> None:
            pacing = random.Random(thread)
            for i in range(200):
                broker.append("busy", Event(f"{thread}:{i}"))
                if pacing.random() < 0.05:
                    time.sleep(0.0005)

        threads = [threading.Thread(target=publish, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        until(lambda: all(len(f.events) == 800 for f in followers))
        for follower in followers:
            assert follower.seqs == list(range(1, 801))
            for thread in range(4):  # each publisher's own order holds too
                mine = [d for d in follower.data if d.startswith(f"{thread}:")]
                assert mine == [f"{thread}:{i}" for i in range(200)]


class TestMemoryChannels(ChannelContract):
    def make_broker(self, **kwargs: Any) -> MemoryBroker:
        return MemoryBroker(**kwargs)

    def test_history_older_than_the_retention_is_dropped(self) -> None:
        now = [1000.0]
        broker = MemoryBroker(retention=60.0, clock=lambda: now[0])
        first = broker.append("news", Event("old"))
        now[0] += 61
        broker.append("news", Event("new"))
        follower = Follower()
        broker.follow("news", follower, parse_channel_event_id(first)[1])
        assert follower.data == ["new"]  # "old"'s successor is kept, nothing lost
        now[0] += 61
        late = Follower()
        broker.follow("news", late, parse_channel_event_id(first)[1])
        assert [e.event for e in late.events] == ["gap"]


class TestRedisChannels(ChannelContract):
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

    def test_a_new_follower_of_an_expired_quiet_channel_joins_at_once(self) -> None:
        # A channel whose keys expired while streams followed it quietly: a
        # new stream gets the new log's place, joins without waiting for a
        # publish, and both streams get what comes next.
        broker = self.make_broker()
        old = Follower()
        broker.follow("quiet", old, broker.position("quiet"))
        first = broker.append("quiet", Event("first"))
        until(lambda: old.data == ["first"])
        client = broker._connect()
        client.delete(*broker._store.channel_keys("quiet"))
        new = Follower()
        at = broker.position("quiet")
        assert at.epoch != parse_channel_event_id(first)[1].epoch
        started = time.monotonic()
        broker.follow("quiet", new, at)
        assert time.monotonic() - started < 2.0, "the follow waited for a publish"
        broker.append("quiet", Event("next"))
        until(lambda: new.data == ["next"] and old.data == ["first", "next"])
        assert [e.event for e in old.events] == [None, "gap", None]

    def test_two_processes_share_every_channel(self) -> None:
        web, worker = self.make_broker(), self.make_broker()
        follower = Follower()
        web.follow("news", follower, web.position("news"))
        ids = [worker.append("news", Event(str(i))) for i in range(3)]
        until(lambda: [e.id for e in follower.events] == ids)

    def test_an_append_retried_after_a_lost_reply_is_logged_and_sent_once(self) -> None:
        broker = self.make_broker()
        follower = Follower()
        broker.follow("news", follower, broker.position("news"))
        client = broker._connect()
        source = (
            Path(__file__).parent.parent / "flask_sse_flush/brokers/redis/scripts/append.lua"
        ).read_text()
        store = broker._store
        keys = [*store.channel_keys("news"), store.key("ctok", "news") + ":t1"]
        args = ["e0e0e0e0", "news", b"", b"data: once\n\n", 100, 60000]
        args += [store.channel_pubsub("news"), "", "", 0, store.publish_command]
        # The same append twice, as a retry after a reply lost on the way back.
        first = client.eval(source, 3, *keys, *args)
        again = client.eval(source, 3, *keys, *args)
        assert first == again
        assert client.xlen(store.channel_keys("news")[1]) == 1
        broker.append("news", Event("next"))
        until(lambda: follower.data == ["once", "next"])
        assert follower.seqs == [1, 2]

    def test_a_log_that_lost_its_last_events_starts_a_new_epoch(self) -> None:
        # A failover to a replica that lagged: the log ends before events the
        # old master acknowledged. The publisher that appended them starts a
        # new epoch at its next append, so no other event takes their numbers,
        # and a client that saw them resumes with a gap, never a silent hole.
        broker = self.make_broker()
        ids = [broker.append("news", Event(f"e{i}")) for i in range(1, 6)]
        client = broker._connect()  # the replica had only the first three
        meta, log = broker._store.channel_keys("news")
        client.hset(meta, "last", 3)
        client.xdel(log, "0-4", "0-5")
        after = broker.append("news", Event("after the failover"))
        epoch, at = parse_channel_event_id(ids[-1])[1], parse_channel_event_id(after)[1]
        assert at.epoch != epoch.epoch and at.seq == 1
        resumed = Follower()
        broker.follow("news", resumed, epoch)  # the client had seen e5
        # The gap, then the new epoch's log from its start.
        assert [e.event for e in resumed.events] == ["gap", None]
        assert resumed.data == ["after the failover"]
        broker.append("news", Event("next"))
        until(lambda: resumed.data == ["after the failover", "next"])

    def test_a_log_lost_by_the_store_starts_again_under_a_new_epoch(self) -> None:
        broker = self.make_broker()
        follower = Follower()
        broker.follow("news", follower, broker.position("news"))
        old = broker.append("news", Event("before"))
        until(lambda: follower.data == ["before"])
        client = broker._connect()  # the store loses the channel (a flush, an eviction)
        client.delete(*broker._store.channel_keys("news"))
        new = broker.append("news", Event("after"))
        assert parse_channel_event_id(new)[1].epoch != parse_channel_event_id(old)[1].epoch
        until(lambda: follower.data == ["before", "after"])  # the live follower goes on
        # ... told that its log started again (events may have been lost with it).
        assert [e.event for e in follower.events] == [None, "gap", None]
        late = Follower()
        broker.follow("news", late, parse_channel_event_id(old)[1])
        assert [e.event for e in late.events] == ["gap", None]
        assert late.data == ["after"]


# -- the extension -------------------------------------------------------------------


def make_app(**options: Any) -> tuple[Flask, SSEFlush]:
    app = Flask("channels")
    sse = SSEFlush(app, **options)

    @app.get("/stream")
    def stream() -> Any:
        return sse.stream(*request.args.getlist("c"))

    return app, sse


def read(response: Any, count: int) -> list[Event]:
    events = iter_events(response)
    got = [next(events) for _ in range(count)]
    response.close()
    return got


def test_publish_from_a_view_and_from_a_thread_reaches_a_stream() -> None:
    app, sse = make_app()

    @app.post("/news")
    def post() -> Any:
        return {"id": sse.publish("news", request.get_json(), event="headline")}

    client = app.test_client()
    response = client.get("/stream?c=news", buffered=False)
    first = client.post("/news", json={"title": "one"}).get_json()["id"]
    thread = threading.Thread(target=sse.publish, args=("news", {"title": "two"}, "headline"))
    thread.start()
    thread.join()
    one, two = read(response, 2)
    assert (one.id, one.event, one.json()) == (first, "headline", {"title": "one"})
    assert (two.event, two.json()) == ("headline", {"title": "two"})


def test_init_app_later_and_publish_outside_any_context() -> None:
    sse = SSEFlush()
    app = Flask("later")
    sse.init_app(app)
    event_id = sse.publish("news", "no app context here")
    assert parse_channel_event_id(event_id)[0] == "news"


def test_publish_before_init_app_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="init_app"):
        SSEFlush().publish("news", "x")


def test_a_reconnect_resumes_one_and_three_channel_streams_exactly() -> None:
    app, sse = make_app()
    client = app.test_client()
    ids = [sse.publish("news", str(i)) for i in range(4)]
    (event,) = read(client.get("/stream?c=news", headers={"Last-Event-ID": ids[1]}), 1)
    assert (event.id, event.data) == (ids[2], "2")

    response = client.get("/stream?c=a&c=b&c=c", buffered=False)
    for name in ("a", "b", "c", "a"):
        sse.publish(name, f"{name}!")
    seen = read(response, 4)
    assert [e.data for e in seen] == ["a!", "b!", "c!", "a!"]
    cursor = seen[1].id  # the client saw a! and b!, then dropped
    assert cursor is not None and cursor.count(",") == 2
    sse.publish("c", "c2")
    # Exactly the missed events, in order within each channel (a replay
    # goes channel by channel; there is no order across channels).
    resumed = read(client.get("/stream?c=a&c=b&c=c", headers={"Last-Event-ID": cursor}), 3)
    assert [e.data for e in resumed] == ["a!", "c!", "c2"]
    # The same cursor as a query parameter, for clients that cannot send headers.
    again = read(client.get(f"/stream?c=a&c=b&c=c&lastEventId={cursor}"), 3)
    assert [e.data for e in again] == ["a!", "c!", "c2"]
    # The last resumed event's id covers all three: resuming from it misses nothing.
    sse.publish("b", "b2")
    (last,) = read(client.get("/stream?c=a&c=b&c=c", headers={"Last-Event-ID": again[-1].id}), 1)
    assert last.data == "b2"


def test_past_the_history_a_stream_starts_with_gap() -> None:
    app = Flask("gap")
    app.config["SSE_FLUSH_MAX_EVENTS"] = 3
    sse = SSEFlush(app)
    app.add_url_rule("/s", view_func=lambda: sse.stream("news"))
    ids = [sse.publish("news", str(i)) for i in range(6)]
    gap, *rest = read(app.test_client().get("/s", headers={"Last-Event-ID": ids[0]}), 4)
    assert gap.event == "gap" and gap.json()["resumed"] == ids[2]
    assert [e.data for e in rest] == ["3", "4", "5"]


def test_the_opening_frame_carries_the_cursor_so_an_early_drop_resumes() -> None:
    app, sse = make_app()
    sse.publish("news", "before")
    response = app.test_client().get("/stream?c=news", buffered=False)
    opening = next(iter(response.response))
    response.close()
    (line,) = [x for x in opening.split(b"\n") if x.startswith(b"id: ")]
    assert parse_channel_event_id(line[4:].decode())[1].seq == 1


@pytest.mark.parametrize(
    ("query", "headers", "status", "message"),
    [
        ("c=bad%20name", {}, 400, "1 to 128 letters"),
        ("", {}, 400, "at least one channel"),
        ("&".join(f"c=c{i}" for i in range(MAX_CHANNELS + 1)), {}, 400, "at most"),
        ("c=news", {"Last-Event-ID": "garbage"}, 400, "bad Last-Event-ID"),
    ],
)
def test_bad_stream_requests_get_json_errors(
    query: str, headers: dict[str, str], status: int, message: str
) -> None:
    app, _ = make_app()
    response = app.test_client().get(f"/stream?{query}", headers=headers)
    assert response.status_code == status
    assert message in response.get_json()["error"]


def test_a_failed_follow_leaves_no_channel_followed() -> None:
    broker = MemoryBroker()
    app, _ = make_app(broker=broker)
    failing = {"other"}
    follow = broker.follow

    def follow_or_fail(channel: str, subscriber: Any, after: Position) -> None:
        if channel in failing:
            raise RuntimeError("the store broke")
        follow(channel, subscriber, after)

    broker.follow = follow_or_fail  # type: ignore[method-assign]
    app.testing = True  # the view's exception reaches us
    client = app.test_client()
    with pytest.raises(RuntimeError, match="the store broke"):
        client.get("/stream?c=news&c=other")
    assert broker._channels["news"].subscribers == {}  # followed first, let go again


def test_a_closed_stream_unfollows_its_channels() -> None:
    broker = MemoryBroker()
    app, _ = make_app(broker=broker)
    response = app.test_client().get("/stream?c=a&c=b", buffered=False)
    next(iter(response.response))
    assert all(len(ch.subscribers) == 1 for ch in broker._channels.values())
    response.close()
    assert all(not ch.subscribers for ch in broker._channels.values())


def test_authorize_serves_sse_and_refuses_with_403() -> None:
    allowed = {"news", "sport"}
    asked: list[str] = []

    def authorize(channel: str) -> bool:
        asked.append(channel)
        assert request.path == "/api/sse"  # called inside the request
        return channel in allowed

    app = Flask("authorize")
    sse = SSEFlush(app, authorize=authorize, url_prefix="/api")
    client = app.test_client()
    refused = client.get("/api/sse?channel=news&channel=secret")
    assert refused.status_code == 403
    assert refused.get_json() == {"error": "channel 'secret' is not allowed"}
    assert client.get("/api/sse").status_code == 400
    response = client.get("/api/sse?channel=news&channel=sport", buffered=False)
    sse.publish("sport", "goal")
    (event,) = read(response, 1)
    assert event.data == "goal"
    assert asked == ["news", "secret", "news", "sport"]


def test_without_authorize_there_is_no_sse_route() -> None:
    app = Flask("closed")
    SSEFlush(app)
    assert app.test_client().get("/sse?channel=news").status_code == 404


def test_a_head_request_follows_nothing() -> None:
    broker = MemoryBroker()
    app, _ = make_app(broker=broker)
    response = app.test_client().head("/stream?c=news")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert not broker._channels


def test_renders_share_the_extension_broker_and_run_in_the_app_context() -> None:
    from flask import current_app

    app = Flask("renders")
    app.config["GREETING"] = "hello"
    sse = SSEFlush(app)

    def render(payload: dict[str, Any], progress: Any) -> dict[str, Any]:
        progress(50, "rendering")
        return {"filename": current_app.config["GREETING"], "url": "u"}

    app.register_blueprint(sse.render_blueprint(render))
    assert app.extensions["sse_flush"]["sse_flush"].broker is sse.broker
    events = list(iter_events(app.test_client().get("/render/stream?data=%7B%7D", buffered=False)))
    assert events[-1].event == "complete"
    assert events[-1].json()["filename"] == "hello"


def test_a_render_sends_events_of_its_own_on_its_job_stream() -> None:
    app = Flask("own-events")
    sse = SSEFlush(app)

    def render(payload: dict[str, Any], progress: Any) -> dict[str, Any]:
        progress(10, "bundling")
        progress.event("log", {"line": "bundled 3 files"})
        with pytest.raises(ValueError, match="the job sends itself"):
            progress.event("complete", {})
        progress(90, "rendering")
        return {"filename": "out.mp4", "url": "u"}

    app.register_blueprint(sse.render_blueprint(render))
    response = app.test_client().get("/render/stream?data=%7B%7D", buffered=False)
    events = list(iter_events(response))
    assert [e.event for e in events] == ["progress", "log", "progress", "complete"]
    assert events[1].json() == {"line": "bundled 3 files"}
    assert [e.id.rsplit("-", 1)[1] for e in events if e.id] == ["1", "2", "3", "4"]


def test_a_graceful_stop_sends_channel_streams_elsewhere_at_once() -> None:
    from flask_sse_flush.testing import fresh_lifecycle, iter_chunks
    from flask_sse_flush.wire.frames import EventDecoder

    with fresh_lifecycle() as life:
        app, sse = make_app()  # the memory broker: nothing to wait for here either
        client = app.test_client()
        chunks = iter_chunks(client.get("/stream?c=news", buffered=False))
        next(chunks)  # the opening frame
        sse.publish("news", "before the stop")
        started = time.monotonic()
        life.stop(grace=10.0)
        decoder = EventDecoder()
        events = [e for chunk in chunks for e in decoder.feed(chunk)]
        assert time.monotonic() - started < 1.0, "the stream waited for the deadline"
        assert [e.data for e in events] == ["before the stop"]
        assert decoder.retry is not None and 1000 <= decoder.retry < 2000
        # A stream asked of the stopping worker is sent on at once, with its cursor.
        decoder = EventDecoder()
        again = client.get("/stream?c=news", headers={"Last-Event-ID": events[0].id})
        assert [e for chunk in iter_chunks(again) for e in decoder.feed(chunk)] == []
        assert decoder.retry is not None and decoder.last_event_id == events[0].id
