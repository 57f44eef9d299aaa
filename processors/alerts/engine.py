"""Windowed counters per (rule, scope) and the alert life cycle: fire once, update, resolve, cool down.

Pure and serialisable: the faust agent keeps one ``ScopeState`` per table key and publishes the
alerts ``RuleEvaluator`` returns. Time is the log time of the signals (so a replayed log raises the
same alerts), advanced by wall time only while a scope receives nothing (so a condition that stops
producing events still resolves).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from processors.alerts.types import Alert, AlertState, RuleKind, RuleSettings, Signal, scope_key

BUCKETS_PER_WINDOW = 12
#: distinct keys kept per bucket and counter; beyond it a counter reports "at least"
MAX_DISTINCT_PER_BUCKET = 5000
MAX_EXAMPLES = 3

HINTS: Mapping[RuleKind, str] = {
    RuleKind.PERSISTENT_DEFERRAL: (
        "Read the last response: fix what it names (DNS, TLS, block list, quota) or contact the remote "
        "postmaster; the messages expire after the retry period."
    ),
    RuleKind.PROVIDER_BLOCK: (
        "Find what this server sent to the provider (top senders in Track Delivery), stop spam or bulk mail, "
        "then request delisting / follow the provider's postmaster page; move traffic to a clean IP meanwhile."
    ),
    RuleKind.FAILURE_RATIO: (
        "Look at the failing messages' reasons: a bad mailing list, a broken route, or the first sign of a "
        "compromised account."
    ),
    RuleKind.OUTBOUND_SPAM: (
        "Likely a compromised password or a hacked script: suspend outgoing mail for the account, reset its "
        "passwords, check the scripts, and clear its spam from the queue."
    ),
    RuleKind.FROZEN: (
        "Inspect the frozen messages (exim -Mvh / -Mvl), fix the cause (filter, routing, bounce to a dead "
        "sender), then thaw (exim -Mt) or remove them."
    ),
    RuleKind.QUEUE_BACKLOG: (
        "The queue grows faster than it drains: check what is deferred (exim -bp | exiqsumm), the remote "
        "domains involved and this server's outbound reputation."
    ),
    RuleKind.SHIPPER_SILENT: (
        "Check the shipper on that server (systemctl status trackdelivery-shipper, its log and metrics) and "
        "that it can reach Kafka; nothing is lost while it is down, it resumes from its checkpoint."
    ),
}


def alert_id(rule: str, scope: Mapping[str, str], first_seen: float, fires: int = 1) -> str:
    """Stable across replays: the rule, the scope, the first matching time and how many times it fired."""
    raw = "\x1f".join((rule, scope_key(dict(scope)), f"{first_seen:.3f}", str(fires)))
    return hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=10).hexdigest()


@dataclass(slots=True)
class ScopeState:
    """Everything the evaluator remembers about one (rule, scope)."""

    rule: str
    scope: dict[str, str]
    clock: float = 0.0  # the newest log time seen, advanced by idle time
    wall: float = 0.0  # wall time of the last signal
    counts: dict[str, dict[int, int]] = field(default_factory=dict)  # counter → bucket → count
    distinct: dict[str, dict[int, set[str]]] = field(default_factory=dict)  # counter → bucket → keys
    first_hit: dict[int, float] = field(default_factory=dict)  # bucket → earliest signal time
    examples: list[dict[str, Any]] = field(default_factory=list)
    last_true: float | None = None
    cooldown_until: float = 0.0
    alert: dict[str, Any] | None = None  # the firing alert's record
    last_emit: float = 0.0
    last_emit_count: float = 0.0
    fires: int = 0  # alerts fired in this scope so far (part of the alert id)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "rule": self.rule, "scope": self.scope, "clock": self.clock, "wall": self.wall,
                "counts": {name: {str(b): n for b, n in buckets.items()} for name, buckets in self.counts.items()},
                "distinct": {
                    name: {str(b): sorted(keys) for b, keys in buckets.items()}
                    for name, buckets in self.distinct.items()
                },
                "first_hit": {str(b): t for b, t in self.first_hit.items()},
                "examples": self.examples, "last_true": self.last_true, "cooldown_until": self.cooldown_until,
                "alert": self.alert, "last_emit": self.last_emit, "last_emit_count": self.last_emit_count,
                "fires": self.fires,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> ScopeState:
        data = orjson.loads(raw)
        return cls(
            rule=data["rule"], scope=data["scope"], clock=data["clock"], wall=data["wall"],
            counts={name: {int(b): n for b, n in buckets.items()} for name, buckets in data["counts"].items()},
            distinct={
                name: {int(b): set(keys) for b, keys in buckets.items()} for name, buckets in data["distinct"].items()
            },
            first_hit={int(b): t for b, t in data["first_hit"].items()},
            examples=data["examples"], last_true=data["last_true"], cooldown_until=data["cooldown_until"],
            alert=data["alert"], last_emit=data["last_emit"], last_emit_count=data["last_emit_count"],
            fires=data.get("fires", 0),
        )

    @property
    def firing(self) -> bool:
        return self.alert is not None


@dataclass(frozen=True, slots=True)
class Measure:
    firing: bool
    count: float
    summary: str
    details: dict[str, Any]


class RuleEvaluator:
    def __init__(self, rules: Mapping[str, RuleSettings]) -> None:
        self.rules = dict(rules)

    # ---- windows ---------------------------------------------------------------------------------

    @staticmethod
    def _width(rule: RuleSettings) -> float:
        return rule.window / BUCKETS_PER_WINDOW

    def _bucket(self, rule: RuleSettings, time: float) -> int:
        return int(time // self._width(rule))

    def _keep_from(self, rule: RuleSettings, clock: float) -> int:
        """Oldest bucket still needed (two windows: queue_backlog compares with the previous one)."""
        return self._bucket(rule, clock) - 2 * BUCKETS_PER_WINDOW + 1

    def _prune(self, rule: RuleSettings, state: ScopeState) -> None:
        oldest = self._keep_from(rule, state.clock)
        tables: list[dict[int, Any]] = [*state.counts.values(), *state.distinct.values(), state.first_hit]
        for table in tables:
            for bucket in [b for b in table if b < oldest]:
                del table[bucket]

    def _sum(self, rule: RuleSettings, state: ScopeState, name: str, windows_back: int = 0) -> int:
        newest = self._bucket(rule, state.clock) - windows_back * BUCKETS_PER_WINDOW
        oldest = newest - BUCKETS_PER_WINDOW + 1
        if name in state.distinct:
            keys: set[str] = set()
            for bucket, values in state.distinct[name].items():
                if oldest <= bucket <= newest:
                    keys |= values
            return len(keys)
        return sum(n for bucket, n in state.counts.get(name, {}).items() if oldest <= bucket <= newest)

    def _window_first_hit(self, rule: RuleSettings, state: ScopeState) -> float:
        oldest = self._bucket(rule, state.clock) - BUCKETS_PER_WINDOW + 1
        times = [t for bucket, t in state.first_hit.items() if bucket >= oldest]
        return min(times) if times else state.clock

    # ---- conditions ------------------------------------------------------------------------------

    def measure(self, rule: RuleSettings, state: ScopeState) -> Measure:
        total = lambda name, back=0: self._sum(rule, state, name, back)  # noqa: E731
        where = ", ".join(f"{kind} {value}" for kind, value in state.scope.items())
        hours = rule.window / 3600
        span = f"{hours:g} h" if hours >= 1 else f"{rule.window / 60:g} min"
        kind = rule.kind
        if kind is RuleKind.PERSISTENT_DEFERRAL:
            n = total("recipients")
            last = next((e.get("response") for e in reversed(state.examples) if e.get("response")), None)
            return Measure(
                n >= rule.threshold, n,
                f"{n} recipient(s) deferred for more than {rule.min_age / 3600:g} h ({where}); "
                f"last response: {last or 'none'}",
                {"recipients": n, "last_response": last},
            )
        if kind is RuleKind.PROVIDER_BLOCK:
            n, attempts = total("hits"), total("total")
            share = n / attempts if attempts else 0.0
            signatures = {
                name[4:]: total(name) for name in sorted(state.counts) if name.startswith("sig:") and total(name)
            }
            top = max(signatures, key=lambda name: signatures[name]) if signatures else "unknown"
            return Measure(
                n >= rule.threshold and share >= rule.min_share, n,
                f"{n} of {attempts} deliveries ({share:.0%}) refused or throttled in {span} ({where}), mostly {top}",
                {"signatures": signatures, "attempts": attempts, "share": round(share, 3)},
            )
        if kind is RuleKind.FAILURE_RATIO:
            volume, failed, deferred = total("total"), total("failed"), total("deferred")
            bounce = failed / volume if volume else 0.0
            defer = deferred / volume if volume else 0.0
            firing = volume >= rule.min_volume and (
                (rule.bounce_ratio > 0 and bounce >= rule.bounce_ratio)
                or (rule.deferral_ratio > 0 and defer >= rule.deferral_ratio)
            )
            return Measure(
                firing, round(max(bounce, defer), 3),
                f"{bounce:.0%} bounced and {defer:.0%} deferred of {volume} delivery outcomes in {span} ({where})",
                {"outcomes": volume, "failed": failed, "deferred": deferred},
            )
        if kind is RuleKind.OUTBOUND_SPAM:
            messages, outcomes, failed, limits = (
                total("messages"), total("outcomes"), total("failed"), total("limit_hits")
            )
            ratio = failed / outcomes if outcomes else 0.0
            causes = []
            if rule.messages_per_hour and messages >= rule.messages_per_hour * rule.window / 3600:
                causes.append(f"{messages} messages in {span}")
            if rule.bounce_ratio and outcomes >= rule.min_volume and ratio >= rule.bounce_ratio:
                causes.append(f"{ratio:.0%} of {outcomes} deliveries bounced")
            if rule.limit_hits and limits >= rule.limit_hits:
                causes.append(f"{limits} deliveries held by the cPanel sending limit")
            return Measure(
                bool(causes), messages,
                f"possible compromised account ({where}): " + ("; ".join(causes) or f"{messages} messages in {span}"),
                {"messages": messages, "outcomes": outcomes, "failed": failed, "limit_hits": limits},
            )
        if kind is RuleKind.FROZEN:
            n = total("messages")
            return Measure(n >= rule.threshold, n, f"{n} messages frozen in {span} ({where})", {"messages": n})
        if kind is RuleKind.QUEUE_BACKLOG:
            now, before = total("messages"), total("messages", 1)
            firing = now >= rule.threshold and now >= rule.growth * before
            return Measure(
                firing, now, f"{now} messages deferred in the last {span}, {before} in the {span} before ({where})",
                {"deferred_messages": now, "previous_window": before},
            )
        return Measure(False, 0, "", {})

    # ---- life cycle ------------------------------------------------------------------------------

    def apply(self, state: ScopeState | None, signal: Signal, wall: float) -> tuple[ScopeState, list[Alert]]:
        """Adds one signal; returns the new state and the alert records to publish (0 or 1)."""
        rule = self.rules.get(signal.rule)
        if state is None:
            state = ScopeState(signal.rule, dict(signal.scope), clock=signal.time)
        if rule is None:
            return state, []  # a rule removed from the configuration: its signals are ignored
        state.clock = max(state.clock, signal.time)
        state.wall = wall
        bucket = self._bucket(rule, signal.time)
        if bucket >= self._keep_from(rule, state.clock):
            for name, value in signal.counters.items():
                if isinstance(value, str):
                    keys = state.distinct.setdefault(name, {}).setdefault(bucket, set())
                    if len(keys) < MAX_DISTINCT_PER_BUCKET:
                        keys.add(value)
                else:
                    counts = state.counts.setdefault(name, {})
                    counts[bucket] = counts.get(bucket, 0) + int(value)
            previous = state.first_hit.get(bucket)
            state.first_hit[bucket] = signal.time if previous is None else min(previous, signal.time)
            if signal.example is not None:
                state.examples = [*state.examples, signal.example][-MAX_EXAMPLES:]
        self._prune(rule, state)
        return state, self._evaluate(rule, state)

    def idle(self, state: ScopeState, wall: float) -> tuple[ScopeState, list[Alert]]:
        """Timer: a firing scope that has received nothing for ``clear_after`` (wall time) moves its clock on."""
        rule = self.rules.get(state.rule)
        if rule is None or not state.firing:
            return state, []
        idle_for = wall - state.wall
        if idle_for < rule.clear_after:
            return state, []
        state.clock += idle_for
        state.wall = wall
        self._prune(rule, state)
        return state, self._evaluate(rule, state)

    def _evaluate(self, rule: RuleSettings, state: ScopeState) -> list[Alert]:
        measure = self.measure(rule, state)
        if measure.firing:
            state.last_true = state.clock
        if state.alert is None:
            if not measure.firing or state.clock < state.cooldown_until:
                return []
            first = self._window_first_hit(rule, state)
            state.fires += 1
            alert = Alert(
                id=alert_id(rule.name, state.scope, first, state.fires), rule=rule.name, kind=rule.kind,
                severity=rule.severity,
                scope=dict(state.scope), state=AlertState.FIRING, first_seen=first, last_seen=state.clock,
                count=measure.count, summary=measure.summary, hint=HINTS[rule.kind], version=1,
                examples=list(state.examples), details=measure.details,
            )
            return [self._remember(state, alert)]
        alert = Alert.from_dict(state.alert)
        if measure.firing:
            alert.last_seen = state.clock
            alert.count = max(alert.count, measure.count) if rule.kind is not RuleKind.FAILURE_RATIO else measure.count
            alert.summary, alert.details, alert.examples = measure.summary, measure.details, list(state.examples)
            due = state.clock - state.last_emit >= rule.update_every
            grown = state.last_emit_count > 0 and measure.count >= 2 * state.last_emit_count
            if not (due or grown):
                state.alert = alert.to_dict()
                return []
            alert.version += 1
            return [self._remember(state, alert)]
        if state.last_true is not None and state.clock - state.last_true < rule.clear_after:
            return []
        alert.version += 1
        alert.state = AlertState.RESOLVED
        alert.resolved_at = state.clock
        state.alert = None
        state.cooldown_until = state.clock + rule.cooldown
        return [alert]

    @staticmethod
    def _remember(state: ScopeState, alert: Alert) -> Alert:
        state.alert = alert.to_dict()
        state.last_emit = state.clock
        state.last_emit_count = float(alert.count)
        return alert
