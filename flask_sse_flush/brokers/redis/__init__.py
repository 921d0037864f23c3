"""The Redis broker: every job's log and status in Redis, for many workers and hosts.

Its parts, bottom up:

* ``store``: this process's command connections (a small blocking pool,
  ``max_connections``), the retries while Redis is away, the names of the
  keys and channels, and the Lua scripts (``scripts/*.lua``) that change a
  job's or channel's keys in one atomic step;
* ``subscriptions``: this process's streams of each job and channel, their
  replay from the log and their joining of the live events, and the
  cancellations it awaits;
* ``reader``: the **one** pub/sub connection per process, whatever the
  number of streams, that hands every live event to the subscriptions;
* ``broker``: :class:`RedisBroker`, the Broker protocol over the three, run
  on the worker's hub under gevent.

So a worker holds at most ``max_connections + 1`` connections to Redis (on
a Redis Cluster, to each primary: ``store`` tags every key of a job or
channel with its id so each script touches one slot, and the reader
listens with sharded pub/sub, one connection per primary), and
a reconnecting client gets exactly the events after its ``Last-Event-ID``
from whichever worker it lands on.
"""

from __future__ import annotations

from .broker import RedisBroker

__all__ = ["RedisBroker"]
