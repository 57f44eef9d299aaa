import gzip
import os

from producers.tail.fingerprint import FINGERPRINT_BYTES, fingerprint_bytes, fingerprint_path


def test_fingerprint_covers_the_first_line_only():
    first = b"2026-11-26 01:00:00 1vXyZa-000AbC-12 <= a@example.com\n"
    assert fingerprint_bytes(first + b"one\n") == fingerprint_bytes(first + b"two\nthree\n")
    assert fingerprint_bytes(first) != fingerprint_bytes(first.replace(b"01:00", b"01:01"))


def test_incomplete_first_line_has_no_identity_until_it_ends():
    assert fingerprint_bytes(b"") is None
    assert fingerprint_bytes(b"2026-11-26 01:00:00 no newline yet") is None
    assert fingerprint_bytes(b"2026-11-26 01:00:00 no newline yet\n") is not None


def test_a_file_that_can_no_longer_grow_is_identified_without_a_newline():
    assert fingerprint_bytes(b"short and final", complete=True) is not None
    assert fingerprint_bytes(b"", complete=True) is None


def test_first_line_longer_than_the_fingerprint_uses_its_first_bytes():
    head = b"x" * FINGERPRINT_BYTES
    assert fingerprint_bytes(head) is not None
    assert fingerprint_bytes(head + b"more of the same line\n") == fingerprint_bytes(head)


def test_identity_survives_rename_and_gzip(tmp_path):
    path = tmp_path / "exim_mainlog"
    path.write_bytes(b"2026-11-26 01:00:00 first\n2026-11-26 01:00:01 second\n")
    identity = fingerprint_path(path)
    assert identity is not None
    os.rename(path, tmp_path / "exim_mainlog.1")
    assert fingerprint_path(tmp_path / "exim_mainlog.1") == identity
    with gzip.open(tmp_path / "exim_mainlog.1.gz", "wb") as out:
        out.write((tmp_path / "exim_mainlog.1").read_bytes())
    assert fingerprint_path(tmp_path / "exim_mainlog.1.gz") == identity
