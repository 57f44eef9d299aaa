"""Dry run: the alerts a stream of delivery events would raise, computed offline in one process.

Used by ``trackdelivery alerts --dry-run EVENTS.jsonl`` to try a rules file on history (the events of
``trackdelivery parse --output events``), and by the tests as the reference for the live worker.
Wall time is simulated as the log time of the newest event, so quiet scopes resolve as they would live.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from processors.alerts.engine import RuleEvaluator, ScopeState
from processors.alerts.rules import signals_for
from processors.alerts.types import Alert, RuleKind, RuleSettings


def simulate(
    events: Iterable[Mapping[str, Any]], rules: Mapping[str, RuleSettings], *, idle_every: float = 60.0
) -> list[Alert]:
    evaluator = RuleEvaluator(rules)
    event_rules = [rule for rule in rules.values() if rule.enabled and rule.kind is not RuleKind.SHIPPER_SILENT]
    states: dict[str, ScopeState] = {}
    out: list[Alert] = []
    wall = 0.0
    next_idle = 0.0
    for event in events:
        time = event.get("time")
        if isinstance(time, int | float) and time > wall:
            wall = float(time)
        for signal in signals_for(event_rules, event):
            state, alerts = evaluator.apply(states.get(signal.key), signal, wall)
            states[signal.key] = state
            out.extend(alerts)
        if wall >= next_idle:
            next_idle = wall + idle_every
            for key, state in states.items():
                if state.firing:
                    states[key], alerts = evaluator.idle(state, wall)
                    out.extend(alerts)
    return out
