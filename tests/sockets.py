"""Socket helpers shared by the tests of writes that must not block."""

from __future__ import annotations

import socket


def fill(sock: socket.socket) -> int:
    """Send to the non-blocking ``sock`` until it takes no more; the bytes it took."""
    filled, filler = 0, b"x" * 65536
    while True:
        try:
            filled += sock.send(filler)
        except BlockingIOError:
            return filled
