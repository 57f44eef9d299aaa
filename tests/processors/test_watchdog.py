"""The processor's watchdog: an idle worker whose raw partitions hold unread records is resumed, and exits
for its supervisor when that does not help; a busy or caught-up worker is left alone."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from processors import agents
from processors.agents import EXIT_STALLED, RecordProcessor
from processors.metrics import ProcessorMetrics
from processors.pipeline import NEVER, encode_value
from processors.settings import ProcessorSettings
from trackdelivery.settings import TopicNames

RAW = TopicNames().raw


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


@dataclass
class FakeConsumer:
    highwater: dict[TP, int]
    resumed: list[TP] = field(default_factory=list)
    flow_resumed: int = 0

    def assignment(self) -> set[TP]:
        return set(self.highwater) | {TP("some-changelog", 0)}

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.highwater[tp] for tp in tps}

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return {tp: 0 for tp in tps}

    def resume_partitions(self, tps: list[TP]) -> None:
        self.resumed.extend(tps)

    def resume_flow(self) -> None:
        self.flow_resumed += 1


@dataclass
class FakeFlow:
    resumed: int = 0

    def resume(self) -> None:
        self.resumed += 1


@dataclass
class FakeRecovery:
    remaining: int
    in_recovery: bool = True

    def active_remaining_total(self) -> int:
        return self.remaining


@dataclass
class FakeTables:
    recovery: FakeRecovery | None = None


@dataclass
class FakeApp:
    consumer: FakeConsumer
    flow_control: FakeFlow = field(default_factory=FakeFlow)
    tables: FakeTables = field(default_factory=FakeTables)


def processor(consumer: FakeConsumer, next_offsets: dict[int, int]) -> RecordProcessor:
    table: dict[str, Any] = {
        agents.next_offset_key(partition): encode_value(partition, NEVER, offset)
        for partition, offset in next_offsets.items()
    }
    return RecordProcessor(
        FakeApp(consumer), table, pipeline=None, topics=TopicNames(),  # type: ignore[arg-type]
        settings=ProcessorSettings(stall_seconds=60.0), metrics=ProcessorMetrics(), redis_writer=None,
        bootstrap_servers="127.0.0.1:9",
    )


class Exited(Exception):
    pass


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        raise Exited(code)

    monkeypatch.setattr(agents.os, "_exit", fake_exit)
    return codes


async def test_a_stalled_worker_is_resumed_then_exits_for_its_supervisor(exits: list[int]) -> None:
    consumer = FakeConsumer({TP(RAW, 0): 120, TP(RAW, 1): 40})
    worker = processor(consumer, {0: 100, 1: 40})
    await worker.watchdog()  # progress is recent: nothing
    assert consumer.resumed == [] and exits == []

    worker._last_progress = time.monotonic() - 61
    await worker.watchdog()
    assert set(consumer.resumed) == consumer.assignment() and consumer.flow_resumed == 1
    assert worker.app.flow_control.resumed == 1 and exits == []

    await worker.watchdog()  # resumed just now: it gets another stall period
    assert exits == []
    worker._last_progress = time.monotonic() - 61
    with pytest.raises(Exited):
        await worker.watchdog()
    assert exits == [EXIT_STALLED]


async def test_a_caught_up_or_busy_worker_is_left_alone(exits: list[int]) -> None:
    consumer = FakeConsumer({TP(RAW, 0): 100})
    caught_up = processor(consumer, {0: 100})
    caught_up._last_progress = time.monotonic() - 600
    await caught_up.watchdog()
    await caught_up.watchdog()
    assert consumer.resumed == [] and exits == []

    behind = FakeConsumer({TP(RAW, 0): 500})
    busy = processor(behind, {0: 100})
    busy._last_progress = time.monotonic() - 600
    busy._handling = True  # e.g. retrying a Redis write for minutes: not a stall of the consumer
    await busy.watchdog()
    assert behind.resumed == [] and exits == []


async def test_progress_after_a_resume_starts_the_count_again(exits: list[int]) -> None:
    consumer = FakeConsumer({TP(RAW, 0): 120})
    worker = processor(consumer, {0: 100})
    worker._last_progress = time.monotonic() - 61
    await worker.watchdog()
    assert worker._stall_strikes == 1

    class Message:
        partition, offset, value, timestamp, tp = 0, 100, None, 1.7e9, TP(RAW, 0)

    class Event:
        message = Message()

    async def handled(partition: int, offset: int, value: bytes | None, shipped_at: float | None) -> None:
        worker.table[agents.next_offset_key(partition)] = encode_value(partition, NEVER, offset + 1)

    worker._handle_record = handled  # type: ignore[method-assign]
    worker._observe_lag = lambda tp, offset: None  # type: ignore[method-assign]
    await worker.handle(Event())  # type: ignore[arg-type]
    assert worker._stall_strikes == 0
    worker._last_progress = time.monotonic() - 61
    await worker.watchdog()  # a new stall: resumed again, not exited
    assert exits == [] and consumer.flow_resumed == 2


async def test_a_worker_stuck_inside_a_record_exits_for_its_supervisor(exits: list[int]) -> None:
    consumer = FakeConsumer({TP(RAW, 0): 500})
    worker = processor(consumer, {0: 100})
    worker._handling = True
    worker._beat = time.monotonic() - 100  # a retry or a direct read would have beaten within output_timeout
    await worker.watchdog()  # 100 s < output_timeout (60) + stall_seconds (60): still waiting
    assert exits == []
    worker._beat = time.monotonic() - 121
    with pytest.raises(Exited):
        await worker.watchdog()
    assert exits == [EXIT_STALLED] and consumer.resumed == []


async def test_a_table_recovery_that_stops_moving_is_a_stall(exits: list[int]) -> None:
    """Seen in the chaos suite: after a broker restart faust's recovery waited for a changelog partition
    its consumer never fetched again (stale metadata); no record reached the agent, and the raw partitions
    looked caught up because their table state had not been recovered."""
    consumer = FakeConsumer({TP(RAW, 0): 100})
    worker = processor(consumer, {0: 100})
    recovery = FakeRecovery(remaining=5000)
    worker.app.tables.recovery = recovery  # type: ignore[attr-defined]

    worker._last_progress = time.monotonic() - 61
    await worker.watchdog()  # first sight of the recovery: progress
    assert exits == [] and consumer.flow_resumed == 0
    for left in (4000, 1000):  # recovering a large table for minutes is not a stall
        recovery.remaining = left
        worker._last_progress = time.monotonic() - 61
        await worker.watchdog()
        assert exits == [] and consumer.flow_resumed == 0

    worker._last_progress = time.monotonic() - 61  # then stuck at 1000
    await worker.watchdog()
    assert consumer.flow_resumed == 1 and exits == []
    recovery.remaining = 0  # a changelog partition whose high watermark faust never learnt counts as 0
    await worker.watchdog()  # the last known records came in: progress
    assert exits == []
    worker._last_progress = time.monotonic() - 61  # but recovery never ends
    with pytest.raises(Exited):
        await worker.watchdog()
    assert exits == [EXIT_STALLED]

    recovery.in_recovery = False  # recovered: the raw partitions decide again, and they are caught up
    done = processor(FakeConsumer({TP(RAW, 0): 100}), {0: 100})
    done.app.tables.recovery = recovery  # type: ignore[attr-defined]
    done._last_progress = time.monotonic() - 61
    await done.watchdog()
    assert done.app.consumer.flow_resumed == 0 and exits == [EXIT_STALLED]


async def test_a_partition_no_record_of_which_was_ever_processed_counts_as_behind(exits: list[int]) -> None:
    """Seen in the chaos suite: a raw partition nobody had processed yet (no next-offset mark in the table)
    held 320 records while its worker sat idle, and the watchdog took it for caught up."""
    consumer = FakeConsumer({TP(RAW, 0): 50, TP(RAW, 1): 320, TP(RAW, 2): 0})
    worker = processor(consumer, {0: 50})  # 1 and 2 never processed; 2 is empty
    worker._last_progress = time.monotonic() - 61
    await worker.watchdog()
    assert consumer.flow_resumed == 1 and exits == []
    assert await worker._unread_partitions() == [(TP(RAW, 1), 0, 320)]


async def test_records_read_directly_are_handed_to_faust_as_a_gap(exits: list[int]) -> None:
    """Seen in the chaos suite: faust dropped fetched records 633..650 in a rebalance and delivered 651 on;
    the worker read the hole directly, but faust, which never saw those offsets, held its commit at 633 for
    good (it refuses holes wider than one record), so the group's lag never came down."""
    gaps: list[tuple[TP, int, int]] = []

    class GapConsumer(FakeConsumer):
        async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
            gaps.append((tp, offset_from, offset_to))

    consumer = GapConsumer({TP(RAW, 1): 921})
    worker = processor(consumer, {1: 633})
    handled: list[int] = []

    async def read_directly(tp: TP, start: int, end: int) -> int:
        handled.extend(range(start, min(end, start + 10)))  # two reads, as when the first consumer gives up
        return min(end, start + 10)

    worker._read_directly = read_directly  # type: ignore[method-assign]
    await worker._fill_hole(TP(RAW, 1), 633, 651)
    assert handled == list(range(633, 651))
    assert gaps == [(TP(RAW, 1), 633, 650)] and exits == []


