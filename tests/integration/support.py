"""Real servers on 127.0.0.1 and a raw-socket client that timestamps each event."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flask_sse_flush import Event
from flask_sse_flush.testing import free_port, gunicorn_command, server_process
from flask_sse_flush.wire.frames import EventDecoder

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
#: gunicorn worker classes by the short name a server kind uses.
WORKER_CLASSES = {"stream": "flask_sse_flush.wsgi.worker.StreamWorker"}
#: Set to ``stream`` to serve every ``gunicorn-gevent`` of the suite with
#: the stream worker instead (``make test-stream-worker``).
WORKER_ENV = "SSE_FLUSH_TEST_WORKER"


def server_command(
    kind: str, port: int, log_dir: Path, app_dir: Path = HERE, options: Sequence[str] = ()
) -> list[str]:
    if kind == "gunicorn-gevent" and os.environ.get(WORKER_ENV) == "stream":
        kind = "gunicorn-stream"  # the whole suite on the stream worker
    if kind.startswith("gunicorn"):
        worker = kind.split("-", 1)[1]  # gunicorn-gevent -> gevent
        worker = WORKER_CLASSES.get(worker, worker)
        threads = ["--threads", "16"] if worker == "gthread" else []
        return gunicorn_command(
            f"app:create_app({str(log_dir)!r})",
            port,
            worker_class=worker,
            chdir=str(app_dir),
            options=["--graceful-timeout", "1", "--log-level", "warning", *threads, *options],
        )
    if kind.startswith("uwsgi"):
        # pyuwsgi's uwsgi: threads, or gevent's loop engine.
        mode = {
            "uwsgi-threads": ["--threads", "16"],
            "uwsgi-gevent": ["--gevent", "1000", "--gevent-early-monkey-patch"],
            "uwsgi-gevent-unpatched": ["--gevent", "1000"],  # a misconfiguration, warned of
        }[kind]
        return [
            str(Path(sys.executable).with_name("uwsgi")),
            "--http-socket", f"{HOST}:{port}", "--chdir", str(app_dir),
            "--pythonpath", str(app_dir), "--wsgi-file", str(app_dir / "uwsgi_app.py"),
            "--pyargv", str(log_dir), "--master", "--processes", "1",
            "--die-on-term", "--disable-logging", "--need-app", *mode, *options,
        ]  # fmt: skip
    return [sys.executable, str(HERE / "serve.py"), kind, str(port), str(log_dir)]


@dataclass
class Server:
    kind: str
    port: int
    log_dir: Path
    process: subprocess.Popen[bytes]

    def log_file(self, name: str) -> Path:
        return self.log_dir / name

    def read_log(self, name: str) -> list[dict[str, Any]]:
        path = self.log_file(name)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]


@contextlib.contextmanager
def running_server(
    kind: str,
    log_dir: Path,
    timeout: float = 30.0,
    *,
    app_dir: Path = HERE,
    options: Sequence[str] = (),
    env: dict[str, str] | None = None,
    tls: bool = False,
) -> Iterator[Server]:
    """Start a real server on a free loopback port; stop it however the test ends.

    It serves ``create_app(log_dir)`` from ``app.py`` in ``app_dir``;
    ``options`` go to gunicorn, ``env`` is added to the environment;
    ``tls``: the server speaks TLS (its warm-up request does too).
    """
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    command = server_command(kind, port, log_dir, app_dir, options)
    started = False
    with (log_dir / "server.out").open("wb") as output:
        try:
            with server_process(
                command, port, timeout=timeout, stdout=output, stderr=subprocess.STDOUT, env=env
            ) as process:
                started = True
                warm_up(port, timeout, tls=tls)
                yield Server(kind, port, log_dir, process)
        except RuntimeError as exc:
            if started:
                raise
            log = (log_dir / "server.out").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{kind}: {exc}\n{log}") from None


def warm_up(port: int, timeout: float = 30.0, *, tls: bool = False) -> None:
    """Wait until the server answers a request, not only accepts connections.

    gunicorn listens before its worker has booted and imported the app, so
    the first request of a run would time the boot instead of the library.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with contextlib.ExitStack() as stack:
                sock = stack.enter_context(socket.create_connection((HOST, port), 5))
                if tls:
                    context = ssl.create_default_context()
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                    sock = stack.enter_context(context.wrap_socket(sock))
                sock.sendall(b"GET /__warm-up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if sock.recv(12).startswith(b"HTTP/1."):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server on port {port} answered no request in {timeout} s")
        time.sleep(0.05)


def stream_path(payload: dict[str, Any]) -> str:
    return "/render/stream?data=" + quote(json.dumps(payload))


@dataclass
class Arrival:
    event: Event
    at: float  # time.time() when its last byte arrived


