"""SIGKILL the shipper at random moments, 20 times, while a writer appends and the log rotates.

Rotations mix rename+create, copytruncate and rename+immediate gzip. A rotation waits until the file it
rotates is in the shipper's saved checkpoint and the previous rotated file is finished: the guarantee
holds for a shipper that saw each file and is at most one rotation behind (docs/guarantees.md).
"""

from __future__ import annotations

import gzip
import os
import random
import shutil
import time
from pathlib import Path

import pytest

from producers.tail import Checkpointer
from producers.tail.fingerprint import fingerprint_path
from tests.producers.shipper_helpers import ShipperProcess, Writer, assert_in_order_per_file, wait_for_lines

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

KILLS = 20
BATCH_BYTES = 256 << 10
TOTAL_LINES = 80_000
ROTATE_EVERY = 4_000


class GatedRotation:
    def __init__(self, shipper: ShipperProcess) -> None:
        self.shipper = shipper
        self.previous: tuple[str, int] | None = None  # identity and size of the last rotated file
        self.kinds: list[str] = []

    def _checkpoint(self) -> dict[str, int]:
        return {file_id: cp.offset for file_id, cp in Checkpointer(self.shipper.checkpoint_dir).load().items()}

    def _wait(self, identity: str) -> None:
        deadline = time.monotonic() + 120
        while True:
            state = self._checkpoint()
            previous_done = self.previous is None or state.get(self.previous[0], -1) >= self.previous[1]
            if identity in state and previous_done:
                return
            assert time.monotonic() < deadline, "shipper never caught up with the rotation"
            time.sleep(0.05)

    def __call__(self, path: Path, generation: int) -> None:
        identity = fingerprint_path(path)
        assert identity is not None
        self._wait(identity)
        rotated = path.with_name(path.name + ".1")
        for older in (rotated, Path(f"{rotated}.gz")):
            if older.exists():
                os.rename(older, path.with_name(f"old-{generation}-{older.name}"))
        size = path.stat().st_size
        kind = ("rename", "copytruncate", "gzip")[generation % 3]
        self.kinds.append(kind)
        if kind == "copytruncate":
            shutil.copyfile(path, rotated)
            os.truncate(path, 0)
        else:
            os.rename(path, rotated)
            if kind == "gzip":
                with gzip.open(f"{rotated}.gz.tmp", "wb") as out:
                    out.write(rotated.read_bytes())
                os.rename(f"{rotated}.gz.tmp", f"{rotated}.gz")
                os.unlink(rotated)
        self.previous = (identity, size)


def test_sigkill_twenty_times_loses_nothing(tmp_path, kafka_bootstrap, topic_factory, record_property):
    log = tmp_path / "exim_mainlog"
    log.touch()
    shipper = ShipperProcess(kafka_bootstrap, topic_factory(partitions=1), [log], tmp_path,
                             extra=["--batch-bytes", str(BATCH_BYTES)])
    rotation = GatedRotation(shipper)
    writer = Writer(log, TOTAL_LINES, ROTATE_EVERY, rotation, burst=50, pause=0.004)
    rng = random.Random(20261126)
    shipper.start()
    try:
        shipper.wait_started()
        writer.start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.05, 1.5))
            shipper.kill()
            time.sleep(rng.uniform(0.0, 0.5))
            shipper.start()
            shipper.wait_started()
        writer.join(timeout=240)
        writer.check()
        lines = wait_for_lines(kafka_bootstrap, shipper.topic, writer.all_lines(), timeout=180)
    finally:
        shipper.stop()

    written = writer.all_lines()
    distinct = {(line.file, line.offset): line.data for line in lines}
    duplicates = len(lines) - len(distinct)
    duplicate_bytes = sum(len(line.data) + 1 for line in lines) - sum(len(d) + 1 for d in distinct.values())
    # what a consumer does: per file, drop any line at or below the highest offset already taken
    taken, highest = [], {}
    for line in lines:
        if line.offset > highest.get(line.file, -1):
            taken.append(line)
            highest[line.file] = line.offset
    report = {"kills": KILLS, "lines_written": len(written), "records_lines": len(lines), "distinct": len(distinct),
              "duplicates": duplicates, "duplicate_bytes": duplicate_bytes, "rotations": writer.rotations,
              "rotation_kinds": {k: rotation.kinds.count(k) for k in set(rotation.kinds)}}
    print(f"crash test: {report}")
    record_property("crash_report", report)

    assert writer.rotations == TOTAL_LINES // ROTATE_EVERY
    assert set(distinct.values()) == written and len(distinct) == len(written)
    assert [line.data for line in taken] == [line.data for line in taken if line.data in written]
    assert len(taken) == len(written)
    assert_in_order_per_file(taken, writer.written)
    assert duplicate_bytes < KILLS * BATCH_BYTES, report
