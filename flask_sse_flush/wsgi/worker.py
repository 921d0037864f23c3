"""``StreamWorker``: a gunicorn gevent worker that parks idle streams without a greenlet.

::

    gunicorn -k flask_sse_flush.wsgi.worker.StreamWorker --worker-connections 10000 app:app

Under ``-k gevent`` every open stream is a greenlet parked deep in the
server's call stack, waiting for its next event: its saved stack, the
request's environ and the server's parser stay in memory for as long as the
browser stays. This worker serves every request as gunicorn's gevent worker
does, until a view returns an :class:`~flask_sse_flush.EventStream`
response over plain HTTP/1.x. Then it writes the headers and the opening
frame from the request's greenlet as ever, takes the connection over and
lets the greenlet end. What is left of the stream is its queue, its socket,
two loop watchers (readable: the client hung up; writable: a slow client's
socket has room again) and a place on the worker's one timer wheel
(keepalives and ``max_seconds``).
Frames are written from the event loop as they arrive, with one
non-blocking ``send()`` for everything already queued; nothing waits for
more, and a frame is never split.

Every promise of a stream holds: the headers and ``TCP_NODELAY`` (set
before the first frame, as ever), the keepalives, the hang-up detection,
the slow-client policy (frames wait in the stream's queue while the socket
is full, so coalescing and the overflow bound apply as before), rotation,
the graceful stop (the worker waits for its parked streams as it waits for
its greenlets, up to ``--graceful-timeout``) and the metrics.

A stream is served the ordinary way (its greenlet iterates the body) when
it is not the plain case: HTTP/2, TLS terminated by gunicorn itself, a
``HEAD``, or middleware that wraps the response body (the worker cannot
know what it does to the bytes).

The connection is closed after a parked stream ends (its client reconnects
on a new one, as after any stream). Parked streams do not hold one of
``--worker-connections``' greenlets: bound them with ``max_streams``
(``SSE_FLUSH_MAX_STREAMS``), which defaults to that setting anyway.
Gunicorn's access log has the stream's line when it is parked, with the
bytes sent so far.

.. versionadded:: 1.0
"""

from __future__ import annotations

import _socket
import contextlib
import contextvars
import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
from gunicorn.http.wsgi import Response as GunicornResponse
from gunicorn.workers.ggevent import GeventWorker

from ..ops.metrics import METRICS, install
from ..runtime import hung_up, native_thread_ident
from ..runtime.wheel import Wheel
from ..wire.frames import ENDING_FRAMES
from .direct import _framed, chunk
from .stream import _BATCH_BYTES, _END, PARK_KEY, EventStream, StreamBody

__all__ = ["StreamWorker"]

log = logging.getLogger(__name__)

_PARKED = object()  # what the WSGI callable answers for a stream it parked
_REQUEST: contextvars.ContextVar[tuple[Any, float]] = contextvars.ContextVar(
    "flask_sse_flush_worker_request"
)
#: How often the stopping worker looks at its parked streams.
_DRAIN_POLL = 0.05
_LAST_CHUNK = b"0\r\n\r\n"
_thread_ident = native_thread_ident()


