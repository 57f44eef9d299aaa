"""``trackdelivery parse``: Exim main logs (plain, gzip or stdin) to parsed lines or delivery events."""

from __future__ import annotations

import dataclasses
import datetime
import io
import os
import sys
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, BinaryIO

import click

from processors.exim.native_run import (
    ParseFailed,
    load_native,
    progress_bar,
    run_native,
    server_name_for,
    summary,
)
from processors.exim.types import LineKind, ParsedLine
from trackdelivery.events import SCHEMA_VERSION, DeliveryEvent, EventType

if TYPE_CHECKING:
    from processors.exim.retry import RetryRules

GZIP_MAGIC = b"\x1f\x8b"
READ_BUFFER = 1 << 20
WRITE_CHUNK = 1 << 20
RELEASE_EVERY = 200_000  # lines between two releases of finished messages
WINDOW_LINES = 10_000  # events wait this many lines for a re-emission (bounce link) before being written
WINDOW_CHECK_EVERY = 1000
TABLE_MAX_ROWS = 10_000

_LINE_FIELDS = tuple(f.name for f in dataclasses.fields(ParsedLine) if f.name not in ("kind", "msgid"))
_EVENT_PREFIX = b'{"v":' + str(SCHEMA_VERSION).encode() + b","


# orjson, gzip and zlib are imported where the Python engine uses them: the native engine's start-up
# (part of every `trackdelivery parse`) does without them


def encode_event(event: DeliveryEvent) -> bytes:
    """``event.to_dict()`` as orjson bytes, without building the dict (orjson reads dataclasses)."""
    import orjson

    return _EVENT_PREFIX + orjson.dumps(event)[1:]


def encode_line(number: int, server: str, line: ParsedLine) -> bytes:
    import orjson

    data: dict[str, Any] = {"line": number, "server": server, "kind": line.kind, "msgid": line.msgid}
    for name in _LINE_FIELDS:
        value = getattr(line, name)
        if value is not None and value != "" and value != [] and value != {} and value is not False:
            data[name] = value
    return orjson.dumps(data)


@contextmanager
def open_log(path: str) -> Iterator[tuple[IO[bytes], BinaryIO | None]]:
    """The decompressed byte stream of a log and the raw file under it (for progress), ``-`` = stdin."""
    if path == "-":
        raw: BinaryIO = click.get_binary_stream("stdin")
        owned = False
    else:
        raw = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
        owned = True
    try:
        buffered: Any = io.BufferedReader(raw, READ_BUFFER)
        if buffered.peek(2)[:2] == GZIP_MAGIC:
            import gzip

            yield gzip.GzipFile(fileobj=buffered, mode="rb"), raw if owned else None  # type: ignore[misc]
        else:
            yield buffered, raw if owned else None
    finally:
        if owned:
            raw.close()


class Output:
    """Buffered binary stdout: JSON lines in big chunks, or rows for a rich table."""

    def __init__(self, table: bool, what: str) -> None:
        self.stream = click.get_binary_stream("stdout")
        self.chunks: list[bytes] = []
        self.size = 0
        self.table = table
        self.what = what
        self.rows: list[tuple[str, ...]] = []
        self.rows_dropped = 0

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data) + 1
        if self.size >= WRITE_CHUNK:
            self.flush()

    def add_row(self, row: tuple[str, ...]) -> None:
        if len(self.rows) < TABLE_MAX_ROWS:
            self.rows.append(row)
        else:
            self.rows_dropped += 1

    def flush(self) -> None:
        if self.chunks:
            self.chunks.append(b"")
            self.stream.write(b"\n".join(self.chunks))
            self.chunks = []
            self.size = 0

    def close(self) -> None:
        if self.table:
            self.print_table()
        self.flush()
        self.stream.flush()

    def print_table(self) -> None:
        from rich.console import Console
        from rich.table import Table

        if self.what == "events":
            headers = ("time", "type", "server", "msgid", "recipient", "reason", "response")
        else:
            headers = ("line", "kind", "server", "msgid", "time", "address", "detail")
        table = Table(*headers, show_lines=False)
        for row in self.rows:
            table.add_row(*row)
        stdout = click.get_text_stream("stdout")
        console = Console(file=stdout, width=None if stdout.isatty() else 240)
        console.print(table)
        if self.rows_dropped:
            click.echo(f"table cut at {TABLE_MAX_ROWS} rows, {self.rows_dropped} more", err=True)


class EventWindow:
    """Holds events for a while so that a re-emission (same event id, e.g. a failure now linked to
    its bounce) replaces the first version instead of being written twice."""

    def __init__(self, sink: Callable[[DeliveryEvent], None]) -> None:
        self.sink = sink
        self.pending: OrderedDict[str, tuple[int, DeliveryEvent]] = OrderedDict()

    def add(self, line_number: int, event: DeliveryEvent) -> None:
        held = self.pending.get(event.event_id)
        self.pending[event.event_id] = (held[0] if held else line_number, event)

    def drain(self, up_to_line: int) -> None:
        """Write the events first seen at or before ``up_to_line``, in the order they came."""
        pending = self.pending
        while pending:
            event_id = next(iter(pending))
            number, event = pending[event_id]
            if number > up_to_line:
                break
            del pending[event_id]
            self.sink(event)


