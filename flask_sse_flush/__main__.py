"""``python -m flask_sse_flush doctor URL``: see :mod:`flask_sse_flush.tools.doctor`."""

from __future__ import annotations

import sys

from .tools.doctor import main


def run(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "doctor":
        print("usage: python -m flask_sse_flush doctor URL [--json] [--insecure]", file=sys.stderr)
        return 2
    return main(args[1:], prog="python -m flask_sse_flush doctor")


if __name__ == "__main__":
    sys.exit(run())
