"""An in-process harness for the tail engine: every chunk is acknowledged as soon as it is read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from producers.tail import Checkpointer, StartPosition, TailEngine


@dataclass
class Harness:
    directory: Path
    patterns: list[str]
    start: StartPosition = StartPosition.BEGINNING
    max_line_bytes: int = 64 * 1024
    read_bytes: int = 4096
    emitted: list[tuple[str, int, bytes]] = field(default_factory=list)  # (file id, offset, line)
    truncations: list[str] = field(default_factory=list)
    engine: TailEngine | None = None

    def __post_init__(self) -> None:
        self.open()

    def open(self) -> None:
        self.checkpointer = Checkpointer(self.directory / "checkpoints")
        self.checkpointer.load()
        self.engine = TailEngine(
            self.patterns, self.checkpointer.known_files(), start=self.start, max_line_bytes=self.max_line_bytes,
            rotate_wait=0, scan_interval=0, read_bytes=self.read_bytes, events=self,
        )

    def drain(self) -> list[bytes]:
        """Poll until nothing more comes; returns the lines read by this call."""
        assert self.engine is not None
        before = len(self.emitted)
        idle = 0
        while idle < 4:  # a truncation found, then a rescan, then a close can each take one quiet poll
            chunks = self.engine.poll()
            idle = idle + 1 if not chunks else 0
            for chunk in chunks:
                self.emitted.extend(zip([chunk.file_id] * len(chunk.lines), chunk.offsets, chunk.lines, strict=True))
                self.checkpointer.ack(self.checkpointer.track(chunk))
            self.checkpointer.save_if_dirty()
        return [line for _, _, line in self.emitted[before:]]

    def restart(self, *, clean: bool = True) -> None:
        """A new engine from the saved checkpoint (``clean=False``: the old one is just dropped)."""
        assert self.engine is not None
        if clean:
            self.engine.close()
        else:
            for reader in list(self.engine.readers.values()):
                reader.close()
        self.open()

    def lines(self) -> list[bytes]:
        return [line for _, _, line in self.emitted]

    # TailEvents
    def opened(self, path: str, file_id: str, offset: int, reason: str) -> None:
        pass

    def closed(self, path: str, file_id: str, offset: int, reason: str) -> None:
        pass

    def rotated(self, path: str, file_id: str) -> None:
        pass

    def truncated(self, path: str, file_id: str, offset: int, size: int) -> None:
        self.truncations.append(path)

    def long_line(self, path: str, file_id: str, offset: int, length: int) -> None:
        pass
