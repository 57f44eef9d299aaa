"""Wire format of the raw-line topic ``exim.mainlog.raw`` (key = server name, value = orjson).

A record carries one or more consecutive whole lines of one file, with the byte offset where each line
starts, so a consumer can drop lines it already processed by (server, file, offset) after a shipper crash.
``end`` is the offset just past the last line's newline. Two forms, both read by ``decode_batch``:

- ``v: 2`` (what the shipper sends when every line is valid UTF-8 and none was cut): ``offset``, the
  first line's offset, and ``text``, the lines joined by newlines. The lines are exactly the file's bytes
  from ``offset`` to ``end``, so line ``i + 1`` starts one byte after line ``i``'s UTF-8 bytes end: the
  offsets follow from the text and are not repeated (the shipper builds no per-line objects).
- ``v: 1``: ``offsets`` (``offsets[i]`` is where line ``i`` starts) and either ``text`` or ``lines``, a
  list where each line is a string or, if it is not valid UTF-8, ``{"b64": ...}``, so bytes arrive
  unchanged. ``truncated`` lists the offsets of lines cut at the shipper's ``max_line_bytes``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import orjson

RECORD_VERSION = 1  # explicit offsets
TEXT_RECORD_VERSION = 2  # offsets implied by the text
_PLUS_ONE = (1).__add__


@dataclass(slots=True, frozen=True)
class RawLine:
    server: str
    file: str  # file identity (fingerprint), stable across renames
    offset: int  # byte offset of the line's first byte
    data: bytes  # the line without its newline
    truncated: bool = False


def encode_line(data: bytes) -> str | dict[str, str]:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(data).decode("ascii")}


def _as_text(lines: list[bytes]) -> str | None:
    # A newline never sits inside a multi-byte sequence, so the joined text splits back into the lines.
    if not lines:
        return None
    try:
        return b"\n".join(lines).decode("utf-8")
    except UnicodeDecodeError:
        return None


def decode_line(value: str | dict[str, str]) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    return base64.b64decode(value["b64"])


def line_offsets(start: int, lines: list[bytes]) -> list[int]:
    """Where each of ``lines`` starts when they follow each other, newline-terminated, from ``start``."""
    offsets = list(accumulate(map(_PLUS_ONE, map(len, lines)), initial=start))
    offsets.pop()
    return offsets


def encode_batch(
    server: str, file: str, path: str, offsets: list[int], lines: list[bytes], end: int,
    truncated: list[int] | None = None,
) -> bytes:
    """One record for consecutive lines of one file; ``offsets[i]`` is where ``lines[i]`` starts."""
    record: dict[str, Any] = {
        "v": RECORD_VERSION,
        "server": server,
        "file": file,
        "path": path,
        "offsets": offsets,
        "end": end,
    }
    text = _as_text(lines)
    if text is not None:
        record["text"] = text
    else:
        record["lines"] = [encode_line(line) for line in lines]
    if truncated:
        record["truncated"] = truncated
    return orjson.dumps(record)


def encode_block(server: str, file: str, path: str, start: int, buffer: bytes | bytearray, lo: int = 0,
                 hi: int | None = None) -> bytes:
    """One record for ``buffer[lo:hi]``: the bytes of one file from ``start``, whole lines, ending with a
    newline.

    Valid UTF-8 travels as ``text`` without per-line offsets (no per-line work, and the span is never
    copied); otherwise the lines and their offsets are listed (``encode_batch``).
    """
    hi = len(buffer) if hi is None else hi
    if hi <= lo or buffer[hi - 1] != 0x0A:
        raise ValueError("a block is not empty and ends with a newline")
    end = start + hi - lo
    try:
        text = str(memoryview(buffer)[lo:hi - 1], "utf-8")
    except UnicodeDecodeError:
        lines = bytes(buffer[lo:hi - 1]).split(b"\n")
        return encode_batch(server, file, path, line_offsets(start, lines), lines, end)
    return orjson.dumps({"v": TEXT_RECORD_VERSION, "server": server, "file": file, "path": path,
                         "offset": start, "end": end, "text": text})


def decode_batch(value: bytes) -> list[RawLine]:
    record = orjson.loads(value)
    server, file = record["server"], record["file"]
    truncated = set(record.get("truncated", ()))
    if "offsets" not in record:  # v2: the offsets follow from the text
        data = record["text"].encode("utf-8").split(b"\n")
        offsets = line_offsets(record["offset"], data)
        if offsets[-1] + len(data[-1]) + 1 != record["end"]:
            raise ValueError("text does not end at end")
        return [RawLine(server, file, offset, line, offset in truncated)
                for offset, line in zip(offsets, data, strict=True)]
    lines = record["text"].split("\n") if "text" in record else record["lines"]
    return [
        RawLine(server, file, offset, decode_line(line), offset in truncated)
        for offset, line in zip(record["offsets"], lines, strict=True)
    ]
