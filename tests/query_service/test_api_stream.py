"""``GET /api/v1/stream``: new events arrive as server-sent events, filtered, and the stream ends cleanly."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

import orjson
from redis.asyncio import Redis

from processors.sinks.redis import RedisWriter
from tests.query_service.asgi import AsgiClient
from tests.query_service.conftest import FilledStore
from tests.query_service.fleet_data import build_fleet
from trackdelivery.events import DeliveryEvent, EventType
from trackdelivery.store import StoreSettings


def fresh_events(store: FilledStore, seed: int) -> list[DeliveryEvent]:
    """Events of a new little fleet (same accounts), timestamped from now on, as if just logged."""
    now = time.time()
    fleet = build_fleet(seed, now, messages=30)
    picked = [e for e in fleet.events if e.msgid][:40]
    return [dataclasses.replace(e, time=now + n / 1000, event_id="") for n, e in enumerate(picked)]


async def write_events(store: FilledStore, events: list[DeliveryEvent]) -> None:
    client = Redis.from_url(store.redis_url)
    try:
        await RedisWriter(client, StoreSettings(prefix=store.prefix)).write(events)
    finally:
        await client.aclose()


async def read_events(
    chunks: asyncio.Queue[bytes], until: Callable[[set[str]], bool], patience: float = 15.0
) -> set[str]:
    """Event ids received until ``until(ids)`` holds (then a few more polls' worth), or patience runs out."""
    ids: set[str] = set()
    buffer = b""
    deadline = asyncio.get_running_loop().time() + patience
    drain_until: float | None = None
    while True:
        now = asyncio.get_running_loop().time()
        stop_at = drain_until if drain_until is not None else deadline
        if now >= stop_at:
            return ids
        try:
            chunk = await asyncio.wait_for(chunks.get(), timeout=stop_at - now)
        except TimeoutError:
            return ids
        if chunk.startswith(b"STATUS "):
            assert chunk == b"STATUS 200"
            continue
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            data = b"".join(line[5:].strip() for line in block.split(b"\n") if line.startswith(b"data:"))
            if data:
                ids.add(orjson.loads(data)["event_id"])
        if drain_until is None and until(ids):
            drain_until = asyncio.get_running_loop().time() + 0.3


async def test_new_events_arrive_and_old_ones_do_not(operator: AsgiClient, filled_store: FilledStore) -> None:
    old = {e.event_id for e in filled_store.fleet.events}
    async with operator.stream("/api/v1/stream") as (chunks, _task):
        new = fresh_events(filled_store, seed=101)
        await write_events(filled_store, new)
        wanted = {e.event_id for e in new}
        got = await read_events(chunks, until=lambda ids: wanted <= ids)
    assert wanted <= got
    assert not got & {e for e in old if e not in wanted}


async def test_the_stream_applies_the_filters(operator: AsgiClient, filled_store: FilledStore) -> None:
    async with operator.stream("/api/v1/stream", {"type": "deferred"}) as (chunks, _task):
        new = fresh_events(filled_store, seed=202)
        await write_events(filled_store, new)
        wanted = {e.event_id for e in new if e.type is EventType.DEFERRED}
        assert wanted and len(wanted) < len(new)
        got = await read_events(chunks, until=lambda ids: wanted <= ids)
    assert got == wanted


async def test_the_stream_ends_when_the_client_goes_away(operator: AsgiClient) -> None:
    async with operator.stream("/api/v1/stream") as (chunks, get_task):
        first = await asyncio.wait_for(chunks.get(), timeout=10)
        assert first == b"STATUS 200"
        task = get_task()
        assert not task.done()
    # leaving the block sent http.disconnect and waited for the app: it returned on its own
    assert task.done()
    assert task.exception() is None


async def test_bad_filters_are_refused_before_streaming(operator: AsgiClient) -> None:
    reply = await operator.get("/api/v1/stream", {"type": "nonsense"})
    assert reply.status == 422
