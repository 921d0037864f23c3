"""The integration app for uWSGI, which takes a module-level callable (``--pyargv LOG_DIR``)."""

from __future__ import annotations

import sys

from app import create_app  # type: ignore[import-not-found]

# uWSGI's --pyargv: the log folder.
application = create_app(sys.argv[1])
