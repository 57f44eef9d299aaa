"""Why a delivery was deferred, bounced or rejected: rule-based classification of Exim error texts.

``RULES`` is data: rows evaluated first-match in order, from specific (Exim's own lifecycle texts,
limits of this server, provider texts) to generic (RFC 3463 enhanced code, basic SMTP code + phase,
weak words such as "rejected", Exim errno), ending in ``Reason.UNKNOWN``. ``classify`` is a pure
function of its arguments.

Text patterns are written in lower case and run on the lower-cased text (the same as IGNORECASE, but
sre keeps its fast literal-prefix scan); every alternative starts at a word boundary with literal text,
from which a trigger word is taken. A call tokenises the text once and runs only the regexes whose
trigger word is present, so its cost does not grow with the table (see ``trigger_word``).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from trackdelivery.events import REASON_HINTS, Reason

__all__ = [
    "HINTS",
    "KINDS",
    "PHASES",
    "RULES",
    "Classification",
    "Rule",
    "classify",
    "parse_codes",
]

#: The part of a text that is scanned: enough for any real SMTP response.
MAX_SCAN = 2048
_DIRECT_RULES = 4

KINDS = frozenset({"defer", "fail", "reject"})
PHASES = frozenset({"connect", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "end_of_data"})

HINTS: Mapping[Reason, str] = REASON_HINTS


@dataclass(frozen=True, slots=True)
class Classification:
    reason: Reason
    hint: str
    rule: str  # name of the rule that matched, for audit ("unknown" when none did)


EnhancedPattern = tuple[int | None, ...]  # e.g. (5, 1, 1); None matches any component; shorter = prefix


class RulePattern:
    """A rule's regular expression, compiled on first use: the classifier matches the alternatives of
    the source one by one, and a process that hands the table to the native classifier compiles none."""

    __slots__ = ("_compiled", "flags", "pattern")

    def __init__(self, pattern: str, flags: int) -> None:
        self.pattern = pattern
        self.flags = flags
        self._compiled: re.Pattern[str] | None = None

    def compiled(self) -> re.Pattern[str]:
        if self._compiled is None:
            self._compiled = re.compile(self.pattern, self.flags)
        return self._compiled

    def search(self, text: str) -> re.Match[str] | None:
        return self.compiled().search(text)


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the table. Every condition that is set must hold; unset conditions match anything."""

    name: str
    reason: Reason
    pattern: RulePattern | None = None  # on the lower-cased text; see the module docstring
    code_classes: frozenset[int] = frozenset()  # 4, 5 (from the basic code, else the enhanced code)
    codes: frozenset[int] = frozenset()  # exact basic SMTP codes
    enhanced: tuple[EnhancedPattern, ...] = ()  # any of these
    errnos: frozenset[int] = frozenset()
    phases: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()
    without_code: bool = False  # only when there is no SMTP reply code: a text of this server's own


def _enhanced_pattern(spec: str) -> EnhancedPattern:
    return tuple(None if part in ("*", "x") else int(part) for part in spec.split("."))


def _rule(
    name: str,
    reason: Reason,
    text: str | Iterable[str] | None = None,
    *,
    code_classes: Iterable[int] = (),
    codes: Iterable[int] = (),
    enhanced: Iterable[str] = (),
    errnos: Iterable[int] = (),
    phases: Iterable[str] = (),
    kinds: Iterable[str] = (),
    without_code: bool = False,
) -> Rule:
    pattern = None
    if text is not None:
        source = text if isinstance(text, str) else "|".join(text)
        pattern = RulePattern(r"\b(?:" + source + ")", re.ASCII)
    return Rule(
        name=name,
        reason=reason,
        pattern=pattern,
        code_classes=frozenset(code_classes),
        codes=frozenset(codes),
        enhanced=tuple(_enhanced_pattern(e) for e in enhanced),
        errnos=frozenset(errnos),
        phases=frozenset(phases),
        kinds=frozenset(kinds),
        without_code=without_code,
    )


def _each(words: str, tail: str) -> list[str]:
    """``_each("user mailbox", " not found")`` → one alternative per word (each starts with a literal)."""
    return [word + tail for word in words.split()]


_R = Reason
_LOCAL_ERRNOS = (*range(-17, -1), -20, -21, *range(-31, -23), -33, -34, -39, -40, -50, -51)
_CONNECTION_ERRNOS = (-18, -43, -47, 32, 99, 100, 101, 103, 104, 110, 111, 112, 113)
_RECIPIENT_NOUNS = "user mailbox recipient address account addressee"

