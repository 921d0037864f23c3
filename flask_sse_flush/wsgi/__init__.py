"""The WSGI side of a stream: what reaches the server and its socket.

- :mod:`~flask_sse_flush.wsgi.stream`: :class:`~flask_sse_flush.EventStream`,
  one connection's frames, keepalives and end, as a streaming response;
- :mod:`~flask_sse_flush.wsgi.direct`: a frame published on the hub, written
  to a waiting stream's socket in the publisher's own call (gunicorn
  ``-k gevent``);
- :mod:`~flask_sse_flush.wsgi.headers`: the headers that switch buffering off;
- :mod:`~flask_sse_flush.wsgi.transport`: the client socket behind each server,
  and ``TCP_NODELAY`` on it;
- :mod:`~flask_sse_flush.wsgi.servers`: which server this is, and a warning
  where it falls short.
"""
