"""The default alert rules on synthetic events: each kind fires on its condition and stays quiet just
outside it, the alert life cycle (fire once, update, resolve, cool down, idle), restart safety of the
scope state, and hostile or malformed events."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.alerts.engine import RuleEvaluator, ScopeState, alert_id
from processors.alerts.rules import DEFAULT_RULES, build_rules, signals_for
from processors.alerts.silence import ShipperState, SilenceMonitor
from processors.alerts.simulate import simulate
from processors.alerts.types import (
    MAX_SCOPE_VALUE,
    Alert,
    AlertState,
    RuleKind,
    ScopeKind,
    Severity,
    Signal,
    scope_key,
    signal_key,
)
from tests.processors.alerts._synthetic import (
    CPANEL_LIMIT,
    GMAIL_RATE_LIMIT,
    HOUR,
    MICROSOFT_S3150,
    MINUTE,
    OTHER_SERVER,
    PLAIN_TEMPFAIL,
    SERVER,
    SPAMHAUS,
    T0,
    USER_UNKNOWN,
    YAHOO_TSS04,
    Harness,
    event,
    fired,
    inbound,
    of_rule,
    spread,
)
from trackdelivery.events import EventType, Reason

START = T0 + 10 * HOUR
Events = list[dict[str, Any]]


def test_every_default_rule_kind_is_covered() -> None:
    # the tests below cover these rule names; a new default rule needs tests of its own
    assert {rule.name for rule in DEFAULT_RULES} == {
        "persistent_deferral", "provider_throttling", "ip_blocklisted", "sender_domain_bounce_ratio",
        "server_failure_ratio", "outbound_spam", "frozen_messages", "queue_backlog", "shipper_silent",
    }
    assert {rule.kind for rule in DEFAULT_RULES} == set(RuleKind)


def only(alerts: list[Alert], rule: str) -> Alert:
    matching = of_rule(alerts, rule)
    assert len(matching) == 1, [a.to_dict() for a in alerts]
    return matching[0]


def measure(harness: Harness, rule: str) -> Any:
    return harness.evaluator.measure(harness.rules[rule], harness.state(rule))


# ---- persistent_deferral -------------------------------------------------------------------------


def persistent(n: int, *, age: float, recipients: Callable[[int], str] = lambda i: f"user{i}@example.org",
               servers: Callable[[int], str] = lambda i: SERVER) -> Events:
    return [
        event("deferred", START + i * MINUTE, server=servers(i), recipient=recipients(i), response=PLAIN_TEMPFAIL,
              reason="remote_server_error", first_attempt=START + i * MINUTE - age, attempt=12)
        for i in range(n)
    ]


def test_persistent_deferral_fires_when_enough_recipients_are_deferred_for_longer_than_min_age() -> None:
    harness = Harness()
    events = persistent(5, age=4 * HOUR + 60)
    assert not of_rule(harness.feed_all(events[:4]), "persistent_deferral")
    alert = only(harness.feed(events[4]), "persistent_deferral")
    assert alert.version == 1 and alert.state is AlertState.FIRING
    assert alert.kind is RuleKind.PERSISTENT_DEFERRAL
    assert alert.scope == {"server": SERVER, "remote_domain": "example.org"}
    assert alert.count == 5 and alert.details["recipients"] == 5
    assert "451 4.3.0 Try again later" in alert.summary
    assert alert.examples and alert.examples[-1]["recipient"] == "user4@example.org"


@pytest.mark.parametrize(
    "events",
    [
        pytest.param(persistent(5, age=4 * HOUR - 60), id="deferred-for-less-than-min-age"),
        pytest.param(persistent(20, age=5 * HOUR, recipients=lambda i: "same@example.org"), id="one-recipient"),
        pytest.param(persistent(5, age=5 * HOUR, recipients=lambda i: f"user@domain{i}.example"),
                     id="spread-over-remote-domains"),
        pytest.param(persistent(5, age=5 * HOUR, servers=lambda i: f"srv{i:03d}.example-hosting.net"),
                     id="spread-over-servers"),
        pytest.param([dict(e, type="delivered", response="250 OK") for e in persistent(5, age=5 * HOUR)],
                     id="delivered-late-is-not-deferred"),
    ],
)
def test_persistent_deferral_does_not_fire(events: Events) -> None:
    assert not of_rule(Harness().feed_all(events), "persistent_deferral")


@pytest.mark.parametrize(
    ("reason", "fires"),
    [
        pytest.param("retry_wait", False, id="retry-wait-is-not-a-new-deferral"),
        pytest.param("connection_failure", True, id="a-real-deferral"),
    ],
)
def test_persistent_deferral_does_not_count_retry_wait_deferrals(reason: str, fires: bool) -> None:
    # five recipients at one domain, first attempted 5 h ago: only real delivery attempts count, not
    # the queue runner's "retry time not reached" lines for the same messages
    events = [dict(e, reason=reason) for e in persistent(5, age=5 * HOUR)]
    alerts = of_rule(Harness().feed_all(events), "persistent_deferral")
    assert len(fired(alerts)) == (1 if fires else 0)
    if fires:
        assert alerts[0].scope == {"server": SERVER, "remote_domain": "example.org"} and alerts[0].count == 5


# ---- provider_throttling -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "response", "provider", "signature"),
    [
        ("gmail.com", GMAIL_RATE_LIMIT, "gmail", "gmail_rate_limit"),
        ("yahoo.com", YAHOO_TSS04, "yahoo", "yahoo_tss"),
    ],
)
def test_provider_throttling_fires_on_enough_throttled_responses(
    domain: str, response: str, provider: str, signature: str
) -> None:
    harness = Harness()
    delivered = [event("delivered", START + i * 10, recipient=f"ok{i}@{domain}", response="250 2.0.0 OK")
                 for i in range(20)]
    hits = [event("deferred", START + 300 + i * 10, recipient=f"hit{i}@{domain}", response=response,
                  reason="rate_limited") for i in range(10)]
    assert not of_rule(harness.feed_all(delivered + hits[:9]), "provider_throttling")
    alert = only(harness.feed(hits[9]), "provider_throttling")
    assert alert.scope == {"server": SERVER, "provider": provider}
    assert alert.severity is Severity.CRITICAL and alert.version == 1
    assert alert.count == 10
    assert alert.details == {"signatures": {signature: 10}, "attempts": 30, "share": 0.333}
    assert signature in alert.summary


def test_provider_throttling_does_not_fire_when_diluted_by_successful_deliveries() -> None:
    harness = Harness()
    events: Events = []
    for i in range(10):
        events += [event("delivered", START + i * 60 + j, recipient=f"ok{i}.{j}@gmail.com", response="250 OK")
                   for j in range(6)]
        events.append(event("deferred", START + i * 60 + 30, recipient=f"hit{i}@gmail.com",
                            response=GMAIL_RATE_LIMIT, reason="rate_limited"))
    assert not of_rule(harness.feed_all(events), "provider_throttling")
    result = measure(harness, "provider_throttling")
    assert result.count == 10 and result.details["attempts"] == 70  # the hits counted, the share is 14%
    assert not result.firing


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        pytest.param(PLAIN_TEMPFAIL, "remote_server_error", id="no-signature"),
        pytest.param(SPAMHAUS, "ip_reputation", id="signature-of-another-rule"),
        pytest.param(GMAIL_RATE_LIMIT, "retry_wait", id="retry-wait-is-not-a-new-deferral"),
        pytest.param(GMAIL_RATE_LIMIT, "greylisted", id="greylisting-is-not-throttling"),
    ],
)
def test_provider_throttling_ignores_responses_outside_its_signatures(response: str, reason: str) -> None:
    events = [event("deferred", START + i * 10, recipient=f"r{i}@gmail.com", response=response, reason=reason)
              for i in range(30)]
    assert not of_rule(Harness().feed_all(events), "provider_throttling")


def test_block_list_response_to_gmail_feeds_ip_blocklisted_not_provider_throttling() -> None:
    events = [event("bounced", START + i * 10, recipient=f"r{i}@gmail.com", response=SPAMHAUS,
                    reason="ip_reputation") for i in range(30)]
    alerts = Harness().feed_all(events)
    assert not of_rule(alerts, "provider_throttling")
    assert only(fired(alerts), "ip_blocklisted").scope == {"server": SERVER, "provider": "gmail"}


# ---- ip_blocklisted ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recipient", "response", "provider", "signature"),
    [
        ("bob@hotmail.com", MICROSOFT_S3150, "microsoft", "microsoft_block_list"),
        ("bob@example.org", SPAMHAUS, "other", "spamhaus"),
        ("bob@outlook.com", SPAMHAUS, "microsoft", "spamhaus"),
    ],
)
def test_ip_blocklisted_fires_on_block_list_responses(
    recipient: str, response: str, provider: str, signature: str
) -> None:
    harness = Harness()
    local, _, domain = recipient.partition("@")
    events = [event("bounced", START + i * MINUTE, recipient=f"{local}{i}@{domain}", response=response,
                    reason="ip_reputation") for i in range(5)]
    assert not of_rule(harness.feed_all(events[:4]), "ip_blocklisted")
    alert = only(harness.feed(events[4]), "ip_blocklisted")
    assert alert.scope == {"server": SERVER, "provider": provider}
    assert alert.severity is Severity.CRITICAL
    assert alert.details["signatures"] == {signature: 5}


@pytest.mark.parametrize(
    ("hits", "deliveries"),
    [pytest.param(5, 2, id="share-below-min-share"), pytest.param(4, 0, id="below-threshold")],
)
def test_ip_blocklisted_does_not_fire(hits: int, deliveries: int) -> None:
    events = [event("delivered", START + i, recipient=f"ok{i}@example.org", response="250 OK")
              for i in range(deliveries)]
    events += [event("bounced", START + 60 + i, recipient=f"r{i}@example.org", response=SPAMHAUS,
                     reason="ip_reputation") for i in range(hits)]
    assert not of_rule(Harness().feed_all(events), "ip_blocklisted")


# ---- failure ratios ------------------------------------------------------------------------------


def outcomes(counts: dict[str, int], *, make: Callable[..., dict[str, Any]] = event, reason: str | None = None,
             **kwargs: Any) -> Events:
    """Outcome events, failures first, within one window."""
    kinds = [kind for kind in ("bounced", "deferred", "delivered") for _ in range(counts.get(kind, 0))]
    responses = {"bounced": USER_UNKNOWN, "deferred": PLAIN_TEMPFAIL, "delivered": "250 OK"}
    reasons = {"bounced": "recipient_unknown", "deferred": "remote_server_error", "delivered": None}
    return [
        make(kind, START + i * 10, recipient=f"r{i}@example.org", response=responses[kind],
             reason=reason or reasons[kind], **kwargs)
        for i, kind in enumerate(kinds)
    ]


@pytest.mark.parametrize("account", [{"cpanel_user": "shop"}, {"cpanel_user": None, "auth_id": "alice@shop.example"}])
def test_sender_domain_bounce_ratio_fires_at_min_volume_and_ratio(account: dict[str, Any]) -> None:
    harness = Harness()
    events = outcomes({"bounced": 20, "delivered": 20}, **account)
    assert not of_rule(harness.feed_all(events[:39]), "sender_domain_bounce_ratio")
    alert = only(harness.feed(events[39]), "sender_domain_bounce_ratio")
    assert alert.scope == {"server": SERVER, "sender_domain": "shop.example"}
    assert alert.count == 0.5
    assert alert.details == {"outcomes": 40, "failed": 20, "deferred": 0}


@pytest.mark.parametrize(
    "events",
    [
        pytest.param(outcomes({"bounced": 39}), id="below-min-volume"),
        pytest.param(outcomes({"bounced": 19, "delivered": 21}), id="below-ratio"),
        pytest.param(outcomes({"delivered": 20}) + outcomes({"deferred": 60}, reason="retry_wait"),
                     id="retry-wait-not-counted"),
    ],
)
def test_sender_domain_bounce_ratio_does_not_fire(events: Events) -> None:
    assert not of_rule(Harness().feed_all(events), "sender_domain_bounce_ratio")


def test_inbound_mail_from_remote_senders_does_not_count_for_the_sender_domain() -> None:
    events = outcomes({"bounced": 200, "delivered": 50}, make=inbound)
    alerts = Harness().feed_all(events)
    assert not of_rule(alerts, "sender_domain_bounce_ratio")
    assert not of_rule(alerts, "outbound_spam")
    # the same events do count for the server as a whole
    assert only(fired(alerts), "server_failure_ratio").scope == {"server": SERVER}


@pytest.mark.parametrize(
    ("counts", "fires_at"),
    [
        pytest.param({"bounced": 60, "delivered": 140}, 200, id="bounce-ratio"),
        pytest.param({"deferred": 100, "delivered": 100}, 200, id="deferral-ratio"),
    ],
)
def test_server_failure_ratio_fires_at_min_volume_and_ratio(counts: dict[str, int], fires_at: int) -> None:
    harness = Harness()
    # many accounts so that no single sender dominates
    events = [dict(e, cpanel_user=f"user{i % 17}") for i, e in enumerate(outcomes(counts))]
    assert not of_rule(harness.feed_all(events[: fires_at - 1]), "server_failure_ratio")
    alert = only(harness.feed(events[fires_at - 1]), "server_failure_ratio")
    assert alert.scope == {"server": SERVER}
    assert alert.details["outcomes"] == 200


@pytest.mark.parametrize(
    "events",
    [
        pytest.param(outcomes({"bounced": 199}), id="below-min-volume"),
        pytest.param(outcomes({"bounced": 59, "deferred": 99, "delivered": 42}), id="below-both-ratios"),
        pytest.param(outcomes({"delivered": 200}) + outcomes({"deferred": 300}, reason="retry_wait"),
                     id="retry-wait-not-counted"),
        pytest.param(outcomes({"delivered": 200}) + outcomes({"deferred": 300}, reason="greylisted"),
                     id="greylisting-not-counted"),
        pytest.param([dict(e, server=f"srv{i % 2}") for i, e in enumerate(outcomes({"bounced": 300}))],
                     id="split-over-servers"),
    ],
)
def test_server_failure_ratio_does_not_fire(events: Events) -> None:
    assert not of_rule(Harness().feed_all(events), "server_failure_ratio")


# ---- outbound_spam -------------------------------------------------------------------------------


def account_traffic(messages: int, *, bounced: int = 0, limit_hits: int = 0, limit_text: str = CPANEL_LIMIT,
                    user: str = "shop") -> Events:
    events = []
    for i in range(messages):
        kind = "bounced" if i < bounced else "delivered"
        events.append(event(kind, START + i * 3000 / max(messages, 1), cpanel_user=user, recipient=f"r{i}@example.org",
                            response=USER_UNKNOWN if kind == "bounced" else "250 OK",
                            reason="recipient_unknown" if kind == "bounced" else None))
    events += [event("deferred", START + 3100 + i, cpanel_user=user, recipient=f"held{i}@example.org", remote=False,
                     response=limit_text, reason="local_limit") for i in range(limit_hits)]
    return sorted(events, key=lambda e: e["time"])


@pytest.mark.parametrize(
    ("events", "cause"),
    [
        pytest.param(account_traffic(300), "300 messages in 1 h", id="message-volume"),
        pytest.param(account_traffic(40, bounced=20), "50% of 40 deliveries bounced", id="bounce-ratio"),
        pytest.param(account_traffic(0, limit_hits=5), "5 deliveries held by the cPanel sending limit",
                     id="cpanel-send-limit"),
    ],
)
def test_outbound_spam_fires_on_each_cause_alone(events: Events, cause: str) -> None:
    harness = Harness()
    assert not of_rule(harness.feed_all(events[:-1]), "outbound_spam")
    alert = only(harness.feed(events[-1]), "outbound_spam")
    assert alert.scope == {"server": SERVER, "user": "shop"}
    assert alert.severity is Severity.CRITICAL
    assert alert.summary.endswith(cause), alert.summary
    assert ";" not in alert.summary  # this cause alone


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param(account_traffic(120, bounced=12, limit_hits=4), {"messages": 124, "failed": 12, "limit_hits": 4},
                     id="normal-account"),
        pytest.param(account_traffic(299), {"messages": 299}, id="just-below-volume"),
        pytest.param(account_traffic(39, bounced=39), {"outcomes": 39, "failed": 39}, id="bounces-below-min-volume"),
        pytest.param(account_traffic(10, limit_hits=10, limit_text="rate limit exceeded for this host"),
                     {"limit_hits": 0}, id="another-local-limit"),
    ],
)
def test_outbound_spam_does_not_fire_for_a_normal_account(events: Events, expected: dict[str, int]) -> None:
    harness = Harness()
    assert not of_rule(harness.feed_all(events), "outbound_spam")
    details = measure(harness, "outbound_spam").details
    assert {name: details[name] for name in expected} == expected


def test_outbound_spam_ignores_inbound_mail() -> None:
    events = [inbound("delivered", START + i, recipient=f"c{i}@shop.example") for i in range(400)]
    alerts = Harness().feed_all(events)
    assert not of_rule(alerts, "outbound_spam")


# ---- frozen_messages -----------------------------------------------------------------------------


def frozen(times: list[float], *, msgid: Callable[[int], str] | None = None, server: str = SERVER) -> Events:
    return [event("frozen", t, server=server, remote=False, msgid=msgid(i) if msgid else None)
            for i, t in enumerate(times)]


def test_frozen_messages_fires_on_enough_frozen_messages_in_a_window() -> None:
    harness = Harness()
    events = frozen(spread(10, START, 50 * MINUTE))
    assert not of_rule(harness.feed_all(events[:9]), "frozen_messages")
    alert = only(harness.feed(events[9]), "frozen_messages")
    assert alert.scope == {"server": SERVER} and alert.count == 10
    assert alert.kind is RuleKind.FROZEN and alert.severity is Severity.WARNING
    assert alert.hint.startswith("Inspect the frozen messages")


@pytest.mark.parametrize(
    "events",
    [
        pytest.param(frozen(spread(9, START, 50 * MINUTE)), id="below-threshold"),
        pytest.param(frozen(spread(20, START, 50 * MINUTE), msgid=lambda i: "1tSame-000000000AAA-Zz"),
                     id="one-message-many-times"),
        pytest.param(frozen(spread(10, START, 130 * MINUTE)), id="spread-over-two-hours"),
        pytest.param(frozen(spread(10, START, 50 * MINUTE), server=SERVER)[:5]
                     + frozen(spread(5, START, 50 * MINUTE), server=OTHER_SERVER), id="spread-over-servers"),
    ],
)
def test_frozen_messages_does_not_fire(events: Events) -> None:
    assert not of_rule(Harness().feed_all(events), "frozen_messages")


# ---- queue_backlog -------------------------------------------------------------------------------


def deferrals(per_hour: list[int], start: float = START) -> Events:
    """New deferred messages, ``per_hour[i]`` of them evenly in hour ``i``."""
    events: Events = []
    for hour, n in enumerate(per_hour):
        for t in spread(n, start + hour * HOUR, HOUR):
            events.append(event("deferred", t, recipient=f"q{len(events)}@example.org", response=PLAIN_TEMPFAIL,
                                reason="remote_server_error"))
    return events


def test_queue_backlog_fires_when_the_queue_grows_past_threshold() -> None:
    alerts = Harness().feed_all(deferrals([150, 150, 400]))
    (alert,) = fired(alerts, "queue_backlog")
    assert alert.scope == {"server": SERVER}
    assert START + 2 * HOUR < alert.last_seen < START + 3 * HOUR
    assert alert.count >= 300
    assert alert.count >= 1.5 * alert.details["previous_window"]
    assert 140 <= alert.details["previous_window"] <= 160


def test_queue_backlog_does_not_fire_on_a_steady_or_slowly_growing_backlog() -> None:
    harness = Harness()
    assert not of_rule(harness.feed_all(deferrals([280, 280, 380, 380, 380])), "queue_backlog")
    result = measure(harness, "queue_backlog")
    assert result.count >= 300 and not result.firing  # above threshold, but not growing fast enough


def test_queue_backlog_steady_for_hours_fires_only_at_its_start_and_never_again() -> None:
    alerts = of_rule(Harness().feed_all(deferrals([400] * 9)), "queue_backlog")
    assert len(fired(alerts)) == 1  # a cold start is growth from nothing
    assert alerts[-1].state is AlertState.RESOLVED
    # the cooldown (3 h) ended hours before the end of the steady backlog, and nothing fired again
    resolved_at = alerts[-1].resolved_at
    assert resolved_at is not None and resolved_at + 3 * HOUR < START + 8 * HOUR


def test_retry_wait_deferrals_do_not_grow_the_queue_backlog() -> None:
    events = [dict(e, reason="retry_wait") for e in deferrals([0, 0, 600])]
    assert not of_rule(Harness().feed_all(events), "queue_backlog")


# ---- shipper_silent ------------------------------------------------------------------------------


def monitor() -> SilenceMonitor:
    return SilenceMonitor(build_rules()["shipper_silent"])


def beat(server: str = SERVER, time: float = START, **extra: Any) -> dict[str, Any]:
    return {"v": 1, "server": server, "time": time, "interval": 30.0, "bytes_behind": 0, **extra}


def test_shipper_silent_fires_once_after_the_window() -> None:
    silence = monitor()
    state, alerts = silence.beat(None, beat(time=START))
    assert alerts == []
    state, alerts = silence.check(state, START + 10 * MINUTE - 1)
    assert alerts == []
    state, alerts = silence.check(state, START + 10 * MINUTE)
    (alert,) = alerts
    assert alert.rule == "shipper_silent" and alert.kind is RuleKind.SHIPPER_SILENT
    assert alert.state is AlertState.FIRING and alert.version == 1 and alert.severity is Severity.CRITICAL
    assert alert.scope == {"server": SERVER} and alert.first_seen == START
    assert "stopped sending heartbeats" in alert.summary
    assert silence.check(state, START + HOUR)[1] == []  # once


def test_shipper_silent_resolves_on_the_next_heartbeat_and_fires_again_with_a_new_id() -> None:
    silence = monitor()
    state, _ = silence.beat(None, beat(time=START))
    state, (first,) = silence.check(state, START + 15 * MINUTE)
    state, (resolved,) = silence.beat(state, beat(time=START + 20 * MINUTE))
    assert resolved.id == first.id and resolved.version == 2
    assert resolved.state is AlertState.RESOLVED and resolved.resolved_at == START + 20 * MINUTE
    assert silence.check(state, START + 29 * MINUTE)[1] == []
    state, (second,) = silence.check(state, START + 30 * MINUTE)
    assert second.version == 1 and second.id != first.id and second.first_seen == START + 20 * MINUTE


def test_shipper_silent_ignores_an_old_heartbeat_read_late() -> None:
    silence = monitor()
    state, _ = silence.beat(None, beat(time=START))
    state, alerts = silence.check(state, START + 15 * MINUTE)
    assert len(alerts) == 1
    state, alerts = silence.beat(state, beat(time=START - 5 * MINUTE))
    assert alerts == [] and state.alert is not None and state.last_beat == START
    # before any alert, a late old heartbeat does not move the newest one back either
    state, _ = silence.beat(None, beat(time=START))
    state, _ = silence.beat(state, beat(time=START - HOUR))
    assert state.last_beat == START
    assert silence.check(state, START + 10 * MINUTE)[1]


def test_shipper_silent_after_a_clean_stop() -> None:
    silence = monitor()
    state, _ = silence.beat(None, beat(time=START))
    state, alerts = silence.beat(state, beat(time=START + MINUTE, stopping=True))
    assert alerts == [] and state.stopping
    state, (alert,) = silence.check(state, START + 12 * MINUTE)
    assert "stopped cleanly" in alert.summary and alert.first_seen == START + MINUTE
    # another clean-stop heartbeat (a shipper restarted and stopped again) does not resolve it
    state, alerts = silence.beat(state, beat(time=START + 13 * MINUTE, stopping=True))
    assert alerts == [] and state.alert is not None
    state, (resolved,) = silence.beat(state, beat(time=START + 14 * MINUTE))
    assert resolved.state is AlertState.RESOLVED and resolved.id == alert.id


def test_shipper_silent_is_not_resolved_by_the_last_heartbeat_read_again() -> None:
    silence = monitor()
    state, _ = silence.beat(None, beat(time=START))
    state, (alert,) = silence.check(state, START + 15 * MINUTE)
    # the same heartbeat delivered twice (a redelivery after a rebalance): not a sign of life
    state, alerts = silence.beat(state, beat(time=START))
    assert alerts == []
    assert state.alert is not None and state.alert["id"] == alert.id and state.last_beat == START
    assert silence.check(state, START + 20 * MINUTE)[1] == []  # still firing, and not fired twice
    # a newer heartbeat resolves it
    state, (resolved,) = silence.beat(state, beat(time=START + 16 * MINUTE))
    assert (resolved.id, resolved.version, resolved.state) == (alert.id, 2, AlertState.RESOLVED)
    assert resolved.resolved_at == START + 16 * MINUTE and state.alert is None


def test_shipper_silent_state_survives_a_restart_and_a_disabled_rule_never_fires() -> None:
    silence = monitor()
    state, _ = silence.beat(None, beat(time=START, bytes_behind=1234))
    state, (alert,) = silence.check(state, START + 11 * MINUTE)
    restored = ShipperState.from_bytes(state.to_bytes())
    assert restored == state and restored.bytes_behind == 1234
    assert silence.check(restored, START + HOUR)[1] == []
    restored, (resolved,) = silence.beat(restored, beat(time=START + HOUR))
    assert resolved.id == alert.id

    disabled = SilenceMonitor(dataclasses.replace(build_rules()["shipper_silent"], enabled=False))
    state, _ = disabled.beat(None, beat(time=START))
    assert disabled.check(state, START + 10 * HOUR)[1] == []
    assert SilenceMonitor(None).check(state, START + 10 * HOUR)[1] == []


# ---- the life cycle ------------------------------------------------------------------------------


def frozen_at(*offsets: float) -> Events:
    return frozen([START + offset for offset in offsets])


def test_an_alert_fires_once_then_updates_only_when_due_or_doubled() -> None:
    harness = Harness()
    assert harness.feed_all(frozen_at(*range(0, 540, 60))) == []  # 9 frozen
    (alert,) = harness.feed_all(frozen_at(540))
    scope = {"server": SERVER}
    assert alert.to_dict() | {"summary": "", "hint": "", "examples": []} == {
        "v": 1, "id": alert_id("frozen_messages", scope, START), "rule": "frozen_messages", "kind": "frozen",
        "severity": "warning", "scope": scope, "scope_key": f"server={SERVER}", "state": "firing",
        "first_seen": START, "last_seen": START + 540, "resolved_at": None, "count": 10, "summary": "", "hint": "",
        "version": 1, "examples": [], "details": {"messages": 10},
    }
    assert harness.feed_all(frozen_at(600, 700)) == []  # neither update_every (5 min) nor a doubling
    (update,) = harness.feed_all(frozen_at(840))  # 5 min after the last record
    assert (update.id, update.version, update.state, update.count) == (alert.id, 2, AlertState.FIRING, 13)
    assert update.first_seen == START and update.last_seen == START + 840
    burst = frozen_at(*[850 + i for i in range(13)])  # to 26 = twice the last record's count
    assert harness.feed_all(burst[:12]) == []
    (doubled,) = harness.feed_all(burst[12:])
    assert (doubled.version, doubled.count) == (3, 26)
    assert len(fired(harness.alerts)) == 1


def test_an_alert_resolves_after_clear_after_with_the_next_version() -> None:
    harness = Harness()
    harness.feed_all(frozen_at(*range(0, 600, 60)))
    (update,) = harness.feed_all(frozen_at(3000))  # still 11 in the window: true at 3000
    assert update.version == 2 and update.count == 11
    assert harness.feed_all(frozen_at(4800)) == []  # false (2 in the window), but only for 30 min
    assert harness.feed_all(frozen_at(3000 + HOUR - 1)) == []
    (resolved,) = harness.feed_all(frozen_at(3000 + HOUR))  # false for clear_after (= the 1 h window)
    assert resolved.id == update.id and resolved.version == 3
    assert resolved.state is AlertState.RESOLVED and resolved.resolved_at == START + 3000 + HOUR
    assert resolved.last_seen == START + 3000
    assert not harness.state("frozen_messages").firing


def test_cooldown_suppresses_a_refire_and_a_later_alert_gets_a_new_id() -> None:
    harness = Harness()
    harness.feed_all(frozen_at(*range(0, 600, 60)))
    (resolved,) = harness.feed_all(frozen_at(2 * HOUR))
    assert resolved.state is AlertState.RESOLVED and resolved.resolved_at == START + 2 * HOUR
    cooldown_end = START + 5 * HOUR
    # a new storm right away: the condition is true again but the scope is cooling down
    storm = frozen([t for t in spread(40, START + 2 * HOUR + 60, 3 * HOUR) if t < cooldown_end])
    assert harness.feed_all(storm) == []
    assert measure(harness, "frozen_messages").firing
    (again,) = harness.feed_all(frozen([cooldown_end]))
    assert again.version == 1 and again.state is AlertState.FIRING
    assert again.id != resolved.id and again.first_seen > START + 2 * HOUR


def bounce_flap() -> Events:
    """A sender domain that bounces, recovers and bounces again, all within one hour window."""
    kinds = ["bounced"] * 40 + ["delivered"] * 100 + ["bounced"] * 200
    return [
        event(kind, START + i * 10, recipient=f"r{i}@example.org",
              response=USER_UNKNOWN if kind == "bounced" else "250 OK",
              reason="recipient_unknown" if kind == "bounced" else None)
        for i, kind in enumerate(kinds)
    ]


@pytest.mark.parametrize("roundtrip", [False, True])
def test_an_alert_that_fires_again_in_the_same_window_gets_a_new_id(roundtrip: bool) -> None:
    rules = build_rules({"sender_domain_bounce_ratio": {"cooldown": 0, "resolve_after": 60}})
    alerts = of_rule(Harness(rules, roundtrip=roundtrip).feed_all(bounce_flap()), "sender_domain_bounce_ratio")
    first, second = fired(alerts)
    (resolved,) = [alert for alert in alerts if alert.state is AlertState.RESOLVED]
    assert alerts.index(first) < alerts.index(resolved) < alerts.index(second)
    assert resolved.id == first.id
    # both alerts start at the first bounce of the window: only the fire count tells them apart
    assert first.first_seen == second.first_seen == START
    assert second.id != first.id
    assert all(alert.id == first.id for alert in alerts[: alerts.index(resolved) + 1])
    assert all(alert.id == second.id for alert in alerts[alerts.index(second):])
    # and the ids are still stable across replays
    replay = of_rule(Harness(rules).feed_all(bounce_flap()), "sender_domain_bounce_ratio")
    assert [alert.id for alert in replay] == [alert.id for alert in alerts]


def test_idle_resolves_a_quiet_firing_scope_after_clear_after_of_wall_time() -> None:
    harness = Harness()
    (alert,) = harness.feed_all(frozen_at(*range(0, 600, 60)))
    wall = START + 540  # the harness uses log time as wall time
    assert harness.idle(wall + HOUR - 1) == []
    (resolved,) = harness.idle(wall + HOUR)
    assert resolved.id == alert.id and resolved.version == 2 and resolved.state is AlertState.RESOLVED
    assert resolved.resolved_at == START + 540 + HOUR
    assert harness.idle(wall + 10 * HOUR) == []  # a resolved scope stays resolved


def test_idle_does_not_resolve_a_scope_whose_condition_is_still_true() -> None:
    rules = build_rules({"frozen_messages": {"resolve_after": "10m"}})
    harness = Harness(rules)
    assert len(harness.feed_all(frozen_at(*range(0, 600, 60)))) == 1
    updates = harness.idle(START + 540 + 10 * MINUTE)  # quiet for 10 min, but 10 frozen still in the hour
    assert all(a.state is AlertState.FIRING for a in updates)
    assert harness.state("frozen_messages").firing


def test_simulate_resolves_a_scope_that_went_quiet_while_others_keep_the_clock_going() -> None:
    events = frozen(spread(12, START, 30 * MINUTE))
    events += [event("delivered", t, server=OTHER_SERVER, response="250 OK") for t in spread(300, START, 4 * HOUR)]
    events.sort(key=lambda e: e["time"])
    alerts = of_rule(simulate(events, build_rules()), "frozen_messages")
    assert alerts[0].state is AlertState.FIRING
    resolved = alerts[-1]
    assert resolved.state is AlertState.RESOLVED
    last_frozen = START + 30 * MINUTE * 11 / 12
    # idle checks run every minute of (simulated) wall time
    assert resolved.resolved_at is not None
    assert last_frozen + HOUR <= resolved.resolved_at <= last_frozen + HOUR + 2 * MINUTE


# ---- restart safety ------------------------------------------------------------------------------


def busy_day() -> Events:
    """Several rules firing, updating, resolving and cooling down over ten hours."""
    events = frozen(spread(40, START, 2 * HOUR)) + frozen(spread(30, START + 6 * HOUR, HOUR))
    events += [event("deferred", t, recipient=f"g{i}@gmail.com", response=GMAIL_RATE_LIMIT, reason="rate_limited")
               for i, t in enumerate(spread(120, START + HOUR, 40 * MINUTE))]
    events += [event("delivered", t, recipient=f"d{i}@gmail.com", response="250 OK")
               for i, t in enumerate(spread(300, START, 10 * HOUR))]
    events += account_traffic(60, bounced=35, limit_hits=8)
    events += [dict(e, time=e["time"] + 4 * HOUR) for e in account_traffic(320)]
    return sorted(events, key=lambda e: (e["time"], e["event_id"]))


def records(alerts: list[Alert]) -> list[dict[str, Any]]:
    return [alert.to_dict() for alert in alerts]


def test_scope_state_through_bytes_at_every_step_evaluates_identically() -> None:
    events = busy_day()
    reference = Harness().feed_all(events)
    assert {a.state for a in reference} == {AlertState.FIRING, AlertState.RESOLVED}
    assert len({a.rule for a in fired(reference)}) >= 3
    assert records(Harness(roundtrip=True).feed_all(events)) == records(reference)


def test_a_restart_mid_alert_continues_identically() -> None:
    events = busy_day()
    uninterrupted = Harness()
    first_fire = next(i for i, item in enumerate(events) if fired(uninterrupted.feed(item)))
    uninterrupted.feed_all(events[first_fire + 1:])
    reference = uninterrupted.alerts
    split = first_fire + 25
    before = Harness()
    out = before.feed_all(events[:split])
    assert any(state.firing for state in before.states.values())
    saved = {key: state.to_bytes() for key, state in before.states.items()}

    after = Harness(build_rules())  # a new process: new evaluator, states from the table's bytes
    after.states = {key: ScopeState.from_bytes(raw) for key, raw in saved.items()}
    out += after.feed_all(events[split:])
    assert records(out) == records(reference)
    assert any(a.state is AlertState.RESOLVED for a in out[len(before.alerts):])


def test_signals_survive_their_wire_form() -> None:
    for item in busy_day()[:200]:
        for signal in signals_for(DEFAULT_RULES, item):
            assert Signal.from_wire(orjson.loads(orjson.dumps(signal.to_wire()))) == signal


def test_signals_of_a_rule_removed_from_the_configuration_are_ignored() -> None:
    signal = signals_for(DEFAULT_RULES, frozen_at(0)[0])[0]
    evaluator = RuleEvaluator({name: rule for name, rule in build_rules().items() if name != signal.rule})
    state, alerts = evaluator.apply(None, signal, START)
    assert alerts == [] and state.counts == {} and state.distinct == {}


# ---- hostile and malformed events ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"server": "a,provider=b"}, {"server": "a", "provider": "b"}),
        ({"server": "a", "sender_domain": "b,sender_domain=c"}, {"server": "a,sender_domain=b", "sender_domain": "c"}),
        ({"server": "a%2Cb"}, {"server": "a,b"}),
        ({"server": "a%3Db"}, {"server": "a=b"}),
        ({"server": "a%7Cb"}, {"server": "a|b"}),
        ({"server": "a%"}, {"server": "a%25"}),
    ],
)
def test_scope_keys_of_hostile_values_do_not_collide(first: dict[str, str], second: dict[str, str]) -> None:
    assert scope_key(first) != scope_key(second)
    assert signal_key("outbound_spam", first) != signal_key("outbound_spam", second)


def test_signal_keys_cannot_be_forged_through_the_rule_name() -> None:
    assert signal_key("a|server=x", {"user": "u"}) != signal_key("a", {"server": "x|user=u"})


def test_hostile_event_values_land_in_scopes_of_their_own() -> None:
    honest = event("bounced", START, sender="x@b,sender_domain=c")
    honest["sender_domain"] = "b,sender_domain=c"
    hostile = event("bounced", START, server="a,sender_domain=b", sender="x@c")
    honest["server"] = "a"
    rule = [build_rules()["sender_domain_bounce_ratio"]]
    (s1,), (s2,) = signals_for(rule, honest), signals_for(rule, hostile)
    assert s1.scope != s2.scope and s1.key != s2.key


SCOPES = st.dictionaries(st.sampled_from([str(kind) for kind in ScopeKind]), st.text(max_size=MAX_SCOPE_VALUE),
                         max_size=4)


@settings(max_examples=300, deadline=None)
@given(SCOPES, SCOPES)
def test_scope_keys_are_injective(first: dict[str, str], second: dict[str, str]) -> None:
    if list(first.items()) != list(second.items()):
        assert scope_key(first) != scope_key(second)


def test_very_long_values_give_bounded_keys_and_examples() -> None:
    huge = "x" * 200_000
    item = event("frozen", START, server=huge, sender=f"a@{huge}.example", recipient=f"b@{huge}.example",
                 remote=False)
    item["response"] = "y" * 1_000_000
    item["sender_domain"] = huge
    bound = len("sender_domain=") + 3 * MAX_SCOPE_VALUE
    assert len(scope_key({"server": huge, "remote_domain": huge})) <= 2 * bound
    signals = signals_for(DEFAULT_RULES, item)
    assert signals
    for signal in signals:
        assert len(signal.key) <= 64 + 3 * bound
        assert signal.example is not None
        assert all(len(value) <= 300 for value in signal.example.values() if isinstance(value, str))
    harness = Harness()
    for i in range(10):
        harness.feed(dict(item, msgid=f"m{i}", event_id=f"e{i}"))
    (alert,) = fired(harness.alerts, "frozen_messages")
    assert all(len(orjson.dumps(example)) < 4000 for example in alert.examples)


@pytest.mark.parametrize(
    "item",
    [
        {},
        {"time": None},
        {"time": "2025-03-10 10:00:00"},
        {"time": START},
        {"time": START, "type": "deferred"},
        {"time": START, "type": "deferred", "retry": None, "server": SERVER},
        {"time": START, "type": "deferred", "retry": {}, "server": SERVER, "recipient_domain": "example.org"},
        {"time": START, "type": "deferred", "retry": [], "server": SERVER},
        {"time": START, "type": "deferred", "retry": {"first_attempt": None}, "server": SERVER},
        {"time": START, "type": "bounced", "server": ""},
        {"time": START, "type": "frozen", "server": None},
        {"time": START, "type": "delivered", "server": SERVER, "sender": "", "cpanel_user": "shop"},
        {"time": START, "type": "no-such-type", "server": SERVER, "reason": "no-such-reason"},
        {"v": 99, "time": START, "type": "bounced", "server": SERVER, "surprise": {"nested": [1, 2]}},
    ],
)
def test_events_with_missing_or_empty_fields_never_raise(item: dict[str, Any]) -> None:
    signals = signals_for(DEFAULT_RULES, item)
    if not isinstance(item.get("time"), float):
        assert signals == []
    for signal in signals:
        assert all(isinstance(v, str) and v for v in signal.scope.values())
    harness = Harness(roundtrip=True)
    harness.feed(item)


TEXT = st.text(max_size=30)
OPTIONAL_TEXT = st.none() | TEXT
RESPONSES = st.none() | st.text(max_size=200) | st.sampled_from(
    [GMAIL_RATE_LIMIT, YAHOO_TSS04, MICROSOFT_S3150, SPAMHAUS, CPANEL_LIMIT, USER_UNKNOWN])
TIMES = st.floats(min_value=0, max_value=4e9, allow_nan=False) | st.integers(min_value=0, max_value=4_000_000_000)
EVENTS = st.fixed_dictionaries(
    {},
    optional={
        "v": st.integers(0, 3),
        "type": st.sampled_from([str(t) for t in EventType]) | TEXT,
        "time": TIMES,
        "server": TEXT,
        "msgid": OPTIONAL_TEXT,
        "recipient": OPTIONAL_TEXT,
        "recipient_domain": OPTIONAL_TEXT | st.sampled_from(["gmail.com", "yahoo.com", "hotmail.com"]),
        "sender": OPTIONAL_TEXT,
        "sender_domain": OPTIONAL_TEXT,
        "cpanel_user": OPTIONAL_TEXT,
        "auth_id": OPTIONAL_TEXT,
        "transport": OPTIONAL_TEXT | st.just("remote_smtp"),
        "remote_host": OPTIONAL_TEXT,
        "remote_ip": OPTIONAL_TEXT,
        "response": RESPONSES,
        "reason": st.none() | st.sampled_from([str(r) for r in Reason]) | TEXT,
        "retry": st.none() | st.fixed_dictionaries({}, optional={
            "attempt": st.integers(0, 100), "first_attempt": st.none() | TIMES, "last_attempt": st.none() | TIMES,
            "next_retry": st.none() | TIMES, "give_up": st.none() | TIMES}),
        "event_id": TEXT,
        "extra": st.dictionaries(TEXT, st.none() | TEXT | st.integers(), max_size=3),
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(EVENTS, max_size=8))
def test_random_events_of_the_wire_schema_never_raise(items: list[dict[str, Any]]) -> None:
    harness = Harness(roundtrip=True)
    for item in items:
        signals = signals_for(DEFAULT_RULES, item)
        for signal in signals:
            assert signal.time == float(item["time"])
            assert all(isinstance(v, str) and v for v in signal.scope.values())
        harness.feed(item)
    for state in harness.states.values():
        assert ScopeState.from_bytes(state.to_bytes()) == state


def test_scope_values_of_very_long_fields_are_bounded() -> None:
    huge = "x" * 100_000
    bounced = event("bounced", START, server=huge, sender=f"alice@{huge}", cpanel_user=huge, response=USER_UNKNOWN,
                    reason="recipient_unknown")
    bounced["sender_domain"] = huge
    deferred = persistent(1, age=5 * HOUR)[0] | {"server": huge, "recipient_domain": huge, "sender_domain": huge,
                                                  "cpanel_user": huge}
    signals = signals_for(build_rules().values(), bounced) + signals_for(build_rules().values(), deferred)
    assert {kind for signal in signals for kind in signal.scope} >= {"server", "sender_domain", "user",
                                                                      "remote_domain"}
    for signal in signals:
        for kind, value in signal.scope.items():
            assert len(value) <= MAX_SCOPE_VALUE, (signal.rule, kind)
            if kind != "provider":
                assert value == huge[:MAX_SCOPE_VALUE]
        assert Signal.from_wire(orjson.loads(orjson.dumps(signal.to_wire()))) == signal
    # the alerts those signals raise carry the bounded scope too
    harness = Harness()
    harness.feed_all(dict(bounced, msgid=f"m{i}", event_id=f"e{i}", time=START + i) for i in range(40))
    (alert,) = fired(harness.alerts, "sender_domain_bounce_ratio")
    assert alert.scope == {"server": huge[:MAX_SCOPE_VALUE], "sender_domain": huge[:MAX_SCOPE_VALUE]}


# Anything a JSON decoder can give (orjson reads integers beyond 64 bits as floats), plus NaN and infinities
JSON_SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
)
JSON_VALUES = JSON_SCALARS | st.recursive(  # scalars first: st.recursive alone draws mostly lists and objects
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=6,
)


def either(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A value of the right type half the time, so that the rules get past their first checks."""
    return plausible | JSON_VALUES


