"""Key and index-member builders. No key ever contains a log string: values are normalised then hashed.

Index entry (a member of a lex-ordered sorted set, score 0)::

    value digest (3) | ms since bucket start (4, big endian) | type code (1) | event ref (11)

Event ref = message ref (8: hash of server + msgid) | event sub-ref (3: hash of event_id), so the
event key and the message's arrival key both follow from an index member without another read.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import struct
from enum import StrEnum

from trackdelivery.events import EventType
from trackdelivery.store.types import StoreSettings

REF_BYTES = 11
#: SMTP-time rejections (no message id) of one server are stored together per this many seconds
REJECTION_GROUP_SECONDS = 60
#: field of a message record that holds the arrival data
ARRIVAL_FIELD = b"a"
MSGREF_BYTES = 8
SUBREF_BYTES = 3
#: field of a message record counting the raw lines its chunks hold (the ``max_lines_per_message`` cap)
LINE_COUNT_FIELD = b"#"
#: a chunk of the message's raw lines: ``L`` | first line's second (4) | file tag (2) | first line's
#: offset (5) | payload digest (2); sorting the names sorts chunks roughly in log order
LINE_CHUNK_PREFIX = b"L"
LINE_CHUNK_FIELD_BYTES = 14
#: the highest line offset of one file whose line is stored in the message's chunks: ``@`` | digest of
#: the file identity (8); a line at or below it was stored before, so it is not counted again
LINE_MARK_PREFIX = b"@"
DIGEST_BYTES = 3
TYPE_AT = DIGEST_BYTES + 4  # position of the type code in a member
MEMBER_BYTES = TYPE_AT + 1 + REF_BYTES

_TIME = struct.Struct(">I")


#: a directory key covers this many consecutive buckets of a kind (a day of hourly buckets): one bit each
DIRECTORY_SPAN = 24
#: values are hashed to this many slots of DIRECTORY_SPAN bits (a value sharing a slot with another
#: costs reads of that value's buckets, never a wrong answer): 96 KiB per directory key
DIRECTORY_SLOTS = 1 << 15


def directory_slot(digest: bytes) -> int:
    """The slot of a value (from its 8-byte digest) in its kind's directory keys."""
    return int.from_bytes(digest[3:5], "big") % DIRECTORY_SLOTS


def directory_bytes(slot: int) -> tuple[int, int]:
    """First and last byte (``GETRANGE`` bounds) of a slot's bits in a directory key."""
    return slot * DIRECTORY_SPAN // 8, (slot + 1) * DIRECTORY_SPAN // 8 - 1


def directory_bit(digest: bytes, bucket: int) -> tuple[int, int]:
    """(directory group, bit offset) that says whether ``bucket`` holds an entry of the value."""
    group, position = divmod(bucket, DIRECTORY_SPAN)
    return group, directory_slot(digest) * DIRECTORY_SPAN + position


def is_event_field(name: bytes) -> bool:
    """Whether a message hash field holds an event record (not the arrival, a line chunk or the count)."""
    return len(name) == SUBREF_BYTES


def is_record_field(name: bytes) -> bool:
    """Whether a message hash field holds a record (an event or the arrival), compressed like one."""
    return len(name) == SUBREF_BYTES or name == ARRIVAL_FIELD


def is_line_chunk_field(name: bytes) -> bool:
    return len(name) == LINE_CHUNK_FIELD_BYTES and name[:1] == LINE_CHUNK_PREFIX


