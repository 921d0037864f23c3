"""Benchmark clients: raw sockets, timestamping every event on arrival.

Run as a separate process (``python -m benchmarks.client ...``) so that the
server's and the clients' open files and CPU time stay apart. Prints one
JSON object on stdout. One ``epoll`` loop over non-blocking sockets, and no
more: at 10,000 streams a client slower than the server would be what is
measured (an asyncio client here measured the raw asyncio server's fan-out
at twice what this loop does). While events flow, the loop only stamps each
chunk and keeps it, with the garbage collector off; the ticks are parsed
once the level is over. Parsing each chunk as it came cost about 10 µs of
CPU per event (a client process of 5,000 streams: 1.5 s for 150,000), so
the two client processes sharing a CPU took longer over a broadcast to
10,000 streams than the server did, and the fan-out measured was theirs.

* ``streams PORT N EXPECT TIMEOUT [SOURCE] [--spin]``: open N ``/sub``
  streams (from the loopback address SOURCE: each source address has its
  own ~28,000 ephemeral ports, so 40,000 streams to one port need more than
  one), print ``ready <connected>``, then record, for every tick, arrival
  minus send time, until each stream has EXPECT ticks or TIMEOUT seconds
  pass. With ``--spin`` it polls without sleeping: no wake-up of its own is
  in a latency (:mod:`benchmarks.placement`).
* ``burst PORT K``: read ``/burst?count=K`` and time the stream.
"""

from __future__ import annotations

import gc
import json
import re
import resource
import select
import socket
import sys
import time
from typing import Any

#: A whole tick's data (to its closing brace: a chunk may end inside the number).
TICK = re.compile(rb'"seq":(\d+),"t":(\d+)\}')
#: What begins every tick's data (counted while events flow), and how many of
#: its bytes a chunk's end may leave behind.
MARK = b'"seq":'
MARK_CUT = len(MARK) - 1


#: How many times a stream refused with a non-200 status is tried.
ATTEMPTS = 10
#: Streams connected, and answered, before the next are: the server's accept
#: queue never overflows.
BATCH = 250
REQUEST = "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"


def raise_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Stream:
    """One ``/sub`` connection; records (seq, latency ns) per tick."""

    __slots__ = ("arrived", "attempt", "buffer", "counted", "sock", "status", "tail", "ticks")

    def __init__(self, sock: socket.socket, attempt: int) -> None:
        self.sock = sock
        self.buffer = b""
        self.status: bytes | None = None  # the status line, once the head is in
        self.ticks: list[tuple[int, int]] = []
        self.attempt = attempt
        #: While events flow: each chunk as it came, and when (parsed afterwards).
        self.arrived: list[tuple[int, bytes]] = []
        #: The ticks in ``arrived`` (to know when to stop), and its last bytes:
        #: a marker cut in two by a chunk's end is counted too.
        self.counted = 0
        self.tail = b""

    def keep(self, data: bytes, now: int) -> None:
        """Stamp and keep one chunk, counting its ticks; nothing more while events flow."""
        self.arrived.append((now, data))
        self.counted += data.count(MARK) + (self.tail + data[:MARK_CUT]).count(MARK)
        self.tail = (self.tail + data)[-MARK_CUT:] if len(data) < MARK_CUT else data[-MARK_CUT:]

    def parse(self) -> None:
        """Every tick of the chunks kept, each with the time its chunk came."""
        for now, data in self.arrived:
            self.feed(data, now)
        self.arrived = []

    def feed(self, data: bytes, now: int) -> None:
        buffer = self.buffer + data
        if self.status is None:
            head, sep, rest = buffer.partition(b"\r\n\r\n")
            if not sep:
                self.buffer = buffer
                return
            self.status, buffer = head.split(b"\r\n", 1)[0], rest
        end = 0
        for match in TICK.finditer(buffer):
            self.ticks.append((int(match.group(1)), now - int(match.group(2))))
            end = match.end()
        self.buffer = buffer[end:][-256:]


