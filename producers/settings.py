"""Shipper configuration: flags, then ``TRACKDELIVERY_*`` / ``KAFKA_BOOTSTRAP_SERVERS``, then a TOML file.

The TOML file holds the same keys, at the top level or under a ``[shipper]`` table.
"""

from __future__ import annotations

import socket
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from producers.tail.types import StartPosition
from trackdelivery.settings import KafkaSettings

_config_file: ContextVar[Path | None] = ContextVar("trackdelivery_shipper_config", default=None)

Compression = Literal["lz4", "zstd", "gzip", "none"]


class ShipperSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRACKDELIVERY_", frozen=True, extra="ignore",
                                      populate_by_name=True)

    server: str = Field(default_factory=socket.gethostname, min_length=1,
                        description="server name: the Kafka key and part of every record")
    paths: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["/var/log/exim_mainlog"],
                                                  min_length=1, description="files or globs to follow")
    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("bootstrap_servers", "TRACKDELIVERY_BOOTSTRAP_SERVERS",
                                      "KAFKA_BOOTSTRAP_SERVERS"),
        description="comma-separated host:port list of Kafka brokers (TLS/SASL: the KAFKA_* settings)",
    )
    topic: str = Field(
        default="exim.mainlog.raw",
        validation_alias=AliasChoices("topic", "TRACKDELIVERY_TOPIC", "TRACKDELIVERY_TOPIC_RAW"),
        description="raw-line topic; TRACKDELIVERY_TOPIC_RAW is the name every component reads",
    )
    partitions: int = Field(default=8, ge=1, description="used by --create-topics")
    replication_factor: int = Field(default=1, ge=1, description="used by --create-topics")
    checkpoint_dir: Path = Field(default=Path("/var/lib/trackdelivery/shipper"),
                                 description="directory of checkpoints.json (offsets acknowledged by Kafka)")
    start_position: StartPosition = Field(
        default=StartPosition.END, description="where to start the live file when there is no checkpoint at all"
    )
    batch_bytes: int = Field(default=1 << 20, ge=4096,
                             description="most bytes of lines read but not yet checkpointed")
    record_bytes: int = Field(default=128 << 10, ge=256, le=512 << 10, description="bytes of lines per Kafka record")
    linger_ms: int = Field(default=20, ge=0, description="milliseconds the producer waits to fill a batch")
    delivery_timeout_ms: int = Field(default=60_000, ge=1000,
                                     description="after this, unacknowledged records are sent again")
    compression: Compression = Field(default="lz4", description="Kafka compression codec")
    max_line_bytes: int = Field(default=64 << 10, ge=64, description="longer lines are cut and marked truncated")
    rotate_wait: float = Field(default=5.0, ge=0, description="seconds a rotated file stays open once drained")
    scan_interval: float = Field(default=1.0, gt=0, description="seconds between looks for new and rotated files")
    poll_interval: float = Field(default=0.1, gt=0, description="seconds between reads when the files are idle")
    include_rotated: bool = Field(default=True, description="also look at the rotated names (.1, .01, .1.gz, .01.gz)")
    shutdown_timeout: float = Field(default=30.0, ge=0,
                                    description="seconds to wait for Kafka's acknowledgements when stopping")
    heartbeat_topic: str = Field(
        default="exim.shipper.heartbeats",
        validation_alias=AliasChoices(
            "heartbeat_topic", "TRACKDELIVERY_HEARTBEAT_TOPIC", "TRACKDELIVERY_TOPIC_HEARTBEATS"
        ),
        description="topic of the liveness heartbeats the alert worker watches",
    )
    heartbeat_interval: float = Field(default=30.0, ge=0, description="seconds between heartbeats; 0 disables them")
    metrics_port: int | None = Field(default=None, ge=0, le=65535,
                                     description="Prometheus port; unset serves no metrics")
    metrics_host: str = Field(default="0.0.0.0", description="address of the Prometheus endpoint")  # noqa: S104

    @field_validator("paths", mode="before")
    @classmethod
    def _split_paths(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _TomlSource(settings_cls, _config_file.get())

    def kafka_settings(self) -> KafkaSettings:
        """Kafka connection settings: these brokers and partitioning, TLS/SASL from the ``KAFKA_*`` environment."""
        return KafkaSettings(bootstrap_servers=self.bootstrap_servers, partitions=self.partitions,
                             replication_factor=self.replication_factor)

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> ShipperSettings:
        """Settings from ``overrides`` (flags; None means unset), the environment and ``config_file``."""
        token = _config_file.set(config_file)
        try:
            return cls(**{key: value for key, value in overrides.items() if value is not None})
        finally:
            _config_file.reset(token)


class _TomlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        if path is not None:
            with open(path, "rb") as handle:
                document = tomllib.load(handle)
            section = document.get("shipper", document)
            self._data = section if isinstance(section, dict) else {}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {key: value for key, value in self._data.items() if key in self.settings_cls.model_fields}
