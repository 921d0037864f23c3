"""Serve a WSGI app with werkzeug's threaded dev server.

``python -m benchmarks.serve MODULE:APP PORT``
"""

from __future__ import annotations

import importlib
import logging
import sys

from werkzeug.serving import run_simple


def main() -> None:
    target, port = sys.argv[1], int(sys.argv[2])
    module, _, attr = target.partition(":")
    app = getattr(importlib.import_module(module), attr)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    run_simple("127.0.0.1", port, app, threaded=True)


if __name__ == "__main__":
    main()
