"""Webhooks against a real local HTTP server: one signed delivery per state change, retries with
backoff on server errors, no retry on client errors, a dead-letter line when giving up, and the Redis
marker that keeps a replayed alert from being posted twice."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import web

from processors.alerts.webhooks import MARKER_TTL, WebhookDispatcher, WebhookSettings, is_state_change, sign, verify
from tests.processors.alerts._synthetic import HOUR, T0, Harness, event, spread

pytestmark = pytest.mark.redis

SECRET = "webhook-test-secret"
Plan = Callable[[str, int], int]  # (X-Trackdelivery-Delivery, attempt seen for it) -> HTTP status


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    plan: Plan
    url: str = ""
    requests: list[Seen] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        delivery = request.headers.get("X-Trackdelivery-Delivery", "")
        self.attempts[delivery] += 1
        status = self.plan(delivery, self.attempts[delivery])
        self.requests.append(Seen(request.path, dict(request.headers), body, status))
        return web.Response(status=status, text="thanks" if status < 300 else "no")

    @property
    def delivered(self) -> list[Seen]:
        return [seen for seen in self.requests if 200 <= seen.status < 300]


def fail_first(n: int, status: int = 500) -> Plan:
    return lambda delivery, attempt: status if attempt <= n else 200


def always(status: int) -> Plan:
    return lambda delivery, attempt: status


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Plan], Awaitable[Receiver]]]:
    runners: list[web.AppRunner] = []

    async def start(plan: Plan) -> Receiver:
        receiver = Receiver(plan)
        app = web.Application()
        app.router.add_post("/{tail:.*}", receiver.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        receiver.url = f"http://127.0.0.1:{port}/hooks/alerts"
        return receiver

    yield start
    for runner in runners:
        await runner.cleanup()


class Pauses:
    """The injected sleep: records the backoff instead of waiting."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)


@dataclass
class Dispatch:
    dispatcher: WebhookDispatcher
    pauses: Pauses
    outcomes: list[tuple[str, str]]
    dead_letters: Path


@pytest.fixture
async def dispatchers(tmp_path: Path) -> AsyncIterator[Callable[..., Dispatch]]:
    made: list[WebhookDispatcher] = []

    def make(*urls: str, redis_client: Any = None, prefix: str = "td", **settings: Any) -> Dispatch:
        settings.setdefault("dead_letter_path", tmp_path / "dead" / "webhooks.jsonl")
        settings.setdefault("secret", SECRET)
        outcomes: list[tuple[str, str]] = []
        pauses = Pauses()
        dispatcher = WebhookDispatcher(
            WebhookSettings(urls=urls, **settings), redis=redis_client, prefix=prefix,
            on_result=lambda url, outcome: outcomes.append((url, outcome)), sleep=pauses,
        )
        made.append(dispatcher)
        return Dispatch(dispatcher, pauses, outcomes, settings["dead_letter_path"])

    yield make
    for dispatcher in made:
        await dispatcher.close()


@pytest.fixture
def life_cycle() -> list[dict[str, Any]]:
    """The records of one real alert from the engine: fired, updates, resolved."""
    harness = Harness()
    harness.feed_all(event("frozen", t, remote=False) for t in spread(40, T0, HOUR / 2))
    harness.feed_all([event("frozen", T0 + 3 * HOUR, remote=False)])
    records = [alert.to_dict() for alert in harness.alerts if alert.rule == "frozen_messages"]
    assert records[0]["version"] == 1 and records[-1]["state"] == "resolved"
    assert len(records) >= 4 and len({record["id"] for record in records}) == 1
    return records


def dead_letter_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def check_signed(seen: Seen, body: bytes) -> None:
    timestamp, signature = seen.headers["X-Trackdelivery-Timestamp"], seen.headers["X-Trackdelivery-Signature"]
    assert verify(SECRET, timestamp, seen.body, signature)
    assert seen.body == body
    assert abs(int(timestamp) - time.time()) < 120
    assert not verify("another-secret", timestamp, seen.body, signature)
    assert not verify(SECRET, timestamp, seen.body.replace(b"frozen", b"frozeN"), signature)
    assert not verify(SECRET, str(int(timestamp) + 1), seen.body, signature)


