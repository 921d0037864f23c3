"""Channels between any thread or greenlet and a stream's reader.

The gevent cases run in a child process, because monkey-patching is for
the whole process and must happen before anything else is imported.
"""

from __future__ import annotations

import threading

import pytest

from flask_sse_flush.runtime import Empty, gevent_is_active, new_channel
from tests.gevent_run import run_under_gevent

pytest.importorskip("gevent")


def test_thread_channel_many_writers_one_reader() -> None:
    assert not gevent_is_active()
    channel = new_channel()

    def write(base: int) -> None:
        for i in range(1000):
            channel.put((base, i))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    received = [channel.get(5) for _ in range(4000)]
    for thread in threads:
        thread.join()
    for base in range(4):
        assert [i for b, i in received if b == base] == list(range(1000))
    with pytest.raises(Empty):
        channel.get(0.01)


def test_hub_channel_from_native_threads_and_greenlets() -> None:
    out = run_under_gevent(
        """
        import time
        import gevent
        from gevent.monkey import get_original
        from flask_sse_flush.runtime import Empty, gevent_is_active, new_channel

        assert gevent_is_active()
        channel = new_channel()
        assert type(channel).__name__ == "_HubChannel"
        pool = gevent.get_hub().threadpool  # real OS threads
        native_ident = get_original("_thread", "get_ident")
        hub_thread = native_ident()

        def native(base):
            assert native_ident() != hub_thread
            for i in range(2000):
                channel.put((base, i))

        def green(base):
            for i in range(2000):
                channel.put((base, i))
                if i % 100 == 0:
                    gevent.sleep(0)

        # A greenlet that must keep running while the reader waits: proves the
        # reader yields to the hub instead of blocking it.
        ticks = []
        ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(20)])
        threads = [pool.spawn(native, n) for n in range(3)]
        greenlets = [gevent.spawn(green, n) for n in (10, 11)]
        received = [channel.get(10) for _ in range(5 * 2000)]
        for t in threads:
            t.get()
        gevent.joinall(greenlets, raise_error=True)
        for base in (0, 1, 2, 10, 11):
            assert [i for b, i in received if b == base] == list(range(2000)), base

        started = time.monotonic()
        try:
            channel.get(0.1)
        except Empty:
            waited = time.monotonic() - started
            assert 0.08 < waited < 1.0, waited
        else:
            raise AssertionError("expected Empty")
        ticker.join()
        assert len(ticks) == 20

        # Latency of a wake-up from a native thread.
        def later():
            get_original("time", "sleep")(0.05)
            channel.put(time.time())
        waiter = pool.spawn(later)
        sent = channel.get(5)
        waiter.get()
        print("native-wakeup-ms", (time.time() - sent) * 1000)

        # Closing while a native thread still sends must not crash the process.
        def late_sender():
            for i in range(10000):
                channel.put(i)
        t = pool.spawn(late_sender)
        channel.close()
        t.get()
        channel.close()
        print("ok")
        """
    )
    assert out.strip().endswith("ok")
    wakeup_ms = float(out.split("native-wakeup-ms")[1].split()[0])
    assert wakeup_ms < 100


