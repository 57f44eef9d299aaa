import itertools
from pathlib import Path

import pytest

from producers.encoding import MAX_RECORD_BYTES, encode_pieces
from producers.kafka import producer_config
from producers.settings import ShipperSettings
from producers.shipper import encode_chunk, split_chunk
from producers.tail import Chunk, StartPosition
from producers.tail.reader import LineSplitter
from trackdelivery.records import decode_batch, encode_block


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


def block_of(lines, start=100, final=False):
    return Chunk.block("fid", "/var/log/exim_mainlog", start, b"".join(line + b"\n" for line in lines), final=final)


def test_a_block_splits_like_the_same_lines_as_lists():
    lines = [b"x" * n for n in (10, 300, 5, 5, 5, 900, 1, 0, 40, 254, 255, 0, 0, 1)]
    for record_bytes in (1, 2, 11, 12, 256, 257, 300, 1000, 5000):
        for final in (False, True):
            listed = list(split_chunk(chunk_of(lines, final=final), record_bytes))
            blocks = list(split_chunk(block_of(lines, final=final), record_bytes))
            assert all(piece.buffer is not None for piece in blocks)
            assert blocks == listed, record_bytes
            assert [piece.line_count for piece in blocks] == [len(piece.lines) for piece in listed]
            assert [decode_batch(encode_chunk("mx1", piece)) for piece in blocks] == [
                decode_batch(encode_chunk("mx1", piece)) for piece in listed]


def test_records_stay_under_a_brokers_message_size_even_when_json_escaping_grows_them():
    """Found by bench/badinput.py: three 65,000-byte lines of control characters are one 195 KB piece, which
    JSON escaping made a 1,065,945-byte record; without compression the broker refused it (over its 1 MiB
    message.max.bytes) and the shipper would have sent it again forever."""
    controls = bytes(c for c in range(1, 32) if c != 0x0A)
    lines = [b"2026-11-26 01:00:00 before"] + [controls * (65_000 // len(controls))] * 3 + [b"after", b"\x00" * 9]
    for chunk in (block_of(lines, start=0, final=True), chunk_of(lines, start=0, final=True, truncated=[27])):
        assert max(len(encode_chunk("mx1", piece)) for piece in split_chunk(chunk, 128 << 10)) > 1 << 20
        pieces = list(encode_pieces("mx1", chunk, 128 << 10))
        assert all(len(value) <= MAX_RECORD_BYTES for _, value in pieces)
        assert all(value == encode_chunk("mx1", piece) for piece, value in pieces)
        decoded = [line for _, value in pieces for line in decode_batch(value)]
        assert [(line.offset, line.data, line.truncated) for line in decoded] == [
            (offset, line, offset in chunk.truncated) for offset, line in zip(chunk.offsets, lines, strict=True)]
        assert all(piece.end == after.start for (piece, _), (after, _) in itertools.pairwise(pieces))
        assert [piece.final for piece, _ in pieces] == [False] * (len(pieces) - 1) + [True]
    # ordinary lines are not split further than split_chunk does
    plain = block_of([b"x" * 100] * 5000, start=0)
    assert [piece for piece, _ in encode_pieces("mx1", plain, 128 << 10)] == list(split_chunk(plain, 128 << 10))


def test_a_block_knows_its_lines_offsets_and_size():
    block = block_of([b"one", b"", "zwei \u00fc".encode()], start=7)
    assert block.line_count == 3 and block.start == 7 and block.end == 7 + 4 + 1 + 8
    assert block.offsets == [7, 11, 12] and block.lines == [b"one", b"", "zwei \u00fc".encode()]
    assert block.byte_size == 13 and block.truncated == [] and not block.final


def test_block_records_carry_text_without_offsets_and_decode_to_the_same_lines():
    lines = [b"2026-11-26 01:00:00 plain", b"", "\u00fcn\u00efcode \"quoted\" \\ tab\t".encode(), b"\r end"]
    value = encode_chunk("mx1", block_of(lines, start=1000))
    assert b'"offsets"' not in value and b'"v":2' in value
    assert decode_batch(value) == decode_batch(encode_chunk("mx1", chunk_of(lines, start=1000)))
    assert [(line.offset, line.data) for line in decode_batch(value)] == list(
        zip(chunk_of(lines, start=1000).offsets, lines, strict=True))


def test_a_block_with_invalid_utf8_falls_back_to_listed_lines():
    lines = [b"fine", b"bad \xff\xfe bytes", b"caf\xe9"]
    value = encode_chunk("mx1", block_of(lines, start=5))
    assert b'"offsets":[5,10,23]' in value
    assert [(line.offset, line.data) for line in decode_batch(value)] == [(5, lines[0]), (10, lines[1]), (23, lines[2])]


def test_a_text_record_whose_end_disagrees_is_refused():
    value = encode_block("mx1", "fid", "p", 0, b"one\ntwo\n").replace(b'"end":8', b'"end":9')
    with pytest.raises(ValueError):
        decode_batch(value)


@pytest.mark.parametrize("max_line_bytes", [4, 5, 6, 7, 64])
def test_splitter_blocks_and_cut_lines_give_the_same_lines(max_line_bytes):
    data = b"ab\nabcdef\n\nabcde\nabcdefg\nxy\n" * 3 + b"partial"
    expected = LineSplitter("id", "p", 0, max_line_bytes)
    got = LineSplitter("id", "p", 0, max_line_bytes)
    whole = [(o, line) for c in [expected.consume(data)] if c for o, line in zip(c.offsets, c.lines, strict=True)]
    pieces = []
    for step in range(0, len(data), 5):  # in pieces: blocks where no line is too long, lists elsewhere
        chunk = got.consume(data[step:step + 5])
        if chunk is not None:
            pieces.extend(zip(chunk.offsets, chunk.lines, strict=True))
    assert pieces == whole
    assert all(len(line) <= max_line_bytes for _, line in whole)
    assert got.position == expected.position


def test_producer_is_idempotent_acks_all_and_partitions_like_the_java_client():
    config = producer_config(ShipperSettings.load(server="mx1", bootstrap_servers="k1:9092, k2:9093"))
    assert config["acks"] == "all" and config["enable.idempotence"] is True
    assert config["partitioner"] == "murmur2_random"
    assert config["bootstrap.servers"] == "k1:9092,k2:9093"
    assert config["compression.type"] == "lz4" and config["security.protocol"] == "plaintext"


def test_producer_takes_sasl_and_tls_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "shipper")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "secret")
    monkeypatch.setenv("KAFKA_SSL_CERTFILE", "/etc/client.pem")
    config = producer_config(ShipperSettings.load(server="mx1"))
    assert config["security.protocol"] == "sasl_ssl" and config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (config["sasl.username"], config["sasl.password"]) == ("shipper", "secret")
    assert config["ssl.ca.location"] == "probe"
    assert config["ssl.certificate.location"] == config["ssl.key.location"] == "/etc/client.pem"


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


