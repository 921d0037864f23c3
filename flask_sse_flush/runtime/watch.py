"""Noticing that a client has gone while its stream is silent (under gevent).

A WSGI server learns that a client closed its connection only when a write
to it fails, and a silent stream writes only a keepalive every 15 seconds:
until then a dead client holds its greenlet, its buffer and its
subscription. While a stream waits, nobody reads its socket (the request
has been read; the server reads the next one only after the response), so
the socket becoming *readable* means the peer sent something or closed.
One loop I/O watcher per stream (no greenlet) checks, without consuming
anything, whether it was the end of the connection.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

from .detect import gevent_is_active

__all__ = ["hung_up", "watch_for_hangup"]

log = logging.getLogger(__name__)

_GONE = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ESHUTDOWN, errno.ETIMEDOUT)


def hung_up(sock: Any) -> bool | None:
    """``True`` on EOF or reset, ``False`` if bytes wait, ``None`` if nothing yet."""
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except OSError as exc:
        return exc.errno in _GONE or None
    return not data


def watch_for_hangup(sock: Any, on_hangup: Callable[[], Any]) -> Callable[[], None] | None:
    """Call ``on_hangup()`` once, on the hub, when the peer of ``sock`` closes it.

    Only under gevent (a read watcher on the hub's loop); returns the
    function that stops watching, or ``None`` where it cannot watch (no
    gevent, no socket). If the client sends bytes instead (a pipelined
    request), watching stops: those bytes are the server's to read.
    """
    if not gevent_is_active() or sock is None:
        return None
    try:
        fd = sock.fileno()
    except (OSError, AttributeError, ValueError):
        return None
    if fd < 0:
        return None
    import gevent

    return _Watch(gevent.get_hub().loop.io(fd, 1), sock, on_hangup)  # 1: readable


class _Watch:
    """One socket's watch: calling it stops watching (idempotent).

    Two objects per open stream (this and the watcher's bound callback),
    where closures would make ten for the collector to walk.
    """

    __slots__ = ("_on_hangup", "_sock", "_watcher")

    def __init__(self, watcher: Any, sock: Any, on_hangup: Callable[[], Any]) -> None:
        self._watcher: Any = watcher
        self._sock: Any = sock
        self._on_hangup: Callable[[], Any] | None = on_hangup
        watcher.start(self._ready)

    def __call__(self) -> None:
        # The stream's end and its server may both call it. Stopped, it lets
        # go of the socket and the callback too: the stream keeps this watch,
        # and the callback (its method) keeping the stream would make a
        # cycle that only a full collection frees.
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()
            watcher.close()
        self._sock = self._on_hangup = None

    def _ready(self) -> None:
        on_hangup = self._on_hangup
        if on_hangup is None:
            return  # stopped meanwhile
        state = hung_up(self._sock)
        if state is None:
            return  # woken without data (a spurious wake-up): keep watching
        self()
        if state:
            try:
                on_hangup()
            except Exception:
                log.exception("a hang-up callback failed")
