"""The server-side search walk: one call reads the index buckets of a search newest first, merges
their sorted sets, intersects the other indexed filters, and returns the candidate events' records.

The call is ``TRACKDELIVERY.WALK`` where Redis has loaded the trackdelivery module (``redis-module/``,
Rust: the same walk without a Lua ``redis.call`` per read, about three times cheaper for Redis), else
the Lua script below. Both take the same arguments and give the same reply, byte for byte.

Used on a single Redis (the script reads keys it computes, which a cluster forbids); a cluster runs the
client-side walk in ``search.py``. The layout it reads is docs/redis-model.md's: index members are
``digest head (3) | ms since bucket start (4, big endian) | type code (1) | event ref (11)``.

What the script decides is what the client-side walk decides, candidate for candidate: the same
buckets (the time index only where its directory says a wanted type is), the same period and cursor
bounds, the same order (time ms, then event ref, both descending), and the same per-group quotas. What
it cannot decide (a digest collision, the text filter, a token's scope) the caller checks on the decoded
records, and asks again from where a short group stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from trackdelivery.store.exceptions import WalkModuleMissing
from trackdelivery.store.keys import DIGEST_BYTES, DIRECTORY_SPAN, MEMBER_BYTES, KeySpace, Kind

logger = logging.getLogger(__name__)

#: the module's command (redis-module/): the script's walk, natively
WALK_COMMAND = "TRACKDELIVERY.WALK"

WALK_SCRIPT = f"local DIGEST, SPAN, MEMBER = {DIGEST_BYTES}, {DIRECTORY_SPAN}, {MEMBER_BYTES}\n" + r"""
local byte, sub, char, floor = string.byte, string.sub, string.char, math.floor
local band, lshift = bit.band, bit.lshift
local call = redis.call
local function be32(s, at)
  local a, b, c, d = byte(s, at, at + 3)
  return ((a * 256 + b) * 256 + c) * 256 + d
end
local function pack32(x)
  return char(floor(x / 16777216) % 256, floor(x / 65536) % 256, floor(x / 256) % 256, x % 256)
