"""The ``/api/v1`` endpoints. Every one needs a token; account tokens are confined on every one."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from redis.exceptions import RedisError

from processors.alerts.store import AlertStore
from query_service.alerts import (
    DEFAULT_ALERT_LIMIT,
    MAX_ALERT_LIMIT,
    AlertsAnswer,
    AlertSeverity,
    AlertStateFilter,
    list_alerts,
)
from query_service.auth import Principal, require_principal
from query_service.filters import (
    DEFAULT_PAGE_LIMIT,
    MAX_RESULTS_BY_TYPE_DEFAULT,
    MAX_RESULTS_BY_TYPE_MAXIMUM,
    MAX_VALUE_LENGTH,
    FilterError,
    FilterParams,
    Filters,
    Period,
    resolve_window,
)
from query_service.present import event_dict, message_view
from query_service.responses import OrjsonResponse
from query_service.search import DeliverySearch
from query_service.settings import QueryServiceSettings
from trackdelivery.events import REASON_HINTS, Reason
from trackdelivery.store import Page
from trackdelivery.store import Query as StoreQuery

router = APIRouter(prefix="/api/v1")

_NOT_FOUND = "no such message"
_STREAM_BATCH = 500


def store_query(
    filters: Filters,
    principal: Principal,
    *,
    max_results_by_type: int = MAX_RESULTS_BY_TYPE_DEFAULT,
    page: Page | None = None,
) -> StoreQuery:
    return StoreQuery(
        sender=filters.sender,
        recipient=filters.recipient,
        address=filters.address,
        domain=filters.domain,
        server=filters.server,
        cpanel_user=filters.user,
        msgid=filters.msgid,
        ip=filters.ip,
        types=filters.types or None,
        reason=filters.reason,
        since=filters.since,
        until=filters.until,
        text=filters.text,
        max_results_by_type=max_results_by_type,
        page=page,
        scope_users=_scope_users(principal),
        scope_domains=_scope_domains(principal),
    )


def encode_cursor(store_cursor: str, filters: Filters) -> str:
    """The store's cursor plus the resolved time window, so ``period`` pages stay on one window."""
    raw = orjson.dumps([store_cursor, filters.since, filters.until])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, tuple[float | None, float | None]]:
    try:
        store_cursor, since, until = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise FilterError("cursor", "malformed cursor") from None
    if not isinstance(store_cursor, str) or not all(v is None or isinstance(v, int | float) for v in (since, until)):
        raise FilterError("cursor", "malformed cursor")
    return store_cursor, (since, until)


def _scope_users(principal: Principal) -> frozenset[str] | None:
    return None if principal.operator else principal.users


def _scope_domains(principal: Principal) -> frozenset[str] | None:
    return None if principal.operator else principal.domains


def _search(request: Request) -> DeliverySearch:
    search: DeliverySearch = request.app.state.search
    return search


Authorised = Annotated[Principal, Depends(require_principal)]


