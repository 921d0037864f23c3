"""The client socket behind each WSGI server, and ``TCP_NODELAY`` on it.

Nagle's algorithm holds a small segment back while an earlier one is
unacknowledged; the receiver's delayed ACK waits up to 40 ms (Linux) or
200 ms (Windows) for more data. An event written in more than one
``send()`` (werkzeug's dev server writes chunk size, data and CRLF
separately) therefore stalls for a round of delayed ACK on a real network.
``TCP_NODELAY`` turns Nagle off for that one connection.

Where each server keeps the socket:

==========================  ================================================
server                      where the socket is
==========================  ================================================
gunicorn sync, gthread,     ``environ["gunicorn.socket"]``; gunicorn also
gevent, eventlet            sets ``TCP_NODELAY`` on its listener, which
                            accepted sockets inherit on Linux
gunicorn ``gevent_pywsgi``  ``environ["gunicorn.sock"]``
werkzeug dev server         ``environ["werkzeug.socket"]``
uWSGI                       ``uwsgi.connection_fd()``
gevent.pywsgi, wsgiref      found through ``wsgi.input``'s file object
waitress                    the channel behind
                            ``environ["waitress.client_disconnected"]``;
                            waitress also sets ``TCP_NODELAY`` on its
                            listener by default (``socket_options``)
==========================  ================================================
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

__all__ = ["client_socket", "end_connection", "set_tcp_nodelay", "uwsgi_socket"]

log = logging.getLogger(__name__)

_ENVIRON_KEYS = ("gunicorn.socket", "gunicorn.sock", "werkzeug.socket")
# Attributes that lead from a server's wsgi.input to its socket, for servers
# that do not publish it: gevent.pywsgi (Input.rfile -> BufferedReader.raw ->
# SocketIO._sock), wsgiref (BufferedReader.raw._sock), and wrappers such as
# wsgiref.validate's (InputWrapper.input). Searched a few levels deep only,
# so an odd input object costs little.
_INPUT_ATTRS = ("rfile", "raw", "_sock", "input", "stream", "sock", "socket")
_INPUT_DEPTH = 4


def _looks_like_socket(obj: object) -> bool:
    return callable(getattr(obj, "setsockopt", None)) and callable(getattr(obj, "getsockopt", None))


def client_socket(environ: Mapping[str, Any]) -> Any | None:
    """Return the client connection's socket object, or ``None`` if hidden.

    :param environ: the WSGI environ of the current request.
    """
    for key in _ENVIRON_KEYS:
        sock = environ.get(key)
        if _looks_like_socket(sock):
            return sock
    # waitress: a bound method of the connection's channel, which holds it.
    channel = getattr(environ.get("waitress.client_disconnected"), "__self__", None)
    sock = getattr(channel, "socket", None)
    if _looks_like_socket(sock):
        return sock
    level: list[object] = [environ.get("wsgi.input")]
    for _ in range(_INPUT_DEPTH):
        found = [getattr(obj, attr, None) for obj in level for attr in _INPUT_ATTRS]
        level = [obj for obj in found if obj is not None]
        for obj in level:
            if isinstance(obj, socket.socket) or _looks_like_socket(obj):
                return obj
    return None


def uwsgi_socket() -> socket.socket | None:
    """A duplicate of uWSGI's client socket (the caller closes it), or ``None`` elsewhere."""
    try:
        import uwsgi
    except ImportError:
        return None
    try:
        return socket.socket(fileno=os.dup(uwsgi.connection_fd()))
    except (OSError, ValueError, AttributeError):
        return None


def _uwsgi_nodelay() -> bool:
    # Options set on a duplicate apply to the one shared connection, and
    # closing the duplicate leaves uWSGI's descriptor alone.
    sock = uwsgi_socket()
    if sock is None:
        return False
    with sock:
        return _set(sock)


def _set(sock: Any) -> bool:
    family = getattr(sock, "family", None)
    if family not in (socket.AF_INET, socket.AF_INET6):
        # A unix socket (a server behind a local proxy) has no Nagle delay.
        return False
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def set_tcp_nodelay(environ: Mapping[str, Any]) -> bool:
    """Turn off Nagle's algorithm on the request's client socket.

    Never raises: a server that hides its socket, a unix socket, or a
    test client without any socket all give ``False``.

    :param environ: the WSGI environ of the current request.
    :returns: ``True`` if ``TCP_NODELAY`` is now set on the connection.
    """
    try:
        sock = client_socket(environ)
        if sock is None:
            return _uwsgi_nodelay()
        return _set(sock)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.debug("could not set TCP_NODELAY: %s", exc)
        return False


def end_connection(sock: Any | None) -> None:
    """Close the sending side of a client connection whose response has ended.

    The server reads on and closes the connection when the client does; a
    browser's next request on this host opens a new connection. Never raises.
    """
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError, ValueError):
        sock.shutdown(socket.SHUT_WR)
