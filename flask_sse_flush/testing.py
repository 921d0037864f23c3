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
    "RedisCluster",
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
        self._served = False  # answered once: its port is known, so it keeps it

    def _choose_ports(self) -> None:
        """Choose the server's port(s) again: another process took one first."""
        self.port = free_port()

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
        """Start the server and wait until it answers ``PING``.

        A port chosen free may be taken by another process before the server
        binds it; on its first start the server then tries other ports (a
        few times), since nobody knows its address yet.
        """
        if self.process is not None and self.process.poll() is None:
            return
        for attempt in range(5):
            try:
                self._start(timeout)
            except _PortTaken:
                if self._served or attempt == 4:
                    raise RuntimeError(f"redis-server could not bind port {self.port}") from None
                self._choose_ports()
            else:
                self._served = True
                return

    def _start(self, timeout: float) -> None:
        log = self.directory / "redis.log"
        logged = log.stat().st_size if log.exists() else 0
        process = self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                self.process = None
                with contextlib.suppress(OSError), log.open("rb") as lines:
                    lines.seek(logged)
                    if b"Address already in use" in lines.read():
                        raise _PortTaken
                raise RuntimeError(f"redis-server exited with {process.returncode}")
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


class RedisCluster:
    """A real Redis Cluster of a test's own: ``primaries`` and their replicas, on loopback.

    Each node is a :class:`RedisServer` with cluster mode on (its bus on a
    free port of its own); the cluster is made with ``redis-cli --cluster
    create`` and is ready (every slot served, every replica in sync) when
    the ``with`` block starts::

        with RedisCluster() as cluster:  # 3 primaries, 3 replicas
            broker = RedisBroker(cluster.url)
            ...
            cluster.kill(cluster.primary_of("sse_flush:job:{job-1}"))
            cluster.wait_ok()  # its replica took over

    :param primaries: how many primaries (at least 3, as Redis asks).
    :param replicas: replicas of each primary.
    :param node_timeout: milliseconds before a silent node counts as
        failed (a failover starts then); short, so tests need not wait.
    :raises FileNotFoundError: no ``redis-server`` or ``redis-cli``.
    """

    def __init__(self, primaries: int = 3, replicas: int = 1, *, node_timeout: int = 1000) -> None:
        if primaries < 3:
            raise ValueError(f"a Redis Cluster has at least 3 primaries, not {primaries}")
        cli = shutil.which("redis-cli")
        if cli is None:
            raise FileNotFoundError(
                "redis-cli not found: install Redis (Debian: apt-get install redis-server)"
            )
        self.cli = cli
        self.replicas = replicas
        self.nodes = [_ClusterNode(node_timeout) for _ in range(primaries * (1 + replicas))]

    @property
    def url(self) -> str:
        """The ``redis://`` URL of the first node: any node of a cluster will do."""
        return self.nodes[0].url

    @property
    def cluster_url(self) -> str:
        """A ``redis+cluster://`` URL naming every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def ask(self, node: RedisServer, *command: str) -> str:
        """A command's answer from ``node``, as ``redis-cli`` prints it."""
        found = subprocess.run(
            [self.cli, "-p", str(node.port), *command],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return found.stdout

    def start(self, timeout: float = 60.0) -> None:
        """Start every node, make the cluster and wait until it serves every slot."""
        for node in self.nodes:
            node.start()
        command = [self.cli, "--cluster", "create"]
        command += [f"127.0.0.1:{node.port}" for node in self.nodes]
        command += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
        self.wait_ok(timeout)

    def live(self) -> list[RedisServer]:
        """The nodes running now."""
        return [node for node in self.nodes if node.process is not None]

    def primaries(self) -> list[RedisServer]:
        """The live nodes that are primaries now."""
        return [node for node in self.live() if self.ask(node, "ROLE").startswith("master")]

    def primary_of(self, key: str) -> RedisServer:
        """The live primary serving ``key``'s slot now."""
        slot = int(self.ask(self.live()[0], "CLUSTER", "KEYSLOT", key).strip())
        for node in self.primaries():
            for line in self.ask(node, "CLUSTER", "NODES").splitlines():
                parts = line.split()
                if "myself" not in parts[2]:
                    continue
                for span in parts[8:]:
                    low, _, high = span.partition("-")
                    if low.isdigit() and int(low) <= slot <= int(high or low):
                        return node
        raise LookupError(f"no live primary serves slot {slot} ({key!r})")

    def replicas_of(self, primary: RedisServer) -> list[RedisServer]:
        """The live nodes replicating ``primary`` now."""
        info = self.ask(primary, "INFO", "replication")
        ports = {
            int(part.split("=", 1)[1])
            for line in info.splitlines()
            if line.startswith("slave")
            for part in line.split(":", 1)[1].split(",")
            if part.startswith("port=")
        }
        return [node for node in self.live() if node.port in ports]

    def node_id(self, node: RedisServer) -> str:
        """The cluster's id of ``node``."""
        return self.ask(node, "CLUSTER", "MYID").strip()

    def move_slot(self, slot: int, target: RedisServer) -> None:
        """Move ``slot`` and its keys to primary ``target``, as resharding does.

        The steps of ``redis-cli --cluster reshard``, for one slot: mark it
        importing and migrating, ``MIGRATE`` its keys, give it to ``target``
        on every primary.
        """
        source = None
        for node in self.primaries():
            for line in self.ask(node, "CLUSTER", "NODES").splitlines():
                parts = line.split()
                if "myself" in parts[2] and any(
                    low.isdigit() and int(low) <= slot <= int(high or low)
                    for low, _, high in (span.partition("-") for span in parts[8:])
                ):
                    source = node
        if source is None:
            raise LookupError(f"no live primary serves slot {slot}")
        if source is target:
            return
        source_id, target_id = self.node_id(source), self.node_id(target)
        self.ask(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
        self.ask(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
        while True:
            keys = self.ask(source, "CLUSTER", "GETKEYSINSLOT", str(slot), "100").split()
            if not keys:
                break
            where = ["127.0.0.1", str(target.port), "", "0", "5000"]
            self.ask(source, "MIGRATE", *where, "KEYS", *keys)
        for node in [target, source, *self.primaries()]:
            self.ask(node, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Wait until every live node says the cluster is ok and agrees on the primaries,
        and every replica is in sync with its primary."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._ok():
                    return
            except (subprocess.SubprocessError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become ok")
            time.sleep(0.1)

    def _ok(self) -> bool:
        live = self.live()
        primaries = 0
        for node in live:
            if "cluster_state:ok" not in self.ask(node, "CLUSTER", "INFO"):
                return False
            role = self.ask(node, "INFO", "replication")
            if "role:master" in role:
                primaries += 1
            elif "master_link_status:up" not in role:
                return False
            failing = [
                line
                for line in self.ask(node, "CLUSTER", "NODES").splitlines()
                if "master" in line.split()[2]
                and "fail" in line.split()[2]
                and any(f":{n.port}@" in line for n in live)
            ]
            if failing:
                return False
        return primaries >= len(self.nodes) // (1 + self.replicas)

    def kill(self, node: RedisServer) -> None:
        """End ``node`` at once (``SIGKILL``), as a crashed host."""
        process, node.process = node.process, None
        if process is not None:
            process.kill()
            process.wait(10)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisCluster:
        try:
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for node in self.nodes:
            node.__exit__()


class _PortTaken(Exception):
    """A server could not bind a port chosen for it: another process took it first."""


class _ClusterNode(RedisServer):
    """A :class:`RedisServer` in cluster mode, its bus on a free port of its own."""

    def __init__(self, node_timeout: int) -> None:
        super().__init__(appendonly=False)
        self.node_timeout = node_timeout
        self.bus_port = free_port()

    def _choose_ports(self) -> None:
        super()._choose_ports()
        self.bus_port = free_port()

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.directory / "nodes.conf"),
            "--cluster-port", str(self.bus_port),
            "--cluster-node-timeout", str(self.node_timeout),
        ]  # fmt: skip
