"""Sphinx configuration for the flask-sse-flush documentation."""

from __future__ import annotations

import sys
from pathlib import Path

# Document the package in this checkout, not an installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask_sse_flush import __version__

project = "flask-sse-flush"
author = "the flask-sse-flush authors"
copyright = author
release = __version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode"]

exclude_patterns = ["_build", "_generated"]
root_doc = "index"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True

html_theme = "alabaster"
html_title = f"flask-sse-flush {release}"
html_theme_options = {
    "description": "Server-Sent Events from Flask that arrive in real time.",
    "fixed_sidebar": True,
}
