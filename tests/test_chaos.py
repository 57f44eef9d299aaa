"""The chaos suite's short form (``bench/chaos.py --short``) on a 3-broker Kafka cluster and a Redis Cluster:
a fleet shipped at a steady rate while a shipper, a worker, a broker and a Redis master are SIGKILLed and
every log is rotated (rename, copytruncate, gzip), then a third worker joins; an alert worker runs
throughout. Every (server, message id, recipient) read back through the query service must match the
generator's truth, and so must a second store filled by ``trackdelivery rebuild`` from the raw topic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow, pytest.mark.chaos]

BENCH = Path(__file__).resolve().parents[1] / "bench" / "chaos.py"


@pytest.mark.timeout(900)
def test_nothing_is_lost_duplicated_or_wrong_through_every_fault(record_property: pytest.RecordProperty) -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--short"], capture_output=True, text=True, timeout=880,
                          check=False)
    lines = done.stdout.strip().splitlines()
    assert lines, f"no report; stderr:\n{done.stderr[-4000:]}"
    result = orjson.loads(lines[-1])
    record_property("chaos", result)
    print("\n".join(lines[:-1]))
    assert result["kafka_brokers"] == 3 and result["redis_cluster"] is True
    faults = [fault["fault"] for fault in result["faults"]]
    assert faults == ["shipper", "worker", "broker", "redis_master", "scale_out"]
    assert set(result["rotations"]) == {"rename", "copytruncate", "gzip"}, result["rotations"]
    assert result["recipients"] > 1000
    verdict = {name: result[name] for name in ("lost", "duplicated", "wrong_state", "crashes")}
    assert verdict == {"lost": 0, "duplicated": 0, "wrong_state": 0, "crashes": 0}, result["examples"]
    assert result["rebuild"] == {"lost": 0, "duplicated": 0, "wrong_state": 0}, "the rebuilt store differs"
    assert all(figures["unseen"] == 0 for figures in result["freshness"].values()), result["freshness"]
    assert done.returncode == 0, done.stderr[-4000:]
