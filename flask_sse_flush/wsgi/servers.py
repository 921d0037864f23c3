"""Which WSGI server serves a stream, and one clear warning where it falls short.

Checked at the first stream a process serves (:func:`check_server`), and
logged once per process and problem:

* **gunicorn's own HTTP/2** (``--http-protocols h2``) serves the streams of
  one connection one after another: a browser's second progress stream
  would wait for the first to end. Terminate HTTP/2 in a proxy instead.
* **gunicorn's ``sync`` worker** serves one request at a time: one stream
  holds the whole worker, and ``--timeout`` (30 s) kills a stream that
  outlives it.
* **uWSGI's gevent loop without monkey-patching**: a stream waiting for
  its next event would block every other request of the worker.
* **uWSGI without threads**: jobs run in threads, which uWSGI does not run
  unless ``--enable-threads`` (or ``--threads``) is given.

See :doc:`/servers` for every server's behaviour.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Mapping
from typing import Any

from ..runtime import gevent_is_active

__all__ = ["check_server", "gunicorn_worker", "warned"]

log = logging.getLogger(__name__)

_warned: set[str] = set()
# The worker's own setup is looked at once per process (its first stream).
_checked: set[str] = set()

GUNICORN_HTTP2 = (
    "this event stream is served over gunicorn's own HTTP/2, which serves the "
    "streams of one connection one after another: a second stream on the same "
    "connection (a browser's second progress stream) waits until the first one "
    "ends. Terminate HTTP/2 in a proxy in front (nginx: 'listen 443 ssl; http2 on;' "
    "with 'proxy_http_version 1.1') and serve HTTP/1.1 from gunicorn "
    "('--http-protocols h1'); see the deployment guide"
)
GUNICORN_SYNC = (
    "this event stream is served by gunicorn's 'sync' worker, which serves one "
    "request at a time: each open stream holds a whole worker, and '--timeout' "
    "(30 s by default) kills a stream that outlives it. Use '-k gevent' "
    "(pip install 'flask-sse-flush[gevent]') or '-k gthread --threads N'"
)


UWSGI_GEVENT = (
    "uWSGI runs gevent's loop ('--gevent') but the process is not monkey-patched: "
    "a stream waiting for its next event blocks every other request of the worker. "
    "Add '--gevent-early-monkey-patch'"
)
UWSGI_THREADS = (
    "uWSGI runs without Python threads: render jobs (and the threads that feed "
    "streams) would not run. Add '--enable-threads' (or '--threads N')"
)


def gunicorn_worker() -> Any | None:
    """This process's gunicorn worker object, if gunicorn runs it.

    A gunicorn worker installs its bound ``handle_exit`` as the ``SIGTERM``
    handler: its ``__self__`` is the worker (``alive``, ``cfg``, its class).
    """
    base = sys.modules.get("gunicorn.workers.base")
    if base is None:
        return None
    try:
        handler = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):
        return None
    worker = getattr(handler, "__self__", None)
    if isinstance(worker, base.Worker):
        return worker
    return None


def _warn_once(key: str, message: str) -> None:
    if key in _warned:
        return
    _warned.add(key)
    log.warning("flask-sse-flush: %s", message)


def warned() -> frozenset[str]:
    """The problems warned about in this process so far (``"gunicorn-http2"``, ...)."""
    return frozenset(_warned)


def _check_uwsgi() -> None:
    uwsgi = sys.modules.get("uwsgi")
    options = getattr(uwsgi, "opt", None)
    if not isinstance(options, Mapping):
        return
    names = {key.decode() if isinstance(key, bytes) else str(key) for key in options}
    if "gevent" in names and not gevent_is_active():
        _warn_once("uwsgi-gevent", UWSGI_GEVENT)
    if "gevent" not in names and not names & {"enable-threads", "threads"}:
        _warn_once("uwsgi-threads", UWSGI_THREADS)


def check_server(environ: Mapping[str, Any]) -> None:
    """Warn, once per process, about a server that cannot stream well. Never raises."""
    software = str(environ.get("SERVER_SOFTWARE", ""))
    if "uwsgi.version" in environ:
        if "uwsgi" not in _checked:
            _checked.add("uwsgi")
            _check_uwsgi()
        return
    if not software.startswith("gunicorn"):
        return
    if environ.get("HTTP_VERSION") == "2" or environ.get("SERVER_PROTOCOL") == "HTTP/2":
        _warn_once("gunicorn-http2", GUNICORN_HTTP2)
    if "gunicorn" not in _checked:
        _checked.add("gunicorn")
        worker = gunicorn_worker()
        if worker is not None and type(worker).__name__ == "SyncWorker":
            _warn_once("gunicorn-sync", GUNICORN_SYNC)
