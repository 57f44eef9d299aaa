"""DeliverySearch against a real Redis, checked against a brute-force reading of the same events."""

import dataclasses
import random

import pytest
import redis.asyncio as aioredis

from processors.sinks.redis import RedisWriter
from query_service.search import DeliverySearch
from tests.trackdelivery.store.factories import (
    DOMAINS,
    NOW,
    REMOTE,
    SERVERS,
    USERS,
    make_event,
    msgid_at,
    random_events,
    store_settings,
)
from trackdelivery.events import BLOCKED_AND_FAILED, DeliveryEvent, EventType, Reason
from trackdelivery.store.exceptions import InvalidCursor, InvalidQuery
from trackdelivery.store.keys import event_ref
from trackdelivery.store.types import MessageLine, Page, Query

EVENTS = random_events(700, seed=42, span=2 * 86400.0)


def lower(value):
    return value.lower() if isinstance(value, str) else value


def matches(event: DeliveryEvent, query: Query) -> bool:
    """The meaning of a query, written plainly."""
    recipients = {lower(event.recipient), lower(event.original_recipient)}
    checks = [
        query.sender is None or lower(event.sender) == lower(query.sender),
        query.recipient is None or lower(query.recipient) in recipients,
        query.address is None or lower(query.address) in recipients | {lower(event.sender)},
        query.sender_domain is None or lower(event.sender_domain) == lower(query.sender_domain),
        query.recipient_domain is None or lower(event.recipient_domain) == lower(query.recipient_domain),
        query.domain is None or lower(query.domain) in {lower(event.sender_domain), lower(event.recipient_domain)},
        query.server is None or lower(event.server) == lower(query.server),
        query.cpanel_user is None or lower(event.cpanel_user) == lower(query.cpanel_user),
        query.msgid is None or event.msgid == query.msgid,
        query.ip is None or query.ip in {event.client_ip, event.remote_ip},
        query.types is None or event.type in query.types,
        query.reason is None or event.reason == query.reason,
        query.since is None or event.time >= query.since,
        query.until is None or event.time <= query.until,
        query.text is None
        or query.text.casefold() in (event.response or "").casefold()
        or query.text.casefold() in (event.subject or "").casefold(),
    ]
    if query.scope_users is not None or query.scope_domains is not None:
        users = {lower(user) for user in query.scope_users or ()}
        domains = {lower(domain) for domain in query.scope_domains or ()}
        sides = {lower(event.sender_domain), lower(event.recipient_domain)}
        checks.append(lower(event.cpanel_user) in users or bool(sides & domains))
    return all(checks)


def newest_first(events):
    def order(event):
        return (int(event.time * 1000), event_ref(event.server, event.msgid, event.event_id, event.time))

    return sorted(events, key=order, reverse=True)


def expected(query: Query, events=EVENTS) -> list[str]:
    return [event.event_id for event in newest_first(e for e in events if matches(e, query))]


@pytest.fixture
async def client(redis_db_url):
    connection = aioredis.Redis.from_url(redis_db_url)
    yield connection
    await connection.aclose()


#: the readers of a single Redis: the server-side walk by the Redis module or by the Lua script, with
#: the native or the Python row decoder, and the client-side walk a cluster uses; every test below holds
#: for each
READERS = {
    "server_walk": {"server_walk": True, "walk_module": True},
    "server_walk_script": {"server_walk": True, "walk_module": False},
    "server_walk_python_rows": {"server_walk": True, "native": False},
    "client_walk": {"server_walk": False},
}


@pytest.fixture(params=sorted(READERS))
async def search(request, client, key_prefix):
    settings = store_settings(key_prefix, dictionary_samples=200)
    writer = RedisWriter(client, settings)
    for start in range(0, len(EVENTS), 250):
        await writer.write(EVENTS[start : start + 250])
    return DeliverySearch(client, settings, **READERS[request.param])


