"""Answers searches, message views and stats from the Redis query store (layout: docs/redis-model.md).

A search walks one index (the most selective filter given, else the scope's users and domains, else the
per-type time index) newest bucket first, merges its sorted sets client-side, fetches candidate events
and their messages' arrival records with one ``MGET`` per round, and checks every filter and the scope
on the decoded event (index values are hashed, so the check is what makes the answer exact).
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import logging
import struct
import time as clock
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
import zstandard
from redis.exceptions import NoScriptError

from query_service.rows import Candidate, ExactCheck, RowDecoder, row_event
from query_service.walk import IndexValue, ServerWalk, WalkRequest
from trackdelivery.events import DeliveryEvent, EventType
from trackdelivery.store import codec
from trackdelivery.store.exceptions import InvalidCursor, InvalidQuery, StoreError
from trackdelivery.store.keys import (
    ALL_TYPES,
    ARRIVAL_FIELD,
    DIGEST_BYTES,
    DIRECTORY_KINDS,
    DIRECTORY_SPAN,
    MSGREF_BYTES,
    REF_BYTES,
    STATS_COUNTERS,
    STATS_DEFERRING,
    STATS_DIMENSIONS,
    STATS_REASONS,
    STATS_SEPARATOR,
    TYPE_CODES,
    TYPES_BY_CODE,
    KeySpace,
    Kind,
    clean_text,
    directory_bytes,
    directory_slot,
    is_event_field,
    is_line_chunk_field,
    is_record_field,
    member_offset,
    member_ref,
    member_type,
    message_ref,
    normalize,
    pack_offset,
    value_digest,
    value_partition,
    value_partitions,
)
from trackdelivery.store.types import (
    MAX_RESULTS_BY_TYPE_LIMIT,
    MessageView,
    Query,
    QueryResult,
    StatsResult,
    StatsRow,
    StoreSettings,
)

RedisClient = aioredis.Redis | aioredis.RedisCluster

log = logging.getLogger("trackdelivery.query")

#: buckets read in the first round; each further round reads four times as many, up to the maximum
FIRST_WINDOW = 2
MAX_WINDOW = 256
_CURSOR = struct.Struct(f">Bq{REF_BYTES}s4s")
_CURSOR_VERSION = 1

#: preference order of the index that drives a search (most selective first)
_DRIVERS = (
    (Kind.MSGID, ("msgid",)),
    (Kind.SENDER, ("sender",)),
    (Kind.RECIPIENT, ("recipient",)),
    (Kind.IP, ("ip",)),
    (Kind.USER, ("cpanel_user",)),
    (Kind.SENDER_DOMAIN, ("sender_domain",)),
    (Kind.RECIPIENT_DOMAIN, ("recipient_domain",)),
    (Kind.REASON, ("reason",)),
    (Kind.SERVER, ("server",)),
)

#: HMGET on several message hashes in one call (single Redis only: the keys span slots)
_HMGET_MANY = """
local out, at = {}, 1
for i, key in ipairs(KEYS) do
  local n = tonumber(ARGV[at])
  out[i] = redis.call('HMGET', key, unpack(ARGV, at + 1, at + n))
  at = at + n + 1
end
return out
"""

#: ZREVRANGEBYLEX on several sorted sets in one call (single Redis only: the keys span slots)
_RANGES_MANY = """
local out = {}
for i, key in ipairs(KEYS) do
  local at = (i - 1) * 3
  out[i] = redis.call('ZREVRANGEBYLEX', key, ARGV[at + 1], ARGV[at + 2], 'LIMIT', 0, ARGV[at + 3])
