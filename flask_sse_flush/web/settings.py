"""The settings of one render blueprint in one app, resolved once.

Explicit arguments first, then the app's ``SSE_FLUSH_*`` config, then the
documented defaults: read when the blueprint is registered, checked then
(a bad value fails at start-up, not in a request), and frozen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeAlias

__all__ = [
    "CONFIG_KEYS",
    "DEFAULT_KEEPALIVE",
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_JOBS",
    "DEFAULT_MAX_PAYLOAD",
    "DisconnectPolicy",
    "Settings",
]

#: What a client's disconnect does to its job.
DisconnectPolicy: TypeAlias = Literal["continue", "cancel"]

DEFAULT_KEEPALIVE = 15.0
DEFAULT_MAX_PAYLOAD = 64 * 1024
DEFAULT_MAX_JOBS = 32
DEFAULT_MAX_HEADERS = 32 * 1024

#: The settings an app's config may set, and their keys.
CONFIG_KEYS = {
    "keepalive": "SSE_FLUSH_KEEPALIVE",
    "retry": "SSE_FLUSH_RETRY",
    "max_payload": "SSE_FLUSH_MAX_PAYLOAD",
    "max_jobs": "SSE_FLUSH_MAX_JOBS",
    "max_jobs_per_identity": "SSE_FLUSH_MAX_JOBS_PER_IDENTITY",
    "max_streams": "SSE_FLUSH_MAX_STREAMS",
    "max_query": "SSE_FLUSH_MAX_QUERY",
    "max_headers": "SSE_FLUSH_MAX_HEADERS",
    "keepalive_event": "SSE_FLUSH_KEEPALIVE_EVENT",
    "max_events": "SSE_FLUSH_MAX_EVENTS",
    "retention": "SSE_FLUSH_RETENTION",
    "lease": "SSE_FLUSH_LEASE",
    "max_stream_seconds": "SSE_FLUSH_MAX_STREAM_SECONDS",
    "gevent_logging_locks": "SSE_FLUSH_GEVENT_LOGGING_LOCKS",
    "send_time": "SSE_FLUSH_SEND_TIME",
}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Settings:
    """How one render blueprint serves, in one app.

    :param keepalive: seconds of silence before a keepalive comment;
        ``None`` for none (``SSE_FLUSH_KEEPALIVE``).
    :param retry: the reconnection delay (ms) announced to browsers;
        ``None`` for the browser's default (``SSE_FLUSH_RETRY``).
    :param max_payload: the largest payload accepted, in bytes
        (``SSE_FLUSH_MAX_PAYLOAD``).
    :param max_jobs: the most jobs running at once in the broker's store
        (one process with the memory broker, every worker with Redis);
        ``None`` for no limit (``SSE_FLUSH_MAX_JOBS``).
    :param buffer: events that may wait for a slow client before its queued
        levels are coalesced; ``None`` for no bound.
    :param on_disconnect: ``"continue"`` or ``"cancel"`` the job when its
        last client leaves.
    :param max_jobs_per_identity: the most jobs one identity (the
        blueprint's ``identity`` hook) may have running at once, in the
        whole store; ``None`` for no limit (``SSE_FLUSH_MAX_JOBS_PER_IDENTITY``).
    :param max_streams: the most streams open at once in one worker process;
        ``None`` for the server's default (under gunicorn,
        ``worker_connections`` less 5 %; elsewhere no limit)
        (``SSE_FLUSH_MAX_STREAMS``).
    :param max_query: the longest query string accepted, in bytes; ``None``
        for room for a ``data`` payload of ``max_payload`` bytes, URL-encoded
        (``3 * max_payload + 1024``) (``SSE_FLUSH_MAX_QUERY``).
    :param max_headers: the most bytes of request header names and values
        accepted (``SSE_FLUSH_MAX_HEADERS``).
    :param keepalive_event: send keepalives as an ``event: keepalive``
        rather than a comment, for proxies that ignore comments
        (``SSE_FLUSH_KEEPALIVE_EVENT``).
    :param max_events: the most events kept per channel and per job by the
        broker the app makes (``SSE_FLUSH_MAX_EVENTS``).
    :param retention: seconds a channel's history is kept after its last
        publish, and a job's after its end, by the broker the app makes
        (``SSE_FLUSH_RETENTION``).
    :param lease: with Redis, seconds a job's runner may go without renewing
        its lease before another worker ends the job (``SSE_FLUSH_LEASE``;
        :ref:`scaling-leases`).
    :param max_stream_seconds: rotate streams: one open that long ends
        after an event (or a keepalive) with a jittered ``retry:`` hint, and
        the browser resumes exactly with ``Last-Event-ID``; for proxies and
        platforms that cut long responses. ``None`` (the default) never
        rotates (``SSE_FLUSH_MAX_STREAM_SECONDS``; :ref:`deploy-rotate`).
    :param gevent_logging_locks: under gevent, make :mod:`logging`'s locks safe
        for native job threads when the app is initialised (a process-wide
        change, see :ref:`servers-gevent-logging`); ``False`` leaves logging
        alone (``SSE_FLUSH_GEVENT_LOGGING_LOCKS``).
    :param send_time: stamp each event of a job whose data is an object
        with ``"sent"``, the server's time of sending it (milliseconds since
        the epoch), so a page can show each event's delay
        (``SSE_FLUSH_SEND_TIME``; off by default, so the data stays exactly
        ``{"progress", "phase"}``).
    :raises ValueError: a value is out of range.
    """

    keepalive: float | None = DEFAULT_KEEPALIVE
    retry: int | None = None
    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_jobs: int | None = DEFAULT_MAX_JOBS
    buffer: int | None = 256
    on_disconnect: DisconnectPolicy = "continue"
    max_jobs_per_identity: int | None = None
    max_streams: int | None = None
    max_query: int | None = None
    max_headers: int = DEFAULT_MAX_HEADERS
    keepalive_event: bool = False
    max_events: int = 1000
    retention: float = 600.0
    lease: float = 10.0
    gevent_logging_locks: bool = True
    max_stream_seconds: float | None = None
    send_time: bool = False

    @property
    def query_limit(self) -> int:
        """The longest query string accepted (``max_query`` or its default)."""
        return self.max_query if self.max_query is not None else 3 * self.max_payload + 1024

    def __post_init__(self) -> None:
        keepalive = self.keepalive
        if keepalive is not None and (
            isinstance(keepalive, bool) or not isinstance(keepalive, (int, float)) or keepalive <= 0
        ):
            raise ValueError(
                f"keepalive must be a positive number of seconds or None, not {keepalive!r}"
            )
        if self.retry is not None and (not _is_int(self.retry) or self.retry < 0):
            raise ValueError(f"retry must be a non-negative int (milliseconds), not {self.retry!r}")
        if not _is_int(self.max_payload) or self.max_payload < 1:
            raise ValueError(
                f"max_payload must be a positive int (bytes), not {self.max_payload!r}"
            )
        if self.max_jobs is not None and (not _is_int(self.max_jobs) or self.max_jobs < 1):
            raise ValueError(f"max_jobs must be a positive int or None, not {self.max_jobs!r}")
        for name in ("max_jobs_per_identity", "max_streams", "max_query"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, not {value!r}")
        if not _is_int(self.max_headers) or self.max_headers < 1:
            raise ValueError(
                f"max_headers must be a positive int (bytes), not {self.max_headers!r}"
            )
        for name in ("keepalive_event", "send_time"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, not {getattr(self, name)!r}")
        if not _is_int(self.max_events) or self.max_events < 2:
            raise ValueError(f"max_events must be an int of at least 2, not {self.max_events!r}")
        retention = self.retention
        if isinstance(retention, bool) or not isinstance(retention, (int, float)) or retention < 0:
            raise ValueError(f"retention must be a number of seconds >= 0, not {retention!r}")
        lease = self.lease
        if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not lease > 0:
            raise ValueError(f"lease must be a positive number of seconds, not {lease!r}")
        rotate = self.max_stream_seconds
        if rotate is not None and (
            isinstance(rotate, bool) or not isinstance(rotate, (int, float)) or not rotate > 0
        ):
            raise ValueError(
                f"max_stream_seconds must be a positive number of seconds or None, not {rotate!r}"
            )
        if self.buffer is not None and (not _is_int(self.buffer) or self.buffer < 1):
            raise ValueError(f"buffer must be a positive int or None, not {self.buffer!r}")
        if not isinstance(self.gevent_logging_locks, bool):
            raise ValueError(
                f"gevent_logging_locks must be True or False, not {self.gevent_logging_locks!r}"
            )
        if self.on_disconnect not in ("continue", "cancel"):
            raise ValueError(
                f"on_disconnect must be 'continue' or 'cancel', not {self.on_disconnect!r}"
            )

    @classmethod
    def resolve(cls, config: Mapping[str, Any], **given: Any) -> Settings:
        """Settings from explicit values, then ``config``, then the defaults.

        For the settings a config key can set, a value given as ``None``
        counts as not given (use the config key to turn keepalives off:
        ``SSE_FLUSH_KEEPALIVE = None``); the others take what is given.

        :param config: the app's config (any mapping).
        :param given: explicit values, by field name.
        :raises TypeError: ``given`` names no setting.
        """
        names = {f.name for f in fields(cls)}
        unknown = set(given) - names
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for name in names:
            if name not in CONFIG_KEYS:
                if name in given:
                    values[name] = given[name]
            elif given.get(name) is not None:
                values[name] = given[name]
            elif CONFIG_KEYS[name] in config:
                values[name] = config[CONFIG_KEYS[name]]
        return cls(**values)
