"""Prometheus metrics of the alert worker."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, start_http_server


class AlertMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_in = Counter("trackdelivery_alerts_events", "delivery events read", registry=r)
        self.bad_events = Counter("trackdelivery_alerts_bad_records", "records that could not be decoded", registry=r)
        self.signals = Counter("trackdelivery_alerts_signals", "signals fanned out, by rule", ["rule"], registry=r)
        self.duplicates = Counter(
            "trackdelivery_alerts_duplicates", "records redelivered after a restart and skipped", ["topic"], registry=r
        )
        self.heartbeats = Counter("trackdelivery_alerts_heartbeats", "shipper heartbeats read", registry=r)
        self.alerts = Counter(
            "trackdelivery_alerts_published", "alert records published, by rule and state", ["rule", "state"],
            registry=r,
        )
        self.webhooks = Counter(
            "trackdelivery_alerts_webhook_results", "webhook attempts by outcome", ["outcome"], registry=r
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)
