"""Workarounds for faust-streaming faults the chaos suite hit, applied once by ``create_app``.

Each one is narrow: it only changes what faust does with a value it would otherwise crash on.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from faust import App, Worker
from faust.tables.recovery import Recovery

log = logging.getLogger("trackdelivery.processor")

_applied = False


def apply() -> None:
    """Install the workarounds (idempotent)."""
    global _applied
    if _applied:
        return
    _applied = True
    original = Recovery._seek_offsets

    async def seek_offsets(self: Recovery, consumer: Any, tps: Any, offsets: Counter[Any], title: str) -> None:
        # faust seeks each changelog partition to the offset it recorded; during a rebalance right after a
        # broker restart one came out invalid, aiokafka refused the seek and the recovery service crashed
        # the worker. Reading that changelog from its start is what a worker without any state does.
        for tp in tps:
            offset = offsets[tp]
            if type(offset) is not int or offset < -1:
                log.warning("table recovery: %s offset %r of %s[%d] is invalid: reading it from its start",
                            title, offset, tp.topic, tp.partition)
                offsets[tp] = -1
        await original(self, consumer, tps, offsets, title)

    Recovery._seek_offsets = seek_offsets  # type: ignore[method-assign]


async def recommit(consumer: Any, tp: Any, committed: int | None, upto: int) -> None:
    """Make faust's next commit of ``tp`` be ``upto``, given that every record before ``upto`` is processed
    and that Kafka holds ``committed`` (None: nothing) for the group.

    faust commits the end of the run of acknowledged offsets that starts right after its own record of the
    committed offset; that record is set back to what Kafka holds, and the offsets from there to ``upto``
    are handed to it as acknowledged (a gap, as it does for offsets it skips, and the last one acked in place
    of any acknowledgement before ``upto`` it still holds)."""
    consumer._committed_offset[tp] = committed or None
    await consumer._add_gap(tp, committed or 0, upto - 2)
    acked = sorted({offset for offset in consumer._acked[tp] if offset >= upto} | {upto - 1})
    consumer._acked[tp] = acked
    consumer._acked_index[tp] = set(acked)


def service_worker(app: App, log_level: str) -> Worker:
    """A faust ``Worker`` for a service: logs at ``log_level`` and nothing else.

    faust's terminal spinner, on whenever the level is WARNING or above, sets the root logger to DEBUG so
    that every record turns it: every debug call of faust, mode and aiokafka (several per changelog record
    in table recovery) then built and handled a log record, about a quarter of a recovering worker's time.
    """
    worker = Worker(app, loglevel=log_level, quiet=True, redirect_stdouts=False)
    worker.spinner = None
    return worker
