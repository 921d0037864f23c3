from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from flask_sse_flush import set_tcp_nodelay
from flask_sse_flush.wsgi.transport import client_socket


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        with client, server:
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
            yield server, client


def nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


@pytest.mark.parametrize("key", ["gunicorn.socket", "gunicorn.sock", "werkzeug.socket"])
def test_sets_nodelay_on_the_socket_each_server_publishes(
    tcp_pair: tuple[socket.socket, socket.socket], key: str
) -> None:
    server, _ = tcp_pair
    assert nodelay(server) == 0
    assert set_tcp_nodelay({key: server}) is True
    assert nodelay(server) == 1


def test_finds_the_socket_behind_wsgi_input(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    server, _ = tcp_pair
    rfile = server.makefile("rb")  # wsgiref and gevent.pywsgi hand out such a file

    class Wrapper:  # as wsgiref.validate wraps the input
        def __init__(self, wrapped: Any) -> None:
            self.input = wrapped

    try:
        assert client_socket({"wsgi.input": Wrapper(rfile)}) is server
        assert set_tcp_nodelay({"wsgi.input": rfile}) is True
        assert nodelay(server) == 1
    finally:
        rfile.close()


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        listener = socket.socket(socket.AF_INET6)
        listener.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1 on this machine")
    with listener:
        listener.listen(1)
        client = socket.create_connection(listener.getsockname()[:2])
        server, _ = listener.accept()
        with client, server:
            assert set_tcp_nodelay({"gunicorn.socket": server}) is True
            assert nodelay(server) == 1


def test_unix_socket_is_quietly_false() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert set_tcp_nodelay({"gunicorn.socket": a}) is False


def test_no_socket_is_false() -> None:
    assert set_tcp_nodelay({}) is False
    assert set_tcp_nodelay({"wsgi.input": io.BytesIO(b"")}) is False
    assert set_tcp_nodelay({"gunicorn.socket": "not a socket"}) is False


def test_closed_socket_never_raises(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    sock = socket.socket()
    sock.close()
    assert set_tcp_nodelay({"werkzeug.socket": sock}) is False


def test_flask_test_client_has_no_socket() -> None:
    from flask import Flask, request

    app = Flask(__name__)
    app.add_url_rule("/", view_func=lambda: {"set": set_tcp_nodelay(request.environ)})
    assert app.test_client().get("/").get_json() == {"set": False}
