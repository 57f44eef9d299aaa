"""Compact orjson encoding of events: short keys, nulls omitted, derivable values left out.

A message's arrival data (sender, user, client, size, subject...) is stored once per message, in the
arrival record, and left out of its events; events without a message id keep it inline.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import orjson
import zstandard

from trackdelivery.events import SCHEMA_VERSION, DeliveryEvent, EventType, Reason, RetryState, make_event_id
from trackdelivery.store.exceptions import StoreError
from trackdelivery.store.keys import LINE_CHUNK_FIELD_BYTES, TYPE_CODES, TYPES_BY_CODE, clean_text

#: event field -> stored key, for fields of one delivery attempt
EVENT_FIELDS = {
    "time": "t",
    "recipient": "r",
    "original_recipient": "o",
    "router": "ro",
    "transport": "tr",
    "remote_host": "rh",
    "remote_ip": "ri",
    "tls": "tl",
    "response": "c",
    "smtp_code": "sc",
    "enhanced_code": "ec",
    "smtp_phase": "ph",
    "exim_errno": "er",
    "reason": "re",
    "hint": "hi",
    "bounce_msgid": "b",
    "delivered_to": "dt",
}

#: event field -> stored key, for fields that belong to the message (same in all its events)
ARRIVAL_FIELDS = {
    "arrival_time": "at",
    "sender": "s",
    "cpanel_user": "u",
    "auth_id": "au",
    "client_host": "ch",
    "client_ip": "ci",
    "protocol": "pr",
    "spam_score": "ss",
    "size": "sz",
    "subject": "sj",
    "message_id_header": "mh",
    "parent_msgid": "p",
}

#: identity of the message: in the arrival record, or inline in events without a message id
IDENTITY_FIELDS = {"server": "h", "msgid": "m"}
STRING_FIELDS = tuple(
    name for name in (*EVENT_FIELDS, *ARRIVAL_FIELDS, *IDENTITY_FIELDS, "recipient_domain", "sender_domain", "event_id")
    if name not in ("time", "smtp_code", "exim_errno", "arrival_time", "spam_score", "size", "reason")
)

#: every event attribute the arrival record is made of
ARRIVAL_ATTRIBUTES = (*IDENTITY_FIELDS, *ARRIVAL_FIELDS, "sender", "sender_domain")
_ARRIVAL_BY_KEY = {key: name for name, key in (*ARRIVAL_FIELDS.items(), *IDENTITY_FIELDS.items())}
_EVENT_BY_KEY = {key: name for name, key in EVENT_FIELDS.items()}


def domain_of(address: str | None) -> str | None:
    if not address or "@" not in address:
        return None
    return address.rpartition("@")[2].lower() or None


def _put(record: dict[str, Any], key: str, value: Any, max_chars: int) -> None:
    if value is None:
        return
    if isinstance(value, str):
        value = clean_text(value, max_chars)
    elif isinstance(value, float) and value != value:  # NaN is not JSON
        return
    record[key] = value


def clean_event(event: DeliveryEvent, max_chars: int) -> DeliveryEvent:
    """``event``, or a copy whose strings are bounded and encodable (what the store keeps and indexes)."""
    changes: dict[str, Any] = {}
    for name in STRING_FIELDS:
        value = getattr(event, name)
        if isinstance(value, str) and (len(value) > max_chars or not value.isascii()):
            cleaned = clean_text(value, max_chars)
            if cleaned != value:
                changes[name] = cleaned
    return dataclasses.replace(event, **changes) if changes else event


def encode_arrival(event: DeliveryEvent, max_chars: int) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for name, key in (*IDENTITY_FIELDS.items(), *ARRIVAL_FIELDS.items()):
        _put(record, key, getattr(event, name), max_chars)
    sender_domain = event.sender_domain
    if sender_domain != domain_of(event.sender):
        record["sd"] = clean_text(sender_domain, max_chars) if sender_domain is not None else None
    return record


def encode_event(event: DeliveryEvent, max_chars: int, *, inline_arrival: bool) -> bytes:
    record: dict[str, Any] = {"y": TYPE_CODES[event.type]}
    for name, key in EVENT_FIELDS.items():
        _put(record, key, getattr(event, name), max_chars)
    recipient_domain = event.recipient_domain
    if recipient_domain != domain_of(event.recipient):
        record["rd"] = clean_text(recipient_domain, max_chars) if recipient_domain is not None else None
    retry = event.retry
    if retry.attempt or any(
        value is not None for value in (retry.first_attempt, retry.last_attempt, retry.next_retry, retry.give_up)
    ):
        record["rt"] = [retry.attempt, retry.first_attempt, retry.last_attempt, retry.next_retry, retry.give_up]
    if inline_arrival:
        record.update(encode_arrival(event, max_chars))  # with the server: events without a message id
    expected_id = make_event_id(
        event.server, event.msgid, event.recipient, event.type, event.time, event.retry.attempt
    )
    if event.event_id != expected_id:
        record["id"] = clean_text(event.event_id, max_chars)
    return orjson.dumps(record)


def encode_arrival_blob(event: DeliveryEvent, max_chars: int) -> bytes:
    return orjson.dumps(encode_arrival(event, max_chars))


def decode_arrival(blob: bytes | None) -> dict[str, Any]:
    """Arrival record as event field names (``sender_domain`` filled in when derivable)."""
    data: dict[str, Any] = orjson.loads(blob) if blob else {}
    return _arrival_fields(data)


def _arrival_fields(data: dict[str, Any]) -> dict[str, Any]:
    fields = {_ARRIVAL_BY_KEY[key]: value for key, value in data.items() if key in _ARRIVAL_BY_KEY}
    fields["sender_domain"] = data["sd"] if "sd" in data else domain_of(fields.get("sender"))
    return fields


def _event_fields(data: dict[str, Any], arrival: dict[str, Any] | None) -> dict[str, Any]:
    """An event record's fields by event field name, with its message's arrival data; ``reason`` and
    ``rt`` (the retry state list) still as stored, ``event_id`` only when stored."""
    fields: dict[str, Any] = {_EVENT_BY_KEY[key]: value for key, value in data.items() if key in _EVENT_BY_KEY}
    fields["type"] = TYPES_BY_CODE[data["y"]]
    fields.setdefault("msgid", None)
    fields.setdefault("server", "")
    fields["recipient_domain"] = data["rd"] if "rd" in data else domain_of(fields.get("recipient"))
    if "id" in data:
        fields["event_id"] = data["id"]
    fields.update(arrival if arrival is not None and "h" not in data else _arrival_fields(data))
    return fields


def decode_event(blob: bytes, arrival: dict[str, Any] | None) -> DeliveryEvent:
    """``arrival`` = ``decode_arrival`` of the message's record (None: the event carries its own)."""
    data: dict[str, Any] = orjson.loads(blob)
    fields = _event_fields(data, arrival)
    if fields.get("reason") is not None:
        fields["reason"] = Reason(fields["reason"])
    if "rt" in data:
        fields["retry"] = RetryState(*data["rt"])
    return DeliveryEvent(**fields)


