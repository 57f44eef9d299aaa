"""``GET /api/v1/deliveries`` against a brute-force answer computed from the same events."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.query_service.asgi import AsgiClient
from tests.query_service.conftest import FilledStore
from tests.query_service.fleet_data import capped_by_type, matches, newest_first
from trackdelivery.events import BLOCKED_AND_FAILED, DeliveryEvent, EventType

WEEK = 3 * 86400  # a window wider than the fleet (2 days), narrower than the retention


def _pick(store: FilledStore, seed: int, predicate) -> DeliveryEvent:
    candidates = [e for e in store.fleet.events if predicate(e)]
    return random.Random(seed).choice(candidates)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _cases(store: FilledStore) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(API parameters, oracle filters) pairs, values drawn from the fleet."""
    events = store.fleet.events
    mixed = _pick(store, 1, lambda e: e.sender and e.sender.startswith("Mixed"))
    bounced = _pick(store, 2, lambda e: e.type is EventType.BOUNCED)
    incoming = _pick(store, 3, lambda e: e.cpanel_user is None and e.msgid)
    deferred = _pick(store, 4, lambda e: e.type is EventType.DEFERRED)
    account = store.fleet.accounts[3]
    since = store.now - 2 * 86400
    until = store.now - 86400
    window = {"since": store.now - WEEK}
    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"sender": mixed.sender.upper()}, {"sender": mixed.sender}),
        ({"recipient": bounced.recipient.upper()}, {"recipient": bounced.recipient}),
        ({"address": incoming.recipient}, {"address": incoming.recipient}),
        ({"address": mixed.sender}, {"address": mixed.sender}),
        ({"domain": account.domains[0]}, {"domain": account.domains[0]}),
        ({"domain": "gmail.com"}, {"domain": "gmail.com"}),
        ({"server": bounced.server.upper()}, {"server": bounced.server}),
        ({"user": account.user}, {"user": account.user}),
        ({"msgid": deferred.msgid}, {"msgid": deferred.msgid}),
        ({"ip": deferred.remote_ip}, {"ip": deferred.remote_ip}),
        ({"ip": incoming.client_ip}, {"ip": incoming.client_ip}),
        ({"type": "bounced,deferred"}, {"types": {EventType.BOUNCED, EventType.DEFERRED}}),
        ({"type": ["rejected", "frozen"]}, {"types": {EventType.REJECTED, EventType.FROZEN}}),
        ({"reason": "mailbox_full"}, {"reason": "mailbox_full"}),
        ({"text": "QUOTA"}, {"text": "quota"}),
        ({"text": "invoice"}, {"text": "invoice"}),  # subject
        ({"since": _iso(since), "until": _iso(until)}, {"since": since, "until": until}),
        ({"since": str(since)}, {"since": since}),
        ({"blocked_and_failed": "true"}, {"types": set(BLOCKED_AND_FAILED)}),
        # combinations
        (
            {"domain": account.domains[0], "type": "deferred"},
            {"domain": account.domains[0], "types": {EventType.DEFERRED}},
        ),
        (
            {"user": bounced.cpanel_user, "blocked_and_failed": "1", "text": "550"},
            {"user": bounced.cpanel_user, "types": set(BLOCKED_AND_FAILED), "text": "550"},
        ),
        (
            {"server": account.server, "reason": "greylisted", "since": _iso(since)},
            {"server": account.server, "reason": "greylisted", "since": since},
        ),
        (
            {"recipient": bounced.recipient, "sender": "nobody@nowhere.example"},
            {"recipient": bounced.recipient, "sender": "nobody@nowhere.example"},
        ),
    ]
    for params, oracle in cases:
        if "since" not in params and "period" not in params:
            params["since"] = _iso(window["since"])
            oracle.setdefault("since", window["since"])
    assert all(any(matches(e, o) for e in events) for _, o in cases[:-1]), "every case but the last matches something"
    return cases


