import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.exim import reasons
from processors.exim.reasons import HINTS, KINDS, PHASES, RULES, Classification, classify, parse_codes
from trackdelivery.events import Reason

R = Reason
SMTP = "SMTP error from remote mail server after "

# (text, keyword arguments, expected reason): texts in the shapes research §2.5 / §4.2 documents;
# the expected reason is read from what the text means.
CASES = [
    # Gmail
    (
        SMTP + "end of data: 421-4.7.28 [198.51.100.10] Our system has detected an unusual rate of\\n"
        "421-4.7.28 unsolicited mail originating from your IP address. To protect our\\n421-4.7.28 users "
        "from spam, mail sent from your IP address has been temporarily\\n421 4.7.28 rate limited. - gsmtp",
        {"errno": -46, "kind": "defer"},
        R.RATE_LIMITED,
    ),
    (
        "421-4.7.0 This message is suspicious due to the very low reputation of the sending domain. "
        "To best protect our users from spam, the message has been blocked. - gsmtp",
        {"kind": "defer"},
        R.DOMAIN_OR_CONTENT_REPUTATION,
    ),
    (
        "421-4.7.0 [198.51.100.10] Our system has detected that this message is suspicious due to the "
        "nature of the content and/or the links within. - gsmtp",
        {"kind": "defer"},
        R.DOMAIN_OR_CONTENT_REPUTATION,
    ),
    (
        "550-5.7.1 [198.51.100.10] Our system has detected an unusual rate of unsolicited mail "
        "originating from your IP address. To protect our users from spam, mail sent from your IP "
        "address has been blocked. - gsmtp",
        {},
        R.IP_REPUTATION,
    ),
    (
        "421-4.7.0 Try again later, closing connection. (EHLO) - gsmtp",
        {"phase": "ehlo", "kind": "defer"},
        R.RATE_LIMITED,
    ),
    (
        "450-4.2.1 The user you are trying to contact is receiving mail at a rate that\\n450-4.2.1 "
        "prevents additional messages from being delivered. - gsmtp",
        {"kind": "defer"},
        R.RATE_LIMITED,
    ),
    (
        SMTP + "RCPT TO:<nosuch@gmail.com>: 550-5.1.1 The email account that you tried to reach does "
        "not exist. Please try\\n550-5.1.1 double-checking the recipient's email address for typos.\\n"
        "550 5.1.1  https://support.google.com/mail/?p=NoSuchUser - gsmtp",
        {},
        R.RECIPIENT_UNKNOWN,
    ),
    (
        "452-4.2.2 The recipient's inbox is out of storage space. Please direct the\\n452-4.2.2 "
        "recipient to https://support.google.com/mail/?p=OverQuotaTemp - gsmtp",
        {"kind": "defer"},
        R.MAILBOX_FULL,
    ),
    (
        "550-5.2.1 The email account that you tried to reach is disabled. - gsmtp",
        {},
        R.MAILBOX_INACTIVE,
    ),
    (
        SMTP + "end of data: 550-5.7.26 Unauthenticated email from example.com is not accepted due to "
        "domain's\\n550-5.7.26 DMARC policy. Please contact the administrator of example.com. - gsmtp",
        {},
        R.AUTH_FAILURE,
    ),
    (
        "550-5.7.26 This mail has been blocked because the sender is unauthenticated. Gmail requires "
        "all senders to authenticate with either SPF or DKIM. - gsmtp",
        {},
        R.AUTH_FAILURE,
    ),
    (
        "550 5.7.27 The sender's domain has a null MX record. - gsmtp",
        {},
        R.AUTH_FAILURE,
    ),
    (
        "552-5.2.3 Your message exceeded Google's message size limits. Please visit\\n552 5.2.3 "
        "https://support.google.com/mail/?p=MaxSizeError - gsmtp",
        {},
        R.MESSAGE_TOO_LARGE,
    ),
    (
        "552-5.7.0 This message was blocked because its content presents a potential\\n552-5.7.0 "
        "security issue. - gsmtp",
        {},
        R.VIRUS_OR_ATTACHMENT,
    ),
    # Yahoo
    (
        SMTP + "MAIL FROM:<alice@example.com> SIZE=18234: 421 4.7.0 [TSS04] Messages from "
        "198.51.100.10 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; "
        "see https://postmaster.yahooinc.com/error-codes",
        {"errno": -45, "kind": "defer"},
        R.RATE_LIMITED,
    ),
    (
        "421 4.7.0 [TS03] All messages from 198.51.100.10 will be permanently deferred; Retrying will "
        "NOT succeed. See https://postmaster.yahooinc.com/error-codes",
        {"kind": "defer"},
        R.IP_REPUTATION,
    ),
    (
        "553 5.7.1 [BL21] Connections will not be accepted from 198.51.100.10, because the ip is in "
        "Spamhaus's list; see https://postmaster.yahooinc.com/error-codes",
        {},
        R.IP_REPUTATION,
    ),
    (
        "554 30 Sorry, your message to carol@yahoo.com cannot be delivered. This mailbox is disabled (554.30).",
        {},
        R.MAILBOX_INACTIVE,
    ),
    (
        "552 1 Requested mail action aborted, mailbox not found",
        {"phase": "rcpt"},
        R.RECIPIENT_UNKNOWN,
    ),
    (
        "554 delivery error: dd This user doesn't have a yahoo.com account (carol@yahoo.com) [0] - "
        "mta1234.mail.gq1.yahoo.com",
        {},
        R.RECIPIENT_UNKNOWN,
    ),
    # Microsoft
    (
        SMTP + "MAIL FROM:<alice@example.com> SIZE=18234: 550 5.7.1 Unfortunately, messages from "
        "[198.51.100.10] weren't sent. Please contact your Internet service provider since part of their "
        "network is on our block list (S3150). You can also refer your provider to "
        "http://mail.live.com/mail/troubleshooting.aspx#errors.",
        {},
        R.IP_REPUTATION,
    ),
    (
        "550 5.7.1 Unfortunately, messages from [198.51.100.10] weren't sent. Please contact your "
        "Internet service provider. (S3140)",
        {},
        R.IP_REPUTATION,
    ),
    (
        "550 5.7.515 Access denied, sending domain example.com does not meet the required authentication level.",
        {},
        R.AUTH_FAILURE,
    ),
    (
        "550 5.4.1 Recipient address rejected: Access denied. For more information see "
        "https://aka.ms/EXOSmtpErrors [AM4PEPF00027A5F.eurprd04.prod.outlook.com]",
        {"phase": "rcpt"},
        R.RECIPIENT_UNKNOWN,
    ),
    (
        "550 5.7.64 TenantAttribution; Relay Access Denied",
        {},
        R.RELAY_DENIED,
    ),
    (
        "451 4.7.650 The mail server [198.51.100.10] has been temporarily rate limited due to IP reputation.",
        {"kind": "defer"},
        R.RATE_LIMITED,
    ),
    # block lists
    (
        "554 5.7.1 Service unavailable; Client host [198.51.100.10] blocked using zen.spamhaus.org; "
        "https://www.spamhaus.org/query/ip/198.51.100.10",
        {"phase": "rcpt"},
        R.IP_REPUTATION,
    ),
    (
        "554 5.7.1 Service unavailable; Sender address [alice@example.com] blocked using "
        "dbl.spamhaus.org; https://www.spamhaus.org/query/domain/example.com",
        {"phase": "rcpt"},
        R.DOMAIN_OR_CONTENT_REPUTATION,
    ),
    ("554 Blocklisting in effect", {"phase": "connect"}, R.IP_REPUTATION),
    (
        "550 Your IP 198.51.100.10 is listed at bl.spamcop.net",
        {},
        R.IP_REPUTATION,
    ),
    (
        "554 Service unavailable; Client host [198.51.100.10] blocked using "
        "b.barracudacentral.org; http://www.barracudanetworks.com/reputation/?pr=1&ip=198.51.100.10",
        {"phase": "connect"},
        R.IP_REPUTATION,
    ),
    (
        "550 5.7.1 Message rejected as spam by Content Filtering.",
        {"phase": "end_of_data"},
        R.DOMAIN_OR_CONTENT_REPUTATION,
    ),
    # greylisting
    (
        SMTP + "RCPT TO:<dave@example.net>: 451 4.7.1 Greylisting in action, please come back later",
        {"errno": -44, "kind": "defer"},
        R.GREYLISTED,
    ),
    (
        "451 4.7.1 <dave@example.net>: Recipient address rejected: Greylisted, try again in 300 seconds",
        {"kind": "defer"},
        R.GREYLISTED,
    ),
    ("450 4.2.0 <dave@example.net>: Recipient address rejected: Greylisted", {}, R.GREYLISTED),
    ("451 4.7.1 Please try again later", {"phase": "rcpt", "kind": "defer"}, R.GREYLISTED),
    # quota, size, unknown user, domain, inactive
    ("552 5.2.2 Mailbox full", {}, R.MAILBOX_FULL),
    ("452 4.2.2 Mailbox full", {"kind": "defer"}, R.MAILBOX_FULL),
    ("552 Requested mail action aborted: exceeded storage allocation", {}, R.MAILBOX_FULL),
    ("550 5.2.2 user@example.net over quota", {}, R.MAILBOX_FULL),
    ("552 5.3.4 Message size exceeds fixed limit", {}, R.MESSAGE_TOO_LARGE),
    (
        "550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown in virtual mailbox table",
        {},
        R.RECIPIENT_UNKNOWN,
    ),
    ("550 No such user - psmtp", {"phase": "rcpt"}, R.RECIPIENT_UNKNOWN),
    ("550 Recipient refused", {"phase": "rcpt"}, R.RECIPIENT_UNKNOWN),
    ("550 Unknown recipient", {}, R.RECIPIENT_UNKNOWN),
    ("550 5.1.2 Host unknown (Name server: mx.example.net: host not found)", {}, R.RECIPIENT_DOMAIN_INVALID),
    ("556 5.1.10 Recipient address has null MX", {}, R.RECIPIENT_DOMAIN_INVALID),
    ("unknown mail domain", {}, R.RECIPIENT_DOMAIN_INVALID),
    ("Unrouteable address", {}, R.RECIPIENT_DOMAIN_INVALID),
    ("all relevant MX records point to non-existent hosts", {}, R.RECIPIENT_DOMAIN_INVALID),
    ("550 5.2.1 Mailbox disabled, not accepting messages", {}, R.MAILBOX_INACTIVE),
    ("550 5.2.1 The account has been suspended", {}, R.MAILBOX_INACTIVE),
    # relay, virus, auth, policy, protocol, remote
    ("550 5.7.1 Relaying denied", {"phase": "rcpt"}, R.RELAY_DENIED),
    ("550 relay not permitted", {"phase": "rcpt"}, R.RELAY_DENIED),
    (
        "554 5.7.1 The message was rejected because it contains prohibited virus or spam content",
        {},
        R.VIRUS_OR_ATTACHMENT,
    ),
    ("552 5.7.0 Our system detected an illegal attachment on your message.", {}, R.VIRUS_OR_ATTACHMENT),
    ("550 5.7.23 The message was rejected because of Sender Policy Framework violation", {}, R.AUTH_FAILURE),
    (
        "550 5.7.25 [198.51.100.10] The IP address sending this message does not have a PTR record setup",
        {},
        R.AUTH_FAILURE,
    ),
    ("450 4.7.1 Client host rejected: cannot find your hostname, [198.51.100.10]", {"kind": "defer"}, R.AUTH_FAILURE),
    ("554 5.7.1 Message not accepted for policy reasons", {}, R.POLICY_REJECTION),
    ("550 5.7.1 Access denied", {}, R.POLICY_REJECTION),
    ("503 5.5.1 Bad sequence of commands", {}, R.PROTOCOL_ERROR),
    ("500 5.5.2 Syntax error, command unrecognized", {}, R.PROTOCOL_ERROR),
    ("451 4.3.0 Temporary server error. Please try again later", {"kind": "defer"}, R.REMOTE_SERVER_ERROR),
    ("452 4.3.1 Insufficient system storage", {"kind": "defer"}, R.REMOTE_SERVER_ERROR),
    ("421 4.3.2 Service not available, closing transmission channel", {"kind": "defer"}, R.REMOTE_SERVER_ERROR),
    ("451 Temporary local problem - please try later", {"kind": "defer"}, R.REMOTE_SERVER_ERROR),
    (SMTP + "initial connection: 450 I'm busy", {"kind": "defer"}, R.REMOTE_SERVER_ERROR),
    ("421 Too many concurrent SMTP connections; please try again later.", {"kind": "defer"}, R.RATE_LIMITED),
    ("550 Connection frequency limited. http://service.mail.qq.com/", {}, R.RATE_LIMITED),
    ("554 5.4.7 Delivery expired (message too old) 'timeout'", {}, R.EXPIRED),
    # Exim's own texts and errnos
    ("Connection timed out", {"errno": 110, "kind": "defer"}, R.CONNECTION_FAILURE),
    ("Connection refused", {"errno": 111, "kind": "defer"}, R.CONNECTION_FAILURE),
    ("No route to host", {"errno": 113, "kind": "defer"}, R.CONNECTION_FAILURE),
    (
        "Connection timed out H=127.0.0.1 [127.0.0.1]: SMTP timeout after EHLO myhost.test.ex",
        {"errno": 110, "kind": "defer"},
        R.CONNECTION_FAILURE,
    ),
    (
        "Remote host closed connection in response to RCPT TO:<x@example.org>",
        {"errno": -18, "kind": "defer"},
        R.CONNECTION_FAILURE,
    ),
    (None, {"errno": -18, "kind": "defer"}, R.CONNECTION_FAILURE),
    (None, {"errno": -37, "kind": "defer"}, R.TLS_FAILURE),
    (
        "TLS session: (SSL_connect): error:0A000086:SSL routines::certificate verify failed",
        {"errno": -37, "kind": "defer"},
        R.TLS_FAILURE,
    ),
    ("530 5.7.0 Must issue a STARTTLS command first", {}, R.TLS_FAILURE),
    ("host lookup did not complete", {"errno": -1, "kind": "defer"}, R.DNS_FAILURE),
    ("DANE error: tlsa lookup DEFER", {"errno": -36, "kind": "defer"}, R.DNS_FAILURE),
    (None, {"errno": -32, "kind": "defer"}, R.DNS_FAILURE),
    (None, {"errno": -32, "kind": "fail"}, R.RECIPIENT_DOMAIN_INVALID),
    ("retry time not reached for any host for 'example.org'", {"errno": -54, "kind": "defer"}, R.RETRY_WAIT),
    ("Retry time not yet reached", {"errno": -53, "kind": "defer"}, R.RETRY_WAIT),
    ("retry timeout exceeded", {}, R.EXPIRED),
    ("all hosts for 'test.ex' have been failing for a long time (and retry time not reached)", {}, R.EXPIRED),
    (SMTP + "RCPT TO:<x@example.net>: 451 4.7.1 Greylisted: retry timeout exceeded", {}, R.EXPIRED),
    ("domain is held", {"errno": -23, "kind": "defer"}, R.LOCAL_LIMIT),
    ("concurrency limit reached for transport", {"errno": -57, "kind": "defer"}, R.LOCAL_LIMIT),
    (
        "mailbox is full (MTA-imposed quota exceeded while writing to tmp/MAILDIR.myhost.test.ex)",
        {"errno": -22, "kind": "defer"},
        R.MAILBOX_FULL,
    ),
    ("authentication required but authentication attempt(s) failed", {"errno": -42, "kind": "defer"}, R.AUTH_FAILURE),
    # cPanel and local delivery
    (
        "Domain pigdog.org has exceeded the max emails per hour (12/10 (120%)) allowed.  Message will be "
        "reattempted later",
        {"errno": -1, "kind": "defer"},
        R.LOCAL_LIMIT,
    ),
    (
        "Domain example.com has exceeded the max defers and failures per hour (5/5 (100%)) allowed. Message discarded.",
        {},
        R.LOCAL_LIMIT,
    ),
    ("Mailbox is full / Blocks limit exceeded / Inode limit exceeded", {}, R.MAILBOX_FULL),
    ("LMTP error after DATA: 450 Temporary error", {"errno": -46, "kind": "defer"}, R.LOCAL_DELIVERY_ERROR),
    (
        "LMTP error after RCPT TO:<tom@example.com>: 550 5.1.1 <tom@example.com> User doesn't exist: tom@example.com",
        {},
        R.RECIPIENT_UNKNOWN,
    ),
    ("LMTP timeout after end of data (1234 bytes written)", {"errno": -1, "kind": "defer"}, R.LOCAL_DELIVERY_ERROR),
    (
        "Child process of virtual_userdelivery transport returned 75 (could mean temporary error) from "
        "command: /usr/local/cpanel/bin/dovecot-wrap",
        {"errno": 0, "kind": "defer"},
        R.LOCAL_DELIVERY_ERROR,
    ),
    ("failed to write to /home/u/mail/example.com/bob/new: No space left on device", {}, R.LOCAL_DELIVERY_ERROR),
    # SMTP-time rejections by our own ACLs
    (
        "JunkMail rejected - (ylmf-pc) [185.220.101.4]:61234 is in an RBL: https://www.spamhaus.org/"
        "query/ip/185.220.101.4",
        {"kind": "reject"},
        R.IP_REPUTATION,
    ),
    ("No Such User Here", {"kind": "reject"}, R.RECIPIENT_UNKNOWN),
    ("Sender verify failed", {"kind": "reject"}, R.POLICY_REJECTION),
    ("relay not permitted", {"kind": "reject"}, R.RELAY_DENIED),
    ("Sender rate overlimit - 212.3 / 1h / per_rcpt", {"kind": "reject"}, R.LOCAL_LIMIT),
    (
        "Your message scored 23.5 SpamAssassin point. Report follows:",
        {"kind": "reject"},
        R.DOMAIN_OR_CONTENT_REPUTATION,
    ),
    ("message too big: size=1000000000 max=100", {"kind": "reject"}, R.MESSAGE_TOO_LARGE),
    ('domain missing or malformed: failing address in "From:" header is: @', {"kind": "reject"}, R.PROTOCOL_ERROR),
    (
        "This message contains a virus (Eicar-Signature) and has been rejected",
        {"kind": "reject"},
        R.VIRUS_OR_ATTACHMENT,
    ),
]


