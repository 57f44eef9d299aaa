"""Responses the generator writes, each labelled with the reason a classifier should give it.

``RESPONSES`` rows keep the response both as a ``template`` (placeholders such as ``{ip}``, ``{rcpt}``,
``{sender}``, ``{domain}``, ``{sdomain}``, ``{gid}``, ``{mxid}``, ``{client}``, ``{client_ip}``,
``{n}``, ``{limit}``, ``{pct}``, ``{when}``) and rendered with fixed example values as ``text``, which
is how the text appears in a log (multi-line SMTP replies joined with a literal ``\\n``).

``kind`` says which log text surrounds it: ``smtp`` (a remote reply, logged as "SMTP error from remote
mail server after <phase>: <text>"), ``lmtp`` (local Dovecot LMTP reply), ``connection`` (OS error of
a connection attempt), ``routing`` (router message, no remote host), ``local_limit`` (cPanel send
limit), ``retry_wait`` (-54 lines), ``expiry`` (Exim gave up) and ``rejection`` (our own ACL's
message on an SMTP-time rejection line).
"""

from __future__ import annotations

from dataclasses import dataclass

from trackdelivery.events import Reason

EXAMPLE_VALUES: dict[str, str] = {
    "ip": "198.51.100.10",
    "rcpt": "bob@example.net",
    "sender": "alice@example.com",
    "domain": "example.net",
    "sdomain": "example.com",
    "gid": "d9443c01a7336-1e0bf2a5c41si1234567ad.123",
    "mxid": "AM4PEPF00027A5F.eurprd04.prod.outlook.com 2025-03-14T10:22:41.123Z 08DC43A1B2C3D4E5",
    "client": "(ylmf-pc) [185.220.101.4]:61234",
    "client_ip": "185.220.101.4",
    "n": "512",
    "limit": "500",
    "pct": "102",
    "when": "2025-03-14 10:22:41",
}


@dataclass(frozen=True, slots=True)
class Response:
    key: str
    template: str
    text: str
    smtp_code: int | None
    enhanced_code: str | None
    phase: str | None  # connect, ehlo, starttls, auth, mail, rcpt, data, end_of_data; None if not SMTP
    reason: Reason
    permanent: bool
    provider: str  # gmail, yahoo, microsoft, generic, local
    kind: str
    errno: int | None  # Exim's "defer (NN)" for a temporary failure of this response

    def render(self, values: dict[str, str]) -> str:
        return self.template.format_map(values)


def _row(
    key: str,
    template: str,
    smtp_code: int | None,
    enhanced_code: str | None,
    phase: str | None,
    reason: Reason,
    *,
    provider: str = "generic",
    kind: str = "smtp",
    errno: int | None = None,
) -> Response:
    if kind in ("expiry", "routing", "rejection"):
        permanent = True
    elif kind in ("smtp", "lmtp"):
        permanent = smtp_code is not None and smtp_code >= 500
    else:  # connection, dns, local_limit, retry_wait
        permanent = False
    if errno is None and not permanent:
        errno = {"mail": -45, "rcpt": -44, "data": -46, "end_of_data": -46}.get(phase or "", -1)
    return Response(
        key=key,
        template=template,
        text=template.format_map(EXAMPLE_VALUES),
        smtp_code=smtp_code,
        enhanced_code=enhanced_code,
        phase=phase,
        reason=reason,
        permanent=permanent,
        provider=provider,
        kind=kind,
        errno=None if permanent else errno,
    )


_GMAIL_TAIL = " {gid} - gsmtp"

