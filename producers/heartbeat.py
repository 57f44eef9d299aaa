"""Shipper heartbeats: a small record per interval on ``exim.shipper.heartbeats`` (key = server).

They let the alert worker tell a quiet mail server (heartbeats, no lines) from a dead shipper (nothing).
A heartbeat that cannot be sent is skipped, never retried: the next one supersedes it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

log = logging.getLogger(__name__)

HEARTBEAT_VERSION = 1
SYNC_FAILURE_PAUSE = 600.0


class Heartbeat:
    def __init__(self, server: str, topic: str, interval: float, clock: Any = time.time) -> None:
        self.key = server.encode()
        self.server = server
        self.topic = topic
        self.interval = interval
        self.clock = clock
        self._next = 0.0
        self._warned = False

    def due(self, now: float) -> bool:
        return self.interval > 0 and now >= self._next

    def payload(self, bytes_behind: int, stopping: bool = False) -> bytes:
        return orjson.dumps({"v": HEARTBEAT_VERSION, "server": self.server, "time": self.clock(),
                             "interval": self.interval, "bytes_behind": bytes_behind, "stopping": stopping})

    def send(self, producer: Any, bytes_behind: int, *, stopping: bool = False, now: float | None = None) -> None:
        """Send one heartbeat without waiting for it; failures are logged once and otherwise ignored."""
        self._next = (now if now is not None else time.monotonic()) + self.interval
        try:
            future = producer.send(self.topic, key=self.key, value=self.payload(bytes_behind, stopping))
            future.add_errback(self._failed)
        except Exception as error:  # a heartbeat must never stop shipping
            # kafka-python blocked (max_block_ms) for metadata: do not stall the shipper again soon
            self._next += SYNC_FAILURE_PAUSE
            self._failed(error)

    def _failed(self, error: BaseException) -> None:
        if not self._warned:
            self._warned = True
            log.warning("heartbeat not delivered (is the topic created?)", extra={"topic": self.topic,
                                                                                  "error": repr(error)})