RULES: tuple[Rule, ...] = (
    # -- Exim's own lifecycle texts: they wrap whatever error came before, so they go first ----------
    _rule("exim_retry_timeout", _R.EXPIRED, r"retry timeout exceeded|been failing for a long time"),
    _rule(
        "remote_expired",
        _R.EXPIRED,
        r"delivery (?:time )?expired|message expired|message too old|expired in queue",
    ),
    _rule("exim_retry_not_due_errno", _R.RETRY_WAIT, errnos=(-52, -53, -54)),
    _rule(
        "exim_retry_not_due",
        _R.RETRY_WAIT,
        r"retry time not (?:yet )?reached|reusing smtp connection skips previous routing defer",
    ),
    _rule("exim_queued_only_errno", _R.RETRY_WAIT, errnos=(-55, -56)),
    _rule(
        "exim_queued_only",
        _R.RETRY_WAIT,
        r"first-pass only routing|explicitly queued|domain is in queue_domains",
    ),
    # -- limits of this server ------------------------------------------------------------------------
    _rule(
        "cpanel_send_limit",
        _R.LOCAL_LIMIT,
        [
            r"has exceeded the max",
            r"max defers and failures",
            r"max emails per hour",
            r"daily email notify limit",
            r"hit daily email",
            r"outgoing (?:mail|email) from .{1,120}? has been (?:suspended|held|blocked)",
            r"outgoing (?:mail|email) (?:is |has been )?(?:suspended|held)",
        ],
    ),
    _rule("exim_held_or_concurrency_errno", _R.LOCAL_LIMIT, errnos=(-23, -57)),
    _rule(
        "exim_held_or_concurrency",
        _R.LOCAL_LIMIT,
        r"concurrency limit reached|domain is held|transport concurrency",
    ),
    _rule(
        "local_ratelimit_reject",
        _R.LOCAL_LIMIT,
        [
            r"rate ?limit",
            r"ratelimit",
            r"overlimit",
            r"sender rate",
            r"too many (?:connections|messages|recipients|emails|mails)",
            r"exceeded (?:the )?(?:sending )?(?:rate|limit)",
        ],
        kinds=("reject",),
    ),
    # -- delivery on this server (unambiguous texts and errnos) ----------------------------------------
    _rule(
        "local_disk_full",
        _R.LOCAL_DELIVERY_ERROR,
        r"no space left|disk (?:is )?full|file ?system (?:is )?full",
        without_code=True,
    ),
    _rule("exim_quota_errno", _R.MAILBOX_FULL, errnos=(-22,)),
    _rule(
        "local_mailbox_full",
        _R.MAILBOX_FULL,
        r"blocks limit exceeded|inode limit exceeded|disk quota exceeded|mta-imposed",
    ),
    _rule("exim_local_errno", _R.LOCAL_DELIVERY_ERROR, errnos=_LOCAL_ERRNOS),
    _rule(
        "local_transport_failure",
        _R.LOCAL_DELIVERY_ERROR,
        [
            r"child process of",
            r"failed to (?:expand|write|open|create|lock|lstat|stat|rename|get)",
            r"unable to (?:write|open|create|lock)",
            r"write (?:error|failed|incomplete)",
            r"transport not found",
            r"not a regular file",
            r"permission denied",
            r"mailbox file format",
            r"no such file or directory",
            r"lmtp (?:timeout|connection)",
            r"lock (?:timeout|failed|file)",
            r"expansion of .{1,120}? failed",
            r"home directory .{1,120}? failed",
        ],
        without_code=True,
    ),
    _rule("greylisting", _R.GREYLISTED, r"greylist|graylist|grey-list|gray-list|grey list|gray list"),
    # -- provider responses -------------------------------------------------------------------------
    _rule(
        "gmail_unsolicited_rate_permanent",
        _R.IP_REPUTATION,
        r"unusual rate of unsolicited",
        code_classes=(5,),
    ),
    _rule(
        "provider_rate_limit",
        _R.RATE_LIMITED,
        [
            r"unusual rate of unsolicited",
            r"temporarily rate limited",
            r"receiving mail at a rate",
            r"rate that prevents additional",
            r"try again later, closing connection",
        ],
    ),
    _rule(
        "yahoo_permanent_block",
        _R.IP_REPUTATION,
        r"ts03\b|tss09\b|bl2\d|permanently deferred|retrying will not succeed",
    ),
    _rule(
        "yahoo_deferral",
        _R.RATE_LIMITED,
        r"ts0[12]|tss0[4-8]|temporarily deferred due to|unexpected volume|user complaints",
    ),
    _rule(
        "microsoft_ip_block",
        _R.IP_REPUTATION,
        [
            r"s3150\b",
            r"s3140\b",
            r"s311[0-9]",
            r"sc-00\d",
            r"dy-00\d",
            r"ou-00\d",
            r"banned sending ip",
            r"traffic not accepted from this ip",
            r"on our block ?list",
        ],
    ),
    _rule(
        "microsoft_directory_reject",
        _R.RECIPIENT_UNKNOWN,
        r"recipient address rejected: access denied",
    ),
    _rule(
        "sending_quota",
        _R.RATE_LIMITED,
        r"sending (?:quota|limit)|daily (?:user )?sending|quota for sending",
    ),
    # -- reputation ------------------------------------------------------------------------------------
    _rule(
        "domain_blocklist",
        _R.DOMAIN_OR_CONTENT_REPUTATION,
        [
            r"dbl\b",
            r"uribl\b",
            r"surbl\b",
            r"ivmuri",
            r"domain (?:is )?(?:black|block)[- ]?listed",
            r"sender domain (?:is )?listed",
            r"url (?:is )?(?:black|block)[- ]?listed",
            r"blacklisted (?:url|domain|link)",
            r"reputation of the sending domain",
            r"sending domain(?:'s)? reputation",
            r"domain reputation",
        ],
    ),
    _rule(
        "ip_blocklist",
        _R.IP_REPUTATION,
        [
            r"spamhaus\b",
            r"barracuda",
            r"spamcop\b",
            r"sorbs\b",
            r"blocked using",
            r"listed (?:at|on|in|by)",
            r"is listed",
            r"are listed",
            r"blacklist",
            r"blocklist",
            r"black list",
            r"block list",
            r"rbl\b",
            r"dnsbl\b",
            r"psbl\b",
            r"uceprotect\b",
            r"mailspike\b",
            r"abuseat\b",
            r"cbl\b",
            r"spamrats\b",
            r"invaluement\b",
            r"junkmail rejected",
            r"client host .{1,80}? blocked",
        ],
    ),
    _rule(
        "ip_reputation_text",
        _R.IP_REPUTATION,
        [
            r"reputation of the sending ip",
            r"ip reputation",
            r"poor reputation",
            r"low reputation",
            r"bad reputation",
            r"sender reputation",
            r"not authorized to send email directly",
            r"dynamic ip",
            r"residential ip",
            r"dial-?up",
            *_each(
                "sender client your sending source this",
                r" ip (?:address )?(?:is |has been )?(?:blocked|banned|blacklisted|blocklisted|rejected)",
            ),
        ],
    ),
    # -- authentication (SPF / DKIM / DMARC / PTR / SMTP AUTH) ------------------------------------------
    _rule(
        "authentication",
        _R.AUTH_FAILURE,
        [
            r"sender is unauthenticated",
            r"unauthenticated (?:email|mail|message|sender)",
            r"authentication information",
            r"fails? to pass authentication",
            r"authentication checks",
            r"required authentication level",
            r"sender(?:'s)? domain has a null mx",
            r"dmarc\b",
            r"spf\b",
            r"dkim\b",
            r"sender policy framework",
            r"domainkeys\b",
            r"reverse dns",
            r"reverse (?:lookup|mapping|hostname)",
            r"ptr (?:record|lookup)",
            r"no ptr",
            r"rdns\b",
            r"cannot find your (?:reverse )?hostname",
            r"incorrect authentication data",
            r"authentication (?:required|failed|failure|credentials|attempt)",
            r"invalid credentials",
            r"auth failed",
        ],
    ),
    _rule(
        "sender_verify",
        _R.POLICY_REJECTION,
        [
            r"sender verify (?:fail|defer)",
            r"sender verification failed",
            r"sender address verification",
            r"sender address rejected",
            r"sender rejected",
            r"sender (?:domain|address) (?:not found|does not exist|unknown|must exist)",
        ],
    ),
    # -- recipient and mailbox ------------------------------------------------------------------------------
    _rule(
        "mailbox_inactive",
        _R.MAILBOX_INACTIVE,
        [
            r"overquotaperm\b",
            r"554\.30",
            r"disableduser\b",
            *_each(
                "mailbox account user recipient",
                r" (?:is |has been )?(?:disabled|inactive|suspended|deactivated|frozen|closed|expired|terminated)",
            ),
            *_each("disabled inactive suspended deactivated closed", r" (?:account|mailbox|user|recipient)"),
            r"account is not active",
            r"due to inactivity",
            r"no longer (?:active|in use|valid|available)",
        ],
    ),
    _rule(
        "remote_system_storage",
        _R.REMOTE_SERVER_ERROR,
        r"insufficient system storage|system storage|system (?:is )?full",
    ),
    _rule(
        "mailbox_full",
        _R.MAILBOX_FULL,
        [
            r"mailbox (?:is )?full",
            r"full mailbox",
            r"inbox is full",
            r"over ?quota",
            r"quota",
            r"out of storage",
            r"exceeded (?:the |their |his |her |its )?(?:storage|quota)",
            r"exceeds? (?:the |their |its )?(?:storage|quota)",
            r"exceeded storage allocation",
            r"storage (?:space )?(?:exceeded|allocation|limit)",
            r"mailbox size limit",
            r"mailbox has exceeded",
            r"mailbox is over",
            r"user is over",
            r"insufficient (?:disk )?space",
            r"not enough (?:storage|space)",
        ],
    ),
    _rule(
        "message_too_large",
        _R.MESSAGE_TOO_LARGE,
        [
            r"message (?:is )?too (?:big|large)",
            r"too (?:big|large)",
            r"message size",
            r"mail size",
            r"size limit",
            r"size (?:limit )?exceeded",
            r"maximum (?:allowed )?(?:message )?size",
            r"exceeds? (?:the )?(?:maximum |max |fixed )?(?:allowed )?(?:message )?size",
            r"message length exceeds",
            r"message exceeded",
            r"size=\d{1,20} max=",
            r"maxsizeerror\b",
        ],
    ),
    _rule(
        "virus_or_attachment",
        _R.VIRUS_OR_ATTACHMENT,
        [
            r"virus",
            r"malware",
            r"infected",
            r"trojan",
            r"worm\b",
            r"clamav\b",
            r"attachment",
            r"banned (?:file|attachment|extension|content)",
            r"prohibited (?:file|attachment|extension|content)",
            r"executable",
            r"potential security issue",
            r"security risk",
            r"dangerous (?:content|file|attachment)",
            r"blocked file",
        ],
    ),
    _rule(
        "content_spam",
        _R.DOMAIN_OR_CONTENT_REPUTATION,
        [
            r"nature of the content",
            r"content and/or the links",
            r"likely unsolicited",
            r"appears to be (?:spam|unsolicited|junk)",
            r"unsolicited (?:bulk|content)",
            r"spamassassin\b",
            r"spam (?:content|message|detected|score|filter|policy)",
            r"scored .{1,30}? points?",
            r"high probability of spam",
            *_each("detected identified classified rejected flagged considered", r" as (?:spam|junk|bulk)"),
            r"message (?:was |is )?(?:rejected|blocked|refused) (?:as|because of|due to) (?:spam|junk|content)",
            r"content (?:rejected|filter|policy|not accepted)",
            r"phish",
            r"suspicious (?:content|link|url)",
        ],
    ),
    _rule(
        "relay_denied",
        _R.RELAY_DENIED,
        [
            r"relay(?:ing)? (?:access )?(?:not permitted|denied|not allowed|prohibited|refused|not authori[sz]ed)",
            r"relaying (?:mail )?to .{1,120}? (?:not allowed|denied)",
            r"relay attempt",
            r"not permitted to relay",
            r"not allowed to relay",
            r"unable to relay",
            r"cannot relay",
            r"can't relay",
            r"do not relay",
            r"no relaying",
            r"relay not permitted",
            r"relay access denied",
        ],
    ),
    _rule(
        "dns_temporary",
        _R.DNS_FAILURE,
        [
            r"host lookup did not complete",
            r"lookup did not complete",
            r"temporary (?:dns|lookup|name resolution|name service) (?:failure|error|problem)",
            r"temporary failure in name resolution",
            r"dns (?:timeout|temporary|servfail|error|temporarily|lookup (?:timed out|timeout|error))",
            r"servfail\b",
            r"name server timeout",
            r"tlsa lookup defer",
        ],
    ),
    _rule(
        "recipient_domain_invalid",
        _R.RECIPIENT_DOMAIN_INVALID,
        [
            r"unknown mail domain",
            r"unrouteable mail domain",
            # Exim: no router accepted the address. On cPanel an unknown local user gets "No Such User
            # Here", so this is nearly always a domain without usable MX/A records.
            r"unrouteable address",
            r"no such domain",
            r"domain (?:name )?(?:not found|does not exist|doesn't exist|is not valid|not valid|invalid)",
            r"domain (?:is )?not (?:found|configured|served|hosted)",
            r"host (?:or domain name )?not found",
            r"nxdomain\b",
            r"host lookup failed",
            r"all relevant mx records point to non-existent hosts",
            r"null mx",
            r"does not accept mail",
            r"domain has no (?:mx|valid)",
            r"no mx (?:record|host|for)",
            r"mx lookup failed",
            r"unknown domain",
            r"invalid domain",
            r"unresolvable\b",
            r"non-existent (?:domain|host)",
            r"name service error",
        ],
    ),
    _rule(
        "recipient_unknown",
        _R.RECIPIENT_UNKNOWN,
        [
            r"user unknown",
            r"unknown user",
            r"no such (?:user|recipient|mailbox|person|account|address|local user)",
            *_each(_RECIPIENT_NOUNS, r" (?:is )?(?:unknown|not found|does not exist|doesn't exist|not exist)"),
            *_each(_RECIPIENT_NOUNS, r" (?:that )?you tried to reach (?:does not|doesn't) exist"),
            r"does not exist",
            r"doesn't exist",
            r"invalid (?:recipient|mailbox|address|user)",
            r"unknown (?:recipient|local[- ]?part|mailbox|address|alias)",
            r"mailbox (?:not found|unavailable|not available)",
            r"undeliverable address",
            r"bad destination mailbox",
            r"not a valid (?:user|mailbox|recipient|address)",
            r"recipient (?:address )?rejected",
            r"recipient (?:not found|refused)",
            r"cannot be verified",
            r"no mailbox",
            r"doesn't have an? \S{1,100} account",
            r"not our customer",
            r"user not local",
            r"nosuchuser\b",
        ],
    ),
    _rule(
        "greylisting_try_later",
        _R.GREYLISTED,
        [
            r"try again later",
            r"try later",
            r"come back later",
            r"retry later",
            r"try again in",
            r"please try again",
            r"temporarily rejected",
        ],
        enhanced=("4.7.1", "4.2.0"),
    ),
    _rule(
        "rate_limited",
        _R.RATE_LIMITED,
        [
            r"rate ?limit",
            r"rate-limit",
            r"ratelimit",
            r"too many (?:connections|messages|mails|emails|concurrent|sessions|requests|errors|invalid)",
            *_each("connection sending message messages", r" (?:rate|frequency)"),
            r"frequency limit",
            r"throttl",
            r"exceeded (?:the )?(?:message |sending |connection )?rate",
            r"too much mail",
            r"too fast",
            r"slow down",
            r"server busy",
            r"concurrent connections",
            r"connection limit",
        ],
    ),
    _rule(
        "tls",
        _R.TLS_FAILURE,
        [
            r"tls",
            r"starttls",
            r"ssl",
            r"certificate",
            r"cert\b",
            r"handshake\b",
            r"gnutls\b",
            r"openssl\b",
            r"encryption (?:required|needed)",
            r"dane\b",
            r"x509",
            r"cipher",
        ],
    ),
    _rule(
        "lmtp_or_local_transport",
        _R.LOCAL_DELIVERY_ERROR,
        r"lmtp\b|dovecot\b|appendfile\b|maildir\b|local delivery|pipe (?:transport|command|to)",
    ),
    _rule(
        "connection",
        _R.CONNECTION_FAILURE,
        [
            r"connection (?:refused|timed out|reset|closed|dropped|lost|failed|timeout)",
            r"timed out",
            r"timeout",
            r"no route to host",
            r"network is unreachable",
            r"host is unreachable",
            r"unreachable",
            r"remote host closed connection",
            r"closed connection",
            r"could not connect",
            r"couldn't connect",
            r"unable to connect",
            r"failed to connect",
            r"lost connection",
            r"broken pipe",
            r"host is down",
        ],
    ),
    _rule(
        "remote_temporary_text",
        _R.REMOTE_SERVER_ERROR,
        [
            r"temporary (?:server|local|system|internal) (?:error|failure|problem)",
            r"local error in processing",
            r"service (?:is )?(?:not available|unavailable|temporarily unavailable)",
            r"internal (?:server )?error",
            r"system (?:error|failure|busy)",
            r"server (?:error|failure|unavailable|is busy)",
            r"resources? (?:temporarily )?unavailable",
            r"out of memory",
            r"too busy",
        ],
        code_classes=(4,),
    ),
    _rule(
        "protocol",
        _R.PROTOCOL_ERROR,
        [
            r"syntax",
            r"protocol",
            r"pipelin",
            r"synchroni[sz]ation",
            r"unrecogni[sz]ed command",
            r"command (?:not recogni[sz]ed|unrecogni[sz]ed|not implemented)",
            r"bad sequence",
            r"out of sequence",
            r"line too long",
            r"invalid command",
            r"smtputf8\b",
            r"8bitmime\b",
            r"bare lf",
            r"malformed",
            r"not rfc",
            r"rfc ?\d{3,4}",
            r"invalid (?:header|message|argument|parameter)",
            r"missing (?:header|domain)",
            r"domain missing",
            r"must contain a fqdn",
            r"too many recipients",
            r"not compliant",
            r"non-compliant",
        ],
    ),
    # -- RFC 3463 enhanced status codes ------------------------------------------------------------------
    _rule("enhanced_gmail_rate", _R.RATE_LIMITED, enhanced=("4.7.28",)),
    _rule("enhanced_recipient", _R.RECIPIENT_UNKNOWN, enhanced=("*.1.1", "*.1.3", "*.1.4", "5.4.1")),
    _rule("enhanced_domain", _R.RECIPIENT_DOMAIN_INVALID, enhanced=("*.1.2", "*.1.10", "*.7.18", "5.4.4")),
    _rule("enhanced_inactive", _R.MAILBOX_INACTIVE, enhanced=("*.1.6", "*.2.1", "*.7.13", "*.7.17")),
    _rule("enhanced_sender", _R.POLICY_REJECTION, enhanced=("*.1.7", "*.1.8")),
    _rule("enhanced_full", _R.MAILBOX_FULL, enhanced=("*.2.2",)),
    _rule("enhanced_size", _R.MESSAGE_TOO_LARGE, enhanced=("*.2.3", "*.3.4", "*.7.16")),
    _rule("enhanced_protocol", _R.PROTOCOL_ERROR, enhanced=("*.3.3", "*.5", "*.6")),
    _rule("enhanced_system", _R.REMOTE_SERVER_ERROR, enhanced=("*.2.4", "*.3")),
    _rule("enhanced_expired", _R.EXPIRED, enhanced=("*.4.7",)),
    _rule("enhanced_dns", _R.DNS_FAILURE, enhanced=("*.4.3", "4.4.4")),
    _rule("enhanced_connection", _R.CONNECTION_FAILURE, enhanced=("4.4.1", "4.4.2")),
    _rule("enhanced_network", _R.REMOTE_SERVER_ERROR, enhanced=("*.4",)),
    _rule(
        "enhanced_auth",
        _R.AUTH_FAILURE,
        enhanced=(*(f"*.7.{n}" for n in range(20, 28)), "*.7.8", "*.7.12", "*.7.14", "*.7.29"),
    ),
    _rule("enhanced_tls", _R.TLS_FAILURE, enhanced=("*.7.4", "*.7.5", "*.7.10", "*.7.11", "*.7.30")),
    _rule("enhanced_policy", _R.POLICY_REJECTION, enhanced=("*.7",)),
    # -- basic SMTP reply code and phase -----------------------------------------------------------------
    _rule("smtp_421", _R.REMOTE_SERVER_ERROR, codes=(421,)),
    _rule("smtp_rcpt_unknown", _R.RECIPIENT_UNKNOWN, codes=(550, 553), phases=("rcpt",)),
    _rule("smtp_551", _R.RECIPIENT_UNKNOWN, codes=(551,)),
    _rule("smtp_552", _R.MAILBOX_FULL, codes=(552,)),
    _rule("smtp_protocol", _R.PROTOCOL_ERROR, codes=(500, 501, 502, 503, 504, 555)),
    _rule("smtp_auth", _R.AUTH_FAILURE, codes=(530, 535, 538)),
    _rule("smtp_no_mail_service", _R.RECIPIENT_DOMAIN_INVALID, codes=(521, 556)),
    _rule("smtp_policy", _R.POLICY_REJECTION, codes=(550, 553, 554)),
    # -- weak texts: only when no code said more ----------------------------------------------
    _rule("remote_try_later", _R.REMOTE_SERVER_ERROR, r"try again later|try later|please try again"),
    _rule(
        "policy_words",
        _R.POLICY_REJECTION,
        [
            r"policy",
            r"access denied",
            r"administrative prohibition",
            r"administratively denied",
            r"not allowed",
            r"prohibited",
            r"refused",
            r"blocked",
            r"rejected",
            r"denied",
            r"not permitted",
            r"not authori[sz]ed",
            r"forbidden",
            r"do not have permission",
            r"acceptable use",
        ],
    ),
    _rule("spam_word", _R.DOMAIN_OR_CONTENT_REPUTATION, r"spam|junk"),
    _rule("smtp_temporary", _R.REMOTE_SERVER_ERROR, code_classes=(4,)),
    # -- Exim errno without anything better ------------------------------------------------------------
    _rule("errno_tls", _R.TLS_FAILURE, errnos=(-37, -38)),
    _rule("errno_dns", _R.DNS_FAILURE, errnos=(-35, -36)),
    _rule("errno_unknown_host_defer", _R.DNS_FAILURE, errnos=(-32,), kinds=("defer",)),
    _rule("errno_unknown_host", _R.RECIPIENT_DOMAIN_INVALID, errnos=(-32,)),
    _rule("errno_connection", _R.CONNECTION_FAILURE, errnos=_CONNECTION_ERRNOS),
    _rule("errno_smtp_auth", _R.AUTH_FAILURE, errnos=(-42, -48)),
    _rule("errno_protocol", _R.PROTOCOL_ERROR, errnos=(-19, -49)),
    _rule("errno_callout_defer", _R.REMOTE_SERVER_ERROR, errnos=(-41,)),
)

