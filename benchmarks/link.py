"""A network link with a real round trip, and the seeds' bug measured over it.

On loopback Linux acknowledges every segment at once, so Nagle's algorithm
never waits long for an ACK and an app that writes each event in two
pieces without ``TCP_NODELAY`` looks as fast as any other. This module
builds a link where it does not: two network namespaces of their own
("server" at 10.201.0.1, "client" at 10.201.0.2), each with a TUN device,
joined by a small relay that hands every packet across after a fixed delay
(20 ms each way by default). Nothing else is routed in those namespaces:
their traffic never reaches the host's interfaces.

::

    python -m benchmarks.link                 # every case: about 80 s
    python -m benchmarks.link --quick         # 30 ticks per case: about 40 s
    python -m benchmarks.link --delay-ms 50 --output /tmp/link.json

It serves the naive Flask app (two writes per event), the bare Flask
generator (one write per event) and ours, each on gunicorn -k gevent and on
werkzeug's dev server, in the server namespace; a raw-socket client in the
client namespace opens ``/sub``, asks for ticks ``--interval`` apart and
records each one's arrival minus the send time it carries (both namespaces
read the same clock). It reports, per contender and server, the delay
beyond the link's one-way delay (p50, p95, max) and the share of events
more than 5 ms late; then it points ``python -m flask_sse_flush doctor``
at a naive diagnostic stream and at the library's.

What it shows, both ends Linux: the naive app on werkzeug arrives one round
trip late, every event, and so does the bare generator there (werkzeug
sends each chunk's size line, data and closing CRLF as separate sends):
each piece after the first waits for the ACK of the first. The ACK is not
delayed (``nstat`` in the client namespace counts no delayed ACK): Linux
acknowledges a small segment at once when its reader has already drained
it, which a browser's reader does too, so the stall is the round trip, not
the delayed-ACK timer; a client that delays its ACKs (Windows, 200 ms) adds
its timer on top. On gunicorn nothing stalls, naive or not: gunicorn sets
``TCP_NODELAY`` on its listening socket and accepted sockets inherit it.
Ours sets it on werkzeug's socket too. Ticks are 100 ms apart, more than two
round trips, so each event is alone on the wire; events closer together
pile up behind each other's ACKs instead (see the doctor's notes).

Arrival times are the kernel's receive timestamps (``SO_TIMESTAMPNS``) and
the relay runs at real-time priority, so a busy host's scheduling adds
little to what the link and the server do.

Needs root, ``/dev/net/tun`` and iproute2's ``ip``; :class:`LinkUnavailable`
says which is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import itertools
import json
import math
import os
import platform
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from flask_sse_flush.testing import gunicorn_command, stop_process
from flask_sse_flush.wire.frames import EventDecoder

from .contenders import STREAM_WORKER

__all__ = [
    "CLIENT_IP",
    "SERVER_IP",
    "TARGETS",
    "Link",
    "LinkUnavailable",
    "Target",
    "doctor",
    "measure_link",
    "open_link",
    "server_command",
    "tick_delays",
]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

SERVER_IP, CLIENT_IP = "10.201.0.1", "10.201.0.2"
_DEVICE = "ssef0"
_NETNS_DIR = Path("/run/netns")
_NAME = re.compile(r"ssef(\d+)x\d+[sc]")
_COUNTER = itertools.count()

# <sched.h>, <linux/if_tun.h>, <asm-generic/socket.h> (not in Python's socket module)
_CLONE_NEWNET = 0x40000000
_SO_TIMESTAMPNS = 35
_TUNSETIFF = 0x400454CA
_IFF_TUN, _IFF_NO_PI = 0x0001, 0x1000

#: An event more than this late (beyond the one-way delay) counts as late.
LATE_MS = 5.0
#: Packets the relay holds per direction at most; more are dropped.
_QUEUE = 4096

T = TypeVar("T")


class LinkUnavailable(RuntimeError):
    """The link cannot be built here (not root, no ``/dev/net/tun``, no ``ip``)."""


def check_available() -> None:
    """Raise :class:`LinkUnavailable` with the reason, if the link cannot be built."""
    if sys.platform != "linux":
        raise LinkUnavailable("network namespaces are Linux only")
    if os.geteuid() != 0:
        raise LinkUnavailable("creating network namespaces needs root")
    if not os.path.exists("/dev/net/tun"):
        raise LinkUnavailable("no /dev/net/tun (the TUN driver)")
    if shutil.which("ip") is None:
        raise LinkUnavailable("no ip command (iproute2)")


def _setns(name: str) -> None:
    """Move the calling thread into the network namespace ``name``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(_NETNS_DIR / name, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns({name}): {os.strerror(error)}")
    finally:
        os.close(fd)


def _in_namespace(name: str, work: Callable[[], T]) -> T:
    """Run ``work`` on a new thread that has entered ``name`` first.

    A socket (or a TUN device) belongs to the namespace it was created in,
    whichever thread uses it later: so only its creation happens here.
    """
    outcome: list[Any] = []

    def run() -> None:
        try:
            _setns(name)
            outcome.append((True, work()))
        except BaseException as exc:  # handed to the caller
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name=f"in netns {name}")
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    result: T = value
    return result


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise LinkUnavailable(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass(frozen=True)
class Link:
    """Two namespaces joined by a delayed link; see :func:`open_link`."""

    server_ns: str
    client_ns: str
    delay: float  # seconds, each way
    server_ip: str = SERVER_IP
    client_ip: str = CLIENT_IP

    def namespace(self, side: str) -> str:
        return {"server": self.server_ns, "client": self.client_ns}[side]

    def command(self, side: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the ``"server"`` or ``"client"`` namespace."""
        return ["ip", "netns", "exec", self.namespace(side), *argv]

    def run(
        self, side: str, argv: Sequence[str], **options: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` to its end inside a namespace (``subprocess.run``'s options)."""
        return subprocess.run(self.command(side, argv), **options)

    def new_socket(self, side: str = "client") -> socket.socket:
        """A new TCP socket of that namespace."""
        return _in_namespace(self.namespace(side), socket.socket)

    def connect(self, port: int, *, timeout: float = 10.0) -> socket.socket:
        """A client-side connection to the server's ``port``."""
        sock = self.new_socket("client")
        try:
            sock.settimeout(timeout)
            sock.connect((self.server_ip, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def round_trip(self, samples: int = 5) -> float:
        """The median TCP handshake time (one round trip), in seconds.

        A listener of the server namespace answers, with no server process.
        """
        with contextlib.closing(self.new_socket("server")) as listener:
            listener.bind((self.server_ip, 0))
            listener.listen(samples)
            port = listener.getsockname()[1]
            times = []
            for _ in range(samples):
                started = time.monotonic()
                with contextlib.closing(self.connect(port)):
                    times.append(time.monotonic() - started)
                listener.accept()[0].close()
        return sorted(times)[len(times) // 2]

    def get(self, port: int, path: str, *, timeout: float = 10.0) -> tuple[int, bytes]:
        """``GET path`` from the server's ``port``: (status, body as sent, chunked or not)."""
        with contextlib.closing(self.connect(port, timeout=timeout)) as sock:
            request = f"GET {path} HTTP/1.1\r\nHost: {self.server_ip}\r\nConnection: close\r\n\r\n"
            sock.sendall(request.encode("latin-1"))
            data = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                piece = sock.recv(65536)
                if not piece:
                    break
                data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1] if head.startswith(b"HTTP/") else b"0"
        return int(status), body

    @contextlib.contextmanager
    def serve(
        self, argv: Sequence[str], port: int, *, log: Path | None = None, timeout: float = 30.0
    ) -> Iterator[subprocess.Popen[bytes]]:
        """Run the server ``argv`` in the server namespace until it answers on ``port``.

        It answers an HTTP request from the client side before this yields
        (gunicorn listens before its worker has imported the app); it is
        stopped however the block ends.
        """
        with contextlib.ExitStack() as stack:
            output = stack.enter_context(log.open("wb")) if log is not None else None
            process = subprocess.Popen(
                self.command("server", argv),
                cwd=ROOT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                stdout=output or subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            stack.callback(stop_process, process)
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    tail = log.read_text(errors="replace")[-2000:] if log else ""
                    raise RuntimeError(f"{argv[0]} exited with {process.returncode}\n{tail}")
                with contextlib.suppress(OSError, ValueError, IndexError):
                    if self.get(port, "/", timeout=2.0)[0]:  # any answer: the app is in
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{argv} did not answer on port {port} in {timeout} s")
                time.sleep(0.1)
            yield process


def _namespaces() -> list[str]:
    return sorted(p.name for p in _NETNS_DIR.glob("ssef*")) if _NETNS_DIR.is_dir() else []


def _pids_in(name: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, timeout=20)
    return [int(pid) for pid in done.stdout.split() if pid.isdigit()]


def _remove_namespace(name: str) -> None:
    """End what still runs in ``name`` (this module started it), then delete it."""
    for pid in _pids_in(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


def _sweep_stale() -> None:
    """Delete the namespaces a killed run of this module left behind (its pid is gone)."""
    for name in _namespaces():
        match = _NAME.fullmatch(name)
        if match is None:
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            _remove_namespace(name)
        except PermissionError:
            pass


@contextlib.contextmanager
def open_link(delay: float = 0.020) -> Iterator[Link]:
    """Build the link for the length of a ``with``; leave nothing behind.

    Two new network namespaces, named after this process, each with a TUN
    device (``10.201.0.1/24`` in the server's, ``10.201.0.2/24`` in the
    client's) and loopback up; a relay process (``--relay``) moves every
    packet from one device to the other ``delay`` seconds after it left.
    On the way out, however the block ends: the relay is stopped (the
    devices go with it), anything still running in the namespaces is
    killed, and the namespaces are deleted.

    :raises LinkUnavailable: not root, no ``/dev/net/tun``, no ``ip``, or
        the namespaces could not be made.
    """
    check_available()
    _sweep_stale()
    stem = f"ssef{os.getpid()}x{next(_COUNTER)}"
    link = Link(f"{stem}s", f"{stem}c", delay)
    made: list[str] = []
    relay: subprocess.Popen[bytes] | None = None
    try:
        for name in (link.server_ns, link.client_ns):
            _ip("netns", "add", name)
            made.append(name)
        relay = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.link", "--relay", link.server_ns,
             link.client_ns, repr(delay)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        assert relay.stdout is not None
        ready, _, _ = select.select([relay.stdout], [], [], 20.0)
        if not ready or relay.stdout.readline() != b"ready\n":
            stop_process(relay, 2.0)
            errors = relay.stderr.read() if relay.stderr else b""
            raise LinkUnavailable(f"the relay did not start: {errors[-2000:]!r}")
        for name, address in ((link.server_ns, link.server_ip), (link.client_ns, link.client_ip)):
            _ip("-n", name, "addr", "add", f"{address}/24", "dev", _DEVICE)
            _ip("-n", name, "link", "set", _DEVICE, "up")
            _ip("-n", name, "link", "set", "lo", "up")
        yield link
    finally:
        if relay is not None:
            if relay.stdin is not None:
                with contextlib.suppress(OSError):
                    relay.stdin.close()
            try:
                relay.wait(5.0)
            except subprocess.TimeoutExpired:
                stop_process(relay, 2.0)
            for pipe in (relay.stdout, relay.stderr):
                if pipe is not None:
                    pipe.close()
        for name in made:
            _remove_namespace(name)


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", name.encode(), _IFF_TUN | _IFF_NO_PI))
    return fd


def relay(server_ns: str, client_ns: str, delay: float) -> None:
    """The relay process: move packets between the two TUN devices, ``delay`` late.

    Single-threaded, so ``setns`` moves the whole process: into the server
    namespace to open its device, then into the client's for the other.
    Each direction is a FIFO of (due time, packet); the delay is the same
    for every packet, so it stays in order. Runs until its stdin closes
    (its owner's end of the pipe, also when the owner dies); the devices
    vanish with it.
    """
    # A link keeps time however busy the host is: the relay sleeps in select()
    # nearly always, and wakes first when a packet is due.
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except OSError:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, -10)
    fds = []
    for name in (server_ns, client_ns):
        _setns(name)
        fds.append(_open_tun(_DEVICE))
    server, client = fds
    peer = {server: client, client: server}
    queues: dict[int, deque[tuple[float, bytes]]] = {server: deque(), client: deque()}
    control = sys.stdin.fileno()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        now = time.monotonic()
        for fd, queue in queues.items():
            while queue and queue[0][0] <= now:
                with contextlib.suppress(OSError):  # a device going down drops it
                    os.write(fd, queue.popleft()[1])
        dues = [queue[0][0] for queue in queues.values() if queue]
        timeout = max(0.0, min(dues) - time.monotonic()) if dues else None
        readable, _, _ = select.select([server, client, control], [], [], timeout)
        arrived = time.monotonic()
        for fd in readable:
            if fd == control:
                if not os.read(control, 4096):
                    return
                continue
            for _ in range(256):
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if len(queues[peer[fd]]) < _QUEUE:
                    queues[peer[fd]].append((arrived + delay, packet))


# -- the measurement ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """An app every server serves alike (``benchmarks.contenders.common``)."""

    name: str
    app: str  # module:attribute
    label: str


TARGETS = [
    Target("naive", "benchmarks.contenders.bare:naive_app", "naive Flask, two writes per event"),
    Target("bare", "benchmarks.contenders.bare:app", "bare Flask generator, one write per event"),
    Target("ours", "benchmarks.contenders.ours:app", "flask-sse-flush"),
]
SERVERS = ("gunicorn", "gunicorn-stream", "werkzeug")


def server_command(server: str, app: str, port: int) -> list[str]:
    """gunicorn (``-k gevent``, or the stream worker) or werkzeug's dev server, serving ``app``."""
    if server in ("gunicorn", "gunicorn-stream"):
        options = ["--log-level", "warning", "--graceful-timeout", "1"]
        worker = STREAM_WORKER if server == "gunicorn-stream" else "gevent"
        return gunicorn_command(
            app, port, host=SERVER_IP, chdir=str(ROOT), worker_class=worker, options=options
        )
    if server == "werkzeug":
        return [sys.executable, "-m", "benchmarks.serve", app, str(port), SERVER_IP]
    raise ValueError(f"unknown server {server!r}")


class _Body:
    """An HTTP/1.1 response's body read off a socket as it arrives, chunked framing removed."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        # The kernel stamps each read with the time its bytes arrived, so
        # the client's own scheduling on a busy host is not counted.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self.stamp = 0  # time_ns the last read's bytes arrived
        self.buffer = b""
        self.chunked = False
        self.left = 0  # bytes of the current chunk still to come
        self.crlf = False  # the current chunk's closing CRLF is still to come

    def _recv(self) -> bool:
        """Read more (False at the end of the stream or the deadline)."""
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(min(left, 1.0))
            try:
                data, ancillary, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(16))
            except TimeoutError:
                continue
            if not data:
                return False
            self.stamp = time.time_ns()
            for level, kind, value in ancillary:
                if (level, kind) == (socket.SOL_SOCKET, _SO_TIMESTAMPNS) and len(value) >= 16:
                    seconds, nanoseconds = struct.unpack("qq", value[:16])
                    self.stamp = seconds * 1_000_000_000 + nanoseconds
            self.buffer += data
            return True

    def head(self) -> int:
        while b"\r\n\r\n" not in self.buffer:
            if not self._recv():
                raise ConnectionError("no response headers")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        self.chunked = b"transfer-encoding: chunked" in head.lower()
        return int(head.split(b" ", 2)[1])

    def _dechunk(self) -> tuple[bytes, bool]:
        """The chunk data in the buffer so far (a chunk in part too), and whether the body ended."""
        out = b""
        while True:
            if self.left:
                piece = self.buffer[: self.left]
                out += piece
                self.buffer = self.buffer[len(piece) :]
                self.left -= len(piece)
                if self.left:
                    return out, False
                self.crlf = True
            if self.crlf:
                if len(self.buffer) < 2:
                    return out, False
                self.buffer, self.crlf = self.buffer[2:], False
            if b"\r\n" not in self.buffer:
                return out, False
            size_line, self.buffer = self.buffer.split(b"\r\n", 1)
            self.left = int(size_line.split(b";")[0] or b"0", 16)
            if not self.left:
                return out, True

    def pieces(self) -> Iterator[tuple[bytes, int]]:
        """(body bytes, time_ns they arrived), until the end or the deadline."""
        while True:
            if self.chunked:
                data, ended = self._dechunk()
            else:
                data, ended, self.buffer = self.buffer, False, b""
            if data:
                yield data, self.stamp
            if ended or not self._recv():
                return


def tick_delays(
    link: Link, port: int, *, count: int, interval: float, timeout: float = 20.0
) -> list[float]:
    """Open ``/sub``, ask for ``count`` ticks ``interval`` apart; each one's delay beyond
    the link's one-way delay, in seconds, in the order they arrived."""
    deadline = time.monotonic() + count * interval + timeout
    delays: list[float] = []
    with contextlib.closing(link.connect(port, timeout=timeout)) as sock:
        request = (
            f"GET /sub HTTP/1.1\r\nHost: {link.server_ip}\r\nAccept: text/event-stream\r\n\r\n"
        )
        sock.sendall(request.encode("latin-1"))
        body = _Body(sock, deadline)
        if body.head() != 200:
            raise ConnectionError("/sub did not answer 200")
        for _ in range(50):
            if json.loads(link.get(port, "/count")[1] or b"{}").get("n", 0) >= 1:
                break
            time.sleep(0.05)
        link.get(port, f"/pub?count={count}&interval={interval}")
        decoder = EventDecoder()
        for piece, at in body.pieces():
            for event in decoder.feed(piece):
                if event.event == "tick":
                    sent = json.loads(event.data)["t"]
                    delays.append((at - sent) / 1e9 - link.delay)
            if len(delays) >= count:
                break
    return delays


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def summarize(delays: Sequence[float], expected: int) -> dict[str, Any]:
    """p50, p95, max (ms) and the share of events more than :data:`LATE_MS` late."""
    if not delays:
        return {"events": 0, "expected": expected}
    ms = [d * 1000 for d in delays]
    return {
        "events": len(ms),
        "expected": expected,
        "p50_ms": round(_percentile(ms, 0.50), 2),
        "p95_ms": round(_percentile(ms, 0.95), 2),
        "max_ms": round(max(ms), 2),
        "min_ms": round(min(ms), 2),
        "late_share": round(sum(1 for d in ms if d > LATE_MS) / len(ms), 3),
    }


def doctor(link: Link, port: int, path: str = "/render/diagnose") -> dict[str, Any]:
    """Run ``python -m flask_sse_flush doctor --json`` from the client namespace."""
    url = f"http://{link.server_ip}:{port}{path}"
    argv = [sys.executable, "-m", "flask_sse_flush", "doctor", "--json", url]
    done = link.run("client", argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    try:
        report: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        raise RuntimeError(f"the doctor said: {done.stdout[-1000:]}{done.stderr[-2000:]}") from None
    report["exit_status"] = done.returncode
    return report


#: The doctor's cases: (name, server, app).
DOCTOR_CASES = [
    ("naive", "werkzeug", "benchmarks.contenders.naive_diagnose:naive_app"),
    ("ours", "gunicorn", "benchmarks.contenders.naive_diagnose:app"),
    ("ours", "werkzeug", "benchmarks.contenders.naive_diagnose:app"),
]


def measure_link(
    *,
    delay: float = 0.020,
    count: int = 100,
    interval: float = 0.1,
    targets: Sequence[Target] = TARGETS,
    servers: Sequence[str] = SERVERS,
    with_doctor: bool = True,
    progress: Callable[[str], None] = lambda text: None,
) -> dict[str, Any]:
    """Every target on every server over a new link, side by side; then the doctor.

    :returns: the link (``delay_ms``, measured ``round_trip_ms``), one row
        per target and server (:func:`summarize`), and what the doctor said
        of each of :data:`DOCTOR_CASES`.
    """
    ports = itertools.count(8001)
    rows: list[dict[str, Any]] = []
    verdicts: list[dict[str, Any]] = []
    with open_link(delay) as link, tempfile.TemporaryDirectory(prefix="link-") as logs:
        round_trip = link.round_trip()
        progress(f"link up: {delay * 1000:g} ms each way, round trip {round_trip * 1000:.1f} ms")
        for target, server in itertools.product(targets, servers):
            port = next(ports)
            log = Path(logs) / f"{target.name}-{server}.log"
            with link.serve(server_command(server, target.app, port), port, log=log):
                delays = tick_delays(link, port, count=count, interval=interval)
            row = {"target": target.name, "server": server, "label": target.label}
            row.update(summarize(delays, count))
            rows.append(row)
            progress(_row_line(row))
        if with_doctor:
            for name, server, app in DOCTOR_CASES:
                port = next(ports)
                log = Path(logs) / f"doctor-{name}-{server}.log"
                with link.serve(server_command(server, app, port), port, log=log):
                    report = doctor(link, port)
                verdict = {
                    "target": name,
                    "server": server,
                    "culprits": report.get("culprits"),
                    "ok": report.get("ok"),
                    "exit_status": report["exit_status"],
                    "delays_ms": {k: round(v * 1000, 1) for k, v in report["delays"].items()},
                    "time_to_headers_ms": round((report["time_to_headers"] or 0) * 1000, 1),
                }
                verdicts.append(verdict)
                progress(_doctor_line(verdict))
    return {
        "delay_ms": delay * 1000,
        "round_trip_ms": round(round_trip * 1000, 2),
        "count": count,
        "interval": interval,
        "late_ms": LATE_MS,
        "results": rows,
        "doctor": verdicts,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _row_line(row: dict[str, Any]) -> str:
    if not row.get("events"):
        return f"{row['target']:<6} {row['server']:<9} no events arrived"
    return (
        f"{row['target']:<6} {row['server']:<9} {row['events']:>4}/{row['expected']:<4}"
        f"{row['p50_ms']:>8.1f}{row['p95_ms']:>8.1f}{row['max_ms']:>8.1f}"
        f"{row['late_share'] * 100:>7.0f}%"
    )


def _doctor_line(verdict: dict[str, Any]) -> str:
    named = ", ".join(verdict["culprits"] or []) or "none"
    delays = verdict["delays_ms"]
    return (
        f"doctor {verdict['target']:<6} {verdict['server']:<9} culprits: {named:<10} "
        f"(delays p50 {delays.get('p50', 0):.0f}, p95 {delays.get('p95', 0):.0f} ms; "
        f"headers after {verdict['time_to_headers_ms']:.0f} ms)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 events per case, not 100")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay (20)")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between ticks")
    parser.add_argument("--output", type=Path, default=RESULTS / "link.json")
    parser.add_argument("--no-doctor", action="store_true", help="skip the doctor's cases")
    parser.add_argument("--relay", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.relay:
        server_ns, client_ns, delay = args.relay
        relay(server_ns, client_ns, float(delay))
        return 0
    count = 30 if args.quick else 100

    def progress(text: str) -> None:
        print(text, flush=True)
        if text.startswith("link up"):
            print(f"{count} ticks per case, {args.interval * 1000:g} ms apart; ms beyond one way:")
            print(
                f"{'app':<6} {'server':<9} {'events':<9}{'p50':>8}{'p95':>8}{'max':>8}{'late':>8}"
            )

    try:
        results = measure_link(
            delay=args.delay_ms / 1000,
            count=count,
            interval=args.interval,
            with_doctor=not args.no_doctor,
            progress=progress,
        )
    except LinkUnavailable as exc:
        print(f"no link: {exc}", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
