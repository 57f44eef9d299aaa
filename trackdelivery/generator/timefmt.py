"""Fast ``YYYY-MM-DD HH:MM:SS`` formatting of UTC epoch seconds (the log writer formats every line)."""

from __future__ import annotations

import time

_CLOCK = [f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)]
_DAYS: dict[int, str] = {}


def format_time(epoch: int) -> str:
    day, second = divmod(epoch, 86400)
    prefix = _DAYS.get(day)
    if prefix is None:
        prefix = time.strftime("%Y-%m-%d ", time.gmtime(day * 86400))
        _DAYS[day] = prefix
    return prefix + _CLOCK[second]
