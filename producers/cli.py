"""``trackdelivery ship`` (the daemon) and ``trackdelivery replay FILE...`` (backfill)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from producers.jsonlog import setup_logging
from producers.settings import ShipperSettings

log = logging.getLogger("producers")

_SHARED_OPTIONS = [
    click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                 envvar="TRACKDELIVERY_CONFIG", help="TOML file (keys as below, optionally under [shipper])"),
    click.option("--server", help="server name (Kafka key); default: the host name"),
    click.option("--bootstrap-servers", help="Kafka bootstrap servers (env KAFKA_BOOTSTRAP_SERVERS)"),
    click.option("--topic", help="raw-line topic [exim.mainlog.raw]"),
    click.option("--record-bytes", type=int, help="bytes of lines per Kafka record"),
    click.option("--batch-bytes", type=int, help="most bytes read but not yet checkpointed (ship)"),
    click.option("--linger-ms", type=int),
    click.option("--compression", type=click.Choice(["lz4", "zstd", "gzip", "none"])),
    click.option("--max-line-bytes", type=int, help="longer lines are cut and marked truncated"),
    click.option("--create-topics", is_flag=True, help="create the topic (with --partitions) first"),
    click.option("--partitions", type=int, help="partitions for --create-topics [8]"),
    click.option("--log-level", default="INFO", show_default=True),
]


def _shared(function: Any) -> Any:
    for option in reversed(_SHARED_OPTIONS):
        function = option(function)
    return function


def _prepare(log_level: str) -> None:
    setup_logging(log_level)


def _settings(config_file: Path | None, options: dict[str, Any]) -> ShipperSettings:
    try:
        settings = ShipperSettings.load(config_file, **options)
        settings.kafka_settings()  # the KAFKA_* security settings: fail now, not at the first connection
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    return settings


def _create_topic(settings: ShipperSettings) -> None:
    from trackdelivery.topics import create_topics

    create_topics(settings.kafka_settings(), {settings.topic: settings.partitions}, settings.replication_factor)
    log.info("topic ready", extra={"topic": settings.topic, "partitions": settings.partitions})


@click.command()
@_shared
@click.option("--path", "paths", multiple=True, help="file or glob to follow (repeatable) [/var/log/exim_mainlog]")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--start-position", type=click.Choice(["beginning", "end"]),
              help="where to start a file when there is no checkpoint at all [end]")
@click.option("--rotate-wait", type=float, help="seconds a rotated file stays open once drained [5]")
@click.option("--scan-interval", type=float, help="seconds between looks for new files [1]")
@click.option("--metrics-port", type=int, help="serve Prometheus metrics on this port")
def ship(config_file: Path | None, log_level: str, create_topics: bool, paths: tuple[str, ...],
         **options: Any) -> None:
    """Follow the Exim main log and ship every line to Kafka (runs until SIGTERM/SIGINT)."""
    _prepare(log_level)
    settings = _settings(config_file, {"paths": list(paths) or None, **options})
    if create_topics:
        _create_topic(settings)

    from producers.metrics import ShipperMetrics
    from producers.shipper import Shipper

    metrics = ShipperMetrics()
    if settings.metrics_port is not None:
        metrics.serve(settings.metrics_port, settings.metrics_host)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    Shipper(settings, metrics).run(stop)


@click.command()
@_shared
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--progress/--no-progress", default=None, help="progress bar [on when stderr is a terminal]")
def replay(config_file: Path | None, log_level: str, create_topics: bool, files: tuple[Path, ...],
           progress: bool | None, **options: Any) -> None:
    """Send old log files (plain or gzip) to Kafka, start to end, and print how many lines went."""
    from producers.replay import input_size, replay_files

    _prepare(log_level)
    settings = _settings(config_file, options)
    if create_topics:
        _create_topic(settings)
    show = sys.stderr.isatty() if progress is None else progress
    started = time.monotonic()
    if show:  # rich is imported only for the bar: it costs a tenth of a second at start
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

        with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True)) as bar:
            task = bar.add_task("replay", total=sum(input_size(path) for path in files))
            result = replay_files(settings, list(files), lambda n: bar.advance(task, n))
    else:
        result = replay_files(settings, list(files))
    seconds = time.monotonic() - started
    summary = {"files": result.files, "lines": result.lines, "records": result.records, "failed": result.failed,
               "seconds": f"{seconds:.2f}", "lines_per_s": round(result.lines / max(seconds, 1e-9))}
    click.echo(" ".join(f"{key}={value}" for key, value in summary.items()))
    for error in result.errors:
        click.echo(f"error: {error}", err=True)
    _exit(1 if result.failed else 0)


def _exit(code: int) -> None:
    """Leave at once when this process is the ``trackdelivery`` program, everything flushed: the
    interpreter's teardown only frees objects (pydantic's and the other modules'), ~50 ms that a replay
    would otherwise spend after its work is done. A caller in the same process (a test) gets SystemExit."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    if program.name == "trackdelivery" or (program.name == "__main__.py" and program.parent.name == "trackdelivery"):
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    if code:
        sys.exit(code)
