"""Writes delivery events and raw message lines into the Redis query store (layout: docs/redis-model.md).

Two pipelined round trips per ``write`` call, no transactions, no multi-key commands (Redis Cluster
safe). Round 1 reads each event's stored record and stores it when absent (``HGET`` + ``HSETNX`` on
the message hash: the old value tells new/updated/unchanged) and adds its index entries (``ZADD`` is
idempotent). Round 2 overwrites records re-emitted with more data, removes index entries the winning
version does not have, and counts stats only for records that were new in round 1, so a replay never
counts twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time as clock
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from trackdelivery.events import BLOCKED_AND_FAILED, DeliveryEvent, EventType
from trackdelivery.store import codec
from trackdelivery.store.keys import (
    ARRIVAL_FIELD,
    DIRECTORY_KINDS,
    DIRECTORY_SPAN,
    LINE_COUNT_FIELD,
    MSGREF_BYTES,
    REF_BYTES,
    REJECTION_GROUP_SECONDS,
    SPLITS,
    STATS_DEFERRING,
    STATS_REASONS,
    STATS_SEPARATOR,
    TYPE_CODES,
    KeySpace,
    Kind,
    directory_bit,
    entry_partition,
    event_ref,
    index_sources,
    line_chunk_field,
    line_mark_field,
    member,
    message_ref,
    normalize,
    ref_partition,
    value_digest,
    value_partition,
)
from trackdelivery.store.types import MessageLine, StoreSettings, WriteStats

RedisClient = aioredis.Redis | aioredis.RedisCluster


class ReplicationTimeout(RedisError):
    """The replicas did not acknowledge a write in time (the caller retries the write: it is idempotent)."""

Pipeline = aioredis.client.Pipeline | aioredis.cluster.ClusterPipeline

_NO_OFFSET = b"\x00" * 4

#: KEYS[1] = message hash; ARGV = expiry, number of records, line cap, (field, record) pairs, then
#: (field, line chunk, mark field, offsets) for each chunk, in log order. Stores each record whose field is
#: absent. A chunk's lines at or below its file's mark (the highest offset stored by an earlier call) were
#: stored before: a chunk of only such lines is skipped, and the line count, which the cap applies to,
#: counts only the others (a batch processed again after a retry packs the same lines into other chunks).
#: A chunk without a mark (lines without offsets) counts all its lines. A chunk is stored only when all
#: its new lines fit under the cap; the first chunk that does not fit, and every chunk after it, is not
#: stored, and the reply says how many of its new lines still fit (the caller stores those as a chunk of
#: their own), so a message keeps exactly its first ``cap`` lines however the batches cut them. Moves the
#: expiry later, never earlier. Returns {previous record values (nil = new), cut} with cut = {} or
#: {chunk number (1-based), lines that fit, its file's mark before this call}. One key: safe on Redis
#: Cluster.
STORE_RECORDS = """
local key = KEYS[1]
local olds, cut = {}, {}
local a = 4
for r = 1, tonumber(ARGV[2]) do
  local old = redis.call('HGET', key, ARGV[a])
  if not old then redis.call('HSET', key, ARGV[a], ARGV[a + 1]) end
  olds[r] = old
  a = a + 2
end
if a <= #ARGV then
  local count = tonumber(redis.call('HGET', key, '#') or '0')
  local cap, added = tonumber(ARGV[3]), 0
  local marks, raised, number = {}, {}, 1
  while a <= #ARGV do
    local chunk, mark = ARGV[a + 1], ARGV[a + 2]
    local fresh, top = string.byte(chunk, 1) * 256 + string.byte(chunk, 2), -1
    if mark ~= '' then
      if marks[mark] == nil then marks[mark] = tonumber(redis.call('HGET', key, mark) or '-1') end
      fresh = 0
      for text in string.gmatch(ARGV[a + 3], '%d+') do
        local offset = tonumber(text)
        if offset > marks[mark] then fresh = fresh + 1 end
        if offset > top then top = offset end
      end
    end
    if fresh > 0 and #cut == 0 and count + added < cap and redis.call('HEXISTS', key, ARGV[a]) == 0 then
      if count + added + fresh > cap then
        cut = {number, cap - count - added, mark ~= '' and marks[mark] or -1}
      else
        redis.call('HSET', key, ARGV[a], chunk)
        added = added + fresh
        if mark ~= '' and top > (raised[mark] or -1) then raised[mark] = top end
      end
    end
    a, number = a + 4, number + 1
  end
  if added > 0 then redis.call('HINCRBY', key, '#', added) end
  for mark, top in pairs(raised) do
    if top > marks[mark] then redis.call('HSET', key, mark, string.format('%d', top)) end
  end
