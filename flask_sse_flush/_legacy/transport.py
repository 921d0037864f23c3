"""0.2 path: the module is now :mod:`flask_sse_flush.wsgi.transport`."""

from flask_sse_flush._legacy import alias

alias(__name__, __spec__)
