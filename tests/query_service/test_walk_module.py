"""The trackdelivery Redis module (redis-module/): its TRACKDELIVERY.WALK gives the Lua script's reply,
byte for byte, on every walk the searches make; it refuses bad arguments without harming Redis, leaks
nothing, and the service walks with the script where Redis has not loaded it."""

import contextlib
import dataclasses
import random

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from processors.sinks.redis import RedisWriter
from query_service.search import DeliverySearch
from query_service.walk import WALK_COMMAND, WALK_SCRIPT
from tests.query_service.test_search import EVENTS, FILTERS, expected
from tests.trackdelivery.store.factories import (
    DOMAINS,
    NOW,
    REMOTE,
    SERVERS,
    USERS,
    make_event,
    msgid_at,
    store_settings,
)
from trackdelivery.devenv.redis import RedisServer, walk_module_path
from trackdelivery.events import EventType
from trackdelivery.store.exceptions import WalkModuleMissing
from trackdelivery.store.keys import KeySpace
from trackdelivery.store.types import Page, Query

#: one busy hour of one user, half of it to one domain: pages of more than one read, and checks of more
#: than 8 candidates at once (the window reads)
DENSE = [
    make_event(time=NOW - 7200 + 20 * number, msgid=msgid_at(NOW - 7300 + 20 * number), cpanel_user="dense",
               recipient=f"u{number}@{('gmail.com', 'yahoo.com')[number % 2]}",
               recipient_domain=("gmail.com", "yahoo.com")[number % 2])
    for number in range(150)
]
ALL_EVENTS = [*EVENTS, *DENSE]


@pytest.fixture
async def client(redis_db_url):
    connection = aioredis.Redis.from_url(redis_db_url)
    yield connection
    await connection.aclose()


@pytest.fixture
async def store(client, key_prefix):
    settings = store_settings(key_prefix, dictionary_samples=200)
    writer = RedisWriter(client, settings)
    for start in range(0, len(ALL_EVENTS), 250):
        await writer.write(ALL_EVENTS[start : start + 250])
    return settings


def queries() -> list[Query]:
    """Every filter of the search tests, as a page, per type and through cursors, with scopes, pairs of
    indexed filters and random combinations."""
    found = []
    for query in FILTERS.values():
        found += [dataclasses.replace(query, page=Page(limit=5000)), dataclasses.replace(query, page=Page(limit=7)),
                  dataclasses.replace(query, max_results_by_type=3)]
    found += [
        Query(cpanel_user="dense", page=Page(limit=40)),
        Query(cpanel_user="dense", recipient_domain="yahoo.com", page=Page(limit=5000)),
        Query(cpanel_user="dense", recipient_domain="gmail.com", max_results_by_type=5),
        Query(scope_users=frozenset({USERS[1], "dense"}), page=Page(limit=60)),
        Query(scope_domains=frozenset({DOMAINS[2], REMOTE[0]}), max_results_by_type=4),
        Query(server=SERVERS[0], recipient_domain=REMOTE[1], page=Page(limit=5000)),
        Query(sender_domain=DOMAINS[1], recipient_domain=REMOTE[2], types=frozenset({EventType.DEFERRED})),
    ]
    rng = random.Random(11)
    for _ in range(30):
        fields: dict = {}
        for name, values in (("server", SERVERS), ("cpanel_user", USERS), ("domain", DOMAINS + REMOTE),
                             ("recipient_domain", REMOTE), ("since", [NOW - rng.random() * 2 * 86400])):
            if rng.random() < 0.35:
                fields[name] = rng.choice(values)
        found.append(Query(page=Page(limit=rng.choice([3, 50, 5000])), **fields))
    return found


async def recorded_walks(client, settings) -> list[list]:
    """The arguments of every walk the queries make (through every cursor page)."""
    search = DeliverySearch(client, settings, server_walk=True, walk_module=False)
    walks: list[list] = []
    assert search._walk is not None
    making = search._walk.arguments

    def record(request):
        arguments = making(request)
        walks.append(arguments)
        return arguments

    search._walk.arguments = record  # type: ignore[method-assign]
    for query in queries():
        while True:
            result = await search.search(query, now=NOW)
            if query.page is None or result.next_cursor is None:
                break
            query = dataclasses.replace(query, page=Page(limit=query.page.limit, cursor=result.next_cursor))
    return walks


