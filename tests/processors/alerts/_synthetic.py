"""Synthetic delivery events in their wire form, and a small harness that runs rules over them.

Events are built as real ``DeliveryEvent`` objects and passed through orjson, so a test sees exactly
the dicts the alert worker reads from ``exim.delivery.events`` (enums as strings, ``retry`` nested).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from processors.alerts.engine import RuleEvaluator, ScopeState
from processors.alerts.rules import build_rules, signals_for
from processors.alerts.types import Alert, RuleKind, RuleSettings, Signal
from trackdelivery.events import DeliveryEvent, EventType, Reason, RetryState

#: 2025-03-10 00:00:00 UTC: a multiple of every default window, so buckets line up with the hours
T0 = 1_741_564_800.0
HOUR = 3600.0
MINUTE = 60.0

SERVER = "srv001.example-hosting.net"
OTHER_SERVER = "srv002.example-hosting.net"

GMAIL_RATE_LIMIT = (
    "SMTP error from remote mail server after end of data: 421-4.7.28 [192.0.2.10      15] Our system has "
    "detected an unusual rate of\n421-4.7.28 unsolicited mail originating from your IP address. To protect our\n"
    "421-4.7.28 users from spam, mail sent from your IP address has been temporarily\n421-4.7.28 rate limited. "
    "For more information, go to\n421-4.7.28  https://support.google.com/mail/?p=UnsolicitedRateLimitError to\n"
    "421 4.7.28 review our Bulk Email Senders Guidelines. d9443c01a7336-2a - gsmtp"
)
YAHOO_TSS04 = (
    "SMTP error from remote mail server after MAIL FROM:<alice@shop.example>: 421 4.7.0 [TSS04] Messages from "
    "192.0.2.10 temporarily deferred due to unexpected volume or user complaints"
)
MICROSOFT_S3150 = (
    "SMTP error from remote mail server after MAIL FROM:<alice@shop.example>: 550 5.7.1 Unfortunately, messages "
    "from [192.0.2.10] weren't sent. Please contact your Internet service provider since part of their network "
    "is on our block list (S3150). You can also refer your provider to "
    "http://mail.live.com/mail/troubleshooting.aspx#errors. [AM4PEPF00027A5F.eurprd04.prod.outlook.com]"
)
SPAMHAUS = (
    "SMTP error from remote mail server after RCPT TO:<bob@example.org>: 554 5.7.1 Service unavailable; Client "
    "host [192.0.2.10] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/192.0.2.10"
)
PLAIN_TEMPFAIL = "SMTP error from remote mail server after RCPT TO:<bob@example.org>: 451 4.3.0 Try again later"
USER_UNKNOWN = "SMTP error from remote mail server after RCPT TO:<bob@example.org>: 550 5.1.1 No such user here"
CPANEL_LIMIT = (
    "Domain shop.example has exceeded the max emails per hour (101/100 (101%)) allowed.  "
    "Message will be reattempted later"
)

_msgids = itertools.count(1)


def new_msgid() -> str:
    return f"1tSyn{next(_msgids):06d}-000000000AAA-Zz"


def _mx(domain: str) -> str:
    return {
        "gmail.com": "gmail-smtp-in.l.google.com",
        "yahoo.com": "mta7.am0.yahoodns.net",
        "hotmail.com": "hotmail-com.olc.protection.outlook.com",
        "outlook.com": "outlook-com.olc.protection.outlook.com",
    }.get(domain, f"mx.{domain}")


def event(
    type_: str,
    time: float,
    *,
    server: str = SERVER,
    msgid: str | None = None,
    recipient: str = "bob@example.org",
    sender: str = "alice@shop.example",
    cpanel_user: str | None = "shop",
    auth_id: str | None = None,
    remote: bool = True,
    response: str | None = None,
    reason: str | None = None,
    first_attempt: float | None = None,
    attempt: int = 1,
) -> dict[str, Any]:
    """One event, outbound from a cPanel account over SMTP unless told otherwise."""
    domain = recipient.rpartition("@")[2].lower()
    retry = RetryState(attempt=attempt, first_attempt=first_attempt if first_attempt is not None else time,
                       last_attempt=time)
    delivery = DeliveryEvent(
        type=EventType(type_), server=server, msgid=msgid or new_msgid(), time=float(time), recipient=recipient,
        recipient_domain=domain, arrival_time=float(time) - 2, sender=sender,
        sender_domain=(sender.rpartition("@")[2].lower() or None) if sender else None,
        cpanel_user=cpanel_user, auth_id=auth_id, protocol="esmtpsa" if cpanel_user or auth_id else "esmtps",
        router="dkim_lookuphost" if remote else "virtual_user",
        transport="dkim_remote_smtp" if remote else "dovecot_virtual_delivery",
        remote_host=_mx(domain) if remote else None, remote_ip="198.51.100.25" if remote else None,
        response=response, reason=Reason(reason) if reason else None, retry=retry,
    )
    wire: dict[str, Any] = orjson.loads(orjson.dumps(delivery.to_dict()))
    return wire


def inbound(type_: str, time: float, **kwargs: Any) -> dict[str, Any]:
    """Mail from a remote sender to a local mailbox: no cPanel user, no authenticated id."""
    kwargs.setdefault("sender", "newsletter@remote.example")
    kwargs.setdefault("recipient", "carol@shop.example")
    return event(type_, time, cpanel_user=None, auth_id=None, remote=False, **kwargs)


def spread(n: int, start: float, duration: float) -> list[float]:
    """``n`` times evenly over ``[start, start + duration)``."""
    return [start + duration * i / n for i in range(n)]


class Harness:
    """The evaluator as the live worker drives it: one ``ScopeState`` per signal key.

    ``roundtrip=True`` passes every signal and state through its wire/bytes form between two steps,
    exactly as the faust agents do (signals topic, table values).
    """

    def __init__(self, rules: Mapping[str, RuleSettings] | None = None, *, roundtrip: bool = False) -> None:
        self.rules = dict(rules) if rules is not None else build_rules()
        self.evaluator = RuleEvaluator(self.rules)
        self.event_rules = [r for r in self.rules.values() if r.enabled and r.kind is not RuleKind.SHIPPER_SILENT]
        self.states: dict[str, ScopeState] = {}
        self.roundtrip = roundtrip
        self.alerts: list[Alert] = []

    def feed(self, event: Mapping[str, Any], wall: float | None = None) -> list[Alert]:
        out: list[Alert] = []
        for signal in signals_for(self.event_rules, event):
            if self.roundtrip:
                signal = Signal.from_wire(orjson.loads(orjson.dumps(signal.to_wire())))
            state = self.states.get(signal.key)
            if self.roundtrip and state is not None:
                state = ScopeState.from_bytes(state.to_bytes())
            state, alerts = self.evaluator.apply(state, signal, signal.time if wall is None else wall)
            self.states[signal.key] = state
            out.extend(alerts)
        self.alerts.extend(out)
        return out

    def feed_all(self, events: Iterable[Mapping[str, Any]]) -> list[Alert]:
        out: list[Alert] = []
        for item in events:
            out.extend(self.feed(item))
        return out

    def idle(self, wall: float) -> list[Alert]:
        out: list[Alert] = []
        for key, state in list(self.states.items()):
            self.states[key], alerts = self.evaluator.idle(state, wall)
            out.extend(alerts)
        self.alerts.extend(out)
        return out

    def state(self, rule: str) -> ScopeState:
        (state,) = [s for s in self.states.values() if s.rule == rule]
        return state


def of_rule(alerts: Iterable[Alert], rule: str) -> list[Alert]:
    return [alert for alert in alerts if alert.rule == rule]


def fired(alerts: Iterable[Alert], rule: str | None = None) -> list[Alert]:
    """The alerts that fired (version 1), of one rule or all."""
    return [alert for alert in alerts if alert.version == 1 and (rule is None or alert.rule == rule)]
