"""The Flask side: settings, the extension, the render routes.

- :mod:`~flask_sse_flush.web.settings`: every option's one name, default and
  check, resolved once per app;
- :mod:`~flask_sse_flush.web.extension`: :class:`~flask_sse_flush.SSEFlush`,
  channels published from anywhere and streamed from the app's views;
- :mod:`~flask_sse_flush.web.blueprint`: the render-job routes.
"""
