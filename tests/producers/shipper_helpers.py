"""Helpers for the shipper's Kafka tests: run ``trackdelivery ship`` as a process, write logs, read topics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trackdelivery import kafka_clients
from trackdelivery.records import RawLine, decode_batch

TRACKDELIVERY = str(Path(sys.executable).with_name("trackdelivery"))
SERVER = "test-mx1"


def line_text(generation: int, number: int) -> bytes:
    return (f"2026-11-26 01:{number // 60 % 60:02d}:{number % 60:02d} g{generation:03d} n{number:08d} "
            f"1vXyZa-000AbC-12 => user{number}@example.com R=lookuphost T=remote_smtp").encode()


@dataclass
class ShipperProcess:
    """``trackdelivery ship`` in a subprocess, restartable, logs appended to ``log_path``."""

    bootstrap: str
    topic: str
    paths: list[Path]
    workdir: Path
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / "shipper.log"

    @property
    def checkpoint_dir(self) -> Path:
        return self.workdir / "checkpoints"

    def start(self) -> None:
        command = [TRACKDELIVERY, "ship", "--bootstrap-servers", self.bootstrap, "--topic", self.topic,
                   "--server", SERVER, "--checkpoint-dir", str(self.checkpoint_dir),
                   "--start-position", "beginning", "--rotate-wait", "1", "--scan-interval", "0.2",
                   "--linger-ms", "5", *[arg for path in self.paths for arg in ("--path", str(path))], *self.extra]
        environment = {**os.environ, "TRACKDELIVERY_POLL_INTERVAL": "0.05", **self.env}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, env=environment)
        self.starts += 1

    def wait_started(self, timeout: float = 60) -> None:
        """Until this run has logged that it is following files (imports and checkpoint load done)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.tail_log()
            if self.log_path.read_bytes().count(b'"shipper started"') >= self.starts:
                return
            time.sleep(0.05)
        raise AssertionError(f"shipper did not start:\n{self.tail_log()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 60) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def tail_log(self, size: int = 4000) -> str:
        return self.log_path.read_bytes()[-size:].decode(errors="replace") if self.log_path.exists() else ""


def read_topic(bootstrap: str, topic: str) -> list[RawLine]:
    """Every line in every record of ``topic`` (all partitions), in partition order."""
    return [line for record in kafka_clients.read_topic(bootstrap, topic) for line in decode_batch(record.value)]


def wait_for_lines(bootstrap: str, topic: str, expected: set[bytes], timeout: float = 120,
                   alive: Callable[[], None] | None = None) -> list[RawLine]:
    """Read the topic until every expected line is there (or fail with what is missing)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = read_topic(bootstrap, topic)
        missing = expected - {line.data for line in lines}
        if not missing:
            return lines
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(missing)} of {len(expected)} lines never arrived, e.g. {sorted(missing)[:3]}")
        if alive is not None:
            alive()
        time.sleep(0.5)


class Writer(threading.Thread):
    """Appends numbered lines to ``path`` (O_APPEND, as Exim does) and rotates it every ``rotate_every`` lines.

    ``written[generation]`` lists the lines of each file in order; a generation is one file's lifetime.
    ``may_rotate`` (optional) gates rotations, e.g. to rotate only while the shipper is running.
    """

    def __init__(self, path: Path, total: int, rotate_every: int, rotate: Callable[[Path, int], None],
                 burst: int = 200, pause: float = 0.002, may_rotate: threading.Event | None = None) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.total = total
        self.rotate_every = rotate_every
        self.rotate = rotate
        self.burst = burst
        self.pause = pause
        self.may_rotate = may_rotate
        self.written: dict[int, list[bytes]] = {}
        self.error: BaseException | None = None
        self.rotations = 0

    def run(self) -> None:
        try:
            generation, in_file = 0, 0
            handle = open(self.path, "ab")  # noqa: SIM115 - reopened on rotation
            number = 0
            while number < self.total:
                batch = []
                for _ in range(min(self.burst, self.total - number)):
                    line = line_text(generation, number)
                    batch.append(line)
                    number += 1
                handle.write(b"".join(line + b"\n" for line in batch))
                handle.flush()
                self.written.setdefault(generation, []).extend(batch)
                in_file += len(batch)
                if in_file >= self.rotate_every and (self.may_rotate is None or self.may_rotate.is_set()):
                    handle.close()
                    self.rotate(self.path, generation)
                    self.rotations += 1
                    generation, in_file = generation + 1, 0
                    handle = open(self.path, "ab")  # noqa: SIM115
                time.sleep(self.pause)
            handle.close()
        except BaseException as error:
            self.error = error
            raise

    def all_lines(self) -> set[bytes]:
        return {line for lines in self.written.values() for line in lines}

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"writer failed: {self.error!r}")


def assert_in_order_per_file(lines: list[RawLine], written: dict[int, list[bytes]]) -> None:
    """Within each file identity, offsets increase and lines come in the order they were written."""
    order = {line: (generation, index) for generation, lines_ in written.items() for index, line in enumerate(lines_)}
    last: dict[str, tuple[int, int, int]] = {}
    for line in lines:
        generation, index = order[line.data]
        previous = last.get(line.file)
        if previous is not None:
            assert line.offset > previous[0], f"offsets go back in {line.file}"
            assert (generation, index) > previous[1:], f"order broken in {line.file}"
        last[line.file] = (line.offset, generation, index)
