"""The tail engine: follows log files across rotation and reads whole lines, with no Kafka in it.

``TailEngine.poll()`` returns ``Chunk`` objects (consecutive whole lines of one file with their byte
offsets); the caller acknowledges them through a ``Checkpointer`` once they are durable elsewhere.

The names below load their module on first use, so ``replay`` (which needs only the reader) does not
import the engine and the checkpointer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from producers.tail.checkpointer import Checkpointer, CheckpointState, FileCheckpoint, Ticket
    from producers.tail.exceptions import CheckpointError, TailError
    from producers.tail.fingerprint import FINGERPRINT_BYTES, fingerprint_bytes, fingerprint_path
    from producers.tail.types import Chunk, StartPosition, TailEvents
    from producers.tail.watcher import KnownFile, TailEngine

_MODULES = {
    "producers.tail.checkpointer": ("Checkpointer", "CheckpointState", "FileCheckpoint", "Ticket"),
    "producers.tail.exceptions": ("CheckpointError", "TailError"),
    "producers.tail.fingerprint": ("FINGERPRINT_BYTES", "fingerprint_bytes", "fingerprint_path"),
    "producers.tail.types": ("Chunk", "StartPosition", "TailEvents"),
    "producers.tail.watcher": ("KnownFile", "TailEngine"),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "FINGERPRINT_BYTES",
    "CheckpointError",
    "CheckpointState",
    "Checkpointer",
    "Chunk",
    "FileCheckpoint",
    "KnownFile",
    "StartPosition",
    "TailEngine",
    "TailError",
    "TailEvents",
    "Ticket",
    "fingerprint_bytes",
    "fingerprint_path",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
