"""`trackdelivery process` and `trackdelivery rebuild` with ``REDIS_CLUSTER=true`` fill a real Redis Cluster
exactly as the clean offline run fills a single Redis (same keys, indexes, stats and message views)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.processors._support import (
    REPO_ROOT,
    WorkerProcess,
    answers_of,
    produce,
    read_topic,
    wait_caught_up,
    write_reference,
)
from tests.processors.test_process import assert_same_answers, make_pipeline, raw_records
from trackdelivery.devenv.ports import free_port

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]


def test_the_processor_and_rebuild_fill_a_cluster_like_a_single_redis(
    kafka_bootstrap: str, redis_url: str, redis_cluster_factory: Any, tmp_path: Path
) -> None:
    cluster = redis_cluster_factory()  # private: rebuild needs an empty store
    deployment = make_pipeline(kafka_bootstrap, cluster.url, tmp_path)
    produce(kafka_bootstrap, deployment.raw, raw_records(tmp_path / "fleet", 3, 150, 6))
    env = {**deployment.env(), "REDIS_CLUSTER": "true"}
    worker = WorkerProcess(env, tmp_path / "worker.log", free_port()).start()
    try:
        wait_caught_up(kafka_bootstrap, deployment.app_id, deployment.raw, [worker])
        assert worker.terminate() == 0
    finally:
        worker.kill()

    by_partition = {p: [m.value for m in ms] for p, ms in read_topic(kafka_bootstrap, deployment.raw).items()}
    ref_prefix = f"ref{deployment.prefix}"
    results = asyncio.run(write_reference(by_partition, redis_url, ref_prefix))
    assert sum(len(result.events) for result in results) > 200
    reference = answers_of(redis_url, ref_prefix, results)
    assert_same_answers(answers_of(cluster.url, deployment.prefix, results, cluster=True), reference)

    rebuild = [sys.executable, "-m", "trackdelivery", "rebuild", "--from-beginning", "--redis-url", cluster.url]
    refused = subprocess.run(rebuild, cwd=REPO_ROOT, env=env, capture_output=True, timeout=240, check=False)
    assert refused.returncode != 0 and b"not empty" in refused.stderr, refused.stderr.decode()[-2000:]
    client = redis.RedisCluster.from_url(cluster.url)
    try:
        client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    finally:
        client.close()
    completed = subprocess.run(
        [*rebuild, "--json", "--no-progress"], cwd=REPO_ROOT, env=env, capture_output=True, timeout=240, check=False
    )
    assert completed.returncode == 0, completed.stderr.decode()[-3000:]
    assert_same_answers(answers_of(cluster.url, deployment.prefix, results, cluster=True), reference)
