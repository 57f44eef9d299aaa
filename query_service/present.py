"""Shapes the API answers take: events as dicts, the message view (recipients, attempts, route), and
the "attempt 3 of about 20" estimate from Exim's retry rules."""

from __future__ import annotations

import re
from typing import Any

from trackdelivery.events import FINAL_TYPES, DeliveryEvent, EventType
from trackdelivery.store import MessageView

DEFAULT_RETRY_RULES = "F,2h,15m; G,16h,1h,1.5; F,4d,6h"
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")


def _seconds(text: str) -> float:
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"not an Exim retry time: {text!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def expected_attempts(rules: str = DEFAULT_RETRY_RULES) -> int:
    """How many times Exim tries a recipient that keeps failing before it gives up, under ``rules``.

    Rules are Exim's ``F,<cutoff>,<interval>`` and ``G,<cutoff>,<interval>,<factor>``, each cutoff
    measured from the first failure. This is an estimate: queue runners only retry when they run.
    """
    elapsed = 0.0
    attempts = 1
    for rule in rules.split(";"):
        parts = [p.strip() for p in rule.split(",")]
        kind, cutoff = parts[0].upper(), _seconds(parts[1])
        interval = _seconds(parts[2])
        factor = float(parts[3]) if kind == "G" and len(parts) > 3 else 1.0
        while elapsed + interval <= cutoff:
            elapsed += interval
            attempts += 1
            interval *= factor
    return attempts


EXPECTED_ATTEMPTS = expected_attempts()

_ARRIVAL_FIELDS = (
    "arrival_time",
    "sender",
    "sender_domain",
    "cpanel_user",
    "auth_id",
    "client_host",
    "client_ip",
    "protocol",
    "spam_score",
    "size",
    "subject",
    "message_id_header",
)
_WAITING = frozenset({EventType.DEFERRED, EventType.IN_PROGRESS, EventType.FROZEN})


def event_dict(event: DeliveryEvent) -> dict[str, Any]:
    return event.to_dict()


def _route(event: DeliveryEvent) -> dict[str, Any]:
    return {
        "client_host": event.client_host,
        "client_ip": event.client_ip,
        "server": event.server,
        "msgid": event.msgid,
        "router": event.router,
        "transport": event.transport,
        "remote_host": event.remote_host,
        "remote_ip": event.remote_ip,
        "tls": event.tls,
        "smtp_code": event.smtp_code,
        "enhanced_code": event.enhanced_code,
        "response": event.response,
        "outcome": str(event.type),
    }


def _recipient_summary(attempts: list[DeliveryEvent]) -> dict[str, Any]:
    finals = [e for e in attempts if e.type in FINAL_TYPES]
    # "in progress" is what was known at arrival: any other event of the recipient is newer news, even one
    # logged in the same second (a message frozen by the system filter right after it arrived)
    progressed = [e for e in attempts if e.type is not EventType.IN_PROGRESS]
    outcome = finals[-1] if finals else (progressed or attempts)[-1]
    if outcome.type is EventType.ARCHIVED and progressed[-1] is not outcome:
        # an outgoing archive copy is logged before the remote outcome: what came after it is the news
        outcome = progressed[-1]
    explained = next((e for e in reversed(attempts) if e.reason is not None), None)
    waiting = outcome.type in _WAITING
    return {
        "recipient": outcome.recipient,
        "original_recipient": outcome.original_recipient,
        "recipient_domain": outcome.recipient_domain,
        "state": str(outcome.type),
        "reason": str(explained.reason) if explained and explained.reason else None,
        "hint": explained.hint if explained else None,
        "response": outcome.response,
        "retry": event_dict(outcome)["retry"],
        "expected_attempts": EXPECTED_ATTEMPTS if waiting or outcome.retry.give_up else None,
        "route": _route(outcome),
        "attempts": [event_dict(e) for e in attempts],
    }


def message_view(view: MessageView) -> dict[str, Any]:
    """The store's message view (already confined to the caller's scope) as the API answers it."""
    events = sorted(view.events, key=lambda e: (e.time, e.retry.attempt, e.event_id))
    by_recipient: dict[str, list[DeliveryEvent]] = {}
    for event in events:
        by_recipient.setdefault((event.recipient or "").lower(), []).append(event)
    recipients = [_recipient_summary(attempts) for attempts in by_recipient.values()]
    recipients.sort(key=lambda r: (r["state"] == "delivered", r["recipient"] or ""))

    arrival = {name: view.arrival.get(name) for name in _ARRIVAL_FIELDS}
    arrival["time"] = view.arrival.get("arrival_time")
    failure = next((e for e in reversed(events) if e.type is not EventType.DELIVERED and e.reason is not None), None)
    return {
        "server": view.server,
        "msgid": view.msgid,
        "arrival": arrival,
        "recipients": recipients,
        "lines": view.lines,
        "lines_visible": view.lines_visible,
        "bounce_msgid": view.bounce_msgids[0] if view.bounce_msgids else None,
        "bounce_msgids": view.bounce_msgids,
        "parent_msgid": view.parent_msgid,
        "reason": str(failure.reason) if failure and failure.reason else None,
        "hint": failure.hint if failure else None,
    }