RESPONSES: tuple[Response, ...] = (
    # --- Gmail -------------------------------------------------------------------------------------
    _row(
        "gmail_unknown_user",
        "550-5.1.1 The email account that you tried to reach does not exist. Please try\\n"
        "550-5.1.1 double-checking the recipient's email address for typos or\\n"
        "550-5.1.1 unnecessary spaces. For more information, go to\\n"
        "550 5.1.1  https://support.google.com/mail/?p=NoSuchUser" + _GMAIL_TAIL,
        550,
        "5.1.1",
        "rcpt",
        Reason.RECIPIENT_UNKNOWN,
        provider="gmail",
    ),
    _row(
        "gmail_rate_limited",
        "421-4.7.28 [{ip}      15] Our system has detected an unusual rate of\\n"
        "421-4.7.28 unsolicited mail originating from your IP address. To protect our\\n"
        "421-4.7.28 users from spam, mail sent from your IP address has been temporarily\\n"
        "421-4.7.28 rate limited. For more information, go to\\n"
        "421-4.7.28  https://support.google.com/mail/?p=UnsolicitedRateLimitError to\\n"
        "421 4.7.28 review our Bulk Email Senders Guidelines." + _GMAIL_TAIL,
        421,
        "4.7.28",
        "end_of_data",
        Reason.RATE_LIMITED,
        provider="gmail",
    ),
    _row(
        "gmail_dmarc",
        "550-5.7.26 Unauthenticated email from {sdomain} is not accepted due to domain's\\n"
        "550-5.7.26 DMARC policy. Please contact the administrator of {sdomain} domain if\\n"
        "550-5.7.26 this was a legitimate mail. To learn about the DMARC initiative, go to\\n"
        "550 5.7.26  https://support.google.com/mail/?p=DmarcRejection" + _GMAIL_TAIL,
        550,
        "5.7.26",
        "end_of_data",
        Reason.AUTH_FAILURE,
        provider="gmail",
    ),
    _row(
        "gmail_unauthenticated",
        "550-5.7.26 This mail has been blocked because the sender is unauthenticated.\\n"
        "550-5.7.26 Gmail requires all senders to authenticate with either SPF or DKIM.\\n"
        "550-5.7.26 \\n"
        "550-5.7.26  Authentication results:\\n"
        "550-5.7.26  DKIM = did not pass\\n"
        "550-5.7.26  SPF [{sdomain}] with ip: [{ip}] = did not pass\\n"
        "550-5.7.26 \\n"
        "550-5.7.26  For instructions on setting up authentication, go to\\n"
        "550 5.7.26  https://support.google.com/mail/answer/81126#authentication" + _GMAIL_TAIL,
        550,
        "5.7.26",
        "end_of_data",
        Reason.AUTH_FAILURE,
        provider="gmail",
    ),
    _row(
        "gmail_mailbox_full",
        "452-4.2.2 The recipient's inbox is out of storage space. Please direct the\\n"
        "452-4.2.2 recipient to\\n"
        "452 4.2.2  https://support.google.com/mail/?p=OverQuotaTemp" + _GMAIL_TAIL,
        452,
        "4.2.2",
        "rcpt",
        Reason.MAILBOX_FULL,
        provider="gmail",
    ),
    _row(
        "gmail_spam_content",
        "550-5.7.1 [{ip}      12] Gmail has detected that this message is likely\\n"
        "550-5.7.1 unsolicited mail. To reduce the amount of spam sent to Gmail, this\\n"
        "550-5.7.1 message has been blocked. For more information, go to\\n"
        "550 5.7.1  https://support.google.com/mail/?p=UnsolicitedMessageError" + _GMAIL_TAIL,
        550,
        "5.7.1",
        "end_of_data",
        Reason.DOMAIN_OR_CONTENT_REPUTATION,
        provider="gmail",
    ),
    _row(
        "gmail_low_domain_reputation",
        "421-4.7.0 This message is suspicious due to the very low reputation of the\\n"
        "421-4.7.0 sending domain. To best protect our users from spam, the message has\\n"
        "421-4.7.0 been blocked. For more information, go to\\n"
        "421 4.7.0  https://support.google.com/mail/?p=UnsolicitedMessageError" + _GMAIL_TAIL,
        421,
        "4.7.0",
        "end_of_data",
        Reason.DOMAIN_OR_CONTENT_REPUTATION,
        provider="gmail",
    ),
    _row(
        "gmail_too_large",
        "552-5.3.4 Your message exceeded Google's message size limits. For more\\n"
        "552-5.3.4 information, go to\\n"
        "552 5.3.4  https://support.google.com/mail/?p=MaxSizeError" + _GMAIL_TAIL,
        552,
        "5.3.4",
        "mail",
        Reason.MESSAGE_TOO_LARGE,
        provider="gmail",
    ),
    _row(
        "gmail_receiving_rate",
        "450-4.2.1 The user you are trying to contact is receiving mail at a rate that\\n"
        "450-4.2.1 prevents additional messages from being delivered. Please resend your\\n"
        "450-4.2.1 message at a later point. If the user is able to receive mail at that\\n"
        "450-4.2.1 time, your message will be delivered. For more information, go to\\n"
        "450 4.2.1  https://support.google.com/mail/?p=ReceivingRate" + _GMAIL_TAIL,
        450,
        "4.2.1",
        "rcpt",
        Reason.RATE_LIMITED,
        provider="gmail",
    ),
    # --- Yahoo / AOL -------------------------------------------------------------------------------
    _row(
        "yahoo_tss04",
        "421 4.7.0 [TSS04] Messages from {ip} temporarily deferred due to unexpected volume or user "
        "complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
        421,
        "4.7.0",
        "mail",
        Reason.RATE_LIMITED,
        provider="yahoo",
    ),
    _row(
        "yahoo_unknown_user",
        "554 delivery error: dd This user doesn't have a yahoo.com account ({rcpt}) [0] - mta4471.mail.gq1.yahoo.com",
        554,
        None,
        "end_of_data",
        Reason.RECIPIENT_UNKNOWN,
        provider="yahoo",
    ),
    _row(
        "yahoo_disabled",
        "554 delivery error: dd Sorry your message to {rcpt} cannot be delivered. This mailbox is "
        "disabled (554.30). - mta4212.mail.bf1.yahoo.com",
        554,
        None,
        "end_of_data",
        Reason.MAILBOX_INACTIVE,
        provider="yahoo",
    ),
    _row(
        "yahoo_tss09",
        "553 5.7.2 [TSS09] All messages from {ip} will be permanently deferred; Retrying will NOT "
        "succeed. See https://postmaster.yahooinc.com/error-codes",
        553,
        "5.7.2",
        "mail",
        Reason.IP_REPUTATION,
        provider="yahoo",
    ),
    # --- Microsoft ---------------------------------------------------------------------------------
    _row(
        "microsoft_s3150",
        "550 5.7.1 Unfortunately, messages from [{ip}] weren't sent. Please contact your Internet "
        "service provider since part of their network is on our block list (S3150). You can also "
        "refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors. [{mxid}]",
        550,
        "5.7.1",
        "mail",
        Reason.IP_REPUTATION,
        provider="microsoft",
    ),
    _row(
        "microsoft_unknown_user",
        "550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302). [{mxid}]",
        550,
        "5.5.0",
        "rcpt",
        Reason.RECIPIENT_UNKNOWN,
        provider="microsoft",
    ),
    _row(
        "microsoft_rate_limited",
        "451 4.7.650 The mail server [{ip}] has been temporarily rate limited due to IP reputation. "
        "For e-mail delivery information, see https://postmaster.live.com (S775) [{mxid}]",
        451,
        "4.7.650",
        "mail",
        Reason.RATE_LIMITED,
        provider="microsoft",
    ),
    _row(
        "microsoft_auth_level",
        "550 5.7.515 Access denied, sending domain {sdomain} doesn't meet the required "
        "authentication level. The sender's domain in the 5322.From address doesn't meet the "
        "authentication requirements defined for the sender. To learn more, see "
        "https://go.microsoft.com/fwlink/?linkid=2290553 [{mxid}]",
        550,
        "5.7.515",
        "end_of_data",
        Reason.AUTH_FAILURE,
        provider="microsoft",
    ),
    # --- any other mail server ---------------------------------------------------------------------
    _row(
        "greylist_4_7_1",
        "451 4.7.1 Greylisting in action, please come back later",
        451,
        "4.7.1",
        "rcpt",
        Reason.GREYLISTED,
    ),
    _row(
        "greylist_postgrey",
        "450 4.2.0 <{rcpt}>: Recipient address rejected: Greylisted, see "
        "http://postgrey.schweikert.ch/help/{domain}.html",
        450,
        "4.2.0",
        "rcpt",
        Reason.GREYLISTED,
    ),
    _row(
        "postfix_unknown_user",
        "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table",
        550,
        "5.1.1",
        "rcpt",
        Reason.RECIPIENT_UNKNOWN,
    ),
    _row("cpanel_remote_no_such_user", "550 No Such User Here", 550, None, "rcpt", Reason.RECIPIENT_UNKNOWN),
    _row(
        "remote_mailbox_full_perm",
        "552 5.2.2 <{rcpt}>: Recipient address rejected: Mailbox is full",
        552,
        "5.2.2",
        "rcpt",
        Reason.MAILBOX_FULL,
    ),
    _row(
        "remote_mailbox_full_temp",
        "452 4.2.2 <{rcpt}> Mailbox is full / Blocks limit exceeded",
        452,
        "4.2.2",
        "rcpt",
        Reason.MAILBOX_FULL,
    ),
    _row(
        "remote_spamhaus",
        "554 5.7.1 Service unavailable; Client host [{ip}] blocked using zen.spamhaus.org; "
        "https://www.spamhaus.org/query/ip/{ip}",
        554,
        "5.7.1",
        "rcpt",
        Reason.IP_REPUTATION,
    ),
    _row("remote_relay_denied", "554 5.7.1 <{rcpt}>: Relay access denied", 554, "5.7.1", "rcpt", Reason.RELAY_DENIED),
    _row(
        "remote_too_large",
        "552 5.3.4 Message size exceeds fixed limit",
        552,
        "5.3.4",
        "end_of_data",
        Reason.MESSAGE_TOO_LARGE,
    ),
    _row(
        "remote_spam_content",
        "550 5.7.1 Message rejected as spam by Content Filtering.",
        550,
        "5.7.1",
        "end_of_data",
        Reason.DOMAIN_OR_CONTENT_REPUTATION,
    ),
    _row(
        "remote_virus",
        "554 5.7.0 Reject, id=12345-06 - INFECTED: Eicar-Signature",
        554,
        "5.7.0",
        "end_of_data",
        Reason.VIRUS_OR_ATTACHMENT,
    ),
    _row(
        "remote_busy",
        "421 4.3.2 Service not available, closing transmission channel",
        421,
        "4.3.2",
        "connect",
        Reason.REMOTE_SERVER_ERROR,
    ),
    _row(
        "remote_queue_error",
        "451 4.3.0 Error: queue file write error",
        451,
        "4.3.0",
        "end_of_data",
        Reason.REMOTE_SERVER_ERROR,
    ),
    _row(
        "remote_too_many_connections",
        "421 4.7.0 Too many concurrent SMTP connections; please try again later.",
        421,
        "4.7.0",
        "connect",
        Reason.RATE_LIMITED,
    ),
    # --- connection and routing --------------------------------------------------------------------
    _row(
        "connection_timed_out",
        "Connection timed out",
        None,
        None,
        "connect",
        Reason.CONNECTION_FAILURE,
        kind="connection",
        errno=110,
    ),
    _row(
        "connection_refused",
        "Connection refused",
        None,
        None,
        "connect",
        Reason.CONNECTION_FAILURE,
        kind="connection",
        errno=111,
    ),
    _row(
        "no_route_to_host",
        "No route to host",
        None,
        None,
        "connect",
        Reason.CONNECTION_FAILURE,
        kind="connection",
        errno=113,
    ),
    _row("dns_defer", "host lookup did not complete", None, None, None, Reason.DNS_FAILURE, kind="dns", errno=-1),
    _row("unrouteable", "Unrouteable address", None, None, None, Reason.RECIPIENT_DOMAIN_INVALID, kind="routing"),
    # --- this server -------------------------------------------------------------------------------
    _row(
        "local_no_such_user",
        "No Such User Here",
        None,
        None,
        None,
        Reason.RECIPIENT_UNKNOWN,
        provider="local",
        kind="routing",
    ),
    _row(
        "local_quota",
        "552 5.2.2 <{rcpt}> Quota exceeded (mailbox for user is full)",
        552,
        "5.2.2",
        "rcpt",
        Reason.MAILBOX_FULL,
        provider="local",
        kind="lmtp",
    ),
    _row(
        "cpanel_max_emails_per_hour",
        "Domain {sdomain} has exceeded the max emails per hour ({n}/{limit} ({pct}%)) allowed.  "
        "Message will be reattempted later",
        None,
        None,
        None,
        Reason.LOCAL_LIMIT,
        provider="local",
        kind="local_limit",
        errno=-1,
    ),
    _row(
        "retry_not_reached",
        "retry time not reached for any host for '{domain}'",
        None,
        None,
        None,
        Reason.RETRY_WAIT,
        kind="retry_wait",
        errno=-54,
    ),
    _row("retry_timeout_exceeded", "retry timeout exceeded", None, None, None, Reason.EXPIRED, kind="expiry"),
    _row(
        "all_hosts_failing",
        "all hosts for '{domain}' have been failing for a long time (and retry time not reached)",
        None,
        None,
        None,
        Reason.EXPIRED,
        kind="expiry",
    ),
    # --- our own ACL rejections (SMTP time) -------------------------------------------------------
    _row(
        "reject_rbl_spamhaus",
        "JunkMail rejected - {client} is in an RBL: https://www.spamhaus.org/query/ip/{client_ip}",
        550,
        None,
        "rcpt",
        Reason.IP_REPUTATION,
        provider="local",
        kind="rejection",
    ),
    _row(
        "reject_rbl_spamcop",
        "JunkMail rejected - {client} is in an RBL: Blocked - see https://www.spamcop.net/bl.shtml?{client_ip}",
        550,
        None,
        "rcpt",
        Reason.IP_REPUTATION,
        provider="local",
        kind="rejection",
    ),
    _row(
        "reject_no_such_user",
        "No Such User Here",
        550,
        None,
        "rcpt",
        Reason.RECIPIENT_UNKNOWN,
        provider="local",
        kind="rejection",
    ),
    _row(
        "reject_relay",
        "relay not permitted",
        550,
        None,
        "rcpt",
        Reason.RELAY_DENIED,
        provider="local",
        kind="rejection",
    ),
    _row(
        "reject_sender_verify",
        "Sender verify failed",
        550,
        None,
        "rcpt",
        Reason.POLICY_REJECTION,
        provider="local",
        kind="rejection",
    ),
    _row(
        "reject_unrouteable",
        "Unrouteable address",
        550,
        None,
        "rcpt",
        Reason.RECIPIENT_DOMAIN_INVALID,
        provider="local",
        kind="rejection",
    ),
)

BY_KEY: dict[str, Response] = {row.key: row for row in RESPONSES}
if len(BY_KEY) != len(RESPONSES):  # pragma: no cover - guards the table while it is edited
    raise RuntimeError("duplicate response key")
