"""Serve tests/integration/app.py with a non-gunicorn server.

Usage: python serve.py werkzeug|wsgiref|gevent|waitress PORT LOG_DIR
"""

from __future__ import annotations

import sys

if sys.argv[1:2] == ["gevent"]:
    from gevent import monkey

    monkey.patch_all()  # before anything else imports threading or socket
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
    elif kind == "gevent":
        from gevent.pywsgi import WSGIServer

        WSGIServer(("127.0.0.1", port), app, log=None).serve_forever()
    elif kind == "waitress":
        from waitress import serve

        serve(app, host="127.0.0.1", port=port, threads=16, _quiet=True)
    elif kind == "wsgiref":
        # The stdlib server, with the stdlib's conformance checker in front.
        make_server("127.0.0.1", port, validator(app), handler_class=QuietHandler).serve_forever()
    else:
        raise SystemExit(f"unknown server {kind!r}")


if __name__ == "__main__":
    main()
