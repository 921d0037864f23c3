"""The README's commands, read out of it, and throwaway venvs to run them in.

Nothing here is a copy of the README: the quickstart's files and commands
are extracted from ``README.md`` itself, so the two cannot drift apart.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
HOST = "127.0.0.1"
#: Installing into a new venv may download wheels on a fresh machine.
INSTALL_TIMEOUT = 900.0

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    language: str
    text: str


@dataclass(frozen=True)
class Quickstart:
    """What a new user copies out of the README."""

    install: str  # the `pip install "flask-sse-flush[...]"` line
    files: dict[str, str]  # file name -> contents, from blocks opening "# name.py"
    serve: str  # the gunicorn command
    test: str  # the command that runs the test file


def section(markdown: str, heading: str) -> str:
    """The text under ``## heading``, up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    if match is None:
        raise AssertionError(f"README.md has no '## {heading}' section")
    return match.group(1)


def blocks(markdown: str) -> list[Block]:
    return [Block(m.group(1), m.group(2)) for m in _FENCE.finditer(markdown)]


def read_quickstart(readme: Path = README) -> Quickstart:
    text = readme.read_text(encoding="utf-8")
    install = [
        line.strip()
        for block in blocks(section(text, "Install"))
        for line in block.text.splitlines()
        if line.strip().startswith("pip install")
    ]
    assert len(install) == 1, f"the Install section should show one pip install, not {install}"
    files: dict[str, str] = {}
    commands: list[str] = []
    for block in blocks(section(text, "Quickstart")):
        first = block.text.splitlines()[0] if block.text else ""
        if block.language == "python":
            name = re.fullmatch(r"# (\S+\.py)", first.strip())
            assert name, f"a quickstart Python block should open with '# <file>.py': {first!r}"
            files[name.group(1)] = block.text
        elif block.language == "sh":
            commands += [line.strip() for line in block.text.splitlines() if line.strip()]
    serve = [c for c in commands if c.startswith("gunicorn ")]
    test = [c for c in commands if c.startswith("pytest")]
    assert len(serve) == 1 and len(test) == 1, f"quickstart commands: {commands}"
    assert {"app.py", "test_app.py"} <= files.keys(), f"quickstart files: {sorted(files)}"
    return Quickstart(install[0], files, serve[0], test[0])


def clean_env(venv: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment a new user's shell has: no venv of ours on PATH, no make state."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "MAKEFLAGS", "MAKELEVEL", "MFLAGS"}
    }
    path = [
        p
        for p in env.get("PATH", "").split(os.pathsep)
        if not (Path(p).parent / "pyvenv.cfg").exists()
    ]
    if venv is not None:
        path.insert(0, str(venv / "bin"))
        env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = os.pathsep.join(path)
    env.update(extra)
    return env


def base_python() -> str:
    """The interpreter this venv was made from: what ``python3`` is to a new user."""
    return getattr(sys, "_base_executable", None) or sys.executable


def new_venv(path: Path, *requirements: str, log: Path) -> Path:
    """Create a venv at ``path`` holding only ``requirements`` (and pip)."""
    with log.open("ab") as out:
        subprocess.run(
            [base_python(), "-m", "venv", str(path)],
            check=True, stdout=out, stderr=subprocess.STDOUT, timeout=120,
        )  # fmt: skip
        subprocess.run(
            [str(path / "bin" / "python"), "-m", "pip", "install", "--quiet", *requirements],
            check=True, stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT,
            env=clean_env(path), cwd=path,
        )  # fmt: skip
    return path


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def wait_until_listening(
    process: subprocess.Popen[bytes], port: int, timeout: float, log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(
                f"exited with {process.returncode} before listening on {port}:\n"
                + log.read_text(errors="replace")[-4000:]
            )
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"nothing listened on {port} in {timeout} s:\n"
                + log.read_text(errors="replace")[-4000:]
            )
        time.sleep(0.1)


@contextlib.contextmanager
def session(command: list[str], *, log: Path, **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` as a terminal would: its own process group, stopped by Ctrl-C.

    However the block ends, the whole group gets SIGINT (what Ctrl-C sends),
    then SIGKILL if it has not gone in 30 s.
    """
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **popen,
        )
        try:
            yield process
        finally:
            interrupt(process)


def interrupt(process: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """Ctrl-C the process's group and wait for every process in it to end."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    deadline = time.monotonic() + timeout
    while group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if group_alive(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still counts for killpg; look for a live member.
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False
