"""Event stores behind the streams: the ``Broker`` protocol and its brokers."""

from __future__ import annotations

from .base import (
    GAP_EVENT,
    Broker,
    JobState,
    JobStatus,
    StatusChange,
    Subscriber,
    event_id,
    gap_event,
    parse_event_id,
)
from .memory import MemoryBroker
from .redis import RedisBroker

__all__ = [
    "GAP_EVENT",
    "Broker",
    "JobState",
    "JobStatus",
    "MemoryBroker",
    "RedisBroker",
    "StatusChange",
    "Subscriber",
    "event_id",
    "gap_event",
    "parse_event_id",
]
