"""Blocking Kafka helpers for commands, tests and benches: topic metadata, offsets, group state, reading a
topic to its end and producing a batch — all through librdkafka (confluent-kafka).

librdkafka owns its sockets in C threads and closes them when the handle is closed or destroyed, so a
short-lived client here never leaves a Python socket behind for the garbage collector (kafka-python 3's
transport closes a socket with pending writes only on a later loop turn, which a closed client never runs).
The streaming paths use their own clients: the shipper confluent-kafka's ``Producer`` (producers/kafka.py),
the processors aiokafka through faust.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from trackdelivery.settings import KafkaSettings, as_kafka_settings

__all__ = ["KafkaException", "Record", "admin_client", "committed_offsets", "end_offsets", "group_members",
           "partition_count", "produce", "read_topic"]

_QUIET = {"log_level": 3}  # errors only: a broker that is not up yet is retried by the callers


@dataclass(frozen=True, slots=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes


def _config(kafka: str | KafkaSettings, **extra: Any) -> dict[str, Any]:
    return {**as_kafka_settings(kafka).librdkafka_config(), **_QUIET, **extra}


def admin_client(kafka: str | KafkaSettings, **extra: Any) -> AdminClient:
    return AdminClient(_config(kafka, **extra))


def _reader(kafka: str | KafkaSettings, group: str | None = None, extra: dict[str, Any] | None = None) -> Consumer:
    # A group id is mandatory for librdkafka's consumer even when it only assigns partitions; a fresh one
    # never commits (auto commit off) and never joins a group (no subscribe).
    return Consumer(_config(kafka, **{"group.id": group or f"trackdelivery-reader-{uuid.uuid4().hex}",
                                      "enable.auto.commit": False, "enable.partition.eof": False, **(extra or {})}))


def partition_count(kafka: str | KafkaSettings, topic: str, timeout: float = 10.0) -> int:
    """Partitions of ``topic`` (0 when it does not exist). Raises ``KafkaException`` when no broker answers."""
    metadata = admin_client(kafka).list_topics(topic=topic, timeout=timeout)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        return 0
    return len(found.partitions)


def end_offsets(kafka: str | KafkaSettings, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """The high watermark of each partition of ``topic``. A retriable error (a partition whose leader is
    moving or not yet elected, as after the topic was just created) is retried until ``timeout``."""
    consumer = _reader(kafka)
    deadline = time.monotonic() + timeout
    try:
        metadata = consumer.list_topics(topic=topic, timeout=timeout)
        partitions = sorted(metadata.topics[topic].partitions) if topic in metadata.topics else []
        return {p: _high_watermark(consumer, TopicPartition(topic, p), deadline) for p in partitions}
    finally:
        consumer.close()


_LEADER_MOVING = frozenset(
    {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART}
)


def _high_watermark(consumer: Consumer, partition: TopicPartition, deadline: float) -> int:
    while True:
        try:
            return int(consumer.get_watermark_offsets(partition, timeout=max(deadline - time.monotonic(), 0.1))[1])
        except KafkaException as error:
            kafka_error = error.args[0] if error.args else None
            retriable = isinstance(kafka_error, KafkaError) and (
                kafka_error.retriable() or kafka_error.code() in _LEADER_MOVING
            )
            if not retriable or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def committed_offsets(kafka: str | KafkaSettings, group: str, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """The offsets ``group`` committed on each partition of ``topic`` (partitions it never committed: absent).

    Asked through a consumer configured with the group's id that never subscribes, so the group is not joined.
    """
    consumer = _reader(kafka, group)
    try:
        metadata = consumer.list_topics(topic=topic, timeout=timeout)
        partitions = sorted(metadata.topics[topic].partitions) if topic in metadata.topics else []
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout)
        return {tp.partition: tp.offset for tp in committed if tp.offset >= 0}
    finally:
        consumer.close()


def group_members(kafka: str | KafkaSettings, group: str, timeout: float = 10.0) -> tuple[str, int]:
    """``(state, members)`` of a consumer group, the state as Kafka names it (``STABLE``, ``EMPTY``…)."""
    admin = admin_client(kafka)  # referenced until the answer is in: a destroyed client never completes it
    description = admin.describe_consumer_groups([group], request_timeout=timeout)[group].result(timeout=timeout)
    return description.state.name, len(description.members)


def read_topic(kafka: str | KafkaSettings, topic: str, timeout: float = 120.0,
               fetch_bytes: int = 8 << 20) -> Iterator[Record]:
    """Every record of ``topic`` up to the end it had when called, partition by partition in offset order.

    A partition is done at its first record at or past that end, or at the end of what it holds (offsets
    without a record, compacted away or taken by transaction markers, never arrive)."""
    ends = end_offsets(kafka, topic)
    consumer = _reader(kafka, extra={"max.partition.fetch.bytes": fetch_bytes,
                                     "fetch.max.bytes": max(fetch_bytes, 50 << 20),
                                     "enable.partition.eof": True})
    try:
        for partition, end in ends.items():
            if end <= 0:
                continue
            consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
            deadline = time.monotonic() + timeout
            position, at_end = -1, False
            while position + 1 < end and not at_end:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not read {topic}[{partition}] to offset {end}")
                for message in consumer.consume(num_messages=2000, timeout=1.0):
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            at_end = True
                            continue
                        raise KafkaException(error)
                    position = message.offset() or 0
                    if position < end:
                        yield Record(partition, position, message.key(), message.value() or b"")
            consumer.unassign()
    finally:
        consumer.close()


def produce(kafka: str | KafkaSettings, topic: str,
            records: Iterable[tuple[bytes | None, bytes] | tuple[bytes | None, bytes, int]],
            timeout: float = 300.0, **extra: Any) -> int:
    """Send ``(key, value)`` records (``(key, value, partition)`` to choose the partition) and wait until
    Kafka acknowledged every one; returns how many.

    Raises ``KafkaException`` with the first delivery error (nothing is silently dropped).
    """
    failures: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            failures.append(error)

    producer = Producer(_config(kafka, **{"linger.ms": 20, "message.max.bytes": 8 << 20,
                                          "partitioner": "murmur2_random", **extra}))
    count = 0
    for record in records:
        key, value = record[0], record[1]
        partition = record[2] if len(record) > 2 else -1  # -1: the partitioner's choice
        while True:
            try:
                producer.produce(topic, value=value, key=key, partition=partition, on_delivery=delivered)
                break
            except BufferError:  # local queue full: let librdkafka send some
                producer.poll(0.1)
        producer.poll(0)
        count += 1
    remaining = producer.flush(timeout)
    if remaining:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"{remaining} records unacknowledged after {timeout} s"))
    if failures:
        raise KafkaException(failures[0])
    return count
