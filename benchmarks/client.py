"""Benchmark clients: raw sockets, timestamping every event on arrival.

Run as a separate process (``python -m benchmarks.client ...``) so that the
server's and the clients' open files and CPU time stay apart. Prints one
JSON object on stdout.

* ``streams PORT N EXPECT TIMEOUT [SOURCE]``: open N ``/sub`` streams (from
  the loopback address SOURCE: each source address has its own ~28,000
  ephemeral ports, so 40,000 streams to one port need more than one), print
  ``ready <connected>``, then record, for every tick, arrival minus send
  time, until each stream has EXPECT ticks or TIMEOUT seconds pass.
* ``burst PORT K``: read ``/burst?count=K`` and time the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import resource
import socket
import sys
import time
from typing import Any

TICK = re.compile(rb'"seq":(\d+),"t":(\d+)')


def _same(protocol: Stream) -> Stream:
    return protocol


#: How many times a stream refused with a non-200 status is tried.
ATTEMPTS = 10
REQUEST = "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"


def raise_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Stream(asyncio.Protocol):
    """One ``/sub`` connection; records (seq, latency ns) per tick."""

    def __init__(self, expect: int, done: asyncio.Event, counter: list[int]) -> None:
        self.expect = expect
        self.done = done
        self.counter = counter  # [streams still waiting]
        self.buffer = b""
        self.headers = asyncio.get_running_loop().create_future()
        self.ticks: list[tuple[int, int]] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(REQUEST.format(path="/sub").encode())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buffer = self.buffer + data
        if not self.headers.done():
            if b"\r\n\r\n" not in buffer:
                self.buffer = buffer
                return
            if not buffer.startswith(b"HTTP/1.1 200 "):
                # A 503 (a worker whose store is busy): the caller tries again.
                status = buffer.split(b"\r\n", 1)[0].decode("latin-1")
                self.headers.set_exception(ConnectionRefusedError(status))
                if self.transport is not None:
                    self.transport.close()
                return
            self.headers.set_result(True)
        end = 0
        for match in TICK.finditer(buffer):
            self.ticks.append((int(match.group(1)), now - int(match.group(2))))
            end = match.end()
            if len(self.ticks) == self.expect:
                self.counter[0] -= 1
                if self.counter[0] == 0:
                    self.done.set()
        self.buffer = buffer[end:][-256:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.headers.done():
            self.headers.set_exception(ConnectionError("closed before headers"))


async def streams(
    port: int, count: int, expect: int, timeout: float, source: str | None = None
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    counter = [count]
    opened: list[Stream] = []
    failed = 0
    batch = 250  # do not overrun the server's accept backlog
    local = None if source is None else (source, 0)

    async def connect() -> Stream | None:
        # A browser retries a refused stream after Retry-After; so do we.
        for _ in range(ATTEMPTS):
            protocol = Stream(expect, done, counter)
            try:
                await loop.create_connection(
                    functools.partial(_same, protocol), "127.0.0.1", port, local_addr=local
                )
                await asyncio.wait_for(protocol.headers, 30)
                return protocol
            except ConnectionRefusedError:
                await asyncio.sleep(1.0)
            except (OSError, asyncio.TimeoutError, ConnectionError):
                return None
        return None

    for start in range(0, count, batch):
        results = await asyncio.gather(*(connect() for _ in range(min(batch, count - start))))
        for protocol in results:
            if protocol is not None:
                opened.append(protocol)
            else:
                failed += 1
    counter[0] = len(opened)
    print(f"ready {len(opened)}", flush=True)
    if opened:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), timeout)
    for protocol in opened:
        if protocol.transport is not None:
            protocol.transport.close()
    by_seq: dict[int, list[int]] = {}
    for protocol in opened:
        for seq, latency in protocol.ticks:
            by_seq.setdefault(seq, []).append(latency)
    complete = sum(len(p.ticks) >= expect for p in opened)
    return {"connected": len(opened), "failed": failed, "complete": complete, "by_seq": by_seq}


def burst(port: int, count: int) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", port), 30) as sock:
        sock.sendall(REQUEST.format(path=f"/burst?count={count}").encode())
        seen = 0
        first = last = 0
        carry = b""  # shorter than the marker: a match inside it was counted before
        while seen < count:
            data = sock.recv(1 << 18)
            if not data:
                break
            now = time.perf_counter_ns()
            found = (carry + data).count(b'"seq":')
            carry = data[-5:]
            if found and not first:
                first = now
            seen += found
            last = now
    rate = (seen - 1) / ((last - first) / 1e9) if last > first else 0.0
    return {"events": seen, "seconds": (last - first) / 1e9, "rate": rate}


def main() -> None:
    raise_open_file_limit()
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "streams":
        count, expect, timeout = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
        source = sys.argv[6] if len(sys.argv) > 6 else None
        result = asyncio.run(streams(port, count, expect, timeout, source))
    elif mode == "burst":
        result = burst(port, int(sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