@dataclass
class CommittingConsumer(FakeConsumer):
    commits: int = 0
    recommitted: list[tuple[TP, int | None, int]] = field(default_factory=list)

    async def commit(self) -> bool:
        self.commits += 1
        return True


def committing_worker(monkeypatch: pytest.MonkeyPatch, held: dict[int, int],
                      marks: dict[int, int]) -> tuple[RecordProcessor, CommittingConsumer]:
    consumer = CommittingConsumer({TP(RAW, partition): mark for partition, mark in marks.items()})
    worker = processor(consumer, marks)
    worker.app.conf = type("Conf", (), {"id": "trackdelivery"})()  # type: ignore[attr-defined]

    def committed_offsets(kafka: Any, group: str, topic: str, timeout: float) -> dict[int, int]:
        assert (group, topic) == ("trackdelivery", RAW)
        return dict(held)

    async def recommit(consumer_: Any, tp: TP, committed: int | None, upto: int) -> None:
        consumer_.recommitted.append((tp, committed, upto))
        held[tp.partition] = upto  # what the commit that follows makes Kafka hold

    monkeypatch.setattr(agents.kafka_clients, "committed_offsets", committed_offsets)
    monkeypatch.setattr(agents.faust_fixes, "recommit", recommit)
    return worker, consumer


