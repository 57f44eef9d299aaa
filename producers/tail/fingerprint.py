"""File identity: a hash of the file's first line, so a file keeps its identity across renames.

The fingerprint is the blake2b digest of the bytes up to and including the first newline, or of the
first ``FINGERPRINT_BYTES`` bytes when the first line is longer. A file whose first line is not complete
yet (shorter than ``FINGERPRINT_BYTES`` and no newline) has no identity: the engine waits for it, because
hashing a prefix that is still growing would give the same file a different identity on the next look.
Exim lines start with a timestamp and carry pids or message ids, so two files rarely share a first line;
when they do they share an identity too (see docs/shipper.md). Device and inode only serve to recognise
an open file under a new name.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path

FINGERPRINT_BYTES = 1024
GZIP_MAGIC = b"\x1f\x8b"


def fingerprint_bytes(head: bytes, *, complete: bool = False) -> str | None:
    """Identity of a file starting with ``head``; ``complete`` means the file can no longer grow."""
    head = head[:FINGERPRINT_BYTES]
    newline = head.find(b"\n")
    if newline >= 0:
        head = head[: newline + 1]
    elif len(head) < FINGERPRINT_BYTES and not (complete and head):
        return None
    return hashlib.blake2b(head, digest_size=16).hexdigest()


def read_head(fd: int) -> bytes:
    return os.pread(fd, FINGERPRINT_BYTES, 0)


def is_gzip(path: str | Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def gzip_head(path: str | Path) -> bytes | None:
    """The first decompressed bytes, or None while the archive is still being written."""
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read(FINGERPRINT_BYTES)
    except (EOFError, OSError, zlib.error):
        return None


def fingerprint_path(path: str | Path) -> str | None:
    """Identity of the file at ``path`` (decompressed content for gzip files); None if not ready."""
    if is_gzip(path):
        head = gzip_head(path)
        return None if head is None else fingerprint_bytes(head, complete=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        return fingerprint_bytes(read_head(fd))
    finally:
        os.close(fd)
