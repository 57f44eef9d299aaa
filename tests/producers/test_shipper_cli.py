"""``trackdelivery replay`` and ``trackdelivery ship`` end to end against a real Kafka."""

from __future__ import annotations

import gzip
import subprocess
import time
import urllib.request

import pytest

from producers.tail import Checkpointer
from producers.tail.fingerprint import fingerprint_path
from tests.producers.shipper_helpers import TRACKDELIVERY, ShipperProcess, line_text, read_topic, wait_for_lines
from trackdelivery.devenv.ports import free_port

pytestmark = pytest.mark.kafka


def test_replay_sends_plain_and_gzip_files_with_live_identities(tmp_path, kafka_bootstrap, topic_factory):
    plain, old = tmp_path / "exim_mainlog.1", tmp_path / "exim_mainlog.2"
    plain_lines = [line_text(1, n) for n in range(3000)] + [b"caf\xe9 invalid utf-8", b"x" * 5000]
    old_lines = [line_text(2, n) for n in range(2000)]
    plain.write_bytes(b"\n".join(plain_lines) + b"\n")
    old.write_bytes(b"\n".join(old_lines) + b"\n")
    identity_of_old = fingerprint_path(old)
    with gzip.open(f"{old}.gz", "wb") as out:
        out.write(old.read_bytes())
    topic = topic_factory(partitions=1)
    result = subprocess.run([TRACKDELIVERY, "replay", "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                             "--server", "mx9", "--max-line-bytes", "4096", "--record-bytes", "20000",
                             str(plain), f"{old}.gz"], capture_output=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    summary = dict(item.split("=") for item in result.stdout.decode().split())
    assert summary["files"] == "2" and summary["failed"] == "0"
    assert int(summary["lines"]) == len(plain_lines) + len(old_lines)
    lines = read_topic(kafka_bootstrap, topic)
    by_file = {}
    for line in lines:
        by_file.setdefault(line.file, []).append(line)
    assert set(by_file) == {fingerprint_path(plain), identity_of_old}
    got_plain = by_file[fingerprint_path(plain)]
    assert [line.data for line in got_plain] == [*plain_lines[:-1], b"x" * 4096]
    assert got_plain[-1].truncated and not any(line.truncated for line in got_plain[:-1])
    assert got_plain[-1].offset == plain.stat().st_size - 5001
    assert [line.data for line in by_file[identity_of_old]] == old_lines
    assert {line.server for line in lines} == {"mx9"}


def test_ship_serves_metrics_and_starts_at_the_end(tmp_path, kafka_bootstrap, topic_factory):
    log = tmp_path / "exim_mainlog"
    log.write_bytes(b"".join(line_text(0, n) + b"\n" for n in range(100)))  # history: skipped
    port = free_port()
    shipper = ShipperProcess(kafka_bootstrap, topic_factory(partitions=1), [log], tmp_path,
                             extra=["--metrics-port", str(port), "--start-position", "end"])
    shipper.start()
    try:
        shipper.wait_started()
        history_end = log.stat().st_size
        while Checkpointer(shipper.checkpoint_dir).load().get(fingerprint_path(log)) is None:
            time.sleep(0.05)  # the first scan records where it starts
        assert Checkpointer(shipper.checkpoint_dir).load()[fingerprint_path(log)].offset == history_end
        new = [line_text(0, n) for n in range(100, 350)]
        with open(log, "ab") as out:
            out.write(b"".join(line + b"\n" for line in new))
        wait_for_lines(kafka_bootstrap, shipper.topic, set(new))
        deadline = time.monotonic() + 30
        while True:
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            if "trackdelivery_shipper_lines_acked_total 250.0" in metrics or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        assert shipper.stop() == 0, shipper.tail_log()
    assert "trackdelivery_shipper_lines_acked_total 250.0" in metrics, metrics
    assert "trackdelivery_shipper_lines_read_total 250.0" in metrics
    assert "trackdelivery_shipper_truncations_total 0.0" in metrics
    assert {line.data for line in read_topic(kafka_bootstrap, shipper.topic)} == set(new)
