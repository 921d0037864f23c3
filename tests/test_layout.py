"""Imports flow one way, only some modules may know about Flask, and no
code outside the package reaches into its private parts.

Bottom up: exceptions, frames, settings <- runtime (detect <- channels, hub
<- executors), transport, headers, brokers <- stream, jobs <- service <-
lifecycle <- blueprint, mirror <- testing, __init__. The demo is an example
outside the package (``examples/demo``) that uses only the public names. ``frames``, ``jobs``, the
brokers, ``settings``, ``service`` and the runtime stay framework-free so a
job worker without an app can use them.
"""

from __future__ import annotations

import ast
import configparser
import importlib
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "flask_sse_flush"

# module -> the package modules it may import
ALLOWED: dict[str, set[str]] = {
    "exceptions": set(),
    "frames": set(),
    "settings": set(),
    "runtime/detect": set(),
    "runtime/channels": {"detect", "frames"},
    "runtime/hub": {"detect"},
    "runtime/locks": {"detect"},
    "runtime/executors": {"detect", "hub", "locks"},
    "runtime/watch": {"detect"},
    "runtime/__init__": {"channels", "detect", "executors", "hub", "locks", "watch"},
    "transport": set(),
    "headers": {"transport"},
    "stream": {"exceptions", "frames", "headers", "metrics", "runtime", "servers", "transport"},
    "jobs": {"brokers", "exceptions", "frames", "runtime"},
    "channels": {"exceptions", "frames", "runtime"},
    "brokers/base": {"channels", "exceptions", "frames"},
    "brokers/memory": {"base", "channels", "exceptions", "frames", "runtime"},
    # The Redis broker's parts, bottom up: the store knows neither the
    # streams nor the reader; the reader knows only the store (its listener
    # is a protocol); the broker ties the three together.
    "brokers/redis/store": {"base", "channels", "exceptions"},
    "brokers/redis/subscriptions": {"base", "channels", "exceptions", "frames", "runtime", "store"},
    "brokers/redis/reader": {"exceptions", "runtime", "store"},
    "brokers/redis/broker": {
        "base", "channels", "exceptions", "frames", "runtime", "reader", "store", "subscriptions",
    },
    "brokers/redis/__init__": {"broker"},
    "brokers/__init__": {"base", "memory", "redis"},
    "service": {"brokers", "exceptions", "jobs", "metrics", "runtime", "settings"},
    "processes": {"exceptions", "jobs", "runtime"},
    "servers": {"runtime"},
    "doctor": {"frames"},
    "__main__": {"doctor"},
    "cli": {"doctor"},
    "metrics": {"runtime"},
    "lifecycle": {"runtime", "servers", "service", "stream"},
    "blueprint": {
        "brokers", "exceptions", "frames", "headers", "jobs", "lifecycle", "metrics", "processes",
        "runtime", "service", "settings", "stream", "extension",
    },
    "extension": {
        "blueprint", "brokers", "channels", "exceptions", "frames", "headers", "jobs", "lifecycle",
        "metrics", "service", "settings", "stream",
    },
    "mirror": {"frames", "headers", "jobs", "stream"},
    "testing": {"frames", "lifecycle"},
}  # fmt: skip
MAY_IMPORT_FLASK = {"headers", "stream", "blueprint", "extension", "testing", "mirror"}
FRAMEWORK_FREE = {
    "frames", "channels", "jobs", "exceptions", "transport", "settings", "service", "processes",
    "lifecycle", "servers", "metrics", "runtime", "runtime/detect", "runtime/channels",
    "runtime/hub", "runtime/executors", "runtime/watch", "runtime/locks",
}  # fmt: skip
FRAMEWORKS = {"flask", "werkzeug"}
#: Code outside the package, which may use only its public names.
OUTSIDE = [ROOT / "tests", ROOT / "benchmarks", ROOT / "examples"]
DEMO = ROOT / "examples" / "demo"


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """Return (package modules, third-party top-level names) that ``path`` imports."""
    own: set[str] = set()
    other: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                module = (node.module or "").split(".")[0]
                if module:
                    own.add(module)
                elif node.level >= 2:
                    own.add("__init__")  # `from .. import X`: the public face
                else:
                    own.update(alias.name for alias in node.names)
            elif node.module:
                top = node.module.split(".")[0]
                if top == "flask_sse_flush":
                    parts = node.module.split(".")
                    own.add(parts[1] if len(parts) > 1 else "__init__")
                else:
                    other.add(top)
        elif isinstance(node, ast.Import):
            other.update(alias.name.split(".")[0] for alias in node.names)
    return own, other


