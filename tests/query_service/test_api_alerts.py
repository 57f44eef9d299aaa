"""``GET /api/v1/alerts``: the alert engine's records from Redis, filtered, newest first, confined by token."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from processors.alerts.store import AlertStore
from processors.alerts.types import AlertState, RuleKind, Severity
from query_service.tokens import TokenStore
from tests.query_service.alert_data import alert, example, put_alerts
from tests.query_service.asgi import AsgiClient
from tests.query_service.conftest import FilledStore

OWN_DOMAIN = "acct07-shop.example"


class Seeded:
    """The alerts of one test, by name, stored in Redis."""

    def __init__(self, records: dict[str, dict[str, Any]]) -> None:
        self.records = records
        self.by_id = {record["id"]: name for name, record in records.items()}

    def id(self, name: str) -> str:
        return str(self.records[name]["id"])

    def names(self, answer: dict[str, Any]) -> list[str]:
        return [self.by_id[record["id"]] for record in answer["alerts"]]


@pytest.fixture
async def seeded(app, filled_store: FilledStore) -> Seeded:
    now = filled_store.now
    own = example(time=now - 90, cpanel_user="acct07", sender=f"info@{OWN_DOMAIN}", recipient="a@gmail.com")
    foreign = example(time=now - 80, cpanel_user="acct09", sender="news@acct09.example", recipient="b@yahoo.com")
    to_own_domain = example(time=now - 70, cpanel_user=None, sender="x@elsewhere.example", recipient=f"c@{OWN_DOMAIN}")
    records = {
        # provider-wide, on one server: about every account on it
        "throttling": alert(
            rule="provider_throttling",
            kind=RuleKind.PROVIDER_BLOCK,
            severity=Severity.CRITICAL,
            scope={"server": "srv005.example-hosting.net", "provider": "gmail"},
            last_seen=now - 100,
            count=39,
            summary="39 of 192 deliveries (20%) refused or throttled in 1 h (server srv005, provider gmail)",
            hint="Find what this server sent to gmail in the last hour.",
            examples=[own, foreign],
            details={"signatures": {"gmail_rate": 39}, "attempts": 192, "share": 0.203},
        ),
        # one account on one server
        "spam": alert(
            rule="outbound_spam",
            kind=RuleKind.OUTBOUND_SPAM,
            severity=Severity.CRITICAL,
            scope={"server": "cp1.example-hosting.net", "user": "acct07"},
            last_seen=now - 50,
            count=412,
            examples=[own, foreign, to_own_domain],
        ),
        "ratio": alert(
            rule="sender_domain_failures",
            kind=RuleKind.FAILURE_RATIO,
            severity=Severity.WARNING,
            scope={"sender_domain": OWN_DOMAIN},
            last_seen=now - 200,
            count=0.35,
            examples=[own, to_own_domain],
        ),
        "other_account": alert(
            rule="outbound_spam",
            kind=RuleKind.OUTBOUND_SPAM,
            severity=Severity.CRITICAL,
            scope={"server": "cp1.example-hosting.net", "user": "acct09"},
            last_seen=now - 20,
            examples=[foreign],
        ),
        # a remote domain that happens to be the account's domain is still not the account's alert
        "remote": alert(
            rule="remote_domain_deferrals",
            kind=RuleKind.PERSISTENT_DEFERRAL,
            scope={"remote_domain": OWN_DOMAIN},
            last_seen=now - 30,
            examples=[to_own_domain],
        ),
        "fleet": alert(
            rule="shipper_silent",
            kind=RuleKind.SHIPPER_SILENT,
            severity=Severity.INFO,
            scope={"fleet": "all"},
            last_seen=now - 10,
        ),
        "frozen": alert(
            rule="frozen_messages",
            kind=RuleKind.FROZEN,
            scope={"server": "srv005.example-hosting.net"},
            last_seen=now - 300,
        ),
        "resolved": alert(
            rule="outbound_spam",
            kind=RuleKind.OUTBOUND_SPAM,
            state=AlertState.RESOLVED,
            scope={"server": "cp1.example-hosting.net", "user": "acct07"},
            last_seen=now - 3000,
            version=4,
        ),
        "resolved_other": alert(
            rule="frozen_messages",
            kind=RuleKind.FROZEN,
            state=AlertState.RESOLVED,
            scope={"server": "srv005.example-hosting.net"},
            last_seen=now - 1000,
        ),
    }
    await put_alerts(filled_store.redis_url, filled_store.prefix, list(records.values()))
    return Seeded(records)


async def _account(app, tokens: TokenStore, users: tuple[str, ...] = (), domains: tuple[str, ...] = ()) -> AsgiClient:
    token, _ = await tokens.create(operator=False, users=users, domains=domains)
    return AsgiClient(app, token)


async def test_operator_sees_firing_alerts_newest_first(operator: AsgiClient, seeded: Seeded) -> None:
    reply = await operator.get("/api/v1/alerts")
    assert reply.status == 200
    answer = reply.json()
    assert seeded.names(answer) == ["fleet", "other_account", "remote", "spam", "throttling", "ratio", "frozen"]
    assert answer["total"] == 7
    # the records come back as the engine wrote them
    throttling = next(a for a in answer["alerts"] if a["id"] == seeded.id("throttling"))
    assert throttling == seeded.records["throttling"]
    assert isinstance(throttling["count"], int)
    ratio = next(a for a in answer["alerts"] if a["id"] == seeded.id("ratio"))
    assert ratio["count"] == 0.35
    assert ratio["scope_key"] == f"sender_domain={OWN_DOMAIN}"


async def test_the_state_filter(operator: AsgiClient, seeded: Seeded) -> None:
    resolved = (await operator.get("/api/v1/alerts", {"state": "resolved"})).json()
    assert seeded.names(resolved) == ["resolved_other", "resolved"]
    assert all(a["state"] == "resolved" and a["resolved_at"] for a in resolved["alerts"])
    everything = (await operator.get("/api/v1/alerts", {"state": "all"})).json()
    assert seeded.names(everything) == [
        "fleet",
        "other_account",
        "remote",
        "spam",
        "throttling",
        "ratio",
        "frozen",
        "resolved_other",
        "resolved",
    ]
    assert everything["total"] == 9
    firing = (await operator.get("/api/v1/alerts", {"state": "firing"})).json()
    assert firing == (await operator.get("/api/v1/alerts")).json()


async def test_severity_rule_server_and_limit(operator: AsgiClient, seeded: Seeded) -> None:
    async def names(**params: Any) -> tuple[list[str], int]:
        answer = (await operator.get("/api/v1/alerts", params)).json()
        return seeded.names(answer), answer["total"]

    assert await names(severity="critical") == (["other_account", "spam", "throttling"], 3)
    assert await names(rule="outbound_spam") == (["other_account", "spam"], 2)
    assert await names(rule="outbound_spam", state="all") == (["other_account", "spam", "resolved"], 3)
    assert await names(server="SRV005.example-hosting.net") == (["throttling", "frozen"], 2)
    assert await names(server="srv005.example-hosting.net", state="all") == (
        ["throttling", "frozen", "resolved_other"],
        3,
    )
    assert await names(limit=2) == (["fleet", "other_account"], 7)
    assert await names(severity="info", rule="nope") == ([], 0)


async def test_a_user_token_sees_only_its_users_alerts(app, tokens: TokenStore, seeded: Seeded) -> None:
    client = await _account(app, tokens, users=("acct07",))
    answer = (await client.get("/api/v1/alerts", {"state": "all"})).json()
    assert seeded.names(answer) == ["spam", "resolved"]
    assert answer["total"] == 2
    spam = answer["alerts"][0]
    # its own example stays; another account's goes; mail sent to it by others is not the user's
    assert [x["cpanel_user"] for x in spam["examples"]] == ["acct07"]
    assert spam["summary"] == seeded.records["spam"]["summary"]
    body = orjson.dumps(answer).decode()
    assert "acct09" not in body
    assert "srv005" not in body
    # filters cannot widen the scope
    for params in ({"server": "srv005.example-hosting.net"}, {"rule": "shipper_silent"}, {"severity": "info"}):
        assert (await client.get("/api/v1/alerts", params)).json() == {"alerts": [], "total": 0}


async def test_a_domain_token_sees_only_its_sender_domains_alerts(app, tokens: TokenStore, seeded: Seeded) -> None:
    client = await _account(app, tokens, domains=(OWN_DOMAIN.upper(),))
    answer = (await client.get("/api/v1/alerts", {"state": "all"})).json()
    assert seeded.names(answer) == ["ratio"]  # not the remote-domain alert about the same domain
    ratio = answer["alerts"][0]
    # sent from the domain, and delivered to it: both are the domain's mail
    assert [x["event_id"] for x in ratio["examples"]] == [x["event_id"] for x in seeded.records["ratio"]["examples"]]


async def test_an_account_sees_examples_only_of_its_own_mail(app, tokens: TokenStore, seeded: Seeded) -> None:
    client = await _account(app, tokens, users=("ACCT07",), domains=(OWN_DOMAIN,))
    answer = (await client.get("/api/v1/alerts")).json()
    assert seeded.names(answer) == ["spam", "ratio"]
    spam = answer["alerts"][0]
    kept = {x["event_id"] for x in spam["examples"]}
    expected = [x for x in seeded.records["spam"]["examples"] if x["cpanel_user"] != "acct09"]
    assert kept == {x["event_id"] for x in expected} and len(kept) == 2
    # the operator still sees every example
    token, _ = await tokens.create(operator=True)
    everything = (await AsgiClient(app, token).get("/api/v1/alerts")).json()
    spam = next(a for a in everything["alerts"] if a["id"] == seeded.id("spam"))
    assert len(spam["examples"]) == 3


async def test_without_a_valid_token_401(anonymous: AsgiClient, app, seeded: Seeded) -> None:
    reply = await anonymous.get("/api/v1/alerts")
    assert reply.status == 401
    assert reply.headers["www-authenticate"] == "Bearer"
    bad = await AsgiClient(app, "td_000000000000_" + "x" * 43).get("/api/v1/alerts")
    assert bad.status == 401
    assert seeded.id("fleet") not in bad.body.decode()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"state": "burning"}, "state"),
        ({"state": ""}, "state"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"severity": "apocalyptic"}, "severity"),
        ({"rule": "r" * 600}, "rule"),
        ({"server": "s" * 600}, "server"),
    ],
)
async def test_bad_parameters_are_422(operator: AsgiClient, params: dict[str, str], field: str) -> None:
    reply = await operator.get("/api/v1/alerts", params)
    assert reply.status == 422
    assert reply.json()["detail"][0]["loc"] == ["query", field]


async def test_the_limit_bounds(operator: AsgiClient, seeded: Seeded) -> None:
    assert len((await operator.get("/api/v1/alerts", {"limit": "500", "state": "all"})).json()["alerts"]) == 9
    assert len((await operator.get("/api/v1/alerts", {"limit": "1"})).json()["alerts"]) == 1


async def test_no_alerts_is_an_empty_list(operator: AsgiClient, filled_store: FilledStore) -> None:
    await put_alerts(filled_store.redis_url, filled_store.prefix, [])
    assert (await operator.get("/api/v1/alerts", {"state": "all"})).json() == {"alerts": [], "total": 0}


async def test_unreadable_records_never_make_a_500(operator: AsgiClient, seeded: Seeded, filled_store) -> None:
    client = Redis.from_url(filled_store.redis_url)
    try:
        store = AlertStore(client, filled_store.prefix)
        # JSON, but not a record of this schema: skipped
        await client.hset(store.records_key, "broken", orjson.dumps({"id": "broken", "state": "firing"}))
        await client.zadd(store.seen_key, {"broken": filled_store.now})
        reply = await operator.get("/api/v1/alerts")
        assert reply.status == 200
        assert reply.json()["total"] == 7
        # not JSON at all: the store is unusable, said like an outage
        await client.hset(store.records_key, "garbage", b"\xff not json")
        await client.zadd(store.seen_key, {"garbage": filled_store.now})
        reply = await operator.get("/api/v1/alerts")
        assert reply.status == 503
        assert reply.json() == {"detail": "the alert store holds an unreadable record"}
    finally:
        await client.delete(store.records_key, store.seen_key)
        await client.aclose()


async def test_the_endpoint_is_in_the_openapi_document(app) -> None:
    document = app.openapi()
    operation = document["paths"]["/api/v1/alerts"]["get"]
    params = {p["name"]: p for p in operation["parameters"]}
    assert set(params) == {"state", "severity", "rule", "server", "limit"}
    assert params["limit"]["schema"]["maximum"] == 500
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/AlertsAnswer"}
    record = document["components"]["schemas"]["AlertRecord"]
    assert {"id", "rule", "severity", "scope", "state", "first_seen", "examples"} <= set(record["properties"])