async def test_each_state_change_is_delivered_once_signed_after_server_errors(
    serve: Callable[[Plan], Awaitable[Receiver]], dispatchers: Callable[..., Dispatch],
    life_cycle: list[dict[str, Any]],
) -> None:
    receiver = await serve(fail_first(2))
    hooks = dispatchers(receiver.url, max_attempts=5, backoff=1.0)
    for record in life_cycle:
        await hooks.dispatcher.dispatch(record)

    fired, resolved = life_cycle[0], life_cycle[-1]
    alert = fired["id"]
    assert [seen.status for seen in receiver.requests] == [500, 500, 200, 500, 500, 200]
    assert [seen.headers["X-Trackdelivery-Delivery"] for seen in receiver.requests] == (
        [f"{alert}:firing"] * 3 + [f"{alert}:resolved"] * 3)
    assert [seen.headers["X-Trackdelivery-Attempt"] for seen in receiver.requests] == ["1", "2", "3"] * 2
    assert [orjson.loads(seen.body) for seen in receiver.delivered] == [fired, resolved]
    for seen in receiver.requests:
        check_signed(seen, orjson.dumps(fired if seen.headers["X-Trackdelivery-Delivery"].endswith("firing")
                                        else resolved))
        assert seen.path == "/hooks/alerts"
        assert seen.headers["Content-Type"] == "application/json"
    # exponential backoff with jitter: ~1 s then ~2 s, for each of the two deliveries
    assert len(hooks.pauses.pauses) == 4
    for pause, base in zip(hooks.pauses.pauses, [1.0, 2.0, 1.0, 2.0], strict=True):
        assert 0.8 * base <= pause <= 1.2 * base
    assert [outcome for _, outcome in hooks.outcomes] == ["failed_attempt", "failed_attempt", "delivered"] * 2
    assert not hooks.dead_letters.exists()


async def test_updates_of_a_firing_alert_are_not_posted(
    serve: Callable[[Plan], Awaitable[Receiver]], dispatchers: Callable[..., Dispatch],
    life_cycle: list[dict[str, Any]],
) -> None:
    receiver = await serve(always(200))
    hooks = dispatchers(receiver.url)
    updates = [record for record in life_cycle if record["state"] == "firing" and record["version"] > 1]
    assert updates
    for record in updates:
        assert not is_state_change(record)
        await hooks.dispatcher.dispatch(record)
    assert receiver.requests == [] and hooks.outcomes == []


async def test_backoff_is_capped_by_max_backoff(
    serve: Callable[[Plan], Awaitable[Receiver]], dispatchers: Callable[..., Dispatch],
    life_cycle: list[dict[str, Any]],
) -> None:
    receiver = await serve(always(503))
    hooks = dispatchers(receiver.url, max_attempts=8, backoff=1.0, max_backoff=5.0)
    await hooks.dispatcher.dispatch(life_cycle[0])
    assert len(receiver.requests) == 8
    assert len(hooks.pauses.pauses) == 7
    assert max(hooks.pauses.pauses) <= 5.0 * 1.2 and hooks.pauses.pauses[-1] >= 5.0 * 0.8


async def test_a_server_that_always_fails_gets_a_dead_letter_and_nothing_raises(
    serve: Callable[[Plan], Awaitable[Receiver]], dispatchers: Callable[..., Dispatch],
    life_cycle: list[dict[str, Any]],
) -> None:
    receiver = await serve(always(503))
    hooks = dispatchers(receiver.url, max_attempts=3)
    await hooks.dispatcher.dispatch(life_cycle[0])
    assert len(receiver.requests) == 3 and receiver.delivered == []
    assert len(hooks.pauses.pauses) == 2
    (line,) = dead_letter_lines(hooks.dead_letters)
    assert line["alert"] == life_cycle[0]
    assert line["url"] == receiver.url and line["error"] == "HTTP 503"
    assert abs(line["time"] - time.time()) < 120
    assert [outcome for _, outcome in hooks.outcomes] == ["failed_attempt"] * 3 + ["dead_letter"]

    await hooks.dispatcher.dispatch(life_cycle[-1])  # appended, one JSON line each
    assert [line["alert"]["state"] for line in dead_letter_lines(hooks.dead_letters)] == ["firing", "resolved"]


@pytest.mark.parametrize(("status", "attempts"), [(400, 1), (401, 1), (404, 1), (410, 1), (408, 3), (429, 3)])
async def test_client_errors_are_not_retried_except_timeouts_and_rate_limits(
    serve: Callable[[Plan], Awaitable[Receiver]], dispatchers: Callable[..., Dispatch],
    life_cycle: list[dict[str, Any]], status: int, attempts: int,
) -> None:
    receiver = await serve(always(status))
    hooks = dispatchers(receiver.url, max_attempts=3)
    await hooks.dispatcher.dispatch(life_cycle[0])
    assert len(receiver.requests) == attempts
    assert len(hooks.pauses.pauses) == attempts - 1
    (line,) = dead_letter_lines(hooks.dead_letters)
    assert line["error"] == f"HTTP {status}" and line["alert"]["id"] == life_cycle[0]["id"]


