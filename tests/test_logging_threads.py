"""Native job threads that log under gevent never hang on a logging lock.

gevent's monkey-patching makes every logging handler's lock a gevent lock,
which does not work across OS threads: without the library's fix, four job
threads logging at once (and the hub logging too) hang at once, for good.
Run in a child process, since monkey-patching is for the whole process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    from gevent import monkey; monkey.patch_all()
    import logging, sys, time
    import gevent
    from flask_sse_flush.runtime import start_native_thread

    logging.basicConfig(stream=open(sys.argv[1], "w"), level=logging.INFO)
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
    print(len(done))
    """
)


def test_job_threads_and_the_hub_log_at_once_without_hanging(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(log)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "4", "a job thread hung on a logging lock"
    lines = log.read_text().splitlines()
    assert sum(line.startswith("WARNING:render:job ") for line in lines) == 4 * 300
    assert sum(line.startswith("ERROR:render:job ") for line in lines) == 4
