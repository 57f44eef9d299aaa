"""Parser + correlator end to end: against the generator's ground truth, and over the real-log corpus.

Each test runs twice: on the Python modules (the library the stream processors use) and on the native
engine of ``trackdelivery parse`` (a real process; its events read back from its JSON lines).
"""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from processors.exim.correlator import Correlator
from processors.exim.parser import parse_line
from processors.exim.types import LineKind, ParsedLine
from tests.processors.exim.corpus import corpus_dir
from tests.processors.exim.test_native_engine import require_native
from trackdelivery.events import DeliveryEvent, EventType, Reason

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(params=["library", "native"])
def engine(request: pytest.FixtureRequest) -> str:
    if request.param == "native":
        require_native()
    return str(request.param)


def native_parse(output: str, *paths: Path, server: str | None = None) -> list[dict[str, object]]:
    command = [sys.executable, "-m", "trackdelivery", "parse", "--engine", "native", "--output", output]
    result = subprocess.run(
        [*command, *(["--server", server] if server else []), *map(str, paths)],
        capture_output=True,
        check=True,
        cwd=REPO,
    )
    return [orjson.loads(line) for line in result.stdout.splitlines()]


def events_of(engine: str, server: str, path: Path) -> list[DeliveryEvent]:
    if engine == "native":
        return [DeliveryEvent.from_dict(record) for record in native_parse("events", path, server=server)]
    return correlate(server, path.read_bytes().splitlines())[1]


OutcomeLine = tuple[str, int, LineKind, str | None, str | None, str]  # server, number, kind, msgid, address, raw


def corpus_through(engine: str, files: list[Path]) -> tuple[list[DeliveryEvent], list[OutcomeLine]]:
    """Every event and parsed line of the corpus files. The library reads each file as a server of its own;
    the native engine reads them all in one run, each under the server name the command gives it."""
    if engine == "native":
        events = [DeliveryEvent.from_dict(record) for record in native_parse("events", *files)]
        lines = [
            (str(r["server"]), int(r["line"]), LineKind(r["kind"]), r["msgid"], r.get("address"), r.get("raw", ""))  # type: ignore[arg-type,call-overload]
            for r in native_parse("lines", *files)
        ]
        return events, lines
    events, lines = [], []
    for path in files:
        server = path.relative_to(corpus_dir()).as_posix()
        parsed_lines, file_events = correlate(server, path.read_bytes().split(b"\n"))
        events += file_events
        lines += [(server, n, p.kind, p.msgid, p.address, p.raw) for n, p in enumerate(parsed_lines, 1)]
    return events, lines


def correlate(server: str, raw_lines: list[bytes]) -> tuple[list[ParsedLine], list[DeliveryEvent]]:
    correlator = Correlator()
    parsed_lines = []
    events: list[DeliveryEvent] = []
    for raw in raw_lines:
        parsed = parse_line(raw)
        parsed_lines.append(parsed)
        events.extend(correlator.feed(server, parsed))
    events.extend(correlator.flush())
    return parsed_lines, events


# -- the generator's ground truth ----------------------------------------------------------------------