def test_event_stream_under_gevent_keepalive_and_native_sender() -> None:
    out = run_under_gevent(
        """
        import time
        import gevent
        from flask_sse_flush import Event, EventStream

        stream = EventStream(keepalive=0.1)
        body = iter(stream)
        assert next(body) == b": stream open\\n\\n"
        started = time.monotonic()
        assert next(body) == b": keepalive\\n\\n"
        assert 0.08 < time.monotonic() - started < 1.0

        def produce():
            for i in range(3):
                stream.send(Event(str(i)))
            stream.close()

        done = gevent.get_hub().threadpool.spawn(produce)
        assert list(body) == [b"data: 0\\n\\n", b"data: 1\\n\\n", b"data: 2\\n\\n"]
        done.get()
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_native_jobs_lower_the_switch_interval_while_they_run() -> None:
    out = run_under_gevent(
        """
        import sys
        import gevent
        from gevent.monkey import get_original
        from flask_sse_flush.runtime import start_native_thread

        default = sys.getswitchinterval()
        seen = []
        lock = get_original("_thread", "allocate_lock")()
        release = get_original("_thread", "allocate_lock")()
        release.acquire()

        def job():
            seen.append(sys.getswitchinterval())
            release.acquire()  # hold until the test lets go
            release.release()

        start_native_thread(job, "a")
        start_native_thread(job, "b")
        while len(seen) < 2:
            gevent.sleep(0.01)
        assert sys.getswitchinterval() == 0.0005, sys.getswitchinterval()
        release.release()
        for _ in range(500):
            if sys.getswitchinterval() == default:
                break
            gevent.sleep(0.01)
        assert seen == [0.0005, 0.0005], seen
        assert sys.getswitchinterval() == default  # restored by the last one out

        from flask_sse_flush.runtime import job_switch_interval, set_job_switch_interval

        assert job_switch_interval() == 0.0005
        set_job_switch_interval(None)  # the process-wide setting: leave it alone
        start_native_thread(lambda: seen.append(sys.getswitchinterval()), "c")
        while len(seen) < 3:
            gevent.sleep(0.01)
        assert seen[2] == default
        set_job_switch_interval(0.002)
        start_native_thread(lambda: seen.append(sys.getswitchinterval()), "d")
        while len(seen) < 4:
            gevent.sleep(0.01)
        assert seen[3] == 0.002
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_streams_never_served_leave_no_watcher_in_the_loop() -> None:
    out = run_under_gevent(
        """
        import gc
        import gevent
        from flask_sse_flush import Event, EventStream

        loop = gevent.get_hub().loop
        before = loop.activecnt
        streams = [EventStream() for _ in range(100)]
        for stream in streams:
            stream.send(Event("never read"))  # e.g. the view answered 403 instead
        del streams
        gc.collect()
        assert loop.activecnt == before, (before, loop.activecnt)

        served = EventStream(keepalive=0.05)
        body = iter(served)
        next(body)
        assert next(body) == b": keepalive\\n\\n"  # waited: its watcher exists now
        body.close()  # the client left
        assert loop.activecnt == before, (before, loop.activecnt)
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_call_on_hub_returns_raises_and_times_out() -> None:
    out = run_under_gevent(
        """
        import time
        import gevent
        from gevent.monkey import get_original
        from flask_sse_flush.runtime import call_on_hub
        from flask_sse_flush.runtime import start_native_thread

        results = []
        killed = []

        def on_hub_forever():
            try:
                gevent.sleep(30)
            except BaseException as exc:  # the timeout kills this greenlet
                killed.append(type(exc).__name__)
                raise

        def fails():
            raise KeyError("from the hub")

        def job():
            results.append(call_on_hub(lambda: gevent.getcurrent() is not None))
            try:
                call_on_hub(fails)
            except KeyError as exc:
                results.append(str(exc))
            started = get_original("time", "monotonic")()
            try:
                call_on_hub(on_hub_forever, timeout=0.3)
            except TimeoutError:
                results.append(round(get_original("time", "monotonic")() - started, 1))

        start_native_thread(job, "job")
        for _ in range(500):
            if len(results) == 3 and killed:
                break
            gevent.sleep(0.01)
        assert results[:2] == [True, "'from the hub'"], results
        assert 0.3 <= results[2] < 1.5, results
        assert killed == ["TimeoutError"], killed
        # On the hub itself, or without a job's hub, it is a plain call.
        assert call_on_hub(lambda: 42) == 42
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_a_native_thread_the_app_started_finds_the_main_hub() -> None:
    # A raw OS thread has no hub of the library's: its home is the main
    # thread's hub (the one serving requests), found even before the main
    # thread has asked, never a hub of its own that dies with it.
    out = run_under_gevent(
        """
        import gevent
        from gevent.monkey import get_original
        from flask_sse_flush.runtime import home_hub, run_in_hub
        from flask_sse_flush.runtime.hub import _Remembered

        main = gevent.get_hub()
        assert _Remembered.found is None
        seen = []
        done = get_original("_thread", "allocate_lock")()

        def native():
            seen.append(home_hub())
            seen.append(run_in_hub(home_hub(), lambda: gevent.get_hub()))
            done.release()

        for _ in range(2):  # first found by looking, then remembered
            done.acquire()
            get_original("_thread", "start_new_thread")(native, ())
            while not done.acquire(False):
                gevent.sleep(0.01)
            done.release()
        assert seen == [main] * 4, seen
        assert home_hub() is main and _Remembered.found[1] is main
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_without_a_hub_in_the_main_thread_a_native_thread_keeps_its_own() -> None:
    # Nothing to route to: the thread's own hub, one warning, one search.
    out = run_under_gevent(
        """
        import logging
        from gevent.monkey import get_original
        from flask_sse_flush.runtime import home_hub
        from flask_sse_flush.runtime.hub import _Remembered

        warnings = []
        class Collect(logging.Handler):
            def emit(self, record):
                warnings.append(record.getMessage())
        logging.getLogger("flask_sse_flush.runtime.hub").addHandler(Collect())
        seen = []
        done = get_original("_thread", "allocate_lock")()
        done.acquire()

        def native():
            import gevent
            seen.extend([home_hub(), home_hub(), gevent.get_hub()])
            done.release()

        get_original("_thread", "start_new_thread")(native, ())
        done.acquire()  # the main thread never makes a hub
        from gevent._hub_local import get_hub_if_exists
        assert get_hub_if_exists() is None
        assert seen[0] is seen[1] is seen[2] and not seen[0].main_hub, seen
        assert len(warnings) == 1 and "no running gevent hub" in warnings[0], warnings
        assert _Remembered.found is None and _Remembered.searched_pid
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_call_on_hub_does_not_wait_for_a_hub_that_has_gone() -> None:
    out = run_under_gevent(
        """
        import gevent
        from gevent.monkey import get_original
        from flask_sse_flush.runtime import call_on_hub
        from flask_sse_flush.runtime.hub import started_by

        outcome = []
        done = get_original("_thread", "allocate_lock")()
        done.acquire()

        class GoneHub:  # what a destroyed hub looks like to the waiting thread
            thread_ident = -1
            dead = True
            class loop:
                @staticmethod
                def run_callback_threadsafe(*args):
                    pass

        def job():
            try:
                call_on_hub(lambda: None)
            except RuntimeError as exc:
                outcome.append(str(exc))
            done.release()

        get_original("_thread", "start_new_thread")(started_by(GoneHub()).run, (job,))
        while not done.acquire(False):
            gevent.sleep(0.01)
        assert outcome and "has stopped" in outcome[0], outcome
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_a_stream_too_slow_under_gevent_ends_whoever_floods_it() -> None:
    # The overflow policy on the hub channel: a native thread (then a
    # greenlet) floods a stream whose reader has stopped; the sender is
    # told at once, the memory goes, and the parked body wakes up and ends.
    out = run_under_gevent(
        """
        import gevent
        from flask_sse_flush import Event, EventStream, StreamClosed

        pool = gevent.get_hub().threadpool

        def flood(stream):
            for n in range(100_000):
                try:
                    stream.send(Event(str(n), event="note"))
                except StreamClosed:
                    return n, stream.pending
            return None

        for sender in ("native", "greenlet"):
            stream = EventStream(keepalive=5, buffer=4)
            body = iter(stream)
            next(body)
            if sender == "native":
                result = pool.spawn(flood, stream).get()
            else:
                result = gevent.spawn(flood, stream).get()
            assert result == (16, 0), result
            assert stream.too_slow
            with gevent.Timeout(2):
                assert list(body) == []

        # A reader that reads, but slowly: the flood from a native thread
        # overflows its stream while it sleeps, and its body then ends.
        stream = EventStream(keepalive=5, buffer=4)
        body = iter(stream)
        next(body)

        def slow_reader():
            got = []
            for frame in body:
                got.append(frame)
                gevent.sleep(0.01)
            return got

        reader = gevent.spawn(slow_reader)
        gevent.sleep(0.05)
        assert pool.spawn(flood, stream).get() is not None
        with gevent.Timeout(2):
            got = reader.get()
        assert len(got) <= 17, got
        print("ok")
        """
    )
    assert out.strip().endswith("ok")


def test_the_native_job_threads_end_and_are_joined_at_shutdown() -> None:
    out = run_under_gevent(
        """
        import os, time
        import gevent
        from gevent.monkey import get_original
        from flask_sse_flush.runtime import (
            call_on_hub, shutdown_native_threads, start_native_thread,
        )

        def os_threads():
            return len(os.listdir("/proc/self/task"))

        base = os_threads()
        done = []

        def job(n):
            def run():
                get_original("time", "sleep")(0.2)  # three at once: three threads
                done.append(n)
            return run

        for n in range(3):
            start_native_thread(job(n), "job")
        while len(done) < 3:
            gevent.sleep(0.01)
        assert os_threads() >= base + 3  # kept for the next jobs

        def busy():
            get_original("time", "sleep")(0.3)
            # Waits for the hub, on which shutdown() waits for this thread.
            call_on_hub(lambda: gevent.sleep(0.05))
            done.append("busy")

        start_native_thread(busy, "busy")
        assert shutdown_native_threads(10)
        assert "busy" in done  # a running job finishes first
        deadline = time.monotonic() + 2
        while os_threads() > base:  # the OS lets a thread go just after its last act
            assert time.monotonic() < deadline, (os_threads(), base)
            time.sleep(0.01)

        start_native_thread(lambda: done.append("again"), "again")  # the pool serves again
        while "again" not in done:
            gevent.sleep(0.01)
        assert shutdown_native_threads(10)
        print("ok")
        """
    )
    assert out.strip().endswith("ok")


def test_a_keepalive_counts_from_now_after_the_hub_was_busy() -> None:
    # libev's timers count from the loop's cached time, which lags after the
    # hub's thread was busy (or lost the CPU to other processes): a stream's
    # wait must still last its whole keepalive period, not come early.
    out = run_under_gevent(
        """
        import time
        from gevent.monkey import get_original
        from flask_sse_flush import EventStream

        stream = EventStream(keepalive=0.3)  # makes the hub: its loop caches the time
        body = iter(stream)
        next(body)
        get_original("time", "sleep")(0.2)  # busy: the cached time is now stale
        started = time.monotonic()
        assert next(body) == b": keepalive\\n\\n"
        print(round(time.monotonic() - started, 3))
        """
    )
    assert 0.28 < float(out) < 2.0, out


def test_a_wait_always_runs_its_whole_timeout_however_the_last_one_ended() -> None:
    # One timer serves every wait of a channel: neither a wait an item cut
    # short nor one the timer ended may leave it due sooner the next time.
    out = run_under_gevent(
        """
        import time
        import gevent
        from flask_sse_flush.runtime import Empty, new_channel
        channel = new_channel()
        hub = gevent.get_hub()
        def waited(put_after):
            if put_after is not None:
                hub.loop.timer(put_after).start(channel.put, "item")
            started = time.monotonic()
            try:
                got = channel.get(0.2)
            except Empty:
                got = None
            return got, time.monotonic() - started
        for _ in range(5):  # each cut short by an item
            got, took = waited(0.02)
            assert got == "item" and took < 0.15, (got, took)
        for _ in range(3):  # each ended by the timer
            got, took = waited(None)
            assert got is None and took >= 0.19, took
        got, took = waited(0.02)
        assert got == "item" and took < 0.15, (got, took)
        got, took = waited(None)
        assert got is None and took >= 0.19, took
        channel.close()
        print("ok")
        """
    )
    assert out.strip().endswith("ok")