@pytest.mark.parametrize("max_line_bytes", [4, 6, 64])
@pytest.mark.parametrize("size", [1, 3, 7, 64])
def test_fill_reads_the_same_lines_as_consume(max_line_bytes, size):
    import io

    data = b"ab\nabcdef\n\nabcde\nabcdefg\nxy\n" * 5 + b"abcdefghij" * 3 + b"\nlast"
    expected = LineSplitter("id", "p", 0, max_line_bytes)
    want = [(o, line) for c in [expected.consume(data), expected.finish()] if c
            for o, line in zip(c.offsets, c.lines, strict=True)]
    splitter, stream, got = LineSplitter("id", "p", 0, max_line_bytes), io.BytesIO(data), []
    while True:
        chunk, read = splitter.fill(stream.readinto, size)
        if not read:
            break
        if chunk is not None:
            got.extend(zip(chunk.offsets, chunk.lines, strict=True))
    tail = splitter.finish()
    got.extend(zip(tail.offsets, tail.lines, strict=True) if tail else [])
    assert got == want
    assert all(type(line) is bytes for _, line in got)


def test_fill_never_overwrites_a_block_still_in_use():
    import io

    splitter = LineSplitter("id", "p", 0, 64)
    stream = io.BytesIO(b"one\ntwo\n" + b"three\nfour\n")
    first, _ = splitter.fill(stream.readinto, 8)
    second, _ = splitter.fill(stream.readinto, 11)
    assert first is not None and second is not None
    assert first.buffer is not second.buffer
    assert (first.lines, second.lines) == ([b"one", b"two"], [b"three", b"four"])
    del first, second
    reused = id(splitter._buffer)
    third, _ = splitter.fill(io.BytesIO(b"five\n").readinto, 5)
    assert third is not None and id(third.buffer) == reused and third.lines == [b"five"]
