"""The contenders of ``make bench``: one module each, declaring itself.

A contender module defines ``CONTENDERS``, a list of :class:`Contender`,
each with the command line that serves it; ``discover()`` finds them all,
so adding a contender touches one file. Every contender serves what
:mod:`benchmarks.contenders.common` describes.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass

from flask_sse_flush.testing import gunicorn_command

__all__ = ["Contender", "discover", "gunicorn", "werkzeug"]


@dataclass(frozen=True)
class Contender:
    name: str
    label: str
    max_streams: int
    #: The server's command line, given the port it must listen on.
    command: Callable[[int], list[str]]
    wall: str = ""  # why it stops below the largest level, if it does
    rank: int = 100  # its place in the tables, smallest first


def gunicorn(app: str) -> Callable[[int], list[str]]:
    """gunicorn with one gevent worker, sized for 10,000 streams."""
    options = ["--worker-connections", "12000", "--backlog", "4096", "--log-level", "warning"]
    return lambda port: gunicorn_command(app, port, options=options)


def werkzeug(app: str) -> Callable[[int], list[str]]:
    """werkzeug's threaded dev server (``benchmarks.serve``)."""
    return lambda port: [sys.executable, "-m", "benchmarks.serve", app, str(port)]


def discover() -> list[Contender]:
    """Every contender of every module in this package, in table order."""
    found: list[Contender] = []
    for module in pkgutil.iter_modules(__path__):
        if module.name != "common":
            found += getattr(importlib.import_module(f"{__name__}.{module.name}"), "CONTENDERS", [])
    return sorted(found, key=lambda c: (c.rank, c.name))
