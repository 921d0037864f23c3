"""The Server-Sent Events wire format: events and comments to bytes, and back.

Pure functions and values: no I/O, no Flask. Encoding follows the WHATWG
HTML standard, section "Server-sent events", so that what a browser's
``EventSource`` parses is exactly what was sent:

* only CR, LF and CRLF are line breaks (``str.splitlines`` also splits on
  characters such as U+2028 or form feed, which the standard keeps as data);
* every frame ends with a blank line, so one frame is one event;
* a line break or NUL in an event name or id is refused, so no value can
  forge a second field or a second event (SSE injection).
"""

from __future__ import annotations

import codecs
import json
import json.encoder
import re
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ENDING_FRAMES",
    "LINE_BREAK",
    "PROGRESS_COALESCING",
    "Coalescing",
    "Event",
    "EventDecoder",
    "comment",
    "decode_events",
    "frame_id",
    "newest_of_each_level",
    "replace_id",
    "split_at_id",
]

#: The line breaks of the SSE grammar, longest first so CRLF is one break.
LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FORBIDDEN_IN_FIELD = re.compile(r"[\r\n\x00]")


def _check_field(name: str, value: str) -> None:
    # Three substring scans of a short name cost a third of a regex search.
    if "\n" not in value and "\r" not in value and "\x00" not in value:
        return
    match = _FORBIDDEN_IN_FIELD.search(value)
    if match is not None:
        raise ValueError(
            f"SSE {name} must not contain CR, LF or NUL (found {match.group()!r} in "
            f"{value!r}): it would end the field early and could forge another event"
        )


_SURROGATE = re.compile("[\ud800-\udfff]")


