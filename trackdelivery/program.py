"""The ``trackdelivery`` program's start and end, light enough to import before click.

``run`` is the console script. A ``trackdelivery parse`` command line made only of files and plain
options is run without click (``processors.exim.native_run``, a fifth of the command's start-up);
every other command line goes to the click group in ``trackdelivery.cli``.
"""

from __future__ import annotations

import os
import sys

_skip_teardown = False


def exit_without_teardown() -> None:
    """For a command whose process holds nothing that needs tearing down (no files or sockets to close,
    no atexit work): `run` then ends the process without the interpreter's teardown of modules and
    objects, a few milliseconds of every `trackdelivery parse`."""
    global _skip_teardown
    _skip_teardown = True


def run() -> None:
    """The program: the command, ended with `os._exit` when it asked for that (see
    `exit_without_teardown`) and no coverage measurement waits for the interpreter's exit."""
    try:
        if sys.argv[1:2] == ["parse"] and _parse_without_click(sys.argv[2:]):
            raise SystemExit(0)
        from trackdelivery.cli import main

        main()
    except SystemExit as done:
        if not _skip_teardown or not isinstance(done.code, int | None) or "coverage" in sys.modules:
            raise
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:
            raise done from None
        os._exit(done.code or 0)


def _parse_without_click(argv: list[str]) -> bool:
    """`parse_without_click`, with failures and ^C reported as click reports them."""
    from processors.exim.native_run import ParseFailed, parse_without_click

    try:
        return parse_without_click(argv)
    except ParseFailed as error:
        print(f"Error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("\nAborted!", file=sys.stderr)
        raise SystemExit(1) from None
