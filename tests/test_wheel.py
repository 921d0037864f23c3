"""The built wheel holds the library and nothing else: no demo, no examples, no assets.

The wheel is built the way pip builds it for a user (``pip wheel .``), from a
copy of this checkout so the build leaves nothing (``build/``, ``*.egg-info``)
behind in it. Where the isolated build cannot fetch its build requirements
(an offline machine), it is built again with those of this environment.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Not part of a source checkout that a build reads.
_SKIP = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", "_build",
    ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis",
)  # fmt: skip
ASSETS = (".html", ".css", ".js", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".mp4", ".ico")


def build_wheel(source: Path, out: Path) -> Path:
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out)]
    tried = []
    for extra in ([], ["--no-build-isolation"]):
        result = subprocess.run(
            [*command, *extra, str(source)], capture_output=True, text=True, timeout=300
        )
        wheels = sorted(out.glob("flask_sse_flush-*.whl"))
        if result.returncode == 0 and len(wheels) == 1:
            return wheels[0]
        tried.append(f"$ {' '.join([*command, *extra])}\n{result.stdout}{result.stderr}")
    pytest.fail("could not build the wheel:\n" + "\n".join(tried))


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    source = tmp_path_factory.mktemp("checkout") / "src"
    shutil.copytree(ROOT, source, ignore=_SKIP)
    wheel = build_wheel(source, tmp_path_factory.mktemp("wheel"))
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_the_wheel_holds_the_typed_library(wheel_files: list[str]) -> None:
    assert "flask_sse_flush/__init__.py" in wheel_files
    assert "flask_sse_flush/py.typed" in wheel_files
    assert "flask_sse_flush/brokers/redis/__init__.py" in wheel_files


def test_the_wheel_holds_the_lua_scripts(wheel_files: list[str]) -> None:
    """The Redis broker reads them at run time: a wheel without them cannot start a job."""
    scripts = ROOT / "flask_sse_flush" / "brokers" / "redis" / "scripts"
    expected = {f"flask_sse_flush/brokers/redis/scripts/{p.name}" for p in scripts.glob("*.lua")}
    # Every script the store loads is a file there, and in the wheel.
    store = (scripts.parent / "store.py").read_text()
    loaded = set(re.findall(r'_lua\("(\w+)"\)', store))
    assert {f"flask_sse_flush/brokers/redis/scripts/{name}.lua" for name in loaded} == expected
    assert expected <= set(wheel_files)


def test_the_wheel_holds_the_browser_client(wheel_files: list[str]) -> None:
    """The app serves /sse-flush.js (and .mjs, .d.ts) from these files."""
    client = ROOT / "flask_sse_flush" / "web" / "client"
    expected = {f"flask_sse_flush/web/client/{p.name}" for p in client.iterdir() if p.is_file()}
    assert {"flask_sse_flush/web/client/body.js", "flask_sse_flush/web/client/sse-flush.d.ts"} <= (
        expected
    )
    assert expected <= set(wheel_files)


def test_the_wheel_holds_no_demo_and_no_examples(wheel_files: list[str]) -> None:
    found = [
        name
        for name in wheel_files
        if {"demo", "examples"} & set(name.split("/")) or name.startswith("examples")
    ]
    assert found == []


def test_the_wheel_holds_no_templates_or_images(wheel_files: list[str]) -> None:
    found = [
        name
        for name in wheel_files
        if (name.lower().endswith(ASSETS) or "templates" in name.split("/"))
        # The one asset of the library's own: the browser client it serves.
        and not name.startswith("flask_sse_flush/web/client/")
    ]
    assert found == []


def test_the_wheel_has_one_top_level_package(wheel_files: list[str]) -> None:
    tops = {
        name.split("/")[0] for name in wheel_files if not name.split("/")[0].endswith(".dist-info")
    }
    assert tops == {"flask_sse_flush"}
