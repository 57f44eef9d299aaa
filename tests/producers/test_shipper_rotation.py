"""The shipper process against a real Kafka while a writer appends at speed and the log rotates.

Every rotation waits until the shipper has opened the file being rotated: the guarantee is for files the
shipper saw at least once (a file created and destroyed between two scans is the documented loss case).
"""

from __future__ import annotations

import gzip
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from producers.tail import Checkpointer
from producers.tail.fingerprint import fingerprint_path
from tests.producers.shipper_helpers import (
    ShipperProcess,
    Writer,
    assert_in_order_per_file,
    line_text,
    wait_for_lines,
)

pytestmark = pytest.mark.kafka

TOTAL_LINES = 31_000
ROTATE_EVERY = 6_000


def wait_until_followed(shipper: ShipperProcess, opened: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while shipper.log_path.read_bytes().count(b'"following file"') < opened:
        assert time.monotonic() < deadline, f"shipper never opened file #{opened}:\n{shipper.tail_log()}"
        assert shipper.process is not None and shipper.process.poll() is None, shipper.tail_log()
        time.sleep(0.02)


def keep_older(rotated: Path, generation: int) -> None:
    if rotated.exists():
        os.rename(rotated, rotated.with_name(f"old-{generation}"))


def rename_create(shipper: ShipperProcess):
    def rotate(path: Path, generation: int) -> None:
        wait_until_followed(shipper, generation + 1)
        keep_older(path.with_name(path.name + ".1"), generation)
        os.rename(path, path.with_name(path.name + ".1"))
    return rotate


def copytruncate(shipper: ShipperProcess):
    def rotate(path: Path, generation: int) -> None:
        wait_until_followed(shipper, generation + 1)
        copy = path.with_name(path.name + ".1")
        keep_older(copy, generation)
        shutil.copyfile(path, copy)
        os.truncate(path, 0)  # nothing is written between copy and truncation: no loss window here
    return rotate


def delete(shipper: ShipperProcess):
    def rotate(path: Path, generation: int) -> None:
        wait_until_followed(shipper, generation + 1)
        os.unlink(path)
    return rotate


def rename_and_gzip(shipper: ShipperProcess):
    def rotate(path: Path, generation: int) -> None:
        wait_until_followed(shipper, generation + 1)
        rotated = path.with_name(path.name + ".1")
        os.rename(path, rotated)
        with gzip.open(f"{rotated}.gz", "wb") as out:  # logrotate's compress, without delaycompress
            out.write(rotated.read_bytes())
        os.unlink(rotated)
    return rotate


@pytest.mark.parametrize("strategy", [rename_create, copytruncate, delete, rename_and_gzip],
                         ids=lambda s: s.__name__)
def test_every_line_arrives_in_order_through_rotation(strategy, tmp_path, kafka_bootstrap, topic_factory):
    log = tmp_path / "exim_mainlog"
    log.touch()
    shipper = ShipperProcess(kafka_bootstrap, topic_factory(partitions=1), [log], tmp_path)
    shipper.start()
    try:
        shipper.wait_started()
        writer = Writer(log, TOTAL_LINES, ROTATE_EVERY, strategy(shipper), burst=100, pause=0.004)
        writer.start()
        writer.join(timeout=240)
        writer.check()
        assert writer.rotations == TOTAL_LINES // ROTATE_EVERY
        lines = wait_for_lines(kafka_bootstrap, shipper.topic, writer.all_lines())
    finally:
        exit_code = shipper.stop()
    assert exit_code == 0, shipper.tail_log()
    assert len(lines) == len({(line.file, line.offset) for line in lines}) == len(writer.all_lines())
    assert_in_order_per_file(lines, writer.written)
    assert {line.server for line in lines} == {"test-mx1"}
    shipper_log = shipper.log_path.read_bytes()
    if strategy is copytruncate:
        assert shipper_log.count(b"file truncated under the reader") == writer.rotations
    # SIGTERM wrote a final checkpoint: the live file is recorded as read to its end
    state = Checkpointer(shipper.checkpoint_dir).load()
    identity = fingerprint_path(log)
    assert identity is not None and state[identity].offset == log.stat().st_size


class ConcurrentWriter(threading.Thread):
    """Appends numbered lines (O_APPEND, 20 per write) while another thread rotates the file under it.

    At each quarter of the lines it waits for the next rotation (``rotated``), so however slow a loaded
    machine makes the rotating thread, at least three rotations happen while lines are being written.
    """

    QUARTERS = 4

    def __init__(self, path: Path, total: int) -> None:
        super().__init__(daemon=True)
        self.path, self.total = path, total
        self.rotated = threading.Semaphore(0)
        self.started = 0  # lines whose write has begun
        self.done = 0  # lines whose write has returned
        self.lines: list[bytes] = []

    def run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            quarter = self.total // self.QUARTERS
            while self.done < self.total:
                if self.done and self.done % quarter < 20 and self.done < quarter * self.QUARTERS:
                    self.rotated.acquire(timeout=60)
                batch = [line_text(0, n) for n in range(self.done, min(self.done + 20, self.total))]
                self.lines.extend(batch)
                self.started += len(batch)
                os.write(fd, b"".join(line + b"\n" for line in batch))
                self.done += len(batch)
                time.sleep(0.001)
        finally:
            os.close(fd)


def test_copytruncate_with_a_concurrent_writer_loses_at_most_the_copy_window(
        tmp_path, kafka_bootstrap, topic_factory):
    log = tmp_path / "exim_mainlog"
    log.touch()
    shipper = ShipperProcess(kafka_bootstrap, topic_factory(partitions=1), [log], tmp_path)
    shipper.start()
    windows: list[tuple[int, int]] = []  # lines in [first, last) may be lost
    try:
        shipper.wait_started()
        writer = ConcurrentWriter(log, 30_000)
        writer.start()
        copy = log.with_name(log.name + ".1")
        while writer.is_alive():
            time.sleep(0.3)
            wait_until_followed(shipper, len(windows) + 1)
            keep_older(copy, len(windows))
            first = writer.done  # every line before this is complete, so it is in the copy
            shutil.copyfile(log, copy)
            os.truncate(log, 0)
            windows.append((first, writer.started))  # every line from here on starts after the truncation
            writer.rotated.release()
        writer.join()
        lost_allowed = {line for first, last in windows for line in writer.lines[first:last]}
        guaranteed = set(writer.lines) - lost_allowed
        lines = wait_for_lines(kafka_bootstrap, shipper.topic, guaranteed)
    finally:
        assert shipper.stop() == 0, shipper.tail_log()
    shipped = [line.data for line in lines]
    assert len(shipped) == len(set(shipped)), "duplicates without a crash"
    assert set(shipped) <= set(writer.lines)
    assert_in_order_per_file(lines, {0: writer.lines})
    window_lost = len(lost_allowed - set(shipped))
    print(f"copytruncate with a concurrent writer: {len(windows)} rotations, {len(lost_allowed)} lines in copy "
          f"windows, {window_lost} of them lost, {len(guaranteed)} guaranteed lines all shipped")
    assert len(windows) >= 3
