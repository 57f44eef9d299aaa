"""Alerts end to end through the real processes: a generated fleet with injected incidents (a Gmail
rate-limit storm on one server, a compromised account, a frozen queue) → Kafka → `trackdelivery process`
→ exim.delivery.events → `trackdelivery alerts` → exim.delivery.alerts. The topic must carry the
alerts the incidents explain, and nothing else."""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.processors._support import committed_behind, fleet_records, produce, wait_caught_up
from tests.processors.alerts._worker import AlertDeployment, wait_for
from trackdelivery.generator.runner import FleetRun, GenerateConfig

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]

INCIDENTS = ("gmail_storm", "compromised", "frozen_queue")


def generate(out: Path, incidents: tuple[str, ...] = INCIDENTS) -> dict[str, Any]:
    run = FleetRun(GenerateConfig(servers=10, messages=10_000, out=out, seed=7, days=1.0, incidents=incidents))
    try:
        run.run()
    finally:
        run.close()
    return orjson.loads((out / "manifest.json").read_bytes())


def epoch(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso).timestamp()


def run_pipeline(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> list[dict[str, Any]]:
    """The fleet under ``tmp_path/fleet`` through a processor and an alert worker; the alert records."""
    deployment = AlertDeployment(kafka_bootstrap, redis_url, tmp_path)
    produce(kafka_bootstrap, deployment.raw, fleet_records(sorted((tmp_path / "fleet").glob("*/exim_mainlog"))))
    processor = deployment.processor().start()
    alerts = deployment.alert_worker().start()
    workers = [processor, alerts]
    try:
        wait_caught_up(kafka_bootstrap, deployment.processor_id, deployment.raw, workers, timeout=400)
        wait_for(lambda: committed_behind(kafka_bootstrap, deployment.app_id, deployment.events) == 0
                 and committed_behind(kafka_bootstrap, deployment.app_id, deployment.signals) == 0,
                 300, "the alert worker to catch up", [alerts])
        time.sleep(3)
        assert processor.terminate() == 0, processor.log_tail()
        assert alerts.terminate() == 0, alerts.log_tail()
    finally:
        for worker in workers:
            worker.kill()
    return deployment.alert_records()


def test_a_normal_fleet_raises_no_alert(kafka_bootstrap: str, redis_db_url: str, tmp_path: Path) -> None:
    generate(tmp_path / "fleet", incidents=())
    records = run_pipeline(kafka_bootstrap, redis_db_url, tmp_path)
    assert records == [], [r["summary"] for r in records]


def test_injected_incidents_raise_exactly_their_alerts(
    kafka_bootstrap: str, redis_db_url: str, tmp_path: Path
) -> None:
    manifest = generate(tmp_path / "fleet")
    storm = next(i for i in manifest["incidents"] if i["response"] == "gmail_rate_limited")
    account = manifest["compromised"][0]
    frozen = manifest["frozen_queue"][0]
    required = {
        ("provider_throttling", (("provider", "gmail"), ("server", storm["server"]))): epoch(storm["start"]),
        ("outbound_spam", (("server", account["server"]), ("user", account["address"]))): epoch(account["start"]),
        ("frozen_messages", (("server", frozen["server"]),)): epoch(frozen["start"]),
    }
    sender_domain = account["address"].rsplit("@", 1)[1]
    consequences = {  # also caused by the incidents, allowed but not required
        ("server_failure_ratio", (("server", storm["server"]),)),
        ("sender_domain_bounce_ratio", (("sender_domain", sender_domain), ("server", account["server"]))),
        ("server_failure_ratio", (("server", account["server"]),)),
    }

    records = run_pipeline(kafka_bootstrap, redis_db_url, tmp_path)
    fired = {}
    for record in records:
        if record["state"] == "firing" and record["version"] == 1:
            fired.setdefault((record["rule"], tuple(sorted(record["scope"].items()))), record)
    missing = set(required) - set(fired)
    assert not missing, f"incidents without their alert: {missing}; fired: {sorted(fired)}"
    unexplained = set(fired) - set(required) - consequences
    assert not unexplained, f"alerts no incident explains: {[fired[k]['summary'] for k in unexplained]}"
    for key, start in required.items():
        delay = fired[key]["last_seen"] - start
        print(f"{key[0]} {dict(key[1])}: fired {delay / 60:.1f} min (log time) after the incident began")
        assert -600 <= delay <= 2 * 3600, (key, delay)
    ids = {record["id"] for record in records}
    assert all(record["v"] == 1 for record in records)
    assert len(ids) == len({(r["rule"], tuple(sorted(r["scope"].items())), r["first_seen"]) for r in records})
