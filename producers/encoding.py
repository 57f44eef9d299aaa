"""Chunks of lines become raw-topic records (``trackdelivery/records.py``); shared by ``ship`` and ``replay``."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from producers.tail.types import Chunk
from trackdelivery.records import encode_batch, encode_block

#: Largest record value: a broker's default message.max.bytes is 1 MiB, and it is checked after compression,
#: so without compression (``--compression none``) a bigger record is refused ("Message size too large")
#: and would be sent again forever. JSON escaping makes a control character 6 bytes (``\u001f``), so the
#: 128-192 KiB of lines of one piece can encode to more than 1 MiB.
MAX_RECORD_BYTES = 960 << 10


def encode_pieces(server: str, chunk: Chunk, record_bytes: int,
                  max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[tuple[Chunk, bytes]]:
    """``(piece, record value)`` for the consecutive pieces of ``chunk`` (``split_chunk``); a piece whose
    record is over ``max_record_bytes`` is split again with half the record size, down to single lines
    (one line of up to max_line_bytes, 64 KiB, encodes to at most 384 KiB)."""
    for piece in split_chunk(chunk, record_bytes):
        value = encode_chunk(server, piece)
        if len(value) > max_record_bytes and record_bytes > 1 and piece.line_count > 1:
            yield from encode_pieces(server, piece, record_bytes // 2, max_record_bytes)
        else:
            yield piece, value


def split_chunk(chunk: Chunk, record_bytes: int) -> Iterator[Chunk]:
    """Consecutive pieces of ``chunk``: the lines that start within ``record_bytes`` of a piece's first
    line (at least one). A block is cut into blocks of the same buffer with ``rfind``, never line by line."""
    if chunk.buffer is not None:
        yield from _split_block(chunk, chunk.buffer, record_bytes)
        return
    offsets, count = chunk.offsets, len(chunk.offsets)
    lines = chunk.lines
    first = 0
    while first < count:
        last = max(first + 1, bisect_left(offsets, offsets[first] + record_bytes, first))
        end = offsets[last] if last < count else chunk.end
        truncated = [o for o in chunk.truncated if offsets[first] <= o < end] if chunk.truncated else []
        yield Chunk(chunk.file_id, chunk.path, offsets[first:last], lines[first:last], end, truncated,
                    final=chunk.final and last == count)
        first = last


def _split_block(chunk: Chunk, buffer: bytes | bytearray, record_bytes: int) -> Iterator[Chunk]:
    first, hi = chunk.lo, chunk.hi
    if hi - first <= record_bytes:
        yield chunk
        return
    while first < hi:
        if hi - first <= record_bytes:
            stop = hi
        else:
            # the last line starting before first + record_bytes begins after the last newline before it
            last_start = buffer.rfind(b"\n", first, first + record_bytes - 1) + 1 or first
            stop = buffer.index(b"\n", last_start, hi) + 1
        yield Chunk.block(chunk.file_id, chunk.path, chunk.start + first - chunk.lo, buffer, first, stop,
                          final=chunk.final and stop == hi)
        first = stop


def encode_chunk(server: str, chunk: Chunk) -> bytes:
    if chunk.buffer is not None:
        return encode_block(server, chunk.file_id, chunk.path, chunk.start, chunk.buffer, chunk.lo, chunk.hi)
    return encode_batch(server, chunk.file_id, chunk.path, chunk.offsets, chunk.lines, chunk.end,
                        chunk.truncated or None)
