"""The concurrency runtime: gevent or threads, decided once, asked for by name.

Everything else in the library asks this package for "a channel" (a queue
any thread or greenlet may put into, read by one stream), "a lock", "run
this job in a native thread" and "run this on the hub". One concern a
module:

* :mod:`~flask_sse_flush.runtime.detect`: whether gevent runs this process;
* :mod:`~flask_sse_flush.runtime.channels`: the channel behind each stream;
* :mod:`~flask_sse_flush.runtime.executors`: native threads, greenlets, the
  switch interval;
* :mod:`~flask_sse_flush.runtime.hub`: :func:`call_on_hub`, the way back to
  the hub from a native thread;
* :mod:`~flask_sse_flush.runtime.locks`: locks shared by native threads and
  the hub's greenlets, and logging's locks made safe for native threads
  under gevent;
* :mod:`~flask_sse_flush.runtime.watch`: noticing a client that hung up
  while its stream was silent.

What apps need is re-exported here and documented in :doc:`/api`.
"""

from __future__ import annotations

from .channels import Channel, Empty, Overflow, new_channel
from .detect import gevent_is_active, native_thread_ident, new_lock
from .executors import (
    DEFAULT_JOB_SWITCH_INTERVAL,
    job_switch_interval,
    set_job_switch_interval,
    shutdown_native_threads,
    start_greenlet,
    start_native_thread,
)
from .hub import call_on_hub, home_hub, post_to_hub, run_in_hub
from .locks import (
    hub_safe_lock,
    install_logging_locks,
    logging_locks_installed,
    uninstall_logging_locks,
)
from .watch import hung_up, watch_for_hangup

__all__ = [
    "DEFAULT_JOB_SWITCH_INTERVAL",
    "Channel",
    "Empty",
    "Overflow",
    "call_on_hub",
    "gevent_is_active",
    "home_hub",
    "hub_safe_lock",
    "hung_up",
    "install_logging_locks",
    "job_switch_interval",
    "logging_locks_installed",
    "native_thread_ident",
    "new_channel",
    "new_lock",
    "post_to_hub",
    "run_in_hub",
    "set_job_switch_interval",
    "shutdown_native_threads",
    "start_greenlet",
    "start_native_thread",
    "uninstall_logging_locks",
    "watch_for_hangup",
]