end
local at = tonumber(ARGV[1])
if redis.call('EXPIRETIME', key) < at then redis.call('EXPIREAT', key, at) end
return {olds, cut}
"""

#: KEYS = every key the ops name; ARGV = ops, each ``op, key number`` then its arguments:
#: ``z n member…`` ZADD (score 0), ``b n offset…`` SETBIT to 1, ``e at`` EXPIREAT.
#: One call for a batch's index entries and expiries on a single Redis: redis-py spends more
#: CPU packing and parsing hundreds of small commands than Redis spends running them.
BULK_WRITES = """
local a = 1
while a <= #ARGV do
  local op, key = ARGV[a], KEYS[tonumber(ARGV[a + 1])]
  if op == 'z' then
    local n = tonumber(ARGV[a + 2])
    a = a + 3
    local args = {}
    for i = a, a + n - 1 do
      args[#args + 1] = '0'
      args[#args + 1] = ARGV[i]
    end
    a = a + n
    for s = 1, #args, 2000 do redis.call('ZADD', key, unpack(args, s, math.min(s + 1999, #args))) end
  elseif op == 'b' then
    local n = tonumber(ARGV[a + 2])
    a = a + 3
    for i = a, a + n - 1 do redis.call('SETBIT', key, ARGV[i], 1) end
    a = a + n
  else
    redis.call('EXPIREAT', key, ARGV[a + 2])
    a = a + 3
  end
end
return 0
"""


@dataclass(slots=True)
class _Bulk:
    """A batch's index entries and expiries: one script call on a single Redis, the same commands one by
    one on a cluster (its keys are in many slots)."""

    keys: dict[bytes, int] = field(default_factory=dict)
    ops: list[tuple[str, bytes, int, list[bytes]]] = field(default_factory=list)  # op, key, number, values

    def _number(self, key: bytes) -> int:
        return self.keys.setdefault(key, len(self.keys) + 1)

    def zadd(self, key: bytes, members: list[bytes]) -> None:
        self.ops.append(("z", key, self._number(key), members))

    def setbits(self, key: bytes, offsets: list[int]) -> None:
        self.ops.append(("b", key, self._number(key), [str(offset).encode() for offset in offsets]))

    def expireat(self, key: bytes, at: int) -> None:
        self.ops.append(("e", key, self._number(key), [str(at).encode()]))

    def queue(self, pipe: Pipeline, script_sha: str | None) -> None:
        if not self.ops:
            return
        if script_sha is None:
            for op, key, _, values in self.ops:
                if op == "z":
                    pipe.zadd(key, dict.fromkeys(values, 0))
                elif op == "b":
                    for offset in values:
                        pipe.setbit(key, int(offset), 1)
                else:
                    pipe.expireat(key, int(values[0]))
            return
        arguments: list[bytes | str | int] = []
        for op, _, number, values in self.ops:
            arguments += [op, number]
            if op in ("z", "b"):
                arguments.append(len(values))
            arguments += values
        pipe.evalsha(script_sha, len(self.keys), *self.keys, *arguments)


@dataclass(slots=True)
class _Prepared:
    event: DeliveryEvent
    ref: bytes
    message_key: bytes
    raw: bytes  # the record's JSON
    blob: bytes  # what is stored: raw or compressed
    entries: dict[bytes, bytes]  # index member -> index key
    expiries: dict[bytes, int] = field(default_factory=dict)
    old: bytes | None = None
    bits: list[tuple[bytes, int]] = field(default_factory=list)  # (bucket directory key, bit offset)


@dataclass(frozen=True, slots=True)
class _Chunk:
    """Raw lines of one message and one file, packed under one field of the message hash."""

    field: bytes
    value: bytes
    mark: bytes  # the field of the file's highest stored offset; empty for lines without offsets
    offsets: tuple[int, ...]
    # what it was packed from, to pack the part that fits under the cap when the whole does not
    lines: tuple[codec.ChunkLine, ...] = dataclasses.field(repr=False, compare=False, default=())
    file: str = ""
    msgid: bytes = b""

    def fresh_lines(self, mark_before: int) -> int:
        """How many of the lines were not stored before (all of them without a mark)."""
        if not self.mark:
            return codec.chunk_line_count(self.value)
        return sum(offset > mark_before for offset in self.offsets)

    def first_fresh(self, mark_before: int, wanted: int) -> list[codec.ChunkLine]:
        """The first ``wanted`` of the lines not stored before: what fits under the cap of a chunk that
        does not fit whole."""
        fresh = [line for line in self.lines if not self.mark or line[1] > mark_before]
        return fresh[:wanted]


@dataclass(slots=True)
class _Message:
    key: bytes
    expire_at: int
    arrival: DeliveryEvent | None = None  # the event whose arrival record is the longest in the batch
    arrival_raw: bytes | None = None
    arrival_blob: bytes | None = None
    old_arrival: bytes | None = None
    chunks: list[_Chunk] = field(default_factory=list)
    # on a cluster: the stored line count and file marks before this write, and which chunks it newly stored
    lines_before: int = 0
    marks_before: dict[bytes, int] = field(default_factory=dict)
    chunks_stored: list[bool] = field(default_factory=list)

    def marks(self) -> list[bytes]:
        """The file marks of the message's chunks, each once, in order."""
        return list(dict.fromkeys(chunk.mark for chunk in self.chunks if chunk.mark))


#: the largest stored line chunk: below ``hash-max-listpack-value`` (REDIS_CONFIG), so the message hash
#: stays a compact listpack; a single line larger than this is a chunk of its own
LINE_CHUNK_BYTES = 480
MAX_LINES_PER_CHUNK = 1000

#: how far past ``now`` + lifetime + retention an expiry may reach: a day-wide bucket's end, plus a day
EXPIRY_LEAD_SECONDS = 2 * 86400

@functools.lru_cache(maxsize=65536)
def _index_value(keys: KeySpace, kind: Kind, raw: str, max_chars: int) -> tuple[bytes, int, int]:
    """(digest, partition count, bucket width) of an index value; values repeat a lot (servers, users)."""
    return value_digest(kind, normalize(kind, raw, max_chars)), keys.partitions(kind), keys.bucket_seconds(kind)


class RedisWriter:
    def __init__(
        self, client: RedisClient, settings: StoreSettings, *, wait_replicas: int = 0,
        wait_replicas_timeout: float = 10.0,
    ) -> None:
        """``wait_replicas``: after each write, wait until that many of every master's connected replicas
        have acknowledged everything the master holds (Redis replicates asynchronously: a failover loses
        what a replica had not received). A master with fewer replicas connected waits for those it has."""
        self.client = client
        self.settings = settings
        self.wait_replicas = wait_replicas
        self.wait_replicas_timeout = wait_replicas_timeout
        self._replication_clients: dict[str, tuple[aioredis.Redis, bytes]] = {}
        self._replicas_known: dict[str, tuple[int, float]] = {}
        self.keys = KeySpace(settings)
        self._expiry_sent: dict[bytes, float] = {}
        self.compression = codec.RecordCompression()
        self._dictionary_state = "unknown" if settings.compression else "off"
        self._samples: list[bytes] = []
        self._store_sha: str | None = None
        self._bulk_sha: str | None = None
        self._expiry_ceiling = 1 << 62  # set by each write from its clock
        # (kind, bucket, partition) of an index set or (kind, group) of a directory -> name, expiry, ceiling
        self._named_keys: dict[tuple[Kind, int] | tuple[Kind, int, int], tuple[bytes, int, int]] = {}
        self._directory_since_known = False

    def _capped(self, expire_at: int) -> int:
        """An expiry no later than this write's ceiling: data dated in the future (a server whose clock
        runs years ahead) expires as if it had arrived now, instead of pinning memory for years."""
        return min(expire_at, self._expiry_ceiling)

    async def _prepare_dictionary(self) -> None:
        """Use the store's dictionary when there is one; else sample records until one can be trained."""
        if self._dictionary_state == "unknown":
            current = await self.client.get(self.keys.current_dictionary)
            self._dictionary_state = "sampling"
            if current is not None:
                await self._use_dictionary(codec.as_bytes(current))
        elif self._dictionary_state == "sampling" and len(self._samples) >= self.settings.dictionary_samples:
            data = codec.RecordCompression.train(self._samples, self.settings.dictionary_bytes)
            if data is None:
                if len(self._samples) >= 10 * self.settings.dictionary_samples:
                    self._dictionary_state, self._samples = "off", []
                return
            dictionary_id = codec.RecordCompression.identify(data)
            await self.client.set(self.keys.dictionary(dictionary_id), data, nx=True)
            await self.client.set(self.keys.current_dictionary, dictionary_id, nx=True)
            current = await self.client.get(self.keys.current_dictionary)
            await self._use_dictionary(codec.as_bytes(current or dictionary_id))

    async def _use_dictionary(self, dictionary_id: bytes) -> None:
        data = await self.client.get(self.keys.dictionary(dictionary_id))
        if data is not None:
            self.compression.install(dictionary_id, codec.as_bytes(data), use=True)
            self._dictionary_state, self._samples = "ready", []

    async def _load_dictionaries(self, blobs: Sequence[bytes | None]) -> None:
        await self.compression.load_missing(blobs, lambda did: self.client.get(self.keys.dictionary(did)))

    def _sample(self, raw: bytes) -> None:
        if self._dictionary_state == "sampling" and len(self._samples) < 10 * self.settings.dictionary_samples:
            self._samples.append(raw)

    async def write(self, events: Sequence[DeliveryEvent], lines: Sequence[MessageLine] = ()) -> WriteStats:
        """Store ``events`` and append ``lines``; idempotent: writing the same events again changes nothing."""
        stats = WriteStats()
        now = clock.time()
        settings = self.settings
        # the latest expiry data written now can need: its bucket (≤ 1 day wide) ends within a day of now
        self._expiry_ceiling = int(now + settings.message_lifetime_seconds + settings.retention_seconds
                                   + EXPIRY_LEAD_SECONDS) + 1
        if self._dictionary_state in ("unknown", "sampling"):
            await self._prepare_dictionary()
        if not self._directory_since_known:
            await self._prepare_directory()
        prepared: list[_Prepared] = []
        messages: dict[bytes, _Message] = {}
        for event in events:
            item = self._prepare(event, now)
            if item is None:
                stats.skipped += 1
                continue
            prepared.append(item)
            self._note_message(item, messages)
        try:
            await self._store(prepared, messages, lines, now, stats)
        except NoScriptError:  # the server lost its script cache (restart, failover): load it and redo
            self._store_sha = None
            await self._store(prepared, messages, lines, now, stats)
        arrivals = [message for message in messages.values() if message.arrival_blob is not None]
        await self._load_dictionaries([item.old for item in prepared] + [message.old_arrival for message in arrivals])
        chunked = [message for message in messages.values() if message.chunks_stored]
        await self._settle(prepared, arrivals, stats, chunked)
        if self.wait_replicas:
            await self.wait_replicated()
        return stats

    async def wait_replicated(self) -> None:
        """Wait until ``wait_replicas`` connected replicas of every master have everything the master had
        when called; raises ``ReplicationTimeout`` after ``wait_replicas_timeout``.

        ``WAIT`` covers only writes made on its own connection, and a cluster client writes over one
        connection per node. So, per master, one pipeline on a dedicated connection writes a marker key that
        lives on that master, then ``WAIT``s: the marker's replication offset is past every earlier write
        on the master, whoever made it, and ``WAIT`` makes the replicas acknowledge at once."""
        deadline = clock.monotonic() + self.wait_replicas_timeout
        nodes = await self._replication_nodes()
        await asyncio.gather(*(self._wait_node(name, client, key, deadline) for name, (client, key) in nodes.items()))

    async def _wait_node(self, name: str, client: aioredis.Redis, key: bytes, deadline: float) -> None:
        try:
            await self._wait_node_once(name, client, key, deadline)
        except RedisError:
            await self._drop_replication_client(name)  # a new connection next time (the node may be gone)
            raise

    async def _drop_replication_client(self, name: str) -> None:
        entry = self._replication_clients.pop(name, None)
        self._replicas_known.pop(name, None)
        if entry is not None and entry[0] is not self.client:
            with contextlib.suppress(RedisError, OSError):
                await entry[0].aclose()

    async def _wait_node_once(self, name: str, client: aioredis.Redis, key: bytes, deadline: float) -> None:
        while True:
            wanted = await self._replicas_wanted(name, client)
            if wanted == 0:
                return
            remaining_ms = max(1, int((deadline - clock.monotonic()) * 1000))
            pipe = client.pipeline(transaction=False)
            pipe.set(key, b"1", px=60_000)
            pipe.execute_command("WAIT", wanted, min(remaining_ms, 1000))
            marker, acked = await pipe.execute(raise_on_error=False)
            if isinstance(marker, Exception):  # MOVED: the slot map changed (failover); find the marker again
                raise ReplicationTimeout(f"Redis master {name}: {marker}")
            if int(acked) >= wanted:
                return
            self._replicas_known.pop(name, None)  # a replica may have gone: ask again
            if clock.monotonic() >= deadline:
                raise ReplicationTimeout(f"{acked} of {wanted} replicas of Redis master {name} acknowledged "
                                         f"within {self.wait_replicas_timeout:.0f}s")

    async def aclose(self) -> None:
        """Close the connections the writer opened itself (the ``wait_replicas`` ones; not ``client``)."""
        for name in list(self._replication_clients):
            await self._drop_replication_client(name)

    async def _replicas_wanted(self, name: str, client: aioredis.Redis) -> int:
        """min(wait_replicas, replicas online now), re-read every few seconds."""
        known = self._replicas_known.get(name)
        if known is not None and clock.monotonic() - known[1] < 5.0:
            return known[0]
        info = await client.info("replication")
        online = sum(
            1 for key, value in info.items()
            if key.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
        )
        wanted = min(self.wait_replicas, online)
        self._replicas_known[name] = (wanted, clock.monotonic())
        return wanted

    async def _replication_nodes(self) -> dict[str, tuple[aioredis.Redis, bytes]]:
        """A plain client on every master and a marker key whose slot that master serves."""
        client = self.client
        if not isinstance(client, aioredis.RedisCluster):
            if "redis" not in self._replication_clients:
                self._replication_clients["redis"] = (client, self.keys.prefix + b"ack")
            return self._replication_clients
        await client.initialize()  # no-op once the slot map is known
        primaries = {node.name: node for node in client.get_primaries()}
        for name in list(self._replication_clients):
            if name not in primaries:
                await self._drop_replication_client(name)
        for name, node in primaries.items():
            if name in self._replication_clients:
                continue
            for number in range(100_000):
                key = self.keys.prefix + b"ack:%d" % number
                owner = client.get_node_from_key(key.decode("latin-1"))
                if owner is not None and owner.name == name:
                    break
            # the node's own connection settings (TLS, ACL user), in a pool of its own: WAIT needs its connection
            pool = aioredis.ConnectionPool(connection_class=node.connection_class, max_connections=2,
                                           **node.connection_kwargs)
            self._replication_clients[name] = (aioredis.Redis.from_pool(pool), key)  # owns and closes the pool
        return {name: self._replication_clients[name] for name in primaries}

    async def _store(
        self, prepared: list[_Prepared], messages: dict[bytes, _Message], lines: Sequence[MessageLine], now: float,
        stats: WriteStats,
    ) -> None:
        """Round 1: records and line chunks (one script call per message hash; on a cluster, whose pipelines
        refuse scripts, HGET + HSETNX pairs) and index entries."""
        cluster = isinstance(self.client, aioredis.RedisCluster)
        if (self._store_sha is None or self._bulk_sha is None) and not cluster:
            self._store_sha = codec.as_bytes(await self.client.script_load(STORE_RECORDS)).decode()
            self._bulk_sha = codec.as_bytes(await self.client.script_load(BULK_WRITES)).decode()
        for message in messages.values():  # (again, when NOSCRIPT made the caller redo this round)
            message.chunks.clear()
        stats.lines = self._chunk_lines(messages, lines, now)
        per_message: dict[bytes, list[_Prepared]] = {}
        for item in prepared:
            per_message.setdefault(item.message_key, []).append(item)
        cap = self.settings.max_lines_per_message
        pipe = self.client.pipeline(transaction=False)
        for key, message in messages.items():
            pairs = [(item.ref[MSGREF_BYTES:], item.blob) for item in per_message.get(key, ())]
            if message.arrival_blob is not None:
                pairs.append((ARRIVAL_FIELD, message.arrival_blob))
            if cluster:
                for field_name, blob in pairs:
                    pipe.hget(key, field_name)
                    pipe.hsetnx(key, field_name, blob)
                if message.chunks:
                    pipe.hget(key, LINE_COUNT_FIELD)
                    for mark in message.marks():
                        pipe.hget(key, mark)
                    for chunk in message.chunks:
                        pipe.hsetnx(key, chunk.field, chunk.value)
                pipe.expireat(key, message.expire_at, nx=True)
                pipe.expireat(key, message.expire_at, gt=True)
            else:
                arguments: list[bytes | int] = [message.expire_at, len(pairs), cap]
                for field_name, blob in pairs:
                    arguments += [field_name, blob]
                self._queue_store(pipe, key, arguments, message.chunks)
        expiries: dict[bytes, int] = {}
        additions: dict[bytes, dict[bytes, int]] = {}
        for item in prepared:
            for entry, index_key in item.entries.items():
                additions.setdefault(index_key, {})[entry] = 0
            expiries.update(item.expiries)
        bulk = _Bulk()
        for index_key, entries in additions.items():
            bulk.zadd(index_key, list(entries))
        for directory, offsets in self._directory_bits(prepared).items():
            bulk.setbits(directory, offsets)
        self._queue_expiries(bulk, expiries, now)
        bulk.queue(pipe, None if cluster else self._bulk_sha)
        self._queue_directory(pipe, prepared, now)
        replies = await pipe.execute()
        if cluster:  # per message: [old, set?] per record, [count, set? per chunk], two expiries
            olds_per_message, position = [], 0
            for key, message in messages.items():
                count = len(per_message.get(key, ())) + (message.arrival_blob is not None)
                olds_per_message.append(replies[position : position + 2 * count : 2])
                position += 2 * count
                if message.chunks:
                    message.lines_before = int(replies[position] or 0)
                    marks = message.marks()
                    values = replies[position + 1 : position + 1 + len(marks)]
                    message.marks_before = {mark: int(value or -1) for mark, value in zip(marks, values, strict=True)}
                    position += 1 + len(marks)
                    stored = replies[position : position + len(message.chunks)]
                    message.chunks_stored = [bool(reply) for reply in stored]
                    position += len(message.chunks)
                position += 2
        else:
            olds_per_message = [olds for olds, _ in replies[: len(messages)]]
            cuts = [(message, cut) for message, (_, cut) in zip(messages.values(), replies, strict=False) if cut]
            if cuts:
                await self._store_cut_chunks(cuts)
        for (key, message), olds in zip(messages.items(), olds_per_message, strict=True):
            items = per_message.get(key, [])
            for item, old in zip(items, olds, strict=False):
                item.old = old
            if message.arrival_blob is not None:
                message.old_arrival = olds[len(items)]

    def _queue_store(self, pipe: Pipeline, key: bytes, arguments: list[bytes | int], chunks: list[_Chunk]) -> None:
        for chunk in chunks:
            arguments += [chunk.field, chunk.value, chunk.mark, " ".join(map(str, chunk.offsets)).encode()]
        pipe.evalsha(self._store_sha or "", 1, key, *arguments)

    async def _store_cut_chunks(self, cuts: list[tuple[_Message, list[int]]]) -> None:
        """Stores, per message whose lines reached the cap in this write, the new lines of the chunk that
        did not fit whole that still fit (STORE_RECORDS checks the cap again: a line stored meanwhile by
        anything else counts, and what does not fit then is dropped)."""
        cap = self.settings.max_lines_per_message
        calls = [
            (message, self._cut_chunks(message.chunks[int(number) - 1], int(mark_before), int(fits)))
            for message, (number, fits, mark_before) in cuts
        ]
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            for message, chunks in calls:
                self._queue_store(pipe, message.key, [message.expire_at, 0, cap], chunks)
            try:
                await pipe.execute()
                return
            except NoScriptError:  # the script cache was flushed since round 1: load it and redo only this
                if attempt:
                    raise
                self._store_sha = codec.as_bytes(await self.client.script_load(STORE_RECORDS)).decode()

    def _prepare(self, event: DeliveryEvent, now: float) -> _Prepared | None:
        settings = self.settings
        if not event.server or event.time != event.time or event.time + settings.retention_seconds <= now:
            return None
        max_chars = settings.max_field_chars
        event = codec.clean_event(event, max_chars)
        ref = event_ref(event.server, event.msgid, event.event_id, event.time)
        raw = codec.encode_event(event, max_chars, inline_arrival=not event.msgid)
        self._sample(raw)
        item = _Prepared(
            event=event,
            ref=ref,
            message_key=self.keys.message(ref[:MSGREF_BYTES]),
            raw=raw,
            blob=self.compression.compress(raw),
            entries={},
        )
        self._index(item)
        return item

    def _note_message(self, item: _Prepared, messages: dict[bytes, _Message]) -> None:
        event = item.event
        message = messages.get(item.message_key)
        if message is None:
            message = _Message(key=item.message_key, expire_at=self._message_expiry(event))
            messages[item.message_key] = message
        if event.msgid:
            arrival = message.arrival
            if arrival is not None and all(
                getattr(event, name) == getattr(arrival, name) for name in codec.ARRIVAL_ATTRIBUTES
            ):
                return  # the same arrival data as the message's events before it
            raw = codec.encode_arrival_blob(event, self.settings.max_field_chars)
            if message.arrival_raw is None or len(raw) > len(message.arrival_raw):
                message.arrival, message.arrival_raw = event, raw
                message.arrival_blob = self.compression.compress(raw)
                self._sample(raw)

    def _message_expiry(self, event: DeliveryEvent) -> int:
        """Fixed per message, so every write sends the same value: arrival + lifetime + retention."""
        settings = self.settings
        if not event.msgid:
            group_end = (int(event.time) // REJECTION_GROUP_SECONDS + 1) * REJECTION_GROUP_SECONDS
            return self._capped(int(group_end + settings.retention_seconds) + 1)
        arrived = event.arrival_time if event.arrival_time is not None else event.time
        arrived = min(arrived, event.time)
        return self._capped(int(arrived + settings.message_lifetime_seconds + settings.retention_seconds) + 1)

    def _index(self, item: _Prepared) -> None:
        event, keys, settings = item.event, self.keys, self.settings
        max_chars = settings.max_field_chars
        type_code = TYPE_CODES[event.type]
        time_ms = int(event.time * 1000)
        retention = settings.retention_seconds
        for kind, raw in self._sources(event):
            digest, partitions, width = _index_value(keys, kind, raw, max_chars)
            if kind is Kind.TYPE:
                partition = ref_partition(item.ref, partitions)
            else:
                partition = entry_partition(kind, digest, item.ref, partitions)
            bucket = time_ms // (width * 1000)
            offset = min(time_ms - bucket * width * 1000, 0xFFFFFFFE)
            key, expire_at = self._index_key(kind, bucket, partition, width, retention)
            item.entries[member(digest, type_code, offset, item.ref)] = key
            item.expiries[key] = expire_at
            if kind in DIRECTORY_KINDS:
                group, bit = directory_bit(digest, bucket)
                directory, directory_expiry = self._directory_key(kind, group, width, retention)
                item.bits.append((directory, bit))
                item.expiries[directory] = directory_expiry
        if event.msgid:
            # one entry per message: the message-id filter reads the whole message record
            value = normalize(Kind.MSGID, event.msgid, max_chars)
            digest = value_digest(Kind.MSGID, value)
            mbucket = keys.message_bucket(value)
            key = keys.index(Kind.MSGID, mbucket, value_partition(digest, keys.partitions(Kind.MSGID)))
            msgref = item.ref[:MSGREF_BYTES] + _NO_OFFSET[: REF_BYTES - MSGREF_BYTES]
            item.entries[member(digest, 0, 0, msgref)] = key
            if mbucket:
                end = mbucket * keys.message_bucket_seconds
                item.expiries[key] = self._capped(
                    int(end + settings.message_lifetime_seconds + settings.retention_seconds) + 1)
            else:
                item.expiries[key] = self._message_expiry(event)

    def _index_key(self, kind: Kind, bucket: int, partition: int, width: int, retention: float) -> tuple[bytes, int]:
        """An index set's name and expiry (its bucket's end + retention)."""
        return self._named((kind, bucket, partition), (bucket + 1) * width + retention,
                           lambda: self.keys.index(kind, bucket, partition))

    def _directory_key(self, kind: Kind, group: int, width: int, retention: float) -> tuple[bytes, int]:
        """A bucket directory's name and expiry: that of its last bucket's index sets, so it outlives them."""
        return self._named((kind, group), (group + 1) * DIRECTORY_SPAN * width + retention,
                           lambda: self.keys.bucket_directory(kind, group))

    def _named(self, cache_key: tuple[Kind, int] | tuple[Kind, int, int], end: float,
               make_name: Callable[[], bytes]) -> tuple[bytes, int]:
        """A key's name and capped expiry, cached per writer clock ceiling: a batch names the same few
        hundred index sets and directories thousands of times."""
        cache = self._named_keys
        found = cache.get(cache_key)
        if found is None or found[2] != self._expiry_ceiling:
            if len(cache) > 100_000:
                cache.clear()
            found = cache[cache_key] = (make_name(), self._capped(int(end) + 1), self._expiry_ceiling)
        return found[0], found[1]

    @staticmethod
    def _sources(event: DeliveryEvent) -> list[tuple[Kind, str]]:
        recipients: tuple[str | None, ...] = (event.recipient,)
        if event.original_recipient and event.original_recipient != event.recipient:
            recipients += (event.original_recipient,)
        ips: tuple[str | None, ...] = (event.client_ip,)
        if event.remote_ip and event.remote_ip != event.client_ip:
            ips += (event.remote_ip,)
        return index_sources(
            event.type,
            event.server,
            event.cpanel_user,
            event.sender,
            event.sender_domain,
            recipients,
            event.recipient_domain,
            ips,
            event.reason.value if event.reason is not None else None,
        )

    def _chunk_lines(self, messages: dict[bytes, _Message], lines: Sequence[MessageLine], now: float) -> int:
        """Packs each message's lines into chunks of its hash (one file's consecutive lines, compressed
        together, at most LINE_CHUNK_BYTES stored); returns how many lines were given."""
        settings = self.settings
        lifetime = settings.message_lifetime_seconds + settings.retention_seconds
        grouped: dict[tuple[bytes, str], list[tuple[MessageLine, bytes]]] = {}
        msgids: dict[bytes, bytes] = {}
        for line in lines:
            if not line.server or not line.msgid or not line.time + settings.retention_seconds > now:
                continue  # (a NaN time fails the comparison too)
            key = self.keys.message(message_ref(line.server, line.msgid))
            text = line.text.encode("utf-8", "replace")[: settings.max_line_bytes]
            msgid = msgids.setdefault(key, line.msgid.encode("utf-8", "replace"))
            self._sample(codec.RecordCompression.elide(text, msgid) or text)
            grouped.setdefault((key, line.file), []).append((line, text))
            expire_at = self._capped(int(line.time + lifetime) + 1)
            message = messages.get(key)
            if message is None:
                messages[key] = message = _Message(key=key, expire_at=expire_at)
            message.expire_at = max(message.expire_at, expire_at)
        count = 0
        most = min(MAX_LINES_PER_CHUNK, settings.max_lines_per_message)
        for (key, file), entries in grouped.items():
            chunk_lines = [
                (int(line.time), line.offset if line.offset >= 0 else number, text)
                for number, (line, text) in enumerate(entries)
            ]
            # lines read at a known place of a known file are recognised when written again
            mark = line_mark_field(file) if file and all(line.offset >= 0 for line, _ in entries) else b""
            if mark:  # in file order, whatever order the batch gave them: the cap keeps a file's first lines
                chunk_lines.sort(key=lambda chunk_line: chunk_line[1])
            count += len(chunk_lines)
            for start in range(0, len(chunk_lines), most):
                packed = self._pack_chunks(chunk_lines[start : start + most], msgids[key], file, mark)
                messages[key].chunks.extend(packed)
        return count

    def _pack_chunks(self, lines: list[codec.ChunkLine], msgid: bytes, file: str, mark: bytes) -> list[_Chunk]:
        """``lines`` as one chunk, or halved until every chunk fits LINE_CHUNK_BYTES (or is one line): a
        message's lines of one batch usually fit one chunk, so this compresses once."""
        packed = self._pack_chunk(lines, msgid, file, mark)
        if len(packed.value) <= LINE_CHUNK_BYTES or len(lines) == 1:
            return [packed]
        middle = len(lines) // 2
        return self._pack_chunks(lines[:middle], msgid, file, mark) + self._pack_chunks(
            lines[middle:], msgid, file, mark
        )

    def _pack_chunk(self, chunk: list[codec.ChunkLine], msgid: bytes, file: str, mark: bytes) -> _Chunk:
        payload = codec.line_chunk_payload(chunk, msgid)
        name = line_chunk_field(chunk[0][0], file, chunk[0][1], payload)
        offsets = tuple(offset for _, offset, _ in chunk) if mark else ()
        value = self.compression.pack_line_chunk(len(chunk), payload)
        return _Chunk(name, value, mark, offsets, tuple(chunk), file, msgid)

    def _cut_chunks(self, chunk: _Chunk, mark_before: int, fits: int) -> list[_Chunk]:
        """The first ``fits`` new lines of ``chunk`` (which does not fit under the cap whole), packed."""
        return self._pack_chunks(chunk.first_fresh(mark_before, fits), chunk.msgid, chunk.file, chunk.mark)

    def _queue_directory(self, pipe: Pipeline, prepared: list[_Prepared], now: float) -> None:
        """Notes which time-index buckets hold which types (lets a no-filter search skip empty buckets)."""
        keys, settings = self.keys, self.settings
        width = keys.bucket_seconds(Kind.TYPE)
        seen: set[tuple[int, int]] = set()
        for item in prepared:
            seen.add((TYPE_CODES[item.event.type], int(item.event.time // width)))
        refresh = settings.expiry_refresh_seconds
        for code, bucket in seen:
            marker = b"tb:%d:%d" % (code, bucket)
            last = self._expiry_sent.get(marker)
            if last is not None and now - last < refresh:
                continue
            self._expiry_sent[marker] = now
            directory = keys.type_directory(code)
            pipe.zadd(directory, {str(bucket).encode(): bucket})
            pipe.zremrangebyscore(directory, "-inf", f"({int((now - settings.retention_seconds) // width)}")
            pipe.expireat(directory, int(now + settings.retention_seconds + 2 * width))

    @staticmethod
    def _directory_bits(prepared: list[_Prepared]) -> dict[bytes, list[int]]:
        """The batch's bucket directory bits, every time (no writer-side memory of what was set: a store
        that lost them, flushed or rebuilt, must never miss the bit of an entry it holds)."""
        bits: dict[bytes, set[int]] = {}
        for item in prepared:
            for directory, offset in item.bits:
                bits.setdefault(directory, set()).add(offset)
        return {directory: sorted(offsets) for directory, offsets in bits.items()}

    async def _prepare_directory(self) -> None:
        """Marks, once per store, from when its bucket directories are complete: from the start for a new
        store; for a store written before it had directories, from a day after now (entries dated up to
        MAX_CLOCK_LEAD ahead may have been written without their bits)."""
        keys = self.keys
        if await self.client.get(keys.directory_since) is None:
            written = await asyncio.gather(*(self.client.exists(keys.type_directory(code))
                                             for code in TYPE_CODES.values()))
            since = int(clock.time()) + 86400 + 3600 if any(written) else 0
            await self.client.set(keys.directory_since, since, nx=True)
        self._directory_since_known = True

    def _queue_expiries(self, bulk: _Bulk, expiries: dict[bytes, int], now: float) -> None:
        """Index keys get their (fixed) expiry once per ``expiry_refresh_seconds`` per writer."""
        refresh = self.settings.expiry_refresh_seconds
        sent = self._expiry_sent
        for key, expire_at in expiries.items():
            last = sent.get(key)
            if last is not None and now - last < refresh:
                continue
            bulk.expireat(key, expire_at)
            sent[key] = now
        if len(sent) > 500_000:
            cutoff = now - refresh
            self._expiry_sent = {key: at for key, at in sent.items() if at >= cutoff}

    async def _settle(
        self, prepared: list[_Prepared], arrivals: list[_Message], stats: WriteStats, chunked: list[_Message],
    ) -> None:
        pipe = self.client.pipeline(transaction=False)
        cap = self.settings.max_lines_per_message
        for message in chunked:  # a cluster stored chunks unconditionally: what STORE_RECORDS does, after the fact
            added, full = 0, False
            raised: dict[bytes, int] = {}
            for chunk, stored in zip(message.chunks, message.chunks_stored, strict=True):
                if not stored:
                    continue
                mark_before = message.marks_before.get(chunk.mark, -1)
                fresh = chunk.fresh_lines(mark_before)
                kept = [chunk]
                if fresh > 0 and not full and message.lines_before + added < cap:
                    if message.lines_before + added + fresh > cap:
                        full, fits = True, cap - message.lines_before - added
                        pipe.hdel(message.key, chunk.field)
                        kept = self._cut_chunks(chunk, mark_before, fits)
                        for part in kept:
                            pipe.hsetnx(message.key, part.field, part.value)
                        fresh = fits
                    added += fresh
                    if chunk.mark:
                        top = max(offset for part in kept for offset in part.offsets)
                        raised[chunk.mark] = max(raised.get(chunk.mark, -1), top)
                else:
                    pipe.hdel(message.key, chunk.field)
            if added:
                pipe.hincrby(message.key, LINE_COUNT_FIELD, added)
            for mark, top in raised.items():
                if top > message.marks_before.get(mark, -1):
                    pipe.hset(message.key, mark, top)
        counters: dict[tuple[bytes, str], int] = {}
        stat_expiry: dict[bytes, int] = {}
        decompress = self.compression.decompress
        for item in prepared:
            if item.old is None:
                stats.new += 1
                self._count_event(item.event, counters, stat_expiry)
            elif item.old == item.blob or decompress(item.old) == item.raw:
                stats.unchanged += 1
            else:
                stats.updated += 1
                self._resolve_update(pipe, item, decompress(item.old))
        for message in arrivals:
            if message.old_arrival is None and message.arrival is not None:
                self._count_message(message.arrival, counters, stat_expiry)
            elif message.arrival_raw is not None and message.old_arrival is not None and len(message.arrival_raw) > len(
                decompress(message.old_arrival)
            ):
                pipe.hset(message.key, ARRIVAL_FIELD, message.arrival_blob or message.arrival_raw)
        for (key, name), amount in counters.items():
            pipe.hincrby(key, name, amount)
        for key, expire_at in stat_expiry.items():
            pipe.expireat(key, expire_at)
        if len(pipe):
            await pipe.execute()

    def _resolve_update(self, pipe: Pipeline, item: _Prepared, old_raw: bytes) -> None:
        """The version with more data wins; index entries only the loser had are removed."""
        old_event = codec.decode_event(old_raw, None)
        for name in (*codec.ARRIVAL_FIELDS, *codec.IDENTITY_FIELDS, "sender_domain"):
            setattr(old_event, name, getattr(item.event, name))
        old_item = _Prepared(
            event=old_event, ref=item.ref, message_key=item.message_key, raw=old_raw, blob=old_raw, entries={}
        )
        self._index(old_item)
        if len(item.raw) >= len(old_raw):
            pipe.hset(item.message_key, item.ref[MSGREF_BYTES:], item.blob)
            stale = {entry: key for entry, key in old_item.entries.items() if entry not in item.entries}
        else:
            stale = {entry: key for entry, key in item.entries.items() if entry not in old_item.entries}
        for entry, key in stale.items():
            pipe.zrem(key, entry)

    def _stats_key(self, dimension: str, time: float) -> tuple[bytes, int]:
        width = self.keys.stats_bucket_seconds(dimension)
        bucket = int(time // width)
        expire_at = self._capped(int((bucket + 1) * width + self.settings.retention_seconds) + 1)
        return self.keys.stats(dimension, bucket), expire_at

    def _dimension_values(self, event: DeliveryEvent) -> list[tuple[str, str]]:
        max_chars = self.settings.max_field_chars
        values = [
            ("u", normalize(Kind.USER, event.cpanel_user, max_chars) if event.cpanel_user else None),
            ("sd", normalize(Kind.SENDER_DOMAIN, event.sender_domain, max_chars) if event.sender_domain else None),
            ("h", normalize(Kind.SERVER, event.server, max_chars)),
        ]
        return [(dimension, value) for dimension, value in values if value is not None]

    def _count(
        self, counters: dict[tuple[bytes, str], int], stat_expiry: dict[bytes, int],
        dimension: str, time: float, name: str, amount: int,
    ) -> None:
        key, expire_at = self._stats_key(dimension, time)
        counters[(key, name)] = counters.get((key, name), 0) + amount
        stat_expiry[key] = expire_at

    def _count_event(
        self, event: DeliveryEvent, counters: dict[tuple[bytes, str], int], stat_expiry: dict[bytes, int]
    ) -> None:
        if event.type is EventType.DELIVERED:
            counter = "d"
        elif event.type is EventType.DEFERRED:
            counter = "w"
        elif event.type in BLOCKED_AND_FAILED:
            counter = "f"
        else:
            return
        for dimension, value in self._dimension_values(event):
            self._count(counters, stat_expiry, dimension, event.time, value + STATS_SEPARATOR + counter, 1)
        max_chars = self.settings.max_field_chars
        owner = STATS_SEPARATOR.join(
            (
                normalize(Kind.USER, event.cpanel_user or "", max_chars),
                normalize(Kind.SENDER_DOMAIN, event.sender_domain or "", max_chars),
            )
        )
        if counter == "w" and event.recipient_domain:
            domain = normalize(Kind.RECIPIENT_DOMAIN, event.recipient_domain, max_chars)
            self._count(counters, stat_expiry, STATS_DEFERRING, event.time, owner + STATS_SEPARATOR + domain, 1)
        if event.reason is not None:
            reason = owner + STATS_SEPARATOR + event.reason.value
            self._count(counters, stat_expiry, STATS_REASONS, event.time, reason, 1)

    def _count_message(
        self, event: DeliveryEvent, counters: dict[tuple[bytes, str], int], stat_expiry: dict[bytes, int]
    ) -> None:
        when = event.arrival_time if event.arrival_time is not None else event.time
        for dimension, value in self._dimension_values(event):
            self._count(counters, stat_expiry, dimension, when, value + STATS_SEPARATOR + "s", 1)
            if event.size:
                self._count(counters, stat_expiry, dimension, when, value + STATS_SEPARATOR + "b", int(event.size))

    async def purge_expired(self, now: float, lookback_buckets: int = 48) -> int:
        """Delete index keys (and bucket directories) of the ``lookback_buckets`` buckets just past the
        retention (keys that lost their expiry, e.g. a writer died between ZADD and EXPIREAT on a cluster).
        Expiries do the routine work."""
        settings, keys = self.settings, self.keys
        names: list[bytes] = []
        for kind in Kind:
            if kind is Kind.MSGID:
                continue
            newest_expired = keys.bucket_of(kind, now - settings.retention_seconds) - 1
            for bucket in range(max(newest_expired - lookback_buckets + 1, 0), newest_expired + 1):
                names += [
                    keys.index(kind, bucket, part) for part in range(keys.partitions(kind) * SPLITS.get(kind, 1))
                ]
            if kind in DIRECTORY_KINDS:  # a directory expires with its group's last bucket
                newest_group = (newest_expired + 1) // DIRECTORY_SPAN - 1
                first_group = max(newest_group - lookback_buckets // DIRECTORY_SPAN, 0)
                names += [keys.bucket_directory(kind, group) for group in range(first_group, newest_group + 1)]
        removed = 0
        cluster = isinstance(self.client, aioredis.RedisCluster)
        for start in range(0, len(names), 1000):
            chunk = names[start : start + 1000]
            if cluster:  # the keys sit in many slots: one UNLINK per key, pipelined per node
                pipe = self.client.pipeline(transaction=False)
                for name in chunk:
                    # not pipe.unlink(): redis-py's cluster pipeline makes that a coroutine that queues nothing
                    pipe.execute_command("UNLINK", name)
                removed += sum(int(reply or 0) for reply in await pipe.execute())
            else:
                removed += int(await self.client.unlink(*chunk) or 0)
        return removed
