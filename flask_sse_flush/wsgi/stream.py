"""``EventStream``: one HTTP connection's frames, keepalives and end.

The response body is a generator that yields **whole frames**: each event
as soon as it is queued, or, when several are already waiting for a slow
socket, all of them as one chunk. WSGI servers write each yielded chunk
with one ``send()`` and flush it, so an event never waits for the next one
and never leaves in two pieces.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from flask import Response, has_request_context, request

from ..exceptions import StreamClosed
from ..ops.metrics import METRICS, enabled
from ..runtime import Empty, Overflow, new_channel, new_lock, watch_for_hangup
from ..wire.frames import ENDING_FRAMES, PROGRESS_COALESCING, Coalescing, Event, comment
from .direct import KEEPALIVE_DUE, REST, DirectWriter, direct_writer
from .headers import KEEPALIVE_HEADER, setup_sse_headers
from .servers import check_server
from .transport import client_socket, end_connection, uwsgi_socket

__all__ = ["KEEPALIVE", "KEEPALIVE_EVENT", "EventStream", "opening_frame", "sse_response"]

log = logging.getLogger(__name__)

#: The keepalive frame, as the original ``sendKeepalive`` wrote it.
KEEPALIVE = comment("keepalive")
#: The keepalive as an event, for proxies that ignore comment lines.
KEEPALIVE_EVENT = b"event: keepalive\ndata: {}\n\n"
_FRAME_ENDS = (b"\n\n", b"\r\r", b"\r\n\r\n")
_END = object()
#: A stream ends as too slow once this many times ``buffer`` frames that
#: cannot be coalesced wait for its client.
_SLOW_CLIENT_FACTOR = 4
#: The most bytes of frames already queued that go out as one chunk.
_BATCH_BYTES = 64 * 1024
_TOO_SLOW = "the client reads too slowly: its stream ended; it resumes with its Last-Event-ID"

C = TypeVar("C", bound=Callable[[], Any])


def _retry_field(retry: int) -> str:
    if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
        raise ValueError(f"retry must be a non-negative int (milliseconds), not {retry!r}")
    return f"retry: {retry}\n"


def opening_frame(retry: int | None = None, last_event_id: str | None = None) -> bytes:
    """The first frame of every stream; it dispatches no event.

    WSGI servers send the status line and headers only together with the
    first body chunk, so a stream that waited for its first event would
    leave the client without headers until then (Node has
    ``res.flushHeaders()`` for this). This frame goes out at once.

    :param retry: reconnection delay (ms) to announce.
    :param last_event_id: an ``id:`` field without data. The browser takes
        it as its ``lastEventId`` without firing an event, so even a stream
        cut before its first event reconnects with a ``Last-Event-ID``.
    :raises ValueError: ``retry`` is negative or ``last_event_id`` contains
        CR, LF or NUL.
    """
    retry_line = "" if retry is None else _retry_field(retry)
    Event(id=last_event_id)  # the same checks as any event id
    fields = "" if last_event_id is None else f"id: {last_event_id}\n"
    fields += retry_line
    return fields.encode("utf-8") + comment("stream open")


def _as_frame(item: Event | bytes) -> bytes:
    if isinstance(item, Event):
        return item.encode()
    if isinstance(item, (bytes, bytearray, memoryview)):
        frame = bytes(item)
        if not frame.endswith(_FRAME_ENDS):
            raise ValueError(
                "a raw frame must be complete, ending with a blank line "
                f"(b'\\n\\n'); got {frame[-20:]!r}. Send an Event to have it framed."
            )
        return frame
    raise TypeError(f"expected an Event or bytes, not {type(item).__name__}")


class EventStream:
    """A channel from any thread or greenlet to one client connection.

    Send events with :meth:`send` (or the ``send_*`` helpers) from anywhere;
    return :meth:`response` from a Flask view. The body yields an opening
    frame at once, then each event as it comes (events already queued
    together, see ``batch``), a keepalive comment
    after ``keepalive`` seconds without one, and ends after :meth:`close`.

    When the client disconnects, the server stops the body: the stream
    closes and runs the :meth:`on_close` callbacks, so a job can stop too.
    A WSGI server notices a disconnect only when a write fails; under
    gevent the stream also watches its client's socket while it waits, so
    a client that hangs up is noticed at once (:attr:`hung_up`); elsewhere
    the keepalive period bounds how long that takes.

    A client that reads slower than events are sent cannot make the stream
    grow without bound: once more than ``buffer`` events wait, queued events
    that are levels (progress is a level, not a log) are reduced to the
    newest of each level. Other events are never coalesced. Events sent with
    :meth:`send` get their level from ``coalesce``; frames a broker delivers
    (:meth:`deliver`) carry the level the broker's own policy gave them, so
    a brokered stream follows the one policy its broker declares.

    The overflow policy, for the events that cannot be coalesced: once
    ``4 * buffer`` of them wait, the next one ends the stream as *too
    slow* (:attr:`too_slow`). It lets go of every frame still queued,
    accepts nothing more (:meth:`send` and :meth:`deliver` raise
    :class:`~flask_sse_flush.StreamClosed`, so a broker drops it from its
    fan-out) and ends its body after the frame being written, so the
    browser reconnects with the ``Last-Event-ID`` of the last event it
    really received. A brokered stream then resumes exactly from the job's
    log: nothing is lost, ``complete`` and ``error`` included. A stream of
    your own view resumes only as far as your view reads ``Last-Event-ID``.
    The metrics count such streams as closed for ``slow_client``.

    :param keepalive: seconds of silence before a ``: keepalive`` comment;
        ``None`` disables keepalives.
    :param retry: if given, the reconnection delay (milliseconds) announced
        to the browser in the opening frame.
    :param last_event_id: if given, set as the browser's ``lastEventId`` by
        the opening frame (see :func:`opening_frame`).
    :param buffer: how many events may wait for a slow client before
        coalescing starts; four times as many that cannot be coalesced end
        the stream as too slow. ``None`` for no bound at all.
    :param coalesce: which event types only matter as their latest value
        (a :class:`~flask_sse_flush.wire.frames.Coalescing`, or the types).
    :param keepalive_event: send keepalives as an ``event: keepalive`` (with
        ``data: {}`` and no id, so it moves no ``Last-Event-ID``) instead of
        a comment: some CDNs and proxies ignore comment lines and cut a
        stream after their idle timeout. Pages need no listener for it.
    :param max_seconds: rotate the stream: once it has been open that
        long, it ends after the frame being written (an event or a
        keepalive) with a jittered ``retry:`` hint of about a second, and
        the browser reconnects with its ``Last-Event-ID``
        (:attr:`rotated`). Events queued but not yet written are not sent:
        only for streams that resume exactly from ``Last-Event-ID`` (a
        brokered job's or channel's). ``None`` (the default) never rotates.
    :param batch: whether the frames already queued when the server asks
        for the next chunk go out together, as one chunk (one write, one
        syscall) of at most 64 KiB; a frame is never split, and nothing
        waits for more. ``None`` (the default): on when a server with a
        client socket serves the stream (every real server), off under
        Flask's test client, where each frame stays its own chunk.

    .. versionchanged:: 1.0
       ``max_seconds`` and ``batch``.
    """

    def __init__(
        self,
        keepalive: float | None = 15.0,
        *,
        retry: int | None = None,
        last_event_id: str | None = None,
        buffer: int | None = 256,
        coalesce: Coalescing | Collection[str] = PROGRESS_COALESCING,
        keepalive_event: bool = False,
        max_seconds: float | None = None,
        batch: bool | None = None,
    ) -> None:
        if keepalive is not None and not keepalive > 0:
            raise ValueError(
                f"keepalive must be a positive number of seconds or None, not {keepalive!r}"
            )
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(
                f"max_seconds must be a positive number of seconds or None, not {max_seconds!r}"
            )
        self.max_seconds = max_seconds
        self.keepalive = keepalive
        self._keepalive_frame = KEEPALIVE_EVENT if keepalive_event else KEEPALIVE
        self._opening = opening_frame(retry, last_event_id)
        self._levels = Coalescing.of(coalesce).types
        self._slow = None if buffer is None else _SLOW_CLIENT_FACTOR * buffer
        self._channel = new_channel(buffer, self._slow)
        self._lock = new_lock()
        self._closed = False
        self._finished = False
        self._started = False
        self._callbacks: list[Callable[[], Any]] = []
        #: Whether the stream ended because its client hung up while it waited.
        self.hung_up = False
        #: Whether the stream ended because its client read too slowly (the
        #: overflow policy above); the client is expected back.
        self.too_slow = False
        #: Whether the stream ended with a ``retry:`` hint (:meth:`close`).
        self.retry_sent = False
        #: Whether the stream ended because it was open ``max_seconds``.
        self.rotated = False
        self._retry_at_close: int | None = None
        self._measure = enabled()
        self._ending = "closed"  # what the last frame said, for the metrics
        self._batch_given = batch
        self._stop_watching: Callable[[], None] | None = None
        self._body: Iterator[bytes] | None = None  # the frames' generator, once iterated
        # Set by a server that parked the stream: called after each put, out
        # of the stream's lock, so the frame is written at once from the hub.
        self._pushed: Callable[[], None] | None = None
        # Also set by such a server: writes a frame in the caller's own call
        # when nothing waits before it, and says whether it did (the
        # fan-out's fast path: no queue, no second look at it).
        self._direct: Callable[[bytes], bool] | None = None
        self._server_socket: Any = None  # gunicorn's, to end the connection after a hint
        # Under gunicorn -k gevent: what writes frames published on the hub
        # while the body waits (flask_sse_flush.wsgi.direct).
        self._writer: DirectWriter | None = None
        self._batch = bool(batch)

    @property
    def closed(self) -> bool:
        """Whether the stream accepts no more events."""
        return self._closed

    def send(self, event: Event | bytes) -> None:
        """Queue one event (or one complete raw frame) for the client.

        Safe from any thread or greenlet; never blocks.

        :raises StreamClosed: the stream was closed or its client left.
        """
        # The hot path (a burst to one client, the blueprint's own sends):
        # an Event's frame was built once; only a subclass may encode its own.
        if isinstance(event, Event):
            frame = event.frame if type(event) is Event else event.encode()
            level = event.event if event.event in self._levels else None
        else:
            frame, level = _as_frame(event), None
        self._queue(frame, level)

    def deliver(self, frame: bytes, level: str | None = None) -> None:
        """Queue one complete, encoded frame; what a broker calls for each event.

        The fan-out hot path: no checks beyond the stream's state, so
        ``frame`` must be a whole frame (an :attr:`Event.frame
        <flask_sse_flush.Event.frame>`). ``level`` is its coalescing level,
        ``None`` for a frame that is never dropped. Never blocks.

        :raises StreamClosed: the stream was closed or its client left.
        """
        # The one way in for every frame (send() comes here too): checked and
        # queued under the lock close() takes, so a frame can never land
        # behind the end marker and vanish without an error. A server that
        # parked the stream may write the frame at once instead.
        with self._lock:
            if self._closed:
                raise StreamClosed("the stream is closed; its client will receive nothing more")
            direct = self._direct
            if direct is not None and direct(frame):
                return
            pushed = self._pushed
            stamp = time.monotonic() if self._measure else None
            try:
                self._channel.put(frame, level, stamp, schedule=pushed is None)
            except Overflow:
                self._overflowed()
                raise StreamClosed(_TOO_SLOW) from None
        if pushed is not None:
            pushed()

    # send()'s way in: this class's own, whatever a subclass makes of deliver().
    _queue = deliver

    def _overflowed(self) -> None:
        """The client fell too far behind (the overflow policy); lock held."""
        self._closed = self.too_slow = True
        log.info("a client fell %d events behind: ending its stream as too slow", self._slow)

    @property
    def pending(self) -> int:
        """How many frames wait to be written to the client."""
        return self._channel.pending()

    def close(self, *, retry: int | None = None) -> None:
        """End the stream once the events already sent have gone out.

        Idempotent; safe from any thread or greenlet.

        :param retry: a reconnection delay (ms) to announce last, so the
            browser comes back after it and resumes with its
            ``Last-Event-ID``: what a graceful stop of the server sends.
        :raises ValueError: ``retry`` is not a non-negative int.
        """
        if retry is None:
            retry = self._retry_at_close
        hint = None if retry is None else (_retry_field(retry) + "\n").encode("ascii")
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if hint is not None:
                stamp = time.monotonic() if self._measure else None
                self._channel.put(hint, None, stamp, bounded=False)
                self.retry_sent = True
            self._channel.put(_END, bounded=False)

    def retry_at_close(self, retry: int) -> None:
        """Announce ``retry`` (ms) when the stream is closed later, whoever closes it.

        What a graceful stop asks of a stream it lets run to its end (its
        job lives in this process): the browser then waits that long before
        it reconnects, and not all at once.
        """
        _retry_field(retry)
        self._retry_at_close = retry

    def on_close(self, callback: C) -> C:
        """Call ``callback()`` once when the stream ends, for any reason.

        Usable as a decorator. A callback registered after the end runs at
        once. Exceptions from callbacks are logged, not raised.
        """
        with self._lock:
            if not self._finished:
                self._callbacks.append(callback)
                return callback
        _run_callback(callback)
        return callback

    def __iter__(self) -> Iterator[bytes]:
        """The body: whole ``bytes`` frames, one chunk per iteration. Iterate it once."""
        with self._lock:
            if self._started:
                raise RuntimeError("an EventStream's body can be iterated only once")
            self._started = True
        self._body = self._frames()
        return self._body

    def _frames(self) -> Iterator[bytes]:
        # Frames already queued when the body comes for the next one go out
        # together, as one chunk (one write, one syscall): nothing waits for
        # more, and a frame is never split. With metrics on, each frame's put
        # time comes back from the channel as its stamp. While it waits, a
        # direct writer (gunicorn -k gevent) may write frames published on
        # the hub itself, and keepalives when the hub's timer wheel finds
        # the stream silent: the body then waits with no timeout of its own.
        measure = self._measure
        if measure:
            METRICS.stream_opened()
        reason = "client_gone"
        deadline = None if self.max_seconds is None else time.monotonic() + self.max_seconds
        channel = self._channel
        writer = self._writer
        yielded = len(self._opening)  # body bytes handed to the server
        waited = 0  # ... as the body began its last wait
        try:
            yield self._opening
            while True:
                wait = self.keepalive
                if deadline is not None:
                    left = max(0.0, deadline - time.monotonic())
                    wait = left if wait is None else min(wait, left)
                if writer is not None:
                    if writer.in_step(yielded):
                        if yielded != waited:  # the server wrote what the body yielded
                            writer.last = time.monotonic()
                        # Hooked only with nothing queued, checked after any put
                        # a thread began without the writer: no frame written
                        # in a publisher's call ever overtakes a queued one.
                        with self._lock:
                            hooked = not channel.pending()
                            if hooked:
                                self._direct = writer
                        if hooked:
                            writer.arm()
                            wait = None  # the wheel times the keepalive (no deadline here)
                    else:  # something between holds the body back: never again
                        writer.disarm()
                        writer = self._writer = None
                waited = yielded
                try:
                    try:
                        item = channel.get(wait)
                    finally:
                        self._direct = None
                        if writer is not None:
                            writer.settle()
                except Empty:
                    if deadline is not None and time.monotonic() >= deadline:
                        yield self._rotate()
                        return
                    yield self._keepalive_frame
                    yielded += len(self._keepalive_frame)
                    continue
                except Overflow:
                    # Too slow: the client comes back with its Last-Event-ID,
                    # once the frame the socket took in part is whole.
                    if writer is not None and writer.rest is not None:
                        self._send_rest(writer)
                    return
                if item is _END:
                    reason = self._ending
                    return
                if item is REST:  # what the socket left of a direct frame, before anything else
                    if writer is not None and not self._send_rest(writer):
                        return
                    continue
                if item is KEEPALIVE_DUE:  # due, and the writer could not write it
                    yield self._keepalive_frame
                    yielded += len(self._keepalive_frame)
                    continue
                alone = not self._batch or not channel.pending()
                if alone and deadline is None:  # the common case: one event, nothing behind
                    yielded += len(item)
                    if not measure:
                        yield item
                        continue
                    stamp = channel.stamp
                    if item.startswith(ENDING_FRAMES):
                        self._note_ending((item,))
                    yield item
                    now = time.monotonic()
                    METRICS.event_sent(now - (stamp or now))
                    continue
                stamps = [channel.stamp] if measure else None
                if alone:
                    frames = [item]
                else:
                    frames = [
                        item,
                        *channel.get_ready(_BATCH_BYTES - len(item), stamps),
                    ]
                ended = frames[-1] is _END
                if ended:
                    frames.pop()
                if measure or deadline is not None:
                    self._note_ending(frames)
                # Past the deadline: rotate after these frames, unless the job ended anyway.
                rotate = deadline is not None and time.monotonic() >= deadline
                out = frames[0] if len(frames) == 1 else b"".join(frames)
                yielded += len(out)
                yield out
                if stamps is not None:
                    now = time.monotonic()
                    for stamp in stamps[: len(frames)]:
                        METRICS.event_sent(now - (stamp or now))
                if ended:
                    reason = self._ending
                    return
                if rotate and self._ending == "closed":
                    yield self._rotate()
                    return
        finally:
            # Runs on normal end and on GeneratorExit (the server closing the
            # body after a failed write, i.e. a client disconnect).
            if writer is not None:
                writer.disarm()
            self._direct = self._writer = None
            if measure:
                self._count_end(reason)
            self._finish()

    def _send_rest(self, writer: DirectWriter) -> bool:
        """Send what the socket did not take of a frame written directly; ``False``: hung up."""
        try:
            writer.sock.sendall(writer.take_rest())
        except OSError:
            self.hung_up = True
            return False
        writer.last = time.monotonic()
        return True

    def _count_end(self, reason: str) -> None:
        """Count the stream's end in the metrics; ``reason`` unless a flag says more."""
        if self.too_slow:
            reason = "slow_client"
        elif self.rotated:
            reason = "rotated"
        elif self.hung_up:
            reason = "client_gone"
        elif self.retry_sent:
            reason = "shutdown"
        METRICS.stream_closed(reason, self._channel.coalesced)

    def _note_ending(self, frames: Sequence[bytes]) -> None:
        """Remember a ``complete`` or ``error`` among ``frames``: the stream's end, for metrics."""
        for frame in frames:
            if frame.startswith(ENDING_FRAMES):
                self._ending = "complete" if frame.startswith(ENDING_FRAMES[0]) else "error"

    def _rotate(self) -> bytes:
        """End the stream now, for ``max_seconds``: the ``retry:`` frame to write last.

        Jittered (0.5 to 1.5 s), so the streams opened together do not all
        come back together.
        """
        with self._lock:
            self._closed = self.rotated = True
        retry = random.randint(500, 1500)
        return (_retry_field(retry) + "\n").encode("ascii")

    def _finish(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = self._closed = True
            callbacks, self._callbacks = self._callbacks, []
            self._writer = None  # it holds the server's response: let go of it with the stream
        self._channel.close()
        for callback in callbacks:
            _run_callback(callback)

    def response(self) -> Response:
        """Return the streaming :class:`flask.Response` for this stream.

        Call it inside the request: it also sets ``TCP_NODELAY`` on the
        client socket before the first frame.
        """
        # The stream itself is the body: its frames' generator is made only
        # when a server iterates it (a parked stream never has one).
        response = _StreamResponse(self)
        response.event_stream = self
        # Also covers a body the server never started iterating, whose
        # generator ``finally`` would never run.
        response.call_on_close(self._finish)
        if has_request_context():
            # Under gevent, a client that hangs up during a silence is
            # noticed at once, not at the next keepalive write.
            check_server(request.environ)
            sock = client_socket(request.environ)
            duplicate = uwsgi_socket() if sock is None else None  # uWSGI keeps its own
            if self._batch_given is None:
                self._batch = sock is not None or duplicate is not None
            stop = watch_for_hangup(sock or duplicate, self._hung_up)
            if stop is not None:
                self._stop_watching = stop
                self.on_close(stop)
            if duplicate is not None:
                self.on_close(duplicate.close)
            if "gunicorn.socket" in request.environ and request.environ.get(
                "SERVER_PROTOCOL", ""
            ).startswith("HTTP/1"):
                # Gunicorn calls this after the body's last chunk: a stream
                # ended with a retry hint (a graceful stop) also ends its
                # connection, so the browser's reconnect opens a new one
                # (to another worker) instead of reusing this one.
                self._server_socket = sock
                response.call_on_close(self._after_body)
        if self.keepalive is not None:
            # How long a client may hear nothing before it calls the
            # connection dead (SSEFlushSource waits about twice this).
            response.headers[KEEPALIVE_HEADER] = f"{self.keepalive:g}"
        return setup_sse_headers(response)

    def _after_body(self) -> None:
        if self.retry_sent:
            end_connection(self._server_socket)

    def _hung_up(self) -> None:
        log.debug("client hung up; ending its stream")
        self.hung_up = True
        self.close()


#: The WSGI environ key a server that can park streams sets (to ``True``):
#: the body of a stream response is then a :class:`StreamBody` it recognises.
PARK_KEY = "flask_sse_flush.park"


class StreamBody:
    """The WSGI body of an :class:`EventStream` response: the stream's frames, nothing between.

    Iterating it iterates the stream's frames themselves, with no wrapper
    between them and the server: each would cost a call per event, and one
    more level of the stack a greenlet saves while its stream waits.
    :meth:`close` closes the response (its ``call_on_close`` callbacks
    too). A server that knows it
    (:class:`~flask_sse_flush.wsgi.worker.StreamWorker`) may instead write
    the stream's frames itself, from its event loop, and call
    :meth:`close` when the stream ends. Middleware that wraps the body
    hides it, and the stream is then served by iteration.

    .. versionchanged:: 1.0
       The body of every ``GET`` of a stream, under every server.
    """

    __slots__ = ("_response", "stream")

    def __init__(self, response: Response, stream: EventStream) -> None:
        self._response: Response | _Closing = response
        self.stream = stream

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.stream)

    def close(self) -> None:
        self._response.close()

    def _keep_only_closing(self) -> None:
        """Hold only what :meth:`close` needs of the response, not the response.

        What the stream worker does once it has written the head of a
        stream it parks: the response's headers and state are about a
        fifth of what an idle parked stream holds, and nothing reads them
        again. Its ``call_on_close`` callbacks stay, the very list, so one
        added later through the response still runs.
        """
        response = self._response
        if type(response) is _StreamResponse and response.response is self.stream:
            self._response = _Closing(self.stream, response._on_close)


