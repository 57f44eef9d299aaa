"""The faust workarounds: a changelog offset faust would crash on is replaced by a read from the start."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest
from faust.tables.recovery import Recovery

from processors import faust_fixes


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


@dataclass
class SeekingConsumer:
    seeks: list[dict[Any, int]] = field(default_factory=list)

    async def seek_wait(self, offsets: dict[Any, int]) -> None:
        for offset in offsets.values():
            if type(offset) is not int or offset < 0:  # what aiokafka's seek refuses
                raise ValueError("Offset must be a positive integer")
        self.seeks.append(offsets)


async def test_an_invalid_changelog_offset_is_read_from_the_start(caplog: pytest.LogCaptureFixture) -> None:
    faust_fixes.apply()
    faust_fixes.apply()  # idempotent: wrapping twice would log twice
    consumer = SeekingConsumer()
    good, fresh, broken, missing = TP("c", 0), TP("c", 1), TP("c", 2), TP("c", 3)
    offsets: Counter[Any] = Counter({good: 2414, fresh: -1, broken: -7})
    offsets[missing] = None  # type: ignore[assignment]

    await Recovery._seek_offsets(object(), consumer, {good, fresh, broken, missing}, offsets, "active")  # type: ignore[arg-type]

    assert consumer.seeks == [{good: 2414, fresh: 0, broken: 0, missing: 0}]
    assert sum("is invalid" in record.getMessage() for record in caplog.records) == 2


@pytest.mark.parametrize(("level", "expected"), [("warning", logging.WARNING), ("error", logging.ERROR),
                                                  ("info", logging.INFO), ("debug", logging.DEBUG)])
def test_the_service_worker_logs_at_its_level_and_no_lower(level: str, expected: int) -> None:
    """faust's spinner used to put the root logger at DEBUG for WARNING and above."""
    import faust

    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    app = faust.App(f"test-levels-{level}", broker="kafka://127.0.0.1:9", autodiscover=False)
    try:
        worker = faust_fixes.service_worker(app, level)
        worker._setup_logging()
        assert root.level == expected
        assert logging.getLogger("faust.tables.recovery").isEnabledFor(logging.DEBUG) is (expected <= logging.DEBUG)
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


class CommitBookkeeping:
    """The state faust's consumer keeps to decide its commits; its own methods run on it."""

    def __init__(self) -> None:
        from intervaltree import IntervalTree

        self._committed_offset: defaultdict[Any, int | None] = defaultdict(lambda: None)
        self._acked: defaultdict[Any, list[int]] = defaultdict(list)
        self._acked_index: defaultdict[Any, set[int]] = defaultdict(set)
        self._gap: defaultdict[Any, IntervalTree] = defaultdict(IntervalTree)

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        from faust.transport.consumer import Consumer

        await Consumer._add_gap(self, tp, offset_from, offset_to)  # type: ignore[arg-type]


@pytest.mark.parametrize(("held", "upto", "acked_before"), [
    (100, 118, []),            # the commit of 100..117 was lost; faust believes it done
    (None, 40, []),            # Kafka holds nothing for the group
    (117, 118, []),            # one record behind
    (100, 118, [104, 105]),    # faust stuck on acks it cannot commit (more than one record after its mark)
])
async def test_recommit_makes_fausts_next_commit_the_processed_offset(
        held: int | None, upto: int, acked_before: list[int]) -> None:
    from faust.transport.consumer import Consumer

    consumer = CommitBookkeeping()
    tp = TP("raw", 3)
    consumer._committed_offset[tp] = upto if not acked_before else 101  # what faust believes
    for offset in acked_before:
        consumer._acked[tp].append(offset)
        consumer._acked_index[tp].add(offset)
    assert Consumer._new_offset(consumer, tp) is None  # type: ignore[arg-type]  # as it stands: no commit

    await faust_fixes.recommit(consumer, tp, held, upto)

    assert Consumer._new_offset(consumer, tp) == upto  # type: ignore[arg-type]
    assert Consumer._should_commit(consumer, tp, upto)  # type: ignore[arg-type]
    assert Consumer._new_offset(consumer, tp) is None  # type: ignore[arg-type]  # and once only
