"""``trackdelivery generate``: a deterministic fleet of cPanel/Exim main logs with an answer key."""

from __future__ import annotations

import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import click

from trackdelivery.generator.runner import DEFAULT_INCIDENTS, DEFAULT_START, INCIDENTS, FleetRun, GenerateConfig

PROGRESS_THRESHOLD = 20_000  # messages; below this a run takes about a second


def _parse_incidents(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, ...]:
    if value is None:
        return DEFAULT_INCIDENTS
    if value.strip() in ("none", ""):
        return ()
    if value.strip() == "all":
        return INCIDENTS
    names = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [name for name in names if name not in INCIDENTS]
    if unknown:
        raise click.BadParameter(f"unknown incident(s) {', '.join(unknown)}; choose from {', '.join(INCIDENTS)}, "
                                 "all or none")
    return names


def _parse_start(value: str) -> datetime:
    try:
        start = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(f"not an ISO date/time: {value!r}") from exc
    return start if start.tzinfo else start.replace(tzinfo=UTC)


@click.command("generate")
@click.option("--servers", type=click.IntRange(1, 100_000), default=3, show_default=True, help="Number of servers.")
@click.option(
    "--messages",
    type=click.IntRange(0),
    default=1000,
    show_default=True,
    help="Accepted messages in the whole fleet (bounces and rejections come on top).",
)
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Output directory: <server>/exim_mainlog, truth.jsonl, manifest.json.",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--start", default=DEFAULT_START, show_default=True, help="Start of the span (ISO, UTC if no zone).")
@click.option("--days", type=click.FloatRange(0.01), default=7.0, show_default=True, help="Length of the span.")
@click.option("--follow", is_flag=True, help="After writing, keep appending live traffic until SIGINT/SIGTERM.")
@click.option(
    "--rate",
    type=click.FloatRange(1.0),
    default=1000.0,
    show_default=True,
    help="Lines per second in total with --follow.",
)
@click.option(
    "--exim-version",
    type=click.Choice(["mixed", "4.96", "4.98", "4.99"]),
    default="mixed",
    show_default=True,
    help="4.96 servers use 16-char ids; 4.99 servers use ' : ' on ** lines.",
)
@click.option(
    "--incidents",
    callback=_parse_incidents,
    help=f"Comma-separated incidents to inject ({', '.join(INCIDENTS)}), 'all' or 'none' "
    f"[default: {','.join(DEFAULT_INCIDENTS)}].",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal, large runs).")
def generate(
    servers: int,
    messages: int,
    out: Path,
    seed: int,
    start: str,
    days: float,
    follow: bool,
    rate: float,
    exim_version: str,
    incidents: tuple[str, ...],
    progress: bool | None,
) -> None:
    """Write deterministic cPanel/Exim main logs for a fleet, with truth.jsonl and manifest.json.

    With --follow the run goes on appending to the same files at about --rate lines/s; truth rows
    are appended as messages finish, and rows of messages still in flight are written again when the
    run stops (the last row of a key wins).
    """
    config = GenerateConfig(
        servers=servers,
        messages=messages,
        out=out,
        seed=seed,
        start=_parse_start(start),
        days=days,
        exim_version=exim_version,
        incidents=incidents,
    )
    show = progress if progress is not None else (sys.stderr.isatty() and messages >= PROGRESS_THRESHOLD)
    run = FleetRun(config)
    began = time.perf_counter()
    try:
        if show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            with Progress(*columns, transient=True) as bar:
                expected = messages + messages // 10
                task = bar.add_task("generating", total=expected)
                manifest = run.run(keep=follow, progress=lambda n: bar.advance(task, n))
        else:
            manifest = run.run(keep=follow)
        elapsed = time.perf_counter() - began
        click.echo(
            f"wrote {manifest['lines']:,} lines for {servers} servers to {out} in {elapsed:.1f}s "
            f"({manifest['lines'] / max(elapsed, 1e-9):,.0f} lines/s); truth rows {manifest['truth_rows']:,}",
            err=True,
        )
        if follow:
            stop = False

            def request_stop(signum: int, frame: FrameType | None) -> None:
                nonlocal stop
                stop = True

            signal.signal(signal.SIGTERM, request_stop)
            signal.signal(signal.SIGINT, request_stop)
            click.echo(f"following at {rate:g} lines/s; SIGINT or SIGTERM stops", err=True)
            written = run.follow(rate, lambda: stop)
            click.echo(f"appended {written:,} lines", err=True)
    finally:
        run.close()
