"""Kafka glue: chunks from the tail engine become records; checkpoints follow Kafka's acknowledgements.

Memory is bounded by ``batch_bytes``: the shipper stops reading while that many bytes are read but not
yet in a saved checkpoint, which also bounds the duplicates a crash can cause. When Kafka fails, the
producer is dropped and every unacknowledged record is sent again by a new one, in order (nothing is
dropped). Acknowledgements are librdkafka's delivery reports, served by ``poll`` on this thread.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from producers.encoding import encode_chunk, encode_pieces, split_chunk
from producers.heartbeat import Heartbeat
from producers.kafka import KafkaError, KafkaException, Producer, discard, make_producer
from producers.settings import ShipperSettings
from producers.tail import Checkpointer, Chunk, TailEngine, Ticket

if TYPE_CHECKING:
    import threading

    from producers.metrics import ShipperMetrics

log = logging.getLogger(__name__)

RECONNECT_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)

__all__ = ["Shipper", "encode_chunk", "encode_pieces", "split_chunk"]


@dataclass(slots=True)
class OutRecord:
    seq: int
    value: bytes
    ticket: Ticket
    lines: int
    nbytes: int


class Shipper:
    def __init__(self, settings: ShipperSettings, metrics: ShipperMetrics | None = None,
                 producer_factory: Callable[..., Producer] = make_producer) -> None:
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
        self._producer: Producer | None = None
        self._generation = 0
        self._seq = itertools.count()
        self._outbox: deque[OutRecord] = deque()
        self._inflight: dict[int, OutRecord] = {}
        self._acks: list[tuple[int, OutRecord, KafkaError | None]] = []  # filled by delivery reports (poll)
        self._fatal: KafkaError | None = None
        self._reported_errors: set[int] = set()
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
                self.step()
                if not self._outbox and self._unsaved_bytes < self.settings.batch_bytes:
                    chunks = self.engine.poll(self.settings.batch_bytes - self._unsaved_bytes)
                    if chunks:
                        self._enqueue(chunks)
                        continue
                else:
                    self.engine.maybe_scan()
                if self._producer is not None and self._inflight:
                    self._producer.poll(self.settings.poll_interval)  # returns early on a delivery report
                else:
                    stop.wait(self.settings.poll_interval)
        finally:
            self.shutdown()

    def step(self) -> None:
        """Handle acknowledgements, save the checkpoint, send what waits; never blocks for long."""
        if self._producer is not None:
            self._producer.poll(0)
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
            remaining = max(0.0, min(1.0, deadline - time.monotonic()))
            if self._producer is not None and self._inflight and not self._outbox:
                self._producer.flush(remaining)  # sends at once (no linger), serves the delivery reports
            else:
                time.sleep(min(0.1, remaining))
        if self._producer is not None:
            self._producer.poll(0)
        self._process_acks()
        self._save_checkpoint()
        producer, self._producer = self._producer, None
        if producer is not None:
            if self.heartbeat.interval > 0:
                self.heartbeat.send(producer, self.engine.bytes_behind(), stopping=True)
                producer.flush(1.0)
            discard(producer)
        self.engine.close()
        log.info("shipper stopped", extra={"unacknowledged_records": len(self._outbox) + len(self._inflight)})

    # -- internals ------------------------------------------------------------------------------------

    def _enqueue(self, chunks: list[Chunk]) -> None:
        server = self.settings.server
        lines = 0
        for chunk in chunks:
            if not chunk.has_lines:  # start offset or end of a file: nothing to send, keep checkpoint order
                self.checkpointer.ack(self.checkpointer.track(chunk))
                continue
            for piece, value in encode_pieces(server, chunk, self.settings.record_bytes):
                count = piece.line_count
                self._outbox.append(OutRecord(next(self._seq), value, self.checkpointer.track(piece), count,
                                              piece.byte_size))
                self._unsaved_bytes += piece.byte_size
                lines += count
        self.metrics.lines_read.inc(lines)
        if self._producer is not None:
            self._send_outbox()

    def _connect(self) -> None:
        try:
            self._producer = self._producer_factory(self.settings, error_cb=self._on_error)
        except (KafkaException, ValueError, TypeError) as error:
            self._backoff(f"cannot create the Kafka producer: {error!r}")

    def _send_outbox(self) -> None:
        producer = self._producer
        assert producer is not None
        generation = self._generation
        topic, key = self.settings.topic, self._key
        while self._outbox:
            record = self._outbox[0]
            try:
                producer.produce(topic, record.value, key, on_delivery=partial(self._on_delivery, generation, record))
            except BufferError:  # librdkafka's own queue is full: send the rest after some deliveries
                return
            except KafkaException as error:  # e.g. a fatal error of the idempotent producer
                self._reset(f"send failed: {error!r}")
                return
            self._outbox.popleft()
            self._inflight[record.seq] = record
            self.metrics.records_sent.inc()

    def _on_delivery(self, generation: int, record: OutRecord, error: KafkaError | None, _message: Any) -> None:
        self._acks.append((generation, record, error))

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka's client-level errors: it retries transient ones itself; a fatal one ends the producer.
        Each kind is logged once until Kafka acknowledges again (a refused password, a broker down)."""
        if error.fatal():
            self._fatal = error
        elif error.code() not in self._reported_errors:
            self._reported_errors.add(error.code())
            log.warning("Kafka client error", extra={"error": str(error)})

    def _process_acks(self) -> None:
        failure: object = None
        acked_lines = 0
        acks, self._acks = self._acks, []
        for generation, record, error in acks:
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
            self._reported_errors.clear()
        if self._fatal is not None:
            failure, self._fatal = self._fatal, None
        if failure is not None:
            self._reset(f"delivery failed: {failure}")

    def _reset(self, reason: str) -> None:
        """Drop the producer and queue every unacknowledged record again, in order."""
        self.metrics.kafka_errors.inc()
        producer, self._producer = self._producer, None
        self._generation += 1
        if self._inflight:
            self._outbox.extendleft(sorted(self._inflight.values(), key=lambda r: r.seq, reverse=True))
            self._inflight.clear()
        if producer is not None:
            discard(producer)  # its purged records report failures for the old generation: ignored
        self._acks.clear()
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
