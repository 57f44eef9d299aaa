"""The shared records → lines → events step, without Kafka: dedupe, crash replays, dead letters, expiry."""

from __future__ import annotations

import datetime
import random
from pathlib import Path

import orjson
import pytest

from processors.exim.correlator import Correlator
from processors.exim.parser import parse_lines
from processors.exim.types import LineKind
from processors.pipeline import MAX_CLOCK_LEAD, NEVER, Pipeline, decode_header
from tests.processors._support import (
    file_lines,
    file_records,
    final_events,
    fleet_records,
    generate_fleet,
    offline_pipeline,
    run_offline,
)
from trackdelivery.events import EventType
from trackdelivery.records import encode_batch
from trackdelivery.store.types import MessageLine


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return generate_fleet(tmp_path_factory.mktemp("fleet"), servers=3, messages=150)


def reference_events(files: list[Path]) -> dict[str, dict]:
    """Plain parse + correlate over each file, no dedupe, no expiry: the offline truth."""
    correlator = Correlator()
    events = []
    for path in files:
        server = path.parent.name
        for parsed in parse_lines(data for _, data in file_lines(path)):
            events.extend(correlator.feed(server, parsed))
    return final_events(events)


def all_events(results) -> dict[str, dict]:
    return final_events(event for result in results for event in result.events)


def test_records_give_the_same_events_as_plain_parse_and_correlate(fleet: list[Path]) -> None:
    results = list(run_offline(record for _, record in fleet_records(fleet)))

    assert all_events(results) == reference_events(fleet)
    assert sum(result.lines_in for result in results) == sum(len(file_lines(path)) for path in fleet)
    assert sum(result.duplicates for result in results) == 0
    kinds = {event["type"] for event in all_events(results).values()}
    assert {EventType.DELIVERED, EventType.DEFERRED, EventType.REJECTED} <= kinds


def test_message_lines_carry_every_line_with_a_message_id(fleet: list[Path]) -> None:
    path = fleet[0]
    results = list(run_offline(file_records(path, "srv"), offline_pipeline(message_line=MessageLine)))
    lines = [line for result in results for line in result.lines]

    read = file_lines(path)
    parsed_lines = parse_lines(data for _, data in read)
    expected = [(offset, parsed.raw) for (offset, _), parsed in zip(read, parsed_lines, strict=True) if parsed.msgid]
    assert [(line.offset, line.text) for line in lines] == expected  # where each was read: the view's order
    assert all(line.server == "srv" and line.msgid for line in lines) and len({line.file for line in lines}) == 1


