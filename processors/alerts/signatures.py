"""Provider responses that mean "this server's IP is throttled or blocked", as data.

Each signature names the provider it belongs to; generic block-list texts belong to no provider and
are attributed to the provider of the recipient domain or remote host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BlockSignature:
    name: str
    provider: str | None  # None: attribute to the recipient's provider
    pattern: re.Pattern[str]
    what: str


def _sig(name: str, provider: str | None, pattern: str, what: str) -> BlockSignature:
    return BlockSignature(name, provider, re.compile(pattern, re.IGNORECASE), what)


#: Checked in order; the first match wins.
SIGNATURES: tuple[BlockSignature, ...] = (
    _sig("gmail_rate_limit", "gmail", r"4\.7\.28|UnsolicitedRateLimitError", "Gmail rate-limits the IP (421-4.7.28)"),
    _sig("gmail_unauthenticated", "gmail", r"5\.7\.26", "Gmail refuses unauthenticated mail (5.7.26)"),
    _sig("gmail_blocked", "gmail",
         r"5\.7\.1 .*(?:likely unsolicited|blocked).*google|support\.google\.com/mail/\?p=Unsolicited",
         "Gmail blocks mail as unsolicited (5.7.1)"),
    _sig("yahoo_tss", "yahoo", r"\[TS[S]?0\d\]", "Yahoo defers or blocks the IP (TSS0x/TS0x)"),
    _sig("microsoft_block_list", "microsoft",
         r"\bS3150\b|\bS3140\b|\bS775\b|part of their network is on our block list",
         "Outlook/Hotmail has the IP on its block list (S3150)"),
    _sig("spamhaus", None, r"spamhaus", "The IP is listed by Spamhaus"),
    _sig("block_list", None,
         r"blocked using|listed (?:at|in|on)|\bblack ?list|\bblock ?list|\bDNSBL\b|\bRBL\b|spamcop|barracuda|sorbs",
         "The IP is on a DNS block list"),
)

_DOMAIN_PROVIDERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("gmail", ("gmail.com", "googlemail.com", "google.com")),
    ("yahoo", ("yahoo.com", "yahoo.co.uk", "ymail.com", "rocketmail.com", "aol.com", "yahoodns.net")),
    ("microsoft", ("outlook.com", "hotmail.com", "live.com", "msn.com", "protection.outlook.com", "office365.us")),
)
_HOST_PROVIDERS: tuple[tuple[str, str], ...] = (
    ("google.com", "gmail"),
    ("googlemail.com", "gmail"),
    ("yahoodns.net", "yahoo"),
    ("yahoo.com", "yahoo"),
    ("outlook.com", "microsoft"),
    ("hotmail.com", "microsoft"),
)


def match_signature(response: str | None) -> BlockSignature | None:
    if not response:
        return None
    text = response[:4096]
    for signature in SIGNATURES:
        if signature.pattern.search(text):
            return signature
    return None


def provider_of(recipient_domain: str | None, remote_host: str | None) -> str:
    """gmail, yahoo, microsoft or other, from the recipient domain, else the remote MX host."""
    domain = (recipient_domain or "").lower()
    for provider, domains in _DOMAIN_PROVIDERS:
        if domain in domains:
            return provider
    host = (remote_host or "").lower().rstrip(".")
    for suffix, provider in _HOST_PROVIDERS:
        if host == suffix or host.endswith("." + suffix):
            return provider
    return "other"
