import itertools
from pathlib import Path

import pytest

from producers.settings import ShipperSettings
from producers.shipper import encode_chunk, split_chunk, use_compiled_crc32c
from producers.tail import Chunk, StartPosition
from trackdelivery.records import decode_batch


def chunk_of(lines, start=100, final=False, truncated=()):
    offsets, offset = [], start
    for line in lines:
        offsets.append(offset)
        offset += len(line) + 1
    return Chunk("fid", "/var/log/exim_mainlog", offsets, list(lines), offset, list(truncated), final=final)


def test_split_keeps_every_line_once_with_contiguous_ends():
    chunk = chunk_of([b"x" * n for n in (10, 300, 5, 5, 5, 900, 1, 0, 40)], final=True, truncated=[111])
    pieces = list(split_chunk(chunk, record_bytes=256))
    assert [line for piece in pieces for line in piece.lines] == chunk.lines
    assert [o for piece in pieces for o in piece.offsets] == chunk.offsets
    assert all(piece.end == after.start for piece, after in itertools.pairwise(pieces))
    assert pieces[-1].end == chunk.end
    assert [piece.final for piece in pieces] == [False] * (len(pieces) - 1) + [True]
    assert [o for piece in pieces for o in piece.truncated] == [111]
    # a record holds the lines that start within record_bytes of its first line (at least one)
    assert all(piece.offsets[-1] - piece.start < 256 for piece in pieces)
    assert [len(piece.lines) for piece in pieces] == [2, 4, 3]


def test_records_round_trip_lines_offsets_and_invalid_utf8():
    lines = [b"2026-11-26 01:00:00 plain", b"bad \xff\xfe bytes", b"", "ünïcode".encode()]
    chunk = chunk_of(lines, start=0, truncated=[26])
    decoded = decode_batch(encode_chunk("mx1", chunk))
    assert [(r.server, r.file, r.offset, r.data, r.truncated) for r in decoded] == [
        ("mx1", "fid", offset, line, offset == 26) for offset, line in zip(chunk.offsets, lines, strict=True)
    ]


def test_compiled_crc32c_is_installed_and_correct():
    from kafka.record import default_records
    from kafka.record._crc32c import crc

    use_compiled_crc32c()
    data = memoryview(bytearray(range(256)) * 50)[7:]
    assert default_records.calc_crc32c(data) == crc(data)


def test_settings_precedence_flags_then_env_then_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "shipper.toml"
    config.write_text('[shipper]\nserver = "from-toml"\ntopic = "t.toml"\nlinger_ms = 7\n'
                      'paths = ["/a", "/b/*.log"]\nstart_position = "beginning"\n')
    monkeypatch.setenv("TRACKDELIVERY_TOPIC", "t.env")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9092")
    settings = ShipperSettings.load(config, server="from-flag", linger_ms=None)
    assert settings.server == "from-flag"
    assert settings.topic == "t.env"
    assert settings.linger_ms == 7
    assert settings.paths == ["/a", "/b/*.log"]
    assert settings.start_position is StartPosition.BEGINNING
    assert settings.bootstrap_servers == "kafka.example:9092"
    with pytest.raises(ValueError, match="frozen"):
        settings.topic = "other"  # type: ignore[misc]


def test_settings_defaults_and_comma_separated_paths(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("TRACKDELIVERY_PATHS", "/var/log/exim_mainlog, /var/log/exim_other")
    settings = ShipperSettings.load()
    assert settings.paths == ["/var/log/exim_mainlog", "/var/log/exim_other"]
    assert settings.topic == "exim.mainlog.raw" and settings.server
    assert settings.start_position is StartPosition.END
    with pytest.raises(ValueError):
        ShipperSettings.load(compression="snappy")
