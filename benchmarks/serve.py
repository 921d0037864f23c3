"""Serve a WSGI app with werkzeug's threaded dev server.

``python -m benchmarks.serve MODULE:APP PORT [HOST]``

``HOST`` is 127.0.0.1 unless given (``benchmarks.link`` serves on the
address of its own network namespace).
"""

from __future__ import annotations

import importlib
import logging
import sys

from werkzeug.serving import run_simple


def main() -> None:
    target, port = sys.argv[1], int(sys.argv[2])
    host = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
    module, _, attr = target.partition(":")
    app = getattr(importlib.import_module(module), attr)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    run_simple(host, port, app, threaded=True)


if __name__ == "__main__":
    main()
