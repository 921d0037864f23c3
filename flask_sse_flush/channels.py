"""Channels: named, ordered, bounded logs of events with live fan-out.

Anything may publish to a channel (a request, a thread, a job worker, a
cron job in another process); every stream following it receives each event
once and in order. Brokers keep the logs (:mod:`flask_sse_flush.brokers`);
this module holds what is the same for all of them: channel names, event
ids and cursors, the ``gap`` event, and the subscriber that carries several
channels on one connection. Pure Python: no Flask, no I/O.

**Event ids.** A channel numbers its events from 1. An event's id is
``<channel>-<epoch>.<n>``: the *epoch* is a random token the channel gets
when its log starts, and a new one if the log is ever lost (its retention
ran out while it was idle, or the store lost its data), so a resume can tell
"the events after ``n``" from "the events after ``n`` of a log that no longer
exists", and answers the second with a ``gap`` event instead of silence.

**Cursors.** A stream of one channel sends each event's own id, which is
therefore what ``Last-Event-ID`` carries back. A stream of several channels
sends, as every event's id, the position of *each* of its channels joined
by commas (``news-1a2b3c4d.17,alerts-9e8f7a6b.3``), so whichever event a
browser saw last, its ``Last-Event-ID`` resumes every channel exactly. A
cursor holds at most :data:`MAX_CHANNELS` channels and :data:`MAX_CURSOR`
bytes.

.. versionadded:: 1.0
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .exceptions import StreamClosed
from .runtime import new_lock
from .wire.frames import Event, frame_id, replace_id

__all__ = [
    "CHANNEL_NAME",
    "GAP_EVENT",
    "MAX_CHANNELS",
    "MAX_CURSOR",
    "ChannelMux",
    "Position",
    "channel_event_id",
    "channel_gap_event",
    "check_channel",
    "format_cursor",
    "new_epoch",
    "parse_channel_event_id",
    "parse_cursor",
    "replay_channel",
]

#: What a channel name may hold: 1 to 128 letters, digits and ``_.:@/~+-``
#: (never a comma or white space, which cursors and headers use).
CHANNEL_NAME = re.compile(r"[A-Za-z0-9_.:@/~+\-]{1,128}")
#: The most channels one stream may follow.
MAX_CHANNELS = 16
#: The longest cursor (``Last-Event-ID``) accepted, in bytes.
MAX_CURSOR = 4096
#: The event type a stream sends when its channel's history no longer
#: reaches back to the client's cursor.
GAP_EVENT = "gap"

_EPOCH = re.compile(r"[0-9a-f]{1,32}")
_MAX_SEQ = 2**63 - 1


def check_channel(name: object) -> str:
    """Return ``name`` if it can name a channel.

    :raises TypeError: ``name`` is not a str.
    :raises ValueError: it is empty, longer than 128 characters, or holds a
        character other than letters, digits and ``_.:@/~+-``.
    """
    if not isinstance(name, str):
        raise TypeError(f"a channel name must be a str, not {type(name).__name__}")
    if not CHANNEL_NAME.fullmatch(name):
        raise ValueError(
            "a channel name is 1 to 128 letters, digits or '_.:@/~+-', "
            f"not {name[:80]!r}{'...' if len(name) > 80 else ''}"
        )
    return name


def new_epoch() -> str:
    """A fresh epoch: 32 random bits as 8 hex digits."""
    return secrets.token_hex(4)


@dataclass(frozen=True, order=True)
class Position:
    """A place in a channel's log: after event ``seq`` of the log of ``epoch``.

    ``seq`` 0 is the place before the first event.
    """

    epoch: str
    seq: int = 0


def channel_event_id(channel: str, position: Position) -> str:
    """The id of the event at ``position`` of ``channel``: ``<channel>-<epoch>.<n>``."""
    return f"{channel}-{position.epoch}.{position.seq}"


def parse_channel_event_id(text: str) -> tuple[str, Position]:
    """Split a channel event id into the channel and the position it names.

    :raises ValueError: ``text`` is not a channel event id.
    """
    channel, dash, rest = text.rpartition("-")
    epoch, dot, seq = rest.partition(".")
    if (
        not dash
        or not dot
        or not CHANNEL_NAME.fullmatch(channel)
        or not _EPOCH.fullmatch(epoch)
        or not (seq.isascii() and seq.isdigit() and len(seq) <= 19)
        or int(seq) > _MAX_SEQ
    ):
        raise ValueError(f"not a channel event id: {text[:80]!r}")
    return channel, Position(epoch, int(seq))


def format_cursor(positions: Mapping[str, Position]) -> str:
    """The id a stream of ``positions``' channels sends: each channel's place, comma-joined."""
    return ",".join(channel_event_id(channel, at) for channel, at in positions.items())


def parse_cursor(text: str) -> dict[str, Position]:
    """The position of each channel a cursor (a ``Last-Event-ID``) names.

    :raises ValueError: the cursor is longer than :data:`MAX_CURSOR` bytes,
        names more than :data:`MAX_CHANNELS` channels or one twice, or a part
        is not a channel event id.
    """
    text = text.strip()
    if len(text.encode("utf-8", "surrogatepass")) > MAX_CURSOR:
        raise ValueError(f"the cursor is longer than {MAX_CURSOR} bytes")
    parts = text.split(",")
    if len(parts) > MAX_CHANNELS:
        raise ValueError(f"the cursor names more than {MAX_CHANNELS} channels")
    positions: dict[str, Position] = {}
    for part in parts:
        channel, at = parse_channel_event_id(part)
        if channel in positions:
            raise ValueError(f"the cursor names channel {channel!r} twice")
        positions[channel] = at
    return positions


def channel_gap_event(channel: str, after: Position, resumed: Position) -> Event:
    """The ``gap`` event: ``channel``'s events after ``after`` are not all in its history.

    Sent first when a stream resumes a channel whose log no longer reaches
    back to the client's place (its bound or retention dropped events, or the
    log was lost and started again under a new epoch). It has no ``id``, so
    the browser's ``lastEventId`` is not moved by it. Its data::

        {"channel": "<name>", "after": "<the client's id>", "resumed": "<id>"}

    ``resumed`` is the id of the last event the client will *not* receive:
    the replay continues with the event after it.
    """
    return Event(
        {
            "channel": channel,
            "after": channel_event_id(channel, after),
            "resumed": channel_event_id(channel, resumed),
        },
        event=GAP_EVENT,
    )


def replay_channel(
    name: str,
    subscriber: Any,
    after: Position,
    epoch: str,
    last: int,
    entries: Sequence[tuple[Any, ...]],
) -> int:
    """Send ``subscriber`` a channel's logged events after ``after``; return its new place.

    ``entries`` are ``(n, frame, level, ...)`` of the log of ``epoch`` whose
    last event is ``last``, read from ``after`` on (from the log's start when
    ``after`` names another epoch). A ``gap`` event comes first when the log
    cannot replay exactly: events after ``after`` were dropped, the log
    started again under another epoch, or ``after`` is ahead of it (the store
    went back in time); the replay then goes on from what the log has.

    :returns: the number the subscriber has everything up to, in ``epoch``.
    :raises StreamClosed: the subscriber has gone.
    """
    same = after.epoch == epoch
    start = after.seq if same else 0
    first = entries[0][0] if entries else last + 1
    if not same or start > last or (first > start + 1 and start < last):
        start = min(start, last)
        gap = channel_gap_event(name, after, Position(epoch, max(first - 1, start)))
        subscriber.deliver(gap.frame, None)
    for seq, frame, level, *_ in entries:
        if seq > start:
            subscriber.deliver(frame, level)
    return max(start, last)


class _Follower:
    """What the broker delivers one channel's frames to, on behalf of a :class:`ChannelMux`."""

    __slots__ = ("channel", "mux")

    def __init__(self, mux: ChannelMux, channel: str) -> None:
        self.mux = mux
        self.channel = channel

    def deliver(self, frame: bytes, level: str | None) -> None:
        self.mux.deliver(self.channel, frame, level)

    def close(self) -> None:
        self.mux.close()

    def __repr__(self) -> str:
        return f"<follower of {self.channel!r} for {self.mux.target!r}>"


