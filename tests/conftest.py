"""Real Kafka and Redis for the tests.

Order of choice: ``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL`` from the environment, else local processes
started once per session by the project's own dev tooling, else testcontainers when a Docker engine
answers. A service that cannot be had is a test error (never a skip), in CI and locally alike.

The Redis Cluster (``redis_cluster``, ``redis_cluster_factory``) is always started locally by the dev
tooling (``RedisClusterServers``: six ``redis-server`` processes, 3 masters + 3 replicas): its tests kill
nodes, so an outside cluster will not do.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from trackdelivery.devenv.exceptions import DevEnvError
from trackdelivery.devenv.kafka import KafkaBroker
from trackdelivery.devenv.redis import RedisClusterServers, RedisServer
from trackdelivery.topics import create_topics

REPO_ROOT = Path(__file__).resolve().parents[1]


def docker_engine_reachable() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    result = subprocess.run([docker, "info"], capture_output=True, timeout=20, check=False)
    return result.returncode == 0


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def kafka_bootstrap(services_dir: Path) -> Iterator[str]:
    if env := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield env
        return
    broker = KafkaBroker(services_dir / "kafka")
    try:
        broker.start()
    except DevEnvError as local_error:
        if not docker_engine_reachable():
            pytest.fail(f"no Kafka for the tests: {local_error}", pytrace=False)
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def redis_url(services_dir: Path) -> Iterator[str]:
    if env := os.environ.get("REDIS_URL"):
        yield env
        return
    server = RedisServer(services_dir / "redis")
    try:
        server.start()
    except DevEnvError as local_error:
        if not docker_engine_reachable():
            pytest.fail(f"no Redis for the tests: {local_error}", pytrace=False)
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7") as container:
            host, port = container.get_container_host_ip(), container.get_exposed_port(container.port)
            yield f"redis://{host}:{port}/0"
        return
    try:
        yield server.url
    finally:
        server.stop()


def _start_cluster(workdir: Path) -> RedisClusterServers:
    cluster = RedisClusterServers(workdir)
    try:
        cluster.start()
    except DevEnvError as error:
        pytest.fail(f"no Redis Cluster for the tests: {error}", pytrace=False)
    return cluster


@pytest.fixture(scope="session")
def redis_cluster(services_dir: Path) -> Iterator[RedisClusterServers]:
    """A healthy local Redis Cluster (3 masters + 3 replicas) for the session; tests share it by key prefix
    and must not kill its nodes (``redis_cluster_factory`` gives a private one)."""
    cluster = _start_cluster(services_dir / "redis-cluster")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_factory(tmp_path: Path) -> Iterator[Callable[[], RedisClusterServers]]:
    """A private Redis Cluster the test may kill nodes of; always stopped at teardown."""
    clusters: list[RedisClusterServers] = []

    def start() -> RedisClusterServers:
        cluster = _start_cluster(tmp_path / f"redis-cluster{len(clusters)}")
        clusters.append(cluster)
        return cluster

    yield start
    for cluster in clusters:
        cluster.kill()


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Callable[..., str]:
    """``topic_factory(partitions=1)`` creates a fresh topic that only this test uses."""

    def create(partitions: int = 1, prefix: str = "test") -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}"
        create_topics(kafka_bootstrap, {name: partitions})
        return name

    return create


@pytest.fixture
def kafka_broker_factory(tmp_path: Path) -> Iterator[Callable[[], KafkaBroker]]:
    """A private broker the test may stop, kill and restart; always stopped at teardown."""
    brokers: list[KafkaBroker] = []

    def start() -> KafkaBroker:
        broker = KafkaBroker(tmp_path / f"kafka{len(brokers)}")
        brokers.append(broker)
        try:
            broker.start()
        except DevEnvError as error:
            pytest.fail(f"could not start a private Kafka broker: {error}", pytrace=False)
        return broker

    yield start
    for broker in brokers:
        broker.kill()


_redis_databases = itertools.cycle(range(1, 16))


@pytest.fixture
def redis_db_url(redis_url: str) -> str:
    """A Redis URL on a database of its own, emptied for this test."""
    base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url
    url = f"{base}/{next(_redis_databases)}"
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


@pytest.fixture
def redis_client(redis_db_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_db_url)
    yield client
    client.close()


@pytest.fixture
def key_prefix() -> str:
    """A Redis key prefix unique to this test."""
    return f"t{uuid.uuid4().hex[:10]}:"