@pytest.mark.parametrize(("text", "kwargs", "expected"), CASES, ids=[f"{i}:{c[2]}" for i, c in enumerate(CASES)])
def test_classifies_real_style_responses(text, kwargs, expected):
    result = classify(text=text, **kwargs)
    assert result.reason == expected, result.rule
    assert result.hint == HINTS[expected]


def test_at_least_forty_cases_and_every_common_reason_covered():
    assert len(CASES) >= 40
    covered = {expected for _, _, expected in CASES}
    assert covered >= set(Reason) - {Reason.UNKNOWN}


def test_every_reason_has_an_actionable_hint():
    assert set(HINTS) == set(Reason)
    for reason, hint in HINTS.items():
        assert hint.strip() and len(hint) < 240, reason
        assert "\n" not in hint


def test_unmatched_text_is_unknown():
    assert classify(text="").reason is Reason.UNKNOWN
    assert classify(text=None).reason is Reason.UNKNOWN
    result = classify(text="the weather is nice today")
    assert result == Classification(Reason.UNKNOWN, HINTS[Reason.UNKNOWN], "unknown")


def test_rule_name_is_reported():
    assert classify(text="retry timeout exceeded").rule == "exim_retry_timeout"


def test_codes_are_read_from_the_exim_text_when_not_given():
    # 550 at RCPT with no telling words: the phase and code come from Exim's wrapper text
    text = SMTP + "RCPT TO:<x@example.net>: 550 Rejected"
    assert classify(text=text).rule == "smtp_rcpt_unknown"
    assert classify(text=SMTP + "MAIL FROM:<x@example.net>: 550 Nope").rule == "smtp_policy"


