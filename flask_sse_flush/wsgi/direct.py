"""A frame written in the publisher's own call, to a stream whose greenlet waits.

Under gunicorn's gevent worker every open stream is a greenlet waiting in
its body for the next frame. A publish wakes it (a greenlet switch), it
hands the frame to gunicorn, and gunicorn writes it; when one event fans out
to 10,000 streams, those wake-ups cost most of the broadcast. While a
stream's greenlet waits, the frame can go to its socket in the publisher's
own call instead: one non-blocking ``send()`` of the frame, framed as
gunicorn frames the body (an HTTP/1.1 chunk), and the greenlet sleeps on.

A :class:`DirectWriter` does that only where nothing can tell the
difference:

- gunicorn's own ``Response`` (not a subclass, which may frame the body
  its own way) over plain HTTP/1.x with gevent: no TLS, no ``HEAD``, no
  ``Content-Length``, no rotation (``max_seconds``);
- the publisher runs in the hub's own OS thread (a greenlet, a request, the
  broker's fan-out); a native thread's frame is queued and woken for as ever;
- the stream's greenlet waits, nothing is queued before the frame, and
  gunicorn has taken every byte the body yielded so far, from the greenlet
  that iterates it (so it wrote each before it asked for the next): a
  middleware that holds the body's chunks back, changes them or iterates
  them elsewhere turns it off for good, and the greenlet then writes every
  frame itself.

Anything else, a full socket included, queues the frame as before and
wakes the greenlet. A frame the socket takes only in part is finished by
the greenlet before anything after it. The hang-up watcher still watches,
and the metrics count each such frame as written without waiting.

Keepalives: while the greenlet waits, the worker's timer wheel
(:class:`~flask_sse_flush.runtime.wheel.Wheel`) times its stream's
silence, not a timer of the greenlet's own, and writes the keepalive the
same way once a whole period has passed since the last write of any kind.
A busy stream is then never woken to learn that it wrote meanwhile, and an
idle one not to send its keepalive (the greenlet sends it where the
writer cannot).
"""

from __future__ import annotations

import _socket
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from ..runtime import gevent_is_active, native_thread_ident
from ..runtime.wheel import Wheel
from ..wire.frames import ENDING_FRAMES

__all__ = ["KEEPALIVE_DUE", "REST", "DirectWriter", "chunk", "direct_writer"]

#: Put in a stream's queue when its socket took a direct frame only in part:
#: the greenlet sends :attr:`DirectWriter.rest` before anything after it.
REST = object()
#: Put in a stream's queue when a keepalive is due and the writer could not
#: write it: the greenlet sends it.
KEEPALIVE_DUE = object()