async def test_an_idle_worker_has_commits_kafka_lost_made_again(monkeypatch: pytest.MonkeyPatch,
                                                                 exits: list[int]) -> None:
    worker, consumer = committing_worker(monkeypatch, held={0: 100}, marks={0: 118, 1: 40})
    await worker.watchdog()  # a record just now: faust's own commit timer has the job
    assert consumer.recommitted == [] and consumer.commits == 0

    worker._last_progress = time.monotonic() - worker.commit_check_after
    await worker.watchdog()
    assert set(consumer.recommitted) == {(TP(RAW, 0), 100, 118), (TP(RAW, 1), None, 40)}
    assert consumer.commits == 1 and worker.metrics.recommits._value.get() == 2

    await worker.watchdog()  # Kafka now holds both: checked, nothing more to do
    await worker.watchdog()
    assert len(consumer.recommitted) == 2 and consumer.commits == 1 and exits == []


async def test_commits_are_not_touched_while_records_come_in(monkeypatch: pytest.MonkeyPatch) -> None:
    worker, consumer = committing_worker(monkeypatch, held={0: 100}, marks={0: 118})
    worker._last_progress = time.monotonic() - worker.commit_check_after
    original = agents.kafka_clients.committed_offsets

    def committed_while_a_record_arrives(*args: Any) -> dict[int, int]:
        worker._last_progress = time.monotonic()  # the agent handled a record during the lookup
        return original(*args)

    monkeypatch.setattr(agents.kafka_clients, "committed_offsets", committed_while_a_record_arrives)
    await worker.watchdog()
    assert consumer.recommitted == [] and consumer.commits == 0 and not worker._commits_checked
