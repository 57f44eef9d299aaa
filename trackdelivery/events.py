"""The delivery event model shared by the parser, the processors, the query service and alerting.

One ``DeliveryEvent`` per delivery attempt or outcome for one recipient of one message (a superset of
cPanel's EmailTrack row). SMTP-time rejections have no message id and get an event of their own.
The wire form (Kafka ``exim.delivery.events``, Redis) is ``event.to_dict()`` serialised with orjson;
``SCHEMA_VERSION`` is bumped on any incompatible change.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

SCHEMA_VERSION = 1


class EventType(StrEnum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    EXPIRED = "expired"  # retry timeout exceeded / failing for a long time
    REJECTED = "rejected"  # refused at SMTP time, never queued
    FILTERED = "filtered"  # bypassed, :blackhole:, discarded, suppressed (-N)
    ARCHIVED = "archived"  # cPanel archiver_* transports
    IN_PROGRESS = "in_progress"  # received, no outcome yet
    FROZEN = "frozen"
    CANCELLED = "cancelled"


#: Types after which Exim will not try this recipient again.
FINAL_TYPES = frozenset(
    {
        EventType.DELIVERED,
        EventType.BOUNCED,
        EventType.EXPIRED,
        EventType.REJECTED,
        EventType.FILTERED,
        EventType.ARCHIVED,
        EventType.CANCELLED,
    }
)

#: cPanel's "Show Blocked & Failed".
BLOCKED_AND_FAILED = frozenset({EventType.BOUNCED, EventType.EXPIRED, EventType.REJECTED})


class Reason(StrEnum):
    RECIPIENT_UNKNOWN = "recipient_unknown"
    RECIPIENT_DOMAIN_INVALID = "recipient_domain_invalid"
    MAILBOX_INACTIVE = "mailbox_inactive"
    MAILBOX_FULL = "mailbox_full"
    MESSAGE_TOO_LARGE = "message_too_large"
    GREYLISTED = "greylisted"
    RATE_LIMITED = "rate_limited"
    IP_REPUTATION = "ip_reputation"
    DOMAIN_OR_CONTENT_REPUTATION = "domain_or_content_reputation"
    AUTH_FAILURE = "auth_failure"
    POLICY_REJECTION = "policy_rejection"
    RELAY_DENIED = "relay_denied"
    VIRUS_OR_ATTACHMENT = "virus_or_attachment"
    TLS_FAILURE = "tls_failure"
    CONNECTION_FAILURE = "connection_failure"
    DNS_FAILURE = "dns_failure"
    REMOTE_SERVER_ERROR = "remote_server_error"
    PROTOCOL_ERROR = "protocol_error"
    LOCAL_LIMIT = "local_limit"
    LOCAL_DELIVERY_ERROR = "local_delivery_error"
    RETRY_WAIT = "retry_wait"
    EXPIRED = "expired"
    UNKNOWN = "unknown"


@dataclass(slots=True)
class RetryState:
    """Where one recipient stands in Exim's retry schedule (times are epoch seconds, UTC)."""

    attempt: int = 0  # 1-based number of the attempt this event reports; 0 when not an attempt
    first_attempt: float | None = None
    last_attempt: float | None = None
    next_retry: float | None = None  # estimate from the retry rules; None once final
    give_up: float | None = None  # estimate of when Exim stops retrying (expiry)


@dataclass(slots=True)
class DeliveryEvent:
    type: EventType
    server: str
    msgid: str | None
    time: float  # epoch seconds, UTC
    recipient: str | None = None
    original_recipient: str | None = None  # first of all_parents, when the address was redirected
    recipient_domain: str | None = None
    arrival_time: float | None = None
    sender: str | None = None  # envelope sender, "" for bounces (<>)
    sender_domain: str | None = None
    cpanel_user: str | None = None
    auth_id: str | None = None
    client_host: str | None = None
    client_ip: str | None = None
    protocol: str | None = None
    spam_score: float | None = None
    size: int | None = None
    subject: str | None = None
    message_id_header: str | None = None
    router: str | None = None
    transport: str | None = None
    remote_host: str | None = None
    remote_ip: str | None = None
    tls: str | None = None
    response: str | None = None  # remote confirmation (C=) or error text
    smtp_code: int | None = None
    enhanced_code: str | None = None  # RFC 3463, e.g. "5.1.1"
    smtp_phase: str | None = None  # connect, ehlo, starttls, auth, mail, rcpt, data, end_of_data
    exim_errno: int | None = None  # the NN of "defer (NN)"
    reason: Reason | None = None
    hint: str | None = None
    retry: RetryState = field(default_factory=RetryState)
    bounce_msgid: str | None = None  # the bounce message generated for this failure
    parent_msgid: str | None = None  # on a bounce message: the message it reports on
    delivered_to: str | None = None  # the target when it is not the recipient address (file, pipe, local part)
    event_id: str = ""

    def __post_init__(self) -> None:
        if not self.event_id:
            self.event_id = make_event_id(
                self.server, self.msgid, self.recipient, self.type, self.time, self.retry.attempt
            )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["v"] = SCHEMA_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeliveryEvent:
        values: dict[str, Any] = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        values["type"] = EventType(values["type"])
        if values.get("reason") is not None:
            values["reason"] = Reason(values["reason"])
        values["retry"] = RetryState(**(data.get("retry") or {}))
        return cls(**values)


def make_event_id(
    server: str, msgid: str | None, recipient: str | None, kind: str, time: float, attempt: int = 0
) -> str:
    """Deterministic id: the same log line always yields the same event id, so writes are idempotent."""
    raw = "\x1f".join((server, msgid or "", recipient or "", str(kind), f"{time:.6f}", str(attempt)))
    return hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
