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
    ARRIVAL,
    DEFERRAL,
    DELIVERY,
    FAILURE,
    MSGID,
    PREFIX,
    epoch,
    line_problem,
    message_line,
    recipient_of,
    replay,
)
from trackdelivery.events import DeliveryEvent
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
    texts: Counter[str] = Counter()
    for lines in fleet.logs.values():
        for line in lines:
            found = message_line(line)
            if found is not None and found[1].startswith("** "):
                m = FAILURE.match(found[1])
                assert m is not None, line
                texts[m["text"].split(":")[0]] += 1
    assert texts["SMTP error from remote mail server after RCPT TO"] > 0
    assert texts["retry timeout exceeded"] > 0


# -- archiving and administrators ------------------------------------------------------------------------

ARCHIVE_COPY = re.compile(
    r"^=> (?P<local>\S+) <(?P<address>[^>\s]+@[^>\s]+)>(?: F=<[^>]*>)? R=(?P<router>archiver_\w+)"
    r" T=(?P<transport>archiver_\w+)$"
)


def _last_rows(fleet: Fleet) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(row["server"], row["msgid"], row["recipient"]): row for row in fleet.truth if row["msgid"] is not None}


def test_archiving_accounts_get_an_archive_copy_of_their_mail(fleet: Fleet) -> None:
    archiving = fleet.manifest["archiving"]
    accounts = sum(info["accounts"] for info in fleet.manifest["servers"])
    assert 0 < len(archiving) < 0.1 * accounts  # a few accounts
    incoming = {(a["server"], domain) for a in archiving if a["incoming"] for domain in a["domains"]}
    outgoing = {(a["server"], domain) for a in archiving if a["outgoing"] for domain in a["domains"]}
    copies: Counter[str] = Counter()
    for server, lines in fleet.logs.items():
        senders: dict[str, str] = {}
        delivered: dict[str, list[tuple[int, str, str]]] = defaultdict(list)  # msgid -> (line, time, address)
        outgoing_copies: list[tuple[int, str, str, str]] = []
        for number, line in enumerate(lines):
            found = message_line(line)
            if found is None:
                continue
            msgid, body = found
            if (arrival := ARRIVAL.match(body)) is not None:
                senders[msgid] = arrival["sender"]
                continue
            copy = ARCHIVE_COPY.match(body)
            if copy is None:
                if (m := DELIVERY.match(body) or FAILURE.match(body) or DEFERRAL.match(body)) is not None:
                    delivered[msgid].append((number, line[:19], recipient_of(m)[0]))
                continue
            address = copy["address"]
            domain = address.rpartition("@")[2]
            assert copy["local"] == address.partition("@")[0], line
            assert copy["router"] == copy["transport"], line
            if copy["router"] == "archiver_outgoing":
                assert (server, senders[msgid].rpartition("@")[2]) in outgoing, line
                assert (server, domain) not in incoming, line
                outgoing_copies.append((number, line[:19], msgid, address))
                copies["outgoing"] += 1
            else:
                assert copy["router"] == "archiver_incoming_domain_method", line
                assert (server, domain) in incoming, line
                # the copy of an unseen router is logged after the mailbox's own delivery, in the same run
                assert any(a == address and t == line[:19] for _, t, a in delivered[msgid]), line
                copies["incoming"] += 1
        for number, stamp, msgid, address in outgoing_copies:
            # local deliveries come first: the remote outcome of the address follows in the same run
            assert any(n > number and t == stamp and a == address for n, t, a in delivered[msgid]), (msgid, address)
    assert copies["incoming"] > 50 and copies["outgoing"] > 5, copies
    archived = [row for row in fleet.truth if row["final"] == "archived"]
    # the incoming copy is the recipient's last line, so its final state; an outgoing copy never is
    assert len(archived) == copies["incoming"]
    assert all(row["reason"] is None and row["attempts"] == 2 for row in archived)