_UNKNOWN = Classification(Reason.UNKNOWN, HINTS[Reason.UNKNOWN], "unknown")
_RESULTS = tuple(Classification(rule.reason, HINTS[rule.reason], rule.name) for rule in RULES)


# --- trigger words: which text rules can possibly match a given text ----------------------------------

_WORD_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
_TOKEN_TABLE = bytes(c if chr(c) in _WORD_LETTERS else 0x20 for c in range(256))
_QUANTIFIERS = frozenset("?*{")
_METACHARACTERS = frozenset("().[]|\\?*+{}^$")
_FILLER_TEXT = (
    "a an and are as at be been by can for from has have in is it its not of on or our please the this "
    "that to was were will with you your"
)
_FILLER_WORDS = frozenset(_FILLER_TEXT.split())


def _top_level_alternatives(source: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    in_class = False
    start = 0
    index = 0
    while index < len(source):
        char = source[index]
        if char == "\\":
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            parts.append(source[start:index])
            start = index + 1
        index += 1
    parts.append(source[start:])
    return parts


def _literal_prefix(alternative: str) -> tuple[str, bool]:
    """The literal text every match of ``alternative`` starts with, and whether its last word is complete
    (followed by a required non-word character or ``\\b``) rather than possibly longer in the text."""
    literal = ""
    index = 0
    while index < len(alternative):
        char = alternative[index]
        if char == "\\":
            escaped = alternative[index + 1 : index + 2]
            if escaped == "b":
                return literal, True
            if not escaped or escaped.isalnum():  # \d \s \w ...: not a literal
                return literal, False
            step = 2
        elif char in _METACHARACTERS:
            return literal, False
        else:
            escaped = char
            step = 1
        if alternative[index + step : index + step + 1] in _QUANTIFIERS:
            return literal, False  # this character is optional: the literal ends before it
        literal += escaped
        index += step
        if alternative[index : index + 1] == "+":
            return literal, False
    return literal, False


def trigger_word(alternative: str) -> tuple[str, bool]:
    """The word that must be in the text for ``alternative`` to match, and whether it must be a whole
    token (else a token starts with it).

    The longest complete non-filler word of the literal start is chosen (rarer words run fewer regexes);
    without one, its longest word as a prefix. Raises ValueError when the alternative does not start with
    a lower-case literal word (the table is checked at import, so a bad row fails fast).
    """
    literal, last_complete = _literal_prefix(alternative)
    words = re.findall(r"[a-z0-9_]+|[^a-z0-9_]+", literal)
    if not words or words[0][0] not in _WORD_LETTERS or literal != literal.lower():
        raise ValueError(f"text alternative {alternative!r} must start with a lower-case literal word")
    complete = [
        word
        for position, word in enumerate(words)
        if word[0] in _WORD_LETTERS
        and (position + 1 < len(words) or last_complete)
        and word not in _FILLER_WORDS
        and len(word) >= 2
    ]
    if complete:
        return max(complete, key=len), True
    longest = max(
        (word for word in words if word[0] in _WORD_LETTERS), key=lambda word: (word not in _FILLER_WORDS, len(word))
    )
    if len(longest) < 3:
        raise ValueError(f"text alternative {alternative!r} needs a longer literal start")
    return longest, False


_Trigger = tuple[int, int]  # (rule index, alternative index)


@dataclass(frozen=True, slots=True)
class _TriggerIndex:
    """A text rule can only match if a token equals the trigger word of one of its alternatives, or
    starts with it when the word may continue (looked up by its first three characters, confirmed on the
    text)."""

    alternatives: tuple[tuple[str, ...], ...]  # per rule, the sources of its top-level alternatives
    whole: dict[bytes, tuple[_Trigger, ...]]
    whole_words: frozenset[bytes]
    prefix: dict[bytes, tuple[tuple[str, tuple[_Trigger, ...]], ...]]  # by the word's first 3 characters
    stems: frozenset[bytes]


@lru_cache(maxsize=1)
def _trigger_index() -> _TriggerIndex:
    """Built on the first classification: a process that only hands the table to the native classifier
    (``trackdelivery parse``) never needs it. ``test_reasons`` builds it, so a bad row fails there."""
    alternatives: list[tuple[str, ...]] = []
    whole: dict[bytes, list[_Trigger]] = {}
    prefix: dict[str, list[_Trigger]] = {}
    for index, rule in enumerate(RULES):
        sources: list[str] = []
        if rule.pattern is not None:
            source = rule.pattern.pattern[len(r"\b(?:") : -1]
            for number, alternative in enumerate(_top_level_alternatives(source)):
                word, is_whole = trigger_word(alternative)
                if is_whole:
                    whole.setdefault(word.encode(), []).append((index, number))
                else:
                    prefix.setdefault(word, []).append((index, number))
                sources.append(alternative)
        alternatives.append(tuple(sources))
    by_stem: dict[bytes, list[tuple[str, tuple[_Trigger, ...]]]] = {}
    for word, triggers in prefix.items():
        by_stem.setdefault(word[:3].encode(), []).append((word, tuple(triggers)))
    return _TriggerIndex(
        alternatives=tuple(alternatives),
        whole={word: tuple(triggers) for word, triggers in whole.items()},
        whole_words=frozenset(whole),
        prefix={stem: tuple(words) for stem, words in by_stem.items()},
        stems=frozenset(by_stem),
    )


_STEM = operator.itemgetter(slice(None, 3))


def _triggered(lowered: str) -> list[_Trigger]:
    triggers_of = _trigger_index()
    tokens = lowered.encode("ascii", "replace").translate(_TOKEN_TABLE).split()
    hits = [hit for word in triggers_of.whole_words.intersection(tokens) for hit in triggers_of.whole[word]]
    for stem in triggers_of.stems.intersection(map(_STEM, tokens)):
        for word, triggers in triggers_of.prefix[stem]:
            if word in lowered:
                hits.extend(triggers)
    hits.sort()
    return hits


_compiled_alternatives: dict[tuple[int, int], re.Pattern[str]] = {}


def _alternative(index: int, number: int) -> re.Pattern[str]:
    """One alternative of a rule's pattern, compiled on first use (a process that only hands the table
    to the native classifier never needs them). Without the leading ``\\b`` sre keeps its fast
    literal-prefix scan; ``_found`` checks the boundary."""
    pattern = _compiled_alternatives.get((index, number))
    if pattern is None:
        pattern = re.compile(_trigger_index().alternatives[index][number], re.ASCII)
        _compiled_alternatives[(index, number)] = pattern
    return pattern


def _found(pattern: re.Pattern[str], lowered: str) -> bool:
    """``pattern`` matches at a word start (what ``\\b`` would check, without slowing the scan)."""
    position = 0
    while (match := pattern.search(lowered, position)) is not None:
        start = match.start()
        if start == 0:
            return True
        before = lowered[start - 1]
        if not (before.isascii() and (before.isalnum() or before == "_")):
            return True
        position = start + 1
    return False


# --- conditions: which rows apply to (code, enhanced code, errno, phase, kind) ----------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    text_rules: frozenset[int]  # text rules that apply, all before `floor`
    floor: Classification  # the first applicable rule without a text pattern, else unknown


def _applies(
    rule: Rule,
    code: int | None,
    code_class: int | None,
    enhanced: tuple[int, ...] | None,
    errno: int | None,
    phase: str | None,
    kind: str,
) -> bool:
    if rule.codes and code not in rule.codes:
        return False
    if rule.code_classes and code_class not in rule.code_classes:
        return False
    if rule.errnos and errno not in rule.errnos:
        return False
    if rule.phases and phase not in rule.phases:
        return False
    if rule.kinds and kind not in rule.kinds:
        return False
    if rule.without_code and code_class is not None:
        return False
    if rule.enhanced:
        if enhanced is None:
            return False
        return any(
            len(pattern) <= len(enhanced)
            and all(want is None or want == have for want, have in zip(pattern, enhanced, strict=False))
            for pattern in rule.enhanced
        )
    return True


@lru_cache(maxsize=4096)
def _plan(code: int | None, enhanced: tuple[int, ...] | None, errno: int | None, phase: str | None, kind: str) -> _Plan:
    code_class = code // 100 if code is not None else (enhanced[0] if enhanced else None)
    text_rules: set[int] = set()
    for index, rule in enumerate(RULES):
        if not _applies(rule, code, code_class, enhanced, errno, phase, kind):
            continue
        if rule.pattern is None:
            return _Plan(frozenset(text_rules), _RESULTS[index])
        text_rules.add(index)
    return _Plan(frozenset(text_rules), _UNKNOWN)


# --- parsing the text ------------------------------------------------------------------------------------

_CODES_RE = re.compile(r"\s{0,8}([2-5][0-9]{2})(?:[ -]([2-5]\.[0-9]{1,3}\.[0-9]{1,3})(?![0-9.]))?(?=[ \-\r\n\\]|$)")
_ENHANCED_RE = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})")
_RESPONSE_START_RE = re.compile(r": (?=[2-5][0-9]{2}(?:[ -]|$))")
_REMOTE_ERROR = "error from remote mail server after "
_LMTP_ERROR = "lmtp error after "
_OTHER_PHASE_MARKERS = ("closed connection in response to ", "smtp timeout after ", "timeout after ")
_COMMAND_PHASES = (
    ("pipelined ", ""),
    ("mail from", "mail"),
    ("rcpt to", "rcpt"),
    ("end of data", "end_of_data"),
    ("data", "data"),
    ("initial connection", "connect"),
    ("ehlo", "ehlo"),
    ("helo", "ehlo"),
    ("lhlo", "ehlo"),
    ("starttls", "starttls"),
    ("auth", "auth"),
)


