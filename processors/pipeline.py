"""Records → lines → events → outputs: the one processing step shared by the faust agent and rebuild.

``Pipeline.process`` decodes one raw-topic record, drops lines at or below the highest offset already
processed for their (server, file), parses and correlates the rest and returns what must be written.
State changes are held in an overlay (``StateStore``) and only reach the backing mapping (a faust
Table, or a dict offline) through ``Pipeline.commit``, which the caller invokes after the outputs
were acknowledged: a crash before that replays the record against the old state and writes the same
outputs again, which are idempotent.

Every backing value is ``b"<partition> <expires_at>\\n" + orjson``: the partition the key's changelog
entries belong to and the server log time after which it is dropped. Expiry is decided on the
server's own log clock (the highest line time seen from that server), so the live processor and a
rebuild drop exactly the same state at exactly the same point of the stream.
"""

from __future__ import annotations

import datetime
import logging
import math
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from processors.exim import correlator as correlation
from processors.exim.correlator import Correlator, bounded_state, state_key
from processors.exim.types import LineKind, ParsedLine
from trackdelivery.events import SCHEMA_VERSION, DeliveryEvent
from trackdelivery.records import RawLine, decode_batch

MAX_SERVER_CHARS = 255
MAX_FILE_CHARS = 255
MAX_UNPARSED_CHARS = 8192
MAX_REASON_CHARS = 512
# A message state is one changelog record: faust's producer refuses records over 1,000,000 bytes
# (producer_max_request_size), and a refused changelog write crashes the worker on that record every time.
MAX_STATE_BYTES = 900_000
NEVER = 1e18  # expires_at of keys that are never dropped (the server clocks)
# How far a line's time may run ahead of the moment its record was shipped and still move its server's
# clock: time-zone mistakes stay within a day, a corrupt year does not. A line dated beyond it is kept
# as it is, but the server's clock (which decides when state is stale) stops at the limit.
MAX_CLOCK_LEAD = 86400.0

WATERMARK_PREFIX = "#w:"  # Exim message ids never start with '#'
CLOCK_MSGID = "#c"

log = logging.getLogger("trackdelivery.processor")


class MessageLineFactory(Protocol):
    def __call__(self, server: str, msgid: str, time: float, text: str, file: str, offset: int) -> Any: ...


def _default_message_line(server: str, msgid: str, time: float, text: str, file: str, offset: int) -> Any:
    from trackdelivery.store.types import MessageLine

    return MessageLine(server, msgid, time, text, file, offset)


@dataclass(slots=True)
class BatchResult:
    """What one record produced; written by the caller, then committed."""

    partition: int = 0
    lines_in: int = 0
    duplicates: int = 0
    undecodable: int = 0
    correlator_errors: int = 0
    kinds: dict[str, int] = field(default_factory=dict)  # lines parsed, by the kind the parser gave them
    events: list[DeliveryEvent] = field(default_factory=list)
    unparsed: list[dict[str, Any]] = field(default_factory=list)
    lines: list[Any] = field(default_factory=list)  # trackdelivery.store.types.MessageLine

    @property
    def empty(self) -> bool:
        return not (self.events or self.unparsed or self.lines)


def encode_value(partition: int, expires_at: float, payload: Any) -> bytes:
    expires = min(NEVER, expires_at) if math.isfinite(expires_at) else NEVER
    return b"%d %d\n" % (partition, math.ceil(expires)) + orjson.dumps(payload)


def decode_header(value: bytes) -> tuple[int, float, int]:
    """``(partition, expires_at, start of the payload)`` of a backing value."""
    end = value.index(b"\n")
    partition, expires = value[:end].split(b" ", 1)
    return int(partition), float(expires), end + 1


def server_of(key: str) -> str:
    """The server a state key belongs to (the unescaped text before its first unescaped ``|``)."""
    if "\\" not in key:
        return key.partition("|")[0]
    chars: list[str] = []
    escaped = False
    for char in key:
        if escaped:
            chars.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "|":
            break
        else:
            chars.append(char)
    return "".join(chars)


def watermark_key(server: str, file: str) -> str:
    return state_key(server, WATERMARK_PREFIX + file)


def record_seconds(timestamp_ms: int | None) -> float | None:
    """A Kafka record timestamp (milliseconds, as aiokafka gives it) in seconds."""
    return None if timestamp_ms is None or timestamp_ms <= 0 else timestamp_ms / 1000.0


