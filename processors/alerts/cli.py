"""``trackdelivery alerts``: run the alert worker, or check and print the effective rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import orjson

from processors.alerts.exceptions import RuleConfigError
from processors.alerts.rules import load_rules


def _overrides(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


@click.command()
@click.option("--rules", "rules_file", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML rules file [TRACKDELIVERY_ALERTS_RULES_FILE, else the defaults]")
@click.option("--check", is_flag=True, help="validate the rules, print them as JSON lines and exit")
@click.option("--dry-run", "dry_run", type=click.File("rb"),
              help="print the alerts these events (JSON lines from `parse --output events`, or -) would raise")
@click.option("--webhook", "webhooks", multiple=True, help="POST alert state changes here (repeatable)")
@click.option("--app-id", help="faust app id = consumer group [trackdelivery-alerts]")
@click.option("--datadir", help="faust data directory")
@click.option("--metrics-port", type=click.IntRange(0, 65535), help="Prometheus metrics port [9465]")
@click.option("--no-metrics", is_flag=True, help="do not serve Prometheus metrics")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error", "critical"]))
def alerts(
    rules_file: Path | None,
    check: bool,
    dry_run: Any,
    webhooks: tuple[str, ...],
    app_id: str | None,
    datadir: str | None,
    metrics_port: int | None,
    no_metrics: bool,
    log_level: str | None,
) -> None:
    """Run the alert worker: exim.delivery.events (+ shipper heartbeats) → exim.delivery.alerts, Redis, webhooks.

    Start more workers with the same --app-id to share the partitions. See docs/alerts.md.
    """
    from pydantic import ValidationError

    from processors.alerts.settings import AlertSettings

    try:
        settings = AlertSettings(
            **_overrides(rules_file=rules_file, app_id=app_id, datadir=datadir, metrics_port=metrics_port,
                         log_level=log_level, webhook_urls=webhooks or None)
        )
    except ValidationError as error:
        raise click.ClickException(str(error)) from error
    if no_metrics:
        settings = settings.model_copy(update={"metrics_port": None})
    try:
        rules = load_rules(settings.rules_file)
    except RuleConfigError as error:
        raise click.ClickException(str(error)) from error
    if check:
        for rule in rules.values():
            click.echo(orjson.dumps({
                "name": rule.name, "kind": str(rule.kind), "enabled": rule.enabled,
                "scope": [str(s) for s in rule.scope], "window": rule.window, "threshold": rule.threshold,
                "cooldown": rule.cooldown, "severity": str(rule.severity),
            }).decode())
        return
    if dry_run is not None:
        _dry_run(dry_run, rules)
        return
    try:
        Path(settings.datadir).mkdir(parents=True, exist_ok=True)
        settings.dead_letters().parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise click.ClickException(f"cannot create {settings.datadir}: {error}") from error

    from processors.alerts.app import create_alerts_app
    from processors.cli import raw_topic_partitions
    from processors.faust_fixes import service_worker
    from trackdelivery.settings import KafkaSettings, RedisSettings, TopicNames

    try:
        kafka, topics = KafkaSettings(), TopicNames()
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    partitions = raw_topic_partitions(kafka, topics.alert_signals)
    for topic in (topics.events, topics.heartbeats):
        if (count := raw_topic_partitions(kafka, topic)) != partitions:
            raise click.ClickException(
                f"{topic} has {count} partitions and {topics.alert_signals} {partitions}: they must be equal "
                "(the alert tables are co-partitioned with all three)"
            )
    built = create_alerts_app(settings, kafka, topics, RedisSettings(), rules, partitions=partitions)
    if settings.metrics_port is not None:
        built.metrics.serve(settings.metrics_port, settings.metrics_host)
    service_worker(built.app, settings.log_level).execute_from_commandline()


def _dry_run(stream: Any, rules: Any) -> None:
    from processors.alerts.simulate import simulate

    bad = 0

    def events() -> Any:
        nonlocal bad
        for line in stream:
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                bad += 1
                continue
            if isinstance(event, dict):
                yield event
            else:
                bad += 1

    alerts = simulate(events(), rules)
    for alert in alerts:
        click.echo(orjson.dumps(alert.to_dict()).decode())
    fired = sum(1 for alert in alerts if alert.version == 1)
    click.echo(f"{fired} alert(s) fired, {len(alerts)} record(s); {bad} unreadable line(s)", err=True)