def _text(value: object, limit: int = 80) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return datetime.datetime.fromtimestamp(value, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _event_row(event: DeliveryEvent) -> tuple[str, ...]:
    return (
        _text(event.time),
        str(event.type),
        event.server,
        event.msgid or "",
        _text(event.recipient),
        str(event.reason or ""),
        _text(event.response),
    )


def _line_row(number: int, server: str, line: ParsedLine) -> tuple[str, ...]:
    return (
        str(number),
        str(line.kind),
        server,
        line.msgid or "",
        _text(line.time),
        _text(line.address),
        _text(line.detail or line.error),
    )


def _timezone(_ctx: click.Context, _param: click.Parameter, value: str) -> datetime.tzinfo:
    if value.upper() in ("UTC", "Z"):
        return datetime.UTC
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(value)
    except (ValueError, KeyError, OSError) as error:
        raise click.BadParameter(f"unknown time zone {value!r}") from error


@click.command("parse")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--server", help="Server name for every input (default: from the file's name or folder).")
@click.option(
    "--output",
    type=click.Choice(["lines", "events"]),
    default="events",
    show_default=True,
    help="Parsed lines, or delivery events after correlation.",
)
@click.option("--format", "output_format", type=click.Choice(["jsonl", "table"]), default="jsonl", show_default=True)
@click.option("--retry-rules", help='Exim retry rules, e.g. "F,2h,15m; G,16h,1h,1.5; F,4d,6h".')
@click.option("--tz", "tz", default="UTC", show_default=True, callback=_timezone, help="Zone of times without offset.")
@click.option(
    "--engine",
    type=click.Choice(["auto", "native", "python"]),
    default=lambda: os.environ.get("TRACKDELIVERY_PARSE_ENGINE", "auto"),
    show_default="auto, or TRACKDELIVERY_PARSE_ENGINE",
    help="native: the Rust pipeline (JSON lines only); python: the reference modules; auto: native when built.",
)
def parse(
    files: tuple[str, ...],
    server: str | None,
    output: str,
    output_format: str,
    retry_rules: str | None,
    tz: datetime.tzinfo,
    engine: str,
) -> None:
    """Parse Exim main logs (FILE ..., .gz, or - for stdin) into JSON lines or a table."""
    from processors.exim.retry import DEFAULT_RETRY_RULES, RetryRules

    rules = DEFAULT_RETRY_RULES
    if retry_rules:
        try:
            rules = RetryRules.parse(retry_rules)
        except Exception as error:
            raise click.BadParameter(str(error), param_hint="--retry-rules") from error

    inputs = files or ("-",)
    events_wanted = output == "events"
    table = output_format == "table"
    native = _native_engine(engine, table)
    if native is not None:
        _parse_native(native, inputs, server, events_wanted, rules, tz)
        return
    _parse_python(inputs, server, events_wanted, table, output, rules, tz)


def _native_engine(engine: str, table: bool) -> Any:
    """The native module when it should run this parse, else None (the Python modules run it)."""
    if engine == "python" or (engine == "auto" and table):
        return None
    if table:
        raise click.BadParameter("the native engine writes JSON lines only; use --engine python", param_hint="--engine")
    try:
        return load_native(engine)
    except ParseFailed as error:
        raise click.ClickException(str(error)) from error


def _parse_native(
    native: Any,
    inputs: tuple[str, ...],
    server: str | None,
    events_wanted: bool,
    rules: RetryRules,
    tz: datetime.tzinfo,
) -> None:
    try:
        run_native(native, inputs, server, events_wanted, rules, tz)
    except ParseFailed as error:
        raise click.ClickException(str(error)) from error


def _parse_python(
    inputs: tuple[str, ...],
    server: str | None,
    events_wanted: bool,
    table: bool,
    output: str,
    rules: RetryRules,
    tz: datetime.tzinfo,
) -> None:
    import zlib

    from processors.exim.correlator import Correlator
    from processors.exim.parser import parse_line

    out = Output(table, output)
    correlator = Correlator(retry_rules=rules, emit_in_progress=False)
    kinds: Counter[LineKind] = Counter()
    event_types: Counter[EventType] = Counter()
    total_lines = 0
    last_time = 0.0
    progress = progress_bar(inputs)

    def emit(event: DeliveryEvent) -> None:
        event_types[event.type] += 1
        if table:
            out.add_row(_event_row(event))
        else:
            out.write(encode_event(event))

    window = EventWindow(emit)

    try:
        for path in inputs:
            name = server or server_name_for(path)
            try:
                with open_log(path) as (stream, raw_file):
                    task = progress.add_task(path, total=os.path.getsize(path)) if progress and raw_file else None
                    number = 0
                    for raw in stream:
                        number += 1
                        if raw.endswith(b"\n"):
                            raw = raw[:-1]
                        line = parse_line(raw, default_tz=tz)
                        kinds[line.kind] += 1
                        if events_wanted:
                            if line.time is not None:
                                last_time = line.time
                            for event in correlator.feed(name, line):
                                window.add(total_lines + number, event)
                            if number % WINDOW_CHECK_EVERY == 0:
                                window.drain(total_lines + number - WINDOW_LINES)
                            if number % RELEASE_EVERY == 0:
                                correlator.release(last_time)
                        elif table:
                            out.add_row(_line_row(number, name, line))
                        else:
                            out.write(encode_line(number, name, line))
                        if progress and task is not None and raw_file is not None and number % 65536 == 0:
                            progress.update(task, completed=raw_file.tell())
                    total_lines += number
            except BrokenPipeError:
                raise
            except (OSError, EOFError, zlib.error) as error:
                raise click.ClickException(f"cannot read {path}: {error}") from error
        if events_wanted:
            for event in correlator.flush():
                window.add(total_lines, event)
            window.drain(total_lines)
        if progress:
            progress.stop()
        out.close()
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (e.g. | head): nothing more to say
        os._exit(0)
    summary(total_lines, kinds.items(), event_types.items() if events_wanted else None)