some = EVENTS[17]
with_original = dataclasses.replace(EVENTS[3], original_recipient="alias@dom1.example")
FILTERS = {
    "sender": Query(sender=some.sender.upper()),
    "recipient": Query(recipient=some.recipient),
    "address": Query(address=some.sender),
    "sender_domain": Query(sender_domain=DOMAINS[3]),
    "recipient_domain": Query(recipient_domain=REMOTE[1]),
    "domain": Query(domain=DOMAINS[5]),
    "server": Query(server=SERVERS[2].upper()),
    "cpanel_user": Query(cpanel_user=USERS[4]),
    "msgid": Query(msgid=next(e.msgid for e in EVENTS if e.msgid)),
    "client_ip": Query(ip="198.51.100.3"),
    "remote_ip": Query(ip="192.0.2.9"),
    "types": Query(types=frozenset(BLOCKED_AND_FAILED)),
    "reason": Query(reason=Reason.GREYLISTED),
    "period": Query(since=NOW - 86400, until=NOW - 43200),
    "text_response": Query(text="GREYLISTED"),
    "text_subject": Query(text="meeting"),
    "server+types": Query(server=SERVERS[1], types=frozenset({EventType.DELIVERED, EventType.DEFERRED})),
    "user+rdomain+since": Query(cpanel_user=USERS[2], recipient_domain=REMOTE[0], since=NOW - 86400),
    "domain+text": Query(domain=DOMAINS[7], text="invoice"),
    "reason+server+until": Query(reason=Reason.RATE_LIMITED, server=SERVERS[0], until=NOW - 3600),
    "nothing": Query(sender="nobody@nowhere.example"),
    "everything": Query(),
}


@pytest.mark.parametrize("name", sorted(FILTERS))
async def test_each_filter_returns_exactly_the_matching_events_newest_first(search, name):
    query = dataclasses.replace(FILTERS[name], page=Page(limit=5000))
    result = await search.search(query, now=NOW)
    assert [event.event_id for event in result.events] == expected(query)
    assert result.complete and result.next_cursor is None


@pytest.mark.parametrize("name", ["everything", "server", "sender_domain", "types", "domain+text"])
async def test_max_results_by_type_keeps_the_newest_of_each_type_and_says_overflowed(search, name):
    query = dataclasses.replace(FILTERS[name], max_results_by_type=4)
    result = await search.search(query, now=NOW)
    want: list[str] = []
    for event_type in EventType:
        of_type = expected(dataclasses.replace(query, types=frozenset({event_type}) & (query.types or set(EventType))))
        if query.types is not None and event_type not in query.types:
            continue
        want += of_type[:4]
        assert result.overflowed[event_type] == (len(of_type) > 4)
        assert result.counts[event_type] == min(len(of_type), 4)
    ordered = [e.event_id for e in newest_first(e for e in EVENTS if e.event_id in set(want))]
    assert [event.event_id for event in result.events] == ordered


async def test_cursor_pages_cover_every_match_once(search):
    query = Query(domain=DOMAINS[5], page=Page(limit=7))
    seen: list[str] = []
    pages = 0
    while True:
        result = await search.search(query, now=NOW)
        seen += [event.event_id for event in result.events]
        pages += 1
        if result.next_cursor is None:
            break
        query = dataclasses.replace(query, page=Page(limit=7, cursor=result.next_cursor))
    assert seen == expected(Query(domain=DOMAINS[5]))
    assert pages == len(seen) // 7 + (1 if len(seen) % 7 else 0) or pages == 1


async def test_a_cursor_is_refused_on_another_query_or_when_forged(search):
    first = await search.search(Query(server=SERVERS[0], page=Page(limit=3)), now=NOW)
    assert first.next_cursor
    with pytest.raises(InvalidCursor):
        await search.search(Query(server=SERVERS[1], page=Page(limit=3, cursor=first.next_cursor)), now=NOW)
    with pytest.raises(InvalidCursor):
        await search.search(Query(page=Page(limit=3, cursor="not-a-cursor{}*")), now=NOW)


@pytest.mark.parametrize(
    "query",
    [
        Query(max_results_by_type=-1),
        Query(max_results_by_type=6000),
        Query(page=Page(limit=0)),
        Query(types=frozenset()),
    ],
)
async def test_out_of_range_queries_are_refused(search, query):
    with pytest.raises(InvalidQuery):
        await search.search(query, now=NOW)


HOSTILE = ["a b", "{x}", "*", "a\nb", "z" * 10_000, "\udcff\udc80", "", "[::1]", "\x00"]


@pytest.mark.parametrize("value", HOSTILE)
async def test_hostile_filter_values_find_nothing_and_never_fail(search, value):
    for name in ("sender", "recipient", "address", "domain", "server", "cpanel_user", "msgid", "ip", "text"):
        result = await search.search(Query(**{name: value}), now=NOW)
        assert result.events == [] or name == "text"


async def test_hostile_stored_values_are_found_by_the_same_value(client, key_prefix):
    settings = store_settings(key_prefix)
    writer, search = RedisWriter(client, settings), DeliverySearch(client, settings)
    stored = [
        make_event(time=NOW - 100 - n, sender=value + "@evil.example", cpanel_user=value or "u", subject=value)
        for n, value in enumerate(HOSTILE)
    ]
    await writer.write(stored)
    for event in stored:
        result = await search.search(Query(sender=event.sender), now=NOW)
        assert [e.event_id for e in result.events] == [event.event_id]