end
return out
"""
RANGES_PER_CALL = 1000

#: filter -> the indexes that hold its value (either-side filters: any of two); the order filters drive
#: a search in when given together
_FILTER_KINDS: dict[str, tuple[Kind, ...]] = {
    **{name: (kind,) for kind, (name,) in _DRIVERS},
    "address": (Kind.SENDER, Kind.RECIPIENT),
    "domain": (Kind.SENDER_DOMAIN, Kind.RECIPIENT_DOMAIN),
}


@dataclass(slots=True)
class _WalkPlan:
    sources: list[IndexValue]
    checks: list[list[IndexValue]]
    directory_mask: int

SortKey = tuple[int, bytes]  # (event time in ms, event ref): the newest-first order is descending
#: one index value in one bucket: (kind, bucket, partitions to read, digest head, bucket start ms, types)
_Read = tuple[Kind, int, "range | tuple[int, ...]", bytes, int, frozenset[int]]


@dataclass(slots=True, eq=False)
class _Stream:
    """Entries of one sorted set under one prefix (a value, or a value and a type), newest first."""

    key: bytes
    prefix: bytes
    base_ms: int
    unit_ms: int
    upper: bytes  # ZREVRANGEBYLEX max
    lower: bytes  # ZREVRANGEBYLEX min
    types: frozenset[int]
    lo_ms: int
    hi_ms: int
    truncated: bool = False
    last: SortKey | None = None
    fetched: bool = False
    owners: list[_Group] = field(default_factory=list)


@dataclass(slots=True)
class _Group:
    """One result quota: a single event type (max_results_by_type) or all types (limit + cursor)."""

    types: frozenset[int]
    want: int  # results to return; one more is fetched to know whether there is more
    # DeliveryEvent from the client walk, (type, row JSON) from the server walk
    accepted: list[tuple[SortKey, Any]] = field(default_factory=list)
    buffer: list[tuple[tuple[int, int], bytes]] = field(default_factory=list)  # heap on the negated sort key
    streams: list[_Stream] = field(default_factory=list)
    seen: set[bytes] = field(default_factory=set)

    @property
    def satisfied(self) -> bool:
        return len(self.accepted) > self.want


@dataclass(slots=True)
class _Matcher:
    """Normalised filter values, checked on every decoded candidate."""

    query: Query
    max_chars: int
    values: dict[str, str] = field(default_factory=dict)
    text: str | None = None
    scope_users: frozenset[str] | None = None
    scope_domains: frozenset[str] | None = None

    def norm(self, kind: Kind, value: str | None) -> str | None:
        return None if value is None else normalize(kind, value, self.max_chars)

    def fields(self) -> tuple[str, ...]:
        """The event fields ``matches_fields`` reads for this query."""
        names = ["time"]
        for name in self.values:
            names += _FILTER_FIELDS[name][1]
        if self.text is not None:
            names += ["response", "subject"]
        if self.scope_users is not None or self.scope_domains is not None:
            names += ["cpanel_user", "sender_domain", "recipient_domain"]
        return tuple(dict.fromkeys(names))

    def values_matcher(self, wanted: tuple[str, ...], lo_ms: int, hi_ms: int) -> Callable[[tuple[Any, ...]], bool]:
        """``matches_fields`` on a tuple of the ``wanted`` fields' values (``fields()`` names them), as one
        function made once per walk: it runs on every candidate of an answer."""
        at = {name: index for index, name in enumerate(wanted)}
        if self.text is not None or self.scope_users is not None or self.scope_domains is not None:
            return lambda values: self.matches_fields(lambda name: values[at[name]], lo_ms, hi_ms)
        tests = [(normalise, tuple(at[name] for name in fields), wanted_value)
                 for filter_name, wanted_value in self.values.items()
                 for normalise, fields in (_FILTER_FIELDS[filter_name],)]
        time_at = at["time"]

        def matches(values: tuple[Any, ...]) -> bool:
            if not lo_ms <= int(values[time_at] * 1000) <= hi_ms:
                return False
            for normalise, indexes, wanted_value in tests:
                for index in indexes:
                    value = values[index]
                    if value == wanted_value or normalise(value) == wanted_value:
                        break
                else:
                    return False
            return True

        return matches

    def exact_check(self, wanted: tuple[str, ...], lo_ms: int, hi_ms: int) -> ExactCheck | None:
        """``values_matcher``'s test in the form the native decoder runs on each row as it decodes it:
        the time within the bounds and every filter's stored value exactly its normalised value. A row
        that passes matches; the others go to ``values_matcher``, which also tries their normalised
        forms. None with a text filter or a scope (Python checks every row then)."""
        if self.text is not None or self.scope_users is not None or self.scope_domains is not None:
            return None
        at = {name: index for index, name in enumerate(wanted)}
        filters = [([at[field_name] for field_name in _FILTER_FIELDS[name][1]], orjson.dumps(value))
                   for name, value in self.values.items()]
        return (at["time"], lo_ms, hi_ms), filters

    def matches(self, event: DeliveryEvent, lo_ms: int, hi_ms: int) -> bool:
        return self.matches_fields(event.__getattribute__, lo_ms, hi_ms)

    def matches_fields(self, get: Callable[[str], Any], lo_ms: int, hi_ms: int) -> bool:
        """Only the filters that were given are checked; stored strings are already clean and bounded."""
        if not lo_ms <= int(get("time") * 1000) <= hi_ms:
            return False
        for name, wanted in self.values.items():
            normalise, fields = _FILTER_FIELDS[name]
            for field_name in fields:
                if normalise(get(field_name)) == wanted:
                    break
            else:
                return False
        if self.text is not None:
            haystack = f"{get('response') or ''}\x00{get('subject') or ''}".casefold()
            if self.text not in haystack:
                return False
        return self.in_scope_fields(get)

    def in_scope(self, event: DeliveryEvent) -> bool:
        return self.in_scope_fields(event.__getattribute__)

    def in_scope_fields(self, get: Callable[[str], Any]) -> bool:
        if self.scope_users is None and self.scope_domains is None:
            return True
        if self.scope_users and self.norm(Kind.USER, get("cpanel_user")) in self.scope_users:
            return True
        if self.scope_domains:
            domains = {
                self.norm(Kind.SENDER_DOMAIN, get("sender_domain")),
                self.norm(Kind.RECIPIENT_DOMAIN, get("recipient_domain")),
            }
            return not domains.isdisjoint(self.scope_domains)
        return False

    def sender_side_in_scope(self, event: DeliveryEvent) -> bool:
        if self.scope_users is None and self.scope_domains is None:
            return True
        if self.scope_users and self.norm(Kind.USER, event.cpanel_user) in self.scope_users:
            return True
        return bool(self.scope_domains) and self.norm(Kind.SENDER_DOMAIN, event.sender_domain) in (
            self.scope_domains or frozenset()
        )


def _lower(value: str | None) -> str | None:
    return value.lower() if value is not None else None


def _ip(value: str | None) -> str | None:
    return normalize(Kind.IP, value, 1 << 20) if value is not None else None


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _same(value: str | None) -> str | None:
    return value


#: filter -> (how an event's value is normalised, the event fields it is compared with); stored values
#: are already bounded and clean
_FILTER_FIELDS: dict[str, tuple[Callable[[Any], str | None], tuple[str, ...]]] = {
    "sender": (_lower, ("sender",)),
    "recipient": (_lower, ("recipient", "original_recipient")),
    "address": (_lower, ("sender", "recipient", "original_recipient")),
    "sender_domain": (_lower, ("sender_domain",)),
    "recipient_domain": (_lower, ("recipient_domain",)),
    "domain": (_lower, ("sender_domain", "recipient_domain")),
    "server": (_lower, ("server",)),
    "cpanel_user": (_lower, ("cpanel_user",)),
    "msgid": (_same, ("msgid",)),
    "ip": (_ip, ("client_ip", "remote_ip")),
    "reason": (_text, ("reason",)),
}


def _matcher(query: Query, max_chars: int) -> _Matcher:
    matcher = _Matcher(query, max_chars)
    kinds = {
        "sender": Kind.SENDER,
        "recipient": Kind.RECIPIENT,
        "address": Kind.SENDER,
        "sender_domain": Kind.SENDER_DOMAIN,
        "recipient_domain": Kind.RECIPIENT_DOMAIN,
        "domain": Kind.SENDER_DOMAIN,
        "server": Kind.SERVER,
        "cpanel_user": Kind.USER,
        "msgid": Kind.MSGID,
        "ip": Kind.IP,
    }
    for name, kind in kinds.items():
        value = getattr(query, name)
        if value is not None:
            matcher.values[name] = normalize(kind, value, max_chars)
    if query.reason is not None:
        matcher.values["reason"] = query.reason.value
    if query.text:
        matcher.text = clean_text(query.text, max_chars).casefold()
    if query.scope_users is not None:
        matcher.scope_users = frozenset(normalize(Kind.USER, user, max_chars) for user in query.scope_users)
    if query.scope_domains is not None:
        matcher.scope_domains = frozenset(
            normalize(Kind.SENDER_DOMAIN, domain, max_chars) for domain in query.scope_domains
        )
    return matcher


def _fingerprint(query: Query) -> bytes:
    """Identifies the filters a cursor was made for (a cursor is refused on any other query)."""
    parts = [
        repr(getattr(query, name))
        for name in (
            "sender", "recipient", "address", "sender_domain", "recipient_domain", "domain", "server",
            "cpanel_user", "msgid", "ip", "reason", "since", "until", "text",
        )
    ]
    parts.append(repr(sorted(query.types)) if query.types is not None else "*")
    parts.append(repr(sorted(query.scope_users or ())) + repr(sorted(query.scope_domains or ())))
    return hashlib.blake2b("\x1f".join(parts).encode("utf-8", "replace"), digest_size=4).digest()


def encode_cursor(query: Query, position: SortKey) -> str:
    raw = _CURSOR.pack(_CURSOR_VERSION, position[0], position[1], _fingerprint(query))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(query: Query, cursor: str) -> SortKey:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, time_ms, ref, fingerprint = _CURSOR.unpack(raw)
    except (ValueError, struct.error) as error:
        raise InvalidCursor("malformed cursor") from error
    if version != _CURSOR_VERSION or fingerprint != _fingerprint(query):
        raise InvalidCursor("cursor belongs to another query")
    return int(time_ms), bytes(ref)


class DeliverySearch:
    def __init__(
        self, client: RedisClient, settings: StoreSettings, *, server_walk: bool = True, native: bool | None = None,
        walk_module: bool | None = None,
    ) -> None:
        """``server_walk=False`` walks the indexes from the client even on a single Redis (as on a cluster);
        ``walk_module`` chooses how the server walks (``ServerWalk``'s ``module``: None, the Redis module
        where it is loaded, else the script); ``native`` chooses the row decoder (None: the native one when
        it is installed)."""
        self.client = client
        self.settings = settings
        self.keys = KeySpace(settings)
        self.cluster = isinstance(client, aioredis.RedisCluster)
        self._hmget_script = client.register_script(_HMGET_MANY)
        self._ranges_sha: str | None = None
        self._walk = (
            ServerWalk(client, self.keys, module=walk_module)  # type: ignore[arg-type]
            if server_walk and not self.cluster else None
        )
        self.compression = codec.RecordCompression()
        self._rows = RowDecoder(self.compression, native=native)

    async def _load_dictionaries(self, blobs: list[bytes | None]) -> None:
        """Loads (once) the record dictionaries ``blobs`` were compressed with."""
        await self.compression.load_missing(blobs, lambda did: self.client.get(self.keys.dictionary(did)))

    def _record(self, blob: bytes) -> bytes:
        return self.compression.decompress(blob)

    # -- search -----------------------------------------------------------------------------------------

    async def search(self, query: Query, *, now: float | None = None) -> QueryResult:
        """The answer with its events as ``DeliveryEvent`` objects."""
        return await self._search(query, now, as_rows=False)

    async def search_rows(self, query: Query, *, now: float | None = None) -> QueryResult:
        """The same answer with every event as the JSON of its ``DeliveryEvent.to_dict()`` in ``rows``
        (``events`` stays empty): what the API sends, without building an object per event."""
        return await self._search(query, now, as_rows=True)

    async def _search(self, query: Query, now: float | None, *, as_rows: bool) -> QueryResult:
        now = clock.time() if now is None else now
        settings = self.settings
        types = frozenset(query.types) if query.types is not None else frozenset(EventType)
        if not types:
            raise InvalidQuery("no event type selected")
        lo = now - settings.retention_seconds
        if query.since is not None:
            lo = max(lo, query.since)
        hi = query.until if query.until is not None else now + settings.bucket_seconds
        if lo > hi:
            return QueryResult(events=[], counts={}, overflowed={})
        lo_ms, hi_ms = int(lo * 1000), int(hi * 1000)
        cursor: SortKey | None = None
        if query.page is not None:
            if not 1 <= query.page.limit <= MAX_RESULTS_BY_TYPE_LIMIT:
                raise InvalidQuery(f"limit must be between 1 and {MAX_RESULTS_BY_TYPE_LIMIT}")
            if query.page.cursor:
                cursor = decode_cursor(query, query.page.cursor)
                hi_ms = min(hi_ms, cursor[0])
            groups = [_Group(types=frozenset(TYPE_CODES[t] for t in types), want=query.page.limit)]
        else:
            per_type = query.max_results_by_type or MAX_RESULTS_BY_TYPE_LIMIT
            if not 0 < per_type <= MAX_RESULTS_BY_TYPE_LIMIT:
                raise InvalidQuery(f"max_results_by_type must be between 0 and {MAX_RESULTS_BY_TYPE_LIMIT}")
            groups = [_Group(types=frozenset((TYPE_CODES[t],)), want=per_type) for t in types]
        matcher = _matcher(query, settings.max_field_chars)
        plan = None
        if self._walk is not None and "msgid" not in matcher.values:
            plan = self._walk_plan(matcher, types, await self._sparsest(matcher, hi_ms))
        if plan is not None:
            complete, scanned = await self._collect_walk(plan, matcher, groups, lo_ms, hi_ms, cursor)
        else:
            complete, scanned = await self._collect(query, matcher, groups, lo_ms, hi_ms, cursor)
        merged: list[tuple[SortKey, Any]] = []
        counts: dict[EventType, int] = {}
        overflowed: dict[EventType, bool] = {}
        next_cursor = None
        for group in groups:
            group.accepted.sort(key=lambda item: item[0], reverse=True)
            kept = group.accepted[: group.want]
            merged.extend(kept)
            if query.page is None:
                event_type = TYPES_BY_CODE[next(iter(group.types))]
                counts[event_type] = len(kept)
                overflowed[event_type] = len(group.accepted) > group.want
            elif len(group.accepted) > group.want or (not complete and kept):
                next_cursor = encode_cursor(query, kept[-1][0])
        merged.sort(key=lambda item: item[0], reverse=True)
        items = [item for _, item in merged]
        row_json: list[bytes] = []
        events: list[DeliveryEvent] = []
        if plan is not None:
            row_json = [row for _, row in items]
            kinds = [event_type for event_type, _ in items]
            if not as_rows:
                events = [row_event(row) for row in row_json]
        else:
            events = items
            kinds = [event.type for event in events]
            if as_rows:
                row_json = [orjson.dumps(event.to_dict()) for event in events]
        if query.page is not None:
            for kind in kinds:
                counts[kind] = counts.get(kind, 0) + 1
        return QueryResult(
            events=[] if as_rows else events, counts=counts, overflowed=overflowed, next_cursor=next_cursor,
            complete=complete, scanned=scanned, rows=row_json,
        )

    # -- the server-side walk (single Redis) ---------------------------------------------------------

    async def _decode(
        self, candidates: list[Candidate], wanted: tuple[str, ...], exact: ExactCheck | None = None
    ) -> list[Any]:
        """The rows of the walk's candidates. The native decoder tries first and says which records it
        could not decode; the record dictionaries are looked up only then (a record's first 3 bytes name
        its dictionary), once per dictionary, not once per record."""
        if self._rows.native:
            decoded = self._rows.decode_native(candidates, wanted, exact)
            if None not in decoded:
                return decoded
        await self._load_dictionaries(
            list({blob[:3] for candidate in candidates for blob in (candidate[2], candidate[3]) if blob})
        )
        return self._rows.decode(candidates, wanted, exact)

    def _index_value(self, kind: Kind, value: str) -> IndexValue:
        keys = self.keys
        digest = value_digest(kind, value)
        partitions = value_partitions(kind, digest, keys.partitions(kind))
        head = digest[:DIGEST_BYTES]
        return IndexValue(kind, keys.bucket_seconds(kind) * 1000, head, _increment(head), partitions.start,
                          len(partitions), directory_slot(digest) if kind in DIRECTORY_KINDS else -1)

    async def _sparsest(self, matcher: _Matcher, hi_ms: int) -> str | None:
        """With two or more single-value index filters, the one with the fewest entries per second in
        its two newest buckets (one ``ZLEXCOUNT`` per set, one round trip): walking it and checking the
        others reads the fewest entries. None with fewer than two."""
        names = [name for _, (name,) in _DRIVERS if name in matcher.values and name != "msgid"]
        if len(names) < 2:
            return None
        pipe = self.client.pipeline(transaction=False)
        spans: list[tuple[str, int, int]] = []  # (name, sets counted, bucket width)
        for name in names:
            value = self._index_value(_FILTER_KINDS[name][0], matcher.values[name])
            newest = hi_ms // value.width_ms
            sets = 0
            for bucket in (newest, newest - 1):
                for partition in range(value.first_partition, value.first_partition + value.partitions):
                    pipe.zlexcount(self.keys.index(value.kind, bucket, partition), b"[" + value.head,
                                   b"(" + value.head_next)
                    sets += 1
            spans.append((name, sets, value.width_ms))
        counts = iter(await pipe.execute())
        density = {name: sum(int(next(counts)) for _ in range(sets)) / width for name, sets, width in spans}
        return min(names, key=lambda name: density[name])

    def _walk_plan(
        self, matcher: _Matcher, types: frozenset[EventType], sparsest: str | None = None,
    ) -> _WalkPlan | None:
        """What the walk reads (the driver ``_sources`` picks, or ``sparsest``) and which other filters it
        intersects on the server; None when its sources have different bucket widths (then the client
        walks)."""
        values = matcher.values
        driver, sources = self._sources(matcher)
        if sparsest is not None:
            driver, sources = sparsest, [(_FILTER_KINDS[sparsest][0], values[sparsest])]
        directory = 0
        if sources is None:
            keys = self.keys
            head = value_digest(Kind.TYPE, ALL_TYPES)[:DIGEST_BYTES]
            driving = [IndexValue(Kind.TYPE, keys.bucket_seconds(Kind.TYPE) * 1000, head, _increment(head), 0,
                                  keys.partitions(Kind.TYPE))]
            directory = sum(1 << TYPE_CODES[t] for t in types)
        else:
            driving = [self._index_value(kind, value) for kind, value in sources]
        if len({value.width_ms for value in driving}) != 1:
            return None
        checks = [
            [self._index_value(kind, values[name]) for kind in kinds]
            for name, kinds in _FILTER_KINDS.items()
            if name in values and name not in (driver, "msgid")
        ]
        return _WalkPlan(driving, checks, directory)

    async def _collect_walk(
        self, plan: _WalkPlan, matcher: _Matcher, groups: list[_Group], lo_ms: int, hi_ms: int,
        cursor: SortKey | None,
    ) -> tuple[bool, int]:
        """Fills every group from server-side walks: all groups from ``cursor`` first, then each group a
        check on the decoded records left short again from its own last candidate."""
        budget = self.settings.scan_budget
        scanned = 0
        # (groups, cursor, the newest ms still to read)
        queue: list[tuple[list[_Group], SortKey | None, int]] = [(groups, cursor, hi_ms)]
        wanted = matcher.fields()
        matches = matcher.values_matcher(wanted, lo_ms, hi_ms)
        exact = matcher.exact_check(wanted, lo_ms, hi_ms)  # rows that pass it come without values
        while queue:
            batch, start, top = queue.pop(0)
            batch = [group for group in batch if not group.satisfied]
            if not batch:
                continue
            request = WalkRequest(
                lo_ms=lo_ms, hi_ms=top if start is None else min(top, start[0]), cursor=start,
                budget=budget - scanned,
                groups=[(sum(1 << code for code in group.types), group.want + 1 - len(group.accepted))
                        for group in batch],
                sources=plan.sources, checks=plan.checks, directory_mask=plan.directory_mask,
            )
            assert self._walk is not None
            reply = await self._walk.run(request)
            scanned += reply.scanned
            last: dict[int, SortKey] = {}
            returned = [0] * len(batch)
            decoded = await self._decode(reply.candidates, wanted, exact)
            if len(batch) == 1:  # a page, or one type left: the loop below without its inner loop
                types, accepted, taken, sort_key = batch[0].types, batch[0].accepted, 0, None
                for (time_ms, ref, _, _), (event_type, row, values) in zip(reply.candidates, decoded, strict=True):
                    if TYPE_CODES[event_type] in types:
                        sort_key = (time_ms, ref)
                        taken += 1
                        if values is None or matches(values):
                            accepted.append((sort_key, (event_type, row)))
                if sort_key is not None:
                    last[0] = sort_key
                returned[0] = taken
            else:
                for (time_ms, ref, _, _), (event_type, row, values) in zip(reply.candidates, decoded, strict=True):
                    sort_key = (time_ms, ref)
                    code = TYPE_CODES[event_type]
                    ok = values is None or matches(values)
                    for index, group in enumerate(batch):
                        if code in group.types:
                            last[index] = sort_key
                            returned[index] += 1
                            if ok:
                                group.accepted.append((sort_key, (event_type, row)))
            if not reply.complete:
                return False, scanned
            short = []
            for index, group in enumerate(batch):
                # a group the walk gave all it asked for may have more beyond its last candidate
                if not group.satisfied and returned[index] == request.groups[index][1]:
                    queue.append(([group], last[index], request.hi_ms))
                elif not group.satisfied:
                    short.append(group)
            if short and reply.resume_ms is not None:
                queue.append((short, start, reply.resume_ms))
        return True, scanned

    def _sources(self, matcher: _Matcher) -> tuple[str | None, list[tuple[Kind, str]] | None]:
        """The filter that drives the search (the first given in ``_FILTER_KINDS`` order) and the index
        values whose union holds every answer; without one, the scope's users and domains, else None: the
        per-type time index."""
        values = matcher.values
        driver = next((name for name in _FILTER_KINDS if name in values), None)
        if driver is not None:
            return driver, [(kind, values[driver]) for kind in _FILTER_KINDS[driver]]
        if matcher.scope_users is not None or matcher.scope_domains is not None:
            sources = [(Kind.USER, user) for user in sorted(matcher.scope_users or ())]
            for domain in sorted(matcher.scope_domains or ()):
                sources += [(Kind.SENDER_DOMAIN, domain), (Kind.RECIPIENT_DOMAIN, domain)]
            return None, sources
        return None, None

    async def _directory_buckets(
        self, sources: list[tuple[Kind, str]], lo_ms: int, hi_ms: int,
    ) -> dict[tuple[Kind, str], Callable[[int], bool]]:
        """For each source of a kind with bucket directories: whether a bucket may hold its entries (one
        pipeline of GETRANGEs, a few bytes per day). Buckets before the store's since mark always may."""
        keys = self.keys
        wanted = [(kind, value) for kind, value in sources if kind in DIRECTORY_KINDS]
        if not wanted:
            return {}
        pipe = self.client.pipeline(transaction=False)
        pipe.get(keys.directory_since)
        reads: list[tuple[Kind, str, int]] = []
        for kind, value in wanted:
            width_ms = keys.bucket_seconds(kind) * 1000
            slot = directory_slot(value_digest(kind, value))
            for group in range(lo_ms // width_ms // DIRECTORY_SPAN, hi_ms // width_ms // DIRECTORY_SPAN + 1):
                pipe.getrange(keys.bucket_directory(kind, group), *directory_bytes(slot))
                reads.append((kind, value, group))
        replies = await pipe.execute()
        if replies[0] is None:
            return {}
        since_ms = int(replies[0]) * 1000
        marked: dict[tuple[Kind, str], set[int]] = {(kind, value): set() for kind, value in wanted}
        for (kind, value, group), bits in zip(reads, replies[1:], strict=True):
            for position in range(DIRECTORY_SPAN):
                if position // 8 < len(bits) and bits[position // 8] & (0x80 >> position % 8):
                    marked[(kind, value)].add(group * DIRECTORY_SPAN + position)

        def may_hold(kind: Kind, buckets: set[int]) -> Callable[[int], bool]:
            width_ms = keys.bucket_seconds(kind) * 1000
            return lambda bucket: bucket * width_ms < since_ms or bucket in buckets

        return {source: may_hold(source[0], buckets) for source, buckets in marked.items()}

    def _plan(
        self, sources: list[tuple[Kind, str]] | None, types: frozenset[int], lo_ms: int, hi_ms: int,
        directories: dict[tuple[Kind, str], Callable[[int], bool]] | None = None,
    ) -> list[tuple[int, list[_Read]]]:
        """Buckets newest first (by their last ms); for each, the sorted sets to read (only buckets the
        source's bucket directory, when it has one, marks)."""
        keys = self.keys
        per_source: list[tuple[Kind, bytes, range, frozenset[int], Callable[[int], bool] | None]] = []
        if sources is None:
            digest = value_digest(Kind.TYPE, ALL_TYPES)
            per_source.append((Kind.TYPE, digest, range(keys.partitions(Kind.TYPE)), types, None))
        else:
            for kind, value in sources:
                digest = value_digest(kind, value)
                per_source.append((kind, digest, value_partitions(kind, digest, keys.partitions(kind)), types,
                                   (directories or {}).get((kind, value))))
        plan: dict[int, list[_Read]] = {}
        for kind, digest, partitions, source_types, may_hold in per_source:
            width_ms = keys.bucket_seconds(kind) * 1000
            head = digest[:DIGEST_BYTES]
            for bucket in range(hi_ms // width_ms, lo_ms // width_ms - 1, -1):
                if may_hold is not None and not may_hold(bucket):
                    continue
                start_ms = bucket * width_ms
                plan.setdefault(start_ms + width_ms - 1, []).append(
                    (kind, bucket, partitions, head, start_ms, source_types)
                )
        return sorted(plan.items(), key=lambda item: item[0], reverse=True)

    async def _busy_buckets(
        self, plan: list[tuple[int, list[_Read]]], types: frozenset[int], lo_ms: int, hi_ms: int,
    ) -> list[tuple[int, list[_Read]]]:
        """Keeps the buckets of the time index that hold an event of a wanted type (its directory)."""
        width_ms = self.keys.bucket_seconds(Kind.TYPE) * 1000
        pipe = self.client.pipeline(transaction=False)
        for code in sorted(types):
            pipe.zrangebyscore(self.keys.type_directory(code), lo_ms // width_ms, hi_ms // width_ms)
        busy = {int(bucket) for reply in await pipe.execute() for bucket in reply}
        return [(end, reads) for end, reads in plan if end // width_ms in busy]

    def _streams_for(self, reads: list[_Read], lo_ms: int, hi_ms: int, cursor: SortKey | None) -> list[_Stream]:
        streams = []
        for kind, bucket, partitions, head, start_ms, types in reads:
            for partition in partitions:
                key = self.keys.index(kind, bucket, partition)
                streams.append(self._stream(key, head, start_ms, types, lo_ms, hi_ms, cursor))
        return streams

    def _stream(
        self, key: bytes, digest_head: bytes, base_ms: int, types: frozenset[int], lo_ms: int, hi_ms: int,
        cursor: SortKey | None,
    ) -> _Stream:
        """One value in one sorted set, newest first, bounded by the period and the cursor (entries of
        the cursor's own millisecond are filtered on the client: the type sits between time and ref)."""
        upper = b"(" + _increment(digest_head)
        lower = b"[" + digest_head
        top = hi_ms if cursor is None else min(hi_ms, cursor[0])
        low_offset, high_offset = lo_ms - base_ms, top - base_ms
        if 0 <= low_offset <= 0xFFFFFFFE:
            lower = b"[" + digest_head + pack_offset(low_offset)
        if 0 <= high_offset < 0xFFFFFFFE:
            upper = b"(" + digest_head + pack_offset(high_offset + 1)
        return _Stream(key, digest_head, base_ms, 1, upper, lower, types, lo_ms, hi_ms)

    async def _collect(
        self, query: Query, matcher: _Matcher, groups: list[_Group], lo_ms: int, hi_ms: int,
        cursor: SortKey | None,
    ) -> tuple[bool, int]:
        """Fill every group with want + 1 matching events (or all there are). Returns (complete, scanned)."""
        budget = self.settings.scan_budget
        scanned = 0
        all_types = frozenset().union(*(group.types for group in groups))
        if matcher.values.get("msgid") is not None:
            return await self._collect_msgid(matcher, groups, lo_ms, hi_ms, cursor)
        _, sources = self._sources(matcher)
        directories = await self._directory_buckets(sources, lo_ms, hi_ms) if sources is not None else None
        plan = self._plan(sources, all_types, lo_ms, hi_ms, directories)
        if sources is None:
            plan = await self._busy_buckets(plan, all_types, lo_ms, hi_ms)
        next_bucket = 0
        window = FIRST_WINDOW
        while True:
            open_groups = [group for group in groups if not group.satisfied]
            if not open_groups:
                return True, scanned
            # 1. decide the candidates no unread entry can precede, fetch and check them
            decided: list[tuple[_Group, SortKey, bytes]] = []
            for group in open_groups:
                boundary = max((s.last for s in group.streams if s.truncated and s.last), default=None)
                room = group.want + 1 - len(group.accepted)
                while group.buffer and room > 0:
                    negated, ref = group.buffer[0]
                    sort_key = (-negated[0], ref)
                    if boundary is not None and sort_key < boundary:
                        break
                    heapq.heappop(group.buffer)
                    if ref in group.seen:
                        continue
                    group.seen.add(ref)
                    decided.append((group, sort_key, ref))
                    room -= 1
            if decided:
                await self._check(decided, matcher, lo_ms, hi_ms)
                continue
            # 2. read more index entries: continue truncated streams, else open older buckets
            reads = [(group, s) for group in open_groups for s in group.streams if s.truncated or not s.fetched]
            if not reads:
                if next_bucket >= len(plan):
                    return True, scanned
                if scanned >= budget:
                    return False, scanned
                batch = plan[next_bucket : next_bucket + window]
                next_bucket += len(batch)
                window = self._next_window(window, next_bucket, open_groups)
                for _, bucket_reads in batch:
                    for stream in self._streams_for(bucket_reads, lo_ms, hi_ms, cursor):
                        stream.owners = [group for group in open_groups if not group.types.isdisjoint(stream.types)]
                        for group in stream.owners:
                            group.streams.append(stream)
                continue
            scanned += await self._read(reads, open_groups, cursor)
            for group in open_groups:
                group.streams = [stream for stream in group.streams if stream.truncated or not stream.fetched]
            if scanned >= budget and not any(group.buffer for group in open_groups):
                return False, scanned

    async def _collect_msgid(
        self, matcher: _Matcher, groups: list[_Group], lo_ms: int, hi_ms: int, cursor: SortKey | None
    ) -> tuple[bool, int]:
        """A message id names a few messages (one per server that used it): read them whole."""
        msgrefs = await self._message_refs(matcher.values["msgid"])
        records = await self._records(msgrefs)
        for msgref, record in zip(msgrefs, records, strict=True):
            arrival_blob = record.get(ARRIVAL_FIELD)
            arrival = codec.decode_arrival(self._record(arrival_blob)) if arrival_blob is not None else None
            for subref, blob in record.items():
                if not is_event_field(subref):
                    continue
                event = codec.decode_event(self._record(blob), arrival)
                sort_key = (int(event.time * 1000), msgref + subref)
                if cursor is not None and sort_key >= cursor:
                    continue
                if not matcher.matches(event, lo_ms, hi_ms):
                    continue
                for group in groups:
                    if TYPE_CODES[event.type] in group.types:
                        group.accepted.append((sort_key, event))
        return True, sum(len(record) for record in records)

    @staticmethod
    def _next_window(window: int, buckets_read: int, groups: list[_Group]) -> int:
        """Buckets to read next: as many as the density seen so far says the missing results need."""
        found = sum(len(group.accepted) for group in groups)
        missing = sum(max(group.want + 1 - len(group.accepted), 0) for group in groups)
        if found == 0:
            return min(window * 4, MAX_WINDOW)
        estimate = -(-missing * buckets_read // found) + 1
        return max(1, min(estimate, window * 4, MAX_WINDOW))

    async def _message_refs(self, msgid: str) -> list[bytes]:
        keys = self.keys
        digest = value_digest(Kind.MSGID, msgid)
        bucket = keys.message_bucket(msgid)
        key = keys.index(Kind.MSGID, bucket, value_partition(digest, keys.partitions(Kind.MSGID)))
        prefix = digest[:DIGEST_BYTES]
        entries = await self.client.zrevrangebylex(
            key, b"(" + _increment(prefix), b"[" + prefix, start=0, num=self.settings.scan_budget
        )
        return list(dict.fromkeys(member_ref(entry)[:MSGREF_BYTES] for entry in entries if isinstance(entry, bytes)))

    async def _records(self, msgrefs: list[bytes]) -> list[dict[bytes, bytes]]:
        if not msgrefs:
            return []
        pipe = self.client.pipeline(transaction=False)
        for msgref in msgrefs:
            pipe.hgetall(self.keys.message(msgref))
        records: list[dict[bytes, bytes]] = list(await pipe.execute())
        await self._load_dictionaries([
            blob for record in records for name, blob in record.items() if is_record_field(name)
        ])
        return records

    async def _ranges(self, ranges: list[tuple[bytes, bytes, bytes, int]]) -> list[list[bytes]]:
        """ZREVRANGEBYLEX for each (key, max, min, count): script calls of up to RANGES_PER_CALL sets on
        a single Redis, a pipeline of plain commands on a cluster."""
        pipe = self.client.pipeline(transaction=False)
        if self.cluster:
            for key, upper, lower, count in ranges:
                pipe.zrevrangebylex(key, upper, lower, start=0, num=count)
            return list(await pipe.execute())
        if self._ranges_sha is None:
            self._ranges_sha = codec.as_bytes(await self.client.script_load(_RANGES_MANY)).decode()
        for start in range(0, len(ranges), RANGES_PER_CALL):
            chunk = ranges[start : start + RANGES_PER_CALL]
            arguments: list[bytes | int] = []
            for _, upper, lower, count in chunk:
                arguments += [upper, lower, count]
            pipe.evalsha(self._ranges_sha, len(chunk), *(key for key, _, _, _ in chunk), *arguments)
        try:
            replies = await pipe.execute()
        except NoScriptError:
            self._ranges_sha = None
            return await self._ranges(ranges)
        return [entries for reply in replies for entries in reply]

    async def _read(self, reads: list[tuple[_Group, _Stream]], groups: list[_Group], cursor: SortKey | None) -> int:
        unique: dict[int, _Stream] = {}
        for _, stream in reads:
            unique[id(stream)] = stream
        streams = list(unique.values())
        pages = [self._page_size(stream) for stream in streams]
        replies = await self._ranges([(s.key, s.upper, s.lower, page) for s, page in zip(streams, pages, strict=True)])
        scanned = 0
        for stream, entries, page in zip(streams, replies, pages, strict=True):
            scanned += len(entries)
            stream.fetched = True
            owners = [group for group in stream.owners if not group.satisfied]
            for entry in entries:
                code = member_type(entry)
                if code not in stream.types:
                    continue
                sort_key = (stream.base_ms + member_offset(entry), member_ref(entry))
                if not stream.lo_ms <= sort_key[0] <= stream.hi_ms:
                    continue
                if cursor is not None and sort_key >= cursor:
                    continue
                negated = (-sort_key[0], -int.from_bytes(sort_key[1], "big"))
                for group in owners:
                    if code in group.types:
                        heapq.heappush(group.buffer, (negated, sort_key[1]))
            stream.truncated = len(entries) >= page
            if stream.truncated:
                last = entries[-1]
                # unread entries may share the last one's millisecond with any ref: decide only newer ones
                stream.last = (stream.base_ms + member_offset(last) + 1, b"")
                stream.upper = b"(" + last
            else:
                stream.last = None
        return scanned

    @staticmethod
    def _page_size(stream: _Stream) -> int:
        """Enough for the hungriest group this set feeds (more when it feeds rare types too)."""
        room = max((group.want + 1 - len(group.accepted) for group in stream.owners), default=1)
        if len(stream.owners) > 1:
            room *= 2
        return max(min(room, MAX_RESULTS_BY_TYPE_LIMIT), 16)

    async def _check(
        self, decided: list[tuple[_Group, SortKey, bytes]], matcher: _Matcher, lo_ms: int, hi_ms: int
    ) -> None:
        events = await self._fetch([ref for _, _, ref in decided])
        for (group, sort_key, _), event in zip(decided, events, strict=True):
            if event is None or event.type not in {TYPES_BY_CODE[c] for c in group.types}:
                continue
            if matcher.matches(event, lo_ms, hi_ms):
                group.accepted.append((sort_key, event))

    async def _fetch(self, refs: list[bytes]) -> list[DeliveryEvent | None]:
        """Events (with their message's arrival data) for refs: one script call on a single Redis,
        one ``HMGET`` per message in a pipeline on a cluster (every message hash may sit in another slot)."""
        by_message: dict[bytes, list[bytes]] = {}
        for ref in refs:
            by_message.setdefault(ref[:MSGREF_BYTES], []).append(ref[MSGREF_BYTES:])
        keys = [self.keys.message(msgref) for msgref in by_message]
        requests = [[ARRIVAL_FIELD, *subrefs] for subrefs in by_message.values()]
        replies = await self._hmget_many(keys, requests)
        await self._load_dictionaries([blob for values in replies for blob in values])
        unpack = self.compression.decompress
        found: dict[bytes, DeliveryEvent] = {}
        for msgref, subrefs, values in zip(by_message, by_message.values(), replies, strict=True):
            arrival = codec.decode_arrival(unpack(values[0])) if values[0] is not None else None
            for subref, blob in zip(subrefs, values[1:], strict=True):
                if blob is not None:
                    found[msgref + subref] = codec.decode_event(unpack(blob), arrival)
        return [found.get(ref) for ref in refs]

    async def _hmget_many(self, keys: list[bytes], requests: list[list[bytes]]) -> list[list[bytes | None]]:
        if not keys:
            return []
        if self.cluster:
            pipe = self.client.pipeline(transaction=False)
            for key, fields in zip(keys, requests, strict=True):
                pipe.hmget(key, fields)
            return list(await pipe.execute())
        arguments: list[bytes | int] = []
        for fields in requests:
            arguments.append(len(fields))
            arguments.extend(fields)
        return list(await self._hmget_script(keys=keys, args=arguments))

    # -- message view --------------------------------------------------------------------------------------

    async def message(
        self, server: str, msgid: str, *, scope_users: frozenset[str] | None = None,
        scope_domains: frozenset[str] | None = None,
    ) -> MessageView | None:
        """Everything stored about one message, or None (unknown, expired, or outside the scope)."""
        settings = self.settings
        max_chars = settings.max_field_chars
        matcher = _matcher(Query(scope_users=scope_users, scope_domains=scope_domains), max_chars)
        server_value = normalize(Kind.SERVER, server, max_chars)
        msgref = message_ref(clean_text(server, max_chars), clean_text(msgid, max_chars))
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.keys.message(msgref))
        # lines of a store written before they moved into the message hash
        pipe.lrange(self.keys.lines(msgref), 0, settings.max_lines_per_message - 1)
        record, listed_lines = await pipe.execute()
        chunks = {name: blob for name, blob in record.items() if is_line_chunk_field(name)}
        await self._load_dictionaries(
            [blob for name, blob in record.items() if is_record_field(name)]
        )
        try:
            await self._load_dictionaries([blob[2:] for blob in chunks.values()] + listed_lines)
        except StoreError as error:  # the transcript shows what it can (see _chunk_lines)
            log.warning("message %r: %s", msgid[:64], error)
        arrival_blob = record.get(ARRIVAL_FIELD)
        stored_arrival = codec.decode_arrival(self._record(arrival_blob)) if arrival_blob is not None else None
        events = [
            codec.decode_event(self._record(blob), stored_arrival)
            for subref, blob in record.items()
            if is_event_field(subref)
        ]
        events = [
            event
            for event in events
            if event.msgid == clean_text(msgid, max_chars)
            and normalize(Kind.SERVER, event.server, max_chars) == server_value
        ]
        if arrival_blob is None and not events:
            return None
        arrival = {
            name: value for name, value in (stored_arrival or {}).items() if name not in ("server", "msgid")
        }
        scoped = matcher.scope_users is not None or matcher.scope_domains is not None
        visible = [event for event in events if matcher.in_scope(event)]
        if scoped and not visible:
            if events:
                return None
            probe = DeliveryEvent(type=EventType.IN_PROGRESS, server=server, msgid=msgid, time=0.0, **arrival)
            if not matcher.sender_side_in_scope(probe):
                return None
        lines_visible = not scoped or any(matcher.sender_side_in_scope(event) for event in visible) or not events
        lines: list[str] = []
        if lines_visible:
            stored_msgid = clean_text(msgid, max_chars).encode("utf-8", "replace")
            listed = list(dict.fromkeys(self._listed_lines(listed_lines, stored_msgid)))
            kept = (listed + self._chunk_lines(chunks, stored_msgid))[: settings.max_lines_per_message]
            lines.extend(text.decode("utf-8", "replace") for text in kept)
        visible.sort(key=lambda event: (event.time, event.event_id))
        bounces = sorted({event.bounce_msgid for event in visible if event.bounce_msgid})
        return MessageView(
            server=server, msgid=msgid, arrival=arrival, events=visible, lines=lines, bounce_msgids=bounces,
            parent_msgid=arrival.get("parent_msgid"), lines_visible=lines_visible,
        )

    def _listed_lines(self, listed: list[bytes], msgid: bytes) -> list[bytes]:
        lines = []
        for raw in listed:
            try:
                lines.append(self.compression.decompress_line(raw, msgid))
            except (KeyError, zstandard.ZstdError) as error:
                log.warning("a raw line of message %r unreadable (%s): left out of its view", msgid[:64], error)
        return lines

    def _chunk_lines(self, chunks: dict[bytes, bytes], msgid: bytes) -> list[bytes]:
        """A message's raw lines from its chunks, ordered by second, file and offset, each once: chunks
        written again after a crash may overlap, and a line is the same line when its place and text are.
        Two lines of the same text at different places are both shown (Exim repeats a host's error for
        each recipient it tried)."""
        ordered: list[tuple[int, bytes, int, int, bytes]] = []
        for name in sorted(chunks):
            tag = name[5:7]
            try:
                decoded = codec.decode_line_chunk(name, self.compression.unpack_line_chunk(chunks[name]), msgid)
            except (IndexError, KeyError, ValueError, zstandard.ZstdError) as error:  # damaged: the others show
                log.warning("raw line chunk %s of message %r unreadable (%s): left out of its view", name.hex(),
                            msgid[:64], error)
                continue
            for number, (second, offset, text) in enumerate(decoded):
                ordered.append((second, tag, offset, number, text))
        ordered.sort(key=lambda line: line[:3])
        places = {(second, tag, offset, text): text for second, tag, offset, _, text in ordered}
        return list(places.values())

    # -- stats -----------------------------------------------------------------------------------------------

    async def stats(
        self, dimension: str = "user", *, since: float | None = None, until: float | None = None,
        scope_users: frozenset[str] | None = None, scope_domains: frozenset[str] | None = None,
        top: int = 10, now: float | None = None,
    ) -> StatsResult:
        """Counters per ``user``, ``sender_domain`` or ``server`` over the whole stats buckets (days; hours
        for servers) touching [since, until] (default: the last 24 hours). A scoped caller sees only its own users' and
        domains' rows, and no per-server rows."""
        if dimension not in STATS_DIMENSIONS:
            raise InvalidQuery(f"stats dimension must be one of {sorted(STATS_DIMENSIONS)}")
        now = clock.time() if now is None else now
        max_chars = self.settings.max_field_chars
        until = now if until is None else until
        since = until - 86400 if since is None else since
        since = max(since, now - self.settings.retention_seconds)
        if since > until:
            return StatsResult(dimension, [], [], [])
        scoped = scope_users is not None or scope_domains is not None
        users = frozenset(normalize(Kind.USER, user, max_chars) for user in scope_users or ())
        domains = frozenset(normalize(Kind.SENDER_DOMAIN, domain, max_chars) for domain in scope_domains or ())

        def buckets(name: str) -> list[bytes]:
            width = self.keys.stats_bucket_seconds(name)
            return [self.keys.stats(name, bucket) for bucket in range(int(since // width), int(until // width) + 1)]

        counter_keys = buckets(STATS_DIMENSIONS[dimension])
        deferring_keys, reason_keys = buckets(STATS_DEFERRING), buckets(STATS_REASONS)
        pipe = self.client.pipeline(transaction=False)
        for key in (*counter_keys, *deferring_keys, *reason_keys):
            pipe.hgetall(key)
        replies = await pipe.execute()
        rows: dict[str, StatsRow] = {}
        for reply in replies[: len(counter_keys)]:
            for name, amount in reply.items():
                value, _, counter = name.decode("utf-8", "replace").rpartition(STATS_SEPARATOR)
                if scoped and not (
                    (dimension == "user" and value in users) or (dimension == "sender_domain" and value in domains)
                ):
                    continue
                attribute = STATS_COUNTERS.get(counter)
                if attribute is not None:
                    row = rows.setdefault(value, StatsRow(key=value))
                    setattr(row, attribute, getattr(row, attribute) + int(amount))
        deferring: dict[str, int] = {}
        reasons: dict[str, int] = {}
        owned = replies[len(counter_keys) :]
        for index, reply in enumerate(owned):
            totals = deferring if index < len(deferring_keys) else reasons
            for name, amount in reply.items():
                user, _, rest = name.decode("utf-8", "replace").partition(STATS_SEPARATOR)
                domain, _, value = rest.partition(STATS_SEPARATOR)
                if scoped and user not in users and domain not in domains:
                    continue
                totals[value] = totals.get(value, 0) + int(amount)
        ordered = sorted(rows.values(), key=lambda row: (-row.sent, -row.delivered, row.key))

        def leaders(totals: dict[str, int]) -> list[tuple[str, int]]:
            return sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:top]

        return StatsResult(dimension, ordered, leaders(deferring), leaders(reasons))


def _increment(prefix: bytes) -> bytes:
    """The smallest byte string greater than every string starting with ``prefix``."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\xff" * (len(prefix) + 1)
    return trimmed[:-1] + bytes((trimmed[-1] + 1,))

