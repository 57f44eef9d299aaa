"""Wire format of the raw-line topic ``exim.mainlog.raw`` (key = server name, value = orjson).

A record carries one or more consecutive whole lines of one file. ``offset`` is the byte offset of the
first line's start in that file and ``end`` the offset just past the last line's newline, so a
consumer can drop lines it already processed by (server, file, offset) after a shipper crash.
``offsets[i]`` is where line ``i`` starts. When all the lines are valid UTF-8 they travel as one string,
``text``, joined by newlines (cheapest to encode); otherwise as ``lines``, a list where each line is a
string or, if it is not valid UTF-8, ``{"b64": ...}``, so bytes arrive unchanged. ``decode_batch``
reads both forms.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

RECORD_VERSION = 1


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


def decode_batch(value: bytes) -> list[RawLine]:
    record = orjson.loads(value)
    truncated = set(record.get("truncated", ()))
    lines = record["text"].split("\n") if "text" in record else record["lines"]
    return [
        RawLine(record["server"], record["file"], offset, decode_line(line), offset in truncated)
        for offset, line in zip(record["offsets"], lines, strict=True)
    ]
