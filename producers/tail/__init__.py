"""The tail engine: follows log files across rotation and reads whole lines, with no Kafka in it.

``TailEngine.poll()`` returns ``Chunk`` objects (consecutive whole lines of one file with their byte
offsets); the caller acknowledges them through a ``Checkpointer`` once they are durable elsewhere.
"""

from producers.tail.checkpointer import Checkpointer, CheckpointState, FileCheckpoint, Ticket
from producers.tail.exceptions import CheckpointError, TailError
from producers.tail.fingerprint import FINGERPRINT_BYTES, fingerprint_bytes, fingerprint_path
from producers.tail.types import Chunk, StartPosition, TailEvents
from producers.tail.watcher import KnownFile, TailEngine

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
