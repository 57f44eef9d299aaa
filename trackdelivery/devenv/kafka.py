"""A real Apache Kafka 4.x broker (KRaft combined mode) run from the Maven Central jars, alone or as a
cluster of several.

The jars are resolved by ``deploy/kafka/pom.xml`` into ``deploy/kafka/libs`` (cached, not committed);
``ensure_jars()`` runs Maven when they are missing. A ``KafkaBroker`` owns one work directory: its
config, data and console log. Restarting a stopped broker reuses its ports and data. A ``KafkaCluster``
is N combined broker+controller nodes with a static controller quorum, replication factor
min(3, N) and ``min.insync.replicas`` = replication - 1 (2 for three nodes).
"""

from __future__ import annotations

import base64
import concurrent.futures
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from trackdelivery.devenv.exceptions import DevEnvError
from trackdelivery.devenv.ports import free_port, port_open, wait_for
from trackdelivery.devenv.process import ManagedProcess

KAFKA_DIR = Path(__file__).resolve().parents[2] / "deploy" / "kafka"
READY_MARKER = b"Kafka Server started"


def libs_dir() -> Path:
    return Path(os.environ.get("TRACKDELIVERY_KAFKA_LIBS", KAFKA_DIR / "libs"))


def ensure_jars() -> Path:
    """Resolve the Kafka jars with Maven unless they are already there."""
    libs = libs_dir()
    if any(libs.glob("kafka_2.13-*.jar")):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise DevEnvError("Kafka jars are missing and Maven (mvn) is not installed: run `make install`")
    result = subprocess.run(
        [mvn, "-q", "-B", "-f", str(KAFKA_DIR / "pom.xml"), "dependency:copy-dependencies",
         f"-DoutputDirectory={libs}"],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0 or not any(libs.glob("kafka_2.13-*.jar")):
        raise DevEnvError(f"Maven could not resolve the Kafka jars:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return libs


def java_binary() -> str:
    java = shutil.which("java")
    if java is None:
        raise DevEnvError("java is not installed (Kafka needs Java 17+): run `make install`")
    return java


def random_cluster_id() -> str:
    """A Kafka Uuid in its text form (URL-safe base64 of 16 bytes, no padding).

    Like Kafka's own ``Uuid.randomUuid`` it never starts with "-", which command lines would take for an option.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not text.startswith("-"):
            return text


class KafkaBroker(ManagedProcess):
    """One KRaft broker+controller on loopback: a single-node cluster, or node ``node_id`` of a
    ``KafkaCluster`` (``voters`` = the static quorum, ``cluster_id`` shared by every node)."""

    def __init__(
        self, workdir: Path, port: int | None = None, *, controller_port: int | None = None, heap: str = "768m",
        node_id: int = 1, voters: str | None = None, cluster_id: str | None = None, replication: int = 1,
    ) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.controller_port = controller_port or free_port(exclude={self.port})
        self.heap = heap
        self.node_id = node_id
        self.voters = voters
        self.cluster_id = cluster_id
        self.replication = replication
        super().__init__()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "server.properties"

    @property
    def console_log(self) -> Path:
        return self.workdir / "kafka.out"

    def _write_config(self) -> None:
        template = (KAFKA_DIR / "server.properties.template").read_text()
        if self.voters is None:
            quorum = f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}"
        else:
            quorum = f"controller.quorum.voters={self.voters}"
        self.config_path.write_text(
            template.format(
                node_id=self.node_id, quorum=quorum, port=self.port, controller_port=self.controller_port,
                data_dir=self.workdir / "data", replication=self.replication,
                min_isr=max(1, self.replication - 1),
            )
        )

    def _format_storage(self, libs: Path) -> None:
        if (self.workdir / "data" / "meta.properties").exists():
            return
        quorum = ["--standalone"] if self.voters is None else []
        result = subprocess.run(
            [java_binary(), "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format", *quorum,
             "-t", self.cluster_id or random_cluster_id(), "-c", str(self.config_path)],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise DevEnvError(f"kafka StorageTool format failed:\n{result.stdout}{result.stderr}")

    def start(self, timeout: float = 120.0, *, detach: bool = False) -> None:
        """Format storage on the first start, start the broker and wait until it serves clients."""
        if self.running:
            return
        log_offset = self.launch(detach=detach)
        self.wait_ready(log_offset, timeout)

    def launch(self, *, detach: bool = False) -> int:
        """Start the process without waiting (the nodes of a cluster only get ready together); returns
        the console log offset ``wait_ready`` looks after."""
        libs = ensure_jars()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._format_storage(libs)
        log_offset = self.console_log.stat().st_size if self.console_log.exists() else 0
        env = {**os.environ, "KAFKA_HEAP_OPTS": f"-Xms{self.heap} -Xmx{self.heap}"}
        command = [
            java_binary(), f"-Xms{self.heap}", f"-Xmx{self.heap}", "-XX:+UseG1GC",
            "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.workdir / 'logs'}",
            "-cp", f"{libs}/*", "kafka.Kafka", str(self.config_path),
        ]
        with self.console_log.open("ab") as out:
            self._process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=detach,
            )
        self.pid = self._process.pid
        return log_offset

    def wait_ready(self, log_offset: int, timeout: float = 120.0) -> None:
        try:
            wait_for(lambda: self._ready(log_offset), timeout, f"Kafka on {self.bootstrap}")
        except DevEnvError:
            tail = self.console_log.read_bytes()[-3000:].decode("utf-8", "replace")
            self.kill()
            raise DevEnvError(f"Kafka did not start within {timeout:.0f}s; console log tail:\n{tail}") from None

    def _ready(self, log_offset: int) -> bool:
        if not self.running:
            tail = self.console_log.read_bytes()[-3000:].decode("utf-8", "replace")
            raise DevEnvError(f"Kafka exited during start-up:\n{tail}")
        with self.console_log.open("rb") as log:
            log.seek(log_offset)
            started = READY_MARKER in log.read()
        return started and port_open("127.0.0.1", self.port)


class KafkaCluster:
    """``size`` KRaft nodes, each broker and controller, forming one cluster on loopback.

    Every node keeps its ports and data across ``stop``/``start`` of single nodes, so a chaos test can
    SIGKILL a broker and bring it back as the same node.
    """

    def __init__(
        self, workdir: Path, size: int = 3, *, heap: str = "512m", ports: list[tuple[int, int]] | None = None,
        cluster_id: str | None = None,
    ) -> None:
        """``ports`` and ``cluster_id`` (both or neither) rebuild a cluster that ran before (its data is in
        ``workdir``): (client port, controller port) per node."""
        if size < 1:
            raise DevEnvError("a Kafka cluster needs at least one node")
        self.workdir = Path(workdir)
        if ports is None:
            taken: set[int] = set()
            ports = []
            for _ in range(size):
                port = free_port(exclude=taken)
                taken.add(port)
                controller_port = free_port(exclude=taken)
                taken.add(controller_port)
                ports.append((port, controller_port))
        size = len(ports)
        self.replication = min(3, size)
        self.cluster_id = cluster_id or random_cluster_id()
        voters = ",".join(f"{node}@127.0.0.1:{cport}" for node, (_, cport) in enumerate(ports, start=1))
        self.brokers = [
            KafkaBroker(
                self.workdir / f"node{node}", port, controller_port=cport, heap=heap, node_id=node,
                voters=voters if size > 1 else None, cluster_id=self.cluster_id, replication=self.replication,
            )
            for node, (port, cport) in enumerate(ports, start=1)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(broker.bootstrap for broker in self.brokers)

    @property
    def running(self) -> bool:
        return all(broker.running for broker in self.brokers)

    def start(self, timeout: float = 180.0, *, detach: bool = False) -> None:
        """Start every node that is not running and wait until all of them serve clients."""
        pending = [(broker, broker.launch(detach=detach)) for broker in self.brokers if not broker.running]
        try:
            with concurrent.futures.ThreadPoolExecutor(len(pending) or 1) as pool:
                for future in [pool.submit(b.wait_ready, offset, timeout) for b, offset in pending]:
                    future.result()
        except DevEnvError:
            self.stop()
            raise

    def restart(self, node: int, timeout: float = 120.0) -> None:
        """Start node ``node`` (1-based) again after a stop or kill, same ports and data."""
        broker = self.brokers[node - 1]
        if not broker.running:
            broker.pid = None
            broker.start(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every node at once (a node shut down alone after the others waits for a quorum that will
        not come back), SIGKILL those still running after ``timeout``."""
        with concurrent.futures.ThreadPoolExecutor(len(self.brokers)) as pool:
            for future in [pool.submit(broker.stop, timeout) for broker in self.brokers]:
                future.result()
