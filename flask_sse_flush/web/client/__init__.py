"""``SSEFlushSource``, the browser (and Node) client, as the app serves it.

One JavaScript text (``body.js``) is served two ways, so the two can never
differ: ``/sse-flush.js``, a classic script that defines
``globalThis.SSEFlushSource``, and ``/sse-flush.mjs``, an ES module that
exports it; ``/sse-flush.d.ts`` holds its TypeScript types. Each answer
carries a strong ``ETag`` of its bytes and asks to be revalidated
(``Cache-Control: no-cache``): a page always gets the client of the server
it talks to, and a browser that has it downloads nothing (``304``).

:func:`serve_client` adds the routes to an app (the extension and the
render blueprint both call it, so an app serves them once, wherever it
registers the library); :func:`client_file` gives the bytes, for a build
that bundles them.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

from flask import Flask, Response, request
from werkzeug.wrappers import Response as BaseResponse

__all__ = ["CLIENT_FILES", "client_file", "serve_client"]

#: The files served, and their content types.
CLIENT_FILES: dict[str, str] = {
    "sse-flush.js": "text/javascript; charset=utf-8",
    "sse-flush.mjs": "text/javascript; charset=utf-8",
    "sse-flush.d.ts": "text/plain; charset=utf-8",
}

_BANNER = "/*! flask-sse-flush: SSEFlushSource (MIT licence) */\n"
_CLASSIC = """(function () {{
"use strict";
{body}
globalThis.SSEFlushSource = SSEFlushSource;
if (typeof module === "object" && module && module.exports) module.exports = SSEFlushSource;
}})();
"""
_MODULE = """{body}
export {{ SSEFlushSource, EventStreamParser }};
export default SSEFlushSource;
"""


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


@cache
def client_file(name: str) -> bytes:
    """The bytes of ``name`` (a key of :data:`CLIENT_FILES`), exactly as served.

    :raises KeyError: not one of the client's files.
    """
    if name not in CLIENT_FILES:
        raise KeyError(f"no client file {name!r}; there are: {', '.join(CLIENT_FILES)}")
    if name == "sse-flush.d.ts":
        return _read("sse-flush.d.ts").encode("utf-8")
    body = _read("body.js").rstrip() + "\n"
    wrapper = _CLASSIC if name == "sse-flush.js" else _MODULE
    text = _BANNER + wrapper.format(body=body)
    return text.encode("utf-8")


def _answer(name: str) -> BaseResponse:
    body = client_file(name)
    response = Response(body, content_type=CLIENT_FILES[name])
    response.set_etag(hashlib.sha256(body).hexdigest()[:32])
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response.make_conditional(request)


def serve_client(app: Flask, url_prefix: str | None = None) -> None:
    """Serve the client's files at ``<url_prefix>/sse-flush.js`` (``.mjs``, ``.d.ts``) on ``app``.

    A path the app routes already (the library's, or the app's own) is
    left as it is.
    """
    prefix = (url_prefix or "").rstrip("/")
    taken = {rule.rule for rule in app.url_map.iter_rules()}
    for name in CLIENT_FILES:
        path = f"{prefix}/{name}"
        if path in taken:
            continue
        app.add_url_rule(
            path,
            endpoint=f"sse_flush_client:{path}",
            view_func=lambda name=name: _answer(name),
            methods=["GET"],
        )
