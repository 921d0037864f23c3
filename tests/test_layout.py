"""Imports flow one way, and only some modules may know about Flask.

Bottom up: exceptions, frames <- _concurrency, transport, headers, brokers
<- stream, jobs <- blueprint, mirror <- testing, demo, __init__. ``frames``,
``jobs``, the brokers and ``_concurrency`` stay framework-free so a job
worker without an app can use them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "flask_sse_flush"

# module -> the package modules it may import
ALLOWED: dict[str, set[str]] = {
    "exceptions": set(),
    "frames": set(),
    "_concurrency": set(),
    "transport": set(),
    "headers": {"transport"},
    "stream": {"_concurrency", "exceptions", "frames", "headers"},
    "jobs": {"_concurrency", "brokers", "exceptions", "frames"},
    "brokers/base": {"frames"},
    "brokers/memory": {"_concurrency", "base", "exceptions", "frames"},
    "brokers/__init__": {"base", "memory"},
    "blueprint": {"_concurrency", "brokers", "exceptions", "headers", "jobs", "stream"},
    "mirror": {"frames", "headers", "jobs", "stream"},
    "testing": {"frames"},
}
MAY_IMPORT_FLASK = {"headers", "stream", "blueprint", "testing", "mirror", "demo"}
FRAMEWORK_FREE = {"frames", "jobs", "_concurrency", "exceptions", "transport"}
FRAMEWORKS = {"flask", "werkzeug"}


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
    modules |= {f"brokers/{p.stem}" for p in (PACKAGE / "brokers").glob("*.py")}
    assert modules == set(ALLOWED), "add new modules to ALLOWED with their layer"


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_imports_flow_one_way(module: str) -> None:
    own, other = imports_of(PACKAGE / f"{module}.py")
    assert own <= ALLOWED[module], f"{module} imports {sorted(own - ALLOWED[module])}"
    if module not in MAY_IMPORT_FLASK:
        assert not other & FRAMEWORKS, f"{module} must stay framework-free"


@pytest.mark.parametrize("module", sorted(FRAMEWORK_FREE | {"brokers"}))
def test_framework_free_modules_import_without_flask(module: str) -> None:
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
