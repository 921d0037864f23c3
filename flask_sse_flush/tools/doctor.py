"""``doctor``: connect to an event stream and say which layer holds its events back.

::

    python -m flask_sse_flush doctor https://example.com/render/diagnose
    flask-sse-doctor --json https://example.com/render/diagnose?n=30
    flask sse doctor http://127.0.0.1:8000/render/diagnose

It reads the stream the way a browser does, through whatever proxies stand
in front, and reports the status, the HTTP version, the response headers
that matter, the time to headers and to the first event, and how events
arrived. Pointed at a render blueprint's diagnostic route
(``GET <prefix>/render/diagnose``, see :func:`~flask_sse_flush.create_render_blueprint`'s
``diagnose``), whose events carry the time the server sent them, it also
measures each event's true delay and finds batching, and names the likely
culprit with its fix:

``proxy-buffering``
    events arrive in bursts and the stream has lost ``X-Accel-Buffering: no``
    (or a proxy says it passed through): nginx's ``proxy_buffering``, or a
    proxy like it. Against the diagnostic route the doctor also reads a
    second stream that does not send ``X-Accel-Buffering: no``
    (``accel=0``): a proxy that buffers it holds back any stream whose
    header is hidden, dropped or never sent, and is named too (nginx passes
    no ``X-Accel-*`` header to the client, so the client cannot tell whether
    it was honoured).
``compression``
    the stream arrives compressed (``Content-Encoding: gzip``, ``br``, ...):
    compression waits for enough input before it sends anything.
``server-buffering``
    events arrive in bursts with no proxy in sight, or the response has a
    ``Content-Length``: the WSGI server (or a middleware) collects the body.
``nagle``
    events come late one after another by what waiting for an ACK costs:
    Nagle's algorithm on a connection without ``TCP_NODELAY``, where the
    server writes each event in more than one piece (see below).
``idle-timeout``
    the stream was cut after a silence without its last event: a proxy or
    CDN idle timeout shorter than the keepalive period (some ignore comment
    lines: send keepalives as events, ``keepalive_event``).
``connection-limit``
    with ``--streams N``, some of N concurrent streams to the host did not
    start while the others ran: HTTP/1.1's six connections per host in a
    browser, or a server with too few workers.

How late Nagle's algorithm makes an event depends on the round trip. Each
piece of an event after the first waits for the ACK of the one before: one
round trip when the client acknowledges at once (Linux does, for a reader
that keeps up), plus the client's delayed-ACK timer when it does not (about
40 ms on Linux, 200 ms on Windows). The doctor takes the round trip from its
own TCP handshake (``round_trip``; the time to headers if that was shorter)
and names ``nagle`` when a quarter of the events or more are held back (by
half a round trip and 10 ms at least) and nearly all land on time or in the
windows that follow the round trip: one round trip (give or take a quarter
of it, 5 ms at least), the round trip plus 30 to 60 ms, or plus 180 to
230 ms. Events sent closer together than two round trips queue behind each
other's ACKs; they count when they arrive one round trip after the event
before. On loopback the round trip is nothing, and so is the cost: the
first window is "on time" there. On a slow link (a round trip near the
events' interval, 0.1 s by default) ask for events farther apart
(``?interval=0.25``). Each event's delay is measured from the quickest trip
the server's bytes made (the least-delayed event, or the response headers
if they were quicker), so a delay that every event suffers alike, such as
one round trip each, shows.

The exit status is 0 when events arrive in time, 1 when a culprit was
found, 2 when the stream could not be read at all: it works in CI and in
monitoring. ``--json`` prints one JSON object (``ok``, ``culprits``,
``status``, ``http_version``, ``headers``, ``header_problems``,
``round_trip``, ``time_to_headers``, ``time_to_first_event``, ``events``,
``gaps``, ``delays``, ``diagnostic``, ``fixes``).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import socket
import ssl
import statistics
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit

from ..wire.frames import EventDecoder

__all__ = ["CULPRITS", "Diagnosis", "diagnose", "main"]

#: Every culprit the doctor can name, with the fix it suggests.
CULPRITS: dict[str, str] = {
    "proxy-buffering": (
        "a proxy buffers the stream: keep the X-Accel-Buffering: no header the app sends "
        "(no proxy_hide_header X-Accel-Buffering), or set proxy_buffering off for it "
        "(nginx; docs/deploy/nginx.conf)"
    ),
    "compression": (
        "the stream is compressed on the way: leave text/event-stream out of gzip_types "
        "and brotli_types, and keep the app's Content-Encoding: identity (no "
        "proxy_hide_header Content-Encoding)"
    ),
    "server-buffering": (
        "the server or a middleware collects the body before sending it: yield each "
        "event as its own chunk (flask_sse_flush.EventStream) and check middleware "
        "that reads the whole response (compression, minifiers, debug toolbars)"
    ),
    "nagle": (
        "small writes wait for delayed ACKs: set TCP_NODELAY on the connection "
        "(flask_sse_flush does on the servers that expose their socket; in nginx "
        "tcp_nodelay on)"
    ),
    "idle-timeout": (
        "something cut the stream during a silence: make its idle timeout longer than "
        "the keepalive period, or lower keepalive; if it ignores comment lines, send "
        "keepalives as events (create_render_blueprint(keepalive_event=True))"
    ),
    "connection-limit": (
        "concurrent streams stall: browsers open at most six HTTP/1.1 connections per "
        "host; serve HTTP/2 from the proxy (docs/deploy/nginx-http2.conf), or raise "
        "the server's worker connections"
    ),
}

#: How late an event may be and still count as real time.
LATE = 0.100
_COMPRESSED = ("gzip", "br", "deflate", "compress", "zstd")
#: An event no later than this is on time.
_ON_TIME = 0.005
#: What the client's delayed-ACK timer adds to a round trip: Linux, Windows.
_DELAYED_ACK_WINDOWS = ((0.030, 0.060), (0.180, 0.230))
#: An event held back by Nagle's algorithm is at least this late.
_NAGLE_HELD = 0.010


class DoctorError(Exception):
    """The stream could not be read at all (connection, TLS, status)."""


@dataclass
class Diagnosis:
    """What :func:`diagnose` found."""

    url: str
    ok: bool = False
    culprits: list[str] = field(default_factory=list)
    status: int | None = None
    http_version: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    header_problems: list[str] = field(default_factory=list)
    #: Seconds the TCP handshake took: one round trip to the server (or
    #: the first proxy), or the time to headers if that was shorter.
    round_trip: float | None = None
    time_to_headers: float | None = None
    time_to_first_event: float | None = None
    events: int = 0
    complete: bool = False
    gaps: dict[str, float] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)
    diagnostic: bool = False
    streams_started: list[float | None] = field(default_factory=list)
    #: Delays of the second probe, a stream without ``X-Accel-Buffering: no``.
    without_opt_out: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def fixes(self) -> list[str]:
        return [CULPRITS[c] for c in self.culprits]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["fixes"] = self.fixes
        return data


@dataclass
class _Arrival:
    at: float  # seconds since the request was sent
    sent: float | None  # the server's clock, from the diagnostic route
    name: str


class _Reader:
    """One HTTP/1.1 response read off a socket, body decoded, with times."""

    def __init__(self, sock: socket.socket, started: float) -> None:
        self.sock = sock
        self.started = started
        self.buffer = b""
        self.head_at: float | None = None
        self.status = 0
        self.version = ""
        self.headers: dict[str, str] = {}
        self.ended_cleanly = False

    def _recv(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buffer += data
        return True

    def read_head(self) -> None:
        while b"\r\n\r\n" not in self.buffer:
            if not self._recv():
                raise DoctorError("the connection closed before the response headers")
        self.head_at = time.monotonic() - self.started
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise DoctorError(f"not an HTTP response: {lines[0][:80]!r}")
        self.version, self.status = parts[0], int(parts[1])
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            value = value.strip()
            self.headers[key] = f"{self.headers[key]}, {value}" if key in self.headers else value

    def body(self) -> Iterator[bytes]:
        """Body bytes as they arrive (chunked framing removed, compression undone)."""
        encoding = self.headers.get("content-encoding", "identity").lower()
        inflate = None
        if encoding in ("gzip", "deflate"):
            inflate = zlib.decompressobj(zlib.MAX_WBITS | 32)
        for raw in self._raw_body():
            yield inflate.decompress(raw) if inflate is not None else raw

    def _raw_body(self) -> Iterator[bytes]:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            while True:
                while b"\r\n" not in self.buffer:
                    if not self._recv():
                        return
                size_line, rest = self.buffer.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0] or b"0", 16)
                if size == 0:
                    self.ended_cleanly = True
                    return
                self.buffer = rest
                while len(self.buffer) < size + 2:
                    if not self._recv():
                        return
                chunk, self.buffer = self.buffer[:size], self.buffer[size + 2 :]
                yield chunk
        else:
            length = self.headers.get("content-length")
            remaining = int(length) if length and length.isdigit() else None
            while remaining is None or remaining > 0:
                if self.buffer:
                    chunk, self.buffer = self.buffer, b""
                    if remaining is not None:
                        remaining -= len(chunk)
                    yield chunk
                    continue
                if not self._recv():
                    return
            self.ended_cleanly = True


def _open(host: str, port: int, timeout: float) -> tuple[socket.socket, float]:
    """A TCP connection to ``host``, and the seconds its handshake took (name lookup apart)."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise DoctorError(f"cannot connect to {host}:{port}: {exc}") from None
    error: OSError | None = None
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        began = time.monotonic()
        try:
            sock.connect(address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock, time.monotonic() - began
    raise DoctorError(f"cannot connect to {host}:{port}: {error}")


def _connect(url: str, timeout: float, insecure: bool) -> tuple[socket.socket, str, float]:
    """The connection to ``url`` (TLS done), its request, and the TCP handshake's time."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DoctorError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    sock, handshake = _open(parts.hostname, port, timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if parts.scheme == "https":
        context = ssl.create_default_context()
        if insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols(["http/1.1"])
        try:
            sock = context.wrap_socket(sock, server_hostname=parts.hostname)
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            raise DoctorError(f"TLS failed: {exc}") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.netloc.rsplit("@", 1)[-1]
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
        "Accept-Encoding: gzip, deflate, br\r\nCache-Control: no-cache\r\n"
        "User-Agent: flask-sse-flush-doctor\r\n\r\n"
    )
    return sock, request, handshake


def _header_problems(reader: _Reader) -> list[str]:
    headers = reader.headers
    problems = []
    if "text/event-stream" not in headers.get("content-type", ""):
        problems.append(f"Content-Type is {headers.get('content-type')!r}, not text/event-stream")
    if headers.get("x-accel-buffering", "").lower() != "no":
        problems.append("no X-Accel-Buffering: no (nginx may buffer the stream)")
    if "no-cache" not in headers.get("cache-control", "").lower():
        problems.append("Cache-Control lacks no-cache (a cache or proxy may hold the stream)")
    encoding = headers.get("content-encoding", "").lower()
    if any(name in encoding for name in _COMPRESSED):
        problems.append(f"Content-Encoding: {encoding} (compression holds events back)")
    if "content-length" in headers:
        problems.append("Content-Length is set: the body was collected before it was sent")
    if "close" in headers.get("connection", "").lower():
        problems.append("Connection: close (a hop-by-hop header the app should not send)")
    return problems


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def _nagle_windows(round_trip: float) -> list[tuple[float, float]]:
    """Where the delay of an event held back by Nagle's algorithm falls.

    Its second piece waits for the ACK of the first: one round trip if the
    client acknowledges at once, plus its delayed-ACK timer if not.
    """
    slack = max(_ON_TIME, round_trip / 4)
    windows = [(round_trip - slack, round_trip + slack)]
    windows += [(round_trip + lo, round_trip + hi) for lo, hi in _DELAYED_ACK_WINDOWS]
    return windows


def _looks_like_nagle(delays: Sequence[float], gaps: Sequence[float], round_trip: float) -> bool:
    """Whether the events' delays show Nagle's algorithm waiting for ACKs.

    ``delays``: each event's; ``gaps``: each event's arrival after the one
    before (the first has none). A quarter of the events (two at least) are
    held back, one of them by a whole wait for an ACK, and nearly all are on
    time or fit: by their delay (they waited for the ACK of their own first
    piece), or by their gap (events closer together than two round trips
    pile up: each waits for the ACK of the one before, and arrives one
    round trip after it).
    """
    if not delays:
        return False
    windows = _nagle_windows(round_trip)
    threshold = max(_NAGLE_HELD, round_trip / 2)
    low, high = windows[0]
    after_previous = low >= _NAGLE_HELD  # a round trip, not loopback's "at once"

    def waited(seconds: float) -> bool:
        return any(lo <= seconds <= hi for lo, hi in windows)

    held = [d for d in delays if d >= threshold]
    fits = 0
    for index, delay in enumerate(delays):
        gap = gaps[index - 1] if 0 < index <= len(gaps) else None
        piled = after_previous and gap is not None and low <= gap <= high
        fits += delay <= _ON_TIME or waited(delay) or piled
    return (
        len(held) >= max(2.0, len(delays) / 4)
        and any(waited(d) for d in held)
        and fits >= 0.8 * len(delays)
    )


def _judge(result: Diagnosis, arrivals: list[_Arrival], reader: _Reader) -> None:
    events = [a for a in arrivals if a.name != "done"]
    gaps = [b.at - a.at for a, b in itertools.pairwise(arrivals)]
    if gaps:
        result.gaps = {
            "min": min(gaps),
            "median": statistics.median(gaps),
            "max": max(gaps),
        }
    culprits: list[str] = []
    encoding = reader.headers.get("content-encoding", "").lower()
    compressed = any(name in encoding for name in _COMPRESSED)
    if compressed:
        culprits.append("compression")
    late: list[float] = []
    if result.diagnostic and events and all(a.sent is not None for a in events):
        # The server's clock and ours may differ: the quickest trip sets the
        # offset, and each event's delay is measured from it. The headers
        # count (the server sent them as the stream began), so a delay
        # every event suffers alike shows too.
        offsets = [a.at - (a.sent or 0.0) for a in events]
        base = min(offsets)
        if reader.head_at is not None:
            base = min(base, reader.head_at)
        late = [o - base for o in offsets]
        result.delays = {
            "p50": _percentile(late, 0.5),
            "p95": _percentile(late, 0.95),
            "max": max(late),
        }
    elif len(events) >= 3 and gaps:
        # Without send times: events that come in bursts after long silences.
        late = [g for g in gaps if g > 0]
    buffered = bool(late) and _percentile(late, 0.95) > LATE if result.diagnostic else False
    burst = (
        result.diagnostic and len(gaps) >= 3 and sum(1 for g in gaps if g < 0.005) >= len(gaps) / 2
    )
    nagle = bool(result.delays) and _looks_like_nagle(
        late, [b.at - a.at for a, b in itertools.pairwise(events)], result.round_trip or 0.0
    )
    if buffered or burst or nagle:
        if compressed:
            pass
        elif nagle and not burst:
            culprits.append("nagle")
        elif reader.headers.get("x-accel-buffering", "").lower() != "no" or "via" in reader.headers:
            culprits.append("proxy-buffering")
        else:
            culprits.append("server-buffering")
    if "content-length" in reader.headers and "server-buffering" not in culprits:
        culprits.append("server-buffering")
    if not result.complete and result.diagnostic and not reader.ended_cleanly:
        culprits.append("idle-timeout")
    result.culprits = culprits


def _read(
    url: str,
    *,
    timeout: float,
    insecure: bool,
    progress: Callable[[str], None],
) -> tuple[Diagnosis, list[_Arrival], _Reader]:
    result = Diagnosis(url=url, diagnostic="/render/diagnose" in urlsplit(url).path)
    sock, request, result.round_trip = _connect(url, timeout, insecure)
    started = time.monotonic()
    arrivals: list[_Arrival] = []
    with sock:
        try:
            sock.sendall(request.encode("latin-1"))
            reader = _Reader(sock, started)
            reader.read_head()
        except (OSError, ssl.SSLError) as exc:
            raise DoctorError(f"no response: {exc}") from None
        result.status, result.http_version = reader.status, reader.version
        result.headers = dict(reader.headers)
        result.time_to_headers = reader.head_at
        if reader.head_at is not None and result.round_trip is not None:
            # Headers take a round trip too: a slower handshake (a lost SYN) was not one.
            result.round_trip = min(result.round_trip, reader.head_at)
        result.header_problems = _header_problems(reader)
        if reader.status != 200:
            return result, arrivals, reader
        decoder = EventDecoder()
        try:
            for chunk in reader.body():
                now = time.monotonic() - started
                for event in decoder.feed(chunk):
                    sent = None
                    if result.diagnostic:
                        with contextlib.suppress(ValueError, TypeError, LookupError):
                            data = json.loads(event.data)
                            sent = float(data["sent"]) - float(data["t0"])
                    arrivals.append(_Arrival(now, sent, event.event or "message"))
                    if result.time_to_first_event is None:
                        result.time_to_first_event = now
                    progress(f"{len(arrivals)} events, {now:.1f} s")
                    if event.event in ("done", "complete", "error"):
                        result.complete = True
                if result.complete:
                    break
        except (OSError, zlib.error) as exc:
            result.error = f"the stream broke: {exc}"
    result.events = len([a for a in arrivals if a.name != "done"])
    return result, arrivals, reader


def diagnose(
    url: str,
    *,
    timeout: float = 30.0,
    insecure: bool = False,
    streams: int = 1,
    progress: Callable[[str], None] | None = None,
) -> Diagnosis:
    """Read the stream at ``url`` and judge it (see the module's description).

    :param timeout: seconds to wait for the connection and for each read.
    :param insecure: accept any TLS certificate.
    :param streams: also open this many streams at once and check that
        they all start (``connection-limit``).
    :raises DoctorError: the stream could not be read at all.
    """
    report = progress or (lambda text: None)
    result, arrivals, reader = _read(url, timeout=timeout, insecure=insecure, progress=report)
    if result.status == 200:
        _judge(result, arrivals, reader)
    if result.status == 200 and result.diagnostic and not result.culprits:
        # The stream got through. Would one that does not send
        # X-Accel-Buffering: no (the header a proxy may hide or drop)?
        probe = url + ("&" if urlsplit(url).query else "?") + "accel=0"
        bare, bare_arrivals, bare_reader = _read(
            probe, timeout=timeout, insecure=insecure, progress=report
        )
        if bare.status == 200:
            _judge(bare, bare_arrivals, bare_reader)
            result.without_opt_out = bare.delays
            if "proxy-buffering" in bare.culprits or "server-buffering" in bare.culprits:
                result.culprits.append("proxy-buffering")
    if streams > 1 and result.status == 200:
        result.streams_started = _concurrent_starts(url, streams, timeout, insecure)
        if any(t is None or t > 1.0 for t in result.streams_started):
            result.culprits.append("connection-limit")
    result.ok = result.status == 200 and not result.culprits and result.events > 0
    return result


def _concurrent_starts(url: str, count: int, timeout: float, insecure: bool) -> list[float | None]:
    """Open ``count`` streams at once; the seconds each took to its first event (or None)."""
    starts: list[float | None] = [None] * count
    opened = time.monotonic()

    def one(index: int) -> None:
        with contextlib.suppress(DoctorError, OSError):
            sock, request, _ = _connect(url, timeout, insecure)
            with sock:
                sock.sendall(request.encode("latin-1"))
                reader = _Reader(sock, opened)
                reader.read_head()
                decoder = EventDecoder()
                for chunk in reader.body():
                    if decoder.feed(chunk):
                        starts[index] = time.monotonic() - opened
                        return

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return starts


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def _print_human(result: Diagnosis, out: TextIO) -> None:
    print(f"{result.url}", file=out)
    print(f"  status        {result.status}  {result.http_version or ''}", file=out)
    print(f"  round trip    {_seconds(result.round_trip)} (TCP handshake)", file=out)
    for name in ("content-type", "cache-control", "x-accel-buffering", "content-encoding"):
        print(f"  {name:<18} {result.headers.get(name, '(none)')}", file=out)
    print(f"  headers after {_seconds(result.time_to_headers)}", file=out)
    print(f"  first event   {_seconds(result.time_to_first_event)}", file=out)
    print(f"  events        {result.events}{'' if result.complete else ' (no end seen)'}", file=out)
    if result.gaps:
        gaps = result.gaps
        print(
            f"  between       min {_seconds(gaps['min'])}, median "
            f"{_seconds(gaps['median'])}, max {_seconds(gaps['max'])}",
            file=out,
        )
    if result.delays:
        delays = result.delays
        print(
            f"  delay         p50 {_seconds(delays['p50'])}, p95 {_seconds(delays['p95'])}, "
            f"max {_seconds(delays['max'])}",
            file=out,
        )
    elif not result.diagnostic:
        print("  (point it at /render/diagnose for true per-event delays)", file=out)
    for problem in result.header_problems:
        print(f"  ! {problem}", file=out)
    if result.error:
        print(f"  ! {result.error}", file=out)
    if result.ok:
        print("OK: events arrive as they are sent.", file=out)
    for culprit in result.culprits:
        print(f"CULPRIT {culprit}: {CULPRITS[culprit]}", file=out)
    if not result.ok and not result.culprits:
        print("NOT OK: no events arrived.", file=out)


def main(argv: Sequence[str] | None = None, *, prog: str = "flask-sse-doctor") -> int:
    """The command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Read an SSE URL and say whether, and where, its events are held back.",
    )
    parser.add_argument("url", help="an event stream URL, best the blueprint's /render/diagnose")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per read (30)")
    parser.add_argument("--insecure", "-k", action="store_true", help="accept any certificate")
    parser.add_argument(
        "--streams", type=int, default=1, help="also open this many streams at once (1)"
    )
    args = parser.parse_args(argv)
    live = not args.json and sys.stderr.isatty()

    def progress(text: str) -> None:
        if live:
            sys.stderr.write(f"\r  measuring: {text}   ")
            sys.stderr.flush()

    try:
        result = diagnose(
            args.url,
            timeout=args.timeout,
            insecure=args.insecure,
            streams=max(1, args.streams),
            progress=progress,
        )
    except DoctorError as exc:
        if args.json:
            print(json.dumps({"ok": False, "culprits": [], "url": args.url, "error": str(exc)}))
        else:
            print(f"{args.url}\n  ! {exc}", file=sys.stderr)
        return 2
    if live:
        sys.stderr.write("\r" + " " * 60 + "\r")
    if args.json:
        print(json.dumps(result.to_json(), default=str))
    else:
        _print_human(result, sys.stdout)
    if result.status != 200 or result.events == 0:
        return 2 if not result.culprits else 1
    return 0 if result.ok else 1


def console() -> None:
    """The ``flask-sse-doctor`` console script."""
    sys.exit(main())