def parse_codes(text: str) -> tuple[int | None, str | None]:
    """The basic SMTP reply code and RFC 3463 enhanced code at the start of an SMTP response.

    ``"550-5.1.1 The email account..."`` → ``(550, "5.1.1")``; ``"450 I'm busy"`` → ``(450, None)``;
    anything else → ``(None, None)``. Looks at the first few characters only.
    """
    if not isinstance(text, str):
        return None, None
    match = _CODES_RE.match(text[:32])
    if match is None:
        return None, None
    code_text, enhanced = match.groups()
    if enhanced is not None and enhanced[0] != code_text[0]:
        enhanced = None  # "550 4.1.1" is inconsistent; trust the basic code only
    return int(code_text), enhanced


def _phase_after(lowered: str, start: int) -> str | None:
    for prefix, phase in _COMMAND_PHASES:
        if lowered.startswith(prefix, start):
            if not phase:  # "pipelined "
                start += len(prefix)
                continue
            return phase
    return None


def _split_response(text: str, lowered: str) -> tuple[str, str | None, str | None]:
    """(text to scan, phase, response) for Exim's "SMTP error from remote mail server after X: resp"."""
    position = lowered.find(_REMOTE_ERROR)
    if position >= 0:
        command = position + len(_REMOTE_ERROR)
        phase = _phase_after(lowered, command)
        match = _RESPONSE_START_RE.search(text, command)
        if match is None:
            return text, phase, None
        response = text[match.end() :]
        return response, phase, response
    position = lowered.find(_LMTP_ERROR)
    if position >= 0:
        command = position + len(_LMTP_ERROR)
        match = _RESPONSE_START_RE.search(text, command)
        return text, _phase_after(lowered, command), text[match.end() :] if match else None
    for marker in _OTHER_PHASE_MARKERS:
        position = lowered.find(marker)
        if position >= 0:
            return text, _phase_after(lowered, position + len(marker)), None
    return text, None, text