def test_explicit_codes_beat_text_codes():
    # the caller's parsed codes win over what the text says
    assert classify(text="Nope", smtp_code=552).reason is Reason.MAILBOX_FULL
    assert classify(text="Nope", enhanced_code="5.1.1").reason is Reason.RECIPIENT_UNKNOWN


def test_addresses_in_the_text_do_not_steer_the_reason():
    text = SMTP + "RCPT TO:<spamhaus-quota@example.net>: 550 5.1.1 <spamhaus-quota@example.net>: Rejected"
    assert classify(text=text).reason is Reason.RECIPIENT_UNKNOWN


def test_only_the_first_bytes_are_scanned():
    padding = "x " * reasons.MAX_SCAN
    assert classify(text=padding + "mailbox full").reason is Reason.UNKNOWN
    assert classify(text="mailbox full " + padding).reason is Reason.MAILBOX_FULL


def test_words_match_at_word_starts_only():
    assert classify(text="this is nospamhaus").reason is not Reason.IP_REPUTATION
    assert classify(text="see SPAMHAUS for details").reason is Reason.IP_REPUTATION


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("550-5.1.1 The email account that you tried to reach does not exist.", (550, "5.1.1")),
        ("421 4.7.0 [TSS04] Messages from 198.51.100.10 temporarily deferred", (421, "4.7.0")),
        ("450 I'm busy", (450, None)),
        ("250 2.0.0 OK", (250, "2.0.0")),
        ("452-4.2.2 The recipient's inbox is out of storage space.", (452, "4.2.2")),
        ("550 4.1.1 inconsistent", (550, None)),
        ("550", (550, None)),
        ("5501 not a code", (None, None)),
        ("550 5.1.10 Recipient address has null MX", (550, "5.1.10")),
        ("550 5.1.1\\n550 5.1.1 more", (550, "5.1.1")),
        ("Connection refused", (None, None)),
        ("", (None, None)),
        ("99 5.1.1 no", (None, None)),
    ],
)
def test_parse_codes(text, expected):
    assert parse_codes(text) == expected


