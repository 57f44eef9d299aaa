"""The answer key: ``truth.jsonl`` rows, one per (server, msgid, recipient), plus one per SMTP-time rejection.

Keys: ``server``, ``msgid`` (null for rejections), ``recipient``, ``original_recipient``, ``final``
(an ``EventType`` value), ``reason`` (a ``Reason`` value, null for delivered / filtered / archived /
in_progress / frozen / cancelled), ``cause`` (for expired: the reason of the last real deferral), ``attempts``,
``sender`` ("" for bounces), ``cpanel_user``, ``bounce_msgid``, ``parent_msgid``, ``time`` (epoch
seconds of the recipient's last line, or of the arrival when it has none).

``recipient`` is the address on the recipient's delivery lines: the first token containing ``@`` among
the delivered address and its ``(parents)`` and ``<original>`` (so ``bob <bob@example.com>`` gives
``bob@example.com``, ``/dev/null (erice@example.com) <erice@example.com>`` gives ``erice@example.com``
and ``bob@gmail.com <info@example.com>`` gives ``bob@gmail.com`` with ``original_recipient``
``info@example.com``); a recipient without any delivery line yet has the address of the ``for`` list.

cPanel archiving's copy of a message (``bob <bob@example.com> R=archiver_incoming_domain_method`` /
``R=archiver_outgoing``) is a delivery line of the same recipient key: it counts as an attempt, and the
incoming copy, logged after the mailbox delivery, makes the recipient ``archived``; the outgoing copy is
logged before the remote outcome, which stays the final state. A message an administrator removes
(``removed by root``) gets ``cancelled`` for every recipient without an outcome (a frozen one gets a
second row for those).

Rows are written when a message has no recipient left to deliver. At the end of a run every message
still in flight gets a row with its state at that moment (``deferred`` / ``in_progress``); with
``--follow`` such a message gets another row later, and the last row of a key wins.
"""

from __future__ import annotations

from typing import IO, Any

import orjson

TRUTH_KEYS = (
    "server",
    "msgid",
    "recipient",
    "original_recipient",
    "final",
    "reason",
    "cause",
    "attempts",
    "sender",
    "cpanel_user",
    "bounce_msgid",
    "parent_msgid",
    "time",
)


class TruthWriter:
    """Buffers rows and writes them as JSON lines; counts final states for the manifest."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._buffer: list[bytes] = []
        self.rows = 0
        self.finals: dict[str, int] = {}

    def write(self, row: dict[str, Any]) -> None:
        self._buffer.append(orjson.dumps(row))
        self.rows += 1
        final = row["final"]
        self.finals[final] = self.finals.get(final, 0) + 1
        if len(self._buffer) >= 4096:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._stream.write(b"\n".join(self._buffer) + b"\n")
            self._buffer.clear()
        self._stream.flush()


def load_truth(path: str) -> dict[tuple[str, str | None, str, int | None], dict[str, Any]]:
    """Rows by (server, msgid, recipient, time-for-rejections); the last row of a key wins."""
    rows: dict[tuple[str, str | None, str, int | None], dict[str, Any]] = {}
    with open(path, "rb") as stream:
        for line in stream:
            if line.strip():
                row = orjson.loads(line)
                key_time = row["time"] if row["msgid"] is None else None
                rows[(row["server"], row["msgid"], row["recipient"], key_time)] = row
    return rows
