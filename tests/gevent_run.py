"""Run a snippet in a process of its own, gevent patched in first, as gunicorn's worker does."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_under_gevent(code: str) -> str:
    """Run ``code`` (dedented) after ``monkey.patch_all()``; its output. It must succeed."""
    script = "from gevent import monkey\nmonkey.patch_all()\n" + textwrap.dedent(code)
    result = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-c", script],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
