"""``TailEngine``: finds the files to follow, opens readers at the right offset and polls them.

A scan globs the configured patterns (the *live* paths) plus the usual rotated names of each plain path
(``.1``, ``.01`` and their ``.gz``), identifies every file by fingerprint and opens a reader for each
identity it should read. Readers of files that left the live paths (renamed or deleted) keep reading
their open descriptor and close only once drained and quiet for ``rotate_wait`` seconds.
"""

from __future__ import annotations

import glob
import logging
import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from producers.tail.fingerprint import fingerprint_bytes, gzip_head, is_gzip, read_head
from producers.tail.reader import FileTruncatedError, GzipReader, PlainReader
from producers.tail.types import Chunk, NoEvents, StartPosition, TailEvents

log = logging.getLogger(__name__)

ROTATED_SUFFIXES = (".01.gz", ".1.gz", ".01", ".1")
DEFAULT_READ_BYTES = 1 << 20
END_ALIGN_BYTES = 1 << 16


@dataclass(slots=True, frozen=True)
class KnownFile:
    """What the engine needs to know about a file it met before (from the checkpoint)."""

    offset: int
    done: bool = False  # read to its end and no longer growing


Reader = PlainReader | GzipReader


class TailEngine:
    """Follows files across rotation, truncation and deletion; see docs/shipper.md."""

    def __init__(
        self,
        patterns: Sequence[str],
        known: Mapping[str, KnownFile] | None = None,
        *,
        start: StartPosition = StartPosition.END,
        max_line_bytes: int = 64 * 1024,
        rotate_wait: float = 5.0,
        scan_interval: float = 1.0,
        read_bytes: int = DEFAULT_READ_BYTES,
        include_rotated: bool = True,
        events: TailEvents | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.patterns = list(patterns)
        self.start = start
        self.max_line_bytes = max_line_bytes
        self.rotate_wait = rotate_wait
        self.scan_interval = scan_interval
        self.read_bytes = read_bytes
        self.include_rotated = include_rotated
        self.events = events or NoEvents()
        self._clock = clock
        self.positions: dict[str, int] = {fid: k.offset for fid, k in (known or {}).items()}
        self.done: set[str] = {fid for fid, k in (known or {}).items() if k.done}
        self.readers: dict[str, Reader] = {}  # by identity, oldest first
        self._live: set[str] = set()  # identities currently at a live path
        self._last_data: dict[str, float] = {}
        self._last_scan = float("-inf")
        # Only the first scan of a shipper without any checkpoint applies ``start``; once there is history,
        # a file we do not know was born while we were not looking and is read from its beginning.
        self._fresh = not self.positions
        self._markers: list[Chunk] = []

    # -- public ---------------------------------------------------------------------------------------

    def poll(self, max_bytes: int = 1 << 22) -> list[Chunk]:
        """Read what is available, at most about ``max_bytes``; never blocks.

        The last chunk of a file the engine has finished has ``final`` set (and maybe no lines).
        """
        now = self._clock()
        self.maybe_scan(now)
        chunks, self._markers = self._markers, []
        budget = max_bytes
        for reader in list(self.readers.values()):
            if budget <= 0:
                break
            budget -= self._read(reader, budget, now, chunks)
        return chunks

    def maybe_scan(self, now: float | None = None) -> None:
        """Scan if ``scan_interval`` has passed; also worth calling while not reading (back-pressure),
        so that files rotated meanwhile are opened and stay readable after they are deleted."""
        now = self._clock() if now is None else now
        if now - self._last_scan >= self.scan_interval or not self.readers:
            self.scan()

    def scan(self) -> None:
        """Look for new, renamed and deleted files now."""
        self._last_scan = self._clock()
        by_dev_ino: dict[tuple[int, int], Reader] = {r.dev_ino: r for r in self.readers.values()}
        live_paths = self._live_paths()
        live_now: set[str] = set()
        # Rotated names first, so that a file found together with its successor is read before it.
        candidates: list[tuple[str, bool]] = []
        if self.include_rotated:
            seen = set(live_paths)
            for path in live_paths:
                if path.endswith(".gz"):
                    continue
                for suffix in ROTATED_SUFFIXES:
                    if path + suffix not in seen:
                        seen.add(path + suffix)
                        candidates.append((path + suffix, False))
        candidates.extend((p, True) for p in live_paths)
        for path, live in candidates:
            try:
                stat = os.stat(path)
            except OSError:
                continue
            reader = by_dev_ino.get((stat.st_dev, stat.st_ino))
            if reader is not None:
                if live:
                    live_now.add(reader.file_id)
                reader.path = path
                continue
            try:
                reader = self._open(path, live)
            except OSError as error:
                log.warning("cannot open %s: %s", path, error)
                continue
            if reader is not None and live:
                live_now.add(reader.file_id)
        for file_id in self._live - live_now:
            reader = self.readers.get(file_id)
            if isinstance(reader, PlainReader):
                self.events.rotated(reader.path, file_id)
        self._live = live_now
        self._fresh = False

    def bytes_behind(self) -> int:
        """Bytes in open plain files not read yet."""
        return sum(max(0, r.size() - r.position) for r in self.readers.values() if isinstance(r, PlainReader))

    def close(self) -> None:
        for reader in list(self.readers.values()):
            self._close(reader, reason="shutdown")

    # -- internals ------------------------------------------------------------------------------------

    def _live_paths(self) -> list[str]:
        paths: list[str] = []
        for pattern in self.patterns:
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            paths.extend(m for m in matches if m not in paths)
        return paths

    def _open(self, path: str, live: bool) -> Reader | None:
        if is_gzip(path):
            return self._open_gzip(path)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            file_id = fingerprint_bytes(read_head(fd))
            if file_id is None or file_id in self.readers or file_id in self.done:
                os.close(fd)
                return None
            size = os.fstat(fd).st_size
            if file_id in self.positions:
                offset, reason = self.positions[file_id], "checkpoint"
                if size < offset:
                    self.events.truncated(path, file_id, offset, size)
                    offset, reason = 0, "truncated while away"
            elif not self._fresh:
                offset, reason = 0, "new file"
            elif not live:
                # A rotated file from before our time: remember it as finished so that later scans,
                # which read unknown files from their beginning, leave it alone too.
                os.close(fd)
                self.done.add(file_id)
                self.positions[file_id] = size
                self._markers.append(Chunk(file_id, path, [], [], size, final=True))
                return None
            elif self.start is StartPosition.BEGINNING:
                offset, reason = 0, "start at beginning"
            else:
                offset, reason = _last_line_end(fd, size), "start at end"
        except BaseException:
            os.close(fd)
            raise
        reader = PlainReader(fd, file_id, path, offset, self.max_line_bytes, self._long_line_reporter(path, file_id))
        return self._register(reader, reason)

    def _open_gzip(self, path: str) -> Reader | None:
        head = gzip_head(path)
        file_id = None if head is None else fingerprint_bytes(head, complete=True)
        if file_id is None or file_id in self.readers or file_id in self.done:
            return None
        if file_id not in self.positions:
            return None  # never start a compressed file without a checkpoint that says it is unfinished
        reader = GzipReader(path, file_id, self.positions[file_id], self.max_line_bytes,
                            self._long_line_reporter(path, file_id))
        return self._register(reader, "unfinished file, now compressed")

    def _register(self, reader: Reader, reason: str) -> Reader:
        if reader.file_id not in self.positions:
            # An empty chunk puts the starting offset in the checkpoint before any line is read.
            self._markers.append(Chunk(reader.file_id, reader.path, [], [], reader.position))
        self.readers[reader.file_id] = reader
        self.positions[reader.file_id] = reader.position
        self._last_data[reader.file_id] = self._clock()
        self.events.opened(reader.path, reader.file_id, reader.position, reason)
        return reader

    def _long_line_reporter(self, path: str, file_id: str) -> Callable[[int, int], None]:
        def report(offset: int, length: int) -> None:
            self.events.long_line(path, file_id, offset, length)
        return report

    def _read(self, reader: Reader, budget: int, now: float, chunks: list[Chunk]) -> int:
        """Read one file until its end or ``budget`` bytes; returns the bytes consumed."""
        used = 0
        while used < budget:
            try:
                chunk = reader.read(min(self.read_bytes, budget - used))
            except FileTruncatedError:
                assert isinstance(reader, PlainReader)
                self._truncated(reader)
                return used
            except (EOFError, OSError, zlib.error) as error:
                log.warning("cannot read %s yet: %s", reader.path, error)
                self._close(reader, reason="unreadable")
                return used
            if chunk is None:
                if isinstance(reader, GzipReader):
                    if not reader.finished:
                        continue
                    self._finish(reader, chunks, reason="end of compressed file")
                    return used
                if reader.at_eof():
                    self._maybe_close(reader, now, chunks)
                    return used
                continue  # a line longer than the read size: keep reading
            self._last_data[reader.file_id] = now
            self.positions[reader.file_id] = chunk.end
            used += chunk.byte_size
            chunks.append(chunk)
        return used

    def _truncated(self, reader: PlainReader) -> None:
        self.events.truncated(reader.path, reader.file_id, reader.read_offset, reader.size())
        # The old identity stays in ``positions``: a copy made by copytruncate (``.1``) resumes there.
        self._close(reader, reason="truncated")
        self._last_scan = float("-inf")

    def _maybe_close(self, reader: PlainReader, now: float, chunks: list[Chunk]) -> None:
        if reader.file_id in self._live and not reader.deleted():
            return
        if self._clock() - self._last_data.get(reader.file_id, now) < self.rotate_wait:
            return
        try:
            reader.check_intact()
        except FileTruncatedError:
            self._truncated(reader)
            return
        self._finish(reader, chunks, reason="deleted" if reader.deleted() else "rotated away")

    def _finish(self, reader: Reader, chunks: list[Chunk], reason: str) -> None:
        chunk = reader.finish() or Chunk(reader.file_id, reader.path, [], [], reader.position)
        chunk.final = True
        chunks.append(chunk)
        self.positions[reader.file_id] = reader.position
        self.done.add(reader.file_id)
        self._close(reader, reason=reason)

    def _close(self, reader: Reader, *, reason: str) -> None:
        self.readers.pop(reader.file_id, None)
        self._last_data.pop(reader.file_id, None)
        reader.close()
        self.events.closed(reader.path, reader.file_id, reader.position, reason)


def _last_line_end(fd: int, size: int) -> int:
    """Offset just past the last newline, so reading "from the end" never starts mid-line."""
    start = max(0, size - END_ALIGN_BYTES)
    tail = os.pread(fd, size - start, start)
    newline = tail.rfind(b"\n")
    return start + newline + 1 if newline >= 0 else size

