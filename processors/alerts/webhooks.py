"""Webhooks: every alert state change (fired, resolved) POSTed as JSON to each configured URL.

Signed with HMAC-SHA256 over ``<timestamp>.<body>`` (header ``X-Trackdelivery-Signature: sha256=<hex>``,
``X-Trackdelivery-Timestamp``), retried with exponential backoff, and written to a dead-letter file
(one JSON line) after the last failed attempt. ``X-Trackdelivery-Delivery`` (alert id, state) is the
idempotency key; a Redis marker set after a 2xx keeps a replayed alerts topic from posting twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

log = logging.getLogger("trackdelivery.alerts.webhooks")

MARKER_TTL = 30 * 86400


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    urls: tuple[str, ...] = ()
    secret: str = ""
    max_attempts: int = 6
    backoff: float = 1.0  # first pause; doubles per attempt, with jitter
    max_backoff: float = 60.0
    timeout: float = 10.0
    dead_letter_path: Path | None = None


def is_state_change(record: dict[str, Any]) -> bool:
    """Fired (the first version) or resolved; updates of a firing alert are not posted."""
    return record.get("state") == "resolved" or int(record.get("version", 0)) == 1


def delivery_id(record: dict[str, Any]) -> str:
    return f"{record['id']}:{record['state']}"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookDispatcher:
    def __init__(
        self,
        settings: WebhookSettings,
        *,
        redis: Any | None = None,
        prefix: str = "td",
        on_result: Callable[[str, str], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.prefix = prefix
        self.on_result = on_result or (lambda url, outcome: None)
        self.sleep = sleep
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _marker(self, url: str, record: dict[str, Any]) -> str:
        url_ref = hashlib.blake2b(url.encode(), digest_size=6).hexdigest()
        return f"{self.prefix}:{{alerts}}:hook:{url_ref}:{delivery_id(record)}"

    async def dispatch(self, record: dict[str, Any]) -> None:
        """Posts one alert record to every URL (concurrently) when it is a state change."""
        if not self.settings.urls or not is_state_change(record):
            return
        body = orjson.dumps(record)
        await asyncio.gather(*(self._deliver(url, record, body) for url in self.settings.urls))

    async def _deliver(self, url: str, record: dict[str, Any], body: bytes) -> None:
        marker = self._marker(url, record)
        if self.redis is not None and await self.redis.exists(marker):
            self.on_result(url, "duplicate")
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.timeout))
        settings = self.settings
        error = ""
        for attempt in range(1, settings.max_attempts + 1):
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "trackdelivery-alerts",
                "X-Trackdelivery-Delivery": delivery_id(record),
                "X-Trackdelivery-Timestamp": timestamp,
                "X-Trackdelivery-Attempt": str(attempt),
            }
            if settings.secret:
                headers["X-Trackdelivery-Signature"] = sign(settings.secret, timestamp, body)
            retry = True
            try:
                async with self._session.post(url, data=body, headers=headers) as response:
                    if 200 <= response.status < 300:
                        if self.redis is not None:
                            await self.redis.set(marker, b"1", ex=MARKER_TTL)
                        self.on_result(url, "delivered")
                        return
                    error = f"HTTP {response.status}"
                    retry = response.status >= 500 or response.status in (408, 429)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            self.on_result(url, "failed_attempt")
            if not retry or attempt == settings.max_attempts:
                break
            pause = min(settings.max_backoff, settings.backoff * 2 ** (attempt - 1))
            await self.sleep(pause * random.uniform(0.8, 1.2))
        self._dead_letter(url, record, error)

    def _dead_letter(self, url: str, record: dict[str, Any], error: str) -> None:
        log.error("webhook %s gave up on alert %s (%s) after: %s", url, record.get("id"), record.get("state"), error)
        self.on_result(url, "dead_letter")
        path = self.settings.dead_letter_path
        if path is None:
            return
        line = orjson.dumps({"time": time.time(), "url": url, "error": error, "alert": record}) + b"\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as handle:
            handle.write(line)