# Compact and unescaped, as JavaScript's JSON.stringify writes it. One
# encoder for every event: json.dumps with options makes a new one each call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _not_serialisable(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _c_encoder() -> Callable[[Any, int], list[str]] | None:
    """The json module's C encoder with the options above, made once; None without it.

    ``JSONEncoder.encode`` makes it again on every call, half the cost of a
    small event. Without the check for cycles: a cyclic value ends in a
    ``RecursionError``, reported like any other bad value.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    encoder: Callable[[Any, int], list[str]] = make(
        None, _not_serialisable, json.encoder.encode_basestring, None, ":", ",",
        False, False, False,
    )  # fmt: skip
    return encoder


_C_ENCODE = _c_encoder()


def _json(data: Any) -> str:
    try:
        text = "".join(_C_ENCODE(data, 0)) if _C_ENCODE is not None else _ENCODER.encode(data)
    except (TypeError, ValueError, RecursionError) as exc:
        why = "a cycle, or nesting too deep" if isinstance(exc, RecursionError) else str(exc)
        raise TypeError(
            f"Event data must be a str or JSON-serialisable, not {type(data).__name__}: {why}"
        ) from exc
    if text.isascii():  # the common case, known without a scan
        return text
    # UTF-8 cannot carry a lone surrogate; JSON.stringify escapes it, so do we.
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


@dataclass(frozen=True, init=False)
class Event:
    """One server-sent event.

    :param data: the payload. A :class:`str` is sent as it is (each CR, LF or
        CRLF starts a new ``data:`` line, which the client joins with ``\\n``);
        anything else is serialised as compact JSON, as ``JSON.stringify``
        would write it.
    :param event: the event type (``event:`` field); ``None`` means the
        browser's default, ``message``.
    :param id: the event id (``id:`` field), which the browser sends back as
        ``Last-Event-ID`` when it reconnects. An :class:`int` is turned into
        its decimal string.
    :param retry: the reconnection delay the browser should use, in
        milliseconds.
    :raises ValueError: ``event`` or ``id`` contains CR, LF or NUL, a string
        contains a lone surrogate (UTF-8 cannot carry one), or ``retry`` is
        negative.
    :raises TypeError: ``data`` is neither a string nor JSON-serialisable.

    ``bytes(event)`` and :meth:`encode` give one complete frame.
    """

    data: Any = ""
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    #: The complete encoded frame, built once when the event is made: a bad
    #: value fails in the caller's frame rather than later inside a stream,
    #: and fan-out to many clients reuses the bytes.
    frame: bytes = field(init=False, repr=False, compare=False)

    def __init__(
        self, data: Any = "", event: str | None = None, id: str | None = None,
        retry: int | None = None,
    ) -> None:  # fmt: skip
        # The dataclass's own __init__ sets each field through
        # object.__setattr__ (frozen): a third of a small event's cost.
        fields = self.__dict__
        fields["data"] = data
        fields["event"] = event
        fields["id"] = id
        fields["retry"] = retry
        self.__post_init__()

    def __post_init__(self) -> None:
        # Also what a dataclass subclass's own __init__ calls.
        fields = self.__dict__
        event = self.event
        if event is not None:
            if not isinstance(event, str):
                raise TypeError(f"Event name must be a str, not {type(event).__name__}")
            _check_field("event name", event)
        given: object = self.id  # an int is accepted at run time, for convenience
        if given is not None:
            if isinstance(given, int) and not isinstance(given, bool):
                given = fields["id"] = str(given)
            elif not isinstance(given, str):
                raise TypeError(f"Event id must be a str or int, not {type(given).__name__}")
            _check_field("event id", given)
        retry = self.retry
        if retry is not None:
            if isinstance(retry, bool) or not isinstance(retry, int):
                raise TypeError(f"retry must be an int (milliseconds), not {retry!r}")
            if retry < 0:
                raise ValueError(f"retry must be >= 0 milliseconds, not {retry}")
        fields["frame"] = self._build()

    @property
    def text(self) -> str:
        """The data as the client will see it: the string, or its JSON."""
        return self.data if isinstance(self.data, str) else _json(self.data)

    def json(self) -> Any:
        """Parse :attr:`text` as JSON (handy for events read back in tests)."""
        return json.loads(self.text)

    def encode(self) -> bytes:
        """Return the whole frame as UTF-8 bytes, ending with a blank line."""
        return self.frame

    @classmethod
    def _parsed(cls, data: str, event: str | None, id: str | None, retry: int | None) -> Event:
        """An event as a parser read it, without the checks meant for senders.

        A stream may legally carry, say, a NUL in an event name; reading it
        back must not fail.
        """
        self = object.__new__(cls)
        for name, value in (("data", data), ("event", event), ("id", id), ("retry", retry)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "frame", self._build())
        return self

    def _build(self) -> bytes:
        head = "" if self.event is None else f"event: {self.event}\n"
        if self.id is not None:
            head += f"id: {self.id}\n"
        if self.retry is not None:
            head += f"retry: {self.retry}\n"
        data = self.data
        if not isinstance(data, str):
            text = f"{head}data: {_json(data)}\n\n"  # compact JSON is one line
        else:
            # The parser drops one space after the colon, so "data: " + line
            # keeps any leading spaces of the line itself.
            lines = LINE_BREAK.split(data)
            text = head + "".join(f"data: {line}\n" if line else "data:\n" for line in lines)
            text += "\n"
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"Event contains a lone surrogate ({exc.object[exc.start : exc.end]!r}), "
                "which UTF-8 cannot carry; pass data as an object to have it JSON-escaped"
            ) from None

    def __bytes__(self) -> bytes:
        return self.encode()


def split_at_id(event: Event) -> tuple[bytes, bytes]:
    """Split an id-less event's frame where its ``id:`` line belongs.

    ``head + b"id: " + id + b"\n" + tail`` is then the frame the event would
    have with that id: what a broker does when it numbers an event only as it
    appends it to a channel, without encoding the data again (Redis does the
    joining in its script).

    :raises ValueError: the event has an id or a retry field already.
    """
    if event.id is not None or event.retry is not None:
        raise ValueError("an event numbered by its channel carries no id or retry of its own")
    frame = event.frame
    head = len(f"event: {event.event}\n".encode()) if event.event is not None else 0
    return frame[:head], frame[head:]


def _id_span(frame: bytes) -> tuple[int, int] | None:
    # Frames built by Event put the id right after the (optional) event line.
    start = frame.index(b"\n") + 1 if frame.startswith(b"event:") else 0
    if not frame.startswith(b"id: ", start):
        return None
    return start, frame.index(b"\n", start)


def frame_id(frame: bytes) -> str | None:
    """The id of a frame built by :class:`Event`, or ``None`` if it has none."""
    span = _id_span(frame)
    return None if span is None else frame[span[0] + 4 : span[1]].decode("utf-8")


def replace_id(frame: bytes, new_id: str) -> bytes:
    """The same frame with its ``id:`` value replaced (a frame built by :class:`Event`).

    :raises ValueError: the frame has no id, or ``new_id`` holds CR, LF or NUL.
    """
    _check_field("event id", new_id)
    span = _id_span(frame)
    if span is None:
        raise ValueError("the frame has no id to replace")
    return frame[: span[0] + 4] + new_id.encode("utf-8") + frame[span[1] :]


def newest_of_each_level(levels: Iterable[Hashable | None]) -> list[int]:
    """Indices to keep: each level's newest entry, and every entry without one.

    The coalescing rule of a slow client's buffer and of a broker's bounded
    event log: an event whose type is a level (progress) only matters as its
    latest value; every other event is a log entry and is kept.
    """
    levels = list(levels)
    newest = {level: index for index, level in enumerate(levels) if level is not None}
    return [i for i, level in enumerate(levels) if level is None or newest[level] == i]


@dataclass(frozen=True)
class Coalescing:
    """Which event types are *levels*, where only the newest value matters.

    ``progress`` is one: a client that fell behind needs the latest
    percentage, not every step to it. Declared once and used everywhere
    events may be dropped for being stale: a stream's buffer for a slow
    client and a broker's bounded log. A broker hands each frame to its
    streams together with its level, so the two cannot disagree.

    :param types: the event types to treat as levels.
    """

    types: frozenset[str] = frozenset({"progress"})

    def __post_init__(self) -> None:
        given: object = self.types
        if isinstance(given, str):
            raise TypeError(f"types must be a collection of event types, not the str {given!r}")
        object.__setattr__(self, "types", frozenset(self.types))

    @classmethod
    def of(cls, value: Coalescing | Collection[str]) -> Coalescing:
        """``value`` itself, or a policy for the event types it lists."""
        return value if isinstance(value, Coalescing) else cls(frozenset(value))

    def level(self, event_type: str | None) -> str | None:
        """The level of an event of ``event_type``, or ``None`` if it is never dropped."""
        return event_type if event_type in self.types else None


#: The default policy: ``progress`` events are levels, all others a log.
PROGRESS_COALESCING = Coalescing()

#: How the frames that end a job's stream begin: ``complete``, then ``error``.
ENDING_FRAMES = (b"event: complete\n", b"event: error\n")


def comment(text: str = "") -> bytes:
    """Return a comment frame, ``: text`` and a blank line.

    Clients ignore comments; they keep idle connections (and the proxies on
    the way) from timing out. Line breaks in ``text`` start new comment
    lines, so a comment can never turn into an event.
    """
    lines = LINE_BREAK.split(text)
    return "".join(f": {line}\n" if line else ":\n" for line in lines).encode("utf-8") + b"\n"


class EventDecoder:
    """Incremental SSE parser following the WHATWG "event stream" rules.

    Feed it bytes as they arrive; it returns the events completed so far.
    Comments and ``retry``-only frames dispatch nothing, as in a browser.
    The ``id`` of a returned event is the ``id`` field of that event's own
    block (``None`` if it had none), which is what a test wants to check;
    :attr:`last_event_id` holds the browser's running value.
    """

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._first = True
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._saw_data = False
        self._skip_lf = False
        #: The browser's ``lastEventId``: the last ``id`` field seen, kept
        #: across events.
        self.last_event_id = ""
        #: The last valid ``retry`` value seen, in milliseconds.
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        """Parse ``chunk`` and return the events it completed."""
        # The incremental decoder keeps a UTF-8 sequence split across chunks.
        text = self._utf8.decode(chunk)
        if not text:
            return []
        if self._skip_lf:
            # The previous chunk ended in CR, already taken as a line break:
            # an LF right after it belongs to that same CRLF.
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]
        if self._first:
            self._first = False
            if text.startswith("\ufeff"):
                text = text[1:]
        buffer = self._text + text
        events: list[Event] = []
        start = 0
        for match in LINE_BREAK.finditer(buffer):
            event = self._line(buffer[start : match.start()])
            start = match.end()
            if event is not None:
                events.append(event)
        self._skip_lf = buffer.endswith("\r")
        self._text = buffer[start:]
        return events

    def _line(self, line: str) -> Event | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._saw_data = True
        elif name == "event":
            self._event = value
        elif name == "id" and "\x00" not in value:
            self.last_event_id = value
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = self._retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        try:
            if not self._saw_data:
                return None
            return Event._parsed(
                data="\n".join(self._data),
                event=self._event or None,
                id=self._id,
                retry=self._retry,
            )
        finally:
            self._data = []
            self._event = ""
            self._id = None
            self._retry = None
            self._saw_data = False


def decode_events(chunks: Iterable[bytes]) -> Iterator[Event]:
    """Yield the events in an iterable of byte chunks, as each completes."""
    decoder = EventDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)