def test_duplicate_and_overlapping_records_are_dropped_by_offset(fleet: list[Path]) -> None:
    path = fleet[0]
    clean = file_records(path, "srv", lines_per_record=5)
    resent = file_records(path, "srv", lines_per_record=7)  # overlaps the clean batches at other cut points
    stream = []
    for index, record in enumerate(clean):
        stream.append(record)
        if index % 3 == 0:
            stream.append(record)  # the shipper re-sent it after a crash
        if index % 4 == 1:
            stream.extend(resent[: index // 2])  # an old checkpoint replayed

    clean_results = list(run_offline(clean))
    noisy_results = list(run_offline(stream))

    assert all_events(noisy_results) == all_events(clean_results)
    total_lines = len(file_lines(path))
    assert sum(r.lines_in for r in noisy_results) - sum(r.duplicates for r in noisy_results) == total_lines
    assert sum(r.duplicates for r in noisy_results) > 0
    assert [line for r in noisy_results for line in r.lines] == [line for r in clean_results for line in r.lines]


def test_a_crash_before_or_during_the_commit_ends_in_the_clean_state(fleet: list[Path]) -> None:
    records = [record for _, record in fleet_records(fleet, lines_per_record=6)]
    clean = all_events(run_offline(records))
    rng = random.Random(3)
    pipeline = offline_pipeline()
    written = []  # what reached Redis, in order, replays included
    index = 0
    crashes = 0
    while index < len(records):
        result = pipeline.process(records[index])
        roll = rng.random()
        if roll < 0.15:  # crash before the outputs were written: nothing written, state not committed
            pipeline.discard()
            crashes += 1
            continue
        written.extend(result.events)
        writes = pipeline.commit(result.partition)
        if roll < 0.3:  # crash while the changelog was being written: only a prefix landed
            pipeline.apply(writes[: rng.randrange(len(writes) + 1)])
            crashes += 1
            continue
        pipeline.apply(writes)
        index += 1

    assert crashes > 10
    assert final_events(written) == clean


def test_hostile_input_is_dead_lettered_with_a_reason_and_counted() -> None:
    garbage_lines = [
        b"\xff\xfe not utf-8 \x00\x01",
        b"2025-03-10 00:00:01 " + b"A" * 100_000,
        b"",
        b"2025-13-45 99:99:99 1trQoR-0003Fg-NR <= <> R=",
        "2025-03-10 00:00:02 ‮ unicode control ‭".encode(),
        b'2025-03-10 00:00:03 1trQoR-0003Fg-NR ** "unterminated',
    ]
    rng = random.Random(11)
    garbage_lines += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) for _ in range(200)]
    offsets, position = [], 0
    for line in garbage_lines:
        offsets.append(position)
        position += len(line) + 1
    records = [
        encode_batch("srv", "f1", "/var/log/exim_mainlog", offsets, garbage_lines, position),
        b"not json at all",
        orjson.dumps({"v": 1, "server": "srv", "file": "f2", "offsets": ["x"], "lines": ["a"], "end": 2}),
        orjson.dumps({"v": 1, "server": "srv", "file": "f3", "offsets": [0], "lines": [{"hex": "00"}], "end": 2}),
        b"",
    ]
    results = list(run_offline(records))

    unparsed = [entry for result in results for entry in result.unparsed]
    assert sum(result.undecodable for result in results) == 4
    assert all(entry["reason"] for entry in unparsed)
    assert all(len(entry["line"]) <= 8192 and len(entry["reason"]) <= 512 for entry in unparsed)
    from_lines = [entry for entry in unparsed if entry["file"] == "f1"]
    assert len(from_lines) >= len(garbage_lines) // 2
    assert {entry["offset"] for entry in from_lines} <= set(offsets)
    orjson.dumps(unparsed)  # every dead letter is serialisable


def test_continuation_lines_follow_their_message_across_records() -> None:
    lines = [
        b"2025-03-10 10:00:00 1trQoR-0003Fg-NR <= a@example.com H=mx [192.0.2.1] P=esmtp S=100 for b@example.org",
        b"2025-03-10 10:00:01 1trQoR-0003Fg-NR ** b@example.org R=dnslookup T=remote_smtp: SMTP error from remote"
        b" mail server after RCPT TO:<b@example.org>: 550-5.1.1 The email account",
        b"  that you tried to reach does not exist",
        b"2025-03-10 10:00:02 1trQoR-0003Fg-NR Completed",
    ]
    offsets = [0, 200, 400, 500]
    split = [
        encode_batch("srv", "f", "p", offsets[:2], lines[:2], 300),
        encode_batch("srv", "f", "p", offsets[2:], lines[2:], 600),
    ]
    results = list(run_offline(split))
    kinds = [LineKind(parsed.kind) for parsed in parse_lines(lines)]
    if LineKind.CONTINUATION not in kinds:
        pytest.fail(f"the parser no longer reports continuation lines: {kinds}")
    msgids = [msgid for result in results for _, msgid, _, _ in result.lines]
    assert msgids == ["1trQoR-0003Fg-NR"] * 4


