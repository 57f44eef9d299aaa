"""Readers turn the bytes of one file into whole lines with their offsets.

``LineSplitter`` keeps the unfinished last line between reads and cuts over-long lines; ``PlainReader``
reads a regular file with ``pread`` (so it never depends on a shared file position) and notices when the
file is truncated under it; ``GzipReader`` reads a compressed rotated file from the start.
"""

from __future__ import annotations

import gzip
import os
import sys
import zlib
from collections.abc import Callable
from itertools import accumulate

from producers.tail.fingerprint import fingerprint_bytes, read_head
from producers.tail.types import Chunk

LongLineCallback = Callable[[int, int], None]  # (offset, bytes seen so far)
ReadInto = Callable[[memoryview], "int | None"]  # a file's ``readinto``
_PLUS_ONE = (1).__add__


class LineSplitter:
    """Splits a byte stream that starts at ``position`` into whole lines."""

    def __init__(self, file_id: str, path: str, position: int, max_line_bytes: int,
                 on_long_line: LongLineCallback | None = None) -> None:
        self.file_id = file_id
        self.path = path
        self.position = position  # just past the last whole line handed out
        self.read_offset = position  # where the next read starts
        self.max_line_bytes = max_line_bytes
        self._partial = b""
        self._long_head: bytes | None = None  # kept part of an over-long line being discarded
        self._on_long_line = on_long_line
        self._buffer: bytearray | None = None  # reused by ``fill``

    @property
    def has_partial(self) -> bool:
        return bool(self._partial) or self._long_head is not None

    def consume(self, data: bytes) -> Chunk | None:
        self.read_offset += len(data)
        if self._long_head is None:
            if self._partial:
                data = self._partial + data
            last_newline = data.rfind(b"\n")
            if last_newline >= 0 and _lines_fit(data, last_newline, self.max_line_bytes):
                # The usual case: no line to cut, so the whole lines go out as one block of the file's bytes.
                start = self.position
                self.position = start + last_newline + 1
                self._keep_tail(data[last_newline + 1:])
                return Chunk.block(self.file_id, self.path, start, data, 0, last_newline + 1)
            return self._split(data, last_newline, [], [], [])
        newline = data.find(b"\n")
        if newline < 0:
            return None
        offsets, lines, truncated = [self.position], [self._long_head], [self.position]
        self._long_head = None
        self.position = self.read_offset - len(data) + newline + 1
        data = data[newline + 1:]
        return self._split(data, data.rfind(b"\n"), offsets, lines, truncated)

    def fill(self, readinto: ReadInto, size: int) -> tuple[Chunk | None, int]:
        """Read up to ``size`` bytes with ``readinto`` and split them like ``consume``: (chunk, bytes read).

        The bytes are read into a buffer this splitter reuses, behind a copy of the unfinished line, so
        nothing is copied as a whole; a block chunk refers to that buffer. The buffer is reused only once
        nothing else refers to it any more (a new one is made while a chunk from the last call is alive).
        """
        keep = len(self._partial)
        buffer = self._buffer
        if buffer is None or len(buffer) < keep + size or sys.getrefcount(buffer) > 3:  # attribute, local, argument
            buffer = self._buffer = bytearray(self.max_line_bytes + size)
        buffer[:keep] = self._partial
        with memoryview(buffer) as view, view[keep:keep + size] as target:
            read = readinto(target) or 0
        if not read:
            return None, 0
        if self._long_head is not None:
            return self.consume(bytes(buffer[keep:keep + read])), read
        self.read_offset += read
        end = keep + read
        last_newline = buffer.rfind(b"\n", 0, end)
        if last_newline >= 0 and _lines_fit(buffer, last_newline, self.max_line_bytes):
            start = self.position
            self.position = start + last_newline + 1
            self._keep_tail(bytes(buffer[last_newline + 1:end]))
            return Chunk.block(self.file_id, self.path, start, buffer, 0, last_newline + 1), read
        return self._split(bytes(buffer[:end]), last_newline, [], [], []), read

    def _split(self, data: bytes, last_newline: int, offsets: list[int], lines: list[bytes],
               truncated: list[int]) -> Chunk | None:
        """Line by line (a line to cut, or the end of one being discarded): ``data`` starts at ``position``."""
        if last_newline < 0:
            tail = data
        else:
            parts = data[:last_newline].split(b"\n")
            tail = data[last_newline + 1:]
            first = len(offsets)
            # offsets[i + 1] = offsets[i] + len(line i) + 1, computed without a Python-level loop
            starts = list(accumulate(map(_PLUS_ONE, map(len, parts)), initial=self.position))
            self.position = starts.pop()
            offsets.extend(starts)
            limit = self.max_line_bytes
            if max(map(len, parts)) > limit:
                for index, part in enumerate(parts):
                    if len(part) > limit:
                        line_offset = offsets[first + index]
                        truncated.append(line_offset)
                        parts[index] = part[:limit]
                        self._report_long(line_offset, len(part))
            lines.extend(parts)
        self._keep_tail(tail)
        if not lines:
            return None
        return Chunk(self.file_id, self.path, offsets, lines, self.position, truncated)

    def _keep_tail(self, tail: bytes) -> None:
        """Keep the unfinished last line, or the kept part of it once it is too long."""
        if len(tail) > self.max_line_bytes:
            self._long_head = tail[: self.max_line_bytes]
            self._partial = b""
            self._report_long(self.position, len(tail))
        else:
            self._partial = tail

    def finish(self) -> Chunk | None:
        """The unterminated last line, for a file that can no longer grow."""
        if self._long_head is not None:
            line, truncated = self._long_head, [self.position]
        elif self._partial:
            line, truncated = self._partial, []
        else:
            return None
        chunk = Chunk(self.file_id, self.path, [self.position], [line], self.read_offset, truncated)
        self._partial, self._long_head = b"", None
        self.position = self.read_offset
        return chunk

    def _report_long(self, offset: int, length: int) -> None:
        if self._on_long_line is not None:
            self._on_long_line(offset, length)


