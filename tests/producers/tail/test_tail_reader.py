import os

import pytest

from producers.tail.reader import FileTruncatedError, LineSplitter, PlainReader


def lines_of(chunks):
    return [(offset, line) for chunk in chunks for offset, line in zip(chunk.offsets, chunk.lines, strict=True)]


def feed(splitter, *pieces):
    return [c for c in (splitter.consume(piece) for piece in pieces) if c is not None]


def test_only_whole_lines_are_handed_out_when_writes_split_lines():
    splitter = LineSplitter("id", "log", 0, max_line_bytes=1024)
    chunks = feed(splitter, b"alpha\nbe", b"t", b"a\ngamma", b"\n")
    assert lines_of(chunks) == [(0, b"alpha"), (6, b"beta"), (11, b"gamma")]
    assert chunks[-1].end == 17
    assert splitter.position == 17 and not splitter.has_partial


def test_empty_lines_keep_their_offsets():
    splitter = LineSplitter("id", "log", 100, max_line_bytes=1024)
    assert lines_of(feed(splitter, b"\n\nx\n")) == [(100, b""), (101, b""), (102, b"x")]


def test_invalid_utf8_is_kept_byte_for_byte():
    raw = b"caf\xe9 \xff\xfe \xc3\x28 end"
    splitter = LineSplitter("id", "log", 0, max_line_bytes=1024)
    assert lines_of(feed(splitter, raw + b"\n")) == [(0, raw)]


def test_long_line_in_one_read_is_cut_and_marked():
    splitter = LineSplitter("id", "log", 0, max_line_bytes=10)
    chunk = splitter.consume(b"short\n" + b"L" * 25 + b"\nafter\n")
    assert chunk is not None
    assert chunk.lines == [b"short", b"L" * 10, b"after"]
    assert chunk.offsets == [0, 6, 32]
    assert chunk.truncated == [6]
    assert chunk.end == 38


def test_long_line_across_reads_is_bounded_and_the_rest_discarded():
    reported = []
    splitter = LineSplitter("id", "log", 0, max_line_bytes=8, on_long_line=lambda o, n: reported.append(o))
    chunks = feed(splitter, b"ok\nAAAAAA", b"AAAAAAAAAA", b"AAAAAAAA", b"AA\nnext\n")
    assert lines_of(chunks) == [(0, b"ok"), (3, b"AAAAAAAA"), (30, b"next")]
    assert chunks[-1].truncated == [3]
    assert chunks[-1].end == 35
    assert reported == [3]
    # the over-long line costs at most max_line_bytes of memory while it is being discarded
    assert not splitter._partial


def test_finish_hands_out_the_unterminated_last_line():
    splitter = LineSplitter("id", "log", 0, max_line_bytes=64)
    feed(splitter, b"one\ntwo")
    tail = splitter.finish()
    assert tail is not None and tail.lines == [b"two"] and tail.offsets == [4] and tail.end == 7
    assert splitter.finish() is None


def test_plain_reader_notices_truncation_below_its_offset(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(b"first line\nsecond line\n")
    fd = os.open(path, os.O_RDONLY)
    reader = PlainReader(fd, _identity(path), str(path), 0, 1024)
    try:
        assert reader.read(1 << 16).lines == [b"first line", b"second line"]
        os.truncate(path, 0)
        with pytest.raises(FileTruncatedError):
            reader.read(1 << 16)
    finally:
        reader.close()


def test_plain_reader_never_hands_out_new_content_after_copytruncate(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(b"old first\n")
    fd = os.open(path, os.O_RDONLY)
    reader = PlainReader(fd, _identity(path), str(path), 0, 1024)
    try:
        assert reader.read(1 << 16).lines == [b"old first"]
        # truncated and refilled past the old offset before the reader looks again
        path.write_bytes(b"new first line, longer\nnew second\n")
        with pytest.raises(FileTruncatedError):
            reader.read(1 << 16)
    finally:
        reader.close()


def _identity(path):
    from producers.tail.fingerprint import fingerprint_path

    identity = fingerprint_path(path)
    assert identity is not None
    return identity
