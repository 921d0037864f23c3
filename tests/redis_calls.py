"""What a test's Redis server has run: to check how many round trips a change costs."""

from __future__ import annotations


def lua_calls(url: str) -> int:
    """The Lua scripts the Redis server at ``url`` has run so far (``EVALSHA`` and ``EVAL``)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    calls = (stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))
    return sum(int(n) for n in calls)
