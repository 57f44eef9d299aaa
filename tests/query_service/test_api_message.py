"""``GET /api/v1/messages/{server}/{msgid}``, ``/api/v1/stats`` and the service endpoints."""

from __future__ import annotations

from collections import Counter

from tests.query_service.asgi import AsgiClient
from tests.query_service.conftest import FilledStore
from tests.query_service.fleet_data import HINTS
from trackdelivery.events import BLOCKED_AND_FAILED, REASON_HINTS, EventType, Reason


def _message_events(store: FilledStore, server: str, msgid: str):
    return [e for e in store.fleet.events if e.server == server and e.msgid == msgid]


async def test_a_bounced_message_tells_the_whole_story(operator: AsgiClient, filled_store: FilledStore) -> None:
    bounced = next(
        e
        for e in filled_store.fleet.events
        if e.type is EventType.BOUNCED
        and any(
            x.type is EventType.DEFERRED
            for x in _message_events(filled_store, e.server, e.msgid)
            if x.recipient == e.recipient
        )
    )
    reply = await operator.get(f"/api/v1/messages/{bounced.server}/{bounced.msgid}")
    assert reply.status == 200
    view = reply.json()
    events = _message_events(filled_store, bounced.server, bounced.msgid)
    assert view["arrival"]["sender"] == bounced.sender
    assert view["arrival"]["subject"] == bounced.subject
    assert view["arrival"]["time"] == bounced.arrival_time
    assert {r["recipient"] for r in view["recipients"]} == {e.recipient for e in events}
    recipient = next(r for r in view["recipients"] if r["recipient"] == bounced.recipient)
    assert recipient["state"] == "bounced"
    assert recipient["reason"] == bounced.reason.value
    assert recipient["hint"] == HINTS[bounced.reason]
    mine = sorted((e for e in events if e.recipient == bounced.recipient), key=lambda e: e.time)
    assert [a["event_id"] for a in recipient["attempts"]] == [e.event_id for e in mine]
    assert [a["retry"]["attempt"] for a in recipient["attempts"]] == list(range(1, len(mine) + 1))
    route = recipient["route"]
    assert (route["client_ip"], route["server"], route["transport"], route["remote_host"], route["remote_ip"]) == (
        bounced.client_ip,
        bounced.server,
        bounced.transport,
        bounced.remote_host,
        bounced.remote_ip,
    )
    assert route["response"] == bounced.response
    assert view["bounce_msgid"] == bounced.bounce_msgid
    assert any(f" ** {bounced.recipient}: " in line for line in view["lines"])
    assert any(" <= " in line for line in view["lines"])


async def test_a_deferred_recipient_has_a_retry_estimate(operator: AsgiClient, filled_store: FilledStore) -> None:
    finals = {(e.server, e.msgid, e.recipient) for e in filled_store.fleet.events if e.type is not EventType.DEFERRED}
    waiting = next(
        e
        for e in filled_store.fleet.events
        if e.type is EventType.DEFERRED and (e.server, e.msgid, e.recipient) not in finals
    )
    view = (await operator.get(f"/api/v1/messages/{waiting.server}/{waiting.msgid}")).json()
    recipient = next(r for r in view["recipients"] if r["recipient"] == waiting.recipient)
    assert recipient["state"] == "deferred"
    assert recipient["expected_attempts"] == 27  # Exim's default retry rules, counted
    assert recipient["retry"]["next_retry"] is not None
    assert recipient["retry"]["give_up"] is not None


async def test_unknown_and_odd_message_ids_are_404(operator: AsgiClient, filled_store: FilledStore) -> None:
    server = filled_store.fleet.accounts[0].server
    for msgid in ("1zzzzz-000000000Kg-0000", "not-an-id", "%2e%2e", "x" * 512, "*"):
        reply = await operator.get(f"/api/v1/messages/{server}/{msgid}")
        assert reply.status == 404, msgid
    assert (await operator.get(f"/api/v1/messages/{server}/{'x' * 513}")).status == 422


async def test_stats_count_what_was_written(operator: AsgiClient, filled_store: FilledStore) -> None:
    answer = (await operator.get("/api/v1/stats", {"since": str(filled_store.now - 3 * 86400), "top": 100})).json()
    events = filled_store.fleet.events
    for dimension, field in (("user", "cpanel_user"), ("server", "server"), ("sender_domain", "sender_domain")):
        rows = {row["key"]: row for row in answer[f"by_{dimension}"]}
        delivered = Counter(getattr(e, field) for e in events if e.type is EventType.DELIVERED)
        deferred = Counter(getattr(e, field) for e in events if e.type is EventType.DEFERRED)
        failed = Counter(getattr(e, field) for e in events if e.type in BLOCKED_AND_FAILED)
        for key in {k for k in delivered if k}:
            assert rows[key]["delivered"] == delivered[key], (dimension, key)
            assert rows[key]["deferred"] == deferred[key], (dimension, key)
            assert rows[key]["failed"] == failed[key], (dimension, key)
    deferring = Counter(e.recipient_domain for e in events if e.type is EventType.DEFERRED)
    top = answer["top_deferring_domains"]
    assert top[0]["count"] == max(deferring.values())
    assert {t["domain"]: t["count"] for t in top} == {
        d: n for d, n in deferring.items() if d in {t["domain"] for t in top}
    }
    # the store counts reasons of deferrals and failures
    counted = {EventType.DEFERRED, *BLOCKED_AND_FAILED}
    reasons = Counter(e.reason.value for e in events if e.reason is not None and e.type in counted)
    assert {r["reason"]: r["count"] for r in answer["top_reasons"]} == dict(
        reasons.most_common(len(answer["top_reasons"]))
    )
    # every top reason comes with the operator's fix hint for that category
    assert all(r["hint"] == REASON_HINTS[Reason(r["reason"])] for r in answer["top_reasons"])


async def test_service_endpoints(anonymous: AsgiClient, operator: AsgiClient) -> None:
    assert (await anonymous.get("/healthz")).body == b"ok"
    ready = await anonymous.get("/readyz")
    assert ready.status == 200
    page = await anonymous.get("/")
    assert page.status == 200
    assert b"Track Delivery" in page.body
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert (await anonymous.get("/static/app.js")).status == 200
    openapi = (await anonymous.get("/openapi.json")).json()
    assert {"/api/v1/deliveries", "/api/v1/messages/{server}/{msgid}", "/api/v1/stats", "/api/v1/stream"} <= set(
        openapi["paths"]
    )
    await operator.get("/api/v1/deliveries", {"period": "last_hour"})
    await operator.get("/api/v1/messages/x/y")
    metrics = (await anonymous.get("/metrics")).body.decode()
    assert 'trackdelivery_http_requests_total{method="GET",route="/api/v1/deliveries",status="200"}' in metrics
    assert 'route="/api/v1/messages/{server}/{msgid}",status="404"' in metrics
    assert "trackdelivery_http_request_seconds_bucket" in metrics


async def test_readyz_says_when_redis_is_gone(filled_store: FilledStore) -> None:
    from query_service.app import create_app
    from tests.query_service.asgi import running

    dead = filled_store.settings(redis_url="redis://127.0.0.1:1/0", redis_timeout_seconds=0.5)
    application = create_app(dead)
    async with running(application):
        client = AsgiClient(application, "td_0123456789ab_" + "x" * 43)
        assert (await client.get("/readyz")).status == 503
        assert (await client.get("/healthz")).status == 200
        reply = await client.get("/api/v1/deliveries")
        assert reply.status == 503
