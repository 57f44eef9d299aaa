"""Checkpoints: per file identity, the offset just past the last line the sink acknowledged.

``Checkpointer.track(chunk)`` is called in send order and returns a ticket; ``ack(ticket)`` may come in
any order, but a file's offset only advances over a contiguous run of acknowledged chunks. ``save()``
writes ``checkpoints.json`` atomically: a temp file, fsync, rename, fsync of the directory. ``load()``
prefers a leftover temp file when it is complete and valid (the process died between its fsync and the
rename), otherwise the main file; anything unreadable is ignored with a warning.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from producers.tail.exceptions import CheckpointError
from producers.tail.types import Chunk
from producers.tail.watcher import KnownFile

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FILE_NAME = "checkpoints.json"
TEMP_NAME = "checkpoints.json.tmp"
DONE_RETENTION_S = 7 * 86400  # forget finished files after a week without news
STALE_RETENTION_S = 30 * 86400


@dataclass(slots=True, frozen=True)
class FileCheckpoint:
    offset: int
    path: str
    done: bool
    updated: float  # wall-clock time of the last change


CheckpointState = dict[str, FileCheckpoint]


class _Pending:
    __slots__ = ("acked", "end", "final")

    def __init__(self, end: int, final: bool) -> None:
        self.end = end
        self.final = final
        self.acked = False


@dataclass(slots=True, frozen=True)
class Ticket:
    file_id: str
    entry: _Pending


class Checkpointer:
    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.state: CheckpointState = {}
        self._pending: dict[str, deque[_Pending]] = {}
        self._paths: dict[str, str] = {}
        self._dirty = False

    # -- loading --------------------------------------------------------------------------------------

    def load(self) -> CheckpointState:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CheckpointError(f"cannot create checkpoint directory {self.directory}: {error}") from error
        temp = _read_state(self.directory / TEMP_NAME)
        main = _read_state(self.directory / FILE_NAME)
        self.state = temp if temp is not None else (main or {})
        if temp is not None:
            log.info("using the checkpoint of an interrupted save", extra={"path": str(self.directory)})
        return dict(self.state)

    def known_files(self) -> dict[str, KnownFile]:
        return {file_id: KnownFile(cp.offset, cp.done) for file_id, cp in self.state.items()}

    # -- tracking -------------------------------------------------------------------------------------

    def track(self, chunk: Chunk) -> Ticket:
        entry = _Pending(chunk.end, chunk.final)
        self._pending.setdefault(chunk.file_id, deque()).append(entry)
        self._paths[chunk.file_id] = chunk.path
        return Ticket(chunk.file_id, entry)

    def ack(self, ticket: Ticket) -> None:
        ticket.entry.acked = True
        queue = self._pending.get(ticket.file_id)
        if not queue or not queue[0].acked:
            return
        last = None
        while queue and queue[0].acked:
            last = queue.popleft()
        assert last is not None
        if not queue:
            del self._pending[ticket.file_id]
        self.state[ticket.file_id] = FileCheckpoint(
            last.end, self._paths.get(ticket.file_id, ""), last.final, time.time()
        )
        self._dirty = True

    def unacked(self) -> int:
        return sum(len(queue) for queue in self._pending.values())

    def committed(self) -> Mapping[str, int]:
        return {file_id: cp.offset for file_id, cp in self.state.items()}

    # -- saving ---------------------------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        return self._dirty

    def save(self, active: Collection[str] = ()) -> None:
        """Write the checkpoint; ``active`` identities (files still open) are never expired."""
        self._expire(time.time(), active)
        payload = orjson.dumps({
            "version": FORMAT_VERSION,
            "files": {
                file_id: {"offset": cp.offset, "path": cp.path, "done": cp.done, "updated": cp.updated}
                for file_id, cp in self.state.items()
            },
        })
        temp = self.directory / TEMP_NAME
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, self.directory / FILE_NAME)
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as error:
            raise CheckpointError(f"cannot write checkpoint in {self.directory}: {error}") from error
        self._dirty = False

    def save_if_dirty(self, active: Collection[str] = ()) -> bool:
        if self._dirty:
            self.save(active)
            return True
        return False

    def _expire(self, now: float, active: Collection[str]) -> None:
        for file_id in list(self.state):
            cp = self.state[file_id]
            if file_id in self._pending or file_id in active:
                continue
            if now - cp.updated > (DONE_RETENTION_S if cp.done else STALE_RETENTION_S):
                del self.state[file_id]

    def __iter__(self) -> Iterator[tuple[str, FileCheckpoint]]:
        return iter(self.state.items())


def _read_state(path: Path) -> CheckpointState | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        log.warning("cannot read checkpoint %s: %s", path, error)
        return None
    try:
        return _parse(orjson.loads(raw))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        log.warning("ignoring invalid checkpoint %s: %s", path, error)
        return None


def _parse(document: Any) -> CheckpointState:
    if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
        raise ValueError("not a version 1 checkpoint")
    state: CheckpointState = {}
    for file_id, entry in document["files"].items():
        offset = entry["offset"]
        if not isinstance(offset, int) or offset < 0 or not isinstance(file_id, str):
            raise ValueError(f"bad offset for {file_id!r}")
        state[file_id] = FileCheckpoint(offset, str(entry["path"]), bool(entry["done"]), float(entry["updated"]))
    return state
