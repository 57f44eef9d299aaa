"""Settings shared by every component: where Kafka and Redis are, and the topic names.

Frozen pydantic-settings objects; values come from explicit arguments, then the environment.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TopicNames(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRACKDELIVERY_TOPIC_", frozen=True)

    raw: str = "exim.mainlog.raw"
    events: str = "exim.delivery.events"
    unparsed: str = "exim.mainlog.unparsed"
    alerts: str = "exim.delivery.alerts"


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KAFKA_", frozen=True)

    bootstrap_servers: str = "127.0.0.1:9092"
    partitions: int = Field(default=8, ge=1, description="partitions of the raw and events topics")
    replication_factor: int = Field(default=1, ge=1)


class RedisSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REDIS_", frozen=True)

    url: str = "redis://127.0.0.1:6379/0"

    @classmethod
    def from_dsn(cls, dsn: str) -> RedisSettings:
        return cls(url=dsn)


def topic_partitions(kafka: KafkaSettings, topics: TopicNames) -> dict[str, int]:
    """Every topic the pipeline uses, with its partition count (raw and events share the key space)."""
    return {
        topics.raw: kafka.partitions,
        topics.events: kafka.partitions,
        topics.unparsed: kafka.partitions,
        topics.alerts: 1,
    }
