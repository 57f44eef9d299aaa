"""`trackdelivery alerts` as a real process on the real Kafka and Redis: fire, survive a SIGKILL while
firing, resolve, stay resolved across a restart, shipper silence, and webhooks that fail at first."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from processors.alerts.store import AlertStore
from tests.processors._support import produce
from tests.processors.alerts._worker import WEBHOOK_SECRET, AlertDeployment, FlakyReceiver, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]

RULES = """
[rules.provider_throttling]
threshold = 5
min_share = 0
window = "12s"
resolve_after = "6s"
update_every = "1h"
cooldown = "1h"

[rules.shipper_silent]
window = "6s"
"""
# recent log times: the store drops resolved alerts 7 days after their last_seen, and the silence alert
# is stamped with the wall clock, so storing its resolve would drop a throttling alert stamped in 2025
LOG_T0 = float(int(time.time()) - 3600)
GMAIL_421 = ("421-4.7.28 [203.0.113.9] Our system has detected an unusual rate of unsolicited mail originating "
             "from your IP address. https://support.google.com/mail/?p=UnsolicitedRateLimitError")


def throttled(i: int, server: str = "srv-a.example.net") -> tuple[str, bytes]:
    event = {
        "v": 1, "type": "deferred", "server": server, "msgid": f"1tAAAA-0000{i:02d}-AA", "time": LOG_T0 + i,
        "recipient": f"user{i}@gmail.com", "recipient_domain": "gmail.com", "sender": "news@shop.example",
        "sender_domain": "shop.example", "cpanel_user": "shop", "transport": "remote_smtp",
        "remote_host": "gmail-smtp-in.l.google.com", "response": GMAIL_421, "reason": "rate_limited",
        "retry": {"attempt": 1, "first_attempt": LOG_T0 + i}, "event_id": f"ev{i}",
    }
    return f"{server}/{event['msgid']}", orjson.dumps(event)


def heartbeat(server: str) -> tuple[str, bytes]:
    return server, orjson.dumps({"v": 1, "server": server, "time": time.time(), "interval": 1, "bytes_behind": 0})


def states(records: list[dict[str, Any]], rule: str) -> set[tuple[str, int, str]]:
    return {(r["id"], r["version"], r["state"]) for r in records if r["rule"] == rule}


def fired(records: list[dict[str, Any]], rule: str, state: str = "firing") -> list[dict[str, Any]]:
    return [r for r in records if r["rule"] == rule and r["state"] == state]


async def stored(redis_url: str, prefix: str) -> dict[str, dict[str, Any]]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return {record["rule"]: record for record in await AlertStore(client, prefix).list(state=None)}
    finally:
        await client.aclose()


def test_alert_fires_once_survives_a_kill_resolves_and_posts_each_change_once(
    kafka_bootstrap: str, redis_db_url: str, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    with FlakyReceiver(failures=2) as receiver:
        deployment = AlertDeployment(kafka_bootstrap, redis_db_url, tmp_path, extra_env={
            "TRACKDELIVERY_ALERTS_RULES_FILE": str(rules),
            "TRACKDELIVERY_ALERTS_TICK_INTERVAL": "1",
            "TRACKDELIVERY_ALERTS_WEBHOOK_URLS": receiver.url,
            "TRACKDELIVERY_ALERTS_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "TRACKDELIVERY_ALERTS_WEBHOOK_BACKOFF": "0.2",
        })
        first = deployment.alert_worker("first").start()
        workers = [first]
        try:
            produce(kafka_bootstrap, deployment.heartbeats, [heartbeat("srv-h.example.net")])
            produce(kafka_bootstrap, deployment.events, [throttled(i) for i in range(5)])
            wait_for(lambda: fired(deployment.alert_records(), "provider_throttling"), 120, "the alert", workers)
            time.sleep(3)  # the table and offsets are committed every 0.5 s: the kill lands mid-alert
            first.kill()

            second = deployment.alert_worker("second").start()
            workers = [second]
            produce(kafka_bootstrap, deployment.events, [throttled(i) for i in range(5, 8)])
            wait_for(lambda: fired(deployment.alert_records(), "shipper_silent"), 120, "shipper silence", workers)
            produce(kafka_bootstrap, deployment.heartbeats, [heartbeat("srv-h.example.net")])
            wait_for(lambda: fired(deployment.alert_records(), "provider_throttling", "resolved")
                     and fired(deployment.alert_records(), "shipper_silent", "resolved"), 120, "resolves", workers)
            wait_for(lambda: len(receiver.delivered) >= 4, 60, "four webhook deliveries", workers)
            assert second.terminate() == 0, second.log_tail()

            # a restart after the resolve, and a matching event inside the cooldown: nothing fires again
            third = deployment.alert_worker("third").start()
            workers = [third]
            produce(kafka_bootstrap, deployment.events, [throttled(i) for i in range(8, 14)])
            time.sleep(12)
            assert third.alive, third.log_tail()
            assert third.terminate() == 0, third.log_tail()
        finally:
            for worker in workers:
                worker.kill()

        records = deployment.alert_records()
        throttling = states(records, "provider_throttling")
        assert {(state, version) for _, version, state in throttling} == {("firing", 1), ("resolved", 2)}, records
        assert len({alert_id for alert_id, _, _ in throttling}) == 1
        silence = states(records, "shipper_silent")
        assert {(state, version) for _, version, state in silence} == {("firing", 1), ("resolved", 2)}, records
        assert fired(records, "shipper_silent")[0]["scope"] == {"server": "srv-h.example.net"}
        alert = fired(records, "provider_throttling")[0]
        assert alert["scope"] == {"server": "srv-a.example.net", "provider": "gmail"}
        assert alert["severity"] == "critical" and alert["examples"] and alert["hint"]

        deliveries = sorted(d["delivery"] for d in receiver.delivered)
        expected = sorted(f"{alert_id}:{state}" for alert_id, _, state in throttling | silence)
        assert deliveries == expected, "one successful POST per alert state change"
        assert receiver.bad_signatures == 0
        assert all(receiver.attempts[d] == 3 for d in deliveries), receiver.attempts

        in_redis = asyncio.run(stored(redis_db_url, deployment.prefix))
        assert in_redis["provider_throttling"]["state"] == "resolved"
        assert in_redis["shipper_silent"]["state"] == "resolved"