class ParkedStream:
    """One parked stream: its socket, its pending bytes and its watchers; runs on the hub."""

    __slots__ = (
        "_chunked",
        "_closing",
        "_deadline",
        "_last",
        "_loop",
        "_loop_thread",
        "_out",
        "_reader",
        "_slot",
        "_sock",
        "_worker",
        "_writer",
        "body",
        "stream",
    )

    def __init__(
        self,
        worker: StreamWorker,
        body: StreamBody,
        sock: _socket.socket,
        chunked: bool,
        loop: Any,
    ) -> None:
        self._worker = worker
        self.body = body
        self.stream: EventStream = body.stream
        self._sock = sock
        self._chunked = chunked
        self._loop = loop
        self._out: bytearray | None = None  # bytes the socket has not taken yet
        self._closing: str | None = None  # why the stream ends, once it does
        self._writer: Any = None
        self._slot: int | None = None  # where it is on the worker's timer wheel
        self._reader: Any = loop.io(sock.fileno(), 1)  # 1: readable
        self._loop_thread: int = worker._hub_thread
        now = time.monotonic()
        self._last = now  # the last write
        seconds = self.stream.max_seconds
        self._deadline = None if seconds is None else now + seconds

    def start(self) -> None:
        stream = self.stream
        if stream._measure:
            METRICS.stream_opened()
        self._reader.start(self._on_readable)
        self._arm()
        stream._channel.listen(self._on_ready)  # type: ignore[attr-defined]
        stream._pushed = self._on_pushed
        self._on_ready()  # frames may already wait; then it hooks _direct

    # -- the loop's callbacks ------------------------------------------------

    def _guard(self, callback: Callable[[], None]) -> None:
        """Run a loop callback; an error ends this stream, never the hub."""
        try:
            callback()
        except Exception:
            log.exception("a parked stream failed; ending it")
            self._end_now("closed")

    # Bound methods, not (callback, args) pairs: each watcher keeps one less tuple.
    def _on_readable(self) -> None:
        self._guard(self._readable)

    def _on_ready(self) -> None:
        self._guard(self._ready)

    def _on_pushed(self) -> None:
        """A frame was queued: in the hub's thread, write it now (no loop callback)."""
        if _thread_ident() == self._loop_thread:
            self._guard(self._ready)
        # From another thread the channel's async watcher wakes the loop.

    def _direct(self, frame: bytes) -> bool:
        """Write one frame in the publisher's own call; the fan-out's hot path.

        Called by :meth:`EventStream.deliver` under the stream's lock, and
        hooked there only while nothing waits to be written before the frame
        (:meth:`_hook`). Every refusal (another thread, a socket that takes
        nothing or fails) and every frame sent in part unhooks it, so the
        frames after it queue behind it until :meth:`_ready` has written what
        waits and hooks it again: no look at the queue or the stream's state
        on each call. ``False``: the frame is queued and :meth:`_ready`
        writes it, or finds the error.
        """
        if _thread_ident() != self._loop_thread:
            self.stream._direct = None
            return False
        if not self._chunked:
            data = frame
        elif frame is _framed[0]:  # the same event as the stream before
            data = _framed[1]
        else:
            data = chunk(frame)
        try:
            sent = self._sock.send(data)
        except OSError:
            self.stream._direct = None
            return False
        self._last = time.monotonic()
        if sent < len(data):
            self._keep(data, sent)  # unhooks
        stream = self.stream
        if stream._measure:
            if frame.startswith(ENDING_FRAMES):  # rare: the call only then
                stream._note_ending((frame,))
            self._worker.sent_at_once()  # it never waited in the queue
        return True

    def _hook(self) -> None:
        """Let publishers on the hub write directly (:meth:`_direct`), unless frames wait.

        Hooked under the stream's lock, where another thread queues its
        frames: none can slip in between the look and the hook. Never for a
        stream with a deadline, whose every write checks it.
        """
        stream = self.stream
        if stream._direct is not None or self._deadline is not None:
            return
        with stream._lock:
            if not stream._channel.pending():
                stream._direct = self._direct

    def _on_tick(self) -> None:
        self._guard(self._tick)

    def _on_writable(self) -> None:
        self._guard(self._writable)

    def _readable(self) -> None:
        state = hung_up(self._sock)
        if state is None:
            return
        self._reader.stop()  # bytes from the client: not ours to read; a write will tell
        if state:
            self.stream.hung_up = True
            self._end_now("client_gone")

    def _ready(self) -> None:
        """Write what the stream's queue holds (while the socket takes it)."""
        stream = self.stream
        channel = stream._channel
        while self._closing is None and self._out is None:
            stamps: list[float | None] | None = [] if stream._measure else None
            frames = channel.get_ready(_BATCH_BYTES, stamps)
            if not frames:
                if getattr(channel, "overflowed", False):
                    self._end("slow_client")  # the client comes back with its Last-Event-ID
                else:
                    self._hook()
                return
            ended = frames[-1] is _END
            if ended:
                frames.pop()
            if frames:
                if stream._measure or self._deadline is not None:
                    stream._note_ending(frames)
                self._write(frames[0] if len(frames) == 1 else b"".join(frames))
                if stamps:
                    now = time.monotonic()
                    for stamp in stamps[: len(frames)]:
                        METRICS.event_sent(now - (stamp or now))
            if ended:
                self._end(stream._ending)
            elif (
                self._deadline is not None
                and time.monotonic() >= self._deadline
                and stream._ending == "closed"  # rotate, unless the job ended anyway
            ):
                self._write(stream._rotate())
                self._end("rotated")

    def _tick(self) -> None:
        """The timer: a keepalive after a silence, or the end at ``max_seconds``."""
        if self._closing is not None:
            return
        now = time.monotonic()
        if self._deadline is not None and now >= self._deadline:
            self._write(self.stream._rotate())  # behind what the socket has not taken yet
            self._end("rotated")
            return
        keepalive = self.stream.keepalive
        # A socket still taking earlier bytes needs no keepalive.
        if keepalive is not None and now - self._last >= keepalive and self._out is None:
            self._write(self.stream._keepalive_frame)
        if self._closing is None:
            self._arm()

    def _writable(self) -> None:
        out = self._out
        if out is None:
            return
        try:
            sent = self._sock.send(out)
        except BlockingIOError:
            return
        except OSError:
            self.stream.hung_up = True
            self._end_now("client_gone")
            return
        del out[:sent]
        if out:
            return
        self._out = None
        self._writer.stop()
        if self._closing is not None:
            self._end_now(self._closing)
        else:
            self._ready()

    # -- writing and ending --------------------------------------------------

    def _arm(self) -> None:
        """Be called back for the next keepalive or the deadline, whichever is first."""
        keepalive = self.stream.keepalive
        due = None if keepalive is None else self._last + keepalive
        if self._deadline is not None:
            due = self._deadline if due is None else min(due, self._deadline)
        if due is not None:
            self._worker._wheel.add(self, due)

    def _write(self, data: bytes, *, framed: bool = False) -> None:
        """Send ``data`` (whole frames; ``framed``: bytes of the HTTP framing itself)."""
        if self._chunked and not framed:
            data = chunk(data)
        self._last = time.monotonic()
        if self._out is not None:
            self._out += data
            return
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.stream.hung_up = True
            self._end_now("client_gone")
            return
        if sent < len(data):
            self._keep(data, sent)

    def _keep(self, data: bytes, sent: int) -> None:
        """Hold what the socket did not take of ``data``; the writer watcher sends it."""
        self.stream._direct = None  # until it has gone out, and what queued behind it
        self._out = bytearray(memoryview(data)[sent:])
        if self._writer is None:
            self._writer = self._loop.io(self._sock.fileno(), 2)  # 2: writable
        self._writer.start(self._on_writable)

    def _end(self, reason: str) -> None:
        """End the body cleanly once every byte written so far has gone out."""
        if self._closing is not None:
            return
        self._closing = reason
        if self._chunked:
            self._write(_LAST_CHUNK, framed=True)
        if self._out is None and self._reader is not None:
            self._end_now(reason)

    def _end_now(self, reason: str) -> Any:
        """Let go of the connection, then of the stream in a greenlet of its own; once.

        The stream's close callbacks may block (a broker unsubscribing over
        the network), which a loop callback must never do: a greenlet runs
        them, as the request's greenlet ran them under ``-k gevent``.
        Returns that greenlet (``None`` if the stream had ended already).
        """
        if self._reader is None:
            return None
        self._closing = reason
        for watcher in (self._reader, self._writer):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        self._reader = self._writer = None
        self._worker._wheel.discard(self)
        self._out = None
        self.stream._pushed = self.stream._direct = None
        with contextlib.suppress(OSError):
            self._sock.close()
        return gevent.spawn(self._release, reason)

    def _release(self, reason: str) -> None:
        stream = self.stream
        try:
            if stream._measure:
                stream._count_end(reason)
            try:
                self.body.close()  # the response's close callbacks: the stream's end
            except Exception:
                log.exception("closing a parked stream's response failed")
            stream._finish()
        finally:
            self._worker._parked.discard(self)

    def abort(self) -> Any:
        """The worker is going: end now, whatever is left to write; the releasing greenlet."""
        return self._end_now(self._closing or "shutdown")