def test_rule_table_is_sane():
    names = [rule.name for rule in RULES]
    assert len(names) == len(set(names))
    for rule in RULES:
        assert rule.reason in HINTS
        assert rule.kinds <= KINDS
        assert rule.phases <= PHASES
        if rule.pattern is not None:
            assert rule.pattern.flags & re.ASCII
            assert rule.pattern.compiled().pattern == rule.pattern.pattern
            # written in lower case (the text is lower-cased); upper case only in escapes like \S
            assert not re.search(r"(?<!\\)[A-Z]", rule.pattern.pattern), rule.name
        else:
            assert rule.codes or rule.code_classes or rule.enhanced or rule.errnos, rule.name


def test_trigger_words():
    assert reasons.trigger_word(r"mailbox (?:is )?full") == ("mailbox", True)
    assert reasons.trigger_word(r"over ?quota") == ("over", False)
    assert reasons.trigger_word(r"exceeds? the") == ("exceed", False)
    assert reasons.trigger_word(r"greylist") == ("greylist", False)
    assert reasons.trigger_word(r"spf\b") == ("spf", True)
    # the longest complete word that is not filler: fewer texts carry it
    assert reasons.trigger_word(r"has exceeded the max") == ("exceeded", True)
    assert reasons.trigger_word(r"on our block ?list") == ("block", False)
    assert reasons.trigger_word(r"not rfc") == ("rfc", False)
    assert reasons.trigger_word(r"554\.30") == ("554", True)
    with pytest.raises(ValueError):
        reasons.trigger_word(r"(?:a|b) c")


