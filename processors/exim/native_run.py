"""``trackdelivery parse`` by the native engine, and the command's start without click.

Every ``trackdelivery parse`` pays for its start-up, and click (with ``typing``, which it imports) takes
a quarter of it: ~10 of ~41 ms, 2% of a million-line parse. So a command line made only of log files
and options with plain values, the common case of JSON lines by the native engine, is read here
(``parse_without_click``) and run without importing click. Any other command line (help, a table, the
Python engine, retry rules, a time zone, a file that is not there, a value that is not allowed) goes
to the click command, which reads it as always and says what is wrong. A test holds the options read
here to the click command's.

Nor does this path import the reason and retry rule modules, with the ``dataclasses``, ``enum`` and
``inspect`` they pull in (two thirds of what was left of the start-up): the engine reads its copy of
the rules from ``engine_table.json`` (``processors.exim.engine_table``).
"""

from __future__ import annotations

import importlib
import os
import sys
import time

TYPE_CHECKING = False  # as in trackdelivery.events: no import of typing on this path
if TYPE_CHECKING:
    import datetime
    from collections.abc import Callable, Iterable, Sequence
    from typing import Any

    from processors.exim.retry import RetryRules

PROGRESS_MIN_BYTES = 32 << 20
GENERIC_LOG_NAMES = ("exim_mainlog", "mainlog", "main.log")

#: the options ``parse_without_click`` reads, with the values it accepts (the first is the default);
#: any other option or value goes to the click command
PLAIN_OPTIONS: dict[str, tuple[str, ...] | None] = {
    "--server": None,  # any value
    "--output": ("events", "lines"),
    "--format": ("jsonl",),
    "--tz": ("UTC", "Z", "utc", "z"),
    "--engine": ("auto", "native"),
}


class ParseFailed(Exception):
    """A parse that cannot go on; the message says why (click shows it as ``Error: ...``)."""


def server_name_for(path: str) -> str:
    """The server a log file belongs to: the folder of an ``exim_mainlog``, else the file's stem."""
    if path == "-":
        return "stdin"
    name = os.path.basename(os.path.normpath(path))
    for suffix in (".gz", ".log"):
        name = name.removesuffix(suffix)
    if name.startswith(GENERIC_LOG_NAMES):
        folder = os.path.basename(os.path.dirname(os.path.realpath(path)))
        if folder:
            return folder
    return name.split(".")[0] or name


def load_native(engine: str) -> Any:
    """The native module when ``engine`` (auto or native) should run, else None (the Python modules run)."""
    if engine == "python":
        return None
    # The engine's heap (mimalloc) in 2 MiB pages when it is loaded here: its state takes tens of MB, each
    # page touched for the first time, and in a virtual machine a first touch of a 4 KiB page can cost
    # ~10 µs (up to 0.25 s of system time per million lines, measured). The variable is mimalloc's own.
    os.environ.setdefault("MIMALLOC_ALLOW_LARGE_OS_PAGES", "1")
    try:
        native: Any = importlib.import_module("trackdelivery_native")
    except ImportError:
        native = None
    if native is None or not hasattr(native, "exim_parse_files"):
        if engine == "native":
            raise ParseFailed("the native engine is not built: run `make install` (or pip install ./native)")
        return None
    if not hasattr(native, "StaleEngineTable"):  # built from older sources: it takes no engine table
        if engine == "native":
            raise ParseFailed("the native engine is older than this code: run `make install` (or pip install ./native)")
        return None
    return native


def progress_bar(inputs: Sequence[str]) -> Any:
    """A rich progress display on a terminal, for inputs big enough to wait for; else None."""
    if not sys.stderr.isatty():
        return None
    sizes = [os.path.getsize(path) for path in inputs if path != "-"]
    if sum(sizes) < PROGRESS_MIN_BYTES:
        return None
    from rich.progress import Progress

    progress = Progress(transient=True)
    progress.start()
    return progress


def summary(lines: int, kinds: Iterable[tuple[str, int]], event_types: Iterable[tuple[str, int]] | None) -> None:
    """The closing line on stderr: lines, unknown lines, kinds and event types seen, each as (name, count)
    pairs, most common first (ties in the order given)."""
    kinds = most_common(kinds)
    unknown = sum(count for kind, count in kinds if kind == "unknown")
    parts = [f"{lines} lines, {unknown} unknown"]
    parts.append("kinds: " + ", ".join(f"{kind}={count}" for kind, count in kinds))
    if event_types is not None:
        event_types = most_common(event_types)
        total = sum(count for _, count in event_types)
        detail = ", ".join(f"{kind}={count}" for kind, count in event_types)
        parts.append(f"events: {total}" + (f" ({detail})" if detail else ""))
    print("; ".join(parts), file=sys.stderr, flush=True)


