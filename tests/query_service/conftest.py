"""Fixtures of the query-service tests: a filled store (real Redis, written by the store's RedisWriter),
the app running in-process, and tokens of each kind."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from redis.asyncio import Redis

from processors.sinks.redis import RedisWriter
from query_service.app import create_app
from query_service.settings import QueryServiceSettings
from query_service.tokens import TokenStore
from tests.query_service.asgi import AsgiClient, running
from tests.query_service.fleet_data import Fleet, build_fleet
from trackdelivery.store import StoreSettings

SEED = 20251126


@dataclass
class FilledStore:
    redis_url: str
    prefix: str
    fleet: Fleet
    now: float

    def settings(self, **overrides: object) -> QueryServiceSettings:
        values: dict[str, object] = {"redis_url": self.redis_url, "key_prefix": self.prefix, **overrides}
        return QueryServiceSettings(**values)  # type: ignore[arg-type]


async def write_fleet(redis_url: str, prefix: str, fleet: Fleet) -> None:
    client = Redis.from_url(redis_url)
    try:
        writer = RedisWriter(client, StoreSettings(prefix=prefix))
        for start in range(0, len(fleet.events), 200):
            await writer.write(fleet.events[start : start + 200])
        await writer.write([], fleet.lines)
    finally:
        await client.aclose()


@contextlib.contextmanager
def serve_in_thread(app: object) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def filled_store(redis_url: str) -> FilledStore:
    """One fleet per test module, under a key prefix of its own (no flush needed, nothing shared)."""
    now = time.time()
    prefix = f"qs{uuid.uuid4().hex[:10]}"
    fleet = build_fleet(SEED, now)
    asyncio.run(write_fleet(redis_url, prefix, fleet))
    return FilledStore(redis_url, prefix, fleet, now)


@pytest.fixture
async def app(filled_store: FilledStore) -> AsyncIterator[object]:
    application = create_app(filled_store.settings(stream_poll_seconds=0.05, stream_backfill_seconds=0))
    async with running(application):
        yield application


@pytest.fixture
async def tokens(app: object) -> TokenStore:
    store: TokenStore = app.state.tokens  # type: ignore[attr-defined]
    return store


@pytest.fixture
async def operator(app: object, tokens: TokenStore) -> AsgiClient:
    token, _ = await tokens.create(operator=True, name="test operator")
    return AsgiClient(app, token)


@pytest.fixture
def anonymous(app: object) -> AsgiClient:
    return AsgiClient(app)