_ROW_TEMPLATE: dict[str, Any] = {f.name: None for f in dataclasses.fields(DeliveryEvent)}
_ROW_TEMPLATE["v"] = SCHEMA_VERSION
_RETRY_NAMES = tuple(f.name for f in dataclasses.fields(RetryState))
_NO_RETRY = dataclasses.asdict(RetryState())


def decode_event_row(blob: bytes, arrival: dict[str, Any] | None) -> dict[str, Any]:
    """``decode_event(blob, arrival).to_dict()`` without building the event (the search answers' hot path):
    the same keys in the same order, the type as its ``EventType`` and the reason as its value."""
    data: dict[str, Any] = orjson.loads(blob)
    row = _ROW_TEMPLATE.copy()
    row.update(_event_fields(data, arrival))
    retry = data.get("rt")
    row["retry"] = dict(zip(_RETRY_NAMES, retry, strict=True)) if retry is not None else dict(_NO_RETRY)
    if "id" not in data:
        row["event_id"] = make_event_id(
            row["server"], row["msgid"], row["recipient"], row["type"], row["time"], row["retry"]["attempt"]
        )
    return row


def event_type_of(blob: bytes) -> EventType:
    return TYPES_BY_CODE[orjson.loads(blob)["y"]]


MSGID_MARK = b"\x1a"  # stands for the message id in a stored line (ASCII SUB; Exim writes control bytes escaped)