async def test_scope_confines_every_answer(search):
    scope = {"scope_users": frozenset({USERS[1]}), "scope_domains": frozenset({REMOTE[2]})}
    inside = next(e for e in EVENTS if e.msgid and e.cpanel_user == USERS[1])
    outside = next(e for e in EVENTS if e.msgid and e.cpanel_user != USERS[1] and e.recipient_domain != REMOTE[2])
    assert (await search.search(Query(msgid=outside.msgid, **scope), now=NOW)).events == []
    assert [e.event_id for e in (await search.search(Query(msgid=inside.msgid, **scope), now=NOW)).events] == [
        inside.event_id
    ]
    for query in (Query(**scope), Query(server=SERVERS[3], **scope), Query(text="hello", **scope)):
        paged = dataclasses.replace(query, page=Page(limit=5000))
        result = await search.search(paged, now=NOW)
        assert [e.event_id for e in result.events] == expected(paged)
        assert all(e.cpanel_user == USERS[1] or e.recipient_domain == REMOTE[2] for e in result.events)
        assert result.events


async def test_scope_applies_to_message_views(search):
    outsider = next(e for e in EVENTS if e.msgid and e.cpanel_user != USERS[1] and e.recipient_domain != REMOTE[2])
    assert await search.message(outsider.server, outsider.msgid) is not None
    hidden = await search.message(
        outsider.server, outsider.msgid, scope_users=frozenset({USERS[1]}), scope_domains=frozenset({REMOTE[2]})
    )
    assert hidden is None


async def test_message_view_has_arrival_events_lines_and_bounce_link(client, key_prefix):
    settings = store_settings(key_prefix, max_lines_per_message=3)
    writer, search = RedisWriter(client, settings), DeliverySearch(client, settings)
    parent_id = msgid_at(NOW - 500, 1)
    bounce_id = msgid_at(NOW - 400, 2)
    common = {"msgid": parent_id, "arrival_time": NOW - 500, "server": "mx1.example.net"}
    received = make_event(type=EventType.IN_PROGRESS, time=NOW - 500, **common)
    failed = make_event(
        type=EventType.BOUNCED,
        time=NOW - 450,
        reason=Reason.RECIPIENT_UNKNOWN,
        bounce_msgid=bounce_id,
        response="550 5.1.1 unknown",
        **common,
    )
    bounce = make_event(
        type=EventType.DELIVERED,
        time=NOW - 390,
        msgid=bounce_id,
        arrival_time=NOW - 400,
        sender="",
        sender_domain=None,
        parent_msgid=parent_id,
        recipient="alice@shop.example",
    )
    lines = [MessageLine("mx1.example.net", parent_id, NOW - 500 + n, f"line {n}") for n in range(5)]
    await writer.write([failed, received, bounce], lines)
    view = await search.message("MX1.example.net", parent_id)
    assert view is not None
    assert [e.type for e in view.events] == [EventType.IN_PROGRESS, EventType.BOUNCED]
    assert view.arrival["sender"] == "alice@shop.example" and view.arrival["subject"] == "Your order"
    assert view.lines == ["line 0", "line 1", "line 2"]
    assert view.bounce_msgids == [bounce_id]
    bounce_view = await search.message("mx1.example.net", bounce_id)
    assert bounce_view is not None and bounce_view.parent_msgid == parent_id
    assert await search.message("mx2.example.net", parent_id) is None
    assert await search.message("mx1.example.net", "{no}*such\n") is None


async def test_message_view_hides_lines_from_a_recipient_side_scope(client, key_prefix):
    settings = store_settings(key_prefix)
    writer, search = RedisWriter(client, settings), DeliverySearch(client, settings)
    event = make_event(time=NOW - 100)
    await writer.write([event], [MessageLine(event.server, event.msgid, event.time, "secret line")])
    recipient_side = await search.message(event.server, event.msgid, scope_domains=frozenset({"gmail.com"}))
    sender_side = await search.message(event.server, event.msgid, scope_users=frozenset({"SHOP"}))
    assert recipient_side is not None and recipient_side.lines == [] and not recipient_side.lines_visible
    assert sender_side is not None and sender_side.lines == ["secret line"]


