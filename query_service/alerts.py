"""Current and recent alerts of the alert engine (``processors/alerts``), as ``GET /api/v1/alerts`` answers them.

The engine keeps the newest record of each alert in Redis (``processors.alerts.store.AlertStore``); this
module reads them, keeps what the token may see, and shapes them with the response models below.

An operator token sees every alert. An account token sees an alert only when the alert is *about* the
account: its scope names one of the token's users (``user``) or one of its domains (``sender_domain``).
Alerts about a server, a provider, a remote domain or the whole fleet describe other accounts' mail too
and are never shown to an account. Inside a visible alert, an example delivery is kept only when the
account could see that delivery through the other endpoints (its cPanel user, sender domain or
recipient domain).
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from processors.alerts.store import AlertStore
from query_service.auth import Principal

log = logging.getLogger(__name__)

DEFAULT_ALERT_LIMIT = 100
MAX_ALERT_LIMIT = 500
#: records read at most for one answer (the store keeps firing alerts and a week of resolved ones)
MAX_ALERTS_SCANNED = 100_000

#: scope parts that name an account: the only alerts an account token can see
_ACCOUNT_SCOPES = ("user", "sender_domain")


class UnreadableAlerts(Exception):
    """A record in the alert store is not JSON or not an object (answered 503, like a store outage)."""


class AlertStateFilter(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"
    ALL = "all"


class AlertSeverity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlertExample(BaseModel):
    """One delivery event that contributed to the alert (fields the engine did not send are dropped)."""

    model_config = ConfigDict(extra="ignore")

    event_id: str | None = None
    type: str | None = None
    time: float | None = None
    server: str | None = None
    msgid: str | None = None
    sender: str | None = None
    recipient: str | None = None
    cpanel_user: str | None = None
    reason: str | None = None
    response: str | None = None


class AlertRecord(BaseModel):
    """An alert as the engine published it (``exim.delivery.alerts`` schema ``v`` 1)."""

    model_config = ConfigDict(extra="ignore")

    v: int = Field(description="schema version of the record")
    id: str
    rule: str = Field(description="name of the rule that fired")
    kind: str = Field(description="rule kind: provider_block, failure_ratio, outbound_spam, …")
    severity: str = Field(description="info, warning or critical")
    scope: dict[str, str] = Field(
        description="what the alert is about: server, provider, sender_domain, user, remote_domain or fleet"
    )
    scope_key: str
    state: str = Field(description="firing or resolved")
    first_seen: float = Field(description="epoch seconds (log time) the alert fired")
    last_seen: float = Field(description="epoch seconds (log time) of the latest update")
    resolved_at: float | None = None
    count: int | float = Field(description="the measured value (a count, or a ratio for ratio rules)")
    summary: str
    hint: str = Field(description="what to look at first")
    version: int = Field(description="bumped on every update of the alert")
    examples: list[AlertExample] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)


class AlertsAnswer(BaseModel):
    alerts: list[AlertRecord] = Field(description="newest first (by last_seen), at most `limit`")
    total: int = Field(description="alerts matching the filters and visible to the token (before `limit`)")


def _domain_of(address: str | None) -> str | None:
    if not address or "@" not in address:
        return None
    return address.rsplit("@", 1)[1].rstrip(".").lower() or None


def _lower(value: Any) -> str | None:
    return value.lower() if isinstance(value, str) else None


class AlertScope:
    """What one principal may see of the alerts (user names and domains compared ignoring case)."""

    def __init__(self, principal: Principal) -> None:
        self.operator = principal.operator
        # cPanel users are compared ignoring case, as the store's searches compare them
        self.principal = Principal(
            principal.token_id,
            principal.operator,
            frozenset(user.lower() for user in principal.users),
            frozenset(domain.lower() for domain in principal.domains),
        )

    def sees_alert(self, scope: dict[str, str]) -> bool:
        if self.operator:
            return True
        user, domain = _lower(scope.get("user")), _lower(scope.get("sender_domain"))
        return (user is not None and user in self.principal.users) or (
            domain is not None and domain.rstrip(".") in self.principal.domains
        )

    def sees_example(self, example: AlertExample) -> bool:
        if self.operator:
            return True
        return self.principal.sees(
            _lower(example.cpanel_user), _domain_of(example.sender), _domain_of(example.recipient)
        )


def _parse(raw: dict[str, Any]) -> AlertRecord | None:
    try:
        return AlertRecord.model_validate(raw)
    except ValidationError as error:
        log.warning("skipping an unreadable alert record %r: %s", str(raw.get("id"))[:64], error.error_count())
        return None


async def list_alerts(
    store: AlertStore,
    principal: Principal,
    *,
    state: AlertStateFilter = AlertStateFilter.FIRING,
    severity: AlertSeverity | None = None,
    rule: str | None = None,
    server: str | None = None,
    limit: int = DEFAULT_ALERT_LIMIT,
) -> AlertsAnswer:
    """The alerts matching the filters that ``principal`` may see, newest first, and how many there are."""
    scope = AlertScope(principal)
    wanted_server = server.lower() if server is not None else None
    try:
        raw_records = await store.list(
            state=None if state is AlertStateFilter.ALL else state.value, limit=MAX_ALERTS_SCANNED
        )
    except (ValueError, TypeError, AttributeError) as error:  # not JSON, or JSON that is not a record
        log.error("the alert store holds an unreadable record: %s: %s", type(error).__name__, error)
        raise UnreadableAlerts from None
    matching: list[AlertRecord] = []
    total = 0
    for raw in raw_records:
        if not isinstance(raw, dict):
            continue
        record = _parse(raw)
        if record is None:
            continue
        if severity is not None and record.severity != severity.value:
            continue
        if rule is not None and record.rule != rule:
            continue
        if wanted_server is not None and _lower(record.scope.get("server")) != wanted_server:
            continue
        if not scope.sees_alert(record.scope):
            continue
        total += 1
        if len(matching) < limit:
            if not scope.operator:
                record.examples = [example for example in record.examples if scope.sees_example(example)]
            matching.append(record)
    return AlertsAnswer(alerts=matching, total=total)
