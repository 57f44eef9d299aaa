"""Settings of the query service (``trackdelivery serve``): flags first, then the environment."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from trackdelivery.settings import RedisSettings


class QueryServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRACKDELIVERY_", frozen=True, populate_by_name=True)

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("redis_url", "REDIS_URL", "TRACKDELIVERY_REDIS_URL"),
    )
    redis_cluster: bool = Field(
        default=False,
        validation_alias=AliasChoices("redis_cluster", "REDIS_CLUSTER", "TRACKDELIVERY_REDIS_CLUSTER"),
        description="REDIS_URL is one node of a Redis Cluster",
    )
    key_prefix: str | None = Field(
        default=None,
        validation_alias=AliasChoices("key_prefix", "TRACKDELIVERY_STORE_PREFIX"),
        description="Redis key prefix of the store (the store's own setting); None takes the store's default",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    stream_poll_seconds: float = Field(default=0.5, gt=0, le=10, description="how often the live tail polls")
    stream_backfill_seconds: float = Field(
        default=10.0, ge=0, le=3600, description="how far before the connection the live tail starts"
    )
    stream_late_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="how late an event may land in Redis and still be streamed"
    )
    stream_max_seconds: float | None = Field(
        default=None, gt=0, description="close a live tail after this long (clients reconnect); None = never"
    )
    stream_heartbeat_seconds: float = Field(default=15.0, gt=0, description="SSE comment sent when idle")
    redis_timeout_seconds: float = Field(default=5.0, gt=0)

    def redis_settings(self) -> RedisSettings:
        """The shared Redis settings these name (``trackdelivery.connections`` builds the client from them)."""
        return RedisSettings.model_construct(url=self.redis_url, cluster=self.redis_cluster)
