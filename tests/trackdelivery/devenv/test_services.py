"""The dev tooling against the real Kafka and Redis it starts."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest
import redis

from trackdelivery import kafka_clients
from trackdelivery.devenv.kafka import KafkaBroker, random_cluster_id
from trackdelivery.devenv.ports import port_open
from trackdelivery.devenv.process import pid_alive

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def test_produce_and_consume_through_a_real_topic(kafka_bootstrap: str, topic_factory) -> None:
    topic = topic_factory(partitions=3)
    sent = [f"line {i} {uuid.uuid4().hex}".encode() for i in range(500)]
    produced = kafka_clients.produce(kafka_bootstrap, topic, ((b"srv1.example.net", value) for value in sent),
                                     **{"compression.type": "lz4"})
    assert produced == len(sent)
    received = list(kafka_clients.read_topic(kafka_bootstrap, topic, timeout=30))
    # one key -> one partition -> the order of sending is kept
    assert [r.value for r in received] == sent
    assert {r.partition for r in received} == {received[0].partition}


def test_write_and_read_redis(redis_client: redis.Redis, key_prefix: str) -> None:
    key = f"{key_prefix}recent"
    redis_client.zadd(key, {"a": 1.0, "b": 3.0, "c": 2.0})
    assert redis_client.zrevrange(key, 0, 1) == [b"b", b"c"]
    assert redis_client.dbsize() == 1


def test_redis_databases_are_isolated_per_test(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0


def test_broker_restart_keeps_data_and_port(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka")
    broker.start()
    try:
        from trackdelivery.topics import create_topics

        create_topics(broker.bootstrap, {"kept": 1})
        kafka_clients.produce(broker.bootstrap, "kept", [(None, b"before restart")], timeout=30)
        port = broker.port
        broker.stop()
        assert not broker.running
        assert not port_open("127.0.0.1", port)
        broker.start()
        assert broker.port == port
        assert [r.value for r in kafka_clients.read_topic(broker.bootstrap, "kept", timeout=30)] == [b"before restart"]
    finally:
        broker.kill()
    assert not broker.running


def test_cluster_ids_are_valid_kafka_uuids() -> None:
    ids = {random_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    # 1 in 64 raw ids starts with "-": 2000 draws would almost surely include some if not prevented
    assert all(len(i) == 22 and "=" not in i and not i.startswith("-") for i in ids)


def test_dev_up_status_down_leaves_no_process(tmp_path: Path) -> None:
    env_dir = {"TRACKDELIVERY_DEV_DIR": str(tmp_path / "dev")}
    command = [sys.executable, "-m", "trackdelivery", "dev"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        import os

        return subprocess.run([*command, *args], capture_output=True, text=True, timeout=180,
                              env={**os.environ, **env_dir}, check=False)

    up = run("up", "--partitions", "2")
    assert up.returncode == 0, up.stderr
    assert "export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:" in up.stdout
    status = run("status", "--json")
    assert status.returncode == 0, status.stderr
    states = {s["name"]: s for s in orjson.loads(status.stdout)}
    assert states["kafka"]["running"] and states["kafka"]["answering"]
    assert states["redis"]["running"] and states["redis"]["answering"]
    assert redis.Redis(port=states["redis"]["port"]).ping()
    pids = [states["kafka"]["pid"], states["redis"]["pid"]]

    again = run("up")  # idempotent: same processes
    assert again.returncode == 0
    assert f"pid {pids[0]}" in again.stdout

    down = run("down")
    assert down.returncode == 0
    assert "kafka" in down.stdout and "redis" in down.stdout
    assert not any(pid_alive(pid) for pid in pids)
    assert not port_open("127.0.0.1", states["kafka"]["port"])
    assert run("status").stdout.startswith("not running")


@pytest.mark.slow
def test_dev_up_a_three_broker_cluster_and_a_redis_cluster_that_survive_kills(tmp_path: Path) -> None:
    import os
    import signal

    from confluent_kafka.admin import NewTopic

    from trackdelivery.devenv.redis import parse_cluster_nodes

    env = {**os.environ, "TRACKDELIVERY_DEV_DIR": str(tmp_path / "dev")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "trackdelivery", "dev", *args], capture_output=True, text=True,
                              timeout=300, env=env, check=False)

    up = run("up", "--brokers", "3", "--redis-cluster", "--partitions", "3")
    assert up.returncode == 0, up.stderr
    assert "KAFKA_REPLICATION_FACTOR=3" in up.stdout and "REDIS_CLUSTER=true" in up.stdout
    try:
        states = {s["name"]: s for s in orjson.loads(run("status", "--json").stdout)}
        assert sorted(states) == ["kafka1", "kafka2", "kafka3", *(f"redis{n}" for n in range(1, 7))]
        assert all(s["running"] and s["answering"] for s in states.values())
        bootstrap = ",".join(states[f"kafka{n}"]["address"] for n in (1, 2, 3))
        admin = kafka_clients.admin_client(bootstrap)
        raw = admin.list_topics(topic="exim.mainlog.raw", timeout=30).topics["exim.mainlog.raw"].partitions
        assert len(raw) == 3 and all(len(p.replicas) == 3 for p in raw.values())
        admin.create_topics([NewTopic("probe", num_partitions=1, replication_factor=3)])["probe"].result(timeout=30)
        cluster = redis.RedisCluster(host="127.0.0.1", port=states["redis1"]["port"])
        assert cluster.set("k", "v") and cluster.get("k") == b"v"
        cluster.close()
        node = redis.Redis(port=states["redis1"]["port"])
        shape = parse_cluster_nodes(node.execute_command("CLUSTER", "NODES", NEVER_DECODE=True).decode())
        node.close()
        assert sum(info.is_master for info in shape) == 3 and sum(not info.is_master for info in shape) == 3

        # a killed broker and a killed Redis node come back on their ports with `dev up`
        for name in ("kafka2", "redis4"):
            os.kill(states[name]["pid"], signal.SIGKILL)
        assert run("up", "--brokers", "3", "--redis-cluster").returncode == 0
        again = {s["name"]: s for s in orjson.loads(run("status", "--json").stdout)}
        assert all(s["running"] and s["answering"] for s in again.values())
        assert {n: s["port"] for n, s in again.items()} == {n: s["port"] for n, s in states.items()}
        refused = run("up")  # another shape while this one runs
        assert refused.returncode != 0 and "dev down" in refused.stderr
    finally:
        down = run("down")
    assert down.returncode == 0 and "kafka" in down.stdout and "redis" in down.stdout
    assert not any(pid_alive(s["pid"]) for s in again.values())
