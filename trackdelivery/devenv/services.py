"""``trackdelivery dev up|down|status``: one local Kafka and one Redis that outlive the command.

Their pids and ports are kept in ``<state dir>/state.json`` so later commands find them again.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from trackdelivery.devenv.kafka import KafkaBroker
from trackdelivery.devenv.ports import port_open
from trackdelivery.devenv.redis import RedisServer
from trackdelivery.settings import KafkaSettings, TopicNames, topic_partitions
from trackdelivery.topics import create_topics

REPO_ROOT = Path(__file__).resolve().parents[2]


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
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="trackdelivery-dev")
    try:
        return len(consumer.partitions_for_topic(topic) or ()) or None
    finally:
        consumer.close()


class DevServices:
    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = state_dir or default_state_dir()
        self.state_file = self.state_dir / "state.json"

    def _load(self) -> tuple[KafkaBroker | None, RedisServer | None]:
        if not self.state_file.exists():
            return None, None
        state = orjson.loads(self.state_file.read_bytes())
        kafka = KafkaBroker(
            self.state_dir / "kafka", state["kafka"]["port"], controller_port=state["kafka"]["controller_port"]
        )
        kafka.pid = state["kafka"]["pid"]
        redis_server = RedisServer(self.state_dir / "redis", state["redis"]["port"])
        redis_server.pid = state["redis"]["pid"]
        return kafka, redis_server

    def _save(self, kafka: KafkaBroker, redis_server: RedisServer) -> None:
        state = {
            "kafka": {"pid": kafka.pid, "port": kafka.port, "controller_port": kafka.controller_port},
            "redis": {"pid": redis_server.pid, "port": redis_server.port},
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(state, option=orjson.OPT_INDENT_2))
        tmp.replace(self.state_file)

    def up(self, *, partitions: int = 8, fresh: bool = False) -> tuple[KafkaBroker, RedisServer]:
        """Start whatever is not running yet (idempotent) and create the pipeline's topics."""
        kafka, redis_server = self._load()
        if fresh:
            self.down()
            shutil.rmtree(self.state_dir, ignore_errors=True)
            kafka, redis_server = None, None
        if kafka is None or redis_server is None:
            kafka = KafkaBroker(self.state_dir / "kafka")
            redis_server = RedisServer(self.state_dir / "redis")
        if not kafka.running:
            kafka.pid = None
            kafka.start(detach=True)
        if not redis_server.running:
            redis_server.pid = None
            redis_server.start(detach=True)
        self._save(kafka, redis_server)
        names = TopicNames()
        # topics added by a newer version join an existing raw topic's partition count (they are co-partitioned)
        partitions = existing_partitions(kafka.bootstrap, names.raw) or partitions
        settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, partitions=partitions)
        create_topics(kafka.bootstrap, topic_partitions(settings, names))
        return kafka, redis_server

    def status(self) -> list[ServiceState]:
        kafka, redis_server = self._load()
        if kafka is None or redis_server is None:
            return []
        return [
            ServiceState("kafka", kafka.pid, kafka.port, kafka.running,
                         port_open("127.0.0.1", kafka.port), kafka.bootstrap),
            ServiceState("redis", redis_server.pid, redis_server.port, redis_server.running,
                         port_open("127.0.0.1", redis_server.port), redis_server.url),
        ]

    def down(self) -> list[str]:
        kafka, redis_server = self._load()
        stopped = []
        for name, service in (("kafka", kafka), ("redis", redis_server)):
            if service is not None and service.running:
                service.stop()
                stopped.append(name)
        if self.state_file.exists():
            self.state_file.unlink()
        return stopped


def describe(states: list[ServiceState]) -> list[dict[str, object]]:
    return [asdict(state) for state in states]
