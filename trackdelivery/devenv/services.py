"""``trackdelivery dev up|down|status``: a local Kafka (one broker, or a cluster of several) and a Redis (one
server, or a Redis Cluster of 3 masters + 3 replicas) that outlive the command.

Their pids and ports are kept in ``<state dir>/state.json`` so later commands find them again.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from trackdelivery.devenv.exceptions import DevEnvError
from trackdelivery.devenv.kafka import KafkaCluster
from trackdelivery.devenv.ports import port_open
from trackdelivery.devenv.redis import RedisClusterServers, RedisServer
from trackdelivery.settings import KafkaSettings, TopicNames, topic_partitions
from trackdelivery.topics import create_topics

REPO_ROOT = Path(__file__).resolve().parents[2]
STATE_VERSION = 2


def default_state_dir() -> Path:
    return Path(os.environ.get("TRACKDELIVERY_DEV_DIR", REPO_ROOT / ".dev"))


@dataclass(frozen=True)
class ServiceState:
    name: str
    pid: int | None
    port: int
    running: bool
    answering: bool
    address: str


def existing_partitions(bootstrap: str, topic: str) -> int | None:
    from trackdelivery.kafka_clients import partition_count

    return partition_count(bootstrap, topic) or None


class DevRedis:
    """The dev Redis: one server, or a Redis Cluster (``cluster``)."""

    def __init__(self, servers: RedisServer | RedisClusterServers) -> None:
        self.servers = servers

    @property
    def cluster(self) -> bool:
        return isinstance(self.servers, RedisClusterServers)

    @property
    def nodes(self) -> list[RedisServer]:
        return self.servers.nodes if isinstance(self.servers, RedisClusterServers) else [self.servers]

    @property
    def url(self) -> str:
        return self.servers.url

    @property
    def pid(self) -> int | None:
        return self.nodes[0].pid

    @property
    def running(self) -> bool:
        return all(node.running for node in self.nodes)

    def stop(self) -> None:
        self.servers.stop()


class DevServices:
    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = state_dir or default_state_dir()
        self.state_file = self.state_dir / "state.json"

    def _load(self) -> tuple[KafkaCluster | None, DevRedis | None]:
        if not self.state_file.exists():
            return None, None
        state = orjson.loads(self.state_file.read_bytes())
        if state.get("version") != STATE_VERSION:  # an older layout: stop what it names, start afresh
            self._stop_legacy(state)
            self.state_file.unlink()
            return None, None
        nodes = state["kafka"]["nodes"]
        kafka = KafkaCluster(self.state_dir / "kafka", ports=[(n["port"], n["controller_port"]) for n in nodes],
                             cluster_id=state["kafka"]["cluster_id"])
        for broker, node in zip(kafka.brokers, nodes, strict=True):
            broker.pid = node["pid"]
        redis_state = state["redis"]
        servers: RedisServer | RedisClusterServers
        if redis_state["cluster"]:
            servers = RedisClusterServers(self.state_dir / "redis-cluster",
                                          ports=[(n["port"], n["bus_port"]) for n in redis_state["nodes"]])
        else:
            servers = RedisServer(self.state_dir / "redis", redis_state["nodes"][0]["port"])
        redis = DevRedis(servers)
        for server, node in zip(redis.nodes, redis_state["nodes"], strict=True):
            server.pid = node["pid"]
        return kafka, redis

    @staticmethod
    def _stop_legacy(state: dict[str, Any]) -> None:
        import signal

        from trackdelivery.devenv.process import pid_alive, terminate_pid

        for name in ("kafka", "redis"):
            pid = (state.get(name) or {}).get("pid")
            if isinstance(pid, int) and pid_alive(pid):
                terminate_pid(pid, signal.SIGTERM, 60.0)

    def _save(self, kafka: KafkaCluster, redis: DevRedis) -> None:
        state = {
            "version": STATE_VERSION,
            "kafka": {
                "cluster_id": kafka.cluster_id,
                "nodes": [{"pid": b.pid, "port": b.port, "controller_port": b.controller_port} for b in kafka.brokers],
            },
            "redis": {
                "cluster": redis.cluster,
                "nodes": [
                    {"pid": node.pid, "port": node.port,
                     "bus_port": redis.servers.bus_ports[index] if isinstance(redis.servers, RedisClusterServers)
                     else None}
                    for index, node in enumerate(redis.nodes)
                ],
            },
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(state, option=orjson.OPT_INDENT_2))
        tmp.replace(self.state_file)

    def up(
        self, *, partitions: int = 8, fresh: bool = False, brokers: int = 1, redis_cluster: bool = False,
    ) -> tuple[KafkaCluster, DevRedis]:
        """Start whatever is not running yet (idempotent) and create the pipeline's topics (replication
        factor min(3, brokers)). Asking for another shape than the running one needs ``fresh``."""
        kafka, redis = self._load()
        if fresh:
            self.down()
            shutil.rmtree(self.state_dir, ignore_errors=True)
            kafka, redis = None, None
        running_shape = None if kafka is None or redis is None else (len(kafka.brokers), redis.cluster)
        if running_shape is not None and running_shape != (brokers, redis_cluster):
            shape = f"{running_shape[0]} broker(s), Redis {'Cluster' if running_shape[1] else 'single'}"
            raise DevEnvError(f"the dev services run as {shape}: `trackdelivery dev down` first, or pass --fresh")
        if kafka is None or redis is None:
            if self.state_dir.exists():
                shutil.rmtree(self.state_dir / "kafka", ignore_errors=True)
                shutil.rmtree(self.state_dir / "redis-cluster", ignore_errors=True)
            kafka = KafkaCluster(self.state_dir / "kafka", brokers, heap="768m" if brokers == 1 else "512m")
            redis = DevRedis(RedisClusterServers(self.state_dir / "redis-cluster") if redis_cluster
                             else RedisServer(self.state_dir / "redis"))
            created = True
        else:
            created = False
        for broker in kafka.brokers:
            if not broker.running:
                broker.pid = None
        kafka.start(detach=True)
        if isinstance(redis.servers, RedisClusterServers):
            if created:
                redis.servers.start(detach=True)
            else:
                redis.servers.resume(detach=True)
        elif not redis.servers.running:
            redis.servers.pid = None
            redis.servers.start(detach=True)
        self._save(kafka, redis)
        names = TopicNames()
        # topics added by a newer version join an existing raw topic's partition count (they are co-partitioned)
        partitions = existing_partitions(kafka.bootstrap, names.raw) or partitions
        settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, partitions=partitions,
                                 replication_factor=kafka.replication)
        create_topics(settings, topic_partitions(settings, names), kafka.replication)
        return kafka, redis

    def status(self) -> list[ServiceState]:
        kafka, redis = self._load()
        if kafka is None or redis is None:
            return []
        states = []
        for number, broker in enumerate(kafka.brokers, start=1):
            name = "kafka" if len(kafka.brokers) == 1 else f"kafka{number}"
            states.append(ServiceState(name, broker.pid, broker.port, broker.running,
                                       port_open("127.0.0.1", broker.port), broker.bootstrap))
        for number, node in enumerate(redis.nodes, start=1):
            name = "redis" if not redis.cluster else f"redis{number}"
            states.append(ServiceState(name, node.pid, node.port, node.running,
                                       port_open("127.0.0.1", node.port), node.url))
        return states

    def down(self) -> list[str]:
        kafka, redis = self._load()
        stopped = []
        if kafka is not None and any(broker.running for broker in kafka.brokers):
            kafka.stop()
            stopped.append("kafka")
        if redis is not None and any(node.running for node in redis.nodes):
            redis.stop()
            stopped.append("redis")
        if self.state_file.exists():
            self.state_file.unlink()
        return stopped


def describe(states: list[ServiceState]) -> list[dict[str, object]]:
    return [asdict(state) for state in states]
