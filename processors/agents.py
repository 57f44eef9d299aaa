"""The faust agent: one sequential stream over the raw-topic partitions this worker owns.

For each record: process (parse, dedupe, correlate; state held back) → write Redis, the events
topic and the unparsed topic and wait for every acknowledgement → assign the state changes to the
table (changelog) → faust commits the source offset later, after flushing the changelog. See
``docs/guarantees.md`` (Processor) for what a crash at each step costs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import faust
from faust.types import EventT

from processors import faust_fixes
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
    record_seconds,
)
from processors.settings import ProcessorSettings
from trackdelivery import kafka_clients
from trackdelivery.settings import KafkaSettings, TopicNames, as_kafka_settings

log = logging.getLogger("trackdelivery.processor")

MAX_RETRY_PAUSE = 30.0
WATCHDOG_INTERVAL = 5.0
EXIT_STALLED = 70  # the worker exits with this when its consumer stays stalled: its supervisor restarts it
DIRECT_READ_ATTEMPTS = 3  # fresh consumers tried on a hole of unread raw records before exiting EXIT_STALLED

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
        self._last_sweep: dict[int, float] = {}
        self._sweeps: dict[int, Iterator[str]] = {}
        self._sweep_counts: dict[int, int] = {}
        self._last_progress = time.monotonic()
        self._handling = False
        self._beat = time.monotonic()  # the agent's last sign of life inside a record (every wait is bounded)
        self._stall_strikes = 0
        self._recovery_left: int | None = None  # changelog records left at the last watchdog call
        self._commits_checked = False  # since the last record: Kafka was seen holding every processed offset

    async def handle(self, event: EventT) -> None:
        message = event.message
        self._handling = True
        self._beat = time.monotonic()
        try:
            expected = self._next_offset(message.partition)
            if expected is not None and message.offset > expected:
                await self._fill_hole(message.tp, expected, message.offset)
            await self._handle_record(message.partition, message.offset, message.value, message.timestamp)
        finally:
            self._handling = False
            self._last_progress = time.monotonic()
            self._stall_strikes = 0
            self._commits_checked = False
        self._observe_lag(message.tp, message.offset)

    async def watchdog(self) -> None:
        """Called every few seconds. faust can leave a worker idle after a rebalance with records waiting
        on partitions it owns (its flow or the partitions stay paused). After ``stall_seconds`` of that the
        consumer is resumed; still stalled after as long again, the worker exits with ``EXIT_STALLED`` so
        that its supervisor restarts it (a crash at any point loses nothing: docs/guarantees.md)."""
        if self._handling:
            stuck = time.monotonic() - self._beat
            if stuck > self.settings.output_timeout + self.settings.stall_seconds:
                # every wait inside a record is bounded by output_timeout: this one is not coming back
                log.error("stuck inside a record for %.0fs: exiting with %d so the supervisor restarts the worker",
                          stuck, EXIT_STALLED)
                logging.shutdown()
                os._exit(EXIT_STALLED)
            return
        remaining = self._recovery_remaining()
        if remaining is not None and (self._recovery_left is None or remaining < self._recovery_left):
            self._last_progress = time.monotonic()  # table recovery moving on is progress too
        self._recovery_left = remaining
        idle = time.monotonic() - self._last_progress
        if remaining is None and not self._commits_checked and idle >= self.commit_check_after:
            self._commits_checked = await self._catch_up_commits()
        if idle < self.settings.stall_seconds:
            return
        if remaining is not None:
            # faust delivers no record before its table recovery ends; after a broker restart its consumer
            # can keep stale metadata and never fetch a changelog partition again (whose high watermark
            # it then does not know either, so ``remaining`` can read 0 while recovery waits for it)
            waiting = f"table recovery not ending, {remaining} changelog records known to be left"
        else:
            behind = await self._unread_partitions()
            if not behind:
                self._stall_strikes = 0
                self._last_progress = time.monotonic()
                return
            waiting = ", ".join(f"{tp.partition}: {next_offset}..{highwater - 1}"
                                for tp, next_offset, highwater in behind)
        self._stall_strikes += 1
        if self._stall_strikes == 1:
            log.warning("no progress for %.0fs with work waiting (%s): resuming the consumer",
                        self.settings.stall_seconds, waiting)
            self.metrics.stalls.inc()
            consumer = self.app.consumer
            consumer.resume_partitions(list(consumer.assignment()))
            consumer.resume_flow()
            self.app.flow_control.resume()
            self._last_progress = time.monotonic()
            return
        log.error("still no record after resuming (%s): exiting with %d so the supervisor restarts the worker",
                  waiting, EXIT_STALLED)
        logging.shutdown()
        os._exit(EXIT_STALLED)

    @property
    def commit_check_after(self) -> float:
        """Seconds without a record before an idle worker checks that Kafka holds its commits."""
        return max(3 * self.settings.commit_interval, 2 * WATCHDOG_INTERVAL)

    async def _catch_up_commits(self) -> bool:
        """Make Kafka hold the group's commit of every raw record this worker processed; True once it does.

        faust records a commit as done even when it failed (the group rebalancing or a broker restarting
        under it) and commits a partition again only after its next record. A partition whose last records
        came in just then keeps a commit behind what was processed for as long as it gets nothing new: its
        lag never reaches zero and a restart processes those records again. An idle worker therefore
        compares its next-offset marks with what Kafka holds and has faust commit the difference."""
        consumer = self.app.consumer
        marks = {}
        for tp in consumer.assignment():
            if tp.topic == self.topics.raw and (mark := self._next_offset(tp.partition)):
                marks[tp] = mark
        if not marks:
            return True
        progress = self._last_progress
        timeout = self.settings.output_timeout
        try:
            committed = await asyncio.wait_for(
                asyncio.to_thread(kafka_clients.committed_offsets, self.kafka, self.app.conf.id, self.topics.raw,
                                  timeout),
                timeout + 5)
        except Exception as error:  # brokers unreachable: check again on the next call
            log.info("watchdog: committed offsets unavailable (%s)", type(error).__name__)
            return False
        if self._handling or self._last_progress != progress:
            return False  # a record came in meanwhile: faust commits it, check again once idle
        assignment = consumer.assignment()
        behind = {tp: mark for tp, mark in marks.items()
                  if tp in assignment and committed.get(tp.partition, -1) < mark}
        for tp, mark in behind.items():
            held = committed.get(tp.partition)
            log.warning("raw partition %s[%d] is processed up to offset %d but Kafka holds the commit at %s: "
                        "committing it again", tp.topic, tp.partition, mark, held)
            await faust_fixes.recommit(consumer, tp, held, mark)
        if not behind:
            return True
        self.metrics.recommits.inc(len(behind))
        await consumer.commit()
        return False  # seen in Kafka on the next call

    def _recovery_remaining(self) -> int | None:
        """Changelog records faust's table recovery still has to read; None when it is not recovering."""
        recovery = getattr(getattr(self.app, "tables", None), "recovery", None)
        if recovery is None or not getattr(recovery, "in_recovery", False):
            return None
        try:
            return int(recovery.active_remaining_total())
        except Exception:  # highwaters not known yet
            return None

    async def _unread_partitions(self) -> list[tuple[Any, int, int]]:
        """(tp, next offset, high watermark) of the assigned raw partitions with records not processed."""
        consumer = self.app.consumer
        assigned = [tp for tp in consumer.assignment() if tp.topic == self.topics.raw]
        if not assigned:
            return []
        next_offsets = {tp: self._next_offset(tp.partition) for tp in assigned}
        never_processed = [tp for tp, next_offset in next_offsets.items() if next_offset is None]
        try:
            highwaters = await asyncio.wait_for(consumer.highwaters(*assigned), self.settings.output_timeout)
            if never_processed:
                # every processed record leaves a next-offset mark: without one, nothing was ever processed
                earliest = await asyncio.wait_for(consumer.earliest_offsets(*never_processed),
                                                  self.settings.output_timeout)
                next_offsets.update({tp: earliest.get(tp) for tp in never_processed})
        except Exception as error:  # brokers unreachable: not a stall of this worker
            log.info("watchdog: offsets unavailable (%s)", type(error).__name__)
            return []
        behind = []
        for tp in assigned:
            next_offset = next_offsets[tp]
            highwater = highwaters.get(tp)
            if next_offset is not None and highwater is not None and highwater > next_offset:
                behind.append((tp, next_offset, highwater))
        return behind

    async def _handle_record(self, partition: int, offset: int, value: bytes | None,
                             shipped_at: float | None) -> None:
        result = self.pipeline.process(value, partition, shipped_at)
        try:
            await self._write_outputs(result, partition)
        except BaseException:
            self.pipeline.discard()  # cancelled (shutdown): the record is processed again on restart
            raise
        trimmed_before = self.pipeline.trimmed_states
        for key, encoded in self.pipeline.commit(partition):
            if encoded is not None:
                self.table[key] = encoded
            elif key in self.table:
                del self.table[key]
        next_offset = max(offset + 1, self._next_offset(partition) or 0)
        self.table[next_offset_key(partition)] = encode_value(partition, NEVER, next_offset)
        self.metrics.observe(result)
        self.metrics.trimmed_states.inc(self.pipeline.trimmed_states - trimmed_before)
        self._sweep(partition)

    def _next_offset(self, partition: int) -> int | None:
        """The raw-topic offset after the last record of this partition whose state was committed.

        Read from the table every time, never cached: another worker may have owned the partition since
        (a cached mark from before a rebalance made every later record look like a hole)."""
        raw = self.table.get(next_offset_key(partition))
        return None if raw is None else int(raw[decode_header(raw)[2]:])

    async def _fill_hole(self, tp: Any, start: int, end: int) -> None:
        """Process raw records ``start`` to ``end - 1`` that faust did not deliver to the agent.

        faust can drop a fetched record while its flow is suspended for a rebalance and then commit
        past a one-record hole (faust #606, #313: its gap check only refuses holes wider than one). Our
        own next-offset mark, committed with the state, shows the hole; the records are read directly.
        """
        log.warning("raw records %s[%d] %d..%d were not delivered by faust: reading them directly",
                    tp.topic, tp.partition, start, end - 1)
        position, fruitless = start, 0
        while position < end:
            reached = await self._read_directly(tp, position, end)
            fruitless = 0 if reached > position else fruitless + 1
            position = reached
            if fruitless >= DIRECT_READ_ATTEMPTS:
                log.error("raw records %s[%d] %d..%d stay unreadable after %d fresh consumers: exiting with %d so "
                          "the supervisor restarts the worker", tp.topic, tp.partition, position, end - 1,
                          fruitless, EXIT_STALLED)
                logging.shutdown()
                os._exit(EXIT_STALLED)
        # faust never saw these offsets, so it holds its commit below them for good (it refuses to commit
        # past a hole wider than one record): hand them to it as a gap, as it does for offsets it skips
        add_gap = getattr(self.app.consumer, "_add_gap", None)
        if add_gap is not None:
            await add_gap(tp, start, end - 1)

    async def _read_directly(self, tp: Any, start: int, end: int) -> int:
        """Handle raw records from ``start`` up to ``end``; returns the next offset to read. Gives up (so
        the caller starts a fresh consumer) when no record arrives for ``output_timeout`` seconds: a
        consumer can keep stale metadata for good after a broker restart."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(**self.kafka.aiokafka_config(), group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        position = start
        stalled_since = time.monotonic()
        try:
            await asyncio.wait_for(consumer.start(), self.settings.output_timeout)
            partition = TopicPartition(tp.topic, tp.partition)
            consumer.assign([partition])
            consumer.seek(partition, start)
            while position < end:
                self._beat = time.monotonic()
                batches = await consumer.getmany(partition, timeout_ms=2000, max_records=500)
                messages = [m for m in batches.get(partition, []) if m.offset < end]
                if not batches:
                    if await consumer.position(partition) >= end:
                        return end
                    if time.monotonic() - stalled_since > self.settings.output_timeout:
                        log.warning("direct read of %s[%d] at %d made no progress for %.0fs: reconnecting",
                                    tp.topic, tp.partition, position, self.settings.output_timeout)
                        return position
                    continue
                for record in messages:
                    shipped_at = record_seconds(record.timestamp)
                    await self._handle_record(tp.partition, record.offset, record.value, shipped_at)
                    self.metrics.refetched.inc()
                position = max(position, await consumer.position(partition))
                stalled_since = time.monotonic()
            return position
        except TimeoutError:
            log.warning("direct read of %s[%d]: could not connect within %.0fs: retrying",
                        tp.topic, tp.partition, self.settings.output_timeout)
            return position
        finally:
            await consumer.stop()

    async def _write_outputs(self, result: BatchResult, partition: int) -> None:
        if result.empty:
            return
        failures = 0
        while True:
            self._beat = time.monotonic()
            try:
                timeout = self.settings.output_timeout
                if result.events or result.lines:
                    with self.metrics.redis_write_seconds.time():
                        await asyncio.wait_for(self.redis_writer.write(result.events, result.lines), timeout)
                await asyncio.wait_for(self._publish(result, partition), timeout)
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

    running: list[RecordProcessor] = []

    async def process_raw(stream: Any) -> None:
        processor = await make_processor()
        running.append(processor)
        async for event in stream.events():
            await processor.handle(event)

    @app.timer(interval=WATCHDOG_INTERVAL)
    async def watchdog() -> None:
        for processor in running:
            await processor.watchdog()

    return app.agent(raw_topic, name="trackdelivery.process_raw", concurrency=1)(process_raw)