def _enhanced_tuple(enhanced: object) -> tuple[int, ...] | None:
    if not isinstance(enhanced, str) or len(enhanced) > 11:
        return None
    match = _ENHANCED_RE.fullmatch(enhanced.strip())
    if match is None:
        return None
    return tuple(int(part) for part in match.groups())


_CONTINUATION_RE = re.compile(r"(?:\\n|\n)[2-5][0-9]{2}[ -](?:[2-5]\.[0-9]{1,3}\.[0-9]{1,3}\s?)?")


def _joined(text: str) -> str:
    """One line from a multi-line reply: drop the "\\n421-4.7.28 " prefixes of continuation lines."""
    if "\\n" not in text and "\n" not in text:
        return text
    return _CONTINUATION_RE.sub(" ", text)


def _without_addresses(text: str) -> str:
    """Drop words holding an address: a recipient named "spam@" or "quota@" must not steer the result."""
    if "@" not in text:
        return text
    return " ".join(word for word in text.split() if "@" not in word)


# --- the entry point -----------------------------------------------------------------------------------------


def classify(
    *,
    text: str | None,
    smtp_code: int | None = None,
    enhanced_code: str | None = None,
    errno: int | None = None,
    phase: str | None = None,
    kind: str = "fail",
) -> Classification:
    """Classify one deferral, failure or SMTP-time rejection. Never raises; scans at most 2 KiB of text.

    Codes and the SMTP phase are taken from the text (Exim's "SMTP error from remote mail server after
    RCPT TO:<...>: 550 5.1.1 ...") when not given. ``kind`` is "defer", "fail" or "reject".
    """
    try:
        return _classify(text, smtp_code, enhanced_code, errno, phase, kind)
    except Exception:  # a bug here must not stop the pipeline; the rule name makes it visible
        return Classification(Reason.UNKNOWN, HINTS[Reason.UNKNOWN], "classifier_error")