def test_state_expires_on_the_servers_log_clock_and_the_sweep_only_drops_what_reads_ignore() -> None:
    def record(offset: int, text: str) -> bytes:
        return encode_batch("srv", "f", "p", [offset], [text.encode()], offset + len(text) + 1)

    pipeline = offline_pipeline(grace_seconds=600, stale_seconds=3600)
    list(run_offline([
        record(0, "2025-03-10 10:00:00 1trQoR-0003Fg-NR <= a@example.com H=mx [192.0.2.1] P=esmtp S=1 for b@x.org"),
        record(100, "2025-03-10 10:00:01 1trQoR-0003Fg-NR => b@x.org R=r T=t H=mx.x.org [192.0.2.2] C=\"250 ok\""),
        record(200, "2025-03-10 10:00:02 1trQoR-0003Fg-NR Completed"),
        record(300, "2025-03-10 10:00:03 1trQoS-0003Fg-NR <= c@example.com H=mx [192.0.2.1] P=esmtp S=1 for d@x.org"),
    ], pipeline))
    state_keys = [key for key in pipeline.backing if "#" not in key]
    assert len(state_keys) == 2
    assert pipeline.expired_keys(pipeline.backing.items()) == []

    # 20 minutes later on this server's clock: the finished message is past its grace period
    list(run_offline([record(400, "2025-03-10 10:20:00 Start queue run: pid=1")], pipeline))
    expired = pipeline.expired_keys(pipeline.backing.items())
    assert len(expired) == 1 and "1trQoR" in expired[0]
    assert decode_header(pipeline.backing[expired[0]])[1] < NEVER
    # a read at this clock already treats it as absent, so sweeping changes no output
    pipeline.store.now = pipeline.clock("srv")
    assert pipeline.store.get(expired[0]) is None
    pipeline.discard()

    # two hours later the unfinished one is stale too
    list(run_offline([record(500, "2025-03-10 12:00:00 Start queue run: pid=2")], pipeline))
    assert len(pipeline.expired_keys(pipeline.backing.items())) == 2


def test_a_line_dated_far_ahead_of_its_shipping_does_not_make_the_servers_state_stale() -> None:
    """Found by bench/badinput.py: one corrupt line dated 9026 moved the server's clock 7000 years ahead,
    and every later message's state was dropped as stale at once (its retry state and bounce links lost)."""
    def record(offset: int, text: str) -> bytes:
        return encode_batch("srv", "f", "p", [offset], [text.encode()], offset + len(text) + 1)

    shipped_at = datetime.datetime(2025, 3, 10, 10, 5, tzinfo=datetime.UTC).timestamp()
    pipeline = offline_pipeline(grace_seconds=600, stale_seconds=3 * 86400)
    records = [
        (0, "2025-03-10 10:00:00 1trQoR-0003Fg-NR <= a@example.com H=mx [192.0.2.1] P=esmtp S=1 for b@x.org"),
        (100, "9026-03-10 10:00:01 1trQoS-0003Fg-NR <= c@example.com H=mx [192.0.2.1] P=esmtp S=1 for d@x.org"),
        (200, "2025-03-10 10:00:02 1trQoR-0003Fg-NR == b@x.org R=r T=t defer (-44) H=mx.x.org [192.0.2.2]: "
              "SMTP error from remote mail server after RCPT TO:<b@x.org>: 451 4.7.1 Greylisted"),
    ]
    events = []
    for offset, text in records:
        result = pipeline.process(record(offset, text), 0, shipped_at)
        pipeline.apply(pipeline.commit(0))
        events.extend(result.events)

    assert pipeline.clock("srv") == shipped_at + MAX_CLOCK_LEAD
    deferred = [event for event in events if event.type is EventType.DEFERRED]
    assert len(deferred) == 1 and deferred[0].sender == "a@example.com", "the arrival state was dropped as stale"
    assert [key for key in pipeline.expired_keys(pipeline.backing.items())] == []
    # the future-dated message's state expires on the held-back clock, not in the year 9026
    for key, value in pipeline.backing.items():
        if "1trQoS" in key:
            assert decode_header(value)[1] <= shipped_at + MAX_CLOCK_LEAD + 3 * 86400
    # without a shipping time (offline parsing) the log's own times are the only clock
    offline = offline_pipeline(grace_seconds=600, stale_seconds=3 * 86400)
    list(run_offline([record(offset, text) for offset, text in records], offline))
    assert offline.clock("srv") > datetime.datetime(9000, 1, 1, tzinfo=datetime.UTC).timestamp()


