"""Event stores behind the streams: the ``Broker`` protocol and its brokers."""

from __future__ import annotations

from .base import Broker, JobState, JobStatus, StatusChange, Subscriber, event_id, parse_event_id
from .memory import MemoryBroker

__all__ = [
    "Broker",
    "JobState",
    "JobStatus",
    "MemoryBroker",
    "StatusChange",
    "Subscriber",
    "event_id",
    "parse_event_id",
]
