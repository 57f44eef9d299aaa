"""The default rules on generated fleets: silent on normal traffic, and on injected incidents exactly
the expected alerts on exactly the incident servers.

The logs go through the same parser, correlator and event window as ``trackdelivery parse --output
events``, so the rules see the events the live pipeline publishes.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from processors.alerts.rules import build_rules
from processors.alerts.simulate import simulate
from processors.alerts.types import Alert, AlertState
from processors.exim.cli import (
    RELEASE_EVERY,
    WINDOW_CHECK_EVERY,
    WINDOW_LINES,
    EventWindow,
    encode_event,
    server_name_for,
)
from processors.exim.correlator import Correlator
from processors.exim.parser import parse_line
from processors.exim.retry import DEFAULT_RETRY_RULES
from trackdelivery.events import DeliveryEvent
from trackdelivery.generator.runner import FleetRun, GenerateConfig

pytestmark = pytest.mark.slow

SERVERS = 10
MESSAGES = 10_000


def generate(out: Path, seed: int, incidents: tuple[str, ...]) -> dict[str, Any]:
    run = FleetRun(GenerateConfig(servers=SERVERS, messages=MESSAGES, days=1, out=out, seed=seed, incidents=incidents))
    try:
        return run.run()
    finally:
        run.close()


def log_events(path: Path) -> list[dict[str, Any]]:
    """One server's log to events, the way ``trackdelivery parse --output events`` does it."""
    server = server_name_for(str(path))
    correlator = Correlator(retry_rules=DEFAULT_RETRY_RULES, emit_in_progress=False)
    written: list[DeliveryEvent] = []
    window = EventWindow(written.append)
    number = 0
    last_time = 0.0
    with path.open("rb") as stream:
        for number, raw in enumerate(stream, 1):
            line = parse_line(raw[:-1] if raw.endswith(b"\n") else raw)
            if line.time is not None:
                last_time = line.time
            for item in correlator.feed(server, line):
                window.add(number, item)
            if number % WINDOW_CHECK_EVERY == 0:
                window.drain(number - WINDOW_LINES)
            if number % RELEASE_EVERY == 0:
                correlator.release(last_time)
    for item in correlator.flush():
        window.add(number, item)
    window.drain(number)
    return [orjson.loads(encode_event(item)) for item in written]


def fleet_events(out: Path) -> list[dict[str, Any]]:
    logs = sorted(out.glob("*/exim_mainlog"))
    assert len(logs) == SERVERS
    events = [item for path in logs for item in log_events(path)]
    events.sort(key=lambda item: item["time"])
    return events


def describe(alerts: list[Alert]) -> list[str]:
    return [f"{a.rule} {a.scope} v{a.version} {a.state}: {a.summary}" for a in alerts]


@pytest.mark.parametrize("seed", [1, 2])
def test_no_alert_fires_on_default_traffic(tmp_path: Path, seed: int) -> None:
    manifest = generate(tmp_path, seed, ())
    assert manifest["incidents"] == [] and manifest["compromised"] == [] and manifest["frozen_queue"] == []
    events = fleet_events(tmp_path)
    types = Counter(item["type"] for item in events)
    # real traffic with the usual trouble in it, not an empty or trivial log
    assert len(events) > MESSAGES
    assert types["deferred"] > 100 and types["bounced"] > 100 and types["frozen"] > 0
    assert len({item["server"] for item in events}) == SERVERS
    alerts = simulate(events, build_rules())
    assert alerts == [], describe(alerts)


@pytest.fixture(scope="module")
def incident_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[Alert]]:
    out = tmp_path_factory.mktemp("incidents")
    manifest = generate(out, 7, ("gmail_storm", "compromised", "frozen_queue"))
    return manifest, simulate(fleet_events(out), build_rules())


def iso(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def test_incidents_raise_their_alerts_on_their_servers(incident_run: tuple[dict[str, Any], list[Alert]]) -> None:
    manifest, alerts = incident_run
    (storm,) = [incident for incident in manifest["incidents"] if incident["provider"] == "gmail"]
    (compromised,) = manifest["compromised"]
    (frozen,) = manifest["frozen_queue"]
    fired = [alert for alert in alerts if alert.version == 1]

    def one(rule: str, scope: dict[str, str]) -> Alert:
        matching = [alert for alert in fired if alert.rule == rule and alert.scope == scope]
        assert len(matching) == 1, (rule, scope, describe(fired))
        return matching[0]

    throttled = one("provider_throttling", {"server": storm["server"], "provider": "gmail"})
    assert iso(storm["start"]) - 900 <= throttled.first_seen <= throttled.last_seen <= iso(storm["end"])
    assert "gmail_rate_limit" in throttled.details["signatures"]

    spam = one("outbound_spam", {"server": compromised["server"], "user": compromised["address"]})
    assert iso(compromised["start"]) <= spam.first_seen <= iso(compromised["start"]) + 4500

    queue = one("frozen_messages", {"server": frozen["server"]})
    assert iso(frozen["start"]) <= queue.first_seen <= queue.last_seen <= iso(frozen["end"])

    expected = {("provider_throttling", storm["server"]), ("outbound_spam", compromised["server"]),
                ("frozen_messages", frozen["server"])}
    allowed = expected | {("server_failure_ratio", storm["server"]),
                          ("sender_domain_bounce_ratio", compromised["server"])}
    seen = {(alert.rule, alert.scope["server"]) for alert in fired}
    assert expected <= seen <= allowed, describe(fired)


def test_incident_alerts_fire_once_and_resolve(incident_run: tuple[dict[str, Any], list[Alert]]) -> None:
    _, alerts = incident_run
    by_id: dict[str, list[Alert]] = {}
    for alert in alerts:
        by_id.setdefault(alert.id, []).append(alert)
    for history in by_id.values():
        assert [alert.version for alert in history] == list(range(1, len(history) + 1))
        assert [alert.state for alert in history[:-1]] == [AlertState.FIRING] * (len(history) - 1)
        # the incidents end hours before the day does: every alert resolved
        assert history[-1].state is AlertState.RESOLVED, describe(history)
        assert history[-1].resolved_at is not None and history[-1].resolved_at >= history[-1].last_seen
