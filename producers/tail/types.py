"""Values the tail engine hands out."""

from __future__ import annotations

import enum
from itertools import accumulate
from typing import Protocol

_PLUS_ONE = (1).__add__


class StartPosition(enum.StrEnum):
    """Where to start a file found at start-up that has no checkpoint."""

    BEGINNING = "beginning"
    END = "end"


class Chunk:
    """Consecutive whole lines of one file (the last chunk of a finished file may have none).

    ``offsets[i]`` is the byte offset where ``lines[i]`` starts; ``end`` is the offset just past the last
    line's newline, i.e. where reading resumes once this chunk is acknowledged.

    A chunk read straight from a file is a *block* (``Chunk.block``): the file's bytes from ``start`` to
    ``end``, kept as a span ``buffer[lo:hi]`` of the buffer they were read into (not copied), with
    ``offsets`` and ``lines`` split out only when asked for. The shipper sends blocks without ever
    splitting them into lines.
    """

    __slots__ = ("_lines", "_offsets", "_start", "buffer", "end", "file_id", "final", "lo", "path", "truncated")

    def __init__(self, file_id: str, path: str, offsets: list[int], lines: list[bytes], end: int,
                 truncated: list[int] | None = None, final: bool = False) -> None:
        self.file_id = file_id
        self.path = path
        self._offsets: list[int] | None = offsets
        self._lines: list[bytes] | None = lines
        self._start = offsets[0] if offsets else end
        self.end = end
        self.truncated: list[int] = [] if truncated is None else truncated  # offsets of lines cut at max_line_bytes
        self.final = final  # the file is finished: nothing will follow ``end`` (may carry no lines)
        self.buffer: bytes | bytearray | None = None
        self.lo = 0

    @classmethod
    def block(cls, file_id: str, path: str, start: int, buffer: bytes | bytearray, lo: int = 0,
              hi: int | None = None, final: bool = False) -> Chunk:
        """Whole lines given as the file's bytes from ``start``: ``buffer[lo:hi]``, not empty, ending with
        a newline."""
        hi = len(buffer) if hi is None else hi
        if hi <= lo or buffer[hi - 1] != 0x0A:
            raise ValueError("a block is not empty and ends with a newline")
        chunk = cls.__new__(cls)
        chunk.file_id, chunk.path, chunk.final, chunk.truncated = file_id, path, final, []
        chunk._offsets = chunk._lines = None
        chunk._start, chunk.end = start, start + hi - lo
        chunk.buffer, chunk.lo = buffer, lo
        return chunk

    @property
    def hi(self) -> int:
        return self.lo + self.end - self._start

    @property
    def data(self) -> bytes | None:
        """A block's bytes (a copy unless the block is its whole buffer); None for a chunk of listed lines."""
        buffer = self.buffer
        if buffer is None:
            return None
        if type(buffer) is bytes and self.lo == 0 and len(buffer) == self.end - self._start:
            return buffer
        return bytes(buffer[self.lo:self.hi])

    @property
    def offsets(self) -> list[int]:
        if self._offsets is None:
            self._split()
        assert self._offsets is not None
        return self._offsets

    @property
    def lines(self) -> list[bytes]:
        if self._lines is None:
            self._split()
        assert self._lines is not None
        return self._lines

    def _split(self) -> None:
        assert self.buffer is not None
        self._lines = bytes(self.buffer[self.lo:self.hi - 1]).split(b"\n")
        # offsets[i + 1] = offsets[i] + len(line i) + 1, computed without a Python-level loop
        self._offsets = list(accumulate(map(_PLUS_ONE, map(len, self._lines)), initial=self._start))
        self._offsets.pop()

    @property
    def has_lines(self) -> bool:
        return self.buffer is not None or bool(self._offsets)

    @property
    def line_count(self) -> int:
        if self._offsets is not None:
            return len(self._offsets)
        assert self.buffer is not None
        return self.buffer.count(b"\n", self.lo, self.hi)

    @property
    def start(self) -> int:
        return self._start

    @property
    def byte_size(self) -> int:
        return self.end - self._start

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Chunk):
            return NotImplemented
        return (self.file_id, self.path, self.offsets, self.lines, self.end, self.truncated, self.final) == (
            other.file_id, other.path, other.offsets, other.lines, other.end, other.truncated, other.final)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"Chunk(file_id={self.file_id!r}, path={self.path!r}, start={self._start}, end={self.end}, "
                f"lines={self.line_count}, truncated={self.truncated!r}, final={self.final})")


class TailEvents(Protocol):
    """What the engine reports besides lines (metrics and logs hang off this)."""

    def opened(self, path: str, file_id: str, offset: int, reason: str) -> None: ...

    def closed(self, path: str, file_id: str, offset: int, reason: str) -> None: ...

    def rotated(self, path: str, file_id: str) -> None: ...

    def truncated(self, path: str, file_id: str, offset: int, size: int) -> None: ...

    def long_line(self, path: str, file_id: str, offset: int, length: int) -> None: ...


class NoEvents:
    """A ``TailEvents`` that ignores everything."""

    def opened(self, path: str, file_id: str, offset: int, reason: str) -> None:
        pass

    def closed(self, path: str, file_id: str, offset: int, reason: str) -> None:
        pass

    def rotated(self, path: str, file_id: str) -> None:
        pass

    def truncated(self, path: str, file_id: str, offset: int, size: int) -> None:
        pass

    def long_line(self, path: str, file_id: str, offset: int, length: int) -> None:
        pass
