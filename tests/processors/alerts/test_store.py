"""The alert store on a real Redis: newest first, state filter, versions never go back, retention of
resolved alerts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from processors.alerts.store import AlertStore
from processors.alerts.types import Alert
from tests.processors.alerts._synthetic import HOUR, T0, Harness, event, spread

pytestmark = pytest.mark.redis

DAY = 86400.0


@pytest.fixture
async def client(redis_db_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis_db_url)
    yield connection
    await connection.aclose()


@pytest.fixture
def store(client: aioredis.Redis, key_prefix: str) -> AlertStore:
    return AlertStore(client, key_prefix, retention=DAY)


def record(alert_id: str, last_seen: float, *, state: str = "firing", version: int = 1, **extra: Any) -> dict[str, Any]:
    data = {
        "v": 1, "id": alert_id, "rule": "frozen_messages", "kind": "frozen", "severity": "warning",
        "scope": {"server": f"srv-{alert_id}"}, "scope_key": f"server=srv-{alert_id}", "state": state,
        "first_seen": last_seen - 600, "last_seen": last_seen,
        "resolved_at": last_seen if state == "resolved" else None, "count": 10 + version, "summary": "s",
        "hint": "h", "version": version, "examples": [], "details": {},
    }
    return data | extra


async def test_put_then_list_newest_first(store: AlertStore) -> None:
    for alert_id, last_seen in (("a", T0 + 100), ("b", T0 + 300), ("c", T0 + 200)):
        assert await store.put(record(alert_id, last_seen))
    assert [r["id"] for r in await store.list()] == ["b", "c", "a"]
    assert (await store.list())[0] == record("b", T0 + 300)
    assert [r["id"] for r in await store.list(limit=2)] == ["b", "c"]


async def test_an_update_moves_an_alert_to_the_front(store: AlertStore) -> None:
    await store.put(record("a", T0 + 100))
    await store.put(record("b", T0 + 200))
    await store.put(record("a", T0 + 300, version=2))
    listed = await store.list()
    assert [(r["id"], r["version"]) for r in listed] == [("a", 2), ("b", 1)]


async def test_state_filter(store: AlertStore) -> None:
    await store.put(record("a", T0 + 100))
    await store.put(record("b", T0 + 200, state="resolved", version=3))
    await store.put(record("c", T0 + 300))
    assert [r["id"] for r in await store.list(state="firing")] == ["c", "a"]
    assert [r["id"] for r in await store.list(state="resolved")] == ["b"]
    assert [r["id"] for r in await store.list(state="firing", limit=1)] == ["c"]


async def test_an_older_version_never_overwrites_a_newer_one(store: AlertStore) -> None:
    resolved = record("a", T0 + 900, state="resolved", version=3)
    assert await store.put(record("a", T0 + 100, version=1))
    assert await store.put(resolved)
    assert not await store.put(record("a", T0 + 500, version=2))  # replayed late
    assert not await store.put(record("a", T0 + 100, version=1))
    assert await store.list() == [resolved]
    # the same version again (a replay of the newest record) is harmless
    assert await store.put(resolved)
    assert await store.list() == [resolved]


async def test_resolved_alerts_older_than_retention_are_dropped_firing_ones_stay(
    store: AlertStore, client: aioredis.Redis, key_prefix: str
) -> None:
    await store.put(record("old-resolved", T0, state="resolved", version=2))
    await store.put(record("old-firing", T0 + 10))
    await store.put(record("recent-resolved", T0 + 0.5 * DAY, state="resolved", version=2))
    assert len(await store.list()) == 3
    await store.put(record("new", T0 + DAY + 60))  # the newest last-seen moves the retention horizon on
    assert [r["id"] for r in await store.list()] == ["new", "recent-resolved", "old-firing"]
    # gone from both keys, not just hidden
    assert await client.hkeys(store.records_key) and b"old-resolved" not in await client.hkeys(store.records_key)
    assert await client.zscore(store.seen_key, "old-resolved") is None
    assert await client.zscore(store.seen_key, "old-firing") == T0 + 10

    await store.put(record("newer", T0 + 2 * DAY))
    assert [r["id"] for r in await store.list()] == ["newer", "new", "old-firing"]


async def test_keys_share_one_cluster_slot_under_the_prefix(
    store: AlertStore, redis_client: redis.Redis, key_prefix: str
) -> None:
    await store.put(record("a", T0))
    keys = sorted(key.decode() for key in cast(list[bytes], redis_client.keys(f"{key_prefix}*")))
    assert keys == [f"{key_prefix}:{{alerts}}:records", f"{key_prefix}:{{alerts}}:seen"]


async def test_real_alert_records_round_trip(store: AlertStore) -> None:
    harness = Harness()
    harness.feed_all(event("frozen", t, remote=False) for t in spread(40, T0, HOUR / 2))
    harness.feed_all([event("frozen", T0 + 3 * HOUR, remote=False)])
    records = [alert.to_dict() for alert in harness.alerts]
    for item in records:
        await store.put(orjson.loads(orjson.dumps(item)))
    (stored,) = await store.list()
    assert stored == records[-1] and stored["state"] == "resolved"
    assert Alert.from_dict(stored).to_dict() == stored
