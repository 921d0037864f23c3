"""Apps built on flask-sse-flush, run from a checkout; not part of the wheel.

* :mod:`examples.demo`: the page ``make run`` serves, whose progress bar
  follows a real MP4 render.

They use only the library's public names, as any app would.
"""
