"""sse-starlette's EventSourceResponse under uvicorn: what most Python SSE users pick."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import Contender
from .common import KEEPALIVE, burn, pause, schedule, tick


def _command(port: int) -> list[str]:
    # As `pip install "uvicorn[standard]"` runs it: uvloop and httptools.
    fast = ["--loop", "uvloop"] if importlib.util.find_spec("uvloop") else []
    fast += ["--http", "httptools"] if importlib.util.find_spec("httptools") else []
    return [
        sys.executable, "-m", "uvicorn", "benchmarks.contenders.starlette:app", "--host",
        "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
        "--backlog", "4096", *fast,
    ]  # fmt: skip


CONTENDERS = [Contender("sse-starlette", "sse-starlette, uvicorn", 10_000, _command, rank=3)]

subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
state = {"seq": 0}
tasks: set[asyncio.Task[None]] = set()


async def publish(count: int, interval: float, start: int | None) -> None:
    due = schedule(count, interval, start)
    await asyncio.sleep(pause(0, due[0]))
    for i in range(count):
        state["seq"] += 1
        data = json.dumps(tick(state["seq"], due[i]), separators=(",", ":"))
        event = {"event": "tick", "data": data}
        for inbox in list(subscribers):
            inbox.put_nowait(event)
        await asyncio.sleep(pause(interval, due[i + 1] if i + 1 < count else None))


async def sub(request: Request) -> EventSourceResponse:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def events() -> AsyncIterator[dict[str, Any]]:
        subscribers.add(inbox)
        try:
            while True:
                yield await inbox.get()
        finally:
            subscribers.discard(inbox)

    return EventSourceResponse(events(), ping=int(KEEPALIVE))


def _start(coroutine: Any) -> None:
    task = asyncio.get_running_loop().create_task(coroutine)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def pub(request: Request) -> JSONResponse:
    query = request.query_params
    start = int(query["start"]) if "start" in query else None
    _start(publish(int(query["count"]), float(query["interval"]), start))
    return JSONResponse({"ok": True})


async def count(request: Request) -> JSONResponse:
    return JSONResponse({"n": len(subscribers)})


async def burst(request: Request) -> EventSourceResponse:
    total = int(request.query_params["count"])

    async def events() -> AsyncIterator[dict[str, Any]]:
        for seq in range(1, total + 1):
            yield {"event": "tick", "data": json.dumps(tick(seq), separators=(",", ":"))}

    return EventSourceResponse(events(), ping=int(KEEPALIVE))


async def cpu(request: Request) -> JSONResponse:
    # Starlette's way to run blocking work: a worker thread.
    _start(run_in_threadpool(burn, float(request.query_params["seconds"])))
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/sub", sub),
        Route("/pub", pub),
        Route("/count", count),
        Route("/burst", burst),
        Route("/cpu", cpu),
    ]
)
