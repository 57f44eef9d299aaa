"""Settings of the stream processor (`trackdelivery process`) and of `trackdelivery rebuild`.

Frozen pydantic-settings: explicit arguments first, then ``TRACKDELIVERY_PROCESSOR_*`` variables.
Where Kafka and Redis are and the topic names come from the shared ``trackdelivery.settings``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class ProcessorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRACKDELIVERY_PROCESSOR_", frozen=True)

    app_id: str = Field(default="trackdelivery-processor", min_length=1, description="faust app id = consumer group")
    store: str = Field(default="memory://", pattern=r"^(memory|rocksdb)://", description="faust table store")
    datadir: str = Field(default="/var/lib/trackdelivery/processor", description="faust data dir (rocksdb tables)")
    web_port: int | None = Field(default=None, ge=1, le=65535, description="faust web port; None disables it")
    metrics_port: int | None = Field(default=9464, ge=0, le=65535, description="Prometheus port; None disables")
    metrics_host: str = Field(default="127.0.0.1", description="address of the Prometheus endpoint")
    log_level: LogLevel = Field(default="info", description="faust worker log level")
    default_tz: str = Field(default="UTC", description="zone of main-log times written without an offset")
    grace_seconds: float = Field(default=3600.0, gt=0, description="finished messages kept this long (log time)")
    stale_seconds: float = Field(default=8 * 86400.0, gt=0, description="unfinished messages dropped after this")
    sweep_interval: float = Field(default=60.0, gt=0, description="seconds between two state sweeps of a partition")
    sweep_chunk: int = Field(default=20_000, ge=100, description="table keys examined per record while sweeping")
    commit_interval: float = Field(default=2.0, gt=0, description="seconds between source offset commits")
    session_timeout: float = Field(default=30.0, ge=6.0, description="consumer group session timeout, seconds")
    standby_replicas: int = Field(default=0, ge=0, description="faust table standby replicas")
    redis_retry_seconds: float = Field(default=1.0, gt=0, description="pause before retrying a failed output write")
    stall_seconds: float = Field(
        default=60.0, gt=0,
        description="seconds without a record while an assigned raw partition has unread records before the "
        "worker resumes its consumer; still stalled as long again: it exits with code 70 for its supervisor to "
        "restart it (a crash loses nothing)",
    )
    output_timeout: float = Field(
        default=60.0, gt=0,
        description="seconds one output write (Redis, events and unparsed topics) may take before it is abandoned "
        "and retried (outputs are idempotent); a stalled read of missed raw records is restarted after as long",
    )
