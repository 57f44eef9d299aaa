"""Exim message ids in both formats, built the way Exim builds them (base62 of time, pid, sub-second).

Old format (before 4.97), 16 chars: ``tttttt-pppppp-ff`` with ``ff`` the time in 1/2000 s units.
New format (4.97+), 23 chars: ``tttttt-ppppppppppp-ffff`` with ``ffff`` the microseconds.
"""

from __future__ import annotations

import random

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_DIGIT_VALUE = {c: i for i, c in enumerate(BASE62)}

#: Linux pid_max on 64-bit systems.
PID_MAX = 4_194_304


_PAIRS = [a + b for a in BASE62 for b in BASE62]


def base62(value: int, width: int) -> str:
    """``value`` in ``width`` base62 digits (the high digits are dropped if it does not fit)."""
    pieces = []
    for _ in range((width + 1) // 2):
        value, pair = divmod(value, 3844)
        pieces.append(_PAIRS[pair])
    text = "".join(reversed(pieces))
    return text[len(text) - width :]


def base62_value(text: str) -> int:
    value = 0
    for char in text:
        value = value * 62 + _DIGIT_VALUE[char]
    return value


def old_format_id(epoch: int, pid: int, fraction: int) -> str:
    """16-char id; ``fraction`` in 0..1999 (1/2000 s)."""
    return f"{base62(epoch, 6)}-{base62(pid, 6)}-{base62(fraction, 2)}"


def new_format_id(epoch: int, pid: int, microseconds: int) -> str:
    """23-char id; ``microseconds`` in 0..999999."""
    return f"{base62(epoch, 6)}-{base62(pid, 11)}-{base62(microseconds, 4)}"


def id_epoch(msgid: str) -> int:
    """The arrival second encoded in either id format."""
    return base62_value(msgid[:6])


class MessageIdFactory:
    """Unique ids for one server.

    Ids are unique because the pid advances monotonically (with wrap-around at ``PID_MAX``) and ids
    made by the receiving side and by the delivery side (bounces) use disjoint pid parities: two ids
    of one side can only collide if the pid wrapped all the way round within the same second.
    """

    __slots__ = ("_bounce_pid", "_new_format", "_pid", "_rng")

    def __init__(self, rng: random.Random, new_format: bool) -> None:
        self._rng = rng
        self._new_format = new_format
        self._pid = rng.randrange(1000, 60000) * 2
        self._bounce_pid = rng.randrange(1000, 60000) * 2 + 1

    @property
    def new_format(self) -> bool:
        return self._new_format

    def _make(self, epoch: int, pid: int) -> str:
        pairs = _PAIRS
        high, low = divmod(epoch, 3844)
        top, mid = divmod(high, 3844)
        stamp = pairs[top % 3844] + pairs[mid] + pairs[low]
        pid_high, pid_low = divmod(pid, 3844)
        if self._new_format:
            micro_high, micro_low = divmod(int(self._rng.random() * 1_000_000), 3844)
            return f"{stamp}-0000000{pairs[pid_high % 3844]}{pairs[pid_low]}-{pairs[micro_high]}{pairs[micro_low]}"
        return f"{stamp}-00{pairs[pid_high % 3844]}{pairs[pid_low]}-{pairs[int(self._rng.random() * 2000)]}"

    def arrival(self, epoch: int) -> tuple[str, int]:
        """A new id for a message received at ``epoch``, and the receiving process pid."""
        self._pid = (self._pid + 2 * self._rng.randint(1, 24)) % PID_MAX
        return self._make(epoch, self._pid), self._pid

    def bounce(self, epoch: int) -> tuple[str, int]:
        """A new id for a message Exim generates itself (bounce, delay warning) at ``epoch``."""
        self._bounce_pid = (self._bounce_pid + 2 * self._rng.randint(1, 4)) % PID_MAX
        return self._make(epoch, self._bounce_pid), self._bounce_pid
