"""Stored event records to the API's JSON rows: the native decoder (``native/``, Rust) when it is
installed, else the same rows from Python (``codec.decode_event_row``), byte for byte.

Each decoded candidate also carries the values of the fields a search still has to check on it (the
walk already applied every indexed filter; left are digest collisions, the text filter and a token's
scope), so no event object is built for a row that is only sent on.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any

import orjson

from trackdelivery.events import SCHEMA_VERSION, DeliveryEvent, EventType
from trackdelivery.store import codec
from trackdelivery.store.keys import MSGREF_BYTES, TYPES_BY_CODE

try:  # built by `make install` (pip install ./native); TRACKDELIVERY_NATIVE=0 turns it off
    _native: Any = importlib.import_module("trackdelivery_native")
except ImportError:  # pragma: no cover - depends on the installation
    _native = None

#: a search candidate as the walk returns it: (time ms, event ref, arrival record, event record)
Candidate = tuple[int, bytes, "bytes | None", bytes]
#: a search's simplest check, for the native decoder: ((index in wanted of the time field, lo ms, hi ms),
#: [(indexes in wanted of a filter's fields, the filter's value as JSON)])
ExactCheck = tuple[tuple[int, int, int], list[tuple[list[int], bytes]]]


def native_available() -> bool:
    return _native is not None and os.environ.get("TRACKDELIVERY_NATIVE", "1") != "0"


class RowDecoder:
    """Decodes candidates with the record dictionaries of ``compression``."""

    def __init__(self, compression: codec.RecordCompression, *, native: bool | None = None) -> None:
        self.compression = compression
        use_native = native_available() if native is None else native
        if use_native and _native is None:
            raise RuntimeError("the native row decoder is not installed (pip install ./native)")
        self._native: Any = None
        if use_native:
            self._native = _native.RowDecoder(
                [f.name for f in dataclasses.fields(DeliveryEvent)],
                dict(codec.EVENT_FIELDS),
                {**codec.ARRIVAL_FIELDS, **codec.IDENTITY_FIELDS},
                [(code, event_type.value, event_type) for code, event_type in TYPES_BY_CODE.items()],
                SCHEMA_VERSION,
            )
        self._installed: set[bytes] = set()

    @property
    def native(self) -> bool:
        return self._native is not None

    def decode_native(
        self, candidates: list[Candidate], wanted: tuple[str, ...], exact: ExactCheck | None = None
    ) -> list[tuple[EventType, bytes, tuple[Any, ...] | None] | None]:
        """``decode`` by the native decoder alone: None for each candidate it leaves to Python (a record
        it is unsure of, or one compressed with a dictionary not loaded yet)."""
        native = self._native
        for dictionary_id, data in self.compression.dictionaries.items():
            if dictionary_id not in self._installed:
                native.add_dictionary(dictionary_id, data)
                self._installed.add(dictionary_id)
        decoded: list[Any] = native.decode(candidates, wanted, exact)
        return decoded

    def decode(
        self, candidates: list[Candidate], wanted: tuple[str, ...], exact: ExactCheck | None = None
    ) -> list[tuple[EventType, bytes, tuple[Any, ...] | None]]:
        """(type, row JSON, values of the ``wanted`` fields in their order) per candidate, in order. A
        candidate without an arrival record has its message's from an earlier candidate, if any (the
        walk sends each message's arrival record once); every record's dictionary must be loaded. With
        ``exact``, a row the native decoder found to pass it has None for its values."""
        if self._native is None:
            return self._decode_python(candidates, wanted)
        decoded: list[Any] = self.decode_native(candidates, wanted, exact)
        left = [index for index, result in enumerate(decoded) if result is None]
        if left:  # records the native decoder leaves to Python, each with its message's arrival record
            arrivals: dict[bytes, bytes] = {}
            for _, ref, arrival, _ in candidates:
                if arrival is not None:
                    arrivals.setdefault(ref[:MSGREF_BYTES], arrival)
            rows = self._decode_python([
                (time_ms, ref, arrivals.get(ref[:MSGREF_BYTES]), blob)
                for time_ms, ref, _, blob in (candidates[index] for index in left)
            ], wanted)
            for index, row in zip(left, rows, strict=True):
                decoded[index] = row
        return decoded

    def _decode_python(
        self, candidates: list[Candidate], wanted: tuple[str, ...]
    ) -> list[tuple[EventType, bytes, tuple[Any, ...] | None]]:
        unpack = self.compression.decompress
        arrivals: dict[bytes, dict[str, Any] | None] = {}
        decoded: list[tuple[EventType, bytes, tuple[Any, ...] | None]] = []
        for _, ref, arrival_blob, blob in candidates:
            msgref = ref[:MSGREF_BYTES]
            if arrivals.get(msgref) is None and arrival_blob:
                arrivals[msgref] = codec.decode_arrival(unpack(arrival_blob))
            row = codec.decode_event_row(unpack(blob), arrivals.get(msgref))
            decoded.append((row["type"], orjson.dumps(row), tuple(row[name] for name in wanted)))
        return decoded


def row_event(row: bytes) -> DeliveryEvent:
    return DeliveryEvent.from_dict(orjson.loads(row))
