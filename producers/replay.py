"""Backfill: send whole old log files (plain or gzip) with the same records the live shipper makes.

Records carry the same file identity and offsets as the live shipper's, so consumers drop lines that
were already shipped. No checkpoint is written.
"""

from __future__ import annotations

import gzip
import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from producers.encoding import encode_pieces
from producers.kafka import CONFIGURATION_ERRORS, KafkaError, KafkaException, Producer, discard, make_producer
from producers.settings import ShipperSettings
from producers.tail.fingerprint import FINGERPRINT_BYTES, GZIP_MAGIC, fingerprint_bytes
from producers.tail.reader import LineSplitter
from producers.tail.types import Chunk

READ_BYTES = 4 << 20
# Records handed to the producer and not acknowledged yet. About what librdkafka keeps in flight (five
# produce requests of up to 960 KiB): more only queues records behind the in-flight limit, and a queued
# record whose linger has expired makes librdkafka's broker thread spin until a request completes
# (measured: 16 MiB cost a fifth more CPU than 4 MiB, for no gain in throughput).
MAX_PENDING_BYTES = 4 << 20
CONNECT_TIMEOUT_S = 30.0
Progress = Callable[[int], None]  # bytes of input consumed (compressed bytes for gzip files)


@dataclass(slots=True)
class ReplayResult:
    files: int = 0
    lines: int = 0
    records: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def file_identity(path: Path) -> str:
    with _open(path) as handle:
        head = handle.read(FINGERPRINT_BYTES)
    identity = fingerprint_bytes(head, complete=True)
    if identity is None:
        raise ValueError(f"{path} is empty")
    return identity


def replay_files(settings: ShipperSettings, paths: list[Path], progress: Progress | None = None) -> ReplayResult:
    result = ReplayResult()

    def failed(error: object) -> None:
        result.failed += 1
        if len(result.errors) < 5:
            result.errors.append(str(error))

    fatal: list[KafkaError] = []

    def on_error(error: KafkaError) -> None:
        if error.fatal() or error.code() in CONFIGURATION_ERRORS:
            fatal.append(error)

    producer = make_producer(settings, error_cb=on_error, **{"message.timeout.ms": 120_000})
    pending = _Pending(producer, MAX_PENDING_BYTES, failed)
    try:
        _check_topic(producer, settings.topic, fatal)
        key, topic, server = settings.server.encode(), settings.topic, settings.server

        def send(chunk: Chunk) -> None:
            for piece, value in encode_pieces(server, chunk, settings.record_bytes):
                pending.wait_below_limit()
                if fatal:
                    raise KafkaException(fatal[0])
                producer.produce(topic, value, key, on_delivery=pending.delivered(len(value)))
                producer.poll(0)
                result.records += 1
                result.lines += piece.line_count

        for path in paths:
            identity = file_identity(path)
            splitter = LineSplitter(identity, str(path), 0, settings.max_line_bytes)
            with open(path, "rb", buffering=0) as raw:
                compressed = raw.read(2) == GZIP_MAGIC
                raw.seek(0)
                stream: io.RawIOBase | gzip.GzipFile = gzip.GzipFile(fileobj=raw) if compressed else raw
                done = 0
                while True:
                    chunk, read = splitter.fill(stream.readinto, READ_BYTES)
                    if not read:
                        break
                    if chunk is not None:
                        send(chunk)  # encodes the chunk now: the splitter reuses its buffer
                    if progress is not None:
                        position = raw.tell()
                        progress(position - done)
                        done = position
            tail = splitter.finish()
            if tail is not None:
                send(tail)
            result.files += 1
        producer.flush()
        for error in fatal:
            failed(error)
    except (KafkaException, BufferError) as error:
        failed(error)
    finally:
        discard(producer)
    return result


def _check_topic(producer: Producer, topic: str, fatal: list[KafkaError]) -> None:
    """Fail at once when Kafka cannot be reached, refuses the credentials, or has no such topic
    (librdkafka would keep the records until they time out).

    The topic's metadata is asked for twice: the first answer may come from the bootstrap connection,
    which librdkafka then drops; the second comes from the broker itself, and an answer from a connected
    broker is what starts the idempotent producer's request for its producer id. Measured: without it,
    one start in six sent nothing for 0.5 s (librdkafka's retry interval for that request).
    """
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    answers = 0
    while answers < 2:
        try:
            metadata = producer.list_topics(topic, timeout=1.0)
        except KafkaException:
            producer.poll(0)  # serves the client errors (error_cb)
            if fatal:
                raise KafkaException(fatal[0]) from None
            if time.monotonic() >= deadline:
                raise
            continue
        answers += 1
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        raise KafkaException(found.error if found is not None else f"topic {topic} not found")


class _Pending:
    """Bytes handed to librdkafka and not acknowledged yet; the reader waits while there are too many."""

    def __init__(self, producer: Producer, limit: int, failed: Callable[[object], None]) -> None:
        self.producer = producer
        self.limit = limit
        self.bytes = 0
        self._failed = failed

    def delivered(self, size: int) -> Callable[[Any, Any], None]:
        self.bytes += size

        def report(error: Any, _message: Any) -> None:
            self.bytes -= size
            if error is not None:
                self._failed(error)

        return report

    def wait_below_limit(self) -> None:
        while self.bytes >= self.limit:
            self.producer.poll(0.1)  # serves delivery reports


def input_size(path: Path) -> int:
    return os.stat(path).st_size


def _open(path: Path) -> BinaryIO:
    with open(path, "rb") as probe:
        compressed = probe.read(2) == GZIP_MAGIC
    return gzip.open(path, "rb") if compressed else open(path, "rb")  # type: ignore[return-value]
