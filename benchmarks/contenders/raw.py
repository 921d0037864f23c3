"""The limit: an asyncio socket server that writes headers, then frames.

No framework, no parsing beyond the request line; TCP_NODELAY is asyncio's
default on TCP transports. Whatever any contender adds is measured against
this.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Coroutine
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import Contender
from .common import KEEPALIVE, burn, pause, schedule, tick_frame

CONTENDERS = [
    Contender(
        "raw-asyncio",
        "the limit: raw asyncio socket server",
        10_000,
        lambda port: [sys.executable, "-m", "benchmarks.contenders.raw", str(port)],
        rank=0,
    ),
]

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Connection: close\r\n\r\n: open\n\n"
)
subscribers: set[asyncio.StreamWriter] = set()


class State:
    seq = 0
    #: The loop time of the last write to every subscriber (an event or a keepalive).
    written = 0.0


state = State()
tasks: set[asyncio.Task[None]] = set()


def _start(coroutine: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(coroutine)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def publish(count: int, interval: float, start: int | None) -> None:
    due = schedule(count, interval, start)
    await asyncio.sleep(pause(0, due[0]))
    loop = asyncio.get_running_loop()
    for i in range(count):
        state.seq += 1
        frame = tick_frame(state.seq, due[i])
        for writer in list(subscribers):
            writer.write(frame)
        state.written = loop.time()
        await asyncio.sleep(pause(interval, due[i + 1] if i + 1 < count else None))


async def keepalives() -> None:
    """A keepalive to every stream once ``KEEPALIVE`` seconds pass without a write.

    As every contender sends them: none while events flow. A sweep on a fixed
    clock instead would land on some broadcasts and not others, and slow those.
    """
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(max(0.0, state.written + KEEPALIVE - loop.time()))
        if loop.time() - state.written >= KEEPALIVE:
            for writer in list(subscribers):
                writer.write(b": keepalive\n\n")
            state.written = loop.time()


def _json(writer: asyncio.StreamWriter, body: object) -> None:
    data = json.dumps(body).encode()
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (len(data), data)
    )


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        request = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
        return
    target = urlsplit(request.split(b" ", 2)[1].decode())
    query = {k: v[0] for k, v in parse_qs(target.query).items()}
    if target.path == "/sub":
        writer.write(HEAD)
        subscribers.add(writer)
        try:
            await reader.read()  # until the client leaves
        finally:
            subscribers.discard(writer)
            writer.close()
        return
    if target.path == "/burst":
        writer.write(HEAD)
        for seq in range(1, int(query["count"]) + 1):
            writer.write(tick_frame(seq))
            if seq % 64 == 0:
                await writer.drain()
        await writer.drain()
    elif target.path == "/pub":
        start = int(query["start"]) if "start" in query else None
        _start(publish(int(query["count"]), float(query["interval"]), start))
        _json(writer, {"ok": True})
    elif target.path == "/count":
        _json(writer, {"n": len(subscribers)})
    elif target.path == "/cpu":
        _start(asyncio.to_thread(burn, float(query["seconds"])))
        _json(writer, {"ok": True})
    await writer.drain()
    writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    for sock in server.sockets:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _start(keepalives())
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