def most_common(counts: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """``Counter.most_common()`` of (name, count) pairs without importing collections."""
    return sorted(counts, key=lambda pair: pair[1], reverse=True)


def binary_stream(stream: Any) -> Any:
    """The bytes side of a text stream (``sys.stdout``, or a test runner's stand-in)."""
    return getattr(stream, "buffer", stream)


def local_epoch(tz: datetime.tzinfo) -> Callable[[str], float | None]:
    import functools

    from processors.exim.parser import local_epoch as parser_local_epoch

    return functools.partial(parser_local_epoch, default_tz=tz)


def engine_table_file() -> tuple[str, str]:
    """(the engine table file, the folder its sources are named from): see ``processors.exim.engine_table``."""
    here = os.path.dirname(os.path.realpath(__file__))
    return os.path.join(here, "engine_table.json"), os.path.dirname(os.path.dirname(here))


def run_native(
    native: Any,
    inputs: Sequence[str],
    server: str | None,
    events_wanted: bool,
    rules: RetryRules | None,
    tz: datetime.tzinfo | None,
) -> None:
    """The Python engine's work in ``trackdelivery_native``: it reads the files and writes stdout.

    ``rules`` None: the default retry rules; ``tz`` None: UTC. The engine takes its table from the file
    beside ``processors.exim.engine_table`` and, when that is stale, from the Python modules."""
    pairs = [(path, server or server_name_for(path)) for path in inputs]
    now = time.time()
    if tz is None:
        clock, year = None, time.gmtime(now).tm_year
    else:
        import datetime

        clock = None if tz is datetime.UTC else local_epoch(tz)
        year = datetime.datetime.fromtimestamp(now, tz).year
    progress = progress_bar(inputs)
    tasks: dict[int, Any] = {}

    def report(index: int, done: int) -> None:
        path = inputs[index]
        if progress is None or path == "-":
            return
        if index not in tasks:
            tasks[index] = progress.add_task(path, total=os.path.getsize(path))
        progress.update(tasks[index], completed=done)

    stdout = binary_stream(sys.stdout)

    def parse(engine_table: tuple[str, str] | None) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
        return native.exim_parse_files(
            pairs,
            events_wanted,
            rules,
            None,  # the schema: the engine table's is checked
            stdout.write,
            binary_stream(sys.stdin).read if "-" in inputs else None,
            clock,
            now,
            year,
            report if progress else None,
            engine_table,
        )

    try:
        try:
            lines, kinds, event_types = parse(engine_table_file())
        except native.StaleEngineTable:
            lines, kinds, event_types = parse(None)  # before any output: the table from the modules
        stdout.flush()
    except BrokenPipeError:
        sys.stderr.close()
        os._exit(0)
    except OSError as error:
        raise ParseFailed(str(error)) from error
    finally:
        if progress:
            progress.stop()
    summary(lines, kinds, event_types if events_wanted else None)
    from trackdelivery.program import exit_without_teardown

    exit_without_teardown()  # the native engine has closed its files and written everything


def plain_arguments(argv: Sequence[str]) -> tuple[list[str], dict[str, str]] | None:
    """(files, options) of a ``parse`` command line made only of existing files and ``PLAIN_OPTIONS``
    with accepted values (the last of a repeated option wins, as in click); None for any other."""
    files: list[str] = []
    options: dict[str, str] = {}
    at = 0
    while at < len(argv):
        argument = argv[at]
        if argument.startswith("-") and argument != "-":
            name, equals, value = argument.partition("=")
            if name not in PLAIN_OPTIONS:
                return None
            if not equals:
                if at + 1 == len(argv):
                    return None
                at += 1
                value = argv[at]
            accepted = PLAIN_OPTIONS[name]
            if accepted is not None and value not in accepted:
                return None
            options[name] = value
        elif argument == "-" or (os.path.isfile(argument) and os.access(argument, os.R_OK)):
            files.append(argument)
        else:
            return None
        at += 1
    engine = options.get("--engine", os.environ.get("TRACKDELIVERY_PARSE_ENGINE", "auto"))
    if engine not in (PLAIN_OPTIONS["--engine"] or ()):
        return None
    options["--engine"] = engine
    return files, options


def parse_without_click(argv: Sequence[str]) -> bool:
    """Run ``trackdelivery parse ARGV`` when ``plain_arguments`` reads it and the native engine is built;
    False, having done nothing, when the click command should run it."""
    plain = plain_arguments(argv)
    if plain is None:
        return False
    files, options = plain
    native = load_native(options["--engine"])
    if native is None:
        return False
    output = options.get("--output", "events")
    run_native(native, files or ["-"], options.get("--server"), output == "events", None, None)
    return True