class RecordCompression:
    """zstd with a shared trained dictionary for event and arrival records and raw log lines (trained on a
    mix of both: about 3x on generated records, 2x on log lines).

    A compressed record is ``0x01`` + 2-byte dictionary id + zstd frame; a raw record is JSON (starts
    with ``{``); lines: ``compress_line``. Dictionaries are immutable and stored in Redis under their id;
    every writer of a store uses the one named by the store's ``dict:current`` key, so readers meet only a
    handful of ids.
    """

    MARKER = 1
    ELIDED = 2  # a line compressed without its message id
    HEADER = 3

    def __init__(self, level: int = 3) -> None:
        self.level = level
        self.dictionary_id: bytes | None = None
        self._compressor: zstandard.ZstdCompressor | None = None
        self._decompressors: dict[bytes, zstandard.ZstdDecompressor] = {}
        self.dictionaries: dict[bytes, bytes] = {}  # id -> trained dictionary, for other decoders

    @staticmethod
    def identify(data: bytes) -> bytes:
        return hashlib.blake2b(data, digest_size=2).digest()

    @staticmethod
    def train(samples: Sequence[bytes], size: int) -> bytes | None:
        """A dictionary trained on ``samples``, or None when zstd cannot build one from them."""
        try:
            return zstandard.train_dictionary(size, list(samples)).as_bytes()
        except zstandard.ZstdError:
            return None

    def install(self, dictionary_id: bytes, data: bytes, *, use: bool) -> None:
        dictionary = zstandard.ZstdCompressionDict(data)
        self.dictionaries[dictionary_id] = data
        self._decompressors[dictionary_id] = zstandard.ZstdDecompressor(dict_data=dictionary)
        if use:
            self.dictionary_id = dictionary_id
            self._compressor = zstandard.ZstdCompressor(
                dict_data=dictionary, level=self.level, write_checksum=False, write_dict_id=False
            )

    def compress(self, raw: bytes) -> bytes:
        if self._compressor is None or self.dictionary_id is None:
            return raw
        packed = bytes((self.MARKER,)) + self.dictionary_id + self._compressor.compress(raw)
        return packed if len(packed) < len(raw) else raw

    @staticmethod
    def elide(text: bytes, msgid: bytes) -> bytes | None:
        """``text`` with its message id replaced by ``MSGID_MARK`` (the key already names the message), or
        None when that could not be undone exactly (no id in it, or the mark byte already in it)."""
        if not msgid or msgid not in text or MSGID_MARK in text:
            return None
        return text.replace(msgid, MSGID_MARK, 1)

    def compress_line(self, text: bytes, msgid: bytes = b"") -> bytes:
        """A raw log line as stored: compressed with its message id left out (``0x02`` …), compressed
        (``0x01`` …), as it is, or behind an escape byte ``0x00`` when it is stored as it is and starts
        with one of those three bytes (a hostile line may)."""
        elided = self.elide(text, msgid)
        if elided is not None and self._compressor is not None and self.dictionary_id is not None:
            packed = bytes((self.ELIDED,)) + self.dictionary_id + self._compressor.compress(elided)
            if len(packed) < len(text):
                return packed
        packed = self.compress(text)
        if packed is text and text[:1] in (b"\x00", b"\x01", b"\x02"):
            return b"\x00" + text
        return packed

    def decompress_line(self, blob: bytes, msgid: bytes) -> bytes:
        """The line ``compress_line(text, msgid)`` stored (``msgid``: the id of the message it belongs to)."""
        marker = blob[:1]
        if marker == b"\x00":
            return blob[1:]
        if marker == b"\x02":
            decompressor = self._decompressors[blob[1 : self.HEADER]]
            return decompressor.decompress(blob[self.HEADER :], max_output_size=1 << 22).replace(MSGID_MARK, msgid, 1)
        return self.decompress(blob) if blob else blob

    def pack_line_chunk(self, count: int, payload: bytes) -> bytes:
        """A stored line chunk: line count (2 bytes, read by the store script for the cap), then ``0x00`` and
        the payload, or ``0x01`` + dictionary id + the payload compressed."""
        head = count.to_bytes(2, "big")
        if self._compressor is not None and self.dictionary_id is not None:
            frame = self._compressor.compress(payload)
            if len(frame) + 2 < len(payload):
                return head + bytes((self.MARKER,)) + self.dictionary_id + frame
        return head + b"\x00" + payload

    def unpack_line_chunk(self, value: bytes) -> bytes:
        """The payload of a stored line chunk (its dictionary must be loaded: ``missing(value[2:])``)."""
        if value[2:3] == b"\x00":
            return value[3:]
        return self.decompress(value[2:])

    def missing(self, blob: bytes | None) -> bytes | None:
        """The id of the dictionary ``blob`` needs when it is not loaded yet."""
        if blob and blob[0] in (self.MARKER, self.ELIDED):
            dictionary_id = blob[1 : self.HEADER]
            if dictionary_id not in self._decompressors:
                return dictionary_id
        return None

    def decompress(self, blob: bytes) -> bytes:
        if blob[0] != self.MARKER:
            return blob
        decompressor = self._decompressors[blob[1 : self.HEADER]]
        return decompressor.decompress(blob[self.HEADER :], max_output_size=1 << 22)

    async def load_missing(
        self, blobs: Iterable[bytes | None], fetch: Callable[[bytes], Awaitable[bytes | str | None]]
    ) -> None:
        """Install (once) the dictionaries ``blobs`` were compressed with; ``fetch`` reads one from the store."""
        for dictionary_id in {self.missing(blob) for blob in blobs} - {None}:
            assert dictionary_id is not None
            data = await fetch(dictionary_id)
            if data is None:
                raise StoreError(f"record dictionary {dictionary_id.hex()} is missing from the store")
            self.install(dictionary_id, as_bytes(data), use=False)