def clock_key(server: str) -> str:
    return state_key(server, CLOCK_MSGID)


def message_expiry(state: dict[str, Any], grace_seconds: float, stale_seconds: float,
                   clock: float | None = None) -> float:
    """The log time after which ``Correlator.release`` would drop this message state. A last line dated
    beyond the server's ``clock`` (held back by MAX_CLOCK_LEAD) counts as seen at the clock."""
    last = state.get(correlation.LAST_TIME)
    if isinstance(last, int | float) and clock is not None:
        last = min(last, clock)
    expires = float(last) + stale_seconds if isinstance(last, int | float) else NEVER
    done = state.get(correlation.DONE)
    if done and isinstance(done, int | float):
        expires = min(expires, float(done) + grace_seconds)
    return expires


_DELETED: Any = None


class StateStore(MutableMapping[str, dict[str, Any]]):
    """The correlator's store: reads fall through to ``backing``, writes stay here until ``changes``.

    A backing entry whose expiry is before ``now`` (the clock of the server being processed) reads
    as absent and is deleted on commit.
    """

    def __init__(self, backing: MutableMapping[str, bytes]) -> None:
        self.backing = backing
        self.now = 0.0
        self._cache: dict[str, dict[str, Any] | None] = {}
        self._dirty: set[str] = set()

    def _load(self, key: str) -> dict[str, Any] | None:
        if key in self._cache:
            return self._cache[key]
        raw = self.backing.get(key)
        state: dict[str, Any] | None = None
        if raw is not None:
            _, expires_at, start = decode_header(raw)
            if expires_at < self.now:
                self._dirty.add(key)  # expired: drop it from the backing on commit
            else:
                loaded = orjson.loads(memoryview(raw)[start:])
                state = loaded if isinstance(loaded, dict) else None  # clocks and watermarks are not states
        self._cache[key] = state
        return state

    def __getitem__(self, key: str) -> dict[str, Any]:
        state = self._load(key)
        if state is None:
            raise KeyError(key)
        return state

    def get(self, key: str, default: Any = None) -> Any:
        state = self._load(key)
        return default if state is None else state

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._load(key) is not None

    def __setitem__(self, key: str, value: dict[str, Any]) -> None:
        self._cache[key] = value
        self._dirty.add(key)

    def __delitem__(self, key: str) -> None:
        if self._load(key) is None:
            raise KeyError(key)
        self._cache[key] = _DELETED
        self._dirty.add(key)

    def __iter__(self) -> Iterator[str]:
        seen = set()
        for key in list(self.backing):
            if self._load(key) is not None:
                seen.add(key)
                yield key
        for key, state in list(self._cache.items()):
            if state is not None and key not in seen:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def changes(self) -> Iterator[tuple[str, dict[str, Any] | None]]:
        for key in self._dirty:
            yield key, self._cache.get(key)

    def discard(self) -> None:
        self._cache.clear()
        self._dirty.clear()