@router.get("/deliveries", summary="Search delivery events, newest first", response_model=None)
async def deliveries(
    request: Request,
    principal: Authorised,
    filter_params: Annotated[FilterParams, Depends()],
    max_results_by_type: Annotated[
        int | None,
        Query(
            ge=1,
            le=MAX_RESULTS_BY_TYPE_MAXIMUM,
            description="cPanel's meaning: up to this many newest events of EACH type (default 250)",
        ),
    ] = None,
    limit: Annotated[
        int | None, Query(ge=1, le=MAX_RESULTS_BY_TYPE_MAXIMUM, description="page size (instead of per-type caps)")
    ] = None,
    cursor: Annotated[
        str | None, Query(max_length=MAX_VALUE_LENGTH, description="next_cursor of the previous page")
    ] = None,
) -> Response:
    """Events matching every given filter. Without ``limit`` or ``cursor`` the answer holds up to
    ``max_results_by_type`` newest events of each type (cPanel's Track Delivery); with them, one page of
    ``limit`` newest events and a ``next_cursor`` for the next page."""
    filters = filter_params.parse()
    paged = limit is not None or cursor is not None
    if paged and max_results_by_type is not None:
        raise FilterError("max_results_by_type", "give either max_results_by_type or limit/cursor, not both")
    store_cursor = None
    if cursor:
        store_cursor, window = decode_cursor(cursor)
        if filter_params.period is not None:
            # a period is resolved once, on the first page: the next pages keep that window
            filters = dataclasses.replace(filters, since=window[0], until=window[1])
    page = Page(limit=limit or DEFAULT_PAGE_LIMIT, cursor=store_cursor) if paged else None
    query = store_query(
        filters, principal, max_results_by_type=max_results_by_type or MAX_RESULTS_BY_TYPE_DEFAULT, page=page
    )
    result = await _search(request).search_rows(query)
    totals = {str(kind): count for kind, count in result.counts.items()}
    answer = {
        # the rows arrive as JSON already: a 250-per-type answer has thousands of events
        "events": orjson.Fragment(b"[" + b",".join(result.rows) + b"]"),
        "returned": len(result.rows),
        "total": sum(result.counts.values()),
        "totals": totals,
        "overflowed": any(result.overflowed.values()),
        "overflowed_types": sorted(str(kind) for kind, flag in result.overflowed.items() if flag),
        "complete": result.complete,
        "next_cursor": encode_cursor(result.next_cursor, filters) if result.next_cursor else None,
        "since": filters.since,
        "until": filters.until,
    }
    return OrjsonResponse(answer)


@router.get(
    "/messages/{server}/{msgid}",
    summary="One message: arrival, attempts, route, raw lines, hint",
    response_model=None,
    responses={404: {"description": "no such message, or not in the token's scope"}},
)
async def message(
    request: Request,
    principal: Authorised,
    server: Annotated[str, Path(max_length=MAX_VALUE_LENGTH)],
    msgid: Annotated[str, Path(max_length=MAX_VALUE_LENGTH)],
) -> Response:
    """404 both when the message does not exist and when it is outside the token's scope."""
    view = await _search(request).message(
        server, msgid, scope_users=_scope_users(principal), scope_domains=_scope_domains(principal)
    )
    if view is None:
        raise HTTPException(404, _NOT_FOUND)
    return OrjsonResponse(message_view(view))


@router.get(
    "/stats",
    summary="Counters per user, sender domain and server; top deferring domains and reasons",
    response_model=None,
)
async def stats(
    request: Request,
    principal: Authorised,
    period: Annotated[Period | None, Query(description="default last_day")] = None,
    since: Annotated[str | None, Query(max_length=64, description="ISO-8601 (naive = UTC) or epoch")] = None,
    until: Annotated[str | None, Query(max_length=64, description="ISO-8601 (naive = UTC) or epoch")] = None,
    top: Annotated[int, Query(ge=1, le=1000, description="rows per table")] = 20,
) -> Response:
    if period is None and since is None:
        period = Period.LAST_DAY
    window_start, window_end = resolve_window(period, since, until)
    search = _search(request)
    dimensions = ("user", "sender_domain", "server")
    results = await asyncio.gather(
        *(
            search.stats(
                dimension,
                since=window_start,
                until=window_end,
                top=top,
                scope_users=_scope_users(principal),
                scope_domains=_scope_domains(principal),
            )
            for dimension in dimensions
        )
    )
    tables = {
        f"by_{dimension}": [
            {
                "key": row.key,
                "sent": row.sent,
                "delivered": row.delivered,
                "deferred": row.deferred,
                "failed": row.failed,
                "size": row.bytes,
            }
            for row in result.rows[:top]
        ]
        for dimension, result in zip(dimensions, results, strict=True)
    }
    first = results[0]
    answer = {
        "since": window_start,
        "until": window_end,
        **tables,
        "top_deferring_domains": [{"domain": name, "count": count} for name, count in first.top_deferring_domains],
        "top_reasons": [
            {"reason": name, "count": count, "hint": reason_hint(name)} for name, count in first.top_reasons
        ],
    }
    return OrjsonResponse(answer)