async def test_every_filter_and_combination_matches_brute_force(
    operator: AsgiClient, filled_store: FilledStore
) -> None:
    for params, oracle in _cases(filled_store):
        reply = await operator.get("/api/v1/deliveries", {**params, "max_results_by_type": 5000})
        assert reply.status == 200, (params, reply.body)
        answer = reply.json()
        expected = [e.event_id for e in newest_first(e for e in filled_store.fleet.events if matches(e, oracle))]
        got = [e["event_id"] for e in answer["events"]]
        assert got == expected, params
        assert answer["total"] == len(expected)
        assert answer["overflowed"] is False


async def test_max_results_by_type_keeps_the_newest_of_each_type(
    operator: AsgiClient, filled_store: FilledStore
) -> None:
    since = filled_store.now - WEEK
    reply = await operator.get("/api/v1/deliveries", {"max_results_by_type": 4, "since": str(since)})
    answer = reply.json()
    ids, counts, overflowed = capped_by_type((e for e in filled_store.fleet.events if e.time >= since), 4)
    assert [e["event_id"] for e in answer["events"]] == ids
    assert answer["totals"] == counts
    assert set(answer["overflowed_types"]) == overflowed
    assert answer["overflowed"] is True


async def test_default_is_250_per_type(operator: AsgiClient, filled_store: FilledStore) -> None:
    since = filled_store.now - WEEK
    answer = (await operator.get("/api/v1/deliveries", {"since": str(since)})).json()
    ids, _, overflowed = capped_by_type((e for e in filled_store.fleet.events if e.time >= since), 250)
    assert [e["event_id"] for e in answer["events"]] == ids
    assert overflowed  # the fleet has more than 250 events of some type
    assert set(answer["overflowed_types"]) == overflowed


async def test_period_last_hour(operator: AsgiClient, filled_store: FilledStore) -> None:
    answer = (await operator.get("/api/v1/deliveries", {"period": "last_hour"})).json()
    got = {e["event_id"] for e in answer["events"]}
    # the fleet was written moments ago: everything since an hour before it was built must be there,
    # nothing older than an hour before now
    must = {e.event_id for e in filled_store.fleet.events if e.time >= filled_store.now - 3500}
    assert must and must <= got
    assert all(e["time"] >= filled_store.now - 3600 for e in answer["events"])


