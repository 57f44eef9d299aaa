"""Every component against a real local Redis Cluster (3 masters + 3 replicas from the dev tooling's
``RedisClusterServers``), chosen by the ``REDIS_CLUSTER`` setting.

A generated fleet is written into the cluster and into a single Redis under the same key prefix: both
hold the same keys with the same contents, and every kind of search, message view and stats answer is
identical; replaying the writes changes nothing; tokens, alerts, webhook markers and purge work; the query
service answers over HTTP. A master is killed and its replica takes over: nothing replicated before the
kill is lost, and writes and reads carry on through the same clients.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import web

from processors.alerts.store import AlertStore
from processors.alerts.webhooks import WebhookDispatcher, WebhookSettings
from processors.sinks.redis import RedisWriter
from query_service.app import create_app
from query_service.search import DeliverySearch
from query_service.settings import QueryServiceSettings
from query_service.tokens import TokenStore
from tests.query_service.asgi import AsgiClient, running
from tests.query_service.fleet_data import SERVERS, Fleet, build_fleet
from tests.trackdelivery.store.factories import over_the_cap, snapshot
from trackdelivery.connections import count_keys, redis_client, sync_redis_client
from trackdelivery.devenv.redis import RedisClusterServers
from trackdelivery.events import DeliveryEvent, EventType, Reason
from trackdelivery.settings import RedisSettings
from trackdelivery.store.keys import LINE_COUNT_FIELD, KeySpace, Kind, is_line_chunk_field, message_ref
from trackdelivery.store.types import MessageLine, Page, Query, QueryResult, StoreSettings, WriteStats

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SEED = 20260301


# -- the same fleet in a single Redis and in the cluster ------------------------------------------------


@dataclass
class Twin:
    """One fleet written under ``prefix`` into a single Redis (``single_url``) and into the cluster."""

    prefix: str
    fleet: Fleet
    now: float
    single_url: str
    cluster: RedisClusterServers

    @property
    def store(self) -> StoreSettings:
        return store_settings(self.prefix)

    def single_settings(self) -> RedisSettings:
        return RedisSettings(url=self.single_url, cluster=False)

    def cluster_settings(self) -> RedisSettings:
        return RedisSettings(url=self.cluster.url, cluster=True)


def store_settings(prefix: str) -> StoreSettings:
    # a dictionary is trained from the first 100 records: the dictionary keys are exercised too
    return StoreSettings(prefix=prefix, dictionary_samples=100)


async def write_fleet(
    client: aioredis.Redis | aioredis.RedisCluster, settings: StoreSettings, events: list[DeliveryEvent],
    lines: list[MessageLine],
) -> WriteStats:
    writer = RedisWriter(client, settings)
    total = WriteStats()
    for start in range(0, len(events), 150):
        stats = await writer.write(events[start : start + 150])
        total.new, total.updated, total.unchanged = (
            total.new + stats.new, total.updated + stats.updated, total.unchanged + stats.unchanged
        )
    total.lines = (await writer.write([], lines)).lines
    return total


async def _write_twin(twin: Twin) -> None:
    for settings in (twin.single_settings(), twin.cluster_settings()):
        client = redis_client(settings)
        try:
            await write_fleet(client, twin.store, twin.fleet.events, twin.fleet.lines)
        finally:
            await client.aclose()


@pytest.fixture(scope="module")
def twin(redis_url: str, redis_cluster: RedisClusterServers) -> Twin:
    now = time.time()
    result = Twin(f"rc{uuid.uuid4().hex[:10]}", build_fleet(SEED, now), now, redis_url, redis_cluster)
    asyncio.run(_write_twin(result))
    return result


@pytest.fixture
async def clients(twin: Twin) -> AsyncIterator[tuple[aioredis.Redis, aioredis.RedisCluster]]:
    single, cluster = redis_client(twin.single_settings()), redis_client(twin.cluster_settings())
    assert isinstance(single, aioredis.Redis) and isinstance(cluster, aioredis.RedisCluster)
    try:
        yield single, cluster
    finally:
        await single.aclose()
        await cluster.aclose()


@pytest.fixture
def sync_clients(twin: Twin) -> Iterator[tuple[redis.Redis, redis.RedisCluster]]:
    single, cluster = sync_redis_client(twin.single_settings()), sync_redis_client(twin.cluster_settings())
    assert isinstance(single, redis.Redis) and isinstance(cluster, redis.RedisCluster)
    try:
        yield single, cluster
    finally:
        single.close()
        cluster.close()


def outcome(result: QueryResult) -> dict[str, Any]:
    """Everything a search answers, comparable across stores (not ``scanned``: the single Redis walks on the
    server, the cluster on the client, and they read differently many entries for the same answer)."""
    return {
        "events": [dataclasses.asdict(event) for event in result.events],
        "counts": result.counts,
        "overflowed": result.overflowed,
        "next_cursor": result.next_cursor,
        "complete": result.complete,
    }


# -- same keys, same values, replay-safe -----------------------------------------------------------------


def test_the_cluster_holds_exactly_the_keys_and_values_of_a_single_redis(
    twin: Twin, sync_clients: tuple[redis.Redis, redis.RedisCluster]
) -> None:
    single, cluster = sync_clients
    on_single, on_cluster = snapshot(single, twin.prefix), snapshot(cluster, twin.prefix)
    assert len(on_single) > 500
    assert on_cluster == on_single
    keys = KeySpace(twin.store)
    assert keys.current_dictionary in on_cluster, "records are compressed with a trained dictionary"
    # the keys spread over every master, not one hot shard
    per_master = []
    for master in twin.cluster.masters():
        node = redis.Redis(port=master.port)
        try:
            per_master.append(sum(1 for _ in node.scan_iter(match=f"{twin.prefix}:*".encode(), count=1000)))
        finally:
            node.close()
    assert len(per_master) == 3 and sum(per_master) == len(on_cluster)
    assert min(per_master) > len(on_cluster) / 5, per_master


async def test_replaying_the_writes_leaves_the_cluster_unchanged(
    twin: Twin, clients: tuple[aioredis.Redis, aioredis.RedisCluster],
    sync_clients: tuple[redis.Redis, redis.RedisCluster],
) -> None:
    _, cluster = clients
    before = snapshot(sync_clients[1], twin.prefix)
    # a new writer (a restarted processor) replays everything, newest first
    stats = await write_fleet(cluster, twin.store, list(reversed(twin.fleet.events)), [])
    assert stats.new == 0 and stats.updated == 0 and stats.unchanged == len(twin.fleet.events)
    assert snapshot(sync_clients[1], twin.prefix) == before


# -- identical answers --------------------------------------------------------------------------------------


def _queries(fleet: Fleet, now: float) -> dict[str, Query]:
    outgoing = next(e for e in fleet.events if e.cpanel_user and e.type is EventType.BOUNCED)
    incoming = next(e for e in fleet.events if e.cpanel_user is None and e.msgid)
    deferred = next(e for e in fleet.events if e.type is EventType.DEFERRED)
    account = fleet.accounts[4]
    return {
        "everything": Query(),
        "server": Query(server=SERVERS[2].upper()),
        "user": Query(cpanel_user=account.user),
        "sender": Query(sender=outgoing.sender),
        "recipient": Query(recipient=(outgoing.recipient or "").upper()),
        "sender_domain": Query(sender_domain=account.domains[0]),
        "recipient_domain": Query(recipient_domain="gmail.com"),
        "address": Query(address=incoming.recipient),
        "domain": Query(domain=account.domains[0]),
        "client_ip": Query(ip=incoming.client_ip),
        "remote_ip": Query(ip=deferred.remote_ip),
        "reason": Query(reason=Reason.MAILBOX_FULL),
        "msgid": Query(msgid=outgoing.msgid),
        "rejection_without_msgid": Query(types=frozenset({EventType.REJECTED})),
        "text": Query(text="QUOTA"),
        "types": Query(types=frozenset({EventType.BOUNCED, EventType.DEFERRED})),
        "period": Query(since=now - 86400, until=now - 3600),
        "combined": Query(recipient_domain="gmail.com", types=frozenset({EventType.DELIVERED}), text="OK"),
        "max_results_by_type": Query(max_results_by_type=3),
        "scope_user": Query(scope_users=frozenset({account.user})),
        "scope_domain": Query(scope_domains=frozenset({fleet.accounts[7].domains[0]})),
        "scope_and_filter": Query(recipient_domain="yahoo.com", scope_users=frozenset({account.user})),
        "outside_the_scope": Query(cpanel_user=fleet.accounts[1].user, scope_users=frozenset({account.user})),
        "nothing": Query(sender="nobody@nowhere.example"),
    }


QUERY_NAMES = list(_queries(build_fleet(SEED, 1.7e9), 1.7e9))


@pytest.mark.parametrize("name", QUERY_NAMES)
async def test_every_search_filter_answers_the_same_on_the_cluster(
    twin: Twin, clients: tuple[aioredis.Redis, aioredis.RedisCluster], name: str
) -> None:
    query = _queries(twin.fleet, twin.now)[name]
    single, cluster = (DeliverySearch(client, twin.store) for client in clients)
    on_single = await single.search(query, now=twin.now)
    on_cluster = await cluster.search(query, now=twin.now)
    assert outcome(on_cluster) == outcome(on_single)
    if name not in ("nothing", "outside_the_scope"):
        assert on_single.events, f"{name}: the fleet has matching events (a comparison of nothing proves nothing)"
    if name == "max_results_by_type":
        assert any(on_single.overflowed.values())


@pytest.mark.parametrize("name", ["everything", "user", "types", "recipient_domain"])
async def test_cursor_pages_are_the_same_on_the_cluster(
    twin: Twin, clients: tuple[aioredis.Redis, aioredis.RedisCluster], name: str
) -> None:
    base = _queries(twin.fleet, twin.now)[name]
    pages: list[list[dict[str, Any]]] = []
    for client in clients:
        search, cursor, walked = DeliverySearch(client, twin.store), None, []
        while True:
            result = await search.search(dataclasses.replace(base, page=Page(limit=7, cursor=cursor)), now=twin.now)
            walked.append(outcome(result))
            cursor = result.next_cursor
            if cursor is None:
                break
        pages.append(walked)
    assert pages[1] == pages[0]
    assert len(pages[0]) >= 3


async def test_message_views_are_the_same_on_the_cluster(
    twin: Twin, clients: tuple[aioredis.Redis, aioredis.RedisCluster]
) -> None:
    single, cluster = (DeliverySearch(client, twin.store) for client in clients)
    messages = list(dict.fromkeys((e.server, e.msgid) for e in twin.fleet.events if e.msgid))[:40]
    account = twin.fleet.accounts[2]
    scopes: list[dict[str, Any]] = [
        {}, {"scope_users": frozenset({account.user})}, {"scope_domains": frozenset(account.domains)},
    ]
    shown = 0
    for server, msgid in messages:
        assert msgid is not None
        for scope in scopes:
            view = await single.message(server, msgid, **scope)
            assert await cluster.message(server, msgid, **scope) == view
            shown += view is not None and bool(view.lines)
    assert shown >= len(messages)
    assert await cluster.message(SERVERS[0], "1zzzzz-000000-zz") is None


async def test_lines_written_again_in_other_batches_count_once_on_the_cluster(
    twin: Twin, clients: tuple[aioredis.Redis, aioredis.RedisCluster]
) -> None:
    """The cluster path (no scripts) counts lines against the cap as the single Redis's script does."""
    event = twin.fleet.events[0]
    assert event.msgid is not None
    store = twin.store.model_copy(update={"prefix": f"{twin.prefix}x", "max_lines_per_message": 20})
    lines = [
        MessageLine(event.server, event.msgid, event.time + n // 5, f"line {n}", "inode-3", 120 * n) for n in range(18)
    ]
    records = []
    for client in clients:
        writer = RedisWriter(client, store)
        for start, end in ((0, 6), (2, 9), (0, 9), (4, 12), (9, 14), (1, 16), (14, 18), (3, 11)):
            await writer.write([event], lines[start:end])
        view = await DeliverySearch(client, store).message(event.server, event.msgid)
        assert view is not None and view.lines == [line.text for line in lines]
        key = KeySpace(store).message(message_ref(event.server, event.msgid))
        records.append(await client.hgetall(key))
    single, cluster = records
    assert single[LINE_COUNT_FIELD] == cluster[LINE_COUNT_FIELD] == b"18"
    assert sorted(name for name in single if is_line_chunk_field(name)) == sorted(
        name for name in cluster if is_line_chunk_field(name)
    )


async def test_a_message_over_the_cap_keeps_the_same_first_lines_on_the_cluster(
    twin: Twin, clients: tuple[aioredis.Redis, aioredis.RedisCluster]
) -> None:
    """The cluster path cuts the chunk that reaches the cap as the single Redis's script does."""
    event = twin.fleet.events[1]
    store = twin.store.model_copy(update={"prefix": f"{twin.prefix}c", "max_lines_per_message": 20})
    lines = over_the_cap(event, 47)
    records = []
    for client in clients:
        writer = RedisWriter(client, store)
        for start, end in ((0, 9), (9, 16), (16, 31), (5, 25), (31, 47)):
            await writer.write([event], lines[start:end])
        view = await DeliverySearch(client, store).message(event.server, event.msgid or "")
        assert view is not None and view.lines == [line.text for line in lines[:20]]
        records.append(await client.hgetall(KeySpace(store).message(message_ref(event.server, event.msgid or ""))))
    single, cluster = records
    assert single[LINE_COUNT_FIELD] == cluster[LINE_COUNT_FIELD] == b"20"
    assert {name: value for name, value in single.items() if is_line_chunk_field(name)} == {
        name: value for name, value in cluster.items() if is_line_chunk_field(name)
    }


@pytest.mark.parametrize("dimension", ["user", "sender_domain", "server"])
async def test_stats_are_the_same_on_the_cluster(
    twin: Twin, clients: tuple[aioredis.Redis, aioredis.RedisCluster], dimension: str
) -> None:
    single, cluster = (DeliverySearch(client, twin.store) for client in clients)
    account = twin.fleet.accounts[5]
    scope = {"scope_users": frozenset({account.user}), "scope_domains": frozenset(account.domains)}
    for options in ({}, {"since": twin.now - 3 * 86400}, scope):
        on_single = await single.stats(dimension, now=twin.now, **options)
        assert await cluster.stats(dimension, now=twin.now, **options) == on_single
        assert on_single.rows or (options is scope and dimension == "server")  # no server rows for an account
        assert on_single.top_reasons


# -- tokens, alerts, webhook markers, purge, key count ---------------------------------------------------


async def test_tokens_work_on_the_cluster(clients: tuple[aioredis.Redis, aioredis.RedisCluster]) -> None:
    store = TokenStore(clients[1], f"tk{uuid.uuid4().hex[:8]}:")
    operator, operator_record = await store.create(operator=True, name="ops")
    account, account_record = await store.create(operator=False, users=["acct01"], domains=["Shop.Example"])
    assert await store.verify(operator) == operator_record
    verified = await store.verify(account)
    assert verified == account_record and verified.domains == frozenset({"shop.example"})
    assert await store.verify(account[:-1] + ("A" if account[-1] != "A" else "B")) is None
    assert {record.token_id for record in await store.list()} == {operator_record.token_id, account_record.token_id}
    assert await store.revoke(account_record.token_id)
    assert await store.verify(account) is None
    assert [record.token_id for record in await store.list()] == [operator_record.token_id]


def _alert(alert_id: str, last_seen: float, *, state: str = "firing", version: int = 1) -> dict[str, Any]:
    return {
        "v": 1, "id": alert_id, "rule": "frozen_messages", "kind": "frozen", "severity": "warning",
        "scope": {"server": f"srv-{alert_id}"}, "scope_key": f"server=srv-{alert_id}", "state": state,
        "first_seen": last_seen - 600, "last_seen": last_seen,
        "resolved_at": last_seen if state == "resolved" else None, "count": 10 + version, "summary": "s",
        "hint": "h", "version": version, "examples": [], "details": {},
    }


async def test_the_alert_store_works_on_the_cluster(clients: tuple[aioredis.Redis, aioredis.RedisCluster]) -> None:
    cluster = clients[1]
    store = AlertStore(cluster, f"al{uuid.uuid4().hex[:8]}", retention=86400)
    # the script touches both keys: they must hash to one slot
    assert cluster.keyslot(store.records_key) == cluster.keyslot(store.seen_key)
    now = time.time()
    assert await store.put(_alert("a", now - 7200, state="resolved", version=2))
    assert await store.put(_alert("b", now - 60))
    assert not await store.put(_alert("a", now - 9000, version=1))  # an older version never wins
    assert [(r["id"], r["version"]) for r in await store.list()] == [("b", 1), ("a", 2)]
    assert [r["id"] for r in await store.list(state="resolved")] == ["a"]
    assert await store.put(_alert("c", now + 86400))  # moves the retention horizon past the resolved alert
    assert [r["id"] for r in await store.list()] == ["c", "b"]


@pytest.fixture
async def webhook_receiver() -> AsyncIterator[tuple[str, list[str]]]:
    received: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        received.append(request.headers["X-Trackdelivery-Delivery"])
        return web.Response(text="thanks")

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/hook", received
    finally:
        await runner.cleanup()


async def test_webhook_markers_keep_a_replay_from_posting_twice_on_the_cluster(
    clients: tuple[aioredis.Redis, aioredis.RedisCluster], webhook_receiver: tuple[str, list[str]]
) -> None:
    url, received = webhook_receiver
    prefix = f"wh{uuid.uuid4().hex[:8]}"
    fired, resolved = _alert("x", time.time()), _alert("x", time.time() + 60, state="resolved", version=2)
    for _ in range(2):  # a worker, then a restarted worker replaying the alerts topic
        dispatcher = WebhookDispatcher(WebhookSettings(urls=(url,)), redis=clients[1], prefix=prefix)
        try:
            for record in (fired, resolved, fired):
                await dispatcher.dispatch(record)
        finally:
            await dispatcher.close()
    assert received == ["x:firing", "x:resolved"]


async def test_purge_removes_orphaned_index_keys_in_every_slot(
    clients: tuple[aioredis.Redis, aioredis.RedisCluster],
) -> None:
    cluster = clients[1]
    settings = StoreSettings(prefix=f"pg{uuid.uuid4().hex[:8]}", retention_days=1)
    keys = KeySpace(settings)
    now = time.time()
    old_bucket = keys.bucket_of(Kind.SERVER, now - 86400 - 2 * 3600)
    orphans = [keys.index(Kind.SERVER, old_bucket, part) for part in range(keys.partitions(Kind.SERVER))]
    orphans += [keys.index(Kind.USER, keys.bucket_of(Kind.USER, now - 86400 - 7200), part) for part in range(40)]
    current = keys.index(Kind.SERVER, keys.bucket_of(Kind.SERVER, now), 3)
    assert len({cluster.keyslot(key) for key in orphans}) > 20, "the orphans span many slots"
    pipe = cluster.pipeline(transaction=False)
    for key in [*orphans, current]:
        pipe.zadd(key, {b"x": 0})
    await pipe.execute()
    assert await RedisWriter(cluster, settings).purge_expired(now) == len(orphans)
    assert await cluster.exists(*orphans) == 0
    assert await cluster.exists(current) == 1


async def test_key_count_sums_every_master(twin: Twin, clients: tuple[aioredis.Redis, aioredis.RedisCluster]) -> None:
    """``rebuild`` refuses a non-empty store: on a cluster DBSIZE alone asks one node."""
    total = 0
    for master in twin.cluster.masters():
        node = redis.Redis(port=master.port)
        try:
            total += int(node.dbsize())
        finally:
            node.close()
    assert await count_keys(clients[1]) == total
    assert total > int(await clients[1].dbsize())


# -- the query service ------------------------------------------------------------------------------------


def test_the_cluster_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:7000/0")
    monkeypatch.setenv("REDIS_CLUSTER", "true")
    assert RedisSettings().cluster is True
    settings = QueryServiceSettings()
    assert settings.redis_cluster is True and settings.redis_settings() == RedisSettings()
    monkeypatch.delenv("REDIS_CLUSTER")
    monkeypatch.setenv("TRACKDELIVERY_REDIS_CLUSTER", "1")  # the query service's older name still works
    assert QueryServiceSettings().redis_cluster is True
    assert RedisSettings().cluster is False


async def test_the_processor_and_alert_worker_build_cluster_clients_from_the_settings(
    twin: Twin, monkeypatch: pytest.MonkeyPatch
) -> None:
    from processors.alerts.app import _default_store
    from processors.alerts.metrics import AlertMetrics
    from processors.alerts.settings import AlertSettings
    from processors.app import default_writer

    monkeypatch.setenv("TRACKDELIVERY_STORE_PREFIX", twin.prefix)
    writer = default_writer(twin.cluster_settings())
    assert isinstance(writer, RedisWriter) and isinstance(writer.client, aioredis.RedisCluster)
    try:
        stats = await writer.write(twin.fleet.events[:50])
        assert stats.unchanged == 50, "the processor's writer reads the store the test wrote"
    finally:
        await writer.client.aclose()
    alerts, dispatcher = _default_store(AlertSettings(), twin.cluster_settings(), AlertMetrics())()
    try:
        assert isinstance(alerts.client, aioredis.RedisCluster) and dispatcher.redis is alerts.client
        assert await alerts.put(_alert(f"w{uuid.uuid4().hex[:6]}", time.time()))
    finally:
        await dispatcher.close()
        await alerts.client.aclose()


def test_the_tokens_command_works_on_the_cluster(twin: Twin, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from trackdelivery.cli import main

    monkeypatch.setenv("REDIS_CLUSTER", "true")
    monkeypatch.setenv("TRACKDELIVERY_STORE_PREFIX", f"cli{uuid.uuid4().hex[:8]}")
    runner = CliRunner()
    created = runner.invoke(main, ["tokens", "--redis-url", twin.cluster.url, "create", "--user", "acct01"])
    assert created.exit_code == 0, created.output
    listed = runner.invoke(main, ["tokens", "--redis-url", twin.cluster.url, "list", "--json"])
    assert listed.exit_code == 0 and "acct01" in listed.output, listed.output


@pytest.fixture
async def apps(twin: Twin) -> AsyncIterator[tuple[Any, Any]]:
    single = create_app(QueryServiceSettings(redis_url=twin.single_url, key_prefix=twin.prefix))
    cluster = create_app(
        QueryServiceSettings(redis_url=twin.cluster.url, redis_cluster=True, key_prefix=twin.prefix)
    )
    async with running(single), running(cluster):
        assert isinstance(cluster.state.redis, aioredis.RedisCluster)
        yield single, cluster


async def _api_clients(app: Any, account: Any) -> tuple[AsgiClient, AsgiClient]:
    tokens: TokenStore = app.state.tokens
    operator, _ = await tokens.create(operator=True)
    scoped, _ = await tokens.create(operator=False, users=[account.user])
    return AsgiClient(app, operator), AsgiClient(app, scoped)


async def test_the_query_service_answers_the_same_on_the_cluster(twin: Twin, apps: tuple[Any, Any]) -> None:
    account = twin.fleet.accounts[6]
    single_operator, single_scoped = await _api_clients(apps[0], account)
    cluster_operator, cluster_scoped = await _api_clients(apps[1], account)
    ready = await cluster_operator.get("/readyz")
    assert (ready.status, ready.body) == (200, b"ready")
    since = str(twin.now - 3 * 86400)
    message = next(e for e in twin.fleet.events if e.cpanel_user == account.user and e.msgid)
    requests: list[tuple[str, dict[str, str]]] = [
        ("/api/v1/deliveries", {"since": since}),
        ("/api/v1/deliveries", {"since": since, "recipient_domain": "gmail.com", "max_results_by_type": "2"}),
        ("/api/v1/deliveries", {"since": since, "limit": "5"}),
        ("/api/v1/deliveries", {"since": since, "domain": account.domains[0], "type": "delivered"}),
        (f"/api/v1/messages/{message.server}/{message.msgid}", {}),
        ("/api/v1/stats", {"since": since}),
    ]
    for path, params in requests:
        for on_single, on_cluster in ((single_operator, cluster_operator), (single_scoped, cluster_scoped)):
            expected, answer = await on_single.get(path, params), await on_cluster.get(path, params)
            assert answer.status == expected.status == 200, (path, params, answer.body[:300])
            assert answer.json() == expected.json(), (path, params)
    first = (await cluster_operator.get("/api/v1/deliveries", {"since": since, "limit": "5"})).json()
    following = {"since": since, "limit": "5", "cursor": first["next_cursor"]}
    second = await cluster_operator.get("/api/v1/deliveries", following)
    assert second.status == 200 and second.json()["events"][0]["time"] <= first["events"][-1]["time"]
    unscoped = await single_scoped.get("/api/v1/deliveries", {"since": since, "user": twin.fleet.accounts[0].user})
    assert unscoped.json()["events"] == []


# -- failover -------------------------------------------------------------------------------------------------


async def test_a_master_failover_loses_nothing_replicated_and_service_carries_on(
    twin: Twin, clients: tuple[aioredis.Redis, aioredis.RedisCluster],
    redis_cluster_factory: Callable[[], RedisClusterServers],
) -> None:
    """Redis replicates asynchronously: a write a master acknowledged but had not yet sent to its replica
    is lost when the master dies. A writer with ``wait_replicas=1`` returns only when every master's
    replica has everything the master held (the processor commits its Kafka offsets after that), so the
    master holding the alerts' slot is SIGKILLed right after the last write returns, and everything
    written before is still there; the same clients go on writing and reading once the replica has been
    promoted."""
    cluster = redis_cluster_factory()
    settings = RedisSettings(url=cluster.url, cluster=True)
    client = redis_client(settings)
    assert isinstance(client, aioredis.RedisCluster)
    sync = sync_redis_client(settings)
    assert isinstance(sync, redis.RedisCluster)
    events, lines = twin.fleet.events, twin.fleet.lines
    half = len(events) // 2
    store = twin.store  # same prefix and settings as the twin: the answers must equal its single Redis
    alerts = AlertStore(client, store.prefix)
    writer = RedisWriter(client, store, wait_replicas=1)
    try:
        assert await alerts.put(_alert("before", time.time()))  # covered by the writer's next wait
        for start in range(0, half, 150):
            await writer.write(events[start : min(start + 150, half)])
        await writer.write([], lines)
        before = snapshot(sync, store.prefix)

        alerts_slot = client.keyslot(alerts.records_key)
        victim = _slot_owner(cluster, sync, alerts_slot)
        replicas = cluster.replicas_of(victim)
        assert len(replicas) == 1
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        victim.kill()  # reap it
        cluster.wait_healthy(60)
        assert replicas[0] in cluster.masters() and victim not in cluster.masters()

        sync.close()
        sync = redis.RedisCluster.from_url(cluster.url)
        assert snapshot(sync, store.prefix) == before, "nothing replicated before the kill is lost"

        # a node that restarted or was promoted may not have the alert store's script: it is loaded again
        for node in cluster.nodes:
            if node.running:
                direct = redis.Redis(port=node.port)
                try:
                    direct.script_flush()
                finally:
                    direct.close()
        # the same clients carry on: the writer, and the alert store's script
        for start in range(half, len(events), 150):
            await writer.write(events[start : start + 150])
        assert await alerts.put(_alert("after", time.time()))
        assert {r["id"] for r in await alerts.list()} == {"before", "after"}
        search, reference = DeliverySearch(client, store), DeliverySearch(clients[0], store)
        for name, query in _queries(twin.fleet, twin.now).items():
            on_cluster = await search.search(query, now=twin.now)
            assert outcome(on_cluster) == outcome(await reference.search(query, now=twin.now)), name
    finally:
        sync.close()
        await writer.aclose()
        await client.aclose()


def _slot_owner(cluster: RedisClusterServers, sync: redis.RedisCluster, slot: int) -> Any:
    node = sync.nodes_manager.get_node_from_slot(slot)
    return cluster.node(int(node.port))