async def both(client, arguments) -> tuple:
    script = await client.eval(WALK_SCRIPT, 0, *arguments)
    module = await client.execute_command(WALK_COMMAND, *arguments)
    return script, module


async def test_the_test_redis_runs_the_module(client):
    assert walk_module_path() is not None, "the module is not built: run `make install`"
    names = [module[b"name"] for module in await client.module_list()]
    assert b"trackdelivery" in names


async def test_the_module_replies_as_the_script_does_on_every_walk(client, store):
    walks = await recorded_walks(client, store)
    assert len(walks) > 250
    returned = 0
    for arguments in walks:
        script, module = await both(client, arguments)
        assert module == script, arguments[:12]
        returned += (len(module) - 3) // 4
    assert returned > 5000  # the walks returned events, not only empty answers
    # a scan budget or a bucket limit that ends a walk early ends both at the same place
    for arguments in walks[::5]:
        for position, value in ((5, 1), (5, 37), (7, 1), (7, 2)):
            cut = list(arguments)
            cut[position] = value
            script, module = await both(client, cut)
            assert module == script, (position, value, arguments[:12])


async def test_the_module_replies_as_the_script_does_when_records_are_gone_or_entries_are_odd(client, store):
    keys = KeySpace(store)
    rng = random.Random(5)
    # events whose record is gone (the walk gives their room back), arrivals gone, whole messages gone
    messages = rng.sample(await client.keys(keys.prefix + b"m:*"), 100)
    for key in messages[:60]:
        events = [name for name in await client.hkeys(key) if len(name) == 3]
        await client.hdel(key, rng.choice(events))
    for key in messages[60:80]:
        await client.hdel(key, b"a")
    for key in messages[80:]:
        await client.delete(key)
    # odd members in a value's range: too short to hold a type, an unknown type, a ref to no message
    index_keys = await client.keys(keys.prefix + b"x:*")
    for key in rng.sample(index_keys, 40):
        member = (await client.zrange(key, 0, 0))[0]
        await client.zadd(key, {member[:5]: 0, member[:7] + b"\xff" + member[8:]: 0,
                                member[:8] + b"\x00" * 11: 0, member[:10]: 0})
    walks = await recorded_walks(client, store)
    for arguments in walks:
        if arguments[-1] == 0:  # walks without checks (a check assumes every member holds a whole ref)
            script, module = await both(client, arguments)
            assert module == script, arguments[:12]


@pytest.mark.parametrize("arguments", [
    [],
    [b"p:"],
    [b"p:", b"1", b"2", b"-1", b"", b"100", b"0", b"64", b"1", b"2", b"5"],  # cut short
    [b"p:", b"one", b"2", b"-1", b"", b"100", b"0", b"64", b"0", b"0", b"0"],  # not a number
    [b"p:", b"1", b"2", b"-1", b"", b"100", b"0", b"64", b"0", b"0", b"0"],  # no source
    [b"p:", b"1", b"2", b"-1", b"", b"100", b"0", b"64", b"1", b"2", b"5", b"1", b"u", b"0", b"abc", b"abd", b"0",
     b"1", b"-1", b"0"],  # a zero bucket width
    [b"p:", b"1", b"2", b"-1", b"", b"100", b"0", b"64", b"99999999999", b"1"],  # a count out of range
    [b"p:", b"1", b"2", b"-1", b"", b"100", b"0", b"64", b"1", b"2", b"5", b"1", b"u", b"3600000", b"abc", b"abd",
     b"0", b"1", b"-1", b"0", b"extra"],  # too many
    [b"p:", b"0", b"100000000000", b"-1", b"", b"100", b"0", b"64", b"1", b"2", b"5", b"1", b"u", b"1", b"abc",
     b"abd", b"0", b"1", b"-1", b"0"],  # 1 ms buckets over three years: a walk that would hold Redis for hours
    [b"p:", b"1", b"2", b"-1", b"", b"100", b"0", b"64", b"1", b"2", b"5", b"1", b"u", b"3600000", b"abc", b"abd",
     b"0", b"1000000000000", b"-1", b"0"],  # partitions out of range
])
async def test_bad_arguments_are_refused_and_redis_keeps_serving(client, arguments):
    with pytest.raises(ResponseError, match=r"(?i)trackdelivery\.walk|wrong number"):
        await client.execute_command(WALK_COMMAND, *arguments)
    assert await client.ping()


