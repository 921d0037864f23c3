"""The scenarios of ``tests/test_parked_direct.py``, each run in a process under gevent.

Importing this module patches nothing: the test's subprocess patches
first, as gunicorn's worker does, then calls one scenario.
"""

from __future__ import annotations

import gc
import socket
import types
from collections.abc import Callable

import gevent
from gevent.monkey import get_original

from flask_sse_flush import EventStream
from flask_sse_flush.runtime.wheel import Wheel
from flask_sse_flush.wsgi.direct import chunk
from flask_sse_flush.wsgi.stream import StreamBody
from flask_sse_flush.wsgi.worker import ParkedStream
from tests.sockets import fill

FRAME = b"data: 1\n\n"
SECOND = b"data: 2\n\n"


class Setup:
    def __init__(self, max_seconds: float | None = None) -> None:
        self.server, self.client = socket.socketpair()
        self.server.setblocking(False)
        self.client.setblocking(False)
        hub = gevent.get_hub()
        self.worker = types.SimpleNamespace(
            _hub_thread=hub.thread_ident,
            _wheel=Wheel(hub.loop),
            _parked=set(),
            sent_at_once=lambda: None,
        )
        self.stream = EventStream(keepalive=30.0, max_seconds=max_seconds)
        body = StreamBody(self.stream.response(), self.stream)
        self.parked = ParkedStream(self.worker, body, self.server, True, hub.loop)  # type: ignore[arg-type]
        self.parked.start()

    @property
    def hooked(self) -> bool:
        return self.stream._direct is not None

    def received(self) -> bytes:
        data = b""
        while True:
            try:
                got = self.client.recv(1 << 20)
            except BlockingIOError:
                return data
            if not got:
                return data
            data += got

    def drain(self, expected: int) -> bytes:
        """Read until ``expected`` bytes came, letting the loop write what waits."""
        data = b""
        with gevent.Timeout(5):
            while len(data) < expected:
                data += self.received()
                gevent.sleep(0.001)
        return data

    def close(self) -> None:
        ending = self.parked.abort()
        if ending is not None:
            ending.join(timeout=5)
        self.client.close()


def native_thread(target: Callable[[], object]) -> None:
    """Run ``target`` in a new OS thread and wait for it, the hub's loop left still."""
    done = get_original("_thread", "allocate_lock")()
    done.acquire()

    def run() -> None:
        try:
            target()
        finally:
            done.release()

    get_original("_thread", "start_new_thread")(run, ())
    done.acquire()


def a_parked_stream_with_nothing_waiting_is_written_in_the_publishers_call(setup: Setup) -> None:
    assert setup.hooked
    setup.stream.deliver(FRAME)
    assert setup.received() == chunk(FRAME)  # no turn of the loop in between
    assert setup.hooked


def a_full_socket_unhooks_until_every_frame_behind_it_went_out(setup: Setup) -> None:
    filled = fill(setup.server)
    setup.stream.deliver(FRAME)  # refused: the loop holds it until the socket has room
    assert not setup.hooked
    setup.stream.deliver(SECOND)  # queued behind it, whatever the socket does meanwhile
    assert setup.stream.pending == 1
    data = setup.drain(filled + len(chunk(FRAME)) + len(chunk(SECOND)))
    assert data[filled:] == chunk(FRAME) + chunk(SECOND)
    assert setup.hooked  # written what waited: direct again
    setup.stream.deliver(FRAME)
    assert setup.received() == chunk(FRAME)


def a_native_threads_frame_keeps_later_hub_frames_behind_it(setup: Setup) -> None:
    native_thread(lambda: setup.stream.deliver(FRAME))
    assert not setup.hooked
    assert setup.received() == b""  # it waits for the loop
    setup.stream.deliver(SECOND)  # on the hub, yet after it: the loop writes both at once
    assert setup.drain(len(chunk(FRAME + SECOND))) == chunk(FRAME + SECOND)
    assert setup.hooked


def a_frame_sent_in_part_is_finished_before_the_next(setup: Setup) -> None:
    setup.server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # room for a part
    big = b"data: " + b"y" * 200_000 + b"\n\n"
    setup.stream.deliver(big)
    assert setup.parked._out  # the rest, for the loop
    assert not setup.hooked
    setup.stream.deliver(FRAME)
    assert setup.stream.pending == 1
    expected = chunk(big) + chunk(FRAME)
    assert setup.drain(len(expected)) == expected
    assert setup.hooked


def a_stream_with_a_deadline_is_never_written_directly(setup: Setup) -> None:
    assert not setup.hooked  # each write checks the deadline, on the loop
    setup.stream.deliver(FRAME)
    assert setup.received() == chunk(FRAME)  # written at once all the same
    assert not setup.hooked


#: Each scenario, and its stream's ``max_seconds``.
SCENARIOS: dict[str, tuple[Callable[[Setup], None], float | None]] = {
    f.__name__: (f, max_seconds)
    for f, max_seconds in (
        (a_parked_stream_with_nothing_waiting_is_written_in_the_publishers_call, None),
        (a_full_socket_unhooks_until_every_frame_behind_it_went_out, None),
        (a_native_threads_frame_keeps_later_hub_frames_behind_it, None),
        (a_frame_sent_in_part_is_finished_before_the_next, None),
        (a_stream_with_a_deadline_is_never_written_directly, 60.0),
    )
}


def run(name: str) -> None:
    """Run one scenario on a freshly parked stream (gevent already patched in)."""
    scenario, max_seconds = SCENARIOS[name]
    setup = Setup(max_seconds)
    try:
        scenario(setup)
    finally:
        setup.close()


def streams_left() -> int:
    """Streams still in memory, freed or not (the collector is off)."""
    return sum(isinstance(o, EventStream) for o in gc.get_objects())


def a_finished_parked_stream_is_freed_without_the_collector() -> None:
    gc.disable()
    setup = Setup()
    setup.stream.deliver(FRAME)
    setup.stream.close()  # the loop writes the end, then lets go
    with gevent.Timeout(5):
        while setup.worker._parked or setup.parked._reader is not None:
            gevent.sleep(0.01)
    setup.client.close()
    del setup
    assert streams_left() == 0


def a_finished_stream_under_gevent_is_freed_without_the_collector() -> None:
    # -k gevent's way: the body is iterated, and the hang-up watch watches the socket.
    from flask import Flask

    gc.disable()
    app = Flask(__name__)
    server, client = socket.socketpair()
    with server, client:
        with app.test_request_context(environ_base={"gunicorn.socket": server}):
            stream = EventStream(keepalive=None)
            response = stream.response()
        assert stream._stop_watching is not None  # watching
        body = iter(stream)
        stream.deliver(FRAME)
        stream.close()
        assert list(body)[1:] == [FRAME]
        response.close()
        del stream, response, body
    assert streams_left() == 0