ANY_TYPED_EVENTS = st.fixed_dictionaries(
    {"time": either(TIMES)},
    optional={
        "type": either(st.sampled_from([str(t) for t in EventType])),
        "server": either(st.sampled_from([SERVER, OTHER_SERVER])),
        "msgid": either(TEXT),
        "recipient": either(st.just("bob@gmail.com")),
        "recipient_domain": either(st.sampled_from(["gmail.com", "yahoo.com", "example.org"])),
        "sender": either(st.just("alice@shop.example")),
        "sender_domain": either(st.just("shop.example")),
        "cpanel_user": either(st.just("shop")),
        "auth_id": either(st.just("alice@shop.example")),
        "transport": either(st.just("remote_smtp")),
        "remote_host": either(st.sampled_from(["gmail-smtp-in.l.google.com", "mx.example.org"])),
        "response": either(st.sampled_from([GMAIL_RATE_LIMIT, SPAMHAUS, CPANEL_LIMIT, USER_UNKNOWN])),
        "reason": either(st.sampled_from([str(r) for r in Reason])),
        "retry": JSON_VALUES | st.fixed_dictionaries({"first_attempt": either(TIMES)}),
    },
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_TYPED_EVENTS)
def test_events_with_fields_of_any_json_type_never_raise(item: dict[str, Any]) -> None:
    for signal in signals_for(build_rules().values(), item):
        assert all(isinstance(v, str) and 0 < len(v) <= MAX_SCOPE_VALUE for v in signal.scope.values())
        assert Signal.from_wire(orjson.loads(orjson.dumps(signal.to_wire()))) == signal
    Harness(roundtrip=True).feed(item)