def _open(
    port: int, count: int, source: str | None, poller: select.epoll, open_: dict[int, Stream]
) -> int:
    """Open ``count`` streams into ``open_``, ``BATCH`` at a time; how many failed."""
    failed = 0
    queue = [0] * count  # the attempt each stream is at
    while queue:
        batch, queue = queue[:BATCH], queue[BATCH:]
        waiting: dict[int, Stream] = {}
        for attempt in batch:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                if source is not None:
                    sock.bind((source, 0))
                sock.connect(("127.0.0.1", port))
                sock.sendall(REQUEST.format(path="/sub").encode())
            except OSError:
                sock.close()
                failed += 1
                continue
            sock.setblocking(False)
            waiting[sock.fileno()] = Stream(sock, attempt)
            poller.register(sock.fileno(), select.EPOLLIN)
        retry = []
        deadline = time.monotonic() + 30
        while waiting and time.monotonic() < deadline:
            for fd, _ in poller.poll(1.0):
                stream = waiting.get(fd) or open_[fd]
                try:
                    data = stream.sock.recv(1 << 16)
                except OSError:
                    data = b""
                if data:
                    stream.feed(data, time.time_ns())
                if fd not in waiting or (data and stream.status is None):
                    continue
                del waiting[fd]
                if data and stream.status.startswith(b"HTTP/1.1 200 "):  # type: ignore[union-attr]
                    open_[fd] = stream
                    continue
                # Closed, or refused (a 503 from a worker whose store is
                # busy): a browser retries after Retry-After; so do we.
                poller.unregister(fd)
                stream.sock.close()
                if data and stream.attempt + 1 < ATTEMPTS:
                    retry.append(stream.attempt + 1)
                else:
                    failed += 1
        for fd, stream in waiting.items():
            poller.unregister(fd)
            stream.sock.close()
            failed += 1
        if retry:
            time.sleep(1.0)
            queue += retry
    return failed


def streams(
    port: int,
    count: int,
    expect: int,
    timeout: float,
    source: str | None = None,
    spin: bool = False,
) -> dict[str, Any]:
    poller = select.epoll()
    opened: dict[int, Stream] = {}
    failed = _open(port, count, source, poller, opened)
    print(f"ready {len(opened)}", flush=True)
    for stream in opened.values():
        stream.counted = len(stream.ticks)  # any in the opening chunk, parsed already
    left = sum(stream.counted < expect for stream in opened.values())
    deadline = time.monotonic() + timeout
    wait = 0.0 if spin else 0.5
    # Nothing collected mid-broadcast: a full collection walks every kept chunk.
    gc.disable()
    try:
        while left and time.monotonic() < deadline:
            for fd, _ in poller.poll(wait):
                stream = opened[fd]
                try:
                    data = stream.sock.recv(1 << 16)
                except OSError:
                    data = b""
                now = time.time_ns()
                before = stream.counted
                if not data:
                    poller.unregister(fd)
                    left -= before < expect
                    continue
                stream.keep(data, now)
                if before < expect <= stream.counted:
                    left -= 1
    finally:
        gc.enable()
    for stream in opened.values():
        stream.sock.close()
        stream.parse()
    poller.close()
    by_seq: dict[int, list[int]] = {}
    for stream in opened.values():
        for seq, latency in stream.ticks:
            by_seq.setdefault(seq, []).append(latency)
    complete = sum(len(stream.ticks) >= expect for stream in opened.values())
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
    args = [arg for arg in sys.argv[1:] if arg != "--spin"]
    mode, port = args[0], int(args[1])
    if mode == "streams":
        count, expect, timeout = int(args[2]), int(args[3]), float(args[4])
        source = args[5] if len(args) > 5 else None
        result = streams(port, count, expect, timeout, source, "--spin" in sys.argv)
    elif mode == "burst":
        result = burst(port, int(args[2]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
