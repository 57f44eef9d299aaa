"""Prometheus metrics of the shipper, and the tail events that feed them and the log."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

log = logging.getLogger("producers.tail")


class ShipperMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        prefix = "trackdelivery_shipper_"
        self.lines_read = Counter(prefix + "lines_read", "Lines read from log files", registry=self.registry)
        self.lines_acked = Counter(prefix + "lines_acked", "Lines acknowledged by Kafka", registry=self.registry)
        self.records_sent = Counter(prefix + "records_sent", "Kafka records handed to the producer",
                                    registry=self.registry)
        self.bytes_behind = Gauge(prefix + "bytes_behind",
                                  "Bytes in followed files not yet acknowledged by Kafka", registry=self.registry)
        self.rotations = Counter(prefix + "rotations", "Followed files renamed or deleted", registry=self.registry)
        self.truncations = Counter(prefix + "truncations", "Files truncated under the reader (copytruncate)",
                                   registry=self.registry)
        self.long_lines = Counter(prefix + "long_lines", "Lines cut at max_line_bytes", registry=self.registry)
        self.kafka_errors = Counter(prefix + "kafka_errors", "Failed Kafka sends (records are sent again)",
                                    registry=self.registry)
        self.checkpoints = Counter(prefix + "checkpoint_writes", "Checkpoint files written", registry=self.registry)
        self.files_open = Gauge(prefix + "files_open", "Files being read", registry=self.registry)
        self.kafka_up = Gauge(prefix + "kafka_up", "1 while Kafka acknowledges, 0 while it fails",
                              registry=self.registry)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 - a scrape endpoint
        start_http_server(port, addr=host, registry=self.registry)


class LoggingTailEvents:
    """``TailEvents`` that log (JSON) and count."""

    def __init__(self, metrics: ShipperMetrics) -> None:
        self.metrics = metrics

    def opened(self, path: str, file_id: str, offset: int, reason: str) -> None:
        log.info("following file", extra={"path": path, "file": file_id, "offset": offset, "reason": reason})

    def closed(self, path: str, file_id: str, offset: int, reason: str) -> None:
        log.info("closed file", extra={"path": path, "file": file_id, "offset": offset, "reason": reason})

    def rotated(self, path: str, file_id: str) -> None:
        self.metrics.rotations.inc()
        log.info("file rotated away, draining it", extra={"path": path, "file": file_id})

    def truncated(self, path: str, file_id: str, offset: int, size: int) -> None:
        self.metrics.truncations.inc()
        log.warning("file truncated under the reader, restarting at 0 (copytruncate)",
                    extra={"path": path, "file": file_id, "offset": offset, "size": size})

    def long_line(self, path: str, file_id: str, offset: int, length: int) -> None:
        self.metrics.long_lines.inc()
        log.warning("line longer than max_line_bytes, cut and marked truncated",
                    extra={"path": path, "file": file_id, "offset": offset, "length_seen": length})
