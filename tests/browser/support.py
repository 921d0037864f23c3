"""Real browsers, Xvfb and nginx, started and stopped by the tests.

Browsers run on a virtual X display (the same way for every engine), load
a harness page and report back over HTTP; screenshots are taken of the
display with Pillow. Nothing is downloaded: the browsers are Debian's.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flask_sse_flush.testing import free_port
from tests.integration.support import HOST

HERE = Path(__file__).resolve().parent
#: Where screenshots go (kept out of git; docs/_static has the chosen one).
SCREENSHOTS = HERE.parent.parent / "build" / "screenshots"
ENGINES = ("chromium", "firefox", "webkit")


def require(*tools: str) -> None:
    """Skip when a system tool is missing, or fail where it must be there (CI)."""
    if not tools:
        return
    message = f"not installed: {', '.join(tools)} (make system-deps installs them)"
    if os.environ.get("SSE_FLUSH_REQUIRE_BROWSERS") == "1":
        pytest.fail(message)
    pytest.skip(message)


FIREFOX_PREFS = """
user_pref("browser.shell.checkDefaultBrowser", false);
user_pref("browser.startup.homepage_override.mstone", "ignore");
user_pref("browser.aboutwelcome.enabled", false);
user_pref("datareporting.policy.dataSubmissionEnabled", false);
user_pref("toolkit.telemetry.reportingpolicy.firstRun", false);
user_pref("app.update.disabledForTesting", true);
user_pref("network.captive-portal-service.enabled", false);
user_pref("network.connectivity-service.enabled", false);
user_pref("browser.sessionstore.resume_from_crash", false);
user_pref("extensions.update.enabled", false);
user_pref("browser.safebrowsing.update.enabled", false);
"""


def find_engine(engine: str) -> str | None:
    """The browser binary for an engine, if installed."""
    if engine == "chromium":
        return shutil.which("chromium")
    if engine == "firefox":
        return shutil.which("firefox-esr") or shutil.which("firefox")
    if engine == "webkit":
        found = sorted(glob.glob("/usr/lib/*/webkit2gtk-4.*/MiniBrowser"))
        return found[-1] if found else None
    raise ValueError(engine)


def missing_tools(engine: str | None = None) -> list[str]:
    missing = [] if shutil.which("Xvfb") else ["Xvfb"]
    if engine is not None and find_engine(engine) is None:
        missing.append(engine)
    return missing


@contextlib.contextmanager
def virtual_display(width: int = 1280, height: int = 900) -> Iterator[str]:
    """An Xvfb display, e.g. ":5", chosen by Xvfb itself among the free ones."""
    read, write = os.pipe()
    process = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-nolisten", "tcp",
         "-screen", "0", f"{width}x{height}x24"],
        pass_fds=[write],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(write)
    try:
        with os.fdopen(read) as pipe:
            number = pipe.readline().strip()
        if not number:
            raise RuntimeError("Xvfb did not start")
        yield f":{number}"
    finally:
        process.terminate()
        process.wait(10)


def screenshot(display: str, path: Path) -> Path:
    from PIL import ImageGrab

    path.parent.mkdir(parents=True, exist_ok=True)
    ImageGrab.grab(xdisplay=display).save(path)
    return path


def browser_command(engine: str, url: str, profile: Path) -> list[str]:
    binary = find_engine(engine)
    assert binary is not None, f"{engine} is not installed"
    if engine == "chromium":
        return [
            binary, "--no-sandbox", "--test-type", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-quic", "--password-store=basic", f"--user-data-dir={profile}",
            "--ignore-certificate-errors",  # the tests' own self-signed certificates
            "--window-position=0,0", "--window-size=1280,900", f"--app={url}",
        ]  # fmt: skip
    if engine == "firefox":
        profile.mkdir(parents=True, exist_ok=True)
        (profile / "user.js").write_text(FIREFOX_PREFS)
        return [binary, "--no-remote", "--profile", str(profile), "--kiosk", url]
    return [binary, "--full-screen", url]


@dataclass
class Harness:
    """A browser that loaded the harness page, and what it reported."""

    engine: str
    display: str
    log_dir: Path
    run: str
    process: subprocess.Popen[bytes]

    def wait_for(self, kind: str, timeout: float = 60.0) -> dict[str, Any]:
        path = self.log_dir / f"{self.run}-{kind}.json"
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.engine} exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.engine} reported no {kind!r} in {timeout} s")
            time.sleep(0.02)
        time.sleep(0.05)  # the POST body is written in one go; let it land
        report: dict[str, Any] = json.loads(path.read_text())
        return report


@contextlib.contextmanager
def browser(engine: str, display: str, url: str, log_dir: Path, run: str) -> Iterator[Harness]:
    """Start ``engine`` on ``display`` at ``url``; kill it (and its children) after."""
    profile = log_dir / f"profile-{run}"
    env = dict(
        os.environ,
        DISPLAY=display,
        # WebKitGTK and Firefox want a D-Bus session they cannot have here.
        DBUS_SESSION_BUS_ADDRESS="disabled:",
        WEBKIT_DISABLE_COMPOSITING_MODE="1",
        LIBGL_ALWAYS_SOFTWARE="1",
        HOME=str(log_dir),
    )
    output = (log_dir / f"{run}-browser.log").open("wb")
    process = subprocess.Popen(
        browser_command(engine, url, profile),
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield Harness(engine, display, log_dir, run, process)
    finally:
        output.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@dataclass
class Nginx:
    plain_port: int
    gzip_port: int


#: What every test nginx.conf starts with: foreground, loopback, files in ``{dir}``.
NGINX_PREAMBLE = """
worker_processes 1;
daemon off;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
"""
#: Temporary-file paths for an ``http {}`` block.
NGINX_TEMP_PATHS = """
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
"""


def nginx_binary() -> str:
    """Debian's nginx; skips (or fails, in CI) the test where it is missing."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        require("nginx")
    return binary


