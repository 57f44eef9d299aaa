"""The pipeline's commands against a real Kafka 4.x broker that wants SASL and TLS.

One private broker (the dev tooling's, with its configuration replaced) listens with
SASL_PLAINTEXT (PLAIN, SCRAM-SHA-256), SASL_SSL (SCRAM-SHA-256, SCRAM-SHA-512) and SSL with required
client certificates, beside the PLAINTEXT listener its controller and the test's own checks use.
Every command is configured only through the ``KAFKA_*`` variables an operator would set:
``topics create`` (librdkafka admin), ``replay`` (the shipper's producer), ``process`` (its librdkafka
metadata probe, then faust's consumer, producers and admin), and ``rebuild`` (aiokafka).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from click.testing import CliRunner

from tests.processors._support import REPO_ROOT, WorkerProcess, wait_caught_up
from tests.trackdelivery.tls import TlsFiles, make_tls_files
from trackdelivery.cli import main
from trackdelivery.devenv.exceptions import DevEnvError
from trackdelivery.devenv.kafka import KafkaBroker, ensure_jars, java_binary, random_cluster_id
from trackdelivery.devenv.ports import free_port
from trackdelivery.settings import KafkaSettings, TopicNames

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]

USER = "trackdelivery"
PASSWORD = "kafka-Pa55word"


class SecureKafkaBroker(KafkaBroker):
    def __init__(self, workdir: Path, tls: TlsFiles) -> None:
        super().__init__(workdir)
        used = {self.port, self.controller_port}
        self.sasl_port = free_port(exclude=used)
        self.sasl_ssl_port = free_port(exclude=used | {self.sasl_port})
        self.ssl_port = free_port(exclude=used | {self.sasl_port, self.sasl_ssl_port})
        self.tls = tls

    def _write_config(self) -> None:
        keystore = self.workdir / "broker-keystore.pem"
        keystore.write_text(self.tls.server_key.read_text() + self.tls.server_cert.read_text())
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        host = "127.0.0.1"
        self.config_path.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers={host}:{self.controller_port}",
            f"listeners=PLAINTEXT://{host}:{self.port},CONTROLLER://{host}:{self.controller_port},"
            f"SASL_PLAINTEXT://{host}:{self.sasl_port},SASL_SSL://{host}:{self.sasl_ssl_port},SSL://{host}:{self.ssl_port}",
            f"advertised.listeners=PLAINTEXT://{host}:{self.port},CONTROLLER://{host}:{self.controller_port},"
            f"SASL_PLAINTEXT://{host}:{self.sasl_port},SASL_SSL://{host}:{self.sasl_ssl_port},SSL://{host}:{self.ssl_port}",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,"
            "SASL_SSL:SASL_SSL,SSL:SSL",
            "inter.broker.listener.name=PLAINTEXT",
            "controller.listener.names=CONTROLLER",
            "listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config="
            f'org.apache.kafka.common.security.plain.PlainLoginModule required user_{USER}="{PASSWORD}";',
            f"listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config={scram}",
            "listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512",
            f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram}",
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={keystore}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.tls.ca}",
            "listener.name.ssl.ssl.client.auth=required",
            f"log.dirs={self.workdir / 'data'}",
            "num.partitions=1",
            "auto.create.topics.enable=false",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=2",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "group.min.session.timeout.ms=1000",
            "",
        ]))

    def _format_storage(self, libs: Path) -> None:
        if (self.workdir / "data" / "meta.properties").exists():
            return
        result = subprocess.run(
            [java_binary(), "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format", "--standalone",
             "-t", random_cluster_id(), "-c", str(self.config_path),
             "--add-scram", f"SCRAM-SHA-256=[name={USER},password={PASSWORD}]",
             "--add-scram", f"SCRAM-SHA-512=[name={USER},password={PASSWORD}]"],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise DevEnvError(f"kafka StorageTool format failed:\n{result.stdout}{result.stderr}")


@dataclass(frozen=True, slots=True)
class SecureKafka:
    broker: SecureKafkaBroker
    tls: TlsFiles

    def sasl_plaintext(self, mechanism: str = "PLAIN") -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{self.broker.sasl_port}",
                "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": mechanism,
                "KAFKA_SASL_USERNAME": USER, "KAFKA_SASL_PASSWORD": PASSWORD}

    def sasl_ssl(self, mechanism: str = "SCRAM-SHA-512", password: str = PASSWORD) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{self.broker.sasl_ssl_port}",
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": mechanism,
                "KAFKA_SASL_USERNAME": USER, "KAFKA_SASL_PASSWORD": password, "KAFKA_SSL_CAFILE": str(self.tls.ca)}

    def mutual_tls(self) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{self.broker.ssl_port}", "KAFKA_SECURITY_PROTOCOL": "SSL",
                "KAFKA_SSL_CAFILE": str(self.tls.ca), "KAFKA_SSL_CERTFILE": str(self.tls.client_cert),
                "KAFKA_SSL_KEYFILE": str(self.tls.client_key)}


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    workdir = tmp_path_factory.mktemp("secure-kafka")
    tls = make_tls_files(workdir / "tls")
    ensure_jars()
    broker = SecureKafkaBroker(workdir / "broker", tls)
    try:
        broker.start()
    except DevEnvError as error:
        pytest.fail(f"could not start the SASL/TLS broker: {error}", pytrace=False)
    try:
        yield SecureKafka(broker, tls)
    finally:
        broker.stop()


def exim_log(path: Path, server: str, count: int) -> Path:
    """``count`` delivered messages, written a few minutes ago (inside the store's retention)."""
    start = time.time() - 600
    lines = []
    for n in range(count):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start + n))
        msgid = f"1tSecu-{n:06d}-AB"
        lines += [
            f"{stamp} {msgid} <= alice@shop.example H=client.example [203.0.113.7] P=esmtpsa "
            f"A=dovecot_login:alice@shop.example S=2048 id=m{n}@shop.example T=\"Order {n}\"",
            f"{stamp} {msgid} => bob{n}@gmail.com R=dkim_lookuphost T=dkim_remote_smtp "
            f"H=gmail-smtp-in.l.google.com [142.250.1.27] X=TLS1.3:TLS_AES_256_GCM_SHA384:256 CV=yes "
            f'C="250 2.0.0 OK 1764 - gsmtp"',
            f"{stamp} {msgid} Completed",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


async def delivered_events(redis_url: str, prefix: str, server: str) -> int:
    from query_service.search import DeliverySearch
    from trackdelivery.events import EventType
    from trackdelivery.store import StoreSettings
    from trackdelivery.store.types import Query

    client = aioredis.Redis.from_url(redis_url)
    try:
        result = await DeliverySearch(client, StoreSettings(prefix=prefix)).search(
            Query(server=server, types=frozenset({EventType.DELIVERED})), now=time.time()
        )
        return len(result.events)
    finally:
        await client.aclose()


def test_pipeline_commands_over_sasl_and_tls(secure_kafka: SecureKafka, redis_db_url: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    server = f"secure-{tag}.example.net"
    topics = {f"TRACKDELIVERY_TOPIC_{field.upper()}": f"sec.{tag}.{field}" for field in TopicNames.model_fields}
    base = {key: value for key, value in os.environ.items() if not key.startswith(("KAFKA_", "REDIS_URL"))}
    common = {**base, **topics, "REDIS_URL": redis_db_url, "TRACKDELIVERY_STORE_PREFIX": f"sec{tag}",
              "PYTHONPATH": str(REPO_ROOT)}
    runner = CliRunner()

    # topics: librdkafka's admin client over SASL_SSL with SCRAM-SHA-512 and a private CA
    created = runner.invoke(main, ["topics", "create", "--partitions", "2", "--replication-factor", "1"],
                            env={**topics, **secure_kafka.sasl_ssl()})
    assert created.exit_code == 0, created.output
    assert "created, 2 partitions" in created.output

    # replay: the shipper's producer over SASL_PLAINTEXT with PLAIN
    log = exim_log(tmp_path / "exim_mainlog", server, 20)
    shipped = subprocess.run(
        [sys.executable, "-m", "trackdelivery", "replay", "--server", server, "--no-progress", str(log)],
        env={**common, **secure_kafka.sasl_plaintext()}, capture_output=True, text=True, timeout=120, check=False,
    )
    assert shipped.returncode == 0, shipped.stderr[-3000:]
    assert "lines=60" in shipped.stdout and "failed=0" in shipped.stdout

    # process: the partition probe (librdkafka) and the faust worker over SASL_SSL with SCRAM-SHA-256
    group = f"sec-{tag}"
    worker_env = {**common, **secure_kafka.sasl_ssl("SCRAM-SHA-256"), "TRACKDELIVERY_PROCESSOR_APP_ID": group,
                  "TRACKDELIVERY_PROCESSOR_DATADIR": str(tmp_path / "faust"),
                  "TRACKDELIVERY_PROCESSOR_SESSION_TIMEOUT": "6"}
    worker = WorkerProcess(worker_env, tmp_path / "worker.log", free_port()).start()
    try:
        wait_caught_up(secure_kafka.broker.bootstrap, group, topics["TRACKDELIVERY_TOPIC_RAW"], [worker])
        assert worker.terminate() == 0, worker.log_tail()
    finally:
        worker.kill()
    assert asyncio.run(delivered_events(redis_db_url, f"sec{tag}", server)) == 20

    # rebuild: aiokafka over SSL with a client certificate, into the emptied database
    flushing = redis.Redis.from_url(redis_db_url)
    try:
        flushing.flushdb()
    finally:
        flushing.close()
    rebuilt = subprocess.run(
        [sys.executable, "-m", "trackdelivery", "rebuild", "--json", "--no-progress"],
        env={**common, **secure_kafka.mutual_tls()}, capture_output=True, text=True, timeout=180, check=False,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert '"events_total"' in rebuilt.stdout
    assert asyncio.run(delivered_events(redis_db_url, f"sec{tag}", server)) == 20


def test_wrong_credentials_are_refused(secure_kafka: SecureKafka) -> None:
    from trackdelivery.topics import create_topics

    wrong = secure_kafka.sasl_ssl(password="not-the-password")
    kafka = KafkaSettings(
        bootstrap_servers=wrong["KAFKA_BOOTSTRAP_SERVERS"], security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512", sasl_username=USER, sasl_password=wrong["KAFKA_SASL_PASSWORD"],  # type: ignore[arg-type]
        ssl_cafile=str(secure_kafka.tls.ca),
    )
    with pytest.raises(DevEnvError):
        create_topics(kafka, {f"refused.{uuid.uuid4().hex[:8]}": 1}, timeout=5)
    no_client_certificate = KafkaSettings(bootstrap_servers=f"127.0.0.1:{secure_kafka.broker.ssl_port}",
                                          security_protocol="SSL", ssl_cafile=str(secure_kafka.tls.ca))
    with pytest.raises(DevEnvError):
        create_topics(no_client_certificate, {f"refused.{uuid.uuid4().hex[:8]}": 1}, timeout=5)