async def test_stats_per_server_and_top_lists(search):
    result = await search.stats("server", since=NOW - 3 * 86400, until=NOW, now=NOW)
    rows = {row.key: row for row in result.rows}
    for server in SERVERS:
        mine = [e for e in EVENTS if e.server == server]
        assert rows[server.lower()].delivered == sum(e.type is EventType.DELIVERED for e in mine)
    deferred_domains: dict[str, int] = {}
    for event in EVENTS:
        if event.type is EventType.DEFERRED:
            deferred_domains[event.recipient_domain] = deferred_domains.get(event.recipient_domain, 0) + 1
    assert dict(result.top_deferring_domains) == deferred_domains
    scoped = await search.stats(
        "user", since=NOW - 3 * 86400, until=NOW, now=NOW, scope_users=frozenset({USERS[0]}), top=100
    )
    assert [row.key for row in scoped.rows] == [USERS[0]]
    assert sum(count for _, count in scoped.top_reasons) == sum(
        1
        for e in EVENTS
        if e.cpanel_user == USERS[0] and e.reason is not None and e.type in (EventType.DEFERRED, *BLOCKED_AND_FAILED)
    )


async def test_random_queries_agree_with_the_brute_force_reading(search):
    rng = random.Random(7)
    for _ in range(25):
        fields = {}
        for name, values in (
            ("server", SERVERS),
            ("cpanel_user", USERS),
            ("domain", DOMAINS + REMOTE),
            ("recipient_domain", REMOTE),
            ("types", [frozenset(rng.sample(list(EventType), 3))]),
            ("reason", list(Reason)),
            ("since", [NOW - rng.random() * 2 * 86400]),
        ):
            if rng.random() < 0.3:
                fields[name] = rng.choice(values)
        query = Query(page=Page(limit=5000), **fields)
        result = await search.search(query, now=NOW)
        assert [e.event_id for e in result.events] == expected(query), fields


@pytest.mark.parametrize("reader", sorted(READERS))
async def test_pages_through_events_of_one_millisecond_in_ref_order(client, key_prefix, reader):
    """Events sharing a millisecond are ordered (and cursors continue) by event ref, on every reader."""
    settings = store_settings(key_prefix)
    same_ms = [
        make_event(time=NOW - 600.0005, recipient=f"r{n}@gmail.com", type=kind)
        for n, kind in enumerate([EventType.DELIVERED, EventType.DEFERRED, EventType.BOUNCED] * 5)
    ]
    await RedisWriter(client, settings).write(same_ms)
    search = DeliverySearch(client, settings, **READERS[reader])
    query = Query(server=same_ms[0].server, page=Page(limit=4))
    seen: list[str] = []
    while True:
        result = await search.search(query, now=NOW)
        seen += [event.event_id for event in result.events]
        if result.next_cursor is None:
            break
        query = dataclasses.replace(query, page=Page(limit=4, cursor=result.next_cursor))
    assert seen == expected(Query(server=same_ms[0].server), same_ms)


@pytest.mark.parametrize("ratio", [0, 10**9])  # every check by exact members; every check by window reads
@pytest.mark.parametrize("name", ["user+rdomain+since", "reason+server+until", "domain+server", "sender+rdomain",
                                  "dense user+rdomain"])
async def test_the_walks_check_by_exact_members_or_by_windows_gives_the_same_answer(
        client, key_prefix, monkeypatch, ratio, name):
    from query_service import walk

    queries = {**FILTERS, "domain+server": Query(domain=DOMAINS[10], server=SERVERS[0]),
               "sender+rdomain": Query(sender_domain=DOMAINS[3], recipient_domain=REMOTE[1]),
               "dense user+rdomain": Query(cpanel_user="dense", recipient_domain="yahoo.com")}
    # one busy hour of one user, half of it to one domain: checks of more than 8 candidates at once
    dense = [make_event(time=NOW - 7200 + 30 * number, msgid=msgid_at(NOW - 7300 + 30 * number),
                        cpanel_user="dense", recipient=f"u{number}@{('gmail.com', 'yahoo.com')[number % 2]}",
                        recipient_domain=("gmail.com", "yahoo.com")[number % 2]) for number in range(60)]
    events = [*EVENTS, *dense]
    script = walk.WALK_SCRIPT.replace("local EXACT_RATIO = 4", f"local EXACT_RATIO = {ratio}")
    assert script != walk.WALK_SCRIPT
    monkeypatch.setattr(walk, "WALK_SCRIPT", script)
    settings = store_settings(key_prefix, dictionary_samples=200)
    writer = RedisWriter(client, settings)
    for start in range(0, len(events), 250):
        await writer.write(events[start : start + 250])
    search = DeliverySearch(client, settings, server_walk=True, walk_module=False)  # the patched script
    query = dataclasses.replace(queries[name], page=Page(limit=5000))
    want = expected(query, events)
    assert want, "a combination with events to find"
    result = await search.search(query, now=NOW)
    assert [event.event_id for event in result.events] == want