def test_administrators_remove_a_few_messages_from_the_queue(fleet: Fleet) -> None:
    removed: dict[tuple[str, str], int] = {}
    for server, lines in fleet.logs.items():
        by_msgid: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for line in lines:
            found = message_line(line)
            if found is not None:
                by_msgid[found[0]].append((line[:19], found[1]))
        for msgid, entries in by_msgid.items():
            bodies = [body for _, body in entries]
            if "removed by root" not in bodies:
                continue
            at = bodies.index("removed by root")
            # Exim's -Mrm: "removed by <user>", then the message is Completed; nothing about it after that
            assert bodies[at + 1 :] == ["Completed"], (server, msgid, bodies[at:])
            assert entries[at][0] == entries[at + 1][0]
            removed[(server, msgid)] = at
            assert any(line.endswith(f" 3 args: /usr/sbin/exim -Mrm {msgid}") for line in lines)
    rows = _last_rows(fleet)
    message_rows = len(rows)
    cancelled = [row for row in rows.values() if row["final"] == "cancelled"]
    assert 0 < len(cancelled) < 0.005 * message_rows  # well under 1% of the messages' recipients
    assert all((row["server"], row["msgid"]) in removed for row in cancelled)
    assert all(row["reason"] is None for row in cancelled)
    # frozen spam (never tried) and messages deferred for days (tried many times) are both removed
    assert any(row["attempts"] == 0 for row in cancelled) and any(row["attempts"] > 3 for row in cancelled)
    for row in rows.values():
        if (row["server"], row["msgid"]) in removed:
            assert row["final"] not in ("deferred", "frozen", "in_progress"), row


def test_the_correlator_agrees_with_the_truth_on_archived_and_cancelled_recipients(fleet: Fleet) -> None:
    from processors.exim.correlator import Correlator
    from processors.exim.parser import parse_line

    rows = _last_rows(fleet)
    wanted = {(row["server"], row["msgid"]) for row in rows.values() if row["final"] in ("archived", "cancelled")}
    for server, lines in fleet.logs.items():
        wanted.update(
            (server, found[0])
            for line in lines
            if " R=archiver_outgoing " in line and (found := message_line(line)) is not None
        )
    checked: Counter[str] = Counter()
    mismatches = []
    for server, lines in fleet.logs.items():
        correlator = Correlator()
        events: list[DeliveryEvent] = []
        for line in lines:
            found = message_line(line)
            if found is not None and (server, found[0]) in wanted:
                events.extend(correlator.feed(server, parse_line(line.encode())))
        events.extend(correlator.flush())
        last: dict[tuple[str | None, str], DeliveryEvent] = {}
        attempts: dict[tuple[str | None, str], int] = defaultdict(int)
        for event in events:
            for address in {event.recipient, event.original_recipient} - {None}:
                key = (event.msgid, str(address).lower())
                attempts[key] = max(attempts[key], event.retry.attempt)
                if key not in last or event.time >= last[key].time:
                    last[key] = event
        for (row_server, msgid, recipient), row in rows.items():
            if row_server != server or (server, msgid) not in wanted:
                continue
            key = (msgid, recipient.lower())
            if key not in last and row["original_recipient"]:
                key = (msgid, row["original_recipient"].lower())
            found_event = last.get(key)
            got = (str(found_event.type), attempts[key]) if found_event is not None else (None, 0)
            want = (row["final"], row["attempts"] - (1 if row["final"] == "expired" else 0))
            if got != want:
                mismatches.append(f"{server} {msgid} {recipient}: want {want}, got {got}")
            checked[row["final"]] += 1
    assert checked["archived"] > 50 and checked["cancelled"] > 5 and checked["delivered"] > 5, checked
    assert not mismatches, f"{len(mismatches)} differ:\n" + "\n".join(mismatches[:20])


def test_follow_traffic_archives_and_removes_messages_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from trackdelivery.generator import runner

    run = FleetRun(GenerateConfig(servers=3, messages=600, days=1, out=tmp_path, seed=5))
    try:
        run.run(keep=True)
        truth_size = (tmp_path / "truth.jsonl").stat().st_size
        logs = {path: path.stat().st_size for path in sorted(tmp_path.glob("*/exim_mainlog"))}
        # a fast clock: the live traffic of a day and a half in a few seconds (rate 1 line/s of simulated time)
        clock = itertools.count(0, 5000)
        monkeypatch.setattr(runner, "time", types.SimpleNamespace(monotonic=lambda: float(next(clock))))
        horizon = run.config.end_epoch + 36 * 3600
        run.follow(1.0, lambda: min(sim.now for sim in run.sims) > horizon, sleep=lambda _: None)
    finally:
        run.close()
    with open(tmp_path / "truth.jsonl", "rb") as stream:
        stream.seek(truth_size)
        finals = Counter(json.loads(line)["final"] for line in stream.read().splitlines())
    appended = b"".join(path.read_bytes()[size:] for path, size in logs.items()).decode()
    assert finals["archived"] > 0 and finals["cancelled"] > 0, finals
    assert " R=archiver_incoming_domain_method " in appended and " removed by root\n" in appended