class _Closing:
    """What closing a parked stream's response does, without the response.

    :meth:`_StreamResponse.close` less the frames' generator, which a
    parked stream never has: the stream's ``close()``, then every
    ``call_on_close`` callback.
    """

    __slots__ = ("_on_close", "_stream")

    def __init__(self, stream: EventStream, on_close: list[Callable[[], Any]]) -> None:
        self._stream = stream
        self._on_close = on_close

    def close(self) -> None:
        self._stream.close()
        for func in self._on_close:
            func()


class _StreamResponse(Response):
    """A stream's response: its body is a :class:`StreamBody` when the stream's own."""

    event_stream: EventStream

    def get_app_iter(self, environ: Any) -> Iterable[bytes]:
        stream = self.event_stream
        if (
            environ.get("REQUEST_METHOD") == "GET"
            and self.status_code == 200
            # Only the stream's own body, untouched: an after_request hook
            # (compression, say) may have replaced it.
            and self.response is stream
            and stream._body is None
            and self.headers.get("Content-Encoding", "identity") == "identity"
        ):
            return StreamBody(self, stream)
        return super().get_app_iter(environ)

    def __call__(self, environ: Any, start_response: Any) -> Iterable[bytes]:
        body = super().__call__(environ, start_response)
        # A server that parks streams writes them itself; under any other,
        # frames published on the hub may go out in the publisher's call.
        if type(body) is StreamBody and environ.get(PARK_KEY) is not True:
            self.event_stream._writer = direct_writer(environ, start_response, self.event_stream)
        return body

    def close(self) -> None:
        body = self.event_stream._body
        close = getattr(body, "close", None)
        if close is not None:
            close()  # the frames' generator first: its finally ends the stream
        super().close()  # the stream's close() (idempotent), then call_on_close