def deferred_for_hours(**fields: Any) -> dict[str, Any]:
    return persistent(1, age=5 * HOUR)[0] | fields


def bounced_at_example_org(**fields: Any) -> dict[str, Any]:
    return event("bounced", START, response=USER_UNKNOWN, reason="recipient_unknown") | fields


@pytest.mark.parametrize(
    ("item", "field"),
    [
        pytest.param(deferred_for_hours(reason=["x"]), "reason", id="reason-list"),
        pytest.param(deferred_for_hours(retry="abc"), "retry", id="retry-text"),
        pytest.param(deferred_for_hours(retry={"first_attempt": "x"}), "retry", id="retry-first-attempt-text"),
        pytest.param(bounced_at_example_org(response=5), "response", id="response-number"),
        pytest.param(deferred_for_hours(recipient_domain=5), "recipient_domain", id="recipient-domain-number"),
        pytest.param(bounced_at_example_org(remote_host=5), "remote_host", id="remote-host-number"),
        pytest.param(bounced_at_example_org(sender_domain=5, cpanel_user="shop"), "sender_domain",
                     id="sender-domain-number"),
    ],
)
def test_a_field_of_the_wrong_type_is_treated_as_missing(item: dict[str, Any], field: str) -> None:
    rules = list(build_rules().values())
    signals = signals_for(rules, item)
    assert signals  # the rest of the event still counts
    assert signals == signals_for(rules, {name: value for name, value in item.items() if name != field})
