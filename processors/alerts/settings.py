"""Settings of the alert worker (``trackdelivery alerts``): ``TRACKDELIVERY_ALERTS_*`` variables.

Where Kafka and Redis are and the topic names come from the shared ``trackdelivery.settings``; the
rules themselves come from the rules file (``rules_file``), see ``processors/alerts/rules.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from processors.alerts.webhooks import WebhookSettings


class AlertSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRACKDELIVERY_ALERTS_", frozen=True, hide_input_in_errors=True)

    app_id: str = Field(default="trackdelivery-alerts", min_length=1, description="faust app id = consumer group")
    store: str = Field(default="memory://", pattern=r"^(memory|rocksdb)://", description="faust table store")
    datadir: str = Field(default="/var/lib/trackdelivery/alerts", description="faust data dir")
    rules_file: Path | None = Field(default=None, description="TOML file overriding or adding rules")
    tick_interval: float = Field(default=10.0, gt=0, description="seconds between two checks for idle scopes")
    webhook_urls: Annotated[tuple[str, ...], NoDecode] = Field(default=(), description="comma-separated URLs")
    webhook_secret: SecretStr = Field(default=SecretStr(""), description="HMAC-SHA256 key of the signature")
    webhook_max_attempts: int = Field(default=6, ge=1, le=50)
    webhook_backoff: float = Field(default=1.0, gt=0, description="first retry pause, doubled per attempt")
    webhook_timeout: float = Field(default=10.0, gt=0)
    dead_letter_path: Path | None = Field(
        default=None, description="JSON lines of webhook posts given up on [DATADIR/webhook-dead-letters.jsonl]"
    )
    retention: float = Field(default=7 * 86400.0, gt=0, description="seconds resolved alerts stay in Redis")
    metrics_port: int | None = Field(default=9465, ge=0, le=65535, description="Prometheus port; None disables")
    metrics_host: str = "127.0.0.1"
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    session_timeout: float = Field(default=30.0, ge=6.0)
    commit_interval: float = Field(default=2.0, gt=0)

    @field_validator("webhook_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("webhook_urls")
    @classmethod
    def _check_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"not an http(s) URL: {url!r}")
        return value

    def webhooks(self) -> WebhookSettings:
        return WebhookSettings(
            urls=self.webhook_urls, secret=self.webhook_secret.get_secret_value(),
            max_attempts=self.webhook_max_attempts, backoff=self.webhook_backoff, timeout=self.webhook_timeout,
            dead_letter_path=self.dead_letters(),
        )

    def dead_letters(self) -> Path:
        return self.dead_letter_path or Path(self.datadir) / "webhook-dead-letters.jsonl"
