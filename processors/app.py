"""The faust app factory of the stream processor (``trackdelivery process`` runs it in a faust Worker)."""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faust

from processors import faust_fixes
from processors.agents import RecordProcessor, register_agent
from processors.metrics import ProcessorMetrics
from processors.pipeline import Pipeline
from processors.settings import ProcessorSettings
from trackdelivery.settings import KafkaSettings, RedisSettings, TopicNames

STATE_TABLE = "state"
# Raw records faust fetches ahead of the agent (its stream buffer; default 4096). A raw record holds up to
# record_bytes (128 KiB) of lines, and up to 960 KiB once JSON-escaped: with faust's default a worker
# catching up a backlog held 4096 records, 734 MiB RSS in bench/badinput.py, gigabytes at worst. 128
# records are still seconds of work for the agent. faust's STREAM_BUFFER_MAXSIZE variable overrides it.
STREAM_BUFFER_RECORDS = 128


@dataclass(slots=True)
class ProcessorApp:
    app: faust.App
    table: Any
    agent: Any
    metrics: ProcessorMetrics

    @property
    def changelog_topic(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())


def default_writer(redis_settings: RedisSettings | str) -> Any:
    """The store's writer on ``redis_settings`` (a bare URL: a single Redis), with ``StoreSettings()``."""
    from processors.sinks.redis import RedisWriter
    from trackdelivery.connections import redis_client
    from trackdelivery.store.types import StoreSettings

    if isinstance(redis_settings, str):
        redis_settings = RedisSettings.model_construct(url=redis_settings, cluster=False)
    return RedisWriter(redis_client(redis_settings), StoreSettings(), wait_replicas=redis_settings.wait_replicas,
                       wait_replicas_timeout=redis_settings.wait_replicas_timeout)


def broker_urls(bootstrap_servers: str) -> list[str]:
    return [f"kafka://{server.strip()}" for server in bootstrap_servers.split(",") if server.strip()]


def worker_settings(kafka: KafkaSettings, *, session_timeout: float, commit_interval: float) -> dict[str, Any]:
    """faust settings every trackdelivery worker shares: acks from all replicas, earliest offsets, security."""
    return {
        "broker": broker_urls(kafka.bootstrap_servers),
        "autodiscover": False,
        "topic_replication_factor": kafka.replication_factor,
        "broker_commit_interval": commit_interval,
        "broker_session_timeout": session_timeout,
        "broker_heartbeat_interval": min(3.0, session_timeout / 3),
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": -1,
        "stream_wait_empty": True,
        **kafka.faust_config(),  # broker_credentials for TLS/SASL; nothing for PLAINTEXT
    }


def create_app(
    settings: ProcessorSettings,
    kafka: KafkaSettings,
    topics: TopicNames,
    redis_settings: RedisSettings,
    *,
    partitions: int | None = None,
    metrics: ProcessorMetrics | None = None,
    writer_factory: Callable[[RedisSettings], Any] | None = None,
) -> ProcessorApp:
    """The app: the raw topic, the state table co-partitioned with it, the agent.

    ``partitions`` is the raw topic's real partition count (the CLI reads it from the broker); the
    table's changelog must have exactly as many. ``writer_factory(redis_settings)`` builds the Redis writer
    (default: ``RedisWriter`` with ``StoreSettings()``), inside the worker's event loop.
    """
    faust_fixes.apply()
    partition_count = partitions or kafka.partitions
    metrics = metrics or ProcessorMetrics()
    app = faust.App(
        settings.app_id,
        store=settings.store,
        datadir=settings.datadir,
        web_enabled=settings.web_port is not None,
        web_port=settings.web_port or 6066,
        web_host="127.0.0.1",
        topic_partitions=partition_count,
        table_standby_replicas=settings.standby_replicas,
        stream_buffer_maxsize=STREAM_BUFFER_RECORDS,
        **worker_settings(kafka, session_timeout=settings.session_timeout, commit_interval=settings.commit_interval),
    )
    raw_topic = app.topic(
        topics.raw, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
    )
    # faust picks the table's serializers from key_type/value_type only (bytes -> "raw", else json;
    # a Schema's serializers are ignored for tables, and recovery then fails to decode). The pipeline
    # encodes values itself. A plain compacted changelog without time retention: a changelog that
    # loses entries to retention cannot be recovered.
    table = app.Table(STATE_TABLE, key_type=str, value_type=bytes, partitions=partition_count)
    default_tz = zoneinfo.ZoneInfo(settings.default_tz)

    async def make_processor() -> RecordProcessor:
        pipeline = Pipeline(
            table,
            default_tz=default_tz,
            grace_seconds=settings.grace_seconds,
            stale_seconds=settings.stale_seconds,
        )
        return RecordProcessor(
            app, table, pipeline, topics=topics, settings=settings, metrics=metrics,
            redis_writer=(writer_factory or default_writer)(redis_settings),
            bootstrap_servers=kafka.bootstrap_servers,
            kafka=kafka,
        )

    agent = register_agent(app, raw_topic, table, make_processor)
    return ProcessorApp(app=app, table=table, agent=agent, metrics=metrics)
