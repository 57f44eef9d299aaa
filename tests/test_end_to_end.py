"""The whole pipeline through its real processes: generated logs → `trackdelivery replay` (lz4 records,
as the shipper sends them) → Kafka → a `trackdelivery process` worker → Redis → the query service's
message view, compared with the generator's truth for every (server, message id, recipient)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from query_service.present import message_view
from query_service.search import DeliverySearch
from tests.processors._support import REPO_ROOT, WorkerProcess, generate_fleet, wait_caught_up
from trackdelivery.devenv.ports import free_port
from trackdelivery.generator.truth import load_truth
from trackdelivery.store import StoreSettings
from trackdelivery.topics import create_topics

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]


async def recipient_states(redis_url: str, prefix: str, messages: set[tuple[str, str]]) -> dict[tuple, str]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=False)
    try:
        search = DeliverySearch(client, StoreSettings(prefix=prefix))
        states: dict[tuple, str] = {}
        for server, msgid in sorted(messages):
            view = await search.message(server, msgid)
            if view is None:
                continue
            for recipient in message_view(view)["recipients"]:
                states[(server, msgid, (recipient["recipient"] or "").lower())] = recipient["state"]
        return states
    finally:
        await client.aclose()


def test_shipped_logs_end_in_redis_as_the_generator_says(
    kafka_bootstrap: str, redis_db_url: str, tmp_path: Path
) -> None:
    logs = generate_fleet(tmp_path / "fleet", servers=3, messages=300)
    tag = uuid.uuid4().hex[:8]
    raw, events, unparsed, prefix = f"raw.{tag}", f"events.{tag}", f"unparsed.{tag}", f"e2e{tag}"
    create_topics(kafka_bootstrap, {raw: 3, events: 3, unparsed: 1})
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": redis_db_url,
        "TRACKDELIVERY_TOPIC_RAW": raw,
        "TRACKDELIVERY_TOPIC_EVENTS": events,
        "TRACKDELIVERY_TOPIC_UNPARSED": unparsed,
        "TRACKDELIVERY_PROCESSOR_APP_ID": f"e2e-{tag}",
        "TRACKDELIVERY_PROCESSOR_DATADIR": str(tmp_path / "faust"),
        "TRACKDELIVERY_PROCESSOR_SESSION_TIMEOUT": "6",
        "TRACKDELIVERY_STORE_PREFIX": prefix,
        "PYTHONPATH": str(REPO_ROOT),
    }
    for log in logs:
        shipped = subprocess.run(
            [sys.executable, "-m", "trackdelivery", "replay", "--server", log.parent.name, "--no-progress", str(log)],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )
        assert shipped.returncode == 0, shipped.stderr[-2000:]

    worker = WorkerProcess(env, tmp_path / "worker.log", free_port()).start()
    try:
        wait_caught_up(kafka_bootstrap, f"e2e-{tag}", raw, [worker])
        assert worker.terminate() == 0, worker.log_tail()
    finally:
        worker.kill()

    truth: dict[tuple, dict[str, Any]] = {
        (server, msgid, recipient.lower()): row
        for (server, msgid, recipient, _), row in load_truth(str(tmp_path / "fleet" / "truth.jsonl")).items()
        if msgid is not None
    }
    assert len(truth) > 300
    states = asyncio.run(recipient_states(redis_db_url, prefix, {(key[0], key[1]) for key in truth}))
    wrong = {key: (row["final"], states.get(key)) for key, row in truth.items() if states.get(key) != row["final"]}
    assert not wrong, f"{len(wrong)} of {len(truth)} recipients differ (truth, redis), e.g. {list(wrong.items())[:5]}"
