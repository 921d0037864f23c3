"""Operations: how a worker stops without losing a stream, and what it reports.

- :mod:`~flask_sse_flush.ops.lifecycle`: open streams, limits and the graceful stop;
- :mod:`~flask_sse_flush.ops.metrics`: Prometheus metrics, or log records.
"""
