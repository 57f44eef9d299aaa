"""Alert records for the query-service tests, written by the alert engine's own store."""

from __future__ import annotations

import uuid
from typing import Any

from redis.asyncio import Redis

from processors.alerts.store import AlertStore
from processors.alerts.types import Alert, AlertState, RuleKind, Severity


def example(
    *,
    time: float,
    server: str = "cp1.example-hosting.net",
    msgid: str | None = "1xWPFf-000000000GA-3omp",
    sender: str | None = "info@acct07-shop.example",
    recipient: str | None = "someone@gmail.com",
    cpanel_user: str | None = "acct07",
    type: str = "deferred",
    reason: str | None = "rate_limited",
    response: str | None = "421 4.7.28 Our system has detected an unusual rate of unsolicited mail",
) -> dict[str, Any]:
    """An example in the shape of ``processors.alerts.rules.example_of``."""
    return {
        "event_id": uuid.uuid4().hex[:24],
        "type": type,
        "time": time,
        "server": server,
        "msgid": msgid,
        "sender": sender,
        "recipient": recipient,
        "cpanel_user": cpanel_user,
        "reason": reason,
        "response": response,
    }


def alert(
    *,
    rule: str,
    kind: RuleKind,
    scope: dict[str, str],
    last_seen: float,
    severity: Severity = Severity.WARNING,
    state: AlertState = AlertState.FIRING,
    count: float = 12,
    summary: str = "something is wrong",
    hint: str = "look at it",
    examples: list[dict[str, Any]] | None = None,
    version: int = 1,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A record as the engine stores it: ``Alert(...).to_dict()``."""
    return Alert(
        id=uuid.uuid4().hex[:16],
        rule=rule,
        kind=kind,
        severity=severity,
        scope=scope,
        state=state,
        first_seen=last_seen - 600,
        last_seen=last_seen,
        count=count,
        summary=summary,
        hint=hint,
        version=version,
        resolved_at=last_seen if state is AlertState.RESOLVED else None,
        examples=list(examples or []),
        details=dict(details or {}),
    ).to_dict()


async def put_alerts(redis_url: str, prefix: str, records: list[dict[str, Any]], *, clear: bool = True) -> None:
    """Store ``records`` under the store prefix ``prefix`` (after dropping every alert there, by default)."""
    client = Redis.from_url(redis_url)
    try:
        store = AlertStore(client, prefix)
        if clear:
            await client.delete(store.records_key, store.seen_key)
        for record in records:
            assert await store.put(record)
    finally:
        await client.aclose()


async def clear_alerts(redis_url: str, prefix: str) -> None:
    await put_alerts(redis_url, prefix, [])
