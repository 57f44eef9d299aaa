"""Wire format of the raw-line topic ``exim.mainlog.raw`` (key = server name, value = orjson).

A record carries one or more consecutive whole lines of one file. ``offset`` is the byte offset of the
first line's start in that file and ``end`` the offset just past the last line's newline, so a
consumer can drop lines it already processed by (server, file, offset) after a shipper crash.
Lines that are valid UTF-8 travel as strings; others as ``{"b64": ...}`` so bytes arrive unchanged.
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
        "lines": [encode_line(line) for line in lines],
    }
    if truncated:
        record["truncated"] = truncated
    return orjson.dumps(record)


def decode_batch(value: bytes) -> list[RawLine]:
    record = orjson.loads(value)
    truncated = set(record.get("truncated", ()))
    return [
        RawLine(record["server"], record["file"], offset, decode_line(line), offset in truncated)
        for offset, line in zip(record["offsets"], record["lines"], strict=True)
    ]
