"""Create the pipeline's Kafka topics explicitly: auto-creation is never assumed (dev brokers turn it off).

``trackdelivery topics create`` creates every topic of the pipeline (a one-shot step of a deployment).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import click
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic

from trackdelivery.devenv.exceptions import DevEnvError
from trackdelivery.kafka_clients import admin_client
from trackdelivery.settings import KafkaSettings, TopicNames, as_kafka_settings, topic_partitions


def create_topics(
    bootstrap: str | KafkaSettings,
    topics: Mapping[str, int],
    replication: int = 1,
    configs: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> list[str]:
    """Create each topic with its partition count; topics that already exist are left as they are.

    ``bootstrap`` is a ``KafkaSettings`` (its TLS/SASL settings apply) or a bare address string (PLAINTEXT).
    Returns the topics this call created.
    """
    kafka = as_kafka_settings(bootstrap)
    admin = admin_client(kafka)
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    created: list[str] = []
    while time.monotonic() < deadline:
        wait = max(1.0, min(10.0, deadline - time.monotonic()))
        try:
            existing = set(admin.list_topics(timeout=wait).topics)
            missing = [
                NewTopic(name, num_partitions=partitions, replication_factor=replication, config=dict(configs or {}))
                for name, partitions in topics.items() if name not in existing
            ]
            if missing:
                for name, future in admin.create_topics(missing, request_timeout=30).items():
                    try:
                        future.result(timeout=60)
                    except KafkaException as error:
                        if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                            raise
                    if name not in created:
                        created.append(name)
            if set(topics) <= set(admin.list_topics(timeout=wait).topics):
                return created
        except KafkaException as error:  # broker not reachable yet, or not ready to create
            last_error = error
        time.sleep(0.5)
    raise DevEnvError(f"could not create topics {sorted(topics)} on {kafka.bootstrap_servers}: {last_error}")


@click.group()
def topics() -> None:
    """The pipeline's Kafka topics."""


@topics.command("create")
@click.option("--partitions", type=click.IntRange(min=1),
              help="partitions of the partitioned topics (all but the alerts topic) [KAFKA_PARTITIONS, 8]")
@click.option("--replication-factor", type=click.IntRange(min=1), help="[KAFKA_REPLICATION_FACTOR, 1]")
@click.option("--timeout", type=click.FloatRange(min=1), default=120.0, show_default=True,
              help="seconds to keep trying while the brokers are not reachable")
def create(partitions: int | None, replication_factor: int | None, timeout: float) -> None:
    """Create every topic of the pipeline that does not exist yet (existing topics are left unchanged).

    Brokers, TLS and SASL come from the KAFKA_* environment, topic names from TRACKDELIVERY_TOPIC_*.
    """
    overrides: dict[str, Any] = {"partitions": partitions, "replication_factor": replication_factor}
    try:
        kafka = KafkaSettings(**{key: value for key, value in overrides.items() if value is not None})
        wanted = topic_partitions(kafka, TopicNames())
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    try:
        created = create_topics(kafka, wanted, kafka.replication_factor, timeout=timeout)
    except DevEnvError as error:
        raise click.ClickException(str(error)) from error
    for name, count in wanted.items():
        state = f"created, {count} partitions" if name in created else "exists (left unchanged)"
        click.echo(f"{name}: {state}")
