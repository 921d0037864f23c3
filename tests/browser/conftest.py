from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.support import Server, running_server

from .support import Nginx, missing_tools, nginx_in_front, virtual_display

HERE = Path(__file__).resolve().parent
#: Where screenshots go (kept out of git; docs/_static has the chosen one).
SCREENSHOTS = HERE.parent.parent / "build" / "screenshots"


def require(*tools: str) -> None:
    """Skip when a system tool is missing, or fail where it must be there (CI)."""
    if not tools:
        return
    message = f"not installed: {', '.join(tools)} (make system-deps installs them)"
    if os.environ.get("SSE_FLUSH_REQUIRE_BROWSERS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "browser" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def display() -> Iterator[str]:
    require(*missing_tools())
    with virtual_display() as name:
        yield name


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The instrumented demo under gunicorn -k gevent."""
    log_dir = tmp_path_factory.mktemp("demo")
    with running_server("gunicorn-gevent", log_dir, app_dir=HERE) as server:
        yield server


@pytest.fixture(scope="session")
def nginx(demo_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    from shutil import which

    require(*([] if which("nginx") or Path("/usr/sbin/nginx").exists() else ["nginx"]))
    with nginx_in_front(demo_server.port, tmp_path_factory.mktemp("nginx")) as proxy:
        yield proxy
