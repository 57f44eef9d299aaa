"""The search filters shared by ``/deliveries``, ``/stats`` and ``/stream``: parsed, validated, bounded.

Every value arrives from a client and may be hostile: strings are length-capped, dates parsed strictly,
types checked against the known set. Errors are raised as :class:`FilterError` with the parameter name,
and answered as 422 in the same shape FastAPI uses for its own validation errors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from fastapi import Query

from trackdelivery.events import BLOCKED_AND_FAILED, EventType, Reason

MAX_VALUE_LENGTH = 512
MAX_RESULTS_BY_TYPE_DEFAULT = 250
MAX_RESULTS_BY_TYPE_MAXIMUM = 5000
DEFAULT_PAGE_LIMIT = 100
_EARLIEST = datetime(1990, 1, 1, tzinfo=UTC).timestamp()
_LATEST = datetime(2200, 1, 1, tzinfo=UTC).timestamp()


class Period(StrEnum):
    LAST_HOUR = "last_hour"
    LAST_DAY = "last_day"
    LAST_WEEK = "last_week"


PERIOD_SECONDS = {Period.LAST_HOUR: 3600, Period.LAST_DAY: 86400, Period.LAST_WEEK: 7 * 86400}


class FilterError(ValueError):
    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.message = message

    def detail(self) -> list[dict[str, object]]:
        return [{"loc": ["query", self.parameter], "msg": self.message, "type": "value_error"}]


@dataclass(frozen=True, slots=True)
class Filters:
    """What the client asked for, validated; scope is added later from the token."""

    sender: str | None = None
    recipient: str | None = None
    address: str | None = None
    domain: str | None = None
    server: str | None = None
    user: str | None = None
    msgid: str | None = None
    ip: str | None = None
    reason: Reason | None = None
    text: str | None = None
    types: frozenset[EventType] = field(default_factory=frozenset)  # empty = every type
    since: float | None = None
    until: float | None = None


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def parse_time(parameter: str, raw: str) -> float:
    """ISO-8601 (naive means UTC) or epoch seconds."""
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            moment = datetime.fromisoformat(raw.replace("z", "Z"))
        except ValueError:
            raise FilterError(parameter, f"not an ISO-8601 date-time or epoch seconds: {raw[:64]!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp()
    if not (_EARLIEST <= seconds <= _LATEST):  # also rejects nan and inf
        raise FilterError(parameter, "date-time out of range (1990 to 2200)")
    return seconds


def parse_types(raw_values: list[str] | None, blocked_and_failed: bool) -> frozenset[EventType]:
    wanted: set[EventType] = set()
    for raw in raw_values or ():
        for item in raw.split(","):
            name = item.strip().lower()
            if not name:
                continue
            try:
                wanted.add(EventType(name))
            except ValueError:
                known = ", ".join(t.value for t in EventType)
                raise FilterError("type", f"unknown event type {name[:64]!r}; known: {known}") from None
    if blocked_and_failed:
        if wanted and not wanted & BLOCKED_AND_FAILED:
            raise FilterError("blocked_and_failed", "the types asked for exclude bounced, expired and rejected")
        wanted = set(wanted & BLOCKED_AND_FAILED) if wanted else set(BLOCKED_AND_FAILED)
    return frozenset(wanted)


def parse_reason(raw: str | None) -> Reason | None:
    raw = _clean(raw)
    if raw is None:
        return None
    try:
        return Reason(raw.lower())
    except ValueError:
        known = ", ".join(r.value for r in Reason)
        raise FilterError("reason", f"unknown reason {raw[:64]!r}; known: {known}") from None


def resolve_window(
    period: Period | None, since: str | None, until: str | None, now: float | None = None
) -> tuple[float | None, float | None]:
    since_value = parse_time("since", since) if since and since.strip() else None
    until_value = parse_time("until", until) if until and until.strip() else None
    if period is not None:
        if since_value is not None:
            raise FilterError("period", "give either period or since, not both")
        since_value = (now if now is not None else time.time()) - PERIOD_SECONDS[period]
    if since_value is not None and until_value is not None and since_value > until_value:
        raise FilterError("until", "until is before since")
    return since_value, until_value


Text = Annotated[str | None, Query(max_length=MAX_VALUE_LENGTH)]


class FilterParams:
    """FastAPI dependency: the filter query parameters, documented in the OpenAPI schema."""

    def __init__(
        self,
        sender: Annotated[str | None, Query(max_length=MAX_VALUE_LENGTH, description="envelope sender")] = None,
        recipient: Annotated[
            str | None, Query(max_length=MAX_VALUE_LENGTH, description="recipient or original recipient")
        ] = None,
        address: Annotated[
            str | None, Query(max_length=MAX_VALUE_LENGTH, description="sender or recipient address")
        ] = None,
        domain: Annotated[
            str | None, Query(max_length=MAX_VALUE_LENGTH, description="sender or recipient domain")
        ] = None,
        server: Annotated[str | None, Query(max_length=MAX_VALUE_LENGTH, description="mail server name")] = None,
        user: Annotated[str | None, Query(max_length=MAX_VALUE_LENGTH, description="sender's cPanel user")] = None,
        msgid: Annotated[str | None, Query(max_length=MAX_VALUE_LENGTH, description="Exim message id")] = None,
        ip: Annotated[str | None, Query(max_length=MAX_VALUE_LENGTH, description="client IP or remote host IP")] = None,
        type: Annotated[
            list[str] | None,
            Query(
                max_length=64,
                description="event types, repeated or comma separated: " + ", ".join(t.value for t in EventType),
            ),
        ] = None,
        reason: Annotated[
            str | None,
            Query(max_length=MAX_VALUE_LENGTH, description="reason: " + ", ".join(r.value for r in Reason)),
        ] = None,
        period: Annotated[Period | None, Query(description="shortcut for since = now - period")] = None,
        since: Annotated[
            str | None, Query(max_length=64, description="ISO-8601 (naive = UTC) or epoch seconds")
        ] = None,
        until: Annotated[
            str | None, Query(max_length=64, description="ISO-8601 (naive = UTC) or epoch seconds")
        ] = None,
        text: Annotated[
            str | None,
            Query(max_length=MAX_VALUE_LENGTH, description="case-insensitive text in the response or subject"),
        ] = None,
        blocked_and_failed: Annotated[
            bool, Query(description="cPanel's Show Blocked & Failed: bounced, expired and rejected")
        ] = False,
    ) -> None:
        self.raw = {
            "sender": sender,
            "recipient": recipient,
            "address": address,
            "domain": domain,
            "server": server,
            "user": user,
            "msgid": msgid,
            "ip": ip,
            "text": text,
        }
        self.types_raw = type
        self.reason_raw = reason
        self.period = period
        self.since_raw = since
        self.until_raw = until
        self.blocked_and_failed = blocked_and_failed

    def parse(self, now: float | None = None) -> Filters:
        since, until = resolve_window(self.period, self.since_raw, self.until_raw, now)
        cleaned = {name: _clean(value) for name, value in self.raw.items()}
        return Filters(
            **cleaned,
            reason=parse_reason(self.reason_raw),
            types=parse_types(self.types_raw, self.blocked_and_failed),
            since=since,
            until=until,
        )
