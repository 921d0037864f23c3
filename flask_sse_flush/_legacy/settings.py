"""0.2 path: the module is now :mod:`flask_sse_flush.web.settings`."""

from flask_sse_flush._legacy import alias

alias(__name__, __spec__)
