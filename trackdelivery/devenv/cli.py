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
@click.option("--fresh", is_flag=True, help="Throw away the previous data first.")
def up(partitions: int, fresh: bool) -> None:
    """Start Kafka and Redis (if not running), create the topics, print how to reach them."""
    try:
        kafka, redis_server = DevServices().up(partitions=partitions, fresh=fresh)
    except DevEnvError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"Kafka  {kafka.bootstrap}  (pid {kafka.pid}, data {kafka.workdir})")
    click.echo(f"Redis  {redis_server.url}  (pid {redis_server.pid})")
    click.echo(f"export KAFKA_BOOTSTRAP_SERVERS={kafka.bootstrap} REDIS_URL={redis_server.url}")


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
