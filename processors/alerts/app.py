"""The alert worker: four faust agents in one app (``trackdelivery alerts``).

1. ``fanout``   exim.delivery.events → signals keyed by (rule, scope) on the internal signals topic,
   so every scope's counters live in exactly one partition whatever server the events came from;
2. ``evaluate`` signals → the ``alert-scopes`` table (co-partitioned, changelog-backed) → alert records;
3. ``shippers`` heartbeats → the ``shipper-heartbeats`` table → shipper-silence alerts;
4. ``publish``  exim.delivery.alerts → Redis (for the query service) and webhooks.

A timer sends *ticks* into the signals and heartbeats topics for scopes that went quiet, so every
state change still happens inside an agent, in the scope's own partition. Outputs are acknowledged
before the table is written, and faust commits a source offset only after that (see
``docs/guarantees.md``, Alerts).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faust
import orjson

from processors import faust_fixes
from processors.alerts.engine import RuleEvaluator, ScopeState
from processors.alerts.metrics import AlertMetrics
from processors.alerts.rules import signals_for
from processors.alerts.settings import AlertSettings
from processors.alerts.silence import ShipperState, SilenceMonitor
from processors.alerts.types import Alert, RuleKind, RuleSettings, Signal
from processors.app import worker_settings
from trackdelivery.settings import KafkaSettings, RedisSettings, TopicNames

log = logging.getLogger("trackdelivery.alerts")

SCOPE_TABLE = "alert-scopes"
FANOUT_TABLE = "alert-fanout"
SHIPPER_TABLE = "shipper-heartbeats"
TICK = "tick"
CHECK = "check"
MARK = "#next|"


class OffsetMarks:
    """The next source offset per partition, kept in the agent's own table.

    faust redelivers records after a crash (its commit lags the table's changelog); a record below the
    mark was already applied, and its state change is in the restored table: it is skipped.
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self.cache: dict[int, int] = {}

    def seen(self, partition: int, offset: int) -> bool:
        if partition not in self.cache:
            raw = self.table.get(f"{MARK}{partition}")
            self.cache[partition] = int(raw) if raw is not None else -1
        return offset < self.cache[partition]

    def advance(self, partition: int, offset: int) -> None:
        self.cache[partition] = offset + 1
        self.table[f"{MARK}{partition}"] = str(offset + 1).encode()


@dataclass(slots=True)
class AlertsApp:
    app: faust.App
    scopes: Any
    shippers: Any
    metrics: AlertMetrics
    evaluator: RuleEvaluator


def _raw_topic(app: faust.App, name: str, partitions: int | None = None) -> Any:
    return app.topic(
        name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", partitions=partitions,
    )


def evictable(state: ScopeState, rule: RuleSettings | None, wall: float) -> bool:
    """A quiet scope with no firing alert and no cooldown left can be forgotten."""
    if state.firing:
        return False
    if rule is None:
        return True
    quiet_for = wall - state.wall
    return quiet_for > 2 * rule.window and state.clock + quiet_for >= state.cooldown_until


def create_alerts_app(
    settings: AlertSettings,
    kafka: KafkaSettings,
    topics: TopicNames,
    redis_settings: RedisSettings,
    rules: dict[str, RuleSettings],
    *,
    partitions: int,
    metrics: AlertMetrics | None = None,
    store_factory: Callable[[], Any] | None = None,
    clock: Callable[[], float] = time.time,
) -> AlertsApp:
    faust_fixes.apply()
    metrics = metrics or AlertMetrics()
    evaluator = RuleEvaluator(rules)
    monitor = SilenceMonitor(next((r for r in rules.values() if r.kind is RuleKind.SHIPPER_SILENT), None))
    event_rules = [rule for rule in rules.values() if rule.enabled and rule.kind is not RuleKind.SHIPPER_SILENT]
    app = faust.App(
        settings.app_id,
        store=settings.store,
        datadir=settings.datadir,
        web_enabled=False,
        topic_partitions=partitions,
        **worker_settings(kafka, session_timeout=settings.session_timeout, commit_interval=settings.commit_interval),
    )
    events_topic = _raw_topic(app, topics.events)
    signals_topic = _raw_topic(app, topics.alert_signals, partitions)
    heartbeats_topic = _raw_topic(app, topics.heartbeats, partitions)
    alerts_topic = _raw_topic(app, topics.alerts)
    scopes = app.Table(SCOPE_TABLE, key_type=str, value_type=bytes, partitions=partitions)
    fanout_marks = app.Table(FANOUT_TABLE, key_type=str, value_type=bytes, partitions=partitions)
    shippers = app.Table(SHIPPER_TABLE, key_type=str, value_type=bytes, partitions=partitions)

    async def publish(alerts: list[Alert]) -> None:
        pending = []
        for alert in alerts:
            pending.append(await app.producer.send(
                topics.alerts, alert.id.encode(), orjson.dumps(alert.to_dict()), None, None, None))
            metrics.alerts.labels(rule=alert.rule, state=str(alert.state)).inc()
            log.info("alert %s %s: %s", alert.state, alert.rule, alert.summary[:300])
        for future in pending:
            await future

    async def fanout(stream: Any) -> None:
        marks = OffsetMarks(fanout_marks)
        async for event in stream.events():
            message = event.message
            if marks.seen(message.partition, message.offset):
                metrics.duplicates.labels(topic="events").inc()
                continue
            metrics.events_in.inc()
            try:
                record = orjson.loads(event.message.value)
                signals = signals_for(event_rules, record) if isinstance(record, dict) else None
            except Exception:  # a hostile or broken record must not stop the agent
                log.warning("undecodable event at %s[%d]@%d", message.topic, message.partition, message.offset)
                signals = None
            if signals is None:
                metrics.bad_events.inc()
                continue
            pending = []
            for signal in signals:
                pending.append(await app.producer.send(
                    topics.alert_signals, signal.key.encode("utf-8", "surrogatepass"),
                    orjson.dumps(signal.to_wire()), None, None, None))
                metrics.signals.labels(rule=signal.rule).inc()
            for future in pending:
                await future
            if pending:  # an event without signals may be read again harmlessly: no mark to write
                marks.advance(message.partition, message.offset)

    async def evaluate(stream: Any) -> None:
        marks = OffsetMarks(scopes)
        async for event in stream.events():
            message = event.message
            if marks.seen(message.partition, message.offset):
                metrics.duplicates.labels(topic="signals").inc()
                continue
            key = message.key.decode("utf-8", "surrogatepass")
            try:
                data = orjson.loads(message.value)
            except orjson.JSONDecodeError:
                metrics.bad_events.inc()
                marks.advance(message.partition, message.offset)
                continue
            raw = scopes.get(key)
            state = ScopeState.from_bytes(raw) if raw is not None else None
            if TICK in data:
                if state is None:
                    marks.advance(message.partition, message.offset)
                    continue
                wall = float(data[TICK])
                if evictable(state, rules.get(state.rule), wall):
                    del scopes[key]
                    marks.advance(message.partition, message.offset)
                    continue
                state, alerts = evaluator.idle(state, wall)
            else:
                state, alerts = evaluator.apply(state, Signal.from_wire(data), clock())
            if alerts:
                await publish(alerts)
            scopes[key] = state.to_bytes()
            marks.advance(message.partition, message.offset)

    async def shippers_agent(stream: Any) -> None:
        async for event in stream.events():
            key = event.message.key.decode("utf-8", "surrogatepass")[:255]
            try:
                data = orjson.loads(event.message.value)
            except orjson.JSONDecodeError:
                metrics.bad_events.inc()
                continue
            raw = shippers.get(key)
            state = ShipperState.from_bytes(raw) if raw is not None else None
            if CHECK in data:
                if state is None:
                    continue
                state, alerts = monitor.check(state, float(data[CHECK]))
            else:
                metrics.heartbeats.inc()
                state, alerts = monitor.beat(state, {**data, "server": key})
            if alerts:
                await publish(alerts)
            shippers[key] = state.to_bytes()

    store_holder: dict[str, Any] = {}

    async def publish_agent(stream: Any) -> None:
        if "store" not in store_holder:
            store_holder["store"] = (store_factory or _default_store(settings, redis_settings, metrics))()
        store, dispatcher = store_holder["store"]
        async for event in stream.events():
            try:
                record = orjson.loads(event.message.value)
            except orjson.JSONDecodeError:
                metrics.bad_events.inc()
                continue
            await _retrying(store.put, record, "Redis")
            await dispatcher.dispatch(record)

    app.agent(events_topic, name="trackdelivery-alerts-fanout")(fanout)
    app.agent(signals_topic, name="trackdelivery-alerts-evaluate")(evaluate)
    app.agent(heartbeats_topic, name="trackdelivery-alerts-shippers")(shippers_agent)
    app.agent(alerts_topic, name="trackdelivery-alerts-publish")(publish_agent)

    @app.timer(interval=settings.tick_interval)
    async def tick() -> None:
        wall = clock()
        for key, raw in list(scopes.data.items()):
            if key.startswith(MARK):
                continue
            state = ScopeState.from_bytes(raw)
            rule = rules.get(state.rule)
            due = state.firing and rule is not None and wall - state.wall >= rule.clear_after
            if due or evictable(state, rule, wall):
                await signals_topic.send(key=key.encode("utf-8", "surrogatepass"), value=orjson.dumps({TICK: wall}))
        if monitor.rule is None:
            return
        for key, raw in list(shippers.data.items()):
            shipper = ShipperState.from_bytes(raw)
            if shipper.alert is None and wall - shipper.last_beat >= monitor.rule.window:
                await heartbeats_topic.send(key=key.encode("utf-8", "surrogatepass"), value=orjson.dumps({CHECK: wall}))

    return AlertsApp(app=app, scopes=scopes, shippers=shippers, metrics=metrics, evaluator=evaluator)


async def _retrying(action: Callable[[Any], Any], argument: Any, what: str) -> None:
    import asyncio

    pause = 0.5
    while True:
        try:
            await action(argument)
            return
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the store is down: wait, never skip an alert
            log.warning("%s write failed (%s: %s); retrying in %.1fs", what, type(error).__name__, error, pause)
            await asyncio.sleep(pause)
            pause = min(30.0, pause * 2)


def _default_store(settings: AlertSettings, redis_settings: RedisSettings, metrics: AlertMetrics) -> Callable[[], Any]:
    def build() -> tuple[Any, Any]:
        from processors.alerts.store import AlertStore
        from processors.alerts.webhooks import WebhookDispatcher
        from trackdelivery.connections import redis_client
        from trackdelivery.store.types import StoreSettings

        prefix = StoreSettings().prefix
        client = redis_client(redis_settings)
        dispatcher = WebhookDispatcher(
            settings.webhooks(), redis=client, prefix=prefix,
            on_result=lambda url, outcome: metrics.webhooks.labels(outcome=outcome).inc(),
        )
        return AlertStore(client, prefix, settings.retention), dispatcher

    return build
