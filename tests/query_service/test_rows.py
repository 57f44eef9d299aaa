"""The API rows of stored events: the native decoder, the Python one and ``decode_event(...).to_dict()``
agree byte for byte, hostile values included."""

import dataclasses
import os

import orjson
import pytest
import redis.asyncio as aioredis

from processors.sinks.redis import RedisWriter
from query_service.rows import RowDecoder, native_available, row_event
from query_service.search import DeliverySearch
from tests.trackdelivery.store.factories import NOW, make_event, random_events, store_settings
from trackdelivery.events import EventType, RetryState
from trackdelivery.store import codec
from trackdelivery.store.types import Page, Query

HOSTILE = [
    'quote " and back\\slash', "new\nline\ttab\r\x00\x01\x1f\x7f", "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>", "ünïcødé ✉ 📬", "\udcff lone surrogate", "z" * 5000, "{x}*[]", "",
]


def hostile_events() -> list:
    events = random_events(300, seed=3, span=86400.0)
    for number, value in enumerate(HOSTILE):
        time = NOW - 50 - number
        events += [
            make_event(time=time, subject=value, response=value, sender=f"{value}@evil.example"),
            make_event(time=time - 0.5, recipient=f"x@{value}.example", recipient_domain=None, sender=value),
            # domains the store derives (left out of the record) from non-ASCII and upper-case addresses
            make_event(time=time - 0.25, recipient=f"ÜSER@DÖMÄIN-{number}.İ",
                       recipient_domain=codec.domain_of(f"ÜSER@DÖMÄIN-{number}.İ"), sender=f"a@B{number}.EXAMPLE",
                       sender_domain=f"b{number}.example"),
            make_event(type=EventType.DEFERRED, time=time - 0.75, server=value or "s", cpanel_user=value,
                       retry=RetryState(3, NOW - 900, time, time + 900.5, None), spam_score=1e-05, size=0),
            make_event(type=EventType.REJECTED, msgid=None, time=time - 1, recipient=value, recipient_domain=value,
                       event_id=f"own-id-{value[:20]}"),
        ]
    return events


@pytest.fixture
async def stored(redis_db_url, key_prefix):
    client = aioredis.Redis.from_url(redis_db_url)
    settings = store_settings(key_prefix, dictionary_samples=100)
    writer = RedisWriter(client, settings)
    events = hostile_events()
    for start in range(0, len(events), 100):
        await writer.write(events[start : start + 100])
    yield client, settings, events
    await client.aclose()


async def _candidates(client, settings):
    """Every stored event as the server walk hands it to the decoder."""
    search = DeliverySearch(client, settings)
    captured = []
    assert search._walk is not None
    run = search._walk.run

    async def capture(request):
        reply = await run(request)
        captured.extend(reply.candidates)
        return reply

    search._walk.run = capture  # type: ignore[method-assign]
    result = await search.search_rows(Query(page=Page(limit=5000)), now=NOW)
    assert len(result.rows) == len(captured)
    return search, captured


def _with_arrivals(candidates):
    """The candidates with every one's message arrival record (the walk sends it with the first only)."""
    first = {}
    for _, ref, arrival, _ in candidates:
        if arrival is not None:
            first.setdefault(ref[:8], arrival)
    return [(time, ref, arrival or first.get(ref[:8]), blob) for time, ref, arrival, blob in candidates]


def _reference(search, candidate) -> bytes:
    _, _, arrival, blob = candidate
    unpack = search.compression.decompress
    event = codec.decode_event(unpack(blob), codec.decode_arrival(unpack(arrival)) if arrival else None)
    return orjson.dumps(event.to_dict())


@pytest.mark.parametrize("native", [False, True])
async def test_rows_equal_the_json_of_the_decoded_event(stored, native):
    if native and not native_available():
        pytest.skip("the native decoder is not installed here (CI requires it: see the next test)")
    client, settings, events = stored
    search, candidates = await _candidates(client, settings)
    assert len(candidates) == len(events)
    decoder = RowDecoder(search.compression, native=native)
    assert any(arrival is None for _, _, arrival, _ in candidates), "repeated arrival records are left out"
    decoded = decoder.decode(candidates, ("time", "sender", "recipient_domain", "subject", "spam_score"))
    for candidate, (event_type, row, values) in zip(_with_arrivals(candidates), decoded, strict=True):
        assert row == _reference(search, candidate)
        event = row_event(row)
        assert event_type is event.type
        assert values == (event.time, event.sender, event.recipient_domain, event.subject, event.spam_score)
        assert dataclasses.asdict(event) == {k: v for k, v in orjson.loads(row).items() if k != "v"}


def test_the_native_decoder_is_installed_in_ci():
    """CI builds it (`make install`); a missing build must not pass as the slower Python path."""
    if os.environ.get("CI") == "true":
        assert native_available()


async def test_the_native_decoder_leaves_only_non_ascii_derived_domains_to_python(stored):
    if not native_available():
        pytest.skip("the native decoder is not installed here")
    client, settings, _ = stored
    search, candidates = await _candidates(client, settings)
    decoder = RowDecoder(search.compression, native=True)
    assert decoder._native is not None
    for dictionary_id, data in search.compression.dictionaries.items():
        decoder._native.add_dictionary(dictionary_id, data)
    results = decoder._native.decode(candidates, ["time"])
    left = [_reference(search, c) for c, result in zip(_with_arrivals(candidates), results, strict=True)
            if result is None]
    assert left, "the hostile set has non-ASCII domains to derive"
    for row in left:
        event = orjson.loads(row)
        assert not (event["recipient"] or "").isascii() or not (event["sender"] or "").isascii()


async def test_the_native_exact_check_passes_exactly_the_rows_whose_values_are_the_filters(stored):
    """A row comes without values when, and only when, its time is in bounds and every filter's value
    is exactly on one of its fields (hostile values included); the search then skips its Python check."""
    if not native_available():
        pytest.skip("the native decoder is not installed here")
    from query_service.search import _FILTER_FIELDS, _matcher

    client, settings, events = stored
    search, candidates = await _candidates(client, settings)
    await search._load_dictionaries([blob[:3] for c in candidates for blob in (c[2], c[3]) if blob])
    decoder = RowDecoder(search.compression, native=True)
    hostile = events[300]
    queries = [Query(sender=hostile.sender), Query(server="S"), Query(server=events[0].server.upper()),
               Query(recipient_domain=events[5].recipient_domain), Query(cpanel_user=HOSTILE[2]),
               Query(domain=events[7].sender_domain, server=events[7].server), Query(ip="192.0.2.9")]
    passed = 0
    for query in queries:
        matcher = _matcher(query, settings.max_field_chars)
        wanted = matcher.fields()
        lo_ms, hi_ms = int((NOW - 40000) * 1000), int((NOW - 30) * 1000)
        exact = matcher.exact_check(wanted, lo_ms, hi_ms)
        assert exact is not None
        checked = decoder.decode_native(candidates, wanted, exact)
        plain = decoder.decode(candidates, wanted)
        for native_row, (_, _, full) in zip(checked, plain, strict=True):
            if native_row is None:  # left to Python, which always gives values
                continue
            values = native_row[2]
            assert full is not None
            at = {name: index for index, name in enumerate(wanted)}
            holds = lo_ms <= int(full[at["time"]] * 1000) <= hi_ms and all(
                any(full[at[field]] == value for field in _FILTER_FIELDS[name][1])
                for name, value in matcher.values.items()
            )
            assert (values is None) == holds, (query, full)
            assert values is None or values == full
            passed += values is None
    assert passed > 20