def _varint(value: int, out: bytearray) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def _zigzag(value: int) -> int:
    return value * 2 if value >= 0 else -value * 2 - 1


def _unzigzag(value: int) -> int:
    return value // 2 if value % 2 == 0 else -(value + 1) // 2


#: (second, offset, text) of one raw line in a chunk
ChunkLine = tuple[int, int, bytes]


def line_chunk_payload(lines: Sequence[ChunkLine], msgid: bytes) -> bytes:
    """Lines of one message and one file, each as ``zigzag(second - first second)``, ``zigzag(offset -
    first offset)``, ``length << 1 | elided`` (varints) and its bytes, the message id left out where that
    can be undone. The first line's second and offset are in the chunk's field name."""
    base_second, base_offset = lines[0][0], lines[0][1]
    out = bytearray()
    for second, offset, text in lines:
        elided = RecordCompression.elide(text, msgid)
        body = text if elided is None else elided
        _varint(_zigzag(second - base_second), out)
        _varint(_zigzag(offset - base_offset), out)
        _varint(len(body) << 1 | (elided is not None), out)
        out += body
    return bytes(out)


def chunk_line_count(value: bytes) -> int:
    return int.from_bytes(value[:2], "big")


def decode_line_chunk(name: bytes, payload: bytes, msgid: bytes) -> list[ChunkLine]:
    """The lines ``line_chunk_payload`` packed under field ``name``, with absolute seconds and offsets."""
    if len(name) != LINE_CHUNK_FIELD_BYTES:
        raise ValueError("not a line chunk field")
    base_second, base_offset = int.from_bytes(name[1:5], "big"), int.from_bytes(name[7:12], "big")
    lines: list[ChunkLine] = []
    position = 0
    while position < len(payload):
        second, position = _read_varint(payload, position)
        offset, position = _read_varint(payload, position)
        size, position = _read_varint(payload, position)
        body = payload[position : position + (size >> 1)]
        position += size >> 1
        text = body.replace(MSGID_MARK, msgid, 1) if size & 1 else body
        lines.append((base_second + _unzigzag(second), base_offset + _unzigzag(offset), text))
    return lines


def as_bytes(value: bytes | str) -> bytes:
    """Replies are bytes (the store needs a client with ``decode_responses=False``)."""
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
