"""Each concern has its room, imports flow one way, only the web side knows Flask,
and no code outside the package reaches into its private parts.

The rooms, bottom up (``docs/path.rst`` draws them): ``exceptions`` and
``wire/`` (the format, pure); ``runtime/`` (gevent or threads); ``channels``
and ``brokers/``; ``jobs/``; ``wsgi/`` (the response, headers, the socket);
``ops/`` (metrics, the graceful stop); ``web/`` (settings, the extension,
the render routes); ``tools/`` (the doctor); ``mirror`` and ``testing`` on
top. ``_legacy/`` holds the 0.2 module paths. Everything below ``web/``
(and ``web/settings``) is framework-free, so a job worker without an app
can use it. The demo is an example outside the package (``examples/demo``)
that uses only the public names.
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

# module -> the package modules it may import (a package's ``__init__`` is
# named by its folder: "runtime", "brokers/redis").
ALLOWED: dict[str, set[str]] = {
    "exceptions": set(),
    "wire/__init__": set(),
    "wire/frames": set(),
    "runtime/detect": set(),
    "runtime/channels": {"runtime/detect", "wire/frames"},
    "runtime/hub": {"runtime/detect"},
    "runtime/locks": {"runtime/detect"},
    "runtime/executors": {"runtime/detect", "runtime/hub", "runtime/locks"},
    "runtime/watch": {"runtime/detect"},
    "runtime/wheel": set(),
    "runtime/__init__": {
        "runtime/channels",
        "runtime/detect",
        "runtime/executors",
        "runtime/hub",
        "runtime/locks",
        "runtime/watch",
    },
    "channels": {"exceptions", "runtime", "wire/frames"},
    "brokers/base": {"channels", "exceptions", "wire/frames"},
    "brokers/memory": {"brokers/base", "channels", "exceptions", "runtime", "wire/frames"},
    "brokers/redis/store": {"brokers/base", "channels", "exceptions", "runtime"},
    "brokers/redis/presence": {"brokers/base", "brokers/redis/store", "exceptions", "runtime"},
    "brokers/redis/subscriptions": {
        "brokers/base",
        "brokers/redis/presence",
        "brokers/redis/store",
        "channels",
        "exceptions",
        "runtime",
        "wire/frames",
    },
    "brokers/redis/reader": {"brokers/redis/store", "exceptions", "runtime"},
    "brokers/redis/leases": {"brokers/base", "brokers/redis/store", "runtime", "wire/frames"},
    "brokers/redis/broker": {
        "brokers/base",
        "brokers/redis/leases",
        "brokers/redis/reader",
        "brokers/redis/store",
        "brokers/redis/subscriptions",
        "channels",
        "exceptions",
        "runtime",
        "wire/frames",
    },
    "brokers/redis/__init__": {"brokers/redis/broker"},
    "brokers/__init__": {"brokers/base", "brokers/memory", "brokers/redis"},
    "jobs/job": {"brokers/base", "exceptions", "runtime", "wire/frames"},
    "jobs/service": {
        "brokers/base",
        "exceptions",
        "jobs/job",
        "ops/metrics",
        "runtime",
        "web/settings",
    },
    "jobs/processes": {"exceptions", "jobs/job", "runtime"},
    "jobs/__init__": {"jobs/job"},
    "wsgi/transport": set(),
    "wsgi/headers": {"wsgi/transport"},
    "wsgi/servers": {"runtime"},
    "wsgi/direct": {"ops/metrics", "runtime", "runtime/wheel", "wire/frames"},
    "wsgi/stream": {
        "exceptions",
        "ops/metrics",
        "runtime",
        "wire/frames",
        "wsgi/direct",
        "wsgi/headers",
        "wsgi/servers",
        "wsgi/transport",
    },
    "wsgi/worker": {
        "ops/metrics",
        "runtime",
        "runtime/wheel",
        "wire/frames",
        "wsgi/direct",
        "wsgi/stream",
    },
    "wsgi/__init__": set(),
    "ops/metrics": {"runtime"},
    "ops/lifecycle": {"jobs/service", "runtime", "wsgi/servers", "wsgi/stream"},
    "ops/__init__": set(),
    "web/settings": set(),
    "web/state": {
        "brokers/base",
        "brokers/memory",
        "brokers/redis",
        "jobs/service",
        "runtime",
        "web/settings",
        "wire/frames",
    },
    "web/responses": {"exceptions", "ops/lifecycle", "web/settings", "wsgi/headers", "wsgi/stream"},
    "web/cors": {"wsgi/headers"},
    "web/diagnose": {"exceptions", "runtime", "web/responses", "wire/frames", "wsgi/stream"},
    "web/views": {
        "brokers/base",
        "exceptions",
        "jobs/service",
        "ops/lifecycle",
        "ops/metrics",
        "web/diagnose",
        "web/responses",
        "wsgi/headers",
    },
    "web/client/__init__": set(),
    "web/blueprint": {
        "brokers/base",
        "exceptions",
        "jobs/job",
        "jobs/processes",
        "jobs/service",
        "ops/lifecycle",
        "web/client",
        "web/cors",
        "web/settings",
        "web/state",
        "web/views",
        "wire/frames",
    },
    "web/extension": {
        "brokers/base",
        "brokers/redis",
        "channels",
        "exceptions",
        "jobs/job",
        "jobs/service",
        "ops/lifecycle",
        "ops/metrics",
        "web/blueprint",
        "web/client",
        "web/responses",
        "web/settings",
        "web/state",
        "wire/frames",
    },
    "web/__init__": set(),
    "tools/doctor": {"wire/frames"},
    "tools/cli": {"tools/doctor"},
    "tools/__init__": set(),
    "mirror": {"jobs/job", "wire/frames", "wsgi/headers", "wsgi/stream"},
    "testing": {"ops/lifecycle", "wire/frames"},
    "_legacy/__init__": set(),
    "__main__": {"tools/doctor"},
    "__init__": {
        "_legacy/__init__",
        "exceptions",
        "jobs/job",
        "jobs/service",
        "mirror",
        "ops/lifecycle",
        "web/blueprint",
        "web/extension",
        "wire/frames",
        "wsgi/headers",
        "wsgi/stream",
        "wsgi/transport",
    },
}
ROOMS = {"wire", "runtime", "brokers", "jobs", "wsgi", "ops", "web", "tools", "_legacy"}
#: The modules that may import Flask or Werkzeug: the web side.
MAY_IMPORT_FLASK = {
    "wsgi/headers", "wsgi/stream", "web/state", "web/responses", "web/cors", "web/diagnose",
    "web/views", "web/blueprint", "web/extension", "web/client/__init__", "testing", "mirror",
    "__init__",
}  # fmt: skip
FRAMEWORK_FREE = {
    "wire", "channels", "jobs", "exceptions", "wsgi/transport", "wsgi/servers", "wsgi/direct",
    "web/settings",
    "jobs/service", "jobs/processes", "ops/lifecycle", "ops/metrics", "runtime", "tools/doctor",
    "runtime/detect", "runtime/channels", "runtime/hub", "runtime/executors", "runtime/watch",
    "runtime/locks",
}  # fmt: skip
FRAMEWORKS = {"flask", "werkzeug"}
#: Code outside the package, which may use only its public names.
OUTSIDE = [ROOT / "tests", ROOT / "benchmarks", ROOT / "examples"]
DEMO = ROOT / "examples" / "demo"


def module_key(path: Path) -> str:
    """``flask_sse_flush/jobs/service.py`` -> ``"jobs/service"``."""
    return "/".join(path.relative_to(PACKAGE).with_suffix("").parts)


def _target(base: list[str], name: str) -> str:
    """The key of ``base/name``: a module, or a package by its ``__init__``."""
    parts = [*base, *name.split(".")] if name else base
    return "/".join(parts) or "__init__"


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """Return (package modules, third-party top-level names) that ``path`` imports."""
    own: set[str] = set()
    other: set[str] = set()
    folder = list(path.relative_to(PACKAGE).parent.parts) if PACKAGE in path.parents else []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = folder[: len(folder) - node.level + 1]
                if node.module:
                    own.add(_target(base, node.module))
                else:
                    own.update(_target(base, alias.name) for alias in node.names)
            elif node.module:
                top = node.module.split(".")[0]
                if top == "flask_sse_flush":
                    own.add(_target([], ".".join(node.module.split(".")[1:])))
                else:
                    other.add(top)
        elif isinstance(node, ast.Import):
            other.update(alias.name.split(".")[0] for alias in node.names)
    return own, other


def test_every_module_is_classified() -> None:
    modules = {
        module_key(p).removesuffix("/__init__")
        for p in PACKAGE.rglob("*.py")
        if p.parent.name != "_legacy" or p.name == "__init__.py"
    }
    allowed = {key.removesuffix("/__init__") for key in ALLOWED}
    assert modules == allowed, "add new modules to ALLOWED with their room"


def test_no_module_is_left_flat() -> None:
    """The top level holds the public face, the cross-room pieces and the rooms."""
    flat = {p.stem for p in PACKAGE.glob("*.py")}
    assert flat == {"__init__", "__main__", "exceptions", "channels", "mirror", "testing"}
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert rooms == ROOMS


def private_uses(path: Path) -> list[str]:
    """The private modules or names of the library that ``path`` imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                # Inside the package: its own modules, checked by ALLOWED above.
                # Outside: the caller's own package (tests/integration), not ours.
                continue
            module = node.module or ""
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
    allowed = {key.removesuffix("/__init__") for key in ALLOWED[module]}
    assert own <= allowed, f"{module} imports {sorted(own - allowed)}"
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
