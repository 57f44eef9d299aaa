"""Types shared by the Exim line parser and the correlator."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class LineKind(StrEnum):
    ARRIVAL = "arrival"  # <=
    FAKEREJECT = "fakereject"  # (=
    DELIVERY = "delivery"  # =>
    DELIVERY_MORE = "delivery_more"  # ->  (another address in the same transaction)
    CUTTHROUGH = "cutthrough"  # >>  (logged before the <= line)
    SUPPRESSED = "suppressed"  # *>  (-N)
    DEFERRAL = "deferral"  # ==
    FAILURE = "failure"  # **
    COMPLETED = "completed"
    FROZEN = "frozen"
    UNFROZEN = "unfrozen"
    CANCELLED = "cancelled"
    ERROR_IGNORED = "error_ignored"  # "addr: error ignored": a failed bounce that Exim dropped
    HOST_ERROR = "host_error"  # per-host SMTP error / connection failure before a == or ** line
    REJECTION = "rejection"  # SMTP-time ACL rejection (usually no message id)
    SPAM_SCORE = "spam_score"  # cPanel: Warning: "SpamAssassin as ... detected message as [NOT ]spam (n)"
    SENDER_IDENT = "sender_identification"  # cPanel: Sender identification U= D= S=
    CONNECTION_IDENT = "connection_identification"  # cPanel: SMTP connection identification ...
    CONNECTION_OUTBOUND = "connection_outbound"  # cPanel: SMTP connection outbound ...
    CONNECTION = "connection"  # SMTP connection from/closed/lost, no MAIL, timeouts
    PROTOCOL = "protocol"  # syntax / synchronization / TLS errors, incomplete transactions
    QUEUE_RUN = "queue_run"  # Start/End queue run
    ARGUMENTS = "arguments"  # cwd=... N args: ...
    MESSAGE_INFO = "message_info"  # other understood lines about a message (DKIM, spool locked, ...)
    DAEMON = "daemon"  # other understood lines without a message id (daemon start, etc.)
    NOTE = "note"  # well-formed line whose free text we do not interpret (ACL logwrite, add-ons)
    CONTINUATION = "continuation"  # no timestamp: continues the previous line
    UNKNOWN = "unknown"


@dataclass(slots=True)
class ParsedLine:
    """One main-log line taken apart. Every string is untrusted log content, already bounded in size."""

    kind: LineKind
    raw: str  # the line as text (invalid UTF-8 replaced), bounded
    time: float | None = None  # epoch seconds, UTC (local times are read in the parser's default zone)
    msgid: str | None = None
    pid: int | None = None
    # address fields
    address: str | None = None  # recipient on delivery lines; envelope sender on <= ("" for <>)
    parents: list[str] = field(default_factory=list)  # all_parents: "(parent)" and "<orig>" parts
    sender: str | None = None  # F=<...> on delivery/reject lines
    recipients: list[str] = field(default_factory=list)  # "for a b c" on <=; RCPT arg on rejections
    # routing
    router: str | None = None  # R= (router on delivery lines)
    transport: str | None = None  # T= on delivery lines
    bounce_parent: str | None = None  # R= on a <= line: the message this bounce reports on
    # hosts
    host: str | None = None  # H= name (remote on deliveries, client on <= / rejections)
    helo: str | None = None  # H=name (helo)
    host_ip: str | None = None
    host_port: int | None = None
    host_reused: bool = False  # [ip]* : same connection as the previous delivery
    interface_ip: str | None = None  # I=
    # arrival data
    user: str | None = None  # U=
    auth: str | None = None  # A=authenticator:id
    protocol: str | None = None  # P= on <=
    size: int | None = None  # S=
    subject: str | None = None  # T="..." on <= (unescaped)
    message_id_header: str | None = None  # id=
    tls: str | None = None  # X=
    # outcome data
    confirmation: str | None = None  # C="..." (unescaped)
    errno: int | None = None  # defer (NN)
    error: str | None = None  # the error / response text
    smtp_code: int | None = None
    enhanced_code: str | None = None
    smtp_phase: str | None = None  # connect, ehlo, starttls, auth, mail, rcpt, data, end_of_data
    # cPanel lines
    spam_score: float | None = None
    is_spam: bool | None = None
    cpanel_domain: str | None = None  # Sender identification D=
    # everything else: the reason for UNKNOWN, the kind detail for other kinds (e.g. "closed by QUIT")
    detail: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # other tagged fields (DT=, QT=, CV=, DKIM=, ...)
