"""Settings, queries, results and the raw-line record of the query store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from trackdelivery.events import DeliveryEvent, EventType, Reason

#: cPanel's ``$MAX_RESULTS_BY_TYPE_DEFAULT`` and ``$MAX_RESULTS_BY_TYPE_MAXIMUM``.
DEFAULT_MAX_RESULTS_BY_TYPE = 250
MAX_RESULTS_BY_TYPE_LIMIT = 5000


#: redis-server settings the store is designed for (docs/redis-model.md, "Redis configuration"): index sets
#: and message hashes stay compact listpacks. The dev tooling's servers start with them; Redis' defaults
#: (128 entries, 64-byte values) work too, with more memory per event.
REDIS_CONFIG = {"zset-max-listpack-entries": "1024", "hash-max-listpack-value": "512"}
REDIS_DEFAULT_CONFIG = {"zset-max-listpack-entries": "128", "hash-max-listpack-value": "64"}


class StoreSettings(BaseSettings):
    """Layout and limits of the store. Changing a ``*_seconds``/``*_partitions`` value needs a rebuild."""

    model_config = SettingsConfigDict(env_prefix="TRACKDELIVERY_STORE_", frozen=True)

    prefix: str = Field(default="td", min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")
    retention_days: float = Field(default=30, gt=0, le=3650)
    #: messages stay deliverable this long after arrival (Exim gives up after 4 days by default)
    message_lifetime_days: float = Field(default=7, ge=0, le=365)
    max_lines_per_message: int = Field(default=200, ge=1, le=100_000)
    max_line_bytes: int = Field(default=4096, ge=64, le=1 << 20)
    #: longest stored string field (subject, response, addresses...), in characters
    max_field_chars: int = Field(default=2048, ge=64, le=1 << 20)
    #: width of one index bucket (event time)
    bucket_seconds: int = Field(default=3600, ge=60, le=86400)
    #: width of one bucket of the server index (dense values) and its partitions
    dense_bucket_seconds: int = Field(default=900, ge=60, le=86400)
    dense_partitions: int = Field(default=16, ge=1, le=65536)
    #: width of one bucket of the sender and recipient address indexes (sparse values)
    address_bucket_seconds: int = Field(default=86400, ge=60, le=30 * 86400)
    #: value-hash partitions per index kind and bucket (sparse values share a sorted set)
    index_partitions: int = Field(default=64, ge=1, le=65536)
    address_partitions: int = Field(default=1024, ge=1, le=65536)
    #: ref-hash partitions of the per-type time index (dense: every event is in it)
    time_partitions: int = Field(default=32, ge=1, le=4096)
    #: width of one bucket of the message-id index (message arrival time)
    message_bucket_seconds: int = Field(default=86400, ge=3600, le=30 * 86400)
    #: compress event and arrival records and raw lines with a zstd dictionary trained on the first ones written
    compression: bool = True
    dictionary_samples: int = Field(default=3000, ge=10)
    dictionary_bytes: int = Field(default=32768, ge=1024, le=1 << 20)
    #: width of one stats counter bucket (hash per dimension and bucket): users and domains, servers
    stats_bucket_seconds: int = Field(default=86400, ge=60, le=86400)
    server_stats_bucket_seconds: int = Field(default=3600, ge=60, le=86400)
    #: index entries a search may read before it stops and answers ``complete=False``
    scan_budget: int = Field(default=50_000, ge=100)
    #: how often (seconds) a writer re-sends the expiry of an index key it already gave one
    expiry_refresh_seconds: float = Field(default=600, ge=0)

    @property
    def retention_seconds(self) -> float:
        return self.retention_days * 86400.0

    @property
    def message_lifetime_seconds(self) -> float:
        return self.message_lifetime_days * 86400.0


@dataclass(frozen=True, slots=True)
class MessageLine:
    """One raw log line of a message (``time`` is the line's epoch seconds). ``file`` and ``offset`` say
    where it was read (the shipper's file identity and byte offset): the message view orders lines by
    second, file and offset, and a line written again is recognised. Without them (``offset`` -1) lines
    keep the order they were written in within one ``write`` call."""

    server: str
    msgid: str
    time: float
    text: str
    file: str = ""
    offset: int = -1


@dataclass(frozen=True, slots=True)
class Page:
    """``limit`` newest results after ``cursor`` (an opaque string from the previous ``QueryResult``)."""

    limit: int = 250
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class Query:
    """What to search. Every given filter must match (AND); ``types`` is an OR of event types.

    Without ``page`` the answer has up to ``max_results_by_type`` newest events of each type (cPanel's
    meaning; 0 = up to ``MAX_RESULTS_BY_TYPE_LIMIT``); with ``page`` the ``page.limit`` newest events
    after ``page.cursor``. ``scope_users``/``scope_domains`` confine the answer to mail of those cPanel
    users or from/to those domains (``None`` = unrestricted).
    """

    sender: str | None = None
    recipient: str | None = None  # also matches the original recipient
    address: str | None = None  # sender or recipient
    sender_domain: str | None = None
    recipient_domain: str | None = None
    domain: str | None = None  # sender domain or recipient domain
    server: str | None = None
    cpanel_user: str | None = None
    msgid: str | None = None
    ip: str | None = None  # client IP or remote IP
    types: frozenset[EventType] | None = None
    reason: Reason | None = None
    since: float | None = None
    until: float | None = None
    text: str | None = None  # case-insensitive substring of the response or the subject
    max_results_by_type: int = DEFAULT_MAX_RESULTS_BY_TYPE
    page: Page | None = None
    scope_users: frozenset[str] | None = None
    scope_domains: frozenset[str] | None = None


@dataclass(slots=True)
class QueryResult:
    """Events newest first. ``counts``/``overflowed`` per type; ``complete`` is False when the scan
    budget ran out before the answer was certain (then ``overflowed`` may under-report)."""

    events: list[DeliveryEvent]
    counts: dict[EventType, int] = field(default_factory=dict)
    overflowed: dict[EventType, bool] = field(default_factory=dict)
    next_cursor: str | None = None
    complete: bool = True
    scanned: int = 0
    rows: list[bytes] = field(default_factory=list)  # search_rows(): each event's to_dict() as JSON


@dataclass(slots=True)
class MessageView:
    server: str
    msgid: str
    arrival: dict[str, Any]
    events: list[DeliveryEvent]  # oldest first
    lines: list[str]  # raw log lines in arrival order, duplicates from replays removed
    bounce_msgids: list[str]
    parent_msgid: str | None
    lines_visible: bool = True  # False when the scope sees only the recipient side


@dataclass(slots=True)
class WriteStats:
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0  # older than the retention, or without a usable identity
    lines: int = 0


@dataclass(slots=True)
class StatsRow:
    key: str
    sent: int = 0
    bytes: int = 0
    delivered: int = 0
    deferred: int = 0
    failed: int = 0


@dataclass(slots=True)
class StatsResult:
    dimension: str
    rows: list[StatsRow]
    top_deferring_domains: list[tuple[str, int]]
    top_reasons: list[tuple[str, int]]
