"""Workarounds for faust-streaming faults the chaos suite hit, applied once by ``create_app``.

Each one is narrow: it only changes what faust does with a value it would otherwise crash on.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

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
