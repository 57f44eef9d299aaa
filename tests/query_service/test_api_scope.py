"""Account tokens see their own mail and nothing else, through every endpoint."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from query_service.tokens import TokenStore
from tests.query_service.asgi import AsgiClient
from tests.query_service.conftest import FilledStore
from tests.query_service.fleet_data import in_scope, newest_first

WINDOW = 3 * 86400


@pytest.fixture
async def user_client(app, tokens: TokenStore, filled_store: FilledStore) -> tuple[AsgiClient, set[str], set[str]]:
    account = filled_store.fleet.accounts[3]
    token, _ = await tokens.create(operator=False, users=[account.user])
    return AsgiClient(app, token), {account.user}, set()


@pytest.fixture
async def domain_client(app, tokens: TokenStore, filled_store: FilledStore) -> tuple[AsgiClient, set[str], set[str]]:
    account = filled_store.fleet.accounts[5]
    token, _ = await tokens.create(operator=False, domains=[account.domains[0].upper()])
    return AsgiClient(app, token), set(), {account.domains[0]}


def _scope_cases(request: pytest.FixtureRequest) -> tuple[AsgiClient, set[str], set[str]]:
    value: tuple[AsgiClient, set[str], set[str]] = request.getfixturevalue(request.param)
    return value


@pytest.fixture(params=["user_client", "domain_client"])
def scoped(request: pytest.FixtureRequest) -> tuple[AsgiClient, set[str], set[str]]:
    return _scope_cases(request)


async def test_search_answers_exactly_the_scope(scoped, filled_store: FilledStore) -> None:
    client, users, domains = scoped
    since = filled_store.now - WINDOW
    answer = (await client.get("/api/v1/deliveries", {"since": str(since), "max_results_by_type": 5000})).json()
    expected = [
        e.event_id for e in newest_first(filled_store.fleet.events) if e.time >= since and in_scope(e, users, domains)
    ]
    assert expected, "the account has mail in the fleet"
    assert [e["event_id"] for e in answer["events"]] == expected


async def test_filters_cannot_reach_outside_the_scope(scoped, filled_store: FilledStore) -> None:
    client, users, domains = scoped
    since = str(filled_store.now - WINDOW)
    by_id = {e.event_id: e for e in filled_store.fleet.events}
    others = [a for a in filled_store.fleet.accounts if a.user not in users and not set(a.domains) & domains]
    for other in others[:4]:
        for params in ({"user": other.user}, {"domain": other.domains[0]}, {"address": f"info@{other.domains[0]}"}):
            answer = (await client.get("/api/v1/deliveries", {**params, "since": since})).json()
            assert answer["events"] == [], params
        answer = (await client.get("/api/v1/deliveries", {"server": other.server, "since": since})).json()
        assert all(in_scope(by_id[e["event_id"]], users, domains) for e in answer["events"])


async def test_messages_outside_the_scope_are_404_like_missing_ones(scoped, filled_store: FilledStore) -> None:
    client, users, domains = scoped
    foreign = [e for e in filled_store.fleet.events if e.msgid and not in_scope(e, users, domains)]
    own = [e for e in filled_store.fleet.events if e.msgid and in_scope(e, users, domains)]
    missing = await client.get(f"/api/v1/messages/{foreign[0].server}/1zzzzz-000000000Kg-0000")
    assert missing.status == 404
    for event in foreign[:15]:
        reply = await client.get(f"/api/v1/messages/{event.server}/{event.msgid}")
        assert reply.status == 404
        assert reply.body == missing.body  # nothing tells "exists but not yours" from "does not exist"
    for event in own[:5]:
        reply = await client.get(f"/api/v1/messages/{event.server}/{event.msgid}")
        assert reply.status == 200
        view = reply.json()
        shown = [a for r in view["recipients"] for a in r["attempts"]]
        assert shown
        assert all(
            in_scope(e, users, domains)
            for e in filled_store.fleet.events
            if e.event_id in {a["event_id"] for a in shown}
        )


async def test_stats_show_only_the_accounts_rows(scoped, operator: AsgiClient, filled_store: FilledStore) -> None:
    client, users, domains = scoped
    params = {"since": str(filled_store.now - WINDOW)}
    everything = (await operator.get("/api/v1/stats", params)).json()
    mine = (await client.get("/api/v1/stats", params)).json()
    assert len(everything["by_user"]) > len(mine["by_user"])
    assert {row["key"] for row in mine["by_user"]} <= users
    assert {row["key"] for row in mine["by_sender_domain"]} <= domains
    assert mine["by_server"] == []
    assert everything["by_server"]
    body = orjson.dumps(mine).decode()
    for other in filled_store.fleet.accounts:
        if other.user not in users:
            assert f'"{other.user}"' not in body


async def test_the_stream_carries_only_the_scope(scoped, filled_store: FilledStore, app) -> None:
    from tests.query_service.test_api_stream import fresh_events, read_events, write_events

    client, users, domains = scoped
    async with client.stream("/api/v1/stream") as (chunks, _task):
        new = fresh_events(filled_store, seed=len(users) + 7 * len(domains))
        assert any(in_scope(e, users, domains) for e in new)
        assert not all(in_scope(e, users, domains) for e in new)
        await write_events(filled_store, new)
        wanted = {e.event_id for e in new if in_scope(e, users, domains)}
        got = await read_events(chunks, until=lambda ids: wanted <= ids)
    assert wanted <= got
    foreign = {e.event_id for e in new if not in_scope(e, users, domains)}
    assert not got & foreign
    await asyncio.sleep(0)
