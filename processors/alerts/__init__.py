"""Alert engine: delivery events → exim.delivery.alerts, Redis and webhooks (see docs/alerts.md)."""
