"""Kafka glue: chunks from the tail engine become records; checkpoints follow Kafka's acknowledgements.

Memory is bounded by ``batch_bytes``: the shipper stops reading while that many bytes are read but not
yet in a saved checkpoint, which also bounds the duplicates a crash can cause. When Kafka fails, the
producer is rebuilt and every unacknowledged record is sent again, in order (nothing is dropped).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from producers.heartbeat import Heartbeat
from producers.settings import ShipperSettings
from producers.tail import Checkpointer, Chunk, TailEngine, Ticket
from trackdelivery.records import encode_batch

if TYPE_CHECKING:
    from producers.metrics import ShipperMetrics

log = logging.getLogger(__name__)

RECONNECT_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)


def use_compiled_crc32c() -> bool:
    """Give kafka-python the compiled CRC32C that aiokafka (a project dependency) ships.

    Without the optional ``crc32c`` package kafka-python checksums every record batch in pure Python,
    about 0.1 s of CPU per compressed MiB sent: measured, half of a replay's CPU time.
    """
    try:
        from aiokafka.record._crecords.cutil import crc32c_cython
        from kafka.record import default_records
        from kafka.record.util import crc32c_c
    except ImportError:
        return False
    if crc32c_c is None and crc32c_cython(b"123456789") == 0xE3069283:
        default_records.calc_crc32c = crc32c_cython
        return True
    return False


def make_producer(settings: ShipperSettings, **overrides: Any) -> KafkaProducer:
    """The producer both ``ship`` and ``replay`` use: acks from all replicas, idempotent, compressed."""
    use_compiled_crc32c()
    config: dict[str, Any] = {
        **settings.kafka_settings().kafka_python_config(),  # brokers, TLS and SASL
        "client_id": f"trackdelivery-shipper-{settings.server}",
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": None if settings.compression == "none" else settings.compression,
        "linger_ms": settings.linger_ms,
        # Fewer, larger produce requests: a batch stays below the broker's default 1 MiB message.max.bytes
        # even if nothing compresses.
        "batch_size": 960 << 10,
        "max_request_size": 4 << 20,
        "delivery_timeout_ms": settings.delivery_timeout_ms,
        "request_timeout_ms": min(30_000, settings.delivery_timeout_ms // 2),
        "max_block_ms": 2_000,
        "bootstrap_timeout_ms": 5_000,
        "reconnect_backoff_max_ms": 1_000,
    }
    config.update(overrides)
    return KafkaProducer(**config)


def split_chunk(chunk: Chunk, record_bytes: int) -> Iterator[Chunk]:
    """Consecutive pieces of ``chunk`` of about ``record_bytes`` of lines each (at least one line)."""
    offsets, count = chunk.offsets, len(chunk.offsets)
    first = 0
    while first < count:
        last = max(first + 1, bisect.bisect_left(offsets, offsets[first] + record_bytes, first))
        end = offsets[last] if last < count else chunk.end
        truncated = [o for o in chunk.truncated if offsets[first] <= o < end] if chunk.truncated else []
        yield Chunk(chunk.file_id, chunk.path, offsets[first:last], chunk.lines[first:last], end, truncated,
                    final=chunk.final and last == count)
        first = last


def encode_chunk(server: str, chunk: Chunk) -> bytes:
    return encode_batch(server, chunk.file_id, chunk.path, chunk.offsets, chunk.lines, chunk.end,
                        chunk.truncated or None)


@dataclass(slots=True)
class OutRecord:
    seq: int
    value: bytes
    ticket: Ticket
    lines: int
    nbytes: int


class Shipper:
    def __init__(self, settings: ShipperSettings, metrics: ShipperMetrics | None = None,
                 producer_factory: Callable[[ShipperSettings], KafkaProducer] = make_producer) -> None:
        from producers.metrics import LoggingTailEvents, ShipperMetrics  # not needed by replay

        self.settings = settings
        self.metrics = metrics or ShipperMetrics()
        self._producer_factory = producer_factory
        self._key = settings.server.encode()
        self.checkpointer = Checkpointer(settings.checkpoint_dir)
        self.checkpointer.load()
        self.engine = TailEngine(
            settings.paths, self.checkpointer.known_files(), start=settings.start_position,
            max_line_bytes=settings.max_line_bytes, rotate_wait=settings.rotate_wait,
            scan_interval=settings.scan_interval, read_bytes=min(1 << 20, settings.batch_bytes),
            include_rotated=settings.include_rotated, events=LoggingTailEvents(self.metrics),
        )
        self._producer: KafkaProducer | None = None
        self._generation = 0
        self._seq = itertools.count()
        self._outbox: deque[OutRecord] = deque()
        self._inflight: dict[int, OutRecord] = {}
        self._acks: queue.SimpleQueue[tuple[int, OutRecord, BaseException | None]] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._unsaved_bytes = 0  # read, not yet covered by a saved checkpoint
        self._acked_unsaved_bytes = 0
        self._failures = 0
        self._next_connect = 0.0
        self._next_gauges = 0.0
        self.heartbeat = Heartbeat(settings.server, settings.heartbeat_topic, settings.heartbeat_interval)

    # -- main loop ------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        log.info("shipper started", extra={"server": self.settings.server, "paths": self.settings.paths,
                                           "topic": self.settings.topic, "known_files": len(self.checkpointer.state)})
        try:
            while not stop.is_set():
                self._wakeup.clear()
                self.step()
                if not self._outbox and self._unsaved_bytes < self.settings.batch_bytes:
                    chunks = self.engine.poll(self.settings.batch_bytes - self._unsaved_bytes)
                    if chunks:
                        self._enqueue(chunks)
                        continue
                else:
                    self.engine.maybe_scan()
                self._wakeup.wait(self.settings.poll_interval)
        finally:
            self.shutdown()

    def step(self) -> None:
        """Handle acknowledgements, save the checkpoint, send what waits; never blocks for long."""
        self._process_acks()
        self._save_checkpoint()
        if self._producer is None and time.monotonic() >= self._next_connect:
            self._connect()
        if self._producer is not None:
            self._send_outbox()
        now = time.monotonic()
        if self._producer is not None and self.heartbeat.due(now):
            self.heartbeat.send(self._producer, self.engine.bytes_behind() + self._unsaved_bytes, now=now)
        if now >= self._next_gauges:
            self._next_gauges = now + 1.0
            self.metrics.bytes_behind.set(self.engine.bytes_behind() + self._unsaved_bytes)
            self.metrics.files_open.set(len(self.engine.readers))

    def shutdown(self) -> None:
        """Flush what was read, wait for acknowledgements, write a final checkpoint."""
        deadline = time.monotonic() + self.settings.shutdown_timeout
        while (self._outbox or self._inflight) and time.monotonic() < deadline:
            self.step()
            if self._producer is not None and self._inflight and not self._outbox:
                with contextlib.suppress(KafkaError):
                    self._producer.flush(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
            else:
                self._wakeup.wait(0.1)
        self._process_acks()
        self._save_checkpoint()
        if self._producer is not None:
            if self.heartbeat.interval > 0:
                self.heartbeat.send(self._producer, self.engine.bytes_behind(), stopping=True)
            self._producer.close(timeout=1)
        self.engine.close()
        log.info("shipper stopped", extra={"unacknowledged_records": len(self._outbox) + len(self._inflight)})

    # -- internals ------------------------------------------------------------------------------------

    def _enqueue(self, chunks: list[Chunk]) -> None:
        server = self.settings.server
        lines = 0
        for chunk in chunks:
            if not chunk.lines:  # start offset or end of a file: nothing to send, keep checkpoint order
                self.checkpointer.ack(self.checkpointer.track(chunk))
                continue
            for piece in split_chunk(chunk, self.settings.record_bytes):
                self._outbox.append(OutRecord(next(self._seq), encode_chunk(server, piece),
                                              self.checkpointer.track(piece), len(piece.lines), piece.byte_size))
                self._unsaved_bytes += piece.byte_size
                lines += len(piece.lines)
        self.metrics.lines_read.inc(lines)
        if self._producer is not None:
            self._send_outbox()

    def _connect(self) -> None:
        try:
            self._producer = self._producer_factory(self.settings)
        except (KafkaError, OSError) as error:
            self._backoff(f"cannot connect to Kafka: {error!r}")

    def _send_outbox(self) -> None:
        assert self._producer is not None
        generation = self._generation
        while self._outbox:
            record = self._outbox[0]
            try:
                future = self._producer.send(self.settings.topic, key=self._key, value=record.value)
            except KafkaError as error:  # metadata or buffer unavailable: Kafka is not answering
                self._reset(f"send failed: {error!r}")
                return
            self._outbox.popleft()
            self._inflight[record.seq] = record
            future.add_callback(self._on_ack, generation, record)
            future.add_errback(self._on_error, generation, record)
            self.metrics.records_sent.inc()

    def _on_ack(self, generation: int, record: OutRecord, _metadata: object) -> None:
        self._acks.put((generation, record, None))
        self._wakeup.set()

    def _on_error(self, generation: int, record: OutRecord, error: BaseException) -> None:
        self._acks.put((generation, record, error))
        self._wakeup.set()

    def _process_acks(self) -> None:
        failure: BaseException | None = None
        acked_lines = 0
        while True:
            try:
                generation, record, error = self._acks.get_nowait()
            except queue.Empty:
                break
            if generation != self._generation or record.seq not in self._inflight:
                continue  # from a producer we already replaced; the record was queued again
            if error is not None:
                failure = failure or error
                continue
            del self._inflight[record.seq]
            self.checkpointer.ack(record.ticket)
            self._acked_unsaved_bytes += record.nbytes
            acked_lines += record.lines
        if acked_lines:
            self.metrics.lines_acked.inc(acked_lines)
            self.metrics.kafka_up.set(1)
            self._failures = 0
        if failure is not None:
            self._reset(f"delivery failed: {failure!r}")

    def _reset(self, reason: str) -> None:
        """Drop the producer and queue every unacknowledged record again, in order."""
        self.metrics.kafka_errors.inc()
        producer, self._producer = self._producer, None
        self._generation += 1
        if self._inflight:
            self._outbox.extendleft(sorted(self._inflight.values(), key=lambda r: r.seq, reverse=True))
            self._inflight.clear()
        if producer is not None:
            with contextlib.suppress(KafkaError):
                producer.close(timeout=0)
        self._backoff(reason)

    def _backoff(self, reason: str) -> None:
        delay = RECONNECT_BACKOFF_S[min(self._failures, len(RECONNECT_BACKOFF_S) - 1)]
        self._failures += 1
        self._next_connect = time.monotonic() + delay
        self.metrics.kafka_up.set(0)
        log.warning("Kafka unavailable, reading paused", extra={
            "reason": reason, "retry_in_s": delay, "waiting_records": len(self._outbox)})

    def _save_checkpoint(self) -> None:
        if self.checkpointer.save_if_dirty(active=self.engine.readers.keys()):
            self.metrics.checkpoints.inc()
            self._unsaved_bytes = max(0, self._unsaved_bytes - self._acked_unsaved_bytes)
            self._acked_unsaved_bytes = 0