def test_trigger_index_covers_every_alternative_of_every_text_rule():
    # built on first use rather than at import: a row whose alternative has no trigger word fails here
    reasons._trigger_index.cache_clear()
    index = reasons._trigger_index()
    assert len(index.alternatives) == len(RULES)
    triggered = {hit for hits in index.whole.values() for hit in hits}
    triggered |= {hit for words in index.prefix.values() for _, hits in words for hit in hits}
    for position, rule in enumerate(RULES):
        if rule.pattern is None:
            assert index.alternatives[position] == ()
            continue
        alternatives = index.alternatives[position]
        assert "|".join(alternatives) == rule.pattern.pattern[len(r"\b(?:") : -1], rule.name
        assert {(position, number) for number in range(len(alternatives))} <= triggered, rule.name


def _reference(text, smtp_code=None, enhanced_code=None, errno=None, phase=None, kind="fail"):
    """Plain first-match evaluation of RULES with each rule's full pattern (no trigger index)."""
    scan = text[: reasons.MAX_SCAN] if text else ""
    lowered = scan.lower()
    if scan:
        scan, found_phase, response = reasons._split_response(scan, lowered)
        if response is not None and smtp_code is None and enhanced_code is None:
            smtp_code, enhanced_code = parse_codes(response)
        lowered = reasons._without_addresses(reasons._joined(scan)).lower()
    else:
        found_phase = None
    code = smtp_code if isinstance(smtp_code, int) and 200 <= smtp_code <= 599 else None
    enhanced = reasons._enhanced_tuple(enhanced_code)
    code_class = code // 100 if code is not None else (enhanced[0] if enhanced else None)
    phase = phase if phase in PHASES else found_phase
    kind = kind if kind in KINDS else "fail"
    for rule in RULES:
        if not reasons._applies(rule, code, code_class, enhanced, errno, phase, kind):
            continue
        if rule.pattern is None or (lowered and rule.pattern.search(lowered)):
            return rule.name
    return "unknown"