def test_a_message_with_thousands_of_recipients_stays_within_one_changelog_record() -> None:
    """Found by bench/badinput.py: 5000 deferred recipients with long addresses made a 1.5 MB state, which
    faust's producer refused (over 1,000,000 bytes); the worker crashed on that record at every restart."""
    from processors.pipeline import MAX_STATE_BYTES

    msgid = "1vAbCd-00000000042-0042"
    domain = ".".join(f"d{i}{'x' * 50}" for i in range(3)) + ".example"
    addresses = [f"{'r' * 50}{i:05d}@{domain}" for i in range(5000)]
    lines = [f"2025-03-10 10:00:00 {msgid} <= news@example.com H=(pc) [198.51.100.7]:4711 P=esmtpsa S=4096 "
             f"for {' '.join(addresses[:1000])}".encode()]
    lines += [f"2025-03-10 10:00:01 {msgid} == {address} R=dnslookup T=remote_smtp defer (-44) H=mx.example.net "
              f"[192.0.2.25]: SMTP error from remote mail server after RCPT TO:<{address}>: 451 4.7.1 Greylisted"
              .encode() for address in addresses]
    lines.append(f"2025-03-10 10:30:00 {msgid} == {addresses[0]} R=dnslookup T=remote_smtp defer (-44) H=mx.example"
                 f".net [192.0.2.25]: SMTP error from remote mail server after RCPT TO:<{addresses[0]}>: 451 again"
                 .encode())
    offsets = [0]
    for line in lines[:-1]:
        offsets.append(offsets[-1] + len(line) + 1)
    end = offsets[-1] + len(lines[-1]) + 1
    records = [encode_batch("srv", "f", "p", offsets[i:i + 300], lines[i:i + 300],
                            offsets[i + 300] if i + 300 < len(lines) else end) for i in range(0, len(lines), 300)]

    pipeline = offline_pipeline()
    events, largest = [], 0
    for record in records:
        result = pipeline.process(record)
        events.extend(result.events)
        writes = pipeline.commit(result.partition)
        largest = max(largest, *(len(value) for _, value in writes if value is not None))
        pipeline.apply(writes)

    assert largest <= MAX_STATE_BYTES
    assert pipeline.trimmed_states > 0
    deferred = [event for event in events if event.type is EventType.DEFERRED]
    assert len(deferred) == 5001  # an event for every outcome line, trimmed or not
    assert {event.recipient for event in deferred} == set(addresses)
    assert all(event.sender == "news@example.com" for event in deferred)  # the arrival data stays
    assert deferred[-1].retry.attempt == 2  # the recipients seen first keep their retry state


def test_bounded_state_drops_detail_before_recipients_and_always_fits() -> None:
    from processors.exim.correlator import ARRIVED, LAST_TIME, LISTED, RECIPIENTS, STORED, bounded_state

    recipients = {f"user{i}@example.com": {"n": 1, "h": [i]} for i in range(100)}
    state = {ARRIVED: 1, LAST_TIME: 5.0, STORED: [{"x": "y" * 2000}], LISTED: ["a@b"] * 50, RECIPIENTS: recipients}
    assert bounded_state(state, 1 << 20) is state
    size = len(orjson.dumps(state))

    without_stored = bounded_state(state, size - 1000)
    assert STORED not in without_stored and without_stored[RECIPIENTS] == recipients
    assert state[STORED]  # the original is not changed

    for limit in (3000, 1000, 200, 10):
        smaller = bounded_state(state, limit)
        assert len(orjson.dumps(smaller)) <= max(limit, len(orjson.dumps({ARRIVED: 1, LAST_TIME: 5.0})))
        kept = list(smaller.get(RECIPIENTS, {}))
        assert kept == list(recipients)[: len(kept)]  # the first seen are kept


def test_pipeline_accepts_a_custom_parser_and_survives_its_crashes() -> None:
    def broken_parse(raw: bytes, **_: object):
        raise RuntimeError("boom")

    pipeline = Pipeline({}, parse=broken_parse, message_line=lambda *args: args)
    result = pipeline.process(encode_batch("srv", "f", "p", [0, 10], [b"line one", b"line two"], 20))
    assert [entry["reason"] for entry in result.unparsed] == ["parser error: RuntimeError"] * 2
    assert result.events == []


def test_events_are_encoded_as_their_dict_form(fleet: list[Path]) -> None:
    from processors.pipeline import encode_event

    events = [event for result in run_offline(file_records(fleet[0], "srv")) for event in result.events]
    assert events
    for event in events:
        assert orjson.loads(encode_event(event)) == orjson.loads(orjson.dumps(event.to_dict()))