end
-- byte-wise: is a < b from position at on (Lua's own string order follows the locale)? Refs have one
-- length; a b shorter than a (a forged cursor) is not greater
local function less_from(a, b, at)
  for i = at, #a do
    local x, y = byte(a, i), byte(b, i)
    if y == nil then return false end
    if x ~= y then return x < y end
  end
  return false
end
local function bounds(head, head_next, base, lo, top)
  local upper, lower = '(' .. head_next, '[' .. head
  local low_off, high_off = lo - base, top - base
  if low_off >= 0 and low_off <= 4294967294 then lower = '[' .. head .. pack32(low_off) end
  if high_off >= 0 and high_off < 4294967294 then upper = '(' .. head .. pack32(high_off + 1) end
  return upper, lower
end

local at = 1
local function take() local v = ARGV[at]; at = at + 1; return v end
local function num() return tonumber(take()) end
local prefix = take()
local lo, hi = num(), num()
local cursor_ms, cursor_ref = num(), take()
local budget, directory, max_buckets = num(), num(), num()
local groups = {}
for g = 1, num() do groups[g] = {mask = num(), room = num()} end
local sources = {}
for s = 1, num() do
  sources[s] = {kind = take(), width = num(), head = take(), head_next = take(), first = num(), count = num(),
                slot = num()}
end
local checks = {}
for c = 1, num() do
  local alternatives = {}
  for a = 1, num() do
    alternatives[a] = {kind = take(), width = num(), head = take(), head_next = take(), first = num(), splits = num()}
  end
  checks[c] = alternatives
end

local function in_mask(mask, code) return band(mask, lshift(1, code)) ~= 0 end
local function room()
  local most = 0
  for _, g in ipairs(groups) do if g.room > most then most = g.room end end
  return most
end

local scanned = 0
-- candidates of one bucket, as parallel arrays (time ms, index member, type code); the event ref is the
-- member from REF on
local REF = DIGEST + 6
local cms, cmem, ccode, count = {}, {}, {}, 0

-- the alternatives' sorted sets over the times oldest..newest (ms), with the lex bounds of that window
local function window_sets(alternatives, oldest, newest)
  local sets = {}
  for _, alt in ipairs(alternatives) do
    for bucket = floor(newest / alt.width), floor(oldest / alt.width), -1 do
      local upper, lower = bounds(alt.head, alt.head_next, bucket * alt.width, oldest, newest)
      for partition = alt.first, alt.first + alt.splits - 1 do
        sets[#sets + 1] = {prefix .. 'x:' .. alt.kind .. ':' .. bucket .. ':' .. partition, upper, lower}
      end
    end
  end
  return sets
end

-- drops the candidates from index first..count that are absent from every alternative's index of a check:
-- a ZSCORE of each candidate's exact member, or, when the other value has few entries over the
-- candidates' time window (fewer than EXACT_RATIO per candidate), one read of that window
local EXACT_RATIO = 4
local function check(first, alternatives)
  if count < first then return end
  local present = {}
  local candidates = count - first + 1
  local sets
  if candidates > 8 then
    local newest, oldest = cms[first], cms[first]
    for i = first, count do
      if cms[i] > newest then newest = cms[i] end
      if cms[i] < oldest then oldest = cms[i] end
    end
    sets = window_sets(alternatives, oldest, newest)
    local entries = 0
    for _, set in ipairs(sets) do entries = entries + call('ZLEXCOUNT', set[1], set[3], set[2]) end
    if entries > EXACT_RATIO * candidates then sets = nil end
  end
  if sets then
    for _, set in ipairs(sets) do
      local entries = call('ZREVRANGEBYLEX', set[1], set[2], set[3])
      scanned = scanned + #entries
      for _, m in ipairs(entries) do present[sub(m, REF)] = true end
    end
  else
    for i = first, count do
      local ref = sub(cmem[i], REF)
      for _, alt in ipairs(alternatives) do
        local bucket = floor(cms[i] / alt.width)
        local partition = alt.first
        if alt.splits > 1 then partition = partition + be32(ref, 8) % alt.splits end
        local key = prefix .. 'x:' .. alt.kind .. ':' .. bucket .. ':' .. partition
        local member = alt.head .. pack32(cms[i] - bucket * alt.width) .. char(ccode[i]) .. ref
        if call('ZSCORE', key, member) then present[ref] = true break end
      end
    end
  end
  local kept = first - 1
  for i = first, count do
    if present[sub(cmem[i], REF)] then
      kept = kept + 1
      cms[kept], cmem[kept], ccode[kept] = cms[i], cmem[i], ccode[i]
    end
  end
  for i = kept + 1, count do cms[i], cmem[i], ccode[i] = nil, nil, nil end
  count = kept
end

-- bucket directories: one bit per (value slot, bucket), trusted for buckets from the store's since mark
local since_ms = tonumber(call('GET', prefix .. 'xd:since') or '-1') * 1000
local directory_bits = {}
local function in_directory(s, bucket)
  if s.slot < 0 or since_ms < 0 or bucket * s.width < since_ms then return true end
  local group = floor(bucket / SPAN)
  local name = s.kind .. ':' .. group
  local bits = directory_bits[name .. ':' .. s.slot]
  if not bits then
    bits = call('GETRANGE', prefix .. 'xd:' .. name, s.slot * SPAN / 8, (s.slot + 1) * SPAN / 8 - 1)
    directory_bits[name .. ':' .. s.slot] = bits
  end
  local position = bucket - group * SPAN
  local byte = byte(bits, floor(position / 8) + 1)
  return byte ~= nil and band(byte, lshift(1, 7 - position % 8)) ~= 0
end

local width = sources[1].width
local buckets = {}
if directory > 0 then
  local known = {}
  for code = 1, 30 do
    if in_mask(directory, code) then
      local busy = call('ZRANGEBYSCORE', prefix .. 'tb:' .. code, floor(lo / width), floor(hi / width))
      for _, b in ipairs(busy) do
        local n = tonumber(b)
        if not known[n] then known[n] = true buckets[#buckets + 1] = n end
      end
    end
  end
  table.sort(buckets, function(a, b) return a > b end)
else
  for b = floor(hi / width), floor(lo / width), -1 do buckets[#buckets + 1] = b end
end
local function marked(bucket)
  for _, s in ipairs(sources) do
    if in_directory(s, bucket) then return true end
  end
  return false
end

local out, n_out = {0, 0, 0}, 3
local message_prefix = prefix .. 'm:'
local sent = {}
local complete = 1
local SLOT = 1048576
local single = #groups == 1
local union = #sources > 1
-- the type codes some group still has room for
local wanted
local function refresh_wanted()
  wanted = {}
  for code = 0, 30 do
    for _, g in ipairs(groups) do if g.room > 0 and in_mask(g.mask, code) then wanted[code] = true end end
  end
end
refresh_wanted()
local filled = false  -- a group ran out of room: recompute the wanted types
local seen = union and {} or nil
local visited, resume = 0, -1
for _, bucket in ipairs(buckets) do
  local need = room()
  if need <= 0 then break end
  if scanned >= budget then complete = 0 break end
  -- a long walk (a rare value over many buckets) hands back between calls, so other searches need not
  -- wait behind it: the caller continues from this bucket's end
  if visited >= max_buckets then resume = (bucket + 1) * width - 1 break end
  -- a bucket no source's directory marks holds none of their entries: skipped, and not counted
  if marked(bucket) then
  visited = visited + 1
  local base = bucket * width
  cms, cmem, ccode, count = {}, {}, {}, 0
  local sets = 0
  for _, s in ipairs(sources) do
    local upper, lower = bounds(s.head, s.head_next, base, lo, hi)
    for partition = s.first, s.first + (in_directory(s, bucket) and s.count or 0) - 1 do
      local key = prefix .. 'x:' .. s.kind .. ':' .. bucket .. ':' .. partition
      local page = math.max(math.min(need, 250), 16)
      if not single then page = math.min(page * 2, 250) end
      local got = {}
      for g = 1, #groups do got[g] = 0 end
      local top = upper
      local before = count
      -- A set holds many values; a read that finds none of this one still scans the listpack from its
      -- end down to the value. For a value sorting in the set's lower half, after an empty bucket, a
      -- forward probe (which scans from the start) is the shorter way to learn there is nothing.
      local skip = s.sparse and byte(s.head, 1) < 128
        and #call('ZRANGEBYLEX', key, lower, upper, 'LIMIT', 0, 1) == 0
      while not skip do
        local entries = call('ZREVRANGEBYLEX', key, top, lower, 'LIMIT', 0, page)
        scanned = scanned + #entries
        local first = count + 1
        for _, m in ipairs(entries) do
          -- an entry of another length is not one the store wrote: skipped
          local code = #m == MEMBER and byte(m, DIGEST + 5)
          if wanted[code] then
            local ms = base + be32(m, DIGEST + 1)
            if ms >= lo and ms <= hi and (cursor_ms < 0 or ms < cursor_ms
                or (ms == cursor_ms and less_from(sub(m, REF), cursor_ref, 1))) then
              count = count + 1
              cms[count], cmem[count], ccode[count] = ms, m, code
            end
          end
        end
        for _, alternatives in ipairs(checks) do check(first, alternatives) end
        if single then
          got[1] = got[1] + count - first + 1
        else
          for i = first, count do
            for g, group in ipairs(groups) do if in_mask(group.mask, ccode[i]) then got[g] = got[g] + 1 end end
          end
        end
        if #entries < page then break end
        local enough = true
        for g, group in ipairs(groups) do if group.room > 0 and got[g] < group.room then enough = false end end
        if enough then break end
        top = '(' .. entries[#entries]
      end
      if count > before then sets = sets + 1 end
      s.found = s.found or count > before
    end
    s.sparse = not s.found
    s.found = false
  end
  -- newest first: time, then event ref (both descending). Entries of one set already come newest first
  -- (member order: time, type, ref), so only entries sharing a millisecond may need reordering.
  local ordered = {}
  if sets > 1 then
    local order = {}
    for i = 1, count do order[i] = (cms[i] - base) * SLOT + i end
    table.sort(order)
    for k = count, 1, -1 do ordered[count - k + 1] = order[k] % SLOT end
  else
    for i = 1, count do ordered[i] = i end
  end
  local i = 1
  while i <= count do
    local j = i
    while j < count and cms[ordered[j + 1]] == cms[ordered[i]] do j = j + 1 end
    if j > i then
      local run = {}
      for k = i, j do run[#run + 1] = ordered[k] end
      table.sort(run, function(a, b) return less_from(cmem[b], cmem[a], REF) end)
      for k = i, j do ordered[k] = run[k - i + 1] end
    end
    i = j + 1
  end
  -- take candidates while a group has room, then read their records one HMGET per message; a record
  -- that is gone (expired, replaced) gives its room back to the candidates after it
  local at = 1
  while at <= count and room() > 0 do
    local batch, n_batch = {}, 0
    local messages, n_messages, fields, slots, msgrefs = {}, 0, {}, {}, {}
    local function add(c, m)
      n_batch = n_batch + 1
      batch[n_batch] = c
      local msgref = sub(m, REF, REF + 7)
      local list = fields[msgref]
      if not list then
        list = {'a'}
        fields[msgref] = list
        n_messages = n_messages + 1
        messages[n_messages] = msgref
      end
      local slot = #list + 1
      list[slot] = sub(m, REF + 8)
      slots[c], msgrefs[c] = slot, msgref
    end
    if single and not seen then
      -- one group, one source: every candidate was read for this group's types (wanted)
      local group = groups[1]
      local left = group.room
      while at <= count and left > 0 do
        local c = ordered[at]
        at = at + 1
        left = left - 1
        add(c, cmem[c])
      end
      group.room = left
      if left == 0 then filled = true end
    else
      while at <= count and room() > 0 do
        local c = ordered[at]
        at = at + 1
        local m = cmem[c]
        local fresh = true
        if seen then
          local ref = sub(m, REF)
          if seen[ref] then fresh = false else seen[ref] = true end
        end
        local code = ccode[c]
        local take = false
        if fresh then
          for _, group in ipairs(groups) do
            if group.room > 0 and in_mask(group.mask, code) then
              take = true
              group.room = group.room - 1
              if group.room == 0 then filled = true end
            end
          end
        end
        if take then add(c, m) end
      end
    end
    local arrival, values = {}, {}
    for _, msgref in ipairs(messages) do
      local reply = call('HMGET', message_prefix .. msgref, unpack(fields[msgref]))
      arrival[msgref] = reply[1]
      values[msgref] = reply
    end
    for k = 1, n_batch do
      local c = batch[k]
      local msgref = msgrefs[c]
      local blob = values[msgref][slots[c]]
      if blob then
        out[n_out + 1], out[n_out + 2] = cms[c], sub(cmem[c], REF)
        -- a message's arrival record goes out with its first event only (false: see the one before)
        local first = not sent[msgref]
        if first then sent[msgref] = true end
        out[n_out + 3], out[n_out + 4] = first and arrival[msgref], blob
        n_out = n_out + 4
      else
        for _, group in ipairs(groups) do
          if in_mask(group.mask, ccode[c]) then group.room = group.room + 1 end
        end
      end
    end
  end
  if filled then refresh_wanted() filled = false end
  end
end
out[1], out[2], out[3] = complete, scanned, resume
return out
"""


#: buckets one call reads at most: a walk through many (a rare value over 30 days of hourly sets, 1,440
#: reads) is split into calls of a millisecond or two, between which Redis serves other clients
MAX_BUCKETS_PER_CALL = 64


@dataclass(frozen=True, slots=True)
class IndexValue:
    """One value of one index kind: which sorted sets (per bucket) hold it and its member prefix."""

    kind: Kind
    width_ms: int
    head: bytes
    head_next: bytes
    first_partition: int
    partitions: int
    directory_slot: int = -1  # the value's slot in its kind's bucket directories; -1: the kind has none


@dataclass(slots=True)
class WalkRequest:
    lo_ms: int
    hi_ms: int
    cursor: tuple[int, bytes] | None
    budget: int
    groups: list[tuple[int, int]]  # (type-code mask, room)
    sources: list[IndexValue]
    checks: list[list[IndexValue]] = field(default_factory=list)  # AND of ORs
    directory_mask: int = 0  # time index: only buckets its per-type directory lists
    max_buckets: int = MAX_BUCKETS_PER_CALL


@dataclass(slots=True)
class WalkReply:
    complete: bool  # False: the scan budget ran out
    scanned: int
    #: (time ms, event ref, arrival record, event record); a message's arrival record comes with its first
    #: candidate only (None with the others)
    candidates: list[tuple[int, bytes, bytes | None, bytes]]
    resume_ms: int | None  # stopped after max_buckets: go on with buckets up to this ms


class ServerWalk:
    def __init__(self, client: aioredis.Redis, keys: KeySpace, *, module: bool | None = None) -> None:
        """``module``: True walks with the module's command only (an error where Redis lacks it), False with
        the script only, None with the module where Redis has it (learnt on the first walk)."""
        self.prefix = keys.prefix
        self._client = client
        self._script = client.register_script(WALK_SCRIPT)  # EVALSHA, loaded again after NOSCRIPT
        self._requested = module
        #: whether walks go to the module; None until the first walk finds out
        self.uses_module: bool | None = module

    def arguments(self, request: WalkRequest) -> list[bytes | int]:
        arguments: list[bytes | int] = [self.prefix, request.lo_ms, request.hi_ms]
        if request.cursor is None:
            arguments += [-1, b""]
        else:
            arguments += [request.cursor[0], request.cursor[1]]
        arguments += [request.budget, request.directory_mask, request.max_buckets, len(request.groups)]
        for mask, room in request.groups:
            arguments += [mask, room]
        arguments.append(len(request.sources))
        for value in request.sources:
            arguments += [*self._value(value), value.directory_slot]
        arguments.append(len(request.checks))
        for alternatives in request.checks:
            arguments.append(len(alternatives))
            for value in alternatives:
                arguments += self._value(value)
        return arguments

    @staticmethod
    def _value(value: IndexValue) -> list[bytes | int]:
        return [value.kind.value.encode(), value.width_ms, value.head, value.head_next, value.first_partition,
                value.partitions]

    async def _call(self, arguments: list[bytes | int]) -> list[Any]:
        if self.uses_module is not False:
            try:
                reply: list[Any] = await self._client.execute_command(WALK_COMMAND, *arguments)
            except ResponseError as error:
                if not str(error).lower().startswith("unknown command"):
                    raise
                if self._requested:
                    raise WalkModuleMissing(
                        f"Redis has no {WALK_COMMAND} command: load the trackdelivery module "
                        "(redis-module/, docs/query-service.md) or let the service use the script"
                    ) from error
                logger.info("Redis has no %s command: walks run as a Lua script", WALK_COMMAND)
                self.uses_module = False
            else:
                self.uses_module = True
                return reply
        scripted: list[Any] = await self._script(keys=[], args=arguments)
        return scripted

    async def run(self, request: WalkRequest) -> WalkReply:
        reply = await self._call(self.arguments(request))
        # the walk sends a message's arrival record with its first event only: the decoder takes it from
        # there for the message's other events
        candidates = list(zip(reply[3::4], reply[4::4], reply[5::4], reply[6::4], strict=True))
        resume = int(reply[2])
        return WalkReply(complete=bool(reply[0]), scanned=int(reply[1]), candidates=candidates,
                         resume_ms=resume if resume >= 0 else None)
