"""Serve tests/integration/app.py with a non-gunicorn server: werkzeug or wsgiref.

Usage: python serve.py werkzeug|wsgiref PORT LOG_DIR
"""

from __future__ import annotations

import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.validate import validator

from app import create_app  # type: ignore[import-not-found]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    kind, port, log_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    app = create_app(log_dir)
    if kind == "werkzeug":
        from werkzeug.serving import run_simple

        run_simple("127.0.0.1", port, app, threaded=True)
    elif kind == "wsgiref":
        # The stdlib server, with the stdlib's conformance checker in front.
        make_server("127.0.0.1", port, validator(app), handler_class=QuietHandler).serve_forever()
    else:
        raise SystemExit(f"unknown server {kind!r}")


if __name__ == "__main__":
    main()
