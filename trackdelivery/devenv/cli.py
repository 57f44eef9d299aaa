"""``trackdelivery dev``: run a real Kafka and Redis locally for development and demos."""

from __future__ import annotations

import sys

import click
import orjson

from trackdelivery.devenv.exceptions import DevEnvError
from trackdelivery.devenv.services import DevServices, describe


@click.group()
def dev() -> None:
    """Start, stop and inspect a local Kafka 4.x broker and Redis on free loopback ports."""


@dev.command()
@click.option("--partitions", default=8, show_default=True, help="Partitions of the pipeline's topics.")
@click.option("--brokers", type=click.IntRange(1, 9), default=1, show_default=True,
              help="Kafka nodes (KRaft, each broker and controller); topics get replication factor min(3, N) "
              "and min.insync.replicas = replication - 1.")
@click.option("--redis-cluster", is_flag=True, help="A Redis Cluster of 3 masters + 3 replicas instead of one Redis.")
@click.option("--fresh", is_flag=True, help="Throw away the previous data first.")
def up(partitions: int, brokers: int, redis_cluster: bool, fresh: bool) -> None:
    """Start Kafka and Redis (if not running), create the topics, print how to reach them."""
    try:
        kafka, redis = DevServices().up(partitions=partitions, fresh=fresh, brokers=brokers,
                                        redis_cluster=redis_cluster)
    except DevEnvError as error:
        raise click.ClickException(str(error)) from error
    for number, broker in enumerate(kafka.brokers, start=1):
        click.echo(f"Kafka  {broker.bootstrap}  (node {number}, pid {broker.pid}, data {broker.workdir})")
    for node in redis.nodes:
        click.echo(f"Redis  {node.url}  (pid {node.pid})")
    exports = f"export KAFKA_BOOTSTRAP_SERVERS={kafka.bootstrap} REDIS_URL={redis.url}"
    if kafka.replication > 1:
        exports += f" KAFKA_REPLICATION_FACTOR={kafka.replication}"
    if redis.cluster:
        exports += " REDIS_CLUSTER=true REDIS_WAIT_REPLICAS=1"
    click.echo(exports)


@dev.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def status(as_json: bool) -> None:
    """Show whether the local Kafka and Redis are running and answering."""
    states = DevServices().status()
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(describe(states)) + b"\n")
        return
    if not states:
        click.echo("not running (start with: trackdelivery dev up)")
        return
    for state in states:
        health = "running" if state.running and state.answering else "DOWN"
        click.echo(f"{state.name:<6} {health:<8} {state.address}  pid {state.pid}")
    if not all(s.running and s.answering for s in states):
        sys.exit(1)


@dev.command()
def down() -> None:
    """Stop the local Kafka and Redis."""
    stopped = DevServices().down()
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