async def test_hostile_bytes_in_every_argument_never_harm_redis(client, store):
    walks = await recorded_walks(client, store)
    rng = random.Random(3)
    for arguments in rng.sample(walks, 40):
        for _ in range(5):
            mutated = list(arguments)
            position = rng.randrange(len(mutated))
            mutated[position] = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
            with contextlib.suppress(ResponseError):
                await client.execute_command(WALK_COMMAND, *mutated)
    assert await client.ping()


async def test_walks_leak_no_redis_memory(client, store):
    walks = (await recorded_walks(client, store))[:200]
    for arguments in walks:
        await client.execute_command(WALK_COMMAND, *arguments)
    before = (await client.info("memory"))["used_memory"]
    returned = 0
    for _ in range(5):
        for arguments in walks:
            returned += len(await client.execute_command(WALK_COMMAND, *arguments))
    after = (await client.info("memory"))["used_memory"]
    assert returned > 10_000
    # one Redis string left behind per returned item would be hundreds of KB
    assert after - before < 64 * 1024, (before, after)


async def test_the_service_walks_with_the_script_where_redis_lacks_the_module(tmp_path, key_prefix):
    server = RedisServer(tmp_path / "redis", walk_module=False)
    server.start()
    try:
        client = aioredis.Redis.from_url(server.url)
        settings = store_settings(key_prefix, dictionary_samples=200)
        await RedisWriter(client, settings).write(EVENTS[:250])
        query = Query(server=SERVERS[1], page=Page(limit=5000))
        search = DeliverySearch(client, settings)
        result = await search.search(query, now=NOW)
        assert [event.event_id for event in result.events] == expected(query, EVENTS[:250])
        assert search._walk is not None and search._walk.uses_module is False
        with pytest.raises(WalkModuleMissing, match="load the trackdelivery module"):
            await DeliverySearch(client, settings, walk_module=True).search(query, now=NOW)
        await client.aclose()
    finally:
        server.stop()


async def test_the_service_walks_with_the_module_where_redis_has_it(client, store):
    search = DeliverySearch(client, store)
    query = Query(cpanel_user="dense", page=Page(limit=5000))
    result = await search.search(query, now=NOW)
    assert [event.event_id for event in result.events] == expected(query, ALL_EVENTS)
    assert search._walk is not None and search._walk.uses_module is True


async def test_the_walk_reads_only_keys_the_connections_acl_user_may_read(client, redis_db_url, store):
    """As the script's reads are, the module's are checked against the user's key patterns."""
    walks = await recorded_walks(client, store)
    arguments = walks[0]
    prefix = arguments[0]
    user = f"walker{prefix.decode().strip(':')}"
    await client.acl_setuser(user, enabled=True, passwords=["+secret"], keys=[prefix.decode() + "*"],
                             commands=["+@all"])
    confined = aioredis.Redis.from_url(redis_db_url, username=user, password="secret")
    try:
        own = await confined.execute_command(WALK_COMMAND, *arguments)
        assert own == (await both(client, arguments))[1]
        other = [b"elsewhere:", *arguments[1:]]
        for command in ((WALK_COMMAND, *other), ("EVAL", WALK_SCRIPT, 0, *other)):
            with pytest.raises(ResponseError, match=r"(?i)no permissions|can't access"):
                await confined.execute_command(*command)
    finally:
        await confined.aclose()
        await client.acl_deluser(user)
