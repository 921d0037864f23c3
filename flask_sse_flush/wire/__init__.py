"""The wire: the Server-Sent Events format, pure and without I/O.

:mod:`~flask_sse_flush.wire.frames` turns events and comments into the bytes
of one frame and back (the decoder the tests and the doctor read streams
with). Nothing here knows of sockets, threads or Flask.
"""