def line_mark_field(file: str) -> bytes:
    """The field holding the highest stored line offset of ``file`` (the shipper's file identity)."""
    return LINE_MARK_PREFIX + hashlib.blake2b(file.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def line_chunk_field(time: float, file: str, offset: int, payload: bytes) -> bytes:
    """The field of a line chunk: deterministic, so writing the same chunk again is a no-op."""
    second = min(max(int(time), 0), 0xFFFFFFFF) if time == time else 0
    tag = hashlib.blake2b(file.encode("utf-8", "surrogatepass"), digest_size=2).digest()
    digest = hashlib.blake2b(payload, digest_size=2).digest()
    return LINE_CHUNK_PREFIX + _TIME.pack(second) + tag + min(max(offset, 0), (1 << 40) - 1).to_bytes(5, "big") + digest


class Kind(StrEnum):
    """Index kinds: which event field a sorted set answers for."""

    TYPE = "t"  # every event, under the one value ALL_TYPES (the type is in every member)
    SERVER = "h"
    USER = "u"
    SENDER = "s"
    RECIPIENT = "r"  # recipient and original recipient
    SENDER_DOMAIN = "sd"
    RECIPIENT_DOMAIN = "rd"
    IP = "ip"  # client IP and remote IP
    REASON = "re"
    MSGID = "mid"  # bucketed by the message's arrival, not by event time


#: kinds with hour-wide buckets get a bucket directory: per value, which buckets hold an entry of it, so a
#: search for a rare value reads the few buckets it is in instead of every bucket of the retention
DIRECTORY_KINDS = frozenset({Kind.USER, Kind.SENDER_DOMAIN, Kind.RECIPIENT_DOMAIN, Kind.IP, Kind.REASON})


#: stats hashes (one per hour and dimension): field = normalised value + separator + counter name
STATS_DIMENSIONS = {"user": "u", "sender_domain": "sd", "server": "h"}
#: field = user + separator + sender domain + separator + deferring recipient domain / reason
STATS_DEFERRING = "dd"
STATS_REASONS = "re"
STATS_SEPARATOR = "\x1f"
#: counter name in a stats field -> StatsRow attribute
STATS_COUNTERS = {"s": "sent", "b": "bytes", "d": "delivered", "w": "deferred", "f": "failed"}

ALL_TYPES = "*"

#: Stable one-byte codes of the event types (they are part of stored index members: never renumber).
TYPE_CODES: dict[EventType, int] = {
    EventType.DELIVERED: 1,
    EventType.DEFERRED: 2,
    EventType.BOUNCED: 3,
    EventType.EXPIRED: 4,
    EventType.REJECTED: 5,
    EventType.FILTERED: 6,
    EventType.ARCHIVED: 7,
    EventType.IN_PROGRESS: 8,
    EventType.FROZEN: 9,
    EventType.CANCELLED: 10,
}
TYPES_BY_CODE = {code: event_type for event_type, code in TYPE_CODES.items()}

#: sparse kinds: wider buckets, more partitions
ADDRESS_KINDS = frozenset({Kind.SENDER, Kind.RECIPIENT})
#: dense kinds (a few hundred servers share every event): narrow buckets, few partitions
DENSE_KINDS = frozenset({Kind.SERVER})
#: kinds whose busiest values (a mass-mailing user, gmail.com, 127.0.0.1) would outgrow a listpack in one
#: bucket: every value is spread over this many sorted sets by event ref, and read from all of them
SPLITS = {Kind.USER: 2, Kind.SENDER_DOMAIN: 2, Kind.RECIPIENT_DOMAIN: 2, Kind.IP: 4}
_CASE_INSENSITIVE = {Kind.SERVER, Kind.USER, Kind.SENDER, Kind.RECIPIENT, Kind.SENDER_DOMAIN, Kind.RECIPIENT_DOMAIN}
_EXIM_MSGID = re.compile(r"[0-9A-Za-z]{6}-(?:[0-9A-Za-z]{6}-[0-9A-Za-z]{2}|[0-9A-Za-z]{11}-[0-9A-Za-z]{4})")
_BASE62 = {c: i for i, c in enumerate("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")}


def clean_text(value: str, max_chars: int) -> str:
    """``value`` bounded to ``max_chars`` and safe to encode (lone surrogates become ``?``)."""
    if len(value) <= max_chars and value.isascii():
        return value
    if len(value) > max_chars:
        value = value[:max_chars]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def normalize(kind: Kind, value: str, max_chars: int) -> str:
    """The form a value is indexed and compared in (the writer and every filter use this)."""
    value = clean_text(value, max_chars)
    if kind in _CASE_INSENSITIVE:
        return value.lower()
    if kind is Kind.IP:
        try:
            return str(ipaddress.ip_address(value.strip("[]")))
        except ValueError:
            return value.lower()
    return value


def value_digest(kind: Kind, normalized: str) -> bytes:
    """8 bytes: the first DIGEST_BYTES go into index members, the last 4 choose the partition."""
    raw = kind.value.encode() + b"\x00" + normalized.encode("utf-8")
    return hashlib.blake2b(raw, digest_size=8).digest()


def message_ref(server: str, msgid: str) -> bytes:
    """8 bytes naming one message (server names are case-insensitive, message ids are not)."""
    raw = b"m" + server.lower().encode("utf-8", "replace") + b"\x1f" + msgid.encode("utf-8", "replace")
    return hashlib.blake2b(raw, digest_size=MSGREF_BYTES).digest()


def event_ref(server: str, msgid: str | None, event_id: str, time: float) -> bytes:
    """REF_BYTES bytes. Events without a message id (SMTP-time rejections) share one record per server and minute."""
    if msgid:
        head = message_ref(server, msgid)
    else:
        raw = b"r" + server.lower().encode("utf-8", "replace") + b"\x1f%d" % (int(time) // REJECTION_GROUP_SECONDS)
        head = hashlib.blake2b(raw, digest_size=MSGREF_BYTES).digest()
    return head + hashlib.blake2b(event_id.encode("utf-8", "replace"), digest_size=REF_BYTES - MSGREF_BYTES).digest()


def msgid_epoch(msgid: str) -> int | None:
    """Arrival second encoded in an Exim message id (both formats), or None for anything else."""
    if not _EXIM_MSGID.fullmatch(msgid):
        return None
    epoch = 0
    for char in msgid[:6]:
        epoch = epoch * 62 + _BASE62[char]
    return epoch


class KeySpace:
    """Every key name of one store (one prefix)."""

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self.prefix = settings.prefix.encode() + b":"
        self.message_bucket_seconds = settings.message_bucket_seconds

    def bucket_seconds(self, kind: Kind) -> int:
        if kind in ADDRESS_KINDS:
            return self.settings.address_bucket_seconds
        if kind in DENSE_KINDS:
            return self.settings.dense_bucket_seconds
        return self.settings.bucket_seconds

    def partitions(self, kind: Kind) -> int:
        if kind is Kind.TYPE:
            return self.settings.time_partitions
        if kind in ADDRESS_KINDS:
            return self.settings.address_partitions
        if kind in DENSE_KINDS:
            return self.settings.dense_partitions
        return self.settings.index_partitions

    def message(self, msgref: bytes) -> bytes:
        """Hash: field ``a`` = arrival record, one field per event (its 4-byte sub-ref) = event record."""
        return self.prefix + b"m:" + msgref

    def lines(self, msgref: bytes) -> bytes:
        """A message's raw lines as a list: the layout before lines moved into the message hash (read only)."""
        return self.prefix + b"l:" + msgref

    def index(self, kind: Kind, bucket: int, partition: int) -> bytes:
        return b"%sx:%s:%d:%d" % (self.prefix, kind.value.encode(), bucket, partition)

    def bucket_directory(self, kind: Kind, group: int) -> bytes:
        """Bitmap: bit ``slot * DIRECTORY_SPAN + i`` set = bucket ``group * DIRECTORY_SPAN + i`` of the kind
        holds an entry of a value in that slot."""
        return b"%sxd:%s:%d" % (self.prefix, kind.value.encode(), group)

    @property
    def directory_since(self) -> bytes:
        """Epoch seconds from which the bucket directories are complete (the store's first write with
        directories: 0 for a store that started with them)."""
        return self.prefix + b"xd:since"

    def type_directory(self, type_code: int) -> bytes:
        """Sorted set of the time-index buckets that hold an event of this type (member = score = bucket)."""
        return b"%stb:%d" % (self.prefix, type_code)

    def dictionary(self, dictionary_id: bytes) -> bytes:
        return self.prefix + b"dict:" + dictionary_id

    @property
    def current_dictionary(self) -> bytes:
        return self.prefix + b"dict:current"

    def stats(self, dimension: str, bucket: int) -> bytes:
        return b"%sst:%s:%d" % (self.prefix, dimension.encode(), bucket)

    def stats_bucket_seconds(self, dimension: str) -> int:
        """Per-server counters are hourly (few servers); the rest daily (many users and domains)."""
        if dimension == STATS_DIMENSIONS["server"]:
            return self.settings.server_stats_bucket_seconds
        return self.settings.stats_bucket_seconds

    def bucket_of(self, kind: Kind, time: float) -> int:
        return int(time * 1000) // (self.bucket_seconds(kind) * 1000)

    def message_bucket(self, msgid: str) -> int:
        """0 (one shared bucket) for ids that are not Exim's."""
        epoch = msgid_epoch(msgid)
        return 0 if epoch is None else 1 + epoch // self.message_bucket_seconds

    def offset_ms(self, kind: Kind, time: float, bucket: int) -> int:
        return min(max(int(time * 1000) - bucket * self.bucket_seconds(kind) * 1000, 0), 0xFFFFFFFE)


def member(digest: bytes, type_code: int, offset_ms: int, ref: bytes) -> bytes:
    return digest[:DIGEST_BYTES] + _TIME.pack(offset_ms) + bytes((type_code,)) + ref


def member_offset(entry: bytes) -> int:
    return int(_TIME.unpack_from(entry, DIGEST_BYTES)[0])


def member_type(entry: bytes) -> int:
    return entry[TYPE_AT]


def member_ref(entry: bytes) -> bytes:
    return entry[TYPE_AT + 1 :]


def pack_offset(offset_ms: int) -> bytes:
    return _TIME.pack(offset_ms)


def index_sources(
    event_type: EventType,
    server: str,
    cpanel_user: str | None,
    sender: str | None,
    sender_domain: str | None,
    recipients: tuple[str | None, ...],
    recipient_domain: str | None,
    ips: tuple[str | None, ...],
    reason: str | None,
) -> list[tuple[Kind, str]]:
    """(kind, raw value) pairs an event is indexed under (the message-id index is separate)."""
    sources: list[tuple[Kind, str]] = [(Kind.TYPE, ALL_TYPES), (Kind.SERVER, server)]
    optional: list[tuple[Kind, str | None]] = [
        (Kind.USER, cpanel_user),
        (Kind.SENDER, sender),
        (Kind.SENDER_DOMAIN, sender_domain),
        (Kind.RECIPIENT_DOMAIN, recipient_domain),
        (Kind.REASON, reason),
    ]
    optional += [(Kind.RECIPIENT, recipient) for recipient in recipients]
    optional += [(Kind.IP, ip) for ip in ips]
    sources += [(kind, value) for kind, value in optional if value is not None]
    return sources


def ref_partition(ref: bytes, partitions: int) -> int:
    return int.from_bytes(ref[-4:], "big") % partitions


def value_partition(digest: bytes, partitions: int) -> int:
    return int.from_bytes(digest[4:8], "big") % partitions


def value_partitions(kind: Kind, digest: bytes, partitions: int) -> range:
    """The sorted sets (per bucket) that hold a value: one, or SPLITS[kind] consecutive ones."""
    splits = SPLITS.get(kind, 1)
    first = value_partition(digest, partitions) * splits
    return range(first, first + splits)


def entry_partition(kind: Kind, digest: bytes, ref: bytes, partitions: int) -> int:
    """The sorted set (per bucket) one event's entry for a value goes to."""
    splits = SPLITS.get(kind, 1)
    return value_partition(digest, partitions) * splits + (ref_partition(ref, splits) if splits > 1 else 0)
