"""Bucket directories: a search for a rare value reads only the buckets that value is in, answers exactly
as a full walk does, and a store written before it had directories is walked whole up to its mark. Both
walks: the server's (a single Redis) and the client's (a cluster)."""

import dataclasses
import time

import pytest
import redis.asyncio as aioredis

from processors.sinks.redis import RedisWriter
from query_service.search import DeliverySearch
from tests.trackdelivery.store.factories import NOW, make_event, store_settings
from trackdelivery.events import EventType, Reason
from trackdelivery.store.keys import DIRECTORY_KINDS, KeySpace
from trackdelivery.store.types import Page, Query

HOUR = 3600.0


@pytest.fixture
async def client(redis_db_url):
    connection = aioredis.Redis.from_url(redis_db_url)
    yield connection
    await connection.aclose()


def fleet() -> list:
    """A busy account with mail every 20 minutes for three days, and a rare one with three messages."""
    events = []
    for number in range(3 * 72):
        when = NOW - 3 * 86400 + number * 1200
        events.append(make_event(time=when, msgid=f"1busy{number:04d}-000000-AB", cpanel_user="busy",
                                 sender="info@busy.example", sender_domain="busy.example",
                                 recipient=f"r{number}@gmail.com"))
    for number, hours_ago in enumerate((70.5, 40.2, 3.7)):
        when = NOW - hours_ago * HOUR
        events.append(make_event(time=when, msgid=f"1rare{number:04d}-000000-AB", cpanel_user="rare",
                                 sender="me@rare.example", sender_domain="rare.example",
                                 recipient="x@rare-dest.example", recipient_domain="rare-dest.example",
                                 type=EventType.DEFERRED, reason=Reason.GREYLISTED))
    return events


async def index_reads(client: aioredis.Redis, search: DeliverySearch, query: Query) -> tuple[list[str], int]:
    """The event ids a search returns, and how many index range reads Redis ran for it (as commands, or
    inside the module's walk)."""
    await client.config_resetstat()
    module_before = await module_range_reads(client)
    result = await search.search(query, now=NOW)
    stats = await client.info("commandstats")
    reads = sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("zrevrangebylex", "zrangebylex"))
    reads += await module_range_reads(client) - module_before
    return [event.event_id for event in result.events], reads


async def module_range_reads(client: aioredis.Redis) -> int:
    stats = await client.execute_command("TRACKDELIVERY.STATS")
    return int(dict(zip(stats[::2], stats[1::2], strict=True))[b"range_reads"])


#: the module's walk, the script's, and the client-side walk
WALKS = {"server_walk_module": {"walk_module": True}, "server_walk_script": {"walk_module": False},
         "client_walk": {"server_walk": False}}


@pytest.mark.parametrize("query", [
    Query(cpanel_user="rare"), Query(sender_domain="rare.example"), Query(recipient_domain="rare-dest.example"),
    Query(domain="rare.example"), Query(cpanel_user="rare", types=frozenset({EventType.DEFERRED})),
    Query(reason=Reason.GREYLISTED),
])
@pytest.mark.parametrize("walk", sorted(WALKS))
async def test_a_rare_value_reads_only_the_buckets_it_is_in(client, key_prefix, query, walk):
    settings = store_settings(key_prefix)
    events = fleet()
    await RedisWriter(client, settings).write(events)
    query = dataclasses.replace(query, page=Page(limit=250))
    search = DeliverySearch(client, settings, **WALKS[walk])
    rare = sorted((e for e in events if e.cpanel_user == "rare"), key=lambda e: e.time, reverse=True)

    found, reads = await index_reads(client, search, query)
    assert found == [event.event_id for event in rare]
    # three buckets, each a set or two (split values, either side of a domain), where the whole walk reads
    # every hourly bucket of the retention
    assert reads <= 3 * 4

    await client.delete(KeySpace(settings).directory_since)  # a store without directories: walked whole
    whole, whole_reads = await index_reads(client, search, query)
    assert whole == found and whole_reads > 10 * reads


async def test_buckets_before_the_since_mark_are_read_whatever_their_directory_says(client, key_prefix):
    """A store that had entries before its writers had directories: those entries have no bits."""
    settings = store_settings(key_prefix)
    keys = KeySpace(settings)
    events = fleet()
    await RedisWriter(client, settings).write(events)
    directories = [key async for key in client.scan_iter(match=keys.prefix + b"xd:*") if key != keys.directory_since]
    assert {key.split(b":")[2].decode() for key in directories} == {kind.value for kind in DIRECTORY_KINDS}
    await client.delete(*directories)
    query = Query(cpanel_user="rare", page=Page(limit=250))
    rare = [e.event_id for e in sorted(events, key=lambda e: e.time, reverse=True) if e.cpanel_user == "rare"]

    for walk in WALKS.values():
        search = DeliverySearch(client, settings, **walk)
        await client.set(keys.directory_since, int(NOW + 86400))
        assert [event.event_id for event in (await search.search(query, now=NOW)).events] == rare
        # trusted from the start of the second entry's hour: the two newer entries (whose bits are gone) are
        # skipped, the older one read
        await client.set(keys.directory_since, int((NOW - 40.2 * HOUR) // HOUR * HOUR))
        assert [event.event_id for event in (await search.search(query, now=NOW)).events] == rare[2:]


async def test_the_since_mark_is_the_start_for_a_new_store_and_a_day_ahead_for_an_old_one(client, key_prefix):
    settings = store_settings(key_prefix)
    keys = KeySpace(settings)
    await RedisWriter(client, settings).write(fleet()[:5])
    assert await client.get(keys.directory_since) == b"0"

    await client.delete(keys.directory_since)  # as if written by a version without directories
    before = time.time()
    await RedisWriter(client, settings).write(fleet()[5:10])
    since = int(await client.get(keys.directory_since))
    assert before + 86400 < since <= time.time() + 86400 + 3600 + 1
    await RedisWriter(client, settings).write(fleet()[10:15])  # another writer keeps the mark
    assert int(await client.get(keys.directory_since)) == since
