"""``trackdelivery process`` (the faust worker) and ``trackdelivery rebuild`` (raw topic → fresh Redis)."""

from __future__ import annotations

import asyncio
import datetime
import sys
import time
import zoneinfo
from pathlib import Path
from typing import Any

import click
import orjson

from processors.settings import ProcessorSettings
from trackdelivery.settings import KafkaSettings, RedisSettings, TopicNames, as_kafka_settings, redact_url

PARTITION_WAIT_SECONDS = 60.0


def raw_topic_partitions(
    bootstrap_servers: str | KafkaSettings, topic: str, wait: float = PARTITION_WAIT_SECONDS
) -> int:
    """The partition count of ``topic`` as the broker reports it (the state table must match it).

    ``bootstrap_servers`` is a ``KafkaSettings`` (its TLS/SASL settings apply) or a bare address (PLAINTEXT).
    """
    from trackdelivery.kafka_clients import KafkaException, partition_count

    kafka = as_kafka_settings(bootstrap_servers)
    deadline = time.monotonic() + wait
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            partitions = partition_count(kafka, topic, timeout=max(1.0, min(10.0, deadline - time.monotonic())))
        except KafkaException as error:
            last_error = error
            partitions = 0
        if partitions:
            return partitions
        time.sleep(1.0)
    detail = f": {last_error}" if last_error else ""
    raise click.ClickException(f"topic {topic!r} not found on {kafka.bootstrap_servers}{detail} (create it first)")


def _overrides(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


@click.command()
@click.option("--app-id", help="faust app id = consumer group [trackdelivery-processor]")
@click.option("--store", type=click.Choice(["memory://", "rocksdb://"]), help="table store [memory://]")
@click.option("--datadir", help="faust data directory (rocksdb tables)")
@click.option("--web-port", type=click.IntRange(1, 65535), help="enable faust's web server on this port")
@click.option("--metrics-port", type=click.IntRange(0, 65535), help="Prometheus metrics port [9464]")
@click.option("--no-metrics", is_flag=True, help="do not serve Prometheus metrics")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error", "critical"]))
@click.option("--default-tz", help="zone of log times without an offset [UTC]")
def process(
    app_id: str | None,
    store: str | None,
    datadir: str | None,
    web_port: int | None,
    metrics_port: int | None,
    no_metrics: bool,
    log_level: str | None,
    default_tz: str | None,
) -> None:
    """Run a stream-processor worker: exim.mainlog.raw → Redis, exim.delivery.events, exim.mainlog.unparsed.

    Start more workers with the same --app-id to share the partitions. SIGTERM finishes the current
    record, flushes and commits.
    """
    settings = ProcessorSettings(
        **_overrides(
            app_id=app_id, store=store, datadir=datadir, web_port=web_port, metrics_port=metrics_port,
            log_level=log_level, default_tz=default_tz,
        )
    )
    if no_metrics:
        settings = settings.model_copy(update={"metrics_port": None})
    if settings.store.startswith("rocksdb://"):
        try:
            import rocksdict  # noqa: F401
        except ImportError as error:
            raise click.ClickException("the rocksdb:// store needs the rocksdict package") from error
    try:
        Path(settings.datadir).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise click.ClickException(f"cannot create the data directory {settings.datadir}: {error}") from error
    try:
        kafka, topics, redis_settings = KafkaSettings(), TopicNames(), RedisSettings()
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    partitions = raw_topic_partitions(kafka, topics.raw)
    events_partitions = raw_topic_partitions(kafka, topics.events)
    if events_partitions != partitions:
        raise click.ClickException(
            f"{topics.events} has {events_partitions} partitions and {topics.raw} {partitions}: they must be equal "
            "(each server's events go to the partition numbered like its raw partition)"
        )

    from processors.app import create_app
    from processors.faust_fixes import service_worker

    built = create_app(settings, kafka, topics, redis_settings, partitions=partitions)
    if settings.metrics_port is not None:
        built.metrics.serve(settings.metrics_port, settings.metrics_host)
    service_worker(built.app, settings.log_level).execute_from_commandline()


def _parse_since(value: str) -> datetime.datetime:
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError as error:
        raise click.BadParameter(f"not an ISO 8601 time: {value!r}") from error
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


@click.command()
@click.option("--from-beginning", "from_beginning", is_flag=True, help="replay the whole raw topic (default)")
@click.option("--since", help="replay records produced at or after this ISO 8601 time")
@click.option("--redis-url", help="the Redis to fill [REDIS_URL]")
@click.option("--default-tz", help="zone of log times without an offset [UTC]")
@click.option("--force", is_flag=True, help="write even when the Redis database is not empty")
@click.option("--json", "as_json", is_flag=True, help="print the final counts as one JSON line")
@click.option("--no-progress", is_flag=True, help="no progress bar")
def rebuild(
    from_beginning: bool,
    since: str | None,
    redis_url: str | None,
    default_tz: str | None,
    force: bool,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Replay exim.mainlog.raw into a fresh Redis through the live processor's pipeline."""
    if from_beginning and since:
        raise click.UsageError("--from-beginning and --since exclude each other")
    moment = _parse_since(since) if since else None
    settings = ProcessorSettings(**_overrides(default_tz=default_tz))
    try:
        kafka, topics = KafkaSettings(), TopicNames()
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    redis_settings = RedisSettings(url=redis_url) if redis_url else RedisSettings()
    stats = asyncio.run(
        _rebuild(settings, kafka, topics.raw, redis_settings, moment, force, not no_progress)
    )
    if as_json:
        click.echo(orjson.dumps({"rebuild": stats}).decode())
    else:
        events = ", ".join(f"{name} {count}" for name, count in stats["events"].items()) or "none"
        click.echo(
            f"rebuilt from {stats['records']} records: {stats['lines']} lines, {stats['duplicates']} duplicates "
            f"dropped, {stats['unparsed']} unparsed, {stats['events_total']} events ({events}) "
            f"in {stats['seconds']:.1f}s"
        )


async def _rebuild(
    settings: ProcessorSettings,
    kafka: KafkaSettings,
    raw_topic: str,
    redis_settings: RedisSettings,
    since: datetime.datetime | None,
    force: bool,
    progress: bool,
) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from processors.pipeline import Pipeline
    from processors.rebuild import rebuild as run_rebuild
    from processors.sinks.redis import RedisWriter
    from trackdelivery.connections import count_keys, redis_client
    from trackdelivery.store.types import StoreSettings

    partitions = raw_topic_partitions(kafka, raw_topic, wait=10.0)
    client = redis_client(redis_settings)
    try:
        if not force and await count_keys(client):
            raise click.ClickException(
                f"{redact_url(redis_settings.url)} is not empty: rebuild fills a fresh Redis (or pass --force)"
            )
        pipeline = Pipeline(
            {},
            default_tz=zoneinfo.ZoneInfo(settings.default_tz),
            grace_seconds=settings.grace_seconds,
            stale_seconds=settings.stale_seconds,
        )
        writer = RedisWriter(client, StoreSettings(), wait_replicas=redis_settings.wait_replicas,
                             wait_replicas_timeout=redis_settings.wait_replicas_timeout)
        with Progress(
            TextColumn("rebuild"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), disable=not progress or not sys.stderr.isatty(), transient=True,
        ) as bar:
            task = bar.add_task("records", total=None)

            def on_progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            stats = await run_rebuild(
                bootstrap_servers=kafka, raw_topic=raw_topic, writer=writer, pipeline=pipeline,
                partitions=partitions, since=since, on_progress=on_progress,
            )
        return stats.as_dict()
    finally:
        await client.aclose()