class ChannelMux:
    """Carries several channels on one stream, every event's id the stream's cursor.

    Each channel's broker delivers to :meth:`follower` ``(channel)``; the mux
    notes the event's position in its channel and passes the frame on with
    its id replaced by the cursor of all channels (:func:`format_cursor`),
    under one lock, so the ids a client sees only ever move forward.

    :param target: the stream (any subscriber: ``deliver(frame, level)``, ``close()``).
    :param positions: each channel's place to start from, in the stream's order.
    """

    def __init__(self, target: Any, positions: Mapping[str, Position]) -> None:
        self.target = target
        self._positions = dict(positions)
        self._lock = new_lock()
        self._followers = {channel: _Follower(self, channel) for channel in self._positions}

    @property
    def cursor(self) -> str:
        """The stream's current cursor."""
        with self._lock:
            return format_cursor(self._positions)

    def follower(self, channel: str) -> _Follower:
        """The subscriber to hand the broker for ``channel``."""
        return self._followers[channel]

    def followers(self) -> Iterable[tuple[str, _Follower]]:
        return self._followers.items()

    def deliver(self, channel: str, frame: bytes, level: str | None) -> None:
        event_id = frame_id(frame)
        if event_id is None:
            self.target.deliver(frame, level)  # a gap event: it moves no cursor
            return
        _, at = parse_channel_event_id(event_id)
        with self._lock:
            self._positions[channel] = at
            frame = replace_id(frame, format_cursor(self._positions))
            # Queued under the same lock: the cursors leave in the order made.
            self.target.deliver(frame, level)

    def close(self) -> None:
        # A stream's close never raises; another subscriber's might.
        with contextlib.suppress(StreamClosed):
            self.target.close()