VOCABULARY = (
    "mailbox full quota over user unknown spamhaus listed greylisted try again later rate limit "
    "tls relay denied virus dmarc spf policy timed out connection refused the a of is not exist "
    "550 5.1.1 421 4.7.0 RCPT TO:<x@y> SMTP error from remote mail server after : - ( ) . ,"
)
words = st.sampled_from(VOCABULARY.split(" "))


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.one_of(words, st.text(max_size=8)), max_size=30),
    smtp_code=st.one_of(st.none(), st.sampled_from([421, 450, 451, 452, 550, 552, 553, 554])),
    enhanced=st.one_of(st.none(), st.sampled_from(["4.7.1", "5.1.1", "5.7.26", "4.2.0", "5.7.1"])),
    errno=st.one_of(st.none(), st.sampled_from([-54, -44, -37, -22, -18, -1, 0, 110])),
    kind=st.sampled_from(sorted(KINDS)),
)
def test_fast_path_equals_plain_first_match(parts, smtp_code, enhanced, errno, kind):
    text = " ".join(parts)
    result = classify(text=text, smtp_code=smtp_code, enhanced_code=enhanced, errno=errno, kind=kind)
    assert result.rule == _reference(text, smtp_code, enhanced, errno, None, kind)


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(st.none(), st.text(max_size=3000)),
    smtp_code=st.one_of(st.none(), st.integers()),
    enhanced=st.one_of(st.none(), st.text(max_size=20)),
    errno=st.one_of(st.none(), st.integers()),
    phase=st.one_of(st.none(), st.text(max_size=12), st.sampled_from(sorted(PHASES))),
    kind=st.text(max_size=8),
)
def test_never_raises_on_hostile_input(text, smtp_code, enhanced, errno, phase, kind):
    result = classify(text=text, smtp_code=smtp_code, enhanced_code=enhanced, errno=errno, phase=phase, kind=kind)
    assert result.reason in HINTS
    assert result.rule != "classifier_error"
    code, _ = parse_codes(text or "")
    assert code is None or 200 <= code <= 599


def test_generator_responses_are_classified_as_labelled():
    from trackdelivery.generator.responses import RESPONSES

    kind_of = {"expiry": "fail", "rejection": "reject"}
    wrong = []
    for row in RESPONSES:
        kind = kind_of.get(row.kind, "fail" if row.permanent else "defer")
        result = classify(
            text=row.text,
            smtp_code=row.smtp_code,
            enhanced_code=row.enhanced_code,
            errno=row.errno,
            phase=row.phase,
            kind=kind,
        )
        if result.reason != row.reason:
            wrong.append((row.key, row.reason.value, result.reason.value, result.rule))
    assert not wrong
