"""``trackdelivery topics create`` against the real Kafka: every pipeline topic, idempotent."""

from __future__ import annotations

import uuid

import pytest
from click.testing import CliRunner

from trackdelivery import kafka_clients
from trackdelivery.cli import main
from trackdelivery.settings import TopicNames

pytestmark = pytest.mark.kafka


def partition_counts(bootstrap: str, names: list[str]) -> dict[str, int]:
    return {name: kafka_clients.partition_count(bootstrap, name) for name in names}


def test_creates_every_topic_once(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"test.topics.{uuid.uuid4().hex[:8]}"
    names = {field: f"{prefix}.{field}" for field in TopicNames.model_fields}
    for field, name in names.items():
        monkeypatch.setenv(f"TRACKDELIVERY_TOPIC_{field.upper()}", name)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("KAFKA_REPLICATION_FACTOR", "1")
    runner = CliRunner()

    first = runner.invoke(main, ["topics", "create", "--partitions", "3"])
    assert first.exit_code == 0, first.output
    counts = partition_counts(kafka_bootstrap, list(names.values()))
    assert counts[names["alerts"]] == 1
    assert {count for name, count in counts.items() if name != names["alerts"]} == {3}
    assert first.output.count("created, 3 partitions") == len(names) - 1

    again = runner.invoke(main, ["topics", "create", "--partitions", "5"])
    assert again.exit_code == 0, again.output
    assert again.output.count("exists (left unchanged)") == len(names)
    assert partition_counts(kafka_bootstrap, list(names.values())) == counts


def test_refuses_inconsistent_security_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.delenv("KAFKA_SASL_USERNAME", raising=False)
    monkeypatch.delenv("KAFKA_SASL_PASSWORD", raising=False)
    result = CliRunner().invoke(main, ["topics", "create"])
    assert result.exit_code == 2 and "needs sasl_username and sasl_password" in result.output
