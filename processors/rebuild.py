"""``trackdelivery rebuild``: replay the raw topic into a fresh Redis with the live processor's pipeline.

A plain aiokafka consumer with every partition assigned (no consumer group, nothing committed) reads
from the beginning (or from a time) up to the end offsets seen at start. Each record goes through the
same ``Pipeline`` as the faust agent, with a dict as the state store, so the answers are the same.
"""

from __future__ import annotations

import datetime
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from processors.pipeline import Pipeline, record_seconds
from trackdelivery.settings import KafkaSettings, as_kafka_settings

WRITE_BATCH_EVENTS = 5000
SWEEP_EVERY_RECORDS = 50_000


@dataclass(slots=True)
class RebuildStats:
    records: int = 0
    lines: int = 0
    duplicates: int = 0
    unparsed: int = 0
    events: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "lines": self.lines,
            "duplicates": self.duplicates,
            "unparsed": self.unparsed,
            "events": dict(sorted(self.events.items())),
            "events_total": sum(self.events.values()),
            "seconds": round(self.seconds, 3),
        }


async def rebuild(
    *,
    bootstrap_servers: str | KafkaSettings,
    raw_topic: str,
    writer: Any,
    pipeline: Pipeline,
    partitions: int,
    since: datetime.datetime | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> RebuildStats:
    """Replay ``raw_topic`` into ``writer``; ``on_progress(done, total)`` is called as records go by.

    ``bootstrap_servers`` is a ``KafkaSettings`` (its TLS/SASL settings apply) or a bare address (PLAINTEXT).
    """
    stats = RebuildStats()
    started = time.monotonic()
    consumer = AIOKafkaConsumer(
        **as_kafka_settings(bootstrap_servers).aiokafka_config(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(raw_topic, partition) for partition in range(partitions)]
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        start = await _start_offsets(consumer, tps, since)
        for tp in tps:
            consumer.seek(tp, start[tp])
        total = sum(max(0, end[tp] - start[tp]) for tp in tps)
        remaining = {tp for tp in tps if start[tp] < end[tp]}
        done = 0
        pending_events: list[Any] = []
        pending_lines: list[Any] = []
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=2000)
            for tp, messages in batches.items():
                for message in messages:
                    if message.offset >= end[tp]:
                        remaining.discard(tp)
                        break
                    result = pipeline.process(message.value, tp.partition, record_seconds(message.timestamp))
                    pipeline.apply(pipeline.commit(tp.partition))
                    stats.records += 1
                    stats.lines += result.lines_in
                    stats.duplicates += result.duplicates
                    stats.unparsed += len(result.unparsed)
                    for event in result.events:
                        stats.events[str(event.type)] += 1
                    pending_events.extend(result.events)
                    pending_lines.extend(result.lines)
                    if stats.records % SWEEP_EVERY_RECORDS == 0:
                        for key in pipeline.expired_keys(list(pipeline.backing.items())):
                            pipeline.backing.pop(key, None)
                    if message.offset + 1 >= end[tp]:
                        remaining.discard(tp)
                done += len(messages)
            if len(pending_events) + len(pending_lines) >= WRITE_BATCH_EVENTS or not remaining:
                await writer.write(pending_events, pending_lines)
                pending_events, pending_lines = [], []
            if on_progress is not None:
                on_progress(min(done, total), total)
        if pending_events or pending_lines:
            await writer.write(pending_events, pending_lines)
    finally:
        await consumer.stop()
    stats.seconds = time.monotonic() - started
    return stats


async def _start_offsets(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], since: datetime.datetime | None
) -> dict[TopicPartition, int]:
    beginning = await consumer.beginning_offsets(tps)
    if since is None:
        return dict(beginning)
    end = await consumer.end_offsets(tps)
    stamp = int(since.timestamp() * 1000)
    found = await consumer.offsets_for_times({tp: stamp for tp in tps})
    return {tp: found[tp].offset if found.get(tp) is not None else end[tp] for tp in tps}
