"""What a direct writer (``-k gevent``) does for a keepalive, and when it cannot write.

Real sockets (a socketpair) and the hub's real wheel; the stream's greenlet
is stood in for by setting the stream's ``_direct`` to the writer, which is
what the body does while it waits.
"""

from __future__ import annotations

import socket
import threading
import time
import types
from collections.abc import Iterator

import pytest

from flask_sse_flush import EventStream
from flask_sse_flush.runtime import Empty
from flask_sse_flush.wsgi.direct import KEEPALIVE_DUE, REST, DirectWriter, chunk
from tests.sockets import fill

KEEPALIVE = 0.2
FRAMED = b"D\r\n: keepalive\n\n\r\n"  # ": keepalive\n\n", 13 bytes, as one chunk


class Setup:
    def __init__(self) -> None:
        self.server, self.client = socket.socketpair()
        self.server.setblocking(False)
        self.stream = EventStream(keepalive=KEEPALIVE)
        self.response = types.SimpleNamespace(sent=0, chunked=True, sock=None)
        self.writer = DirectWriter(self.response, self.server, self.stream)

    def waiting(self, silent_for: float) -> None:
        """The body waits, and the stream wrote last ``silent_for`` seconds ago."""
        self.writer.last = time.monotonic() - silent_for
        self.stream._direct = self.writer

    def received(self) -> bytes:
        self.client.setblocking(False)
        try:
            return self.client.recv(65536)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        self.writer.disarm()
        self.server.close()
        self.client.close()


@pytest.fixture
def setup() -> Iterator[Setup]:
    made = Setup()
    yield made
    made.close()


def test_a_silent_stream_gets_its_keepalive_written_and_is_timed_again(setup: Setup) -> None:
    setup.waiting(silent_for=KEEPALIVE)
    setup.writer._on_tick()
    assert setup.received() == FRAMED
    # gunicorn's count gets the writer's bytes as the body wakes: it stays in step.
    assert setup.writer.direct_bytes == 13
    assert setup.response.sent == 0
    setup.writer.settle()
    assert setup.response.sent == 13
    assert setup.writer.in_step(0)
    setup.writer.settle()  # settled once
    assert setup.response.sent == 13
    assert setup.writer._slot is not None  # on the wheel for the next one
    assert setup.stream.pending == 0


def test_a_stream_that_wrote_since_is_timed_again_without_a_keepalive(setup: Setup) -> None:
    setup.waiting(silent_for=KEEPALIVE / 2)
    setup.writer._on_tick()
    assert setup.received() == b""
    assert setup.writer._slot is not None
    assert setup.response.sent == 0


def test_an_awake_body_is_left_alone(setup: Setup) -> None:
    setup.waiting(silent_for=KEEPALIVE)
    setup.stream._direct = None  # the body woke: it arms the wheel again when it waits
    setup.writer._on_tick()
    assert setup.received() == b""
    assert setup.writer._slot is None
    assert setup.stream.pending == 0


def test_a_full_socket_hands_the_keepalive_to_the_body(setup: Setup) -> None:
    fill(setup.server)
    setup.waiting(silent_for=KEEPALIVE)
    setup.writer._on_tick()
    assert setup.response.sent == 0
    assert setup.stream._direct is None  # unhooked until the body has caught up
    assert setup.stream._channel.get(0) is KEEPALIVE_DUE  # the body yields the keepalive
    with pytest.raises(Empty):
        setup.stream._channel.get(0)


def test_no_keepalive_once_the_stream_is_closed(setup: Setup) -> None:
    setup.waiting(silent_for=KEEPALIVE)
    setup.stream.close()
    setup.writer._on_tick()
    assert setup.received() == b""
    assert setup.response.sent == 0


FRAME = b"data: 1\n\n"


def test_a_frame_the_writer_refuses_keeps_every_later_frame_behind_it(setup: Setup) -> None:
    # A full socket: the frame is queued, and the writer stays unhooked, so
    # the next frame, socket drained or not, queues behind it.
    fill(setup.server)
    setup.waiting(silent_for=0)
    setup.stream.deliver(FRAME)
    assert setup.stream._direct is None
    while setup.received():
        pass
    setup.stream.deliver(b"data: 2\n\n")
    assert setup.received() == b""
    assert setup.stream._channel.get(0) == FRAME
    assert setup.stream._channel.get(0) == b"data: 2\n\n"


def test_a_native_threads_frame_is_queued_and_later_hub_frames_behind_it(setup: Setup) -> None:
    setup.waiting(silent_for=0)
    thread = threading.Thread(target=setup.stream.deliver, args=(FRAME,))
    thread.start()
    thread.join()
    assert setup.stream._direct is None
    setup.stream.deliver(b"data: 2\n\n")  # this thread: the writer's, but a frame waits
    assert setup.received() == b""
    assert setup.stream._channel.get(0) == FRAME
    assert setup.stream._channel.get(0) == b"data: 2\n\n"


def test_a_frame_sent_in_part_leaves_its_rest_first_in_the_queue(setup: Setup) -> None:
    setup.server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # room for a part
    big = b"data: " + b"y" * 200_000 + b"\n\n"
    setup.waiting(silent_for=0)
    setup.stream.deliver(big)
    assert setup.stream._direct is None
    rest = setup.writer.rest
    assert rest is not None and 0 < len(rest) < len(big)
    setup.stream.deliver(FRAME)
    assert setup.stream._channel.get(0) is REST
    assert setup.stream._channel.get(0) == FRAME
    setup.writer.settle()
    assert setup.response.sent == setup.writer.direct_bytes == len(big)


def test_an_empty_frame_writes_nothing_not_the_bodys_end(setup: Setup) -> None:
    # An empty chunk is the body's last; gunicorn skips empty writes, and so does the writer.
    assert chunk(b"") == b""
    setup.waiting(silent_for=0)
    setup.stream.deliver(b"")
    assert setup.received() == b""
    setup.stream.deliver(FRAME)
    assert setup.received() == b"%X\r\n%b\r\n" % (len(FRAME), FRAME)
