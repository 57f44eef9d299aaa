"""Model-based test of the tail engine (after Vector's file_watcher experiments), with no Kafka.

The machine writes, rotates, truncates, deletes and compresses files at ``log`` / ``log.1`` /
``log.1.gz`` and restarts the engine from its checkpoint; ``drain`` reads everything and acknowledges
at once. After each drain: no line twice, only lines that were written, each file's lines in write
order, and every line emitted except those the documented loss cases allow (a file destroyed before
the engine ever saw it or while the engine was restarting, lines cut off by a truncation without
copy, a rotated file found on the very first start).
"""

from __future__ import annotations

import gzip
import itertools
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.producers.tail.tail_harness import Harness

_ids = itertools.count()


@dataclass
class ModelFile:
    lines: list[bytes] = field(default_factory=list)
    partial: bytes = b""
    seen: bool = False  # the engine knows its identity (and where it stopped reading it)
    held: bool = False  # the engine holds (or has finished) this very inode, so destroying the path is safe

    has_newline: bool = False  # a whole first line, so the engine can fingerprint it

    @property
    def identifiable(self) -> bool:
        return self.has_newline


class TailModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(f"/tmp/tail-model-{os.getpid()}-{next(_ids)}")
        self.directory.mkdir()
        self.log = self.directory / "log"
        self.rotated = self.directory / "log.1"
        self.compressed = self.directory / "log.1.gz"
        self.at: dict[Path, ModelFile] = {}
        self.files: list[ModelFile] = []
        self.optional: set[bytes] = set()
        self.written: set[bytes] = set()
        self.counter = itertools.count()
        self.ever_seen = False
        self.fresh = True
        self.harness: Harness | None = None
        self.orphans: list[ModelFile] = []

    @initialize(read_bytes=st.sampled_from([7, 64, 4096]))
    def start(self, read_bytes: int) -> None:
        self.harness = Harness(self.directory / "state", [str(self.log)], read_bytes=read_bytes)

    def teardown(self) -> None:
        if self.harness is not None and self.harness.engine is not None:
            self.harness.engine.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- helpers --------------------------------------------------------------------------------------

    def _new_line(self, size: int) -> bytes:
        return f"L{next(self.counter):05d} ".encode() + b"x\xff\xc3"[: size % 4] + b"m" * size

    def _live(self) -> ModelFile:
        if self.log not in self.at:
            self.at[self.log] = ModelFile()
            self.files.append(self.at[self.log])
        return self.at[self.log]

    def _leave_live(self, model: ModelFile) -> None:
        """The file can no longer grow: its unterminated last line becomes a line (shipped on close)."""
        if model.partial:
            model.lines.append(model.partial)
            self.written.add(model.partial)
            if not model.has_newline:
                self.optional.add(model.partial)  # no whole first line: never identifiable
            model.partial = b""

    def _unread_may_be_lost(self, model: ModelFile) -> None:
        emitted = set(self.harness.lines()) if self.harness else set()
        self.optional.update(line for line in [*model.lines, model.partial] if line not in emitted)

    def _destroy(self, path: Path) -> None:
        model = self.at.pop(path, None)
        if model is None or model in self.at.values():
            return
        if model.held:
            self.orphans.append(model)  # only the engine's open descriptor still reaches it
        else:
            self._unread_may_be_lost(model)

    # -- rules ----------------------------------------------------------------------------------------

    @rule(sizes=st.lists(st.integers(0, 90), min_size=1, max_size=6))
    def write(self, sizes: list[int]) -> None:
        model = self._live()
        out = b""
        if model.partial:
            rest = b" end"
            model.lines.append(model.partial + rest)
            self.written.add(model.partial + rest)
            out += rest + b"\n"
            model.partial = b""
        for size in sizes:
            line = self._new_line(size)
            model.lines.append(line)
            self.written.add(line)
            out += line + b"\n"
        model.has_newline = True
        with open(self.log, "ab") as handle:
            handle.write(out)

    @rule(size=st.integers(1, 40))
    def write_partial(self, size: int) -> None:
        model = self._live()
        piece = self._new_line(size)[: size] if not model.partial else b"+"
        model.partial += piece
        with open(self.log, "ab") as handle:
            handle.write(piece)

    @precondition(lambda self: self.log in self.at)
    @rule()
    def rotate_rename(self) -> None:
        self._destroy(self.rotated)
        model = self.at.pop(self.log)
        self._leave_live(model)
        os.replace(self.log, self.rotated)
        self.at[self.rotated] = model

    @precondition(lambda self: self.log in self.at)
    @rule()
    def rotate_copytruncate(self) -> None:
        self._destroy(self.rotated)
        model = self.at.pop(self.log)
        self._leave_live(model)
        if self.rotated.exists():
            os.unlink(self.rotated)  # the copy is a new file, as logrotate makes it
        shutil.copyfile(self.log, self.rotated)
        os.truncate(self.log, 0)
        model.held = False  # same content and identity, but only the copy has it now
        self.at[self.rotated] = model
        self.at[self.log] = ModelFile()
        self.files.append(self.at[self.log])

    @precondition(lambda self: self.log in self.at)
    @rule()
    def truncate_without_copy(self) -> None:
        model = self.at.pop(self.log)
        self._unread_may_be_lost(model)
        model.partial = b""
        os.truncate(self.log, 0)
        self.at[self.log] = ModelFile()
        self.files.append(self.at[self.log])

    @rule(which=st.sampled_from(["log", "log.1"]))
    def delete(self, which: str) -> None:
        path = self.directory / which
        if path not in self.at:
            return
        model = self.at[path]
        if path == self.log:
            self._leave_live(model)
        self._destroy(path)
        os.unlink(path)

    @precondition(lambda self: self.rotated in self.at)
    @rule()
    def compress(self) -> None:
        self._destroy(self.compressed)
        model = self.at.pop(self.rotated)
        with gzip.open(f"{self.compressed}.tmp", "wb") as out:
            out.write(self.rotated.read_bytes())
        os.replace(f"{self.compressed}.tmp", self.compressed)
        os.unlink(self.rotated)
        self.at[self.compressed] = model
        if not model.seen and not model.held:
            self._unread_may_be_lost(model)  # compressed files are only resumed, never started

    @rule(clean=st.booleans())
    def restart(self, clean: bool) -> None:
        assert self.harness is not None
        self.harness.restart(clean=clean)
        self.fresh = not self.ever_seen
        for model in self.orphans:
            self._unread_may_be_lost(model)  # deleted, and the descriptor died with the engine
        self.orphans.clear()
        for model in self.files:
            model.held = False  # a new engine opens files on its first scan

    @rule()
    def drain(self) -> None:
        assert self.harness is not None
        for path, model in self.at.items():
            if path == self.compressed or not model.identifiable:
                continue
            if path == self.rotated and self.fresh and not model.seen:
                self._unread_may_be_lost(model)  # found at start-up with no history at all
            model.seen = model.held = True
            self.ever_seen = True
        self.fresh = False
        self.orphans.clear()
        self.harness.drain()
        self.check_after_drain()

    # -- checks ---------------------------------------------------------------------------------------

    def check_after_drain(self) -> None:
        assert self.harness is not None
        emitted = self.harness.lines()
        emitted_set = set(emitted)
        required = self.written - self.optional
        assert not required - emitted_set, f"lost: {sorted(required - emitted_set)[:5]}"

    @invariant()
    def no_duplicates_nothing_invented_in_order(self) -> None:
        if self.harness is None:
            return
        emitted = self.harness.lines()
        assert len(emitted) == len(set(emitted)), "a line was emitted twice"
        assert set(emitted) <= self.written
        position = {line: index for index, line in enumerate(emitted)}
        for model in self.files:
            indexes = [position[line] for line in model.lines if line in position]
            assert indexes == sorted(indexes), "lines of one file out of order"


TailModel.TestCase.settings = settings(
    max_examples=80, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_tail_engine_matches_model = TailModel.TestCase
