"""The faust agent: one sequential stream over the raw-topic partitions this worker owns.

For each record: process (parse, dedupe, correlate; state held back) → write Redis, the events
topic and the unparsed topic and wait for every acknowledgement → assign the state changes to the
table (changelog) → faust commits the source offset later, after flushing the changelog. See
``docs/guarantees.md`` (Processor) for what a crash at each step costs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import faust
from faust.types import EventT

from processors.metrics import ProcessorMetrics
from processors.pipeline import (
    NEVER,
    BatchResult,
    Pipeline,
    decode_header,
    encode_event,
    encode_unparsed,
    encode_value,
    event_key,
)
from processors.settings import ProcessorSettings
from trackdelivery.settings import KafkaSettings, TopicNames, as_kafka_settings

log = logging.getLogger("trackdelivery.processor")

MAX_RETRY_PAUSE = 30.0

Writer = Callable[[BatchResult], Awaitable[None]]


def next_offset_key(partition: int) -> str:
    """Table key of the next raw offset of a partition (no server prefix: never swept)."""
    return f"#next|{partition}"


class RecordProcessor:
    """Everything the agent does with one record, kept out of the faust decorator for testability."""

    def __init__(
        self,
        app: faust.App,
        table: Any,
        pipeline: Pipeline,
        *,
        topics: TopicNames,
        settings: ProcessorSettings,
        metrics: ProcessorMetrics,
        redis_writer: Any,
        bootstrap_servers: str,
        kafka: KafkaSettings | None = None,
    ) -> None:
        self.app = app
        self.table = table
        self.pipeline = pipeline
        self.topics = topics
        self.settings = settings
        self.metrics = metrics
        self.redis_writer = redis_writer
        self.bootstrap_servers = bootstrap_servers
        self.kafka = kafka or as_kafka_settings(bootstrap_servers)  # TLS/SASL of the direct reads
        self._next_offsets: dict[int, int | None] = {}
        self._last_sweep: dict[int, float] = {}
        self._sweeps: dict[int, Iterator[str]] = {}
        self._sweep_counts: dict[int, int] = {}

    async def handle(self, event: EventT) -> None:
        message = event.message
        expected = self._next_offset(message.partition)
        if expected is not None and message.offset > expected:
            await self._fill_hole(message.tp, expected, message.offset)
        await self._handle_record(message.partition, message.offset, message.value)
        self._observe_lag(message.tp, message.offset)

    async def _handle_record(self, partition: int, offset: int, value: bytes | None) -> None:
        result = self.pipeline.process(value, partition)
        try:
            await self._write_outputs(result, partition)
        except BaseException:
            self.pipeline.discard()  # cancelled (shutdown): the record is processed again on restart
            raise
        for key, encoded in self.pipeline.commit(partition):
            if encoded is not None:
                self.table[key] = encoded
            elif key in self.table:
                del self.table[key]
        next_offset = max(offset + 1, self._next_offsets.get(partition) or 0)
        self._next_offsets[partition] = next_offset
        self.table[next_offset_key(partition)] = encode_value(partition, NEVER, next_offset)
        self.metrics.observe(result)
        self._sweep(partition)

    def _next_offset(self, partition: int) -> int | None:
        """The raw-topic offset after the last record of this partition whose state was committed."""
        if partition not in self._next_offsets:
            raw = self.table.get(next_offset_key(partition))
            self._next_offsets[partition] = None if raw is None else int(raw[decode_header(raw)[2]:])
        return self._next_offsets[partition]

    async def _fill_hole(self, tp: Any, start: int, end: int) -> None:
        """Process raw records ``start`` to ``end - 1`` that faust did not deliver to the agent.

        faust can drop a fetched record while its flow is suspended for a rebalance and then commit
        past a one-record hole (faust #606, #313: its gap check only refuses holes wider than one). Our
        own next-offset mark, committed with the state, shows the hole; the records are read directly.
        """
        from aiokafka import AIOKafkaConsumer, TopicPartition

        log.warning("raw records %s[%d] %d..%d were not delivered by faust: reading them directly",
                    tp.topic, tp.partition, start, end - 1)
        consumer = AIOKafkaConsumer(**self.kafka.aiokafka_config(), group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        try:
            partition = TopicPartition(tp.topic, tp.partition)
            consumer.assign([partition])
            consumer.seek(partition, start)
            position = start
            while position < end:
                batches = await consumer.getmany(partition, timeout_ms=2000, max_records=500)
                messages = [m for m in batches.get(partition, []) if m.offset < end]
                if not batches:
                    if await consumer.position(partition) >= end:
                        break
                    continue
                for record in messages:
                    await self._handle_record(tp.partition, record.offset, record.value)
                    self.metrics.refetched.inc()
                position = await consumer.position(partition)
        finally:
            await consumer.stop()

    async def _write_outputs(self, result: BatchResult, partition: int) -> None:
        if result.empty:
            return
        failures = 0
        while True:
            try:
                if result.events or result.lines:
                    with self.metrics.redis_write_seconds.time():
                        await self.redis_writer.write(result.events, result.lines)
                await self._publish(result, partition)
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Redis or Kafka unavailable: wait, never skip a record
                failures += 1
                self.metrics.output_retries.inc()
                pause = min(MAX_RETRY_PAUSE, self.settings.redis_retry_seconds * 2 ** min(failures - 1, 5))
                log.warning("output write failed (%s: %s); retry %d in %.1fs", type(error).__name__, error,
                            failures, pause)
                await asyncio.sleep(pause)

    async def _publish(self, result: BatchResult, partition: int) -> None:
        """Events go to the events-topic partition numbered like the raw partition they come from, so each
        server's events keep their log order there (consumers such as the alert worker rely on it)."""
        producer = self.app.producer
        pending = []
        for event in result.events:
            pending.append(
                await producer.send(self.topics.events, event_key(event), encode_event(event), partition, None, None)
            )
        for entry in result.unparsed:
            key = str(entry.get("server") or "-").encode("utf-8", "surrogatepass")
            pending.append(
                await producer.send(self.topics.unparsed, key, encode_unparsed(entry), None, None, None)
            )
        if pending:
            await asyncio.gather(*pending)

    def _observe_lag(self, tp: Any, offset: int) -> None:
        try:
            highwater = self.app.consumer.highwater(tp)
        except Exception:  # not known yet
            return
        if highwater is not None:
            self.metrics.lag.labels(partition=str(tp.partition)).set(max(0, highwater - offset - 1))

    def _sweep(self, partition: int) -> None:
        """Drop expired state of this partition, a chunk of keys per record."""
        cursor = self._sweeps.get(partition)
        if cursor is None:
            now = time.monotonic()
            last = self._last_sweep.get(partition)
            if last is not None and now - last < self.settings.sweep_interval:
                return
            self._last_sweep[partition] = now
            cursor = self._sweeps[partition] = iter(list(self.table.data.keys()))
            self._sweep_counts[partition] = 0
        store = self.table.data
        items: list[tuple[str, bytes]] = []
        for _ in range(self.settings.sweep_chunk):
            key = next(cursor, None)
            if key is None:
                del self._sweeps[partition]
                break
            value = store.get(key)
            if value is not None:
                items.append((key, value))
        self._sweep_counts[partition] += self._count_partition(items, partition)
        expired = self.pipeline.expired_keys(items, partition)
        for key in expired:
            if key in self.table:
                del self.table[key]
        self.metrics.released.inc(len(expired))
        if partition not in self._sweeps:
            self.metrics.table_keys.labels(partition=str(partition)).set(self._sweep_counts[partition])

    @staticmethod
    def _count_partition(items: list[tuple[str, bytes]], partition: int) -> int:
        prefix = b"%d " % partition
        return sum(1 for _, value in items if value.startswith(prefix))


def register_agent(
    app: faust.App,
    raw_topic: Any,
    table: Any,
    make_processor: Callable[[], Awaitable[RecordProcessor]],
) -> Any:
    """Attach the processing agent to ``app`` (concurrency 1: per-partition order is kept)."""

    async def process_raw(stream: Any) -> None:
        processor = await make_processor()
        async for event in stream.events():
            await processor.handle(event)

    return app.agent(raw_topic, name="trackdelivery.process_raw", concurrency=1)(process_raw)
