from __future__ import annotations

from collections.abc import Iterator

import pytest

from .support import Server, running_server

SERVERS = ["gunicorn-gevent", "gunicorn-gevent_pywsgi", "werkzeug", "wsgiref"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module", params=SERVERS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Each real server in turn, started once per test module."""
    log_dir = tmp_path_factory.mktemp(request.param)
    with running_server(request.param, log_dir) as running:
        yield running
