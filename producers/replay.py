"""Backfill: send whole old log files (plain or gzip) with the same records the live shipper makes.

Records carry the same file identity and offsets as the live shipper's, so consumers drop lines that
were already shipped. No checkpoint is written.
"""

from __future__ import annotations

import gzip
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from kafka.errors import KafkaError

from producers.settings import ShipperSettings
from producers.shipper import encode_chunk, make_producer, split_chunk
from producers.tail.fingerprint import FINGERPRINT_BYTES, GZIP_MAGIC, fingerprint_bytes
from producers.tail.reader import LineSplitter
from producers.tail.types import Chunk

READ_BYTES = 4 << 20
MAX_PENDING_BYTES = 16 << 20  # records handed to the producer and not acknowledged yet
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
    producer = make_producer(settings, max_block_ms=60_000, bootstrap_timeout_ms=30_000,
                             delivery_timeout_ms=120_000)
    key = settings.server.encode()

    pending = _Pending(MAX_PENDING_BYTES)

    def failed(error: BaseException) -> None:
        result.failed += 1
        if len(result.errors) < 5:
            result.errors.append(repr(error))

    def send(chunk: Chunk) -> None:
        for piece in split_chunk(chunk, settings.record_bytes):
            value = encode_chunk(settings.server, piece)
            pending.add(len(value))
            future = producer.send(settings.topic, key=key, value=value)
            future.add_both(pending.done, len(value))
            future.add_errback(failed)
            result.records += 1
            result.lines += len(piece.lines)

    try:
        for path in paths:
            identity = file_identity(path)
            splitter = LineSplitter(identity, str(path), 0, settings.max_line_bytes)
            with open(path, "rb") as raw:
                compressed = raw.read(2) == GZIP_MAGIC
                raw.seek(0)
                stream: BinaryIO = gzip.GzipFile(fileobj=raw) if compressed else raw  # type: ignore[assignment]
                done = 0
                while data := stream.read(READ_BYTES):
                    chunk = splitter.consume(data)
                    if chunk is not None:
                        send(chunk)
                    if progress is not None:
                        position = raw.tell()
                        progress(position - done)
                        done = position
            tail = splitter.finish()
            if tail is not None:
                send(tail)
            result.files += 1
        producer.flush()
    except KafkaError as error:
        failed(error)
    finally:
        producer.close(timeout=10)
    return result


class _Pending:
    """Blocks the reader while too many bytes wait for Kafka (kafka-python buffers without limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0
        self._condition = threading.Condition()

    def add(self, size: int) -> None:
        with self._condition:
            self._condition.wait_for(lambda: self.bytes < self.limit)
            self.bytes += size

    def done(self, size: int, _result: object) -> None:
        with self._condition:
            self.bytes -= size
            self._condition.notify()


def input_size(path: Path) -> int:
    return os.stat(path).st_size


def _open(path: Path) -> BinaryIO:
    with open(path, "rb") as probe:
        compressed = probe.read(2) == GZIP_MAGIC
    return gzip.open(path, "rb") if compressed else open(path, "rb")  # type: ignore[return-value]
