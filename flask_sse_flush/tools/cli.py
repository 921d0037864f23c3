"""``flask sse doctor URL``: the doctor in Flask's own command line.

Registered through the ``flask.commands`` entry point, so every app's
``flask`` command has it once the package is installed.
"""

from __future__ import annotations

import sys

import click

from .doctor import main

__all__ = ["sse"]


@click.group(help="flask-sse-flush: event streams that arrive in real time.")
def sse() -> None:
    pass


@sse.command(
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
    help="Read an SSE URL and say whether, and where, its events are held back "
    "(flask sse doctor --help for the options).",
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def doctor(args: tuple[str, ...]) -> None:
    sys.exit(main(list(args), prog="flask sse doctor"))