# The last frame chunk-framed, and its framing: one event fanned out to
# 10,000 streams is framed once, not 10,000 times. Only the hub's thread
# frames, so one entry needs no lock.
_framed: list[bytes] = [b"", b""]


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk; nothing for no data.

    An empty chunk would be the body's last (``0\r\n\r\n``): gunicorn
    skips empty writes, and so does this.
    """
    if data is _framed[0]:
        return _framed[1]
    if not data:
        return b""
    framed = b"%X\r\n%b\r\n" % (len(data), data)
    _framed[0], _framed[1] = data, framed
    return framed


class DirectWriter:
    """Writes one stream's frames to gunicorn's socket while its greenlet waits.

    Called by :meth:`EventStream.deliver` under the stream's lock, as
    ``writer(frame)``; says whether it wrote the frame (or took it over).
    While the greenlet waits, the hub's timer wheel calls it back when a
    keepalive may be due (:meth:`arm`). Kept small: one lives beside each
    open stream.
    """

    __slots__ = (
        "_chunked",
        "_greenlet",
        "_keepalive",
        "_measure",
        "_raw",
        "_response",
        "_settled",
        "_slot",
        "_stream",
        "_thread",
        "_wheel",
        "direct_bytes",
        "last",
        "rest",
    )

    def __init__(self, response: Any, raw: _socket.socket, stream: Any) -> None:
        # stream: the EventStream (which imports this module, not the other way)
        self._response = response
        self._raw = raw
        self._chunked = bool(response.chunked)
        self._stream = stream
        self._measure = stream._measure
        self._thread = _hub_ident()()  # the hub's: the writer is made in the request
        self._greenlet = _getcurrent()  # the request's, which gunicorn writes from
        #: Body bytes written here, which gunicorn counts as its own too once
        #: :meth:`settle` adds them (every frame has some: it grows with each write).
        self.direct_bytes = 0
        self._settled = 0
        #: When the stream last wrote: here, or the greenlet (set when it waits).
        self.last = time.monotonic()
        #: What the socket did not take of the last frame written here.
        self.rest: bytes | None = None
        self._keepalive: float | None = stream.keepalive
        self._wheel = _wheel_of_hub()
        self._slot: int | None = None  # the wheel's

    @property
    def sock(self) -> Any:
        """gevent's socket, whose writes wait for room (the greenlet's)."""
        return self._response.sock

    def in_step(self, yielded: int) -> bool:
        """Whether gunicorn has taken exactly the ``yielded`` bytes of the body (and these),
        from the greenlet that called the app: gunicorn writes each chunk before it
        asks that greenlet for the next, so every one of them is on the wire.

        Call it once :meth:`settle` has run since the last direct write.
        """
        return bool(
            self._response.sent == yielded + self.direct_bytes and _getcurrent() is self._greenlet
        )

    def settle(self) -> None:
        """Add the bytes written here since the last call to gunicorn's count.

        The greenlet calls it as it wakes, before anything can reach
        gunicorn's access log: a direct write leaves gunicorn's response alone.
        """
        response = self._response
        response.sent += self.direct_bytes - self._settled
        self._settled = self.direct_bytes

    def __call__(self, frame: bytes) -> bool:
        # The fan-out's hot path, once per stream per event: kept to the one
        # send() and what it must update. Every refusal (a native thread's
        # frame, a full socket) or part-sent frame leaves something in the
        # queue, so it also unhooks the writer until the greenlet has woken,
        # written what waits and waits again: no later frame overtakes it,
        # without a look at the queue on every call.
        if _ident() != self._thread:
            self._stream._direct = None
            return False
        if not self._chunked:
            data = frame
        elif frame is _framed[0]:  # the same event as the stream before
            data = _framed[1]
        else:  # framed only here: chunk()'s one entry is the hub thread's
            data = chunk(frame)
        try:
            sent = self._raw.send(data)
        except OSError:  # a full socket, or a client gone: the greenlet's write deals with it
            self._stream._direct = None
            return False
        self.direct_bytes += len(frame)
        self.last = time.monotonic()
        if sent < len(data):
            self._leave(data[sent:])
        if self._measure:
            if frame.startswith(ENDING_FRAMES):  # rare: the call only then
                self._stream._note_ending((frame,))
            _sent_at_once()
        return True

    def _leave(self, rest: bytes) -> None:
        """The socket took a frame only in part: the greenlet sends ``rest`` before anything."""
        self.rest = rest
        stream: Any = self._stream
        stream._direct = None
        stream._channel.put(REST, bounded=False)  # wakes the greenlet to send it

    # -- keepalives, while the greenlet waits -----------------------------------

    def arm(self) -> None:
        """Have the keepalive written once the stream has been silent a whole period.

        Called by the greenlet as it begins to wait, after setting the
        stream's ``_direct`` to this writer; from then until it wakes, the
        wheel times the silence.
        """
        if self._keepalive is not None:
            self._wheel.add(self, self.last + self._keepalive)

    def disarm(self) -> None:
        self._wheel.discard(self)

    def _on_tick(self) -> None:
        """The wheel: a keepalive may be due."""
        stream: Any = self._stream
        keepalive = self._keepalive
        if stream._direct is not self or keepalive is None:
            return  # the greenlet is awake: it arms again when it waits
        due = self.last + keepalive
        if time.monotonic() < due:  # it wrote since: not silent that long
            self._wheel.add(self, due)
            return
        frame = stream._keepalive_frame
        with stream._lock:  # in order with any frame a native thread queues
            if stream._closed or stream._direct is not self:
                return
            data = b"%X\r\n%b\r\n" % (len(frame), frame) if self._chunked else frame
            try:
                sent = self._raw.send(data)
            except OSError:  # the greenlet writes it, and finds out what is wrong
                stream._direct = None
                stream._channel.put(KEEPALIVE_DUE, bounded=False)
                return
            self.direct_bytes += len(frame)
            self.last = time.monotonic()
            if sent < len(data):
                self._leave(data[sent:])
            else:
                self._wheel.add(self, self.last + keepalive)

    def take_rest(self) -> bytes:
        rest, self.rest = self.rest, None
        return rest or b""


def _hub_ident() -> Callable[[], int]:
    """The OS thread id function, chosen once gevent runs (never at import)."""
    global _ident, _sent_at_once, _getcurrent
    if _ident is _unset:
        from gevent import getcurrent

        from ..ops.metrics import install

        _sent_at_once = install().event_sent_at_once  # the process's metrics, as the worker's
        _getcurrent = getcurrent
        _ident = native_thread_ident()
    return _ident


def _unset() -> Any:
    raise AssertionError("no DirectWriter was made")


# The timer wheel of each hub that has writers (one per gunicorn worker).
_wheels: weakref.WeakKeyDictionary[Any, Wheel] = weakref.WeakKeyDictionary()


def _wheel_of_hub() -> Wheel:
    """The current hub's timer wheel for writers' keepalives, made the first time."""
    from gevent import get_hub

    hub = get_hub()
    wheel = _wheels.get(hub)
    if wheel is None:
        wheel = _wheels[hub] = Wheel(hub.loop)
    return wheel


_ident: Callable[[], int] = _unset
_sent_at_once: Callable[[], object] = _unset
_getcurrent: Callable[[], object] = _unset


def direct_writer(
    environ: Mapping[str, Any], start_response: Any, stream: Any
) -> DirectWriter | None:
    """A :class:`DirectWriter` for ``stream``, if this server and request allow one.

    Call it once the response has started (``start_response`` was called).
    """
    response = getattr(start_response, "__self__", None)
    if (
        response is None
        or stream.max_seconds is not None
        or environ.get("REQUEST_METHOD") != "GET"
        or not environ.get("SERVER_PROTOCOL", "").startswith("HTTP/1")
        or not gevent_is_active()
    ):
        return None
    try:
        from gunicorn.http.wsgi import Response as GunicornResponse
    except ImportError:  # pragma: no cover - gunicorn is what made this response
        return None
    if (
        type(response) is not GunicornResponse
        or getattr(response, "response_length", 0) is not None  # a Content-Length
    ):
        return None
    sock = getattr(response, "sock", None)
    raw = getattr(sock, "_sock", None)  # gevent's socket keeps the C one here
    if (
        hasattr(sock, "do_handshake")  # TLS: only the socket's own writes may go out
        or not isinstance(raw, _socket.socket)
        or raw.gettimeout() != 0.0  # non-blocking, as gevent keeps it
        or not isinstance(getattr(response, "sent", None), int)
    ):
        return None
    return DirectWriter(response, raw, stream)
