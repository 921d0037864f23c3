"""Reading event streams in tests.

With Flask's test client, ask for an unbuffered response so events can be
read while the job is still running::

    response = client.get("/render/stream?data=%7B%7D", buffered=False)
    for event in iter_events(response):
        ...

These read what a browser would: they parse with the WHATWG rules
(:class:`~flask_sse_flush.wire.frames.EventDecoder`).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from werkzeug.wrappers import Response as BaseResponse

from .ops.lifecycle import Lifecycle, replace_lifecycle
from .wire.frames import Event, decode_events

__all__ = [
    "RedisServer",
    "free_port",
    "fresh_lifecycle",
    "gunicorn_command",
    "iter_chunks",
    "iter_events",
    "parse_events",
    "server_process",
    "stop_process",
]

#: What :func:`iter_events` and :func:`parse_events` read: a Werkzeug or
#: Flask (test) response, an object with ``iter_bytes()`` (httpx), raw
#: ``bytes``/``str``, or any iterable of ``bytes`` chunks.
StreamSource = BaseResponse | bytes | str | Iterable[bytes] | Any


def iter_chunks(source: StreamSource) -> Iterator[bytes]:
    """Yield the body of ``source`` chunk by chunk, as the server yields them."""
    if isinstance(source, str):
        yield source.encode("utf-8")
    elif isinstance(source, (bytes, bytearray, memoryview)):
        yield bytes(source)
    elif isinstance(source, BaseResponse):
        yield from source.iter_encoded()
    elif callable(getattr(source, "iter_bytes", None)):
        client_response: Any = source  # httpx.Response and look-alikes
        yield from client_response.iter_bytes()
    else:
        for chunk in source:
            yield chunk.encode("utf-8") if isinstance(chunk, str) else bytes(chunk)


def iter_events(source: StreamSource) -> Generator[Event, None, None]:
    """Yield each :class:`~flask_sse_flush.Event` of ``source`` as it completes.

    Reads incrementally: with ``client.get(..., buffered=False)`` the first
    event is yielded while the server is still producing the rest. Closing
    the iterator early (``break``) closes the response, which ends the
    server side's stream just as a client disconnect would.

    Each event's ``id`` is the ``id`` field of its own block (``None`` if it
    had none). Comments (keepalives) are skipped.
    """
    try:
        yield from decode_events(iter_chunks(source))
    finally:
        close = getattr(source, "close", None)
        if callable(close):
            close()


def parse_events(source: StreamSource) -> list[Event]:
    """Read ``source`` to its end and return all its events."""
    return list(iter_events(source))


@contextlib.contextmanager
def fresh_lifecycle() -> Iterator[Lifecycle]:
    """A new :class:`~flask_sse_flush.ops.lifecycle.Lifecycle` for this process, for one test.

    Its stream count starts at zero, and a :meth:`~flask_sse_flush.ops.lifecycle.Lifecycle.stop`
    inside the block (a graceful stop is for good) ends with the block.
    """
    new = Lifecycle()
    old = replace_lifecycle(new)
    try:
        yield new
    finally:
        replace_lifecycle(old)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server_process(
    command: Sequence[str],
    port: int,
    *,
    host: str = "127.0.0.1",
    timeout: float = 30.0,
    **popen: Any,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a real server (gunicorn, werkzeug, ...) for the length of a ``with``.

    Starts ``command``, waits until ``host:port`` accepts connections, and
    stops the process however the block ends (``terminate``, then ``kill``
    after 10 s). Timing tests belong on such a server: Flask's test client
    proves nothing about when bytes reach a socket. ::

        port = free_port()
        command = ["gunicorn", "-k", "gevent", "-b", f"127.0.0.1:{port}", "app:app"]
        with server_process(command, port):
            ...  # read http://127.0.0.1:{port}/render/stream over a socket

    :param command: the server's command line; it must listen on ``port``.
    :param popen: passed to :class:`subprocess.Popen` (``cwd``, ``env``, ...).
    :raises RuntimeError: the process exited, or did not listen in time.
    """
    process = subprocess.Popen(list(command), **popen)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited with {process.returncode}")
            with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} did not listen on {host}:{port} in {timeout} s")
            time.sleep(0.05)
        yield process
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """End a process a test started: ``SIGTERM``, then ``SIGKILL`` after ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def gunicorn_command(
    app: str,
    port: int,
    *,
    worker_class: str = "gevent",
    workers: int = 1,
    host: str = "127.0.0.1",
    chdir: str | None = None,
    options: Sequence[str] = (),
) -> list[str]:
    """The command line of a gunicorn serving ``app`` for a test or a benchmark.

    It runs ``python -m gunicorn`` with this interpreter, so the server
    sees the same packages as the test. gunicorn 27 opens a *control
    socket* at a fixed path (``$XDG_RUNTIME_DIR/gunicorn.ctl``), which
    servers started side by side would share; it is turned off where the
    installed gunicorn has one. ::

        with server_process(gunicorn_command("app:app", port), port):
            ...

    :param app: the WSGI app, as gunicorn takes it (``"module:app"``).
    :param port: the port to bind on ``host``.
    :param worker_class: ``"gevent"``, ``"gevent_pywsgi"``, ``"gthread"``, ...
    :param chdir: the folder gunicorn imports ``app`` from.
    :param options: more gunicorn options, e.g. ``["--worker-connections", "6000"]``.
    """
    command = [sys.executable, "-m", "gunicorn"]
    if _gunicorn_has("control_socket_disable"):
        command.append("--no-control-socket")
    command += ["--worker-class", worker_class, "--workers", str(workers)]
    command += ["--bind", f"{host}:{port}"]
    if chdir is not None:
        command += ["--chdir", chdir]
    return [*command, *options, app]


def _gunicorn_has(setting: str) -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return any(known.name == setting for known in KNOWN_SETTINGS)


class RedisServer:
    """A real ``redis-server`` of a test's own, on a free loopback port.

    Started from the command line with its data in a temporary folder (no
    daemon, no system service), append-only with ``fsync`` on every write,
    so a :meth:`restart` on the same port keeps every event. Use it as a
    context manager; it is stopped (and its folder removed) on exit::

        with RedisServer() as redis:
            broker = RedisBroker(redis.url)
            ...
            redis.restart(down=1.0)  # a Redis restart mid-job

    :param executable: the ``redis-server`` to run.
    :param appendonly: keep an append-only file (``appendfsync always``).
    :raises FileNotFoundError: no ``redis-server`` is installed.
    """

    def __init__(self, executable: str = "redis-server", *, appendonly: bool = True) -> None:
        found = shutil.which(executable)
        if found is None:
            raise FileNotFoundError(
                f"{executable} not found: install Redis (Debian: apt-get install redis-server)"
            )
        self.executable = found
        self.appendonly = appendonly
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="sse-flush-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """The server's command line."""
        command = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.directory), "--save", "", "--daemonize", "no"]
        command += ["--logfile", str(self.directory / "redis.log")]
        if self.appendonly:
            command += ["--appendonly", "yes", "--appendfsync", "always"]
        return command

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers ``PING``."""
        if self.process is not None and self.process.poll() is None:
            return
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server (``SIGTERM``; its data stays for a restart)."""
        process, self.process = self.process, None
        if process is not None:
            stop_process(process)

    def restart(self, down: float = 0.0) -> None:
        """Stop the server, wait ``down`` seconds, and start it on the same port."""
        self.stop()
        time.sleep(down)
        self.start()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