class Pipeline:
    """Parse + correlate + dedupe over one backing mapping. Not thread safe; one per worker."""

    def __init__(
        self,
        backing: MutableMapping[str, bytes],
        *,
        parse: Callable[..., ParsedLine] | None = None,
        default_tz: datetime.tzinfo = datetime.UTC,
        grace_seconds: float = 3600.0,
        stale_seconds: float = 8 * 86400.0,
        correlator_factory: Callable[[StateStore], Correlator] | None = None,
        message_line: MessageLineFactory = _default_message_line,
    ) -> None:
        if parse is None:
            from processors.exim.parser import parse_line

            parse = parse_line
        self.parse = parse
        self.default_tz = default_tz
        self.grace_seconds = grace_seconds
        self.stale_seconds = stale_seconds
        self.backing = backing
        self.store = StateStore(backing)
        if correlator_factory is None:
            self.correlator = Correlator(store=self.store, grace_seconds=grace_seconds, stale_seconds=stale_seconds)
        else:
            self.correlator = correlator_factory(self.store)
        self.message_line = message_line
        self._watermarks: dict[str, list[Any]] = {}  # pending for the current record
        self._clocks: dict[str, float] = {}  # pending for the current record
        self.trimmed_states = 0  # states cut down to MAX_STATE_BYTES at commit (bounded_state)
        self._clock_ceiling = NEVER  # of the record being processed (process)

    # -- clocks and watermarks ----------------------------------------------------------------------------

    def _read_number(self, key: str) -> float | None:
        raw = self.backing.get(key)
        if raw is None:
            return None
        start = decode_header(raw)[2]
        value = orjson.loads(memoryview(raw)[start:])
        return float(value) if isinstance(value, int | float) else None

    def clock(self, server: str) -> float:
        """The highest log time seen from this server (0 before its first timed line)."""
        pending = self._clocks.get(server)
        if pending is not None:
            return pending
        return self._read_number(clock_key(server)) or 0.0

    def _position(self, server: str, file: str) -> list[Any]:
        """``[highest offset processed, time, msgid of the last timed line]`` of a file; offset -1 when new."""
        key = watermark_key(server, file)
        pending = self._watermarks.get(key)
        if pending is not None:
            return pending
        raw = self.backing.get(key)
        if raw is not None:
            _, expires_at, start = decode_header(raw)
            value = orjson.loads(memoryview(raw)[start:])
            if expires_at >= self.clock(server) and isinstance(value, list) and len(value) == 3:
                return value
        return [-1, None, None]

    def watermark(self, server: str, file: str) -> int:
        """The highest byte offset of ``file`` processed so far, -1 when none."""
        return int(self._position(server, file)[0])

    # -- processing ------------------------------------------------------------------------------------------

    def process(self, value: bytes | None, partition: int = 0, shipped_at: float | None = None) -> BatchResult:
        """Everything one raw-topic record produces. State changes wait in the overlay for ``commit``.

        ``shipped_at`` is the record's Kafka timestamp (seconds): no line moves its server's clock more
        than MAX_CLOCK_LEAD beyond it. Rebuild replays the same timestamps, so it drops the same state.
        """
        self.discard()
        self._clock_ceiling = NEVER if shipped_at is None or shipped_at <= 0 else shipped_at + MAX_CLOCK_LEAD
        result = BatchResult(partition=partition)
        try:
            raw_lines = decode_batch(value or b"")
            for raw_line in raw_lines:
                if type(raw_line.offset) is not int or not isinstance(raw_line.data, bytes):
                    raise ValueError("offsets must be integers")
        except Exception as error:  # a malformed record is a dead letter, never a crash
            result.undecodable += 1
            result.unparsed.append(
                {
                    "server": None,
                    "file": None,
                    "offset": None,
                    "line": _bounded((value or b"")[:MAX_UNPARSED_CHARS].decode("utf-8", "replace")),
                    "reason": _bounded(f"undecodable record: {type(error).__name__}: {error}", MAX_REASON_CHARS),
                }
            )
            return result
        for raw_line in raw_lines:
            self._process_line(raw_line, result)
        return result

    def _process_line(self, raw_line: RawLine, result: BatchResult) -> None:
        result.lines_in += 1
        server = _bounded(str(raw_line.server), MAX_SERVER_CHARS)
        file = _bounded(str(raw_line.file), MAX_FILE_CHARS)
        offset = int(raw_line.offset)
        position = self._position(server, file)
        if offset <= position[0]:
            result.duplicates += 1
            return
        clock = self.clock(server)
        try:
            parsed = self.parse(raw_line.data, default_tz=self.default_tz)
        except Exception as error:  # a parser bug must not stop the stream
            self._watermarks[watermark_key(server, file)] = [offset, position[1], position[2]]
            self._dead_letter(result, server, file, offset, raw_line.data, f"parser error: {type(error).__name__}")
            return
        result.kinds[parsed.kind] = result.kinds.get(parsed.kind, 0) + 1
        if parsed.kind is LineKind.CONTINUATION:
            # continues the last timed line of the same file (which may have come in an earlier record)
            if parsed.time is None:
                parsed.time = position[1]
            if parsed.msgid is None:
                parsed.msgid = position[2]
            self._watermarks[watermark_key(server, file)] = [offset, position[1], position[2]]
        elif parsed.time is not None:
            self._watermarks[watermark_key(server, file)] = [offset, parsed.time, parsed.msgid]
        else:
            self._watermarks[watermark_key(server, file)] = [offset, position[1], position[2]]
        if parsed.time is not None and parsed.time > clock:
            clock = max(clock, min(parsed.time, self._clock_ceiling))
        self._clocks[server] = clock
        if parsed.kind is LineKind.UNKNOWN:
            reason = parsed.detail or "not understood"
            if raw_line.truncated:
                reason = f"truncated by the shipper; {reason}"
            self._dead_letter(result, server, file, offset, parsed.raw, reason)
        self.store.now = clock
        try:
            result.events.extend(self.correlator.feed(server, parsed))
        except Exception as error:  # a correlator bug costs this line, not the stream
            result.correlator_errors += 1
            self._dead_letter(result, server, file, offset, parsed.raw, f"correlator error: {type(error).__name__}")
        if parsed.msgid:
            time = parsed.time if parsed.time is not None else clock
            result.lines.append(self.message_line(server, parsed.msgid, time, parsed.raw, file, offset))

    @staticmethod
    def _dead_letter(result: BatchResult, server: str, file: str, offset: int, line: bytes | str, reason: str) -> None:
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        result.unparsed.append(
            {
                "server": server,
                "file": file,
                "offset": offset,
                "line": _bounded(text, MAX_UNPARSED_CHARS),
                "reason": _bounded(reason, MAX_REASON_CHARS),
            }
        )

    # -- commit -------------------------------------------------------------------------------------------

    def commit(self, partition: int) -> list[tuple[str, bytes | None]]:
        """The backing writes of the processed record, in order (message states, then watermarks and clocks).

        The caller applies them after the outputs were acknowledged; ``None`` means delete.
        """
        writes: list[tuple[str, bytes | None]] = []
        for key, state in self.store.changes():
            if state is None:
                writes.append((key, None))
            else:
                expires = message_expiry(state, self.grace_seconds, self.stale_seconds,
                                         self.clock(server_of(key)))
                value = encode_value(partition, expires, state)
                if len(value) > MAX_STATE_BYTES:  # a header is at most 32 bytes
                    value = encode_value(partition, expires, bounded_state(state, MAX_STATE_BYTES - 32))
                    self.trimmed_states += 1
                    log.warning("message state %r over %d bytes: detail dropped to fit", key, MAX_STATE_BYTES)
                writes.append((key, value))
        for key, position in self._watermarks.items():
            server = server_of(key)
            expires = self._clocks.get(server, self.clock(server)) + self.stale_seconds
            writes.append((key, encode_value(partition, expires, position)))
        for server, clock in self._clocks.items():
            writes.append((clock_key(server), encode_value(partition, NEVER, clock)))
        self.discard()
        return writes

    def apply(self, writes: Iterable[tuple[str, bytes | None]]) -> None:
        """Apply ``commit()`` writes to the backing mapping (offline use; the agent goes through the Table)."""
        for key, value in writes:
            if value is None:
                self.backing.pop(key, None)
            else:
                self.backing[key] = value

    def discard(self) -> None:
        self.store.discard()
        self._watermarks.clear()
        self._clocks.clear()

    # -- bounding the state ----------------------------------------------------------------------------------

    def expired_keys(self, items: Iterable[tuple[str, bytes]], partition: int | None = None) -> list[str]:
        """Backing keys (of ``partition`` if given) that expired on their server's clock.

        Only keys that a read would already treat as absent are returned, so when a sweep runs does
        not change any output.
        """
        expired: list[str] = []
        clocks: dict[str, float] = {}
        for key, value in items:
            if value is None:
                continue
            try:
                key_partition, expires_at, _ = decode_header(value)
            except ValueError:
                continue
            if expires_at >= NEVER or (partition is not None and key_partition != partition):
                continue
            server = server_of(key)
            clock = clocks.get(server)
            if clock is None:
                clock = clocks[server] = self.clock(server)
            if expires_at < clock:
                expired.append(key)
        return expired


def _bounded(text: str, limit: int = MAX_UNPARSED_CHARS) -> str:
    return text if len(text) <= limit else text[:limit]


def event_key(event: DeliveryEvent) -> bytes:
    """The events-topic key: ``server/msgid``, or ``server/-`` for events without a message id."""
    return f"{event.server}/{event.msgid or '-'}".encode("utf-8", "surrogatepass")


_EVENT_PREFIX = b'{"v":' + str(SCHEMA_VERSION).encode() + b","


def encode_event(event: DeliveryEvent) -> bytes:
    """``orjson(event.to_dict())`` without building the dict: orjson serialises dataclasses natively."""
    return _EVENT_PREFIX + orjson.dumps(event)[1:]


def encode_unparsed(entry: dict[str, Any]) -> bytes:
    return orjson.dumps(entry)


def count_by_type(events: Sequence[DeliveryEvent]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in events:
        counts[str(event.type)] = counts.get(str(event.type), 0) + 1
    return counts
