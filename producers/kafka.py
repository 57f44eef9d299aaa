"""The producer ``ship`` and ``replay`` share: librdkafka (confluent-kafka), idempotent, ``acks=all``, compressed.

librdkafka batches, compresses, checksums and sends from its own threads, outside the GIL; the Python
side only hands it records (``produce``) and serves its delivery reports (``poll``), which is where the
shipper learns that Kafka acknowledged a record. See docs/shipper.md (Kafka) for why it replaced
kafka-python here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException, Producer

if TYPE_CHECKING:
    from producers.settings import ShipperSettings

__all__ = ["CONFIGURATION_ERRORS", "KafkaError", "KafkaException", "Producer", "discard", "make_producer",
           "producer_config"]

log = logging.getLogger(__name__)
librdkafka_log = logging.getLogger("producers.librdkafka")  # quiet unless --log-level debug (jsonlog)

BATCH_BYTES = 960 << 10  # a produce batch stays below the broker's default 1 MiB message.max.bytes
# Client errors that retrying does not cure: wrong credentials or certificates.
CONFIGURATION_ERRORS = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._SSL})


def producer_config(settings: ShipperSettings, **overrides: Any) -> dict[str, Any]:
    kafka = settings.kafka_settings()
    config: dict[str, Any] = {
        **kafka.librdkafka_config(),
        "client.id": f"trackdelivery-shipper-{settings.server}",
        "acks": "all",
        "enable.idempotence": True,  # no duplicates from retries, and a partition's records stay in order
        "compression.type": settings.compression,
        "linger.ms": settings.linger_ms,
        "batch.size": BATCH_BYTES,
        "message.max.bytes": 4 << 20,  # a record of record_bytes of lines, JSON-escaped, always fits
        "message.timeout.ms": settings.delivery_timeout_ms,
        "request.timeout.ms": min(30_000, settings.delivery_timeout_ms // 2),
        # librdkafka spaces out new connections by half the reconnect back-off: 10 ms instead of the default
        # 100 ms makes the first connection to the partition leader 50 ms sooner (the back-off still
        # doubles up to 1 s while Kafka is down)
        "reconnect.backoff.ms": 10,
        "reconnect.backoff.max.ms": 1_000,
        # The Java client's (and kafka-python's, aiokafka's) partitioner: a server's records stay in the
        # partition they went to before, and the processors' state stays with them.
        "partitioner": "murmur2_random",
        "allow.auto.create.topics": False,  # `--create-topics` creates the topic, a typo does not
        "logger": librdkafka_log,
    }
    config.update(overrides)
    return config


def make_producer(settings: ShipperSettings, **overrides: Any) -> Producer:
    """A new producer (connects in the background: it never fails here for an unreachable Kafka)."""
    return Producer(producer_config(settings, **overrides))


def discard(producer: Producer) -> None:
    """Drop a producer without waiting for Kafka: unsent and in-flight records fail (their reports are
    served here) and the handle is destroyed."""
    try:
        producer.purge(in_queue=True, in_flight=True, blocking=False)
        producer.poll(0)
    except (KafkaException, RuntimeError) as error:
        log.debug("purge failed: %r", error)
    try:
        producer.close()
    except (KafkaException, RuntimeError) as error:
        log.debug("close failed: %r", error)