async def test_an_unreachable_url_is_retried_then_dead_lettered(
    dispatchers: Callable[..., Dispatch], life_cycle: list[dict[str, Any]],
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hooks = dispatchers(f"http://127.0.0.1:{port}/hook", max_attempts=2, timeout=5.0)
    await hooks.dispatcher.dispatch(life_cycle[0])
    (line,) = dead_letter_lines(hooks.dead_letters)
    assert line["error"] and not line["error"].startswith("HTTP")
    assert [outcome for _, outcome in hooks.outcomes] == ["failed_attempt", "failed_attempt", "dead_letter"]


async def test_every_url_gets_its_own_delivery(
    serve: Callable[[Plan], Awaitable[Receiver]], dispatchers: Callable[..., Dispatch],
    life_cycle: list[dict[str, Any]],
) -> None:
    steady, flaky = await serve(always(200)), await serve(fail_first(1, status=502))
    hooks = dispatchers(steady.url, flaky.url, max_attempts=3)
    await hooks.dispatcher.dispatch(life_cycle[0])
    assert len(steady.requests) == 1 and len(steady.delivered) == 1
    assert [seen.status for seen in flaky.requests] == [502, 200]
    assert not hooks.dead_letters.exists()


async def test_without_a_secret_there_is_no_signature(
    serve: Callable[[Plan], Awaitable[Receiver]], dispatchers: Callable[..., Dispatch],
    life_cycle: list[dict[str, Any]],
) -> None:
    receiver = await serve(always(200))
    hooks = dispatchers(receiver.url, secret="")
    await hooks.dispatcher.dispatch(life_cycle[0])
    (seen,) = receiver.requests
    assert "X-Trackdelivery-Signature" not in seen.headers


def test_signatures() -> None:
    body = b'{"id":"x"}'
    signature = sign(SECRET, "1741564800", body)
    assert signature.startswith("sha256=") and len(signature) == len("sha256=") + 64
    assert verify(SECRET, "1741564800", body, signature)
    assert not verify(SECRET, "1741564801", body, signature)
    assert not verify(SECRET, "1741564800", body + b" ", signature)
    assert not verify(SECRET, "1741564800", body, signature.upper())


def marker_keys(client: redis.Redis, prefix: str) -> list[str]:
    return sorted(key.decode() for key in cast(list[bytes], client.keys(f"{prefix}*")))


@pytest.fixture
async def async_redis(redis_db_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_db_url)
    yield client
    await client.aclose()


async def test_the_redis_marker_keeps_a_replayed_alert_from_being_posted_twice(
    serve: Callable[[Plan], Awaitable[Receiver]], dispatchers: Callable[..., Dispatch],
    life_cycle: list[dict[str, Any]], async_redis: aioredis.Redis, redis_client: redis.Redis, key_prefix: str,
) -> None:
    receiver = await serve(always(200))
    fired, resolved = life_cycle[0], life_cycle[-1]
    hooks = dispatchers(receiver.url, redis_client=async_redis, prefix=key_prefix)
    await hooks.dispatcher.dispatch(fired)
    await hooks.dispatcher.dispatch(fired)
    assert len(receiver.delivered) == 1
    assert [outcome for _, outcome in hooks.outcomes] == ["delivered", "duplicate"]

    # a restarted worker replaying the alerts topic: a new dispatcher, the same Redis
    replay = dispatchers(receiver.url, redis_client=async_redis, prefix=key_prefix)
    for record in life_cycle:
        await replay.dispatcher.dispatch(record)
    assert [seen.headers["X-Trackdelivery-Delivery"] for seen in receiver.requests] == [
        f"{fired['id']}:firing", f"{resolved['id']}:resolved"]

    markers = marker_keys(redis_client, key_prefix)
    assert len(markers) == 2
    assert markers[0].endswith(f":{fired['id']}:firing") and markers[1].endswith(f":{resolved['id']}:resolved")
    assert all(key.startswith(f"{key_prefix}:{{alerts}}:hook:") for key in markers)
    assert all(MARKER_TTL - 60 < redis_client.ttl(key) <= MARKER_TTL for key in markers)


async def test_a_failed_delivery_sets_no_marker_so_a_replay_delivers_it(
    serve: Callable[[Plan], Awaitable[Receiver]], dispatchers: Callable[..., Dispatch],
    life_cycle: list[dict[str, Any]], async_redis: aioredis.Redis, redis_client: redis.Redis, key_prefix: str,
) -> None:
    status = {"now": 400}
    receiver = await serve(lambda delivery, attempt: status["now"])
    hooks = dispatchers(receiver.url, redis_client=async_redis, prefix=key_prefix, max_attempts=2)
    await hooks.dispatcher.dispatch(life_cycle[0])
    assert receiver.delivered == [] and len(dead_letter_lines(hooks.dead_letters)) == 1
    assert marker_keys(redis_client, key_prefix) == []
    status["now"] = 200
    await hooks.dispatcher.dispatch(life_cycle[0])
    assert len(receiver.delivered) == 1 and len(marker_keys(redis_client, key_prefix)) == 1


async def test_markers_are_per_url(
    serve: Callable[[Plan], Awaitable[Receiver]], dispatchers: Callable[..., Dispatch],
    life_cycle: list[dict[str, Any]], async_redis: aioredis.Redis, key_prefix: str,
) -> None:
    first, second = await serve(always(200)), await serve(always(200))
    await dispatchers(first.url, redis_client=async_redis, prefix=key_prefix).dispatcher.dispatch(life_cycle[0])
    both = dispatchers(first.url, second.url, redis_client=async_redis, prefix=key_prefix)
    await both.dispatcher.dispatch(life_cycle[0])
    assert len(first.delivered) == 1 and len(second.delivered) == 1
    assert sorted(outcome for _, outcome in both.outcomes) == ["delivered", "duplicate"]