@dataclass
class RawResponse:
    """An HTTP response read off a raw socket, with arrival times."""

    sock: socket.socket
    requested_at: float
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    headers_at: float = 0.0
    _buffer: bytes = b""
    _chunked: bool = False
    _done: bool = False

    def _recv(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self._buffer += data
        return True

    def read_head(self) -> None:
        while b"\r\n\r\n" not in self._buffer:
            if not self._recv():
                raise ConnectionError(f"connection closed before headers: {self._buffer!r}")
        self.headers_at = time.time()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()

    def body_chunks(self) -> Iterator[bytes]:
        """Yield body bytes as they arrive, with chunked framing removed."""
        while not self._done:
            if self._chunked:
                while b"\r\n" not in self._buffer:
                    if not self._recv():
                        return
                size_line, rest = self._buffer.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    self._done = True
                    return
                self._buffer = rest
                while len(self._buffer) < size + 2:
                    if not self._recv():
                        return
                chunk, self._buffer = self._buffer[:size], self._buffer[size + 2 :]
                yield chunk
            elif "content-length" in self.headers:
                size = int(self.headers["content-length"])
                while len(self._buffer) < size:
                    if not self._recv():
                        break
                self._done = True
                yield self._buffer[:size]
            else:
                if self._buffer:
                    chunk, self._buffer = self._buffer, b""
                    yield chunk
                if not self._recv():
                    self._done = True

    def body(self) -> bytes:
        return b"".join(self.body_chunks())

    def json(self) -> Any:
        return json.loads(self.body())

    def arrivals(self) -> Iterator[Arrival]:
        decoder = EventDecoder()
        for chunk in self.body_chunks():
            now = time.time()
            for event in decoder.feed(chunk):
                yield Arrival(event, now)

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def raw_get(
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    timeout: float = 15.0,
    *,
    method: str = "GET",
    body: bytes = b"",
    rcvbuf: int | None = None,
) -> Iterator[RawResponse]:
    """Send a request over a plain socket and read the status line and headers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect((HOST, port))
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", "Accept: text/event-stream"]
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    response = RawResponse(sock, requested_at=time.time())
    try:
        sock.sendall(request)
        response.read_head()
        yield response
    finally:
        sock.close()


def worker_pids(server: Server) -> list[int]:
    """The server's worker processes (gunicorn's children), or the server itself."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == server.process.pid:
                children.append(int(stat.parent.name))
    return children or [server.process.pid]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 and localhost, made with openssl for one test."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def h2_streams(port: int, paths: Sequence[str], timeout: float = 30.0) -> list[list[Arrival]]:
    """Open ``paths`` as concurrent streams on one TLS HTTP/2 connection; time each event.

    A frame-level client (the ``h2`` package on a plain socket): every read
    is decoded at once for every stream, so the times are when the bytes
    arrived, whatever the number of streams.
    """
    import h2.config
    import h2.connection
    import h2.events

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    arrivals: dict[int, list[Arrival]] = {}
    decoders: dict[int, EventDecoder] = {}
    with contextlib.ExitStack() as stack:
        plain = stack.enter_context(socket.create_connection((HOST, port), timeout))
        sock = stack.enter_context(context.wrap_socket(plain, server_hostname=HOST))
        if sock.selected_alpn_protocol() != "h2":
            raise ConnectionError(f"the server chose {sock.selected_alpn_protocol()!r}, not h2")
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        order = []
        for path in paths:
            stream_id = conn.get_next_available_stream_id()
            headers = [(":method", "GET"), (":path", path), (":scheme", "https")]
            conn.send_headers(stream_id, [*headers, (":authority", HOST)], end_stream=True)
            arrivals[stream_id], decoders[stream_id] = [], EventDecoder()
            order.append(stream_id)
        sock.sendall(conn.data_to_send())
        ended: set[int] = set()
        while len(ended) < len(paths):
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            now = time.time()
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    for parsed in decoders[event.stream_id].feed(event.data):
                        arrivals[event.stream_id].append(Arrival(parsed, now))
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    ended.add(event.stream_id)
            sock.sendall(conn.data_to_send())
    return [arrivals[stream_id] for stream_id in order]


def redis_or_cluster(request: Any, redis_server: Any) -> Any:
    """The store a fixture parametrized ``["redis", "cluster"]`` runs on: the
    session's ``redis-server``, or its 6-node Redis Cluster."""
    if request.param == "redis":
        return redis_server
    return request.getfixturevalue("redis_cluster")


def check_keepalives_follow_the_last_write(
    server: Server, watched: RawResponse, keepalive: float
) -> None:
    """Keep ``/idle`` streams busier than ``keepalive`` for 1.5 s, then silent for three
    periods, then close them: ``watched`` (one of them) must get no keepalive while
    busy, and once silent one each period after its last write, never sooner."""
    arrivals: list[tuple[float, bytes]] = []

    def read() -> None:
        for chunk in watched.body_chunks():
            arrivals.append((time.monotonic(), chunk))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    busy_until = time.monotonic() + 1.5
    while time.monotonic() < busy_until:  # busier than the keepalive
        with raw_get(server.port, "/idle/send") as sent:
            assert sent.status == 200
        time.sleep(keepalive / 4)
    time.sleep(3 * keepalive + 0.3)  # silent: keepalives
    with raw_get(server.port, "/idle/send?close=1") as sent:
        assert sent.status == 200
    reader.join(10)
    assert not reader.is_alive(), "the stream did not end"
    ticks = [at for at, chunk in arrivals if b"event: tick" in chunk]
    keepalives = [at for at, chunk in arrivals if chunk == b": keepalive\n\n"]
    assert len(ticks) >= 8 and keepalives, arrivals
    *busy, closing = ticks  # the busy period's ticks, then the one sent with the close
    last_tick = busy[-1]
    assert last_tick >= busy_until - keepalive, arrivals
    assert last_tick < keepalives[0], "a keepalive while the stream was busy"
    assert keepalives[-1] < closing, arrivals
    gaps = [b - a for a, b in zip([last_tick, *keepalives], keepalives, strict=False)]
    assert len(gaps) >= 2, arrivals
    # Never sooner than the period (less the tick's own way over loopback);
    # later only by a timer's resolution and what a busy machine adds.
    assert all(keepalive - 0.05 <= gap <= keepalive + 0.5 for gap in gaps), gaps