def _lines_fit(data: bytes | bytearray, last_newline: int, limit: int) -> bool:
    """Whether no line of ``data[:last_newline + 1]`` is longer than ``limit`` (newline not counted).

    Jumps from newline to newline up to ``limit`` bytes at a time instead of measuring each line.
    """
    position = 0
    while last_newline - position > limit:
        newline = data.rfind(b"\n", position, position + limit + 1)
        if newline < 0:
            return False
        position = newline + 1
    return True


class FileTruncatedError(Exception):
    """The file was truncated or its content replaced since the reader opened it."""


class PlainReader(LineSplitter):
    """Reads a regular file through an open descriptor, which survives renames and deletion."""

    def __init__(self, fd: int, file_id: str, path: str, position: int, max_line_bytes: int,
                 on_long_line: LongLineCallback | None = None) -> None:
        super().__init__(file_id, path, position, max_line_bytes, on_long_line)
        self.fd = fd
        stat = os.fstat(fd)
        self.dev_ino = (stat.st_dev, stat.st_ino)

    def read(self, max_bytes: int) -> Chunk | None:
        """Up to ``max_bytes`` more bytes as whole lines; None when there is no whole line yet.

        Raises ``FileTruncatedError`` when the file was cut below what was read, or rewritten from the
        start (checked after each read, so bytes read from new content are never handed out).
        """
        data = os.pread(self.fd, max_bytes, self.read_offset)
        if not data:
            self.check_intact()
            return None
        self.check_intact()
        return self.consume(data)

    def check_intact(self) -> None:
        if fingerprint_bytes(read_head(self.fd)) != self.file_id:
            raise FileTruncatedError(self.path)
        if os.fstat(self.fd).st_size < self.read_offset:
            raise FileTruncatedError(self.path)

    def at_eof(self) -> bool:
        return os.fstat(self.fd).st_size <= self.read_offset

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def deleted(self) -> bool:
        return os.fstat(self.fd).st_nlink == 0

    def close(self) -> None:
        os.close(self.fd)


class GzipReader(LineSplitter):
    """Reads a gzip file from its start, skipping (never seeking) to ``position`` in the decompressed stream.

    ``read`` raises ``EOFError`` when the archive ends early (still being written); the caller closes the
    reader and tries again later from the position reached.
    """

    def __init__(self, path: str, file_id: str, position: int, max_line_bytes: int,
                 on_long_line: LongLineCallback | None = None) -> None:
        super().__init__(file_id, path, position, max_line_bytes, on_long_line)
        self._handle = gzip.open(path, "rb")  # noqa: SIM115 - closed by close()
        stat = os.fstat(self._handle.fileno())
        self.dev_ino = (stat.st_dev, stat.st_ino)
        self.finished = False
        self._skip = position

    def read(self, max_bytes: int) -> Chunk | None:
        try:
            while self._skip:
                skipped = len(self._handle.read(min(self._skip, 1 << 20)))
                if not skipped:
                    raise EOFError("gzip stream shorter than the checkpointed offset")
                self._skip -= skipped
            data = self._handle.read(max_bytes)
        except zlib.error as error:
            raise EOFError(str(error)) from error
        if not data:
            self.finished = True
            return None
        return self.consume(data)

    def close(self) -> None:
        self._handle.close()
