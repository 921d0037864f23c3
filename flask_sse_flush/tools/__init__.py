"""Tools run from a shell: the doctor (``flask-sse-doctor``, ``flask sse doctor``)."""
