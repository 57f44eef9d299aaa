"""An Exim main-log line grammar and a replay of the final-state rules, written independently of the
generator so the tests check its output against Exim's formats rather than against itself."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

PREFIX = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2}) (?P<time>\d{2}:\d{2}:\d{2})(?P<tz> [+-]\d{4})?(?: \[(?P<pid>\d+)\])? (?P<rest>.*)$"
)
OLD_ID = r"[0-9A-Za-z]{6}-[0-9A-Za-z]{6}-[0-9A-Za-z]{2}"
NEW_ID = r"[0-9A-Za-z]{6}-[0-9A-Za-z]{11}-[0-9A-Za-z]{4}"
MSGID = re.compile(rf"^(?P<id>{NEW_ID}|{OLD_ID}) (?P<body>.*)$")

QUOTED = r'"(?:[^"\\]|\\.)*"'
ADDR = r"[^\s<>()@]+@[A-Za-z0-9.-]+"
IP = r"\d{1,3}(?:\.\d{1,3}){3}"
HOST = rf"\S+ \[{IP}\]"
CLIENT = rf"(?:\S+ )?(?:\([^)\s]+\) )?\[{IP}\]:\d+"
FIELD = rf"(?P<addr>\S+)(?: \((?P<parent>{ADDR})\))?(?: <(?P<orig>{ADDR})>)?"

ARRIVAL = re.compile(
    rf"^<= (?P<sender><>|{ADDR})(?: R=(?P<parent_id>{NEW_ID}|{OLD_ID}))?(?: H={CLIENT})?(?: I=\[{IP}\]:\d+)?"
    rf"(?: U=(?P<user>[a-z0-9]+))? P=(?P<proto>local|esmtp|esmtps|esmtpa|esmtpsa)(?: X=\S+ CV=(?:yes|no))?"
    rf"(?: A=dovecot_(?:login|plain):{ADDR})? S=\d+(?: DKIM=\S+)?(?: id=\S+)? T={QUOTED}"
    rf" for (?P<for>{ADDR}(?: {ADDR})*)$"
)
DELIVERY = re.compile(
    rf"^(?P<flag>=>|->) {FIELD}(?: F=<(?:{ADDR})?>)? R=(?P<router>\w+)(?: T=(?P<transport>[\w*]+))?"
    rf"(?: H={HOST}\*?)?(?: X=\S+ CV=yes)?(?: C={QUOTED})?$"
)
DEFERRAL = re.compile(
    rf"^== {FIELD} R=(?P<router>\w+)(?: T=\w+)? defer \((?P<errno>-?\d+)\)(?: H={HOST})?: (?P<text>.+)$"
)
FAILURE = re.compile(
    rf"^\*\* {FIELD}(?: F=<(?:{ADDR})?>)?(?: R=\w+)?(?: T=\w+)?(?: H={HOST})?(?: X=\S+ CV=yes)?(?: : |: )(?P<text>.+)$"
)
MESSAGE_LINES = (
    re.compile(r"^Completed$"),
    re.compile(r"^Frozen (?:\(delivery error message\)|by the system filter: .+)$"),
    re.compile(rf"^H={HOST}:? .+$"),  # per-host error
    re.compile(
        rf'^H={CLIENT} Warning: "SpamAssassin as \w+ detected (?:OUTGOING smtp )?message as (?:NOT )?spam '
        r'\(-?\d+\.\d\)"$'
    ),
    re.compile(r"^Sender identification U=\w+ D=[a-z0-9.-]+ S=\w+$"),
    re.compile(rf"^SMTP connection outbound \d+ (?:{NEW_ID}|{OLD_ID}) [a-z0-9.-]+ {ADDR}$"),
    re.compile(r"^no immediate delivery: load average \d+\.\d\d$"),
    re.compile(r"^removed by root$"),  # exim -Mrm
)
PLAIN_LINES = (
    re.compile(
        r"^cwd=/home/\w+(?:/[\w/-]+)? (?:3 args: /usr/sbin/sendmail -t -i|4 args: /usr/sbin/sendmail -t -i -f\S+)$"
    ),
    re.compile(rf"^SMTP connection from \[{IP}\]:\d+ \(TCP/IP connection count = \d+\)$"),
    re.compile(rf"^SMTP connection from {CLIENT} D=\d+s (?:closed by QUIT|lost)$"),
    re.compile(rf"^H={CLIENT} F=<{ADDR}> rejected RCPT <{ADDR}>: .+$"),
    re.compile(r"^(?:Start|End) queue run: pid=\d+$"),
    re.compile(rf"^cwd=/var/spool/exim 3 args: /usr/sbin/exim -Mc (?:{NEW_ID}|{OLD_ID})$"),
    re.compile(rf"^cwd=/(?:root|usr/local/cpanel/whostmgr/docroot) 3 args: /usr/sbin/exim -Mrm (?:{NEW_ID}|{OLD_ID})$"),
)


def line_problem(line: str) -> str | None:
    """Why ``line`` is not a line this generator may write, or None."""
    if not line.isascii() or not line.isprintable():
        return "non-printable or non-ASCII character"
    prefix = PREFIX.match(line)
    if prefix is None:
        return "bad prefix"
    rest = prefix["rest"]
    with_id = MSGID.match(rest)
    if with_id is None:
        return None if any(p.match(rest) for p in PLAIN_LINES) else "unknown line without message id"
    body = with_id["body"]
    if body.startswith("<= "):
        return None if ARRIVAL.match(body) else "bad <= line"
    if body.startswith(("=> ", "-> ")):
        return None if DELIVERY.match(body) else "bad => / -> line"
    if body.startswith("== "):
        return None if DEFERRAL.match(body) else "bad == line"
    if body.startswith("** "):
        return None if FAILURE.match(body) else "bad ** line"
    return None if any(p.match(body) for p in MESSAGE_LINES) else "unknown message line"


def message_line(line: str) -> tuple[str, str] | None:
    """(message id, the rest) of a line about a message."""
    prefix = PREFIX.match(line)
    m = MSGID.match(prefix["rest"]) if prefix is not None else None
    return (m["id"], m["body"]) if m is not None else None


def epoch(date: str, clock: str) -> int:
    from datetime import UTC, datetime

    return int(datetime.fromisoformat(f"{date}T{clock}").replace(tzinfo=UTC).timestamp())


@dataclass
class RecipientState:
    final: str
    attempts: int
    times: list[tuple[int, str]] = field(default_factory=list)  # (time, "attempt"/"wait"/"archive"/"final")


def recipient_of(match: re.Match[str]) -> tuple[str, str | None]:
    """The recipient (first token with @) and the original (the <...> part when it differs)."""
    candidates = [match["addr"], match["parent"], match["orig"]]
    recipient = next(c for c in candidates if c and "@" in c)
    original = match["orig"] if match["orig"] and match["orig"] != recipient else None
    return recipient, original


def replay(lines: list[str]) -> tuple[dict[tuple[str, str], RecipientState], int]:
    """The final state of every (msgid, recipient) by the documented rules, and the rejection count."""
    states: dict[tuple[str, str], RecipientState] = {}
    listed: dict[str, list[str]] = defaultdict(list)
    aliases: dict[tuple[str, str], str] = {}
    rejections = 0
    for line in lines:
        prefix = PREFIX.match(line)
        assert prefix is not None, line
        rest = prefix["rest"]
        t = epoch(prefix["date"], prefix["time"])
        with_id = MSGID.match(rest)
        if with_id is None:
            if " rejected RCPT " in rest:
                rejections += 1
            continue
        msgid, body = with_id["id"], with_id["body"]
        if (m := ARRIVAL.match(body)) is not None:
            listed[msgid] = m["for"].split()
            continue
        kind = None
        if (m := DELIVERY.match(body)) is not None:
            filtered = m["addr"] in ("/dev/null", ":blackhole:") or m["transport"] == "**bypassed**"
            archived = m["router"].startswith("archiver_") or (m["transport"] or "").startswith("archiver_")
            kind = "archived" if archived else "filtered" if filtered else "delivered"
        elif (m := DEFERRAL.match(body)) is not None:
            kind = "wait" if m["errno"] == "-54" else "deferred"
        elif (m := FAILURE.match(body)) is not None:
            text = m["text"]
            expired = "retry timeout exceeded" in text or "have been failing for a long time" in text
            kind = "expired" if expired else "bounced"
        elif body.startswith("Frozen"):
            for key, state in states.items():
                if key[0] == msgid and state.final in ("deferred",):
                    state.final = "frozen"
            for address in listed.get(msgid, []):
                if (msgid, address) not in aliases:
                    states.setdefault((msgid, address), RecipientState("frozen", 0))
            continue
        elif body.startswith("removed by "):
            # an administrator removed the message: whatever had no outcome yet never will
            for key, state in states.items():
                if key[0] == msgid and state.final in ("deferred", "frozen", "in_progress"):
                    state.final = "cancelled"
                    state.times.append((t, "final"))
            for address in listed.get(msgid, []):
                if (msgid, address) not in aliases:
                    states.setdefault((msgid, address), RecipientState("cancelled", 0))
            continue
        if kind is None or m is None:
            continue
        recipient, original = recipient_of(m)
        aliases[(msgid, original or recipient)] = recipient
        state = states.setdefault((msgid, recipient), RecipientState("in_progress", 0))
        if kind == "wait":
            state.final = "deferred"
            state.times.append((t, "wait"))
        elif kind == "archived":
            # the archive copy of an unseen router: a delivery of its own, not a retry of the recipient
            state.final = kind
            state.attempts += 1
            state.times.append((t, "archive"))
        else:
            state.final = kind
            state.attempts += 1
            state.times.append((t, "attempt"))
    for msgid, addresses in listed.items():
        for address in addresses:
            if (msgid, address) not in aliases and (msgid, address) not in states:
                states[(msgid, address)] = RecipientState("in_progress", 0)
    return states, rejections
