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
        """Hand one heartbeat to ``producer`` (a confluent-kafka ``Producer``) without waiting for it;
        failures are logged once and otherwise ignored. The producer never blocks here."""
        self._next = (now if now is not None else time.monotonic()) + self.interval
        try:
            producer.produce(self.topic, self.payload(bytes_behind, stopping), self.key, on_delivery=self._delivered)
        except Exception as error:  # a heartbeat must never stop shipping
            self._failed(error)

    def _delivered(self, error: Any, _message: Any) -> None:
        if error is not None:
            self._failed(error)

    def _failed(self, error: object) -> None:
        if not self._warned:
            self._warned = True
            log.warning("heartbeat not delivered (is the topic created?)", extra={"topic": self.topic,
                                                                                  "error": repr(error)})
