"""The Redis broker: every job's log and status in Redis, for many workers and hosts."""

from __future__ import annotations

from .broker import RedisBroker

__all__ = ["RedisBroker"]
