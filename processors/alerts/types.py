"""Value types of the alert engine: scopes, rule settings, signals and alert records.

An *event* from ``exim.delivery.events`` is turned by the rules into *signals* (small records keyed by
rule and scope); the evaluator keeps windowed counters per (rule, scope) and turns them into *alerts*
that fire once, update while they last and resolve when the condition clears.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

#: Version of the ``exim.delivery.alerts`` record; bumped on any incompatible change.
ALERT_SCHEMA_VERSION = 1


class ScopeKind(StrEnum):
    FLEET = "fleet"
    SERVER = "server"
    SENDER_DOMAIN = "sender_domain"
    USER = "user"  # the cPanel user, else the authenticated id
    PROVIDER = "provider"  # gmail, yahoo, microsoft or other (from the response or the recipient domain)
    REMOTE_DOMAIN = "remote_domain"  # the recipient's domain


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlertState(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


class RuleKind(StrEnum):
    PERSISTENT_DEFERRAL = "persistent_deferral"
    PROVIDER_BLOCK = "provider_block"
    FAILURE_RATIO = "failure_ratio"
    OUTBOUND_SPAM = "outbound_spam"
    FROZEN = "frozen"
    QUEUE_BACKLOG = "queue_backlog"
    SHIPPER_SILENT = "shipper_silent"


@dataclass(frozen=True, slots=True)
class RuleSettings:
    """One configured rule. ``threshold`` means a count, except for ratio conditions (0..1)."""

    name: str
    kind: RuleKind
    scope: tuple[ScopeKind, ...]
    window: float  # seconds of log time the counters cover
    threshold: float
    cooldown: float  # seconds after a resolve during which the same scope does not fire again
    severity: Severity = Severity.WARNING
    enabled: bool = True
    #: seconds without a matching signal (log time, or wall time when the scope is idle) before resolving
    resolve_after: float | None = None
    min_volume: int = 0  # ratio rules: the smallest denominator that may fire
    min_age: float = 4 * 3600.0  # persistent_deferral: how long a recipient must have been deferred
    messages_per_hour: int = 0  # outbound_spam: message count that fires on its own (0 = off)
    bounce_ratio: float = 0.0  # outbound_spam / failure_ratio: bounce share that fires (0 = off)
    deferral_ratio: float = 0.0  # failure_ratio: deferral share that fires (0 = off)
    limit_hits: int = 0  # outbound_spam: cPanel send-limit hits that fire on their own (0 = off)
    growth: float = 1.5  # queue_backlog: current window over the previous one
    providers: tuple[str, ...] = ()  # provider_block: restrict to these providers (empty = all)
    signatures: tuple[str, ...] = ()  # provider_block: restrict to these signatures (empty = all)
    min_share: float = 0.0  # provider_block: matching responses over all remote outcomes for the provider
    update_every: float = 300.0  # seconds of log time between two updates of a firing alert

    @property
    def clear_after(self) -> float:
        return self.resolve_after if self.resolve_after is not None else self.window


@dataclass(frozen=True, slots=True)
class Signal:
    """What one event contributes to one rule's counters in one scope."""

    rule: str
    scope: dict[str, str]
    time: float
    counters: dict[str, Any]  # counter name -> increment (int) or distinct key (str)
    example: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        return signal_key(self.rule, self.scope)

    def to_wire(self) -> dict[str, Any]:
        return {"r": self.rule, "s": self.scope, "t": self.time, "c": self.counters, "x": self.example}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Signal:
        return cls(
            rule=str(data["r"]), scope={str(k): str(v) for k, v in dict(data["s"]).items()}, time=float(data["t"]),
            counters=dict(data["c"]), example=data.get("x"),
        )


@dataclass(slots=True)
class Alert:
    """The record published on ``exim.delivery.alerts`` (and kept in Redis for the query service)."""

    id: str
    rule: str
    kind: RuleKind
    severity: Severity
    scope: dict[str, str]
    state: AlertState
    first_seen: float
    last_seen: float
    count: float
    summary: str
    hint: str
    version: int = 1
    resolved_at: float | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def scope_key(self) -> str:
        return scope_key(self.scope)

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": ALERT_SCHEMA_VERSION,
            "id": self.id,
            "rule": self.rule,
            "kind": str(self.kind),
            "severity": str(self.severity),
            "scope": dict(self.scope),
            "scope_key": self.scope_key,
            "state": str(self.state),
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "resolved_at": self.resolved_at,
            "count": self.count,
            "summary": self.summary,
            "hint": self.hint,
            "version": self.version,
            "examples": list(self.examples),
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Alert:
        return cls(
            id=str(data["id"]), rule=str(data["rule"]), kind=RuleKind(data["kind"]),
            severity=Severity(data["severity"]), scope=dict(data["scope"]), state=AlertState(data["state"]),
            first_seen=float(data["first_seen"]), last_seen=float(data["last_seen"]), count=data["count"],
            summary=str(data["summary"]), hint=str(data["hint"]), version=int(data["version"]),
            resolved_at=data.get("resolved_at"), examples=list(data.get("examples") or []),
            details=dict(data.get("details") or {}),
        )


MAX_SCOPE_VALUE = 255


def _escape(value: str) -> str:
    value = value[:MAX_SCOPE_VALUE]
    return value.replace("%", "%25").replace(",", "%2C").replace("=", "%3D").replace("|", "%7C")


def scope_key(scope: dict[str, str]) -> str:
    """``server=srv001,provider=gmail``: values escaped so a hostile value cannot forge another scope."""
    return ",".join(f"{kind}={_escape(value)}" for kind, value in scope.items())


def signal_key(rule: str, scope: dict[str, str]) -> str:
    return f"{_escape(rule)}|{scope_key(scope)}"
