"""Native job threads that log under gevent never hang on a logging lock.

gevent's monkey-patching makes every logging handler's lock a gevent lock,
which does not work across OS threads: without the library's fix, job
threads logging at once (and the hub logging too) hang, for good. The fix
is installed when an app is initialised, can be turned off and undone, and
touches nothing before. Each test runs in a child process, since
monkey-patching is for the whole process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: What each script starts with: logging's locks, compared by identity.
PRELUDE = """
import logging, logging.handlers, sys, time

def lock_blocks():
    locks = {"logging._lock": logging._lock}
    for ref in logging._handlerList:
        handler = ref()
        if handler is not None:
            locks[f"{type(handler).__name__}@{id(handler)}"] = handler.lock
    return {name: getattr(lock, "_block", lock) for name, lock in locks.items()}

def same(before, after):
    return before.keys() <= after.keys() and all(after[k] is v for k, v in before.items())

def hybrid(block):
    return type(block).__name__ == "HybridLock"

def create_lock():
    return logging.Handler.__dict__["createLock"]
"""


def run(script: str, *args: str) -> str:
    """Run ``script`` (after :data:`PRELUDE`) in a child process; return its stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_job_threads_and_the_hub_log_at_once_without_hanging(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    out = run(
        """
        from gevent import monkey; monkey.patch_all()
        import gevent
        from flask import Flask
        from flask_sse_flush import create_render_blueprint
        from flask_sse_flush.runtime import start_native_thread

        logging.basicConfig(stream=open(sys.argv[1], "w"), level=logging.INFO)
        Flask(__name__).register_blueprint(create_render_blueprint(lambda p, progress: {}))
        log = logging.getLogger("render")
        done = []

        def job(n):
            for i in range(300):
                log.warning("job %d line %d", n, i)
                if i % 50 == 0:
                    time.sleep(0.001)  # gevent's sleep, in this thread's own hub
            try:
                raise RuntimeError("a failing render")
            except RuntimeError:
                log.exception("job %d failed", n)  # what the library logs for a failed job
            done.append(n)

        for n in range(4):
            start_native_thread(lambda n=n: job(n), "job")
        started = time.monotonic()
        while len(done) < 4 and time.monotonic() - started < 20:
            log.warning("hub line")
            gevent.sleep(0.001)
        print(len(done), flush=True)
        import os; os._exit(0)  # a hung thread must not hold the exit
        """,
        str(log),
    )
    assert out.strip() == "4", "a job thread hung on a logging lock"
    lines = log.read_text().splitlines()
    assert sum(line.startswith("WARNING:render:job ") for line in lines) == 4 * 300
    assert sum(line.startswith("ERROR:render:job ") for line in lines) == 4


#: Job threads of a custom executor (gevent's own threadpool) log through the
#: standard library's handlers and those of rq and gunicorn, some made before
#: the app is initialised, some after (converted through ``createLock``).
OTHER_LIBRARIES = """
import gevent
from flask import Flask
from flask_sse_flush import create_render_blueprint

class Sink(list):
    put_nowait = list.append  # QueueHandler's queue, safe from any thread

folder = sys.argv[1]
sink = Sink()
shared = logging.getLogger("shared")
shared.setLevel(logging.INFO)
shared.propagate = False

def made_before():
    from rq.logutils import ColorizingStreamHandler

    shared.addHandler(logging.handlers.QueueHandler(sink))
    rotating = logging.handlers.RotatingFileHandler
    shared.addHandler(rotating(f"{folder}/rotating.log", maxBytes=20_000, backupCount=50))
    shared.addHandler(ColorizingStreamHandler(stream=open(f"{folder}/rq.log", "w")))

def made_after():
    from gunicorn.config import Config
    from gunicorn.glogging import Logger

    config = Config()
    config.set("errorlog", f"{folder}/gunicorn.log")
    config.set("loglevel", "info")
    target = logging.FileHandler(f"{folder}/memory.log")
    memory = logging.handlers.MemoryHandler
    shared.addHandler(memory(25, target=target, flushLevel=logging.CRITICAL))
    return Logger(config)

made_before()
app = Flask(__name__)
INIT_APP
gunicorn_log = made_after()
assert all(hybrid(block) for block in lock_blocks().values()), lock_blocks()

def job(n):
    for i in range(200):
        shared.info("job %d line %d", n, i)
        gunicorn_log.info("job %d line %d", n, i)
        if i % 50 == 0:
            time.sleep(0.001)
    return n

pool = gevent.get_hub().threadpool
results = [pool.spawn(job, n) for n in range(4)]
started = time.monotonic()
while not all(r.ready() for r in results) and time.monotonic() - started < 20:
    shared.info("hub line")
    gunicorn_log.info("hub line")
    gevent.sleep(0.001)
for handler in shared.handlers:
    handler.flush()
print(sum(r.ready() for r in results), len(sink), flush=True)
import os; os._exit(0)
"""


def count_lines(folder: Path, pattern: str, text: str) -> int:
    return sum(
        path.read_text(errors="replace").count(text) for path in sorted(folder.glob(pattern))
    )


def test_job_threads_log_through_other_libraries_handlers_without_hanging(
    tmp_path: Path,
) -> None:
    script = "from gevent import monkey; monkey.patch_all()\n" + OTHER_LIBRARIES.replace(
        "INIT_APP", "app.register_blueprint(create_render_blueprint(lambda p, progress: {}))"
    )
    out = run(script, str(tmp_path))
    finished, queued = map(int, out.split())
    assert finished == 4, "a job thread hung on a logging lock"
    for pattern in ("rotating.log*", "rq.log", "memory.log", "gunicorn.log"):
        assert count_lines(tmp_path, pattern, "line ") >= 4 * 200, pattern
    assert queued >= 4 * 200


def test_an_app_initialised_before_gevent_patches_gets_the_fix_when_it_does(
    tmp_path: Path,
) -> None:
    # gunicorn --preload: the app is made in the arbiter, the worker patches after.
    script = OTHER_LIBRARIES.replace(
        "INIT_APP",
        "app.register_blueprint(create_render_blueprint(lambda p, progress: {}))\n"
        "assert not any(hybrid(block) for block in lock_blocks().values())\n"
        "from gevent import monkey; monkey.patch_all()",
    )
    finished, _ = map(int, run(script, str(tmp_path)).split())
    assert finished == 4, "a job thread hung on a logging lock"


def test_nothing_is_touched_before_an_app_is_initialised() -> None:
    out = run(
        """
        import atexit, threading
        from gevent import monkey; monkey.patch_all()
        import gevent, zope.event
        handler = logging.StreamHandler()
        logging.getLogger("any").addHandler(handler)
        threads, exits = threading.active_count(), atexit._ncallbacks()
        subscribers = list(zope.event.subscribers)
        before, hook = lock_blocks(), create_lock()

        import flask_sse_flush, flask_sse_flush.runtime
        from flask import Flask
        from flask_sse_flush.runtime import start_native_thread

        assert threading.active_count() == threads, "importing started a thread"
        assert atexit._ncallbacks() == exits, "importing registered an exit handler"
        assert zope.event.subscribers == subscribers
        app = Flask(__name__)
        blueprint = flask_sse_flush.create_render_blueprint(lambda p, progress: {})
        done = []
        start_native_thread(lambda: done.append(1), "job")  # a job, before any app
        while not done:
            gevent.sleep(0.001)
        assert same(before, lock_blocks()), "logging's locks changed before an app"
        assert create_lock() is hook
        from flask_sse_flush.runtime import logging_locks_installed

        assert not logging_locks_installed()
        app.register_blueprint(blueprint)
        assert all(hybrid(block) for block in lock_blocks().values())
        assert create_lock() is not hook
        assert hybrid(logging.StreamHandler().lock._block)
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_the_switch_turns_the_fix_off() -> None:
    out = run(
        """
        from gevent import monkey; monkey.patch_all()
        import gevent
        from flask import Flask
        from flask_sse_flush import create_render_blueprint
        from flask_sse_flush.runtime import start_native_thread

        handler = logging.StreamHandler()
        logging.getLogger("any").addHandler(handler)
        before, hook = lock_blocks(), create_lock()
        app = Flask(__name__)
        app.config["SSE_FLUSH_GEVENT_LOGGING_LOCKS"] = False
        app.register_blueprint(create_render_blueprint(lambda p, progress: {}))
        done = []
        start_native_thread(lambda: done.append(1), "job")
        while not done:
            gevent.sleep(0.001)
        assert same(before, lock_blocks()), "logging's locks changed with the switch off"
        assert create_lock() is hook
        assert not hybrid(logging.StreamHandler().lock._block)
        from flask_sse_flush.web.state import gevent_integration
        from flask_sse_flush.runtime import logging_locks_installed

        assert gevent_integration(app) is False
        assert not logging_locks_installed()
        bad = Flask(__name__)
        bad.config["SSE_FLUSH_GEVENT_LOGGING_LOCKS"] = "no"
        try:
            bad.register_blueprint(create_render_blueprint(lambda p, progress: {}))
        except ValueError as exc:
            assert "gevent_logging_locks" in str(exc)
        else:
            raise AssertionError("a non-bool switch was accepted")
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_uninstall_restores_the_original_locks_and_create_lock() -> None:
    out = run(
        """
        from gevent import monkey; monkey.patch_all()
        from flask import Flask
        from flask_sse_flush import create_render_blueprint
        from flask_sse_flush.web.state import gevent_integration
        from flask_sse_flush.runtime import (
            install_logging_locks, logging_locks_installed, uninstall_logging_locks,
        )

        early = logging.StreamHandler()
        logging.getLogger("any").addHandler(early)
        before, hook = lock_blocks(), create_lock()
        first, second = Flask("first"), Flask("second")
        first.register_blueprint(create_render_blueprint(lambda p, progress: {}))
        first.register_blueprint(create_render_blueprint(lambda p, progress: {}, name="other"))
        gevent_integration(first)  # once per app, however often it is called
        converted = lock_blocks()
        assert all(hybrid(block) for block in converted.values())
        assert install_logging_locks() is True  # a second holder converts nothing anew
        assert same(converted, lock_blocks())
        late = logging.StreamHandler()  # made while installed: converted by createLock
        assert hybrid(late.lock._block)

        assert uninstall_logging_locks() is False  # the other holder keeps it
        assert logging_locks_installed()
        assert uninstall_logging_locks() is True  # the last one restores
        assert not logging_locks_installed()
        assert same(before, lock_blocks()), "an original lock was not restored"
        assert not any(hybrid(block) for block in lock_blocks().values())
        assert create_lock() is hook
        assert not hybrid(logging.StreamHandler().lock._block)
        assert uninstall_logging_locks() is False  # no holder left: nothing to do

        held = logging.StreamHandler()
        second.register_blueprint(create_render_blueprint(lambda p, progress: {}))
        assert hybrid(held.lock._block)
        held.acquire()
        assert uninstall_logging_locks() is True
        assert hybrid(held.lock._block), "a held lock was swapped under its holder"
        held.release()
        assert not hybrid(early.lock._block)
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_concurrent_installs_install_once() -> None:
    out = run(
        """
        from gevent import monkey; monkey.patch_all()
        import threading
        from gevent.monkey import get_original
        from flask_sse_flush.runtime import (
            install_logging_locks, logging_locks_installed, uninstall_logging_locks,
        )
        from flask_sse_flush.runtime import locks

        handlers = [logging.StreamHandler() for _ in range(200)]
        made = []
        init = locks.HybridLock.__init__
        def counting_init(self, hub_thread):
            made.append(1)
            get_original("time", "sleep")(0)  # widen any window between check and act
            init(self, hub_thread)
        locks.HybridLock.__init__ = counting_init
        hook = create_lock()

        # A native lock as the starting gate: threading.Event, even gevent's
        # "original" one, waits on a patched (gevent) lock inside, which never
        # wakes a waiter in another OS thread.
        start = get_original("_thread", "allocate_lock")()
        start.acquire()
        results, finished = [], []
        def install():
            start.acquire()
            start.release()
            results.append(install_logging_locks())
            finished.append(1)
        for _ in range(8):
            get_original("_thread", "start_new_thread")(install, ())
        start.release()
        while len(finished) < 8:
            get_original("time", "sleep")(0.001)
        blocks = lock_blocks()
        assert all(results) and len(results) == 8
        assert all(hybrid(block) for block in blocks.values())
        assert len(made) == len(blocks), (len(made), len(blocks))
        assert create_lock().__code__ is not hook.__code__
        for _ in range(7):
            assert uninstall_logging_locks() is False
        assert uninstall_logging_locks() is True
        assert not logging_locks_installed() and create_lock() is hook
        print("ok")
        """
    )
    assert out.strip() == "ok"


@pytest.mark.parametrize("switch", [True, False])
def test_the_extension_installs_them_at_init_app_unless_switched_off(switch: bool) -> None:
    code = f"""
import gevent.monkey
gevent.monkey.patch_all()
import logging
from flask import Flask
from flask_sse_flush import SSEFlush
from flask_sse_flush.runtime import logging_locks_installed
handler = logging.StreamHandler()
before = type(handler.lock._block).__name__
assert not logging_locks_installed()
app = Flask("app")
app.config["SSE_FLUSH_GEVENT_LOGGING_LOCKS"] = {switch!r}
sse = SSEFlush()
assert not logging_locks_installed()  # not at construction: at init_app
sse.init_app(app)
print(logging_locks_installed(), before, type(handler.lock._block).__name__)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    installed, before, after = result.stdout.split()
    assert installed == str(switch)
    assert before != "HybridLock"
    assert (after == "HybridLock") is switch