async def test_pages_follow_each_other_without_gaps_or_repeats(operator: AsgiClient, filled_store: FilledStore) -> None:
    since = filled_store.now - WEEK
    params: dict[str, Any] = {"since": str(since), "type": "deferred,delivered,bounced", "limit": 37}
    oracle = {"since": since, "types": {EventType.DEFERRED, EventType.DELIVERED, EventType.BOUNCED}}
    expected = [e.event_id for e in newest_first(e for e in filled_store.fleet.events if matches(e, oracle))]
    seen: list[str] = []
    cursor = None
    for _ in range(100):
        reply = await operator.get("/api/v1/deliveries", {**params, **({"cursor": cursor} if cursor else {})})
        assert reply.status == 200, reply.body
        page = reply.json()
        assert len(page["events"]) <= 37
        seen += [e["event_id"] for e in page["events"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected
    assert len(seen) > 37 * 3


async def test_pages_of_a_period_stay_on_the_first_pages_window(
    operator: AsgiClient, filled_store: FilledStore
) -> None:
    params: dict[str, Any] = {"period": "last_day", "limit": 50}
    seen: list[str] = []
    cursor = None
    for _ in range(100):
        reply = await operator.get("/api/v1/deliveries", {**params, **({"cursor": cursor} if cursor else {})})
        assert reply.status == 200, reply.body
        page = reply.json()
        seen += [e["event_id"] for e in page["events"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    since = page["since"]
    expected = [e.event_id for e in newest_first(e for e in filled_store.fleet.events if e.time >= since)]
    assert seen == expected
    assert len(seen) > 100


async def test_a_cursor_only_works_with_its_own_query(operator: AsgiClient, filled_store: FilledStore) -> None:
    since = str(filled_store.now - WEEK)
    first = (await operator.get("/api/v1/deliveries", {"since": since, "limit": 5})).json()
    assert first["next_cursor"]
    reply = await operator.get(
        "/api/v1/deliveries", {"since": since, "limit": 5, "type": "bounced", "cursor": first["next_cursor"]}
    )
    assert reply.status == 422
    assert reply.json()["detail"][0]["loc"] == ["query", "cursor"]


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2025-13-45T99:00:00"}, "until"),
        ({"since": "1e400"}, "since"),
        ({"since": "nan"}, "since"),
        ({"since": "2025-01-02T00:00:00Z", "until": "2025-01-01T00:00:00Z"}, "until"),
        ({"period": "last_hour", "since": "2025-01-01"}, "period"),
        ({"period": "last_century"}, "period"),
        ({"type": "delivered,sent"}, "type"),
        ({"reason": "gremlins"}, "reason"),
        ({"sender": "a" * 513}, "sender"),
        ({"text": "x" * 513}, "text"),
        ({"cursor": "not-a-cursor", "limit": 5}, "cursor"),
        ({"cursor": "WzEsMiwzXQ", "limit": 5}, "cursor"),  # [1,2,3]
        ({"cursor": "WyJ4IiwiYSIsbnVsbF0", "limit": 5}, "cursor"),  # ["x","a",null]
        ({"cursor": "A" * 513}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 5001}, "limit"),
        ({"max_results_by_type": 5001}, "max_results_by_type"),
        ({"max_results_by_type": 10, "limit": 10}, "max_results_by_type"),
        ({"blocked_and_failed": "true", "type": "delivered"}, "blocked_and_failed"),
        ({"blocked_and_failed": "maybe"}, "blocked_and_failed"),
    ],
)
async def test_bad_input_is_a_clear_422(operator: AsgiClient, params: dict[str, Any], parameter: str) -> None:
    windowed = "since" in params or "period" in params
    reply = await operator.get("/api/v1/deliveries", params if windowed else {"period": "last_hour", **params})
    assert reply.status == 422, reply.body
    detail = reply.json()["detail"]
    assert any(parameter in item["loc"] for item in detail), detail
    assert all(item["msg"] for item in detail)


async def test_hostile_values_are_just_values(operator: AsgiClient) -> None:
    for value in [
        "*",
        "td:e:*",
        "\x00\xff",
        "a' OR 1=1 --",
        "<script>alert(1)</script>",
        "[",
        "\u202e",
        "%00",
        "é" * 512,
    ]:
        reply = await operator.get("/api/v1/deliveries", {"recipient": value, "period": "last_hour"})
        assert reply.status == 200, (value, reply.body)
        assert reply.json()["events"] == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer td_0123456789ab_" + "x" * 43},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer " + "y" * 2000},
    ],
)
async def test_no_valid_token_is_401_on_every_endpoint(anonymous: AsgiClient, headers: dict[str, str]) -> None:
    for path in (
        "/api/v1/deliveries",
        "/api/v1/messages/cp0.example-hosting.net/1abcde-000000000Kg-0000",
        "/api/v1/stats",
        "/api/v1/stream",
    ):
        reply = await anonymous.get(path, {"period": "last_hour"}, headers=headers)
        assert reply.status == 401, (path, headers, reply.body)
        assert reply.headers.get("www-authenticate") == "Bearer"


async def test_a_revoked_token_is_refused(app, tokens) -> None:
    token, record = await tokens.create(operator=True)
    client = AsgiClient(app, token)
    assert (await client.get("/api/v1/deliveries", {"period": "last_hour"})).status == 200
    await tokens.revoke(record.token_id)
    assert (await client.get("/api/v1/deliveries", {"period": "last_hour"})).status == 401
