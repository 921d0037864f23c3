"""The one conftest: markers by folder, the shared real-server fixtures, and
the timing margins report at the end of a run. See ``tests/README.md``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from flask_sse_flush.brokers import Broker, MemoryBroker, RedisBroker
from flask_sse_flush.testing import RedisCluster, RedisServer
from tests.browser import support as browser
from tests.integration.support import Server, running_server
from tests.timing import measurements

REPO = Path(__file__).resolve().parent.parent
#: The servers every ``server``-using integration test runs against.
SERVERS = [
    "gunicorn-gevent", "gunicorn-stream", "gunicorn-gevent_pywsgi", "gunicorn-gthread",
    "gunicorn-sync",
    "gevent", "werkzeug", "waitress", "uwsgi-threads", "uwsgi-gevent", "wsgiref",
]  # fmt: skip

_MARKERS = {"integration": "integration", "browser": "integration", "smoke": "smoke"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for folder, marker in _MARKERS.items():
            if folder in item.path.parts:
                item.add_marker(getattr(pytest.mark, marker))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    checked = measurements()
    if not checked:
        return
    terminalreporter.section("timing bounds, tightest first")
    for m in checked[:8]:
        terminalreporter.write_line(
            f"{m.used:6.0%} of bound  {m.value:.4g} < {m.limit:.4g}  {m.what}  {m.test}"
        )


@pytest.fixture(scope="module", params=SERVERS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Each real server in turn, serving ``tests/integration/app.py``, once per module."""
    log_dir = tmp_path_factory.mktemp(request.param)
    with running_server(request.param, log_dir) as running:
        yield running


@pytest.fixture(scope="session")
def display() -> Iterator[str]:
    """A virtual X display for the browsers."""
    browser.require(*browser.missing_tools())
    with browser.virtual_display() as name:
        yield name


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The instrumented demo (``tests/browser/app.py``) under gunicorn -k gevent.

    The demo is not installed (``examples/`` is outside the wheel): gunicorn
    imports it from this checkout, as ``make run`` does.
    """
    log_dir = tmp_path_factory.mktemp("demo")
    checkout = ["--pythonpath", str(REPO)]
    with running_server(
        "gunicorn-gevent", log_dir, app_dir=browser.HERE, options=checkout
    ) as server:
        yield server


@pytest.fixture(scope="session")
def js_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """What the docs' JavaScript samples talk to (``tests/js/app.py``), under gunicorn -k gevent."""
    log_dir = tmp_path_factory.mktemp("js-samples")
    with running_server("gunicorn-gevent", log_dir, app_dir=REPO / "tests" / "js") as server:
        yield server


@pytest.fixture(scope="session")
def nginx(demo_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[browser.Nginx]:
    """Debian's nginx in front of the demo: default buffering, and gzip on."""
    found = shutil.which("nginx") or Path("/usr/sbin/nginx").exists()
    browser.require(*([] if found else ["nginx"]))
    with browser.nginx_in_front(demo_server.port, tmp_path_factory.mktemp("nginx")) as proxy:
        yield proxy


def require_redis_server() -> None:
    """Skip where Redis is not installed, except in CI (``SSE_FLUSH_REQUIRE_BROWSERS``),
    where a missing server fails the test."""
    if shutil.which("redis-server") is None:
        if os.environ.get("SSE_FLUSH_REQUIRE_BROWSERS"):
            pytest.fail("redis-server is not installed (make system-deps installs it)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, append-only, for the whole run.

    Tests isolate themselves with a key prefix of their own. Where Redis is
    not installed the tests skip, except in CI (``SSE_FLUSH_REQUIRE_BROWSERS``),
    where a missing server fails them.
    """
    require_redis_server()
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A real Redis Cluster on loopback for the whole run: 3 primaries, 3 replicas.

    Tests isolate themselves with a key prefix of their own; a test that
    kills a node makes a cluster of its own.
    """
    require_redis_server()
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix no other test uses."""
    return f"t{abs(hash(request.node.nodeid)) % 10**12}:{os.getpid()}:"


@pytest.fixture(params=["memory", "redis"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """Each broker in turn: a MemoryBroker, then a RedisBroker on the run's redis-server."""
    if request.param == "memory":
        yield MemoryBroker()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    redis_broker = RedisBroker(server.url, prefix=request.getfixturevalue("redis_prefix"))
    yield redis_broker
    redis_broker.close()