@contextlib.contextmanager
def run_nginx(http: str, work: Path, ports: list[int]) -> Iterator[Path]:
    """Run nginx with ``http`` as its ``http {}`` block until every port in ``ports`` accepts.

    ``http`` may use ``{dir}`` (``work``) and ``{temp_paths}``. Yields ``work``.
    """
    binary = nginx_binary()
    work.mkdir(parents=True, exist_ok=True)
    user = "user root;" if os.geteuid() == 0 else ""
    text = (
        NGINX_PREAMBLE.format(user=user, dir=work)
        + "http {\n"
        + http.replace("{temp_paths}", NGINX_TEMP_PATHS.format(dir=work)).replace(
            "{dir}", str(work)
        )
        + "\n}\n"
    )
    conf = work / "nginx.conf"
    conf.write_text(textwrap.dedent(text))
    output = (work / "nginx.out").open("wb")
    process = subprocess.Popen(
        [binary, "-p", str(work), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=output
    )
    try:
        deadline = time.monotonic() + 15
        for port in ports:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        "nginx exited: " + (work / "nginx.out").read_text(errors="replace")
                    )
                with contextlib.suppress(OSError):
                    socket.create_connection((HOST, port), 0.2).close()
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start")
                time.sleep(0.05)
        yield work
    finally:
        process.terminate()
        process.wait(10)
        output.close()


NGINX_SITES = """
    access_log off;
    {temp_paths}
    # Defaults, as a new site has them: proxy_buffering is on.
    server {
        listen HOST:PLAIN;
        location / { proxy_pass http://HOST:UPSTREAM; }
    }
    # And with gzip on for event streams too.
    server {
        listen HOST:GZIP;
        gzip on;
        gzip_types text/event-stream;
        gzip_min_length 1;
        gzip_proxied any;
        location / { proxy_pass http://HOST:UPSTREAM; }
    }
"""


@contextlib.contextmanager
def nginx_in_front(upstream_port: int, work: Path) -> Iterator[Nginx]:
    """Debian's nginx in the foreground, on loopback, in front of ``upstream_port``."""
    plain, gzip = free_port(), free_port()
    http = (
        NGINX_SITES.replace("HOST", HOST)
        .replace("PLAIN", str(plain))
        .replace("GZIP", str(gzip))
        .replace("UPSTREAM", str(upstream_port))
    )
    with run_nginx(http, work, [plain, gzip]):
        yield Nginx(plain, gzip)