class StreamWorker(GeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker, whose idle streams cost about what a socket costs.

    Use it with ``-k flask_sse_flush.wsgi.worker.StreamWorker`` in place of
    ``-k gevent``; see the module's description for what it changes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parked: set[ParkedStream] = set()
        self._stopped_at: float | None = None
        self._hub_thread = 0  # the hub's OS thread, known once the worker runs
        self._wheel: Wheel  # the parked streams' timers, made once the worker runs
        # The metrics' count of a frame written at once: looked up once (in
        # the worker's process, when it loads the app), not per event.
        self.sent_at_once: Callable[[], object] = METRICS.event_sent_at_once

    @property
    def parked(self) -> int:
        """How many streams this worker holds parked now."""
        return len(self._parked)

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.sent_at_once = install().event_sent_at_once
        app: Callable[..., Any] = self.wsgi  # type: ignore[has-type]

        def parking(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            environ[PARK_KEY] = True
            body = app(environ, start_response)
            if type(body) is StreamBody:
                try:
                    if self._park(body, environ, start_response):
                        return _PARKED
                except BaseException:
                    # The client left before the head or the opening frame
                    # went out: gunicorn never sees this body to close it, so
                    # close it here (its hang-up watcher on the socket too,
                    # which gunicorn is about to close).
                    body.close()
                    raise
            return body

        self.wsgi = parking

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        _REQUEST.set((req, time.monotonic()))
        return super().handle_request(listener_name, req, sock, addr)

    def is_already_handled(self, respiter: Any) -> bool:
        if respiter is _PARKED:
            raise StopIteration  # gunicorn ends its loop for this connection
        return bool(super().is_already_handled(respiter))

    def _park(
        self,
        body: StreamBody,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
    ) -> bool:
        """Write the head and the opening frame, then take the connection over."""
        resp: Any = getattr(start_response, "__self__", None)
        sock = environ.get("gunicorn.socket")
        if (
            type(resp) is not GunicornResponse
            or sock is None
            or not environ.get("SERVER_PROTOCOL", "").startswith("HTTP/1")
            or hasattr(sock, "do_handshake")  # TLS: only the socket's own writes may go out
            or not hasattr(sock, "detach")
        ):
            return False
        stream = body.stream
        resp.force_close()  # the connection ends with the stream
        resp.write(stream._opening)  # the head goes with it; the body is never iterated
        request, started = _REQUEST.get((None, time.monotonic()))
        if request is not None:
            self.log.access(resp, request, environ, _elapsed(started))
        stop = stream._stop_watching
        if stop is not None:  # it watched the socket gunicorn is about to let go
            stop()
            stream._stop_watching = None
            with contextlib.suppress(ValueError):
                stream._callbacks.remove(stop)
        stream._server_socket = None  # gunicorn's socket object goes; the connection stays
        # The C socket, not gevent's cooperative one (the module is patched):
        # the loop's own watchers wait for it, and it keeps no watchers of its own.
        raw = _socket.socket(fileno=sock.detach())
        raw.setblocking(False)
        body._keep_only_closing()  # the response's headers and state are written and done
        parked = ParkedStream(self, body, raw, bool(resp.chunked), gevent.get_hub().loop)
        self._parked.add(parked)
        parked.start()
        return True

    def run(self) -> None:
        hub = gevent.get_hub()
        self._hub_thread = hub.thread_ident
        self._wheel = Wheel(hub.loop)
        gevent.spawn(self._note_stop)
        try:
            super().run()
            self._drain()
        finally:
            self._wheel.close()

    def _note_stop(self) -> None:
        while self.alive:
            gevent.sleep(_DRAIN_POLL)
        self._stopped_at = time.monotonic()

    def _drain(self) -> None:
        """Wait for the parked streams as gunicorn waits for its greenlets, then end them."""
        started = self._stopped_at or time.monotonic()
        deadline = started + float(self.cfg.graceful_timeout)
        last_notify = 0.0
        while self._parked and time.monotonic() < deadline:
            if time.monotonic() - last_notify >= 1.0:
                self.notify()
                last_notify = time.monotonic()
            gevent.sleep(_DRAIN_POLL)
        if self._parked:
            log.warning("graceful timeout: ending %d parked streams", len(self._parked))
        releasing = [parked.abort() for parked in list(self._parked)]
        gevent.joinall([g for g in releasing if g is not None], timeout=1.0)


def _elapsed(started: float) -> Any:
    import datetime

    return datetime.timedelta(seconds=time.monotonic() - started)