@pytest.mark.slow
def test_final_state_of_every_recipient_matches_the_truth(tmp_path: Path, engine: str) -> None:
    from click.testing import CliRunner

    from trackdelivery.generator.cli import generate
    from trackdelivery.generator.truth import load_truth

    result = CliRunner().invoke(
        generate, ["--servers", "5", "--messages", "2000", "--out", str(tmp_path), "--seed", "42"]
    )
    assert result.exit_code == 0, result.output
    truth = load_truth(str(tmp_path / "truth.jsonl"))
    # every final state of the product is in the comparison (archived: cPanel archiving's copies; cancelled:
    # messages an administrator removed from the queue) but in_progress: this run's last half hour is quiet
    assert {row["final"] for row in truth.values()} >= {str(t) for t in EventType} - {"in_progress"}

    # (server, msgid, address, time for rejections) -> the last event about it, and the reason of the last
    # one that was not a "retry time not reached" wait (the truth keeps the reason of the last real attempt);
    # an address matches as recipient or as original recipient
    last: dict[tuple[str, str | None, str, int | None], DeliveryEvent] = {}
    last_reason: dict[tuple[str, str | None, str, int | None], str | None] = {}
    attempts: dict[tuple[str, str | None, str, int | None], int] = defaultdict(int)
    for log in sorted(tmp_path.glob("*/exim_mainlog")):
        server = log.parent.name
        for event in events_of(engine, server, log):
            key_time = round(event.time) if event.msgid is None else None
            for address in {event.recipient, event.original_recipient} - {None}:
                key = (server, event.msgid, str(address).lower(), key_time)
                attempts[key] = max(attempts[key], event.retry.attempt)
                previous = last.get(key)
                if previous is None or event.time >= previous.time:
                    last[key] = event
                    if event.reason is not Reason.RETRY_WAIT:
                        last_reason[key] = str(event.reason) if event.reason else None

    mismatches = []
    field_mismatches = []
    for (server, msgid, recipient, key_time), row in truth.items():
        time_key = round(key_time) if key_time is not None else None
        key = (server, msgid, recipient.lower(), time_key)
        if key not in last and row["original_recipient"]:
            # not routed yet (e.g. frozen before routing): the log only knows the address it was sent to
            key = (server, msgid, row["original_recipient"].lower(), time_key)
        found = last.get(key)
        got_type = str(found.type) if found else None
        got_reason = last_reason.get(key)
        if got_type != row["final"] or (row["reason"] and got_reason != row["reason"]):
            mismatches.append(
                f"{server} {msgid} {recipient}: want {row['final']}/{row['reason']}, got {got_type}/{got_reason}"
            )
        if found is not None:
            got = {
                "sender": found.sender,
                "cpanel_user": found.cpanel_user,
                "bounce_msgid": found.bounce_msgid,
                "parent_msgid": found.parent_msgid,
                "attempts": attempts[key],
            }
            if found.recipient and found.recipient.lower() == recipient.lower():
                got["original_recipient"] = found.original_recipient
            want = {name: row[name] for name in got}
            if row["final"] == "expired" and want["attempts"]:
                # the truth counts the final "retry timeout exceeded" as an attempt; it is not a delivery
                # attempt (Exim gives up without connecting), so the correlator does not count it
                want["attempts"] -= 1
            if got["cpanel_user"] is None:
                # the log names the cPanel user only for local submissions and identified senders
                want["cpanel_user"] = None
            if got != want:
                field_mismatches.append(f"{server} {msgid} {recipient} {row['final']}: want {want}, got {got}")
    assert not mismatches, f"{len(mismatches)} of {len(truth)} differ:\n" + "\n".join(mismatches[:40])
    assert not field_mismatches, f"{len(field_mismatches)} of {len(truth)} differ:\n" + "\n".join(field_mismatches[:20])


# -- the real-log corpus -------------------------------------------------------------------------------


EXPECTED_TYPES = {
    LineKind.DELIVERY: {EventType.DELIVERED, EventType.FILTERED, EventType.ARCHIVED},
    LineKind.DELIVERY_MORE: {EventType.DELIVERED, EventType.FILTERED, EventType.ARCHIVED},
    LineKind.FAILURE: {EventType.BOUNCED, EventType.EXPIRED},
    LineKind.DEFERRAL: {EventType.DEFERRED},
}


def test_every_outcome_line_of_the_corpus_becomes_an_event(engine: str) -> None:
    corpus = corpus_dir()
    files = sorted(path for path in corpus.rglob("*") if path.is_file() and path.suffix != ".md")
    assert files
    events, lines = corpus_through(engine, files)
    found: dict[tuple[str, str | None, str], set[EventType]] = defaultdict(set)
    by_msgid: dict[tuple[str, str | None], set[EventType]] = defaultdict(set)
    for event in events:
        by_msgid[(event.server, event.msgid)].add(event.type)
        for address in (event.recipient, event.original_recipient, event.delivered_to):
            if address:
                found[(event.server, event.msgid, address.lower())].add(event.type)
    missing = []
    outcome_lines = 0
    for server, number, kind, msgid, address, raw in lines:
        expected = EXPECTED_TYPES.get(kind)
        if expected is None or not msgid:
            continue
        outcome_lines += 1
        got = found[(server, msgid, address.lower())] if address else by_msgid[(server, msgid)]
        if not got & expected:
            missing.append(f"{server}:{number}: {kind} {address!r} -> {sorted(got)}: {raw}")
    assert outcome_lines > 1000
    assert not missing, f"{len(missing)} outcome lines without their event:\n" + "\n".join(missing[:30])
