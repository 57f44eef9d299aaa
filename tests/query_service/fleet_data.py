"""A seeded random fleet of delivery events for the query-service tests, and a brute-force oracle.

Messages have consistent arrival data across their events (the store keeps arrival data once per
message), several recipients, deferral histories ending in an outcome, bounce messages linked to their
parents, incoming mail from outside to local domains, and SMTP-time rejections without a message id.
Event times are distinct milliseconds, so "newest first" has exactly one right order.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from trackdelivery.events import BLOCKED_AND_FAILED, DeliveryEvent, EventType, Reason, RetryState
from trackdelivery.generator.ids import new_format_id
from trackdelivery.store import MessageLine

SERVERS = [f"cp{n}.example-hosting.net" for n in range(6)]
REMOTE_DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "web.de", "example.org", "mail.example.net"]
SUBJECTS = ["Invoice 2231", "Hello there", "Meeting notes", "Weekly newsletter", "Your order has shipped", "RE: quote"]
FAILURE_REASONS = {
    EventType.DEFERRED: [Reason.GREYLISTED, Reason.RATE_LIMITED, Reason.CONNECTION_FAILURE, Reason.MAILBOX_FULL],
    EventType.BOUNCED: [Reason.RECIPIENT_UNKNOWN, Reason.MAILBOX_FULL, Reason.IP_REPUTATION, Reason.POLICY_REJECTION],
    EventType.EXPIRED: [Reason.EXPIRED],
    EventType.REJECTED: [Reason.RELAY_DENIED, Reason.IP_REPUTATION, Reason.AUTH_FAILURE],
    EventType.FROZEN: [Reason.LOCAL_DELIVERY_ERROR],
}
RESPONSES = {
    Reason.GREYLISTED: "451 4.7.1 Greylisted, please try again later",
    Reason.RATE_LIMITED: "421 4.7.28 Our system has detected an unusual rate of unsolicited mail",
    Reason.CONNECTION_FAILURE: "Connection timed out",
    Reason.MAILBOX_FULL: "552 5.2.2 The email account that you tried to reach is over quota",
    Reason.RECIPIENT_UNKNOWN: "550 5.1.1 The email account that you tried to reach does not exist",
    Reason.IP_REPUTATION: "554 5.7.1 Service unavailable; Client host blocked using zen.spamhaus.org",
    Reason.POLICY_REJECTION: "550 5.7.1 Message rejected due to local policy",
    Reason.EXPIRED: "retry timeout exceeded",
    Reason.RELAY_DENIED: "relay not permitted",
    Reason.AUTH_FAILURE: "550 5.7.26 Unauthenticated email is not accepted (DMARC)",
    Reason.LOCAL_DELIVERY_ERROR: "Message is frozen",
}
HINTS = {reason: f"fix for {reason.value}: check and retry" for reason in Reason}


@dataclass
class Account:
    user: str
    server: str
    domains: list[str]


@dataclass
class Fleet:
    events: list[DeliveryEvent] = field(default_factory=list)
    lines: list[MessageLine] = field(default_factory=list)
    accounts: list[Account] = field(default_factory=list)

    def account_of_user(self, user: str) -> Account:
        return next(a for a in self.accounts if a.user == user)


class _Clock:
    """Distinct millisecond timestamps, so the newest-first order is unambiguous."""

    def __init__(self) -> None:
        self.used: set[int] = set()

    def at(self, seconds: float) -> float:
        ms = int(seconds * 1000)
        while ms in self.used:
            ms += 1
        self.used.add(ms)
        return ms / 1000


def _domain(address: str | None) -> str | None:
    if not address or "@" not in address:
        return None
    return address.rpartition("@")[2].lower()


def build_fleet(seed: int, now: float, messages: int = 220, span: float = 2 * 86400) -> Fleet:
    rng = random.Random(seed)
    clock = _Clock()
    fleet = Fleet()
    for n in range(12):
        user = f"acct{n:02d}"
        domains = [f"{user}-shop.example", f"{user}.example"][: rng.choice((1, 2))]
        fleet.accounts.append(Account(user, SERVERS[n % len(SERVERS)], domains))
    pid = 1000
    for number in range(messages):
        arrival = now - rng.random() * span
        if number < 12:
            arrival = now - rng.random() * 1800  # some mail in the last hour, always
        pid += 2
        account = rng.choice(fleet.accounts)
        incoming = rng.random() < 0.2
        msgid = new_format_id(int(arrival), pid, rng.randrange(1_000_000))
        if incoming:
            sender = f"{rng.choice(['news', 'bob', 'ana'])}@{rng.choice(REMOTE_DOMAINS)}"
            recipients = [f"info@{account.domains[0]}"]
            user = None
            client_ip = f"203.0.113.{rng.randrange(1, 250)}"
        else:
            sender = f"{rng.choice(['info', 'sales', 'Mixed.Case'])}@{rng.choice(account.domains)}"
            recipients = [
                f"{rng.choice(['bob', 'carol', 'dave', 'erin'])}{rng.randrange(5)}@{rng.choice(REMOTE_DOMAINS)}"
                for _ in range(rng.choice((1, 1, 2, 3)))
            ]
            recipients = list(dict.fromkeys(recipients))
            user = account.user
            client_ip = f"198.51.100.{rng.randrange(1, 250)}"
        arrival_fields: dict[str, Any] = {
            "arrival_time": clock.at(arrival),
            "sender": sender,
            "sender_domain": _domain(sender),
            "cpanel_user": user,
            "auth_id": f"{sender}" if user else None,
            "client_host": "localhost" if user else f"mail.{_domain(sender)}",
            "client_ip": client_ip,
            "protocol": "esmtpsa" if user else "esmtps",
            "spam_score": round(rng.random() * 6, 1),
            "size": rng.randrange(800, 90_000),
            "subject": rng.choice(SUBJECTS),
        }
        server = account.server
        fleet.lines.append(
            MessageLine(server, msgid, arrival, f"{arrival:.0f} {msgid} <= {sender} H=x [{client_ip}] S=1")
        )
        for recipient in recipients:
            _recipient_history(rng, clock, fleet, server, msgid, arrival, recipient, arrival_fields, now, pid)
    for _ in range(25):  # SMTP-time rejections: no message id
        when = clock.at(now - rng.random() * span)
        account = rng.choice(fleet.accounts)
        reason = rng.choice(FAILURE_REASONS[EventType.REJECTED])
        recipient = f"nobody{rng.randrange(9)}@{rng.choice(account.domains)}"
        sender = f"spam{rng.randrange(9)}@{rng.choice(REMOTE_DOMAINS)}"
        fleet.events.append(
            DeliveryEvent(
                type=EventType.REJECTED,
                server=account.server,
                msgid=None,
                time=when,
                recipient=recipient,
                recipient_domain=_domain(recipient),
                sender=sender,
                sender_domain=_domain(sender),
                client_ip=f"185.220.101.{rng.randrange(1, 250)}",
                response=RESPONSES[reason],
                reason=reason,
                hint=HINTS[reason],
                smtp_code=550,
            )
        )
    return fleet


def _recipient_history(
    rng: random.Random,
    clock: _Clock,
    fleet: Fleet,
    server: str,
    msgid: str,
    arrival: float,
    recipient: str,
    arrival_fields: dict[str, Any],
    now: float,
    pid: int,
) -> None:
    local = arrival_fields["cpanel_user"] is None
    remote_domain = _domain(recipient) or ""
    remote_ip = f"192.0.2.{rng.randrange(1, 250)}"
    common: dict[str, Any] = {
        "server": server,
        "msgid": msgid,
        "recipient": recipient,
        "recipient_domain": remote_domain,
        "router": "virtual_user" if local else "dkim_lookuphost",
        "transport": "dovecot_virtual_delivery" if local else "dkim_remote_smtp",
        **arrival_fields,
    }
    if not local:
        common.update(remote_host=f"mx.{remote_domain}", remote_ip=remote_ip)
    outcome = rng.choices(
        [
            EventType.DELIVERED,
            EventType.BOUNCED,
            EventType.EXPIRED,
            EventType.DEFERRED,
            EventType.IN_PROGRESS,
            EventType.FILTERED,
            EventType.ARCHIVED,
            EventType.FROZEN,
            EventType.CANCELLED,
        ],
        weights=[40, 12, 4, 10, 6, 3, 2, 2, 2],
    )[0]
    deferrals = rng.choice((0, 0, 1, 2, 3)) if outcome is not EventType.IN_PROGRESS else 0
    if outcome in (EventType.DEFERRED, EventType.EXPIRED):
        deferrals = max(deferrals, 1)
    when = arrival
    first_attempt = arrival + 1
    attempt = 0
    deferral_reason = rng.choice(FAILURE_REASONS[EventType.DEFERRED])
    for _ in range(deferrals):
        attempt += 1
        when = min(when + rng.uniform(60, 3 * 3600), now - 1)
        fleet.events.append(
            DeliveryEvent(
                type=EventType.DEFERRED,
                time=clock.at(when),
                response=RESPONSES[deferral_reason],
                reason=deferral_reason,
                hint=HINTS[deferral_reason],
                smtp_code=451,
                retry=RetryState(attempt, first_attempt, when, when + 900, first_attempt + 4 * 86400),
                **common,
            )
        )
    if outcome is EventType.DEFERRED:
        return
    attempt += 1
    when = min(when + rng.uniform(1, 3600), now - 0.5)
    event_fields: dict[str, Any] = {}
    if outcome in FAILURE_REASONS:
        reason = rng.choice(FAILURE_REASONS[outcome])
        event_fields.update(response=RESPONSES[reason], reason=reason, hint=HINTS[reason], smtp_code=550)
    elif outcome is EventType.DELIVERED:
        event_fields.update(response=f"250 2.0.0 OK id={rng.randrange(10**6)}", smtp_code=250, tls="TLS1.3")
    if outcome in (EventType.BOUNCED, EventType.EXPIRED):
        bounce_msgid = new_format_id(int(when), pid + 1, rng.randrange(1_000_000))
        event_fields["bounce_msgid"] = bounce_msgid
    retry = RetryState(attempt, first_attempt, when) if outcome is not EventType.IN_PROGRESS else RetryState()
    event = DeliveryEvent(type=outcome, time=clock.at(when), retry=retry, **event_fields, **common)
    fleet.events.append(event)
    fleet.lines.append(MessageLine(server, msgid, when, f"{when:.0f} {msgid} ** {recipient}: {event.response}"))


# -- the oracle ------------------------------------------------------------------------------------------

_CASELESS = ("sender", "recipient", "address", "domain", "server", "user")


def _ip(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value.lower()


def matches(event: DeliveryEvent, filters: dict[str, Any]) -> bool:
    """Brute-force filter check written from the API's documentation, not from the store's code."""
    low = {k: (v.lower() if k in _CASELESS and isinstance(v, str) else v) for k, v in filters.items()}
    sender = (event.sender or "").lower() if event.sender is not None else None
    recipients = {(r or "").lower() for r in (event.recipient, event.original_recipient) if r}
    domains = {d.lower() for d in (event.sender_domain, event.recipient_domain) if d}
    checks = {
        "sender": lambda v: sender == v,
        "recipient": lambda v: v in recipients,
        "address": lambda v: v == sender or v in recipients,
        "domain": lambda v: v in domains,
        "server": lambda v: event.server.lower() == v,
        "user": lambda v: (event.cpanel_user or "").lower() == v and event.cpanel_user is not None,
        "msgid": lambda v: event.msgid == v,
        "ip": lambda v: _ip(v) in (_ip(event.client_ip), _ip(event.remote_ip)),
        "reason": lambda v: event.reason is not None and event.reason.value == v,
        "text": lambda v: v.casefold() in f"{event.response or ''}\x00{event.subject or ''}".casefold(),
        "types": lambda v: event.type in v,
        "since": lambda v: event.time >= v,
        "until": lambda v: event.time <= v,
    }
    return all(checks[name](value) for name, value in low.items() if value is not None)


def in_scope(event: DeliveryEvent, users: Iterable[str], domains: Iterable[str]) -> bool:
    user_set, domain_set = set(users), {d.lower() for d in domains}
    if event.cpanel_user is not None and event.cpanel_user in user_set:
        return True
    return bool({d.lower() for d in (event.sender_domain, event.recipient_domain) if d} & domain_set)


def newest_first(events: Iterable[DeliveryEvent]) -> list[DeliveryEvent]:
    return sorted(events, key=lambda e: e.time, reverse=True)


def capped_by_type(events: Iterable[DeliveryEvent], per_type: int) -> tuple[list[str], dict[str, int], set[str]]:
    """cPanel's max_results_by_type: the newest ``per_type`` of each type; also counts and overflowed types."""
    by_type: dict[EventType, list[DeliveryEvent]] = {}
    for event in newest_first(events):
        by_type.setdefault(event.type, []).append(event)
    kept = [e for group in by_type.values() for e in group[:per_type]]
    ids = [e.event_id for e in newest_first(kept)]
    counts = {str(t): min(len(g), per_type) for t, g in by_type.items()}
    overflowed = {str(t) for t, g in by_type.items() if len(g) > per_type}
    return ids, counts, overflowed


__all__ = ["BLOCKED_AND_FAILED", "Fleet", "build_fleet", "capped_by_type", "in_scope", "matches", "newest_first"]
