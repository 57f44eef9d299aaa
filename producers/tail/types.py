"""Values the tail engine hands out."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol


class StartPosition(enum.StrEnum):
    """Where to start a file found at start-up that has no checkpoint."""

    BEGINNING = "beginning"
    END = "end"


@dataclass(slots=True)
class Chunk:
    """Consecutive whole lines of one file (the last chunk of a finished file may have none).

    ``offsets[i]`` is the byte offset where ``lines[i]`` starts; ``end`` is the offset just past the last
    line's newline, i.e. where reading resumes once this chunk is acknowledged.
    """

    file_id: str
    path: str
    offsets: list[int]
    lines: list[bytes]
    end: int
    truncated: list[int] = field(default_factory=list)  # offsets of lines cut at max_line_bytes
    final: bool = False  # the file is finished: nothing will follow ``end`` (may carry no lines)

    @property
    def start(self) -> int:
        return self.offsets[0] if self.offsets else self.end

    @property
    def byte_size(self) -> int:
        return self.end - self.start


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