def test_every_module_is_classified() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    for folder in ("brokers", "brokers/redis", "runtime"):
        modules |= {f"{folder}/{p.stem}" for p in (PACKAGE / folder).glob("*.py")}
    assert modules == set(ALLOWED), "add new modules to ALLOWED with their layer"


def private_uses(path: Path) -> list[str]:
    """The private modules or names of the library that ``path`` imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level and PACKAGE in path.parents:
                continue  # the package's own modules, checked by ALLOWED above
            module = node.module or ""
            if node.level:
                module = "flask_sse_flush"
            if module.split(".")[0] != "flask_sse_flush":
                continue
            if any(part.startswith("_") for part in module.split(".")):
                found.append(module)
            found += [f"{module}.{a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Import):
            found += [
                a.name
                for a in node.names
                if a.name.startswith("flask_sse_flush")
                and any(part.startswith("_") for part in a.name.split("."))
            ]
    return found


@pytest.mark.parametrize("path", [p for d in OUTSIDE for p in sorted(d.rglob("*.py"))], ids=str)
def test_code_outside_the_package_uses_only_public_names(path: Path) -> None:
    assert private_uses(path) == [], f"{path} imports private parts of the library"


def test_the_package_holds_no_example() -> None:
    assert not (PACKAGE / "demo").exists(), "the demo lives in examples/demo, outside the wheel"
    assert not list(PACKAGE.rglob("templates")), "the library ships no templates"


def test_the_demo_uses_only_the_public_api() -> None:
    # The package's names, and the runtime's for a render that hands work to
    # the hub (the demo's gevent subprocesses).
    public = {"flask_sse_flush", "flask_sse_flush.runtime"}
    for path in DEMO.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("flask_sse"):
                names = [a.name for a in node.names]
                assert node.module in public, f"{path.name} imports {node.module}"
                exported = importlib.import_module(node.module).__all__
                assert set(names) <= set(exported), names


def _requirement_names(field: str) -> set[str]:
    names = set()
    for line in field.strip().splitlines():
        name = re.match(r"[A-Za-z0-9._-]+", line.strip())
        if name:
            names.add(re.sub(r"[-_.]+", "-", name.group(0)).lower())
    return names


def test_the_demo_extra_brings_everything_the_demo_imports() -> None:
    """``make run`` installs ``.[gevent,demo]`` and nothing else."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    provided = _requirement_names(config["options"]["install_requires"])
    provided |= _requirement_names(config["options.extras_require"]["demo"])
    distributions = importlib.metadata.packages_distributions()
    needed = set()
    for path in DEMO.glob("*.py"):
        _, other = imports_of(path)
        for top in other - set(sys.stdlib_module_names) - {"flask_sse_flush", "examples"}:
            found = distributions.get(top)
            assert found, f"{path.name} imports {top}, which no installed distribution provides"
            needed |= {re.sub(r"[-_.]+", "-", name).lower() for name in found}
    assert needed, "the demo imports at least Flask, Pillow and imageio-ffmpeg"
    assert needed <= provided, f"add {sorted(needed - provided)} to the demo extra"


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_imports_flow_one_way(module: str) -> None:
    own, other = imports_of(PACKAGE / f"{module}.py")
    own.discard(module.rpartition("/")[2])
    assert own <= ALLOWED[module], f"{module} imports {sorted(own - ALLOWED[module])}"
    if module not in MAY_IMPORT_FLASK:
        assert not other & FRAMEWORKS, f"{module} must stay framework-free"


@pytest.mark.parametrize("module", sorted(FRAMEWORK_FREE | {"brokers", "brokers/redis"}))
def test_framework_free_modules_import_without_flask(module: str) -> None:
    module = module.replace("/", ".")
    """Not even indirectly: a job worker with no Flask installed can use them."""
    code = (
        "import sys, importlib\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('flask', 'werkzeug'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import types, pathlib\n"
        f"pkg = types.ModuleType('flask_sse_flush'); pkg.__path__ = [{str(PACKAGE)!r}]\n"
        "sys.modules['flask_sse_flush'] = pkg\n"
        f"importlib.import_module('flask_sse_flush.{module}')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_library_never_patches_gevent_on_import() -> None:
    for path in PACKAGE.rglob("*.py"):
        assert "patch_all" not in path.read_text(), f"{path} monkey-patches at import"