def _classify(
    text: object,
    smtp_code: object,
    enhanced_code: object,
    errno: object,
    phase: object,
    kind: object,
) -> Classification:
    scan = text[:MAX_SCAN] if isinstance(text, str) else ""
    lowered = scan.lower()
    found_phase: str | None = None
    if scan:
        scan, found_phase, response = _split_response(scan, lowered)
        if response is not None and smtp_code is None and enhanced_code is None:
            smtp_code, enhanced_code = parse_codes(response)
        scan = _without_addresses(_joined(scan))
        lowered = scan.lower()

    code = smtp_code if type(smtp_code) is int and 200 <= smtp_code <= 599 else None
    enhanced = _enhanced_tuple(enhanced_code)
    errno_value = errno if type(errno) is int and -1000 <= errno <= 1000 else None
    phase_value = phase if isinstance(phase, str) and phase in PHASES else found_phase
    kind_value = kind if isinstance(kind, str) and kind in KINDS else "fail"

    plan = _plan(code, enhanced, errno_value, phase_value, kind_value)
    if not lowered or not plan.text_rules:
        return plan.floor
    if len(plan.text_rules) <= _DIRECT_RULES:  # e.g. an errno that decides: skip tokenising
        for index in sorted(plan.text_rules):
            if any(
                _found(_alternative(index, number), lowered)
                for number in range(len(_trigger_index().alternatives[index]))
            ):
                return _RESULTS[index]
        return plan.floor
    for index, alternative in _triggered(lowered):
        if index in plan.text_rules and _found(_alternative(index, alternative), lowered):
            return _RESULTS[index]
    return plan.floor
