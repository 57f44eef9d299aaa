"""Every default rule through the real worker: one scenario per rule, each on its own server, all
produced to a real Kafka events topic (keyed by server, as the processor partitions them). Each rule
fires for its scenario's scope, and nothing else fires."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from processors.alerts.rules import DEFAULT_RULES
from tests.processors._support import committed_behind, produce
from tests.processors.alerts._synthetic import (
    CPANEL_LIMIT,
    GMAIL_RATE_LIMIT,
    HOUR,
    MICROSOFT_S3150,
    MINUTE,
    PLAIN_TEMPFAIL,
    T0,
    USER_UNKNOWN,
    event,
    spread,
)
from tests.processors.alerts._worker import AlertDeployment, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]

Events = list[dict[str, Any]]


def on(server: str) -> str:
    return f"{server}.example-hosting.net"


def persistent_deferral() -> Events:
    return [event("deferred", T0 + i * 60, server=on("pd"), recipient=f"user{i}@slow.example",
                  response=PLAIN_TEMPFAIL, reason="remote_server_error", first_attempt=T0 - 4 * HOUR - 60)
            for i in range(5)]


def provider_throttling() -> Events:
    return [event("deferred", t, server=on("pt"), recipient=f"r{i}@gmail.com", response=GMAIL_RATE_LIMIT,
                  reason="rate_limited") for i, t in enumerate(spread(12, T0, 10 * MINUTE))]


def ip_blocklisted() -> Events:
    return [event("bounced", t, server=on("bl"), recipient=f"r{i}@hotmail.com", response=MICROSOFT_S3150,
                  reason="ip_reputation") for i, t in enumerate(spread(6, T0, 40 * MINUTE))]


def sender_domain_bounce_ratio() -> Events:
    # four accounts of one domain, each below outbound_spam's volume: only the domain's ratio fires
    return [event("bounced" if i % 2 else "delivered", t, server=on("sd"), cpanel_user=f"acct{i % 4}",
                  sender=f"staff{i % 4}@acct.example", recipient=f"r{i}@example.org",
                  response=USER_UNKNOWN if i % 2 else "250 OK", reason="recipient_unknown" if i % 2 else None)
            for i, t in enumerate(spread(44, T0, 40 * MINUTE))]


def server_failure_ratio() -> Events:
    events = []
    for i, t in enumerate(spread(210, T0, 50 * MINUTE)):
        bounced = i % 3 == 0
        events.append(event("bounced" if bounced else "delivered", t, server=on("sf"), cpanel_user=f"u{i % 30}",
                            sender=f"x@d{i % 30}.example", recipient=f"r{i}@example.org",
                            response=USER_UNKNOWN if bounced else "250 OK",
                            reason="recipient_unknown" if bounced else None))
    return events


def outbound_spam() -> Events:
    return [event("deferred", T0 + i, server=on("os"), cpanel_user="spammer", recipient=f"held{i}@example.org",
                  remote=False, response=CPANEL_LIMIT, reason="local_limit") for i in range(6)]


def frozen_messages() -> Events:
    return [event("frozen", t, server=on("fz"), remote=False) for t in spread(10, T0, 50 * MINUTE)]


def queue_backlog() -> Events:
    events: Events = []
    for hour, n in enumerate((150, 150, 400)):
        for t in spread(n, T0 + hour * HOUR, HOUR):
            events.append(event("deferred", t, server=on("qb"), cpanel_user=None, sender="x@remote.example",
                                recipient=f"q{len(events)}@example.org", response=PLAIN_TEMPFAIL,
                                reason="remote_server_error"))
    return events


SCENARIOS = {
    "persistent_deferral": (persistent_deferral, {"server": on("pd"), "remote_domain": "slow.example"}),
    "provider_throttling": (provider_throttling, {"server": on("pt"), "provider": "gmail"}),
    "ip_blocklisted": (ip_blocklisted, {"server": on("bl"), "provider": "microsoft"}),
    "sender_domain_bounce_ratio": (sender_domain_bounce_ratio, {"server": on("sd"), "sender_domain": "acct.example"}),
    "server_failure_ratio": (server_failure_ratio, {"server": on("sf")}),
    "outbound_spam": (outbound_spam, {"server": on("os"), "user": "spammer"}),
    "frozen_messages": (frozen_messages, {"server": on("fz")}),
    "queue_backlog": (queue_backlog, {"server": on("qb")}),
}
#: a growing queue of deferrals is also a deferral-ratio spike on its server
ALSO = {("server_failure_ratio", (("server", on("qb")),))}


def test_each_default_rule_fires_on_its_scenario_and_nothing_else(
    kafka_bootstrap: str, redis_db_url: str, tmp_path: Path
) -> None:
    assert set(SCENARIOS) | {"shipper_silent"} == {rule.name for rule in DEFAULT_RULES}
    deployment = AlertDeployment(kafka_bootstrap, redis_db_url, tmp_path,
                                 extra_env={"TRACKDELIVERY_ALERTS_TICK_INTERVAL": "1"})
    records = []
    for build, _ in SCENARIOS.values():
        records += [(e["server"], orjson.dumps(e)) for e in build()]
    worker = deployment.alert_worker().start()
    try:
        produce(kafka_bootstrap, deployment.events, records)
        silent = on("hb")
        produce(kafka_bootstrap, deployment.heartbeats,
                [(silent, orjson.dumps({"v": 1, "server": silent, "time": time.time() - 700, "interval": 30}))])
        expected = {(rule, tuple(sorted(scope.items()))) for rule, (_, scope) in SCENARIOS.items()}
        expected.add(("shipper_silent", (("server", silent),)))

        def fired() -> set[tuple[str, tuple[tuple[str, str], ...]]]:
            return {(r["rule"], tuple(sorted(r["scope"].items()))) for r in deployment.alert_records()
                    if r["state"] == "firing" and r["version"] == 1}

        wait_for(lambda: expected <= fired(), 180, "every rule to fire", [worker])
        wait_for(lambda: committed_behind(kafka_bootstrap, deployment.app_id, deployment.signals) == 0,
                 60, "the signals to be committed", [worker])
        assert worker.terminate() == 0, worker.log_tail()
    finally:
        worker.kill()
    assert fired() - expected - ALSO == set()
