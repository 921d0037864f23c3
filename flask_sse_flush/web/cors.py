"""Cross-origin access to the render routes: ``cors_origins=[...]``."""

from __future__ import annotations

from collections.abc import Collection

from flask import Blueprint, Response, request

from ..wsgi.headers import EXPOSED_HEADERS

__all__ = ["cors"]

_CORS_METHODS = "GET, HEAD, POST, DELETE"


def _origins(origins: Collection[str]) -> frozenset[str]:
    if isinstance(origins, str):
        raise TypeError("cors_origins must be a list of origins, not one string")
    allowed = set()
    for origin in origins:
        if not isinstance(origin, str):
            raise TypeError(f"an origin must be a str, not {type(origin).__name__}")
        scheme, sep, rest = origin.partition("://")
        if origin == "*" or not sep or scheme not in ("http", "https") or not rest or "/" in rest:
            raise ValueError(
                f"an origin is 'scheme://host[:port]' (no '*', no path), not {origin!r}"
            )
        allowed.add(origin.lower())
    return frozenset(allowed)


def cors(blueprint: Blueprint, origins: Collection[str], *, credentials: bool = True) -> None:
    """Answer the listed origins' cross-origin requests to ``blueprint``'s routes.

    A request whose ``Origin`` is listed gets ``Access-Control-Allow-Origin``
    (that origin: never ``*``, which browsers refuse with credentials) and,
    with ``credentials``, ``Access-Control-Allow-Credentials: true`` (what
    ``new EventSource(url, {withCredentials: true})`` and ``fetch(...,
    {credentials: "include"})`` need). A preflight (``OPTIONS`` with
    ``Access-Control-Request-Method``) also gets the methods, the headers it
    asked for, and a ``Max-Age`` of 10 minutes. Any other origin gets no
    CORS header, so its browser refuses the response. Every answer varies
    on ``Origin``.

    :raises ValueError: an origin is ``"*"`` or not ``scheme://host[:port]``.
    """
    allowed = _origins(origins)

    @blueprint.after_request
    def allow_origin(response: Response) -> Response:
        response.vary.add("Origin")
        origin = request.headers.get("Origin")
        if origin is None or origin.lower() not in allowed:
            return response
        headers = response.headers
        headers["Access-Control-Allow-Origin"] = origin
        if credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        # What SSEFlushSource reads: when to retry, the keepalive, the end.
        headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSED_HEADERS)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            headers["Access-Control-Allow-Methods"] = _CORS_METHODS
            asked = request.headers.get("Access-Control-Request-Headers")
            if asked:
                headers["Access-Control-Allow-Headers"] = asked[:1024]
            headers["Access-Control-Max-Age"] = "600"
        return response
