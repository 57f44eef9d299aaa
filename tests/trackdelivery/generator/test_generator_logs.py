"""The generated fleet logs against Exim's line formats, the retry rules and the truth file."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.trackdelivery.generator._grammar import (
    DEFERRAL,
    FAILURE,
    MSGID,
    PREFIX,
    epoch,
    line_problem,
    message_line,
    replay,
)
from trackdelivery.generator import FleetRun, GenerateConfig
from trackdelivery.generator.ids import id_epoch


class Fleet:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
        self.logs = {
            info["name"]: (out / info["name"] / "exim_mainlog").read_text(encoding="utf-8").splitlines()
            for info in self.manifest["servers"]
        }
        self.truth = [json.loads(line) for line in (out / "truth.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    out = tmp_path_factory.mktemp("fleet")
    run = FleetRun(GenerateConfig(servers=8, messages=20_000, out=out, seed=3))
    try:
        run.run()
    finally:
        run.close()
    return Fleet(out)


def test_every_line_has_an_exim_shape(fleet: Fleet) -> None:
    problems = [
        f"{server}: {problem}: {line}"
        for server, lines in fleet.logs.items()
        for line in lines
        if (problem := line_problem(line)) is not None
    ]
    assert sum(len(lines) for lines in fleet.logs.values()) == fleet.manifest["lines"]
    assert not problems, f"{len(problems)} bad lines:\n" + "\n".join(problems[:20])


def test_time_never_goes_backwards_within_a_log(fleet: Fleet) -> None:
    for lines in fleet.logs.values():
        stamps = [line[:19] for line in lines]
        assert stamps == sorted(stamps)


def test_server_options_show_in_their_logs(fleet: Fleet) -> None:
    formats = set()
    for info in fleet.manifest["servers"]:
        lines = fleet.logs[info["name"]]
        prefixes = [PREFIX.match(line) for line in lines]
        assert all(p is not None and (p["pid"] is not None) == info["log_pid"] for p in prefixes)
        assert all(p is not None and (p["tz"] == " +0000") == info["log_timezone"] for p in prefixes)
        ids = {found[0] for line in lines if (found := message_line(line)) is not None}
        assert {len(i) for i in ids} == {info["id_format"]}
        formats.add(info["id_format"])
        routed_failures = [line for line in lines if " ** " in line and " R=" in line]
        assert routed_failures
        for line in routed_failures:
            # Exim 4.99 separates the error text with " : ", older versions with ": "
            assert (" : " in line) == (info["exim_version"] == "4.99"), line
    assert formats == {16, 23}


def test_message_ids_are_unique_and_carry_the_arrival_time(fleet: Fleet) -> None:
    for lines in fleet.logs.values():
        seen = set()
        for line in lines:
            prefix = PREFIX.match(line)
            assert prefix is not None
            m = MSGID.match(prefix["rest"])
            if m is None or not m["body"].startswith("<= "):
                continue
            assert m["id"] not in seen
            seen.add(m["id"])
            assert id_epoch(m["id"]) == epoch(prefix["date"], prefix["time"])


def test_kinds_and_final_states_have_sane_proportions(fleet: Fleet) -> None:
    kinds = fleet.manifest["line_kinds"]
    finals = Counter(row["final"] for row in fleet.truth)
    assert dict(finals) == fleet.manifest["final_states"]
    message_rows = sum(n for state, n in finals.items() if state != "rejected")
    assert finals["delivered"] > 0.85 * message_rows
    for state in ("deferred", "bounced", "expired", "rejected", "frozen", "in_progress", "filtered"):
        assert finals[state] > 0, state
    assert finals["bounced"] < 0.08 * message_rows
    assert kinds["delivery"] + kinds["delivery_more"] > 3 * kinds["deferral"]
    assert kinds["arrival"] >= 20_000  # every accepted message plus the bounces
    for kind in (
        "host_error",
        "spam_score",
        "sender_identification",
        "connection_outbound",
        "arguments",
        "queue_run",
        "completed",
        "connection",
        "rejection",
    ):
        assert kinds[kind] > 0, kind


def test_truth_agrees_with_a_replay_of_the_logs(fleet: Fleet) -> None:
    rows_by_server: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in fleet.truth:
        rows_by_server[row["server"]].append(row)
    for server, lines in fleet.logs.items():
        states, rejections = replay(lines)
        rows = rows_by_server[server]
        assert rejections == sum(1 for row in rows if row["msgid"] is None)
        keyed = {(row["msgid"], row["recipient"]): row for row in rows if row["msgid"] is not None}
        assert set(keyed) == set(states)
        wrong = [
            f"{key}: truth {row['final']}/{row['attempts']} log {states[key].final}/{states[key].attempts}"
            for key, row in keyed.items()
            if (row["final"], row["attempts"]) != (states[key].final, states[key].attempts)
        ]
        assert not wrong, "\n".join(wrong[:20])


def test_every_truth_row_is_in_its_servers_log(fleet: Fleet) -> None:
    address = re.compile(r"[^\s<>()]+@[A-Za-z0-9.-]+")
    for server, lines in fleet.logs.items():
        mentioned: dict[str | None, set[str]] = defaultdict(set)
        arrived: set[str] = set()
        bounces: set[tuple[str, str]] = set()
        for line in lines:
            found = message_line(line)
            msgid, body = found if found is not None else (None, line)
            mentioned[msgid].update(address.findall(body))
            if msgid is not None and body.startswith("<= "):
                arrived.add(msgid)
                if body.startswith("<= <> R="):
                    bounces.add((msgid, body.split()[2][2:]))
        for row in (row for row in fleet.truth if row["server"] == server):
            assert row["recipient"] in mentioned[row["msgid"]], row
            if row["msgid"] is not None:
                assert row["msgid"] in arrived
            if row["bounce_msgid"]:
                assert (row["bounce_msgid"], row["msgid"]) in bounces


def test_bounces_link_both_ways(fleet: Fleet) -> None:
    parents = {(row["server"], row["bounce_msgid"]) for row in fleet.truth if row["bounce_msgid"]}
    children = {(row["server"], row["msgid"]): row["parent_msgid"] for row in fleet.truth if row["parent_msgid"]}
    assert parents
    assert parents <= set(children)
    reasons = Counter(row["reason"] for row in fleet.truth if row["final"] == "bounced")
    assert {"recipient_unknown", "auth_failure", "ip_reputation"} <= set(reasons)


def _expected_gap(elapsed: int, previous: int) -> int:
    # Exim default retry rule: F,2h,15m; G,16h,1h,1.5; F,4d,6h
    if elapsed < 2 * 3600:
        return 15 * 60
    if elapsed < 16 * 3600:
        return max(3600, previous * 3 // 2)
    return 6 * 3600


def test_deferred_recipients_retry_on_the_default_schedule(fleet: Fleet) -> None:
    checked = expired = 0
    for lines in fleet.logs.values():
        states, _ = replay(lines)
        for key, state in states.items():
            attempts = [t for t, what in state.times if what == "attempt"]
            if len(attempts) < 2:
                continue
            first = attempts[0]
            previous_gap = 0
            for before, after in itertools.pairwise(attempts):
                expected = _expected_gap(before - first, previous_gap)
                assert expected <= after - before <= expected + 300, (key, before - first, after - before, expected)
                previous_gap = expected
                checked += 1
            if state.final == "expired":
                expired += 1
                assert attempts[-1] - first >= 4 * 86400
                assert attempts[-2] - first < 4 * 86400
    assert checked > 100
    assert expired > 0


def test_retry_waits_sit_between_real_attempts(fleet: Fleet) -> None:
    waits = 0
    for lines in fleet.logs.values():
        for line in lines:
            found = message_line(line)
            m = DEFERRAL.match(found[1]) if found is not None else None
            if m is not None and m["errno"] == "-54":
                waits += 1
                assert m["text"].startswith("retry time not reached for any host for '")
    assert waits > 0


def test_scenarios_for_alerting_are_in_the_logs(fleet: Fleet) -> None:
    (compromised,) = fleet.manifest["compromised"]
    sent = [
        line
        for line in fleet.logs[compromised["server"]]
        if f"A=dovecot_login:{compromised['address']} " in line or f"A=dovecot_plain:{compromised['address']} " in line
    ]
    assert len(sent) >= compromised["messages"]
    limit_lines = [line for line in fleet.logs[compromised["server"]] if "has exceeded the max emails per hour" in line]
    assert limit_lines
    throttle = next(i for i in fleet.manifest["incidents"] if i["response"] == "gmail_rate_limited")
    server = next(s["name"] for s in fleet.manifest["servers"] if s["name"].startswith(throttle["server"]))
    throttled = [line for line in fleet.logs[server] if "defer (-46)" in line and "421-4.7.28" in line]
    assert len(throttled) >= 5
    assert all(throttle["start"][:10] <= line[:10] <= throttle["end"][:10] for line in throttled)


def test_hostile_and_non_ascii_subjects_are_escaped(fleet: Fleet) -> None:
    text = "\n".join(line for lines in fleet.logs.values() for line in lines if " <= " in line)
    assert 'T="<script>alert(1)</script>"' in text
    assert re.search(r'T="[^"]*\\"', text)  # an escaped quote
    assert re.search(r'T="[^"]*\\3\d\d\\2\d\d', text)  # UTF-8 as octal bytes


def test_failure_lines_carry_a_reason_text(fleet: Fleet) -> None:
    texts = Counter()
    for lines in fleet.logs.values():
        for line in lines:
            found = message_line(line)
            if found is not None and found[1].startswith("** "):
                m = FAILURE.match(found[1])
                assert m is not None, line
                texts[m["text"].split(":")[0]] += 1
    assert texts["SMTP error from remote mail server after RCPT TO"] > 0
    assert texts["retry timeout exceeded"] > 0
