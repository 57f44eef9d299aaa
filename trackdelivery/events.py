"""The delivery event model shared by the parser, the processors, the query service and alerting.

One ``DeliveryEvent`` per delivery attempt or outcome for one recipient of one message (a superset of
cPanel's EmailTrack row). SMTP-time rejections have no message id and get an event of their own.
The wire form (Kafka ``exim.delivery.events``, Redis) is ``event.to_dict()`` serialised with orjson;
``SCHEMA_VERSION`` is bumped on any incompatible change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

# typing.TYPE_CHECKING without importing typing, ~3 ms of every `trackdelivery parse` (mypy reads any
# name TYPE_CHECKING as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
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


#: One line per reason that an operator can act on.
REASON_HINTS: Mapping[Reason, str] = MappingProxyType(
    {
        Reason.RECIPIENT_UNKNOWN: (
            "The recipient address does not exist at the receiving server; ask the sender to check the "
            "spelling or get a current address — retrying will not help."
        ),
        Reason.RECIPIENT_DOMAIN_INVALID: (
            "The recipient's domain does not exist or accepts no mail (no MX/A, null MX); check the domain "
            "part for typos or an expired domain."
        ),
        Reason.MAILBOX_INACTIVE: (
            "The recipient's mailbox is disabled, suspended or closed; the sender should contact the "
            "recipient another way and remove the address."
        ),
        Reason.MAILBOX_FULL: (
            "The recipient's mailbox is over quota; ask them to free space — retrying will not help until then."
        ),
        Reason.MESSAGE_TOO_LARGE: (
            "The message exceeds the receiver's size limit; send the attachment as a link or split it, then resend."
        ),
        Reason.GREYLISTED: (
            "The receiver greylisted the first attempt; nothing to do — Exim retries and the next attempt "
            "is normally accepted."
        ),
        Reason.RATE_LIMITED: (
            "The receiver is throttling this server's IP or sender (volume or complaints); slow the sending "
            "rate for that provider and check the account for a spam run."
        ),
        Reason.IP_REPUTATION: (
            "The sending IP is on a block list or has poor reputation; look it up (Spamhaus, provider "
            "postmaster pages), stop the source of spam, request delisting or move the traffic to a clean IP."
        ),
        Reason.DOMAIN_OR_CONTENT_REPUTATION: (
            "The sender domain, its links or the content were judged as spam; check the domain and URLs on "
            "DBL/URIBL, review the message content and the customer's sending practices."
        ),
        Reason.AUTH_FAILURE: (
            "The receiver rejected the sender's authentication; fix SPF, DKIM and DMARC for the sending "
            "domain and the IP's reverse DNS (or the SMTP AUTH credentials for a smarthost)."
        ),
        Reason.POLICY_REJECTION: (
            "The receiver refused the message by local policy; read the response text and the receiver's "
            "postmaster page, or ask the recipient to allow-list the sender."
        ),
        Reason.RELAY_DENIED: (
            "The receiving server will not relay for this sender; check the MX/smarthost routing and that "
            "the client authenticates before sending."
        ),
        Reason.VIRUS_OR_ATTACHMENT: (
            "The message was refused for malware or a forbidden attachment type; scan the sender's device "
            "and send files as links or allowed types."
        ),
        Reason.TLS_FAILURE: (
            "The TLS handshake or certificate check failed, or TLS was required and unavailable; check "
            "the certificates, TLS versions and tls_require_ciphers on both sides."
        ),
        Reason.CONNECTION_FAILURE: (
            "The receiving server could not be reached or dropped the connection; usually transient — if it "
            "persists check outbound port 25 and firewalls, or the remote host is down."
        ),
        Reason.DNS_FAILURE: (
            "A DNS lookup failed temporarily; check this server's resolvers, or the recipient domain's DNS "
            "servers are failing — Exim will retry."
        ),
        Reason.REMOTE_SERVER_ERROR: (
            "The receiving server reported a temporary problem of its own; nothing to fix locally — Exim "
            "retries, contact the remote postmaster if it lasts."
        ),
        Reason.PROTOCOL_ERROR: (
            "The SMTP conversation broke the protocol (syntax, command order, unsupported extension); check "
            "the sending software or the remote server's requirements."
        ),
        Reason.LOCAL_LIMIT: (
            "A sending limit on this server held the message (cPanel max emails per hour, max defers and "
            "failures, Exim ratelimit or a held domain); raise the limit for the account or wait for the reset."
        ),
        Reason.LOCAL_DELIVERY_ERROR: (
            "Delivery on this server failed (Dovecot/LMTP, pipe, file or config expansion error, disk "
            "space); check the mail server's error log and disk."
        ),
        Reason.RETRY_WAIT: (
            "Not a new failure: Exim skipped this address because its retry time has not arrived; see the "
            "previous deferral for the cause."
        ),
        Reason.EXPIRED: (
            "Exim gave up after retrying for the whole retry period; fix the cause of the earlier deferrals, "
            "then ask the sender to resend."
        ),
        Reason.UNKNOWN: (
            "The response did not match a known pattern; read the full response text and the transcript of the message."
        ),
    }
)


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
    import hashlib  # here: OpenSSL's start-up is not part of a run that never makes an id in Python

    raw = "\x1f".join((server, msgid or "", recipient or "", str(kind), f"{time:.6f}", str(attempt)))
    return hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