async def _stream_events(
    request: Request,
    search: DeliverySearch,
    filters: Filters,
    principal: Principal,
    settings: QueryServiceSettings,
) -> AsyncIterator[bytes]:
    """Poll the store for events newer than the connection (minus the backfill); end when the client goes.

    Writers batch, so an event can land a little after its own timestamp: each poll looks back
    ``stream_late_seconds`` and skips the ids already sent.
    """
    started = time.time()
    floor = started - settings.stream_backfill_seconds
    if filters.since is not None:
        floor = max(floor, filters.since)
    sent: dict[str, float] = {}
    last_write = time.monotonic()
    yield b": live tail of delivery events\nretry: 2000\n\n"
    deadline = None if settings.stream_max_seconds is None else time.monotonic() + settings.stream_max_seconds
    while not await request.is_disconnected():
        if deadline is not None and time.monotonic() >= deadline:
            return
        now = time.time()
        window_start = max(floor, now - settings.stream_late_seconds)
        window = dataclasses.replace(filters, since=window_start, until=filters.until)
        try:
            result = await search.search(store_query(window, principal, page=Page(limit=_STREAM_BATCH)))
        except (RedisError, OSError):
            yield b'event: error\ndata: {"detail":"the query store is unavailable"}\n\n'
            return
        fresh = [e for e in reversed(result.events) if e.event_id not in sent]
        for event in fresh:
            sent[event.event_id] = event.time
            payload = orjson.dumps(event_dict(event))
            yield b"event: delivery\nid: " + event.event_id.encode() + b"\ndata: " + payload + b"\n\n"
        if fresh:
            last_write = time.monotonic()
            sent = {event_id: at for event_id, at in sent.items() if at >= window_start}
        elif time.monotonic() - last_write >= settings.stream_heartbeat_seconds:
            last_write = time.monotonic()
            yield b": keep-alive\n\n"
        await asyncio.sleep(settings.stream_poll_seconds)


@router.get(
    "/stream",
    summary="Live tail: server-sent events with the same filters as /deliveries",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "one `delivery` event per new event"}},
)
async def stream(
    request: Request, principal: Authorised, filter_params: Annotated[FilterParams, Depends()]
) -> StreamingResponse:
    filters = filter_params.parse()
    settings = request.app.state.settings
    request.app.state.metrics.stream_clients.inc()
    body = _stream_events(request, _search(request), filters, principal, settings)
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/alerts",
    summary="Current alerts of the alert engine (firing, or recently resolved), newest first",
    response_model=AlertsAnswer,
)
async def alerts(
    request: Request,
    principal: Authorised,
    state: Annotated[
        AlertStateFilter, Query(description="firing (default), resolved (kept a week) or all")
    ] = AlertStateFilter.FIRING,
    severity: Annotated[AlertSeverity | None, Query(description="only alerts of this severity")] = None,
    rule: Annotated[str | None, Query(max_length=MAX_VALUE_LENGTH, description="only alerts of this rule")] = None,
    server: Annotated[
        str | None, Query(max_length=MAX_VALUE_LENGTH, description="only alerts whose scope is this server")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_ALERT_LIMIT, description="at most this many alerts")] = (
        DEFAULT_ALERT_LIMIT
    ),
) -> AlertsAnswer:
    """Operator tokens see every alert. Account tokens see only alerts about one of their users or sender
    domains (never server, provider, remote-domain or fleet-wide alerts), and in those only the example
    deliveries they could see through ``/deliveries``."""
    store: AlertStore = request.app.state.alerts
    return await list_alerts(store, principal, state=state, severity=severity, rule=rule, server=server, limit=limit)


def reason_hint(name: str) -> str | None:
    try:
        return REASON_HINTS[Reason(name)]
    except ValueError:
        return None