def _run_callback(callback: Callable[[], Any]) -> None:
    try:
        callback()
    except Exception:
        log.exception("EventStream close callback %r failed", callback)


def sse_response(events: Iterable[Event | bytes], *, retry: int | None = None) -> Response:
    """Wrap any iterable of :class:`Event` (or raw frames) in a stream response.

    Each item becomes one chunk, after an opening frame that sends the
    headers at once. There are no keepalives (nothing can interleave with a
    plain iterable): use :class:`EventStream` for long silences.

    :param events: the events, produced lazily as they happen.
    :param retry: reconnection delay (milliseconds) to announce.
    """

    opening = opening_frame(retry)  # a bad retry fails here, before any byte
    iterator = iter(events)

    closed: list[bool] = []

    def close_source() -> None:
        # WSGI's rule for iterables: close() if it has one; a generator is
        # its own iterator, a class may hand out another.
        if closed:
            return
        closed.append(True)
        for source in {id(events): events, id(iterator): iterator}.values():
            close = getattr(source, "close", None)
            if callable(close):
                close()

    def body() -> Iterator[bytes]:
        try:
            yield opening
            for item in iterator:
                yield _as_frame(item)
        finally:
            close_source()

    response = Response(body())
    # Also closes a source whose body the server never started to iterate.
    response.call_on_close(close_source)
    return setup_sse_headers(response)
