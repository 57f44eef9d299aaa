"""Exim main-log line parser: one line in, one ``ParsedLine`` out, never an exception.

Grammar: Exim spec chapter "Log files" plus ``deliver.c``/``receive.c``/``smtp_in.c`` (see
``research/mission.md`` §2). Design for speed: one regex for the usual prefix, a cached time
conversion, dispatch on the flag or the first word, and a split-on-space token walk for fields.
Every regex here is linear (no nested quantifiers) and every string is bounded.
"""

from __future__ import annotations

import calendar
import re
import time as _time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, tzinfo

from processors.exim.types import LineKind, ParsedLine

MAX_RAW = 16384  # characters of a line that are kept and parsed
MAX_FIELD = 8192  # characters per extracted string
MAX_ITEMS = 1000  # entries per list (recipients, parents)

# 16 chars (XXXXXX-XXXXXX-XX) and 23 chars (XXXXXX-XXXXXXXXXXX-XXXX, 4.97+); lengths in between are
# accepted too, as hand-written examples and damaged logs carry them
_MSGID = r"[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}"
_MSGID_RE = re.compile(_MSGID + r"\Z")
# YYYY-MM-DD HH:MM:SS[.fff][+ZZZZ] [[pid]] [msgid] -- the whole usual prefix in one match
_PREFIX_RE = re.compile(
    r"(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d)(\.\d{1,9})?"
    r"(?:(Z|[+-]\d\d:?\d\d)| ([+-]\d{4}))?(?= |\Z)"
    r"(?: +\[p?(\d{1,10})\](?= |\Z))?"
    r"(?: +(" + _MSGID + r")(?= |\Z))?"
    r" *"
)
_BSD_TIME_RE = re.compile(r"([A-Z][a-z]{2}) +(\d{1,2}) (\d\d):(\d\d):(\d\d)(?:\.\d{1,9})? +")
_SYSLOG_TAG_RE = re.compile(r"(?:[^\s\[\]]{1,255} +)?[A-Za-z0-9_./-]{1,64}\[(\d{1,10})\]: *")
_PART_RE = re.compile(r"\[(\d{1,4})([\\/])(\d{1,4})\] *")
_PID_RE = re.compile(r"\[p?(\d{1,10})\] +")
_OCTAL_OR_ESCAPE_RE = re.compile(r"((?:\\[0-7]{3})+)|\\(.)", re.DOTALL)
_ENHANCED_RE = re.compile(r"(?<![.\d])([245]\.\d{1,3}\.\d{1,3})(?![.\d])")
_SPAM_SCORE_RE = re.compile(r"score=(-?\d{1,6}(?:\.\d{1,6})?)")

_MONTHS = {
    m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)
}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "e": "\x1b", "a": "\a"}

# tags that may follow an address on delivery lines (end of the address/parents part)
_DELIVERY_TAGS = frozenset(
    {"A", "C", "CV", "DKIM", "DN", "DS", "DT", "F", "H", "I", "K", "L", "M8S", "P", "PRDR", "PRX", "PS", "Q"}
    | {"QT", "R", "S", "SRS", "ST", "T", "TFO", "X"}
)
_BARE_FLAGS = frozenset(("K", "L", "L*", "L-", "L.", "PRDR", "DS", "TFO", "DMARC", "SPF", "*"))
# SMTP command named in an error text -> normalised phase
_AFTER_WORDS = ("server", "mailer", "error", "timeout", "timed out")
_CONNECT_ERRORS = (
    "Connection refused",
    "Connection timed out",
    "Connection reset",
    "No route to host",
    "Network is unreachable",
    "Host is unreachable",
)
_CODE_RE = re.compile(r"[2-5]\d\d(?=[ -]|\Z)")
_ERRNO_PHASE = {
    -44: "rcpt",
    -45: "mail",
    -46: "data",
    -37: "starttls",
    -38: "starttls",
    -42: "auth",
    -48: "auth",
    -43: "connect",
    101: "connect",
    110: "connect",
    111: "connect",
    113: "connect",
}
_TIME_CACHES: dict[tzinfo, dict[str, float | None]] = {}
_UTC_CACHE: dict[str, float | None] = {}


# ---------------------------------------------------------------------------------------------- helpers


def _text(raw: object) -> tuple[str, int]:
    """Bounded text of a line and its original length (bytes are decoded with replacement)."""
    if isinstance(raw, str):
        size = len(raw)
        line = raw[:MAX_RAW] if size > MAX_RAW else raw
    elif isinstance(raw, bytes | bytearray | memoryview):
        size = len(raw)
        line = bytes(raw[:MAX_RAW]).decode("utf-8", "replace")
    else:
        line = str(raw)[:MAX_RAW]
        size = len(line)
    if line.endswith("\n"):
        line = line[:-2] if line.endswith("\r\n") else line[:-1]
    elif line.endswith("\r"):
        line = line[:-1]
    return line, size


def _unescape(s: str) -> str:
    """Undo Exim's C-like quoting: ``\\"``, ``\\\\``, ``\\n``/``\\t``/..., octal bytes read as UTF-8."""
    if "\\" not in s:
        return s
    return _OCTAL_OR_ESCAPE_RE.sub(_unescape_one, s)


def _unescape_one(m: re.Match[str]) -> str:
    octal = m.group(1)
    if octal is not None:
        data = bytes(int(octal[k + 1 : k + 4], 8) & 0xFF for k in range(0, len(octal), 4))
        return data.decode("utf-8", "replace")
    char = m.group(2)
    return _ESCAPES.get(char, char)


def _closes(tok: str, start: int) -> bool:
    """True when ``tok`` ends in a double quote (at index >= start) that is not backslash-escaped."""
    end = len(tok) - 1
    if end < start or tok[end] != '"':
        return False
    k = end - 1
    while k >= start and tok[k] == "\\":
        k -= 1
    return (end - 1 - k) % 2 == 0


def _take_quoted(tokens: list[str], i: int, n: int, first: str) -> tuple[str, int]:
    """Value starting with a quote in ``first`` (tokens[i:] follow): unescaped content, next index."""
    if _closes(first, 1):
        return _unescape(first[1:-1]), i
    start = i
    while i < n:
        tok = tokens[i]
        i += 1
        if _closes(tok, 0):
            return _unescape(" ".join([first, *tokens[start:i]])[1:-1]), i
    return _unescape(" ".join([first, *tokens[start:i]])[1:]), i  # unterminated: the rest


def _take_group(tokens: list[str], i: int, n: int, first: str, close: str) -> tuple[str, int]:
    """A ``(...)`` or ``<...>`` group that may contain spaces: text without brackets, next index."""
    if first.endswith(close):
        return first[1:-1], i
    start = i
    limit = min(n, i + 24)
    opener = first[0]
    while i < limit:
        tok = tokens[i]
        if tok[:1] == opener or 0 < tok.find("=") < 4:  # a new group or a tag: this group was never closed
            break
        i += 1
        if tok.endswith(close):
            return " ".join([first, *tokens[start:i]])[1:-1], i
    return first[1:], start  # never closed: keep only the first token


def _take_address(tokens: list[str], i: int, n: int, first: str) -> tuple[str, int]:
    """An address token; a quoted local part with spaces (``"a b"@x``) spans several tokens."""
    if first.count('"') % 2 == 0:
        return first, i
    start = i
    limit = min(n, i + 32)
    while i < limit:
        tok = tokens[i]
        i += 1
        if tok.count('"') % 2:
            return " ".join([first, *tokens[start:i]]), i
    return first, start


def _strip_angle(s: str) -> str:
    if s.startswith("<"):
        s = s[1:-1] if s.endswith(">") else s[1:]
    return s


def _to_int(s: str) -> int | None:
    if s.isdigit() and len(s) < 19:
        return int(s)
    if s[:1] == "-" and s[1:].isdigit() and len(s) < 19:
        return int(s)
    return None


def _ip_token(p: ParsedLine, tok: str) -> bool:
    """Fill host_ip/port/reused from ``[ip]:port*``; True when a ':' separator was glued to it."""
    close = tok.find("]")
    if close < 0:
        p.host_ip = tok[1:]
        return False
    p.host_ip = tok[1:close]
    after = tok[close + 1 :]
    colon = False
    if after:
        if after.endswith(":"):
            colon = True
            after = after[:-1]
        if after.endswith("*"):
            p.host_reused = True
            after = after[:-1]
        if after[:1] == ":":
            p.host_port = _to_int(after[1:])
    return colon


def _take_host(p: ParsedLine, tokens: list[str], i: int, n: int, first: str) -> tuple[int, bool]:
    """``name (helo) [ip]:port`` and its variants, starting with ``first`` (the H= value).

    Returns the next token index and whether a ':' separator ended the host part.
    """
    if first[:1] == "[":
        return i, _ip_token(p, first)
    if first[:1] == "(":
        p.helo, i = _take_group(tokens, i, n, first, ")")
    else:
        bracket = first.find("[")
        if bracket > 0:  # damaged: name[ip]:port with no space
            p.host = first[:bracket]
            return i, _ip_token(p, first[bracket:])
        if first.endswith(":") and (i >= n or tokens[i][:1] not in ("[", "(")):
            p.host = first[:-1]
            return i, True
        p.host = first
    while i < n:
        tok = tokens[i]
        c = tok[:1]
        if c == "[":
            return i + 1, _ip_token(p, tok)
        if c == "(" and p.helo is None:
            p.helo, i = _take_group(tokens, i + 1, n, tok, ")")
        elif tok == "DS":
            p.extra["DS"] = "1"
            i += 1
        else:
            break
    return i, False


def _interface(p: ParsedLine, value: str) -> None:
    if value[:1] == "[":
        close = value.find("]")
        if close > 0:
            p.interface_ip = value[1:close]
            port = value[close + 2 :] if value[close + 1 : close + 2] == ":" else ""
            if port:
                p.extra["interface_port"] = port
            return
    p.interface_ip = value


def _epoch_utc(stamp: str) -> float | None:
    try:
        return (
            float(
                calendar.timegm(
                    (
                        int(stamp[0:4]),
                        int(stamp[5:7]),
                        int(stamp[8:10]),
                        int(stamp[11:13]),
                        int(stamp[14:16]),
                        int(stamp[17:19]),
                        0,
                        0,
                        0,
                    )
                )
            )
            if _valid_stamp(stamp)
            else None
        )
    except (ValueError, OverflowError):
        return None


def _valid_stamp(stamp: str) -> bool:
    month, day = int(stamp[5:7]), int(stamp[8:10])
    return (
        1 <= month <= 12
        and 1 <= day <= 31
        and int(stamp[11:13]) < 24
        and int(stamp[14:16]) < 60
        and int(stamp[17:19]) < 61
        and int(stamp[0:4]) >= 1
    )


def _epoch(stamp: str, zone: str | None, default_tz: tzinfo) -> float | None:
    """Epoch seconds of ``YYYY-MM-DD HH:MM:SS`` (+ zone text), cached: a log repeats each second."""
    cache = _TIME_CACHES.get(default_tz)
    if cache is None:
        cache = _TIME_CACHES.setdefault(default_tz, {})
    key = stamp if zone is None else stamp + zone
    if key in cache:
        return cache[key]
    if len(cache) > 8192:
        cache.clear()
    result = _compute_epoch(stamp, zone, default_tz)
    cache[key] = result
    return result


def local_epoch(stamp: str, default_tz: tzinfo) -> float | None:
    """Epoch seconds of ``YYYY-MM-DD HH:MM:SS`` read in ``default_tz`` (the native parser asks for these)."""
    return _epoch(stamp, None, default_tz)


def _compute_epoch(stamp: str, zone: str | None, default_tz: tzinfo) -> float | None:
    if zone is not None:
        base = _epoch_utc(stamp)
        if base is None:
            return None
        if zone == "Z":
            return base
        digits = zone[1:].replace(":", "")
        offset = int(digits[:2]) * 3600 + int(digits[2:4]) * 60
        return base - offset if zone[0] == "+" else base + offset
    if default_tz is UTC:
        return _epoch_utc(stamp)
    if not _valid_stamp(stamp):
        return None
    try:
        moment = datetime(
            int(stamp[0:4]),
            int(stamp[5:7]),
            int(stamp[8:10]),
            int(stamp[11:13]),
            int(stamp[14:16]),
            min(int(stamp[17:19]), 59),
            tzinfo=default_tz,
        )
        return moment.timestamp()
    except (ValueError, OverflowError):
        return None


def _bsd_epoch(m: re.Match[str], default_tz: tzinfo) -> float | None:
    """``Feb 14 18:12:33`` has no year: take the current one, or last year if that lies ahead."""
    month = _MONTHS.get(m.group(1))
    if month is None:
        return None
    now = _time.time()
    year = datetime.fromtimestamp(now, default_tz).year
    for candidate in (year, year - 1):
        stamp = f"{candidate:04d}-{month:02d}-{int(m.group(2)):02d} {m.group(3)}:{m.group(4)}:{m.group(5)}"
        value = _epoch(stamp, None, default_tz)
        if value is None or value <= now + 2 * 86400:
            return value
    return None


def _response(p: ParsedLine, text: str) -> None:
    """SMTP reply code, enhanced status code and phase from an error or response text."""
    phase = _phase_in(text)
    if phase is None:
        if p.errno is not None:
            phase = _ERRNO_PHASE.get(p.errno)
        if phase is None:
            if "TLS" in text:
                phase = "starttls"
            else:
                for needle in _CONNECT_ERRORS:
                    if needle in text:
                        phase = "connect"
                        break
    p.smtp_phase = phase
    start = 0
    k = text.find(": host ")  # pre-4.80 form: "...: host NAME [IP]: 550 ..."
    if k >= 0:
        _old_host(p, text, k + 7)
        start = k
    for m in _CODE_RE.finditer(text, start):
        at = m.start()
        if at == 0 or text[at - 2 : at] in (": ", "\\n"):  # a reply starts the text or follows ": " / "\n"
            p.smtp_code = int(m.group(0))
            e = _ENHANCED_RE.match(text, m.end() + 1, m.end() + 24)
            if e is None and text[m.end() + 1 : m.end() + 2] == "#":
                e = _ENHANCED_RE.match(text, m.end() + 2, m.end() + 24)
            p.enhanced_code = e.group(1) if e is not None else None
            return
    e = _ENHANCED_RE.search(text)
    if e is not None and e.group(1)[0] in "45":
        p.enhanced_code = e.group(1)


def _phase_in(text: str) -> str | None:
    """Phase from "... server/mailer/error/timeout after <cmd>" or "in response to <cmd>"."""
    k = text.find(" after ")
    while k >= 0:
        if text.endswith(_AFTER_WORDS, max(0, k - 12), k):
            return _phase_of(text[k + 7 : k + 47])
        k = text.find(" after ", k + 7)
    k = text.find("in response to ")
    if k >= 0:
        return _phase_of(text[k + 15 : k + 55])
    return None


def _old_host(p: ParsedLine, text: str, start: int) -> None:
    open_ = text.find(" [", start, start + 300)
    close = text.find("]", open_ + 2, open_ + 64) if open_ > 0 else -1
    if open_ > 0 and close > 0 and p.host_ip is None:
        p.host = text[start:open_]
        p.host_ip = text[open_ + 2 : close]


def _phase_of(cmd: str) -> str | None:
    if cmd.startswith("pipelined "):
        cmd = cmd[10:]
    if cmd.startswith("initial connection"):
        return "connect"
    if cmd.startswith("end of data"):
        return "end_of_data"
    head = cmd[:8].upper()
    if head.startswith(("EHLO", "HELO", "LHLO")):
        return "ehlo"
    if head.startswith("STARTTLS"):
        return "starttls"
    if head.startswith("AUTH"):
        return "auth"
    if head.startswith("MAIL"):
        return "mail"
    if head.startswith("RCPT"):
        return "rcpt"
    if head.startswith(("DATA", "BDAT")) or cmd.startswith("sending data"):
        return "data"
    return None


# ---------------------------------------------------------------------------------------------- flagged lines


def _arrival(p: ParsedLine, body: str) -> None:
    """``<= sender [R=ref] H= I= U= P= X= A= S= id= T="..." from <x> for a b c`` (and ``(=``)."""
    tokens = body.split(" ")
    n = len(tokens)
    first = tokens[0]
    address, i = _take_address(tokens, 1, n, first)
    p.address = "" if address == "<>" else address
    extra = p.extra
    while i < n:
        tok = tokens[i]
        i += 1
        eq = tok.find("=")
        if eq > 0:
            tag = tok[:eq]
            value = tok[eq + 1 :]
            if tag == "H":
                i, _ = _take_host(p, tokens, i, n, value)
            elif tag == "T":
                if value[:1] == '"':
                    p.subject, i = _take_quoted(tokens, i, n, value)
                else:
                    p.subject = value
            elif tag == "S":
                p.size = _to_int(value)
            elif tag == "P":
                p.protocol = value
            elif tag == "U":
                p.user = value
            elif tag == "id" or tag == "id*":
                p.message_id_header = value
                if tag == "id*":
                    extra["id_created"] = "1"
            elif tag == "X":
                p.tls = value
            elif tag == "A":
                p.auth = value
            elif tag == "R":
                p.bounce_parent = value
            elif tag == "I":
                _interface(p, value)
            elif value[:1] == '"':
                extra[tag], i = _take_quoted(tokens, i, n, value)
            else:
                extra[tag] = value
        elif tok == "for":
            _recipients(p, tokens, i, n)
            break
        elif tok == "from" and i < n and tokens[i][:1] == "<":
            value, i = _take_group(tokens, i + 1, n, tokens[i], ">")
            extra["from"] = value
        elif tok:
            extra[tok] = "1"


def _recipients(p: ParsedLine, tokens: list[str], i: int, n: int) -> None:
    recipients = p.recipients
    while i < n:
        tok = tokens[i]
        i += 1
        if not tok:
            continue
        if tok == "<trunc>":
            p.extra["recipients_truncated"] = "1"
            break
        if len(recipients) >= MAX_ITEMS:
            p.extra["recipients_truncated"] = "1"
            break
        if tok.count('"') % 2:
            tok, i = _take_address(tokens, i, n, tok)
        recipients.append(tok)


def _delivery_head(p: ParsedLine, tokens: list[str], n: int) -> tuple[int, bool]:
    """Address, ``(parent, ...)`` and ``<top>`` parts. Returns next index, and whether a ':' ended it."""
    first = tokens[0]
    i = 1
    if first[:1] == "|" or first == "save":  # pipe commands and filter file names may hold spaces
        while i < n:
            tok = tokens[i]
            c = tok[:1]
            if c == "(" or c == "<" or tok == "defer" or _is_delivery_tag(tok):
                break
            i += 1
        address = " ".join(tokens[:i])
    else:
        address, i = _take_address(tokens, i, n, first)
    colon = False
    if address.endswith(":") and address != ":blackhole:":
        address = address[:-1]
        colon = True
    p.address = address
    parents = p.parents
    while not colon and i < n:
        tok = tokens[i]
        c = tok[:1]
        if c == "(":
            group, i = _take_group(tokens, i + 1, n, tok.rstrip(":"), ")")
            parents.extend(part for part in group.split(", ") if part)
        elif c == "<":
            colon = tok.endswith(":")
            group, i = _take_group(tokens, i + 1, n, tok.rstrip(":"), ">")
            parents.append(group)
        elif not tok:
            i += 1
        else:
            break
    if len(parents) > MAX_ITEMS:
        del parents[MAX_ITEMS:]
    return i, colon


def _is_delivery_tag(tok: str) -> bool:
    eq = tok.find("=")
    if eq > 0:
        return tok[:eq] in _DELIVERY_TAGS
    return False


def _delivery_fields(p: ParsedLine, tokens: list[str], i: int, n: int, stop_on_text: bool) -> int:
    """Tagged fields of =>, ->, >>, *>, ** and == lines.

    With ``stop_on_text`` (** and ==) returns the index where the error message starts (n if none).
    """
    extra = p.extra
    while i < n:
        tok = tokens[i]
        i += 1
        eq = tok.find("=")
        if 0 < eq < 9 and tok[0].isalpha():
            tag = tok[:eq]
            value = tok[eq + 1 :]
            if tag == "C" or (value[:1] == '"' and tag in ("DN", "T")):
                value, i = _take_quoted(tokens, i, n, value) if value[:1] == '"' else (value, i)
                if tag == "C":
                    p.confirmation = value
                else:
                    extra[tag] = value
                continue
            if tag == "H":
                i, colon = _take_host(p, tokens, i, n, value)
                if colon and stop_on_text:
                    return i
                continue
            colon = stop_on_text and value.endswith(":") and i < n
            if colon:
                value = value[:-1]
            if tag == "R":
                p.router = value
            elif tag == "T":
                p.transport = value
            elif tag == "F":
                p.sender = _strip_angle(value)
            elif tag == "P":
                extra["return_path"] = _strip_angle(value)
            elif tag == "X":
                p.tls = value
            elif tag == "A":
                p.auth = value
            elif tag == "S":
                p.size = _to_int(value)
            elif tag == "I":
                _interface(p, value)
            elif tag[0].isupper() or tag in ("id", "Ci"):
                extra[tag] = value
            elif stop_on_text:
                return i - 1
            else:
                extra[tag] = value
            if colon:
                return i
        elif not tok:
            continue
        elif tok in _BARE_FLAGS:
            extra[tok] = "1"
        elif stop_on_text:
            if tok == ":":
                return i
            if tok == "defer" and i < n and tokens[i][:1] == "(":
                i = _defer(p, tokens, i, n)
                if i < 0:
                    return -i
                continue
            if tok in ("routing", "transporting") and i < n and tokens[i] == "defer":
                extra["driver"] = tok
                continue
            return i - 1
        else:
            extra.setdefault("unparsed", tok)
    return n


def _defer(p: ParsedLine, tokens: list[str], i: int, n: int) -> int:
    """``(errno)[: strerror]`` after ``defer``. Returns the next index, negative when a message follows."""
    tok = tokens[i]
    i += 1
    colon = tok.endswith(":")
    inner = tok[1 : tok.rfind(")")] if ")" in tok else tok[1:]
    p.errno = _to_int(inner)
    if p.errno is None:
        p.extra["errno_text"] = inner
    if not colon:
        return i
    if p.errno is not None and p.errno <= 0:  # Exim's own codes: no strerror, the message follows
        return -i
    start = i  # strerror runs to H=, DT=, or a word with ':' glued (then the message follows)
    while i < n:
        word = tokens[i]
        if word.startswith(("H=", "DT=")):
            if i > start:
                p.extra["strerror"] = " ".join(tokens[start:i])
            return i
        i += 1
        if word.endswith(":"):
            p.extra["strerror"] = " ".join(tokens[start:i])[:-1]
            return -i
    if i > start:
        p.extra["strerror"] = " ".join(tokens[start:i])
    return i


def _delivery(p: ParsedLine, body: str) -> None:
    """``=> addr (parents) <top> F=<> P=<> R= T= S= H= I= PS= X= CV= DN= A= L K C="..." QT= DT=``."""
    tokens = body.split(" ")
    n = len(tokens)
    i, _ = _delivery_head(p, tokens, n)
    _delivery_fields(p, tokens, i, n, False)


def _failure_or_deferral(p: ParsedLine, body: str) -> None:
    """``** addr <top> F= P= R= T= H= X= : [strerror: ]message [DT=]`` and ``== ... defer (N)...: msg``."""
    tokens = body.split(" ")
    n = len(tokens)
    i, colon = _delivery_head(p, tokens, n)
    if not colon:
        i = _delivery_fields(p, tokens, i, n, True)
    if i < n:
        message = " ".join(tokens[i:]).lstrip(" ")
        if message.startswith(": "):
            message = message[2:]
        dt = message.rfind(" DT=")
        if dt >= 0 and " " not in message[dt + 4 :]:
            p.extra["DT"] = message[dt + 4 :]
            message = message[:dt]
        p.error = message
    elif "strerror" in p.extra:
        p.error = p.extra["strerror"]
    if p.error:
        _response(p, p.error)
        if p.error.endswith("error ignored"):
            p.extra["error_ignored"] = "1"
    elif p.errno is not None:
        p.smtp_phase = _ERRNO_PHASE.get(p.errno)


_FLAGS: dict[str, tuple[LineKind, Callable[[ParsedLine, str], None]]] = {
    "<=": (LineKind.ARRIVAL, _arrival),
    "(=": (LineKind.FAKEREJECT, _arrival),
    "=>": (LineKind.DELIVERY, _delivery),
    "->": (LineKind.DELIVERY_MORE, _delivery),
    ">>": (LineKind.CUTTHROUGH, _delivery),
    "*>": (LineKind.SUPPRESSED, _delivery),
    "**": (LineKind.FAILURE, _failure_or_deferral),
    "==": (LineKind.DEFERRAL, _failure_or_deferral),
}


# ---------------------------------------------------------------------------------------------- other lines


def _session(p: ParsedLine, tokens: list[str], i: int, n: int) -> int:
    """Leading SMTP-session fields (``H= U= F= A= I= X= CV= P= S= Ci=``...). Returns the verb index."""
    extra = p.extra
    while i < n:
        tok = tokens[i]
        eq = tok.find("=")
        if not (0 < eq < 7) or not tok[0].isupper():
            if tok:
                return i
            i += 1
            continue
        i += 1
        tag = tok[:eq]
        value = tok[eq + 1 :]
        if tag == "H":
            i, _ = _take_host(p, tokens, i, n, value)
        elif tag == "F":
            p.sender = _strip_angle(value)
        elif tag == "U":
            p.user = value
        elif tag == "A":
            p.auth = value
        elif tag == "I":
            _interface(p, value)
        elif tag == "X":
            p.tls = value
        elif tag == "P":
            p.protocol = value
        elif tag == "S":
            p.size = _to_int(value)
        elif value[:1] == '"':
            extra[tag], i = _take_quoted(tokens, i, n, value)
        else:
            extra[tag] = value
    return n


def _after_colon(text: str, start: int = 0) -> str | None:
    k = text.find(": ", start)
    return text[k + 2 :] if k >= 0 else None


def _rejection(p: ParsedLine, text: str) -> bool:
    """``[temporarily ]rejected <where> <arg>: msg``, ``sender verify fail for <x>: msg``..."""
    temporary = False
    t = text
    if t.startswith("temporarily "):
        temporary = True
        t = t[12:]
    if t.startswith("rejected "):
        t = t[9:]
        where, rest = t.partition(" ")[::2]
        if where == "after":
            where, rest = rest.partition(" ")[::2]
        elif where == "by":
            where = "NON_SMTP" if rest.startswith("non-SMTP") else rest.partition(" ")[0].rstrip(":").upper()
        elif where == "connection":
            where = "CONNECT"
        elif where == "EHLO" and rest.startswith("or HELO"):
            rest = rest[8:]
        glued = where.endswith(":")  # "rejected after DATA: message"
        where = where.rstrip(":").upper()[:32]
        p.error = rest if glued else _rejection_arg(p, where, rest)
    elif t.startswith(("sender verify ", "recipient verify ")):
        which, _, rest = t.partition(" verify ")
        outcome, _, rest = rest.partition(" ")
        temporary = temporary or outcome == "defer"
        where = "SENDER_VERIFY" if which == "sender" else "RECIPIENT_VERIFY"
        if rest.startswith("for <"):
            close = rest.find(">")
            if close > 0:
                addr = rest[5:close]
                if which == "sender":
                    p.sender = addr
                else:
                    p.recipients.append(addr)
                rest = rest[close + 1 :]
        p.error = _after_colon(rest)
    elif t.startswith("dropped by "):
        q1 = t.find("'")
        q2 = t.find("'", q1 + 1) if q1 >= 0 else -1
        where = t[q1 + 1 : q2].upper()[:32] if q2 > q1 >= 0 else "ACL"
        p.error = _after_colon(t)
        p.extra["dropped"] = "1"
    elif t.startswith("rejected:"):
        where = "DATA"
        p.error = t[10:]
    else:
        return False
    p.kind = LineKind.REJECTION
    p.extra["where"] = where
    p.extra["temporary"] = "1" if temporary else "0"
    if p.error:
        _response(p, p.error)
    return True


def _rejection_arg(p: ParsedLine, where: str, rest: str) -> str | None:
    """The argument of a rejected command (``<addr>``, ``FROM:<addr>``, a HELO name) and the message."""
    if rest.startswith(("<", "FROM:<", "TO:<")):
        open_ = rest.find("<")
        close = rest.find(">", open_)
        if close > 0:
            addr = rest[open_ + 1 : close]
            if where == "MAIL":
                p.sender = addr
            else:
                p.recipients.append(addr)
            tail = rest[close + 1 :]
            if tail.startswith(": "):
                return tail[2:]
            u = tail.find(" U=")
            if u >= 0:
                p.user = tail[u + 3 :].partition(":")[0].partition(" ")[0]
            return _after_colon(tail)
    if where in ("RCPT", "MAIL", "VRFY", "EHLO", "HELO", "ETRN", "EXPN") and rest:
        arg, sep, tail = rest.partition(": ")
        arg = arg.partition(" ")[0]
        if arg:
            if where == "RCPT":
                p.recipients.append(arg)
            elif where == "MAIL":
                p.sender = arg
            else:
                p.extra["argument"] = arg
        return tail if sep else None
    return _after_colon(rest)


def _spam_warning(p: ParsedLine, text: str) -> bool:
    """cPanel ``Warning: "SpamAssassin as <user> detected [OUTGOING smtp ]message as [NOT ]spam (n)"``."""
    k = text.find("detected ")
    if k < 0:
        return False
    k2 = text.find(" as NOT spam (", k)
    if k2 >= 0:
        is_spam, start = False, k2 + 14
    else:
        k2 = text.find(" as spam (", k)
        if k2 < 0:
            return False
        is_spam, start = True, k2 + 10
    end = text.find(")", start, start + 32)
    try:
        p.spam_score = float(text[start:end]) if end > start else None
    except ValueError:
        p.spam_score = None
    p.is_spam = is_spam
    p.kind = LineKind.SPAM_SCORE
    sa = text.find("SpamAssassin as ")
    if sa >= 0:
        p.extra["scanner"] = text[sa + 16 : k].strip()
    if "OUTGOING" in text[k : k + 40]:
        p.extra["direction"] = "outgoing"
    return True


def _host_line(p: ParsedLine, tokens: list[str], n: int) -> None:
    """Lines led by ``H=`` (or ``U=``/``F=``): rejections, warnings, per-host delivery errors."""
    j = _session(p, tokens, 0, n)
    text = " ".join(tokens[j:]) if j < n else ""
    if text.startswith(": "):
        text = text[2:]
    elif text == ":":
        text = ""
    if _rejection(p, text):
        return
    if text.startswith("Warning:"):
        if not _spam_warning(p, text):
            p.kind = LineKind.MESSAGE_INFO if p.msgid else LineKind.PROTOCOL
            p.detail = text
        return
    if text.startswith(("SMTP protocol", "SMTP syntax", "incomplete transaction", "SMTP command", "SMTP data")):
        p.kind = LineKind.PROTOCOL
        p.detail = text
        return
    if p.msgid and p.host_ip is not None and text:
        p.kind = LineKind.HOST_ERROR
        p.error = text
        _response(p, text)
        return
    p.kind = LineKind.NOTE
    p.detail = text


def _fullhost_after(p: ParsedLine, text: str, marker: str) -> str:
    """Parse the client ``name (helo) [ip]:port I= Ci= D=`` after ``marker``; returns what follows."""
    k = text.find(marker)
    if k < 0:
        return text
    tokens = text[k + len(marker) :].split(" ")
    n = len(tokens)
    if not n or not tokens[0]:
        return ""
    i, _ = _take_host(p, tokens, 1, n, tokens[0])
    i = _session(p, tokens, i, n)
    return " ".join(tokens[i:])


def _words_line(p: ParsedLine, rest: str) -> None:
    """Unflagged lines: dispatch on the first word(s)."""
    first, _, tail = rest.partition(" ")
    handler = _WORD_HANDLERS.get(first)
    if handler is not None and handler(p, rest, tail):
        return
    if first.startswith(("H=", "U=", "F=")) and len(first) > 2:
        tokens = rest.split(" ")
        _host_line(p, tokens, len(tokens))
        return
    if first.startswith("cwd="):
        p.kind = LineKind.ARGUMENTS
        cwd, _, args = rest.partition(" ")
        p.extra["cwd"] = cwd[4:]
        count, _, argv = args.partition(" args: ")
        if argv or count.isdigit():
            p.extra["argc"] = count
            p.extra["args"] = argv
        return
    if tail == "error ignored" or tail.endswith(": error ignored") or (first.endswith(":") and tail == "error ignored"):
        _error_ignored(p, rest)
        return
    if tail.startswith("authenticator failed H=") and p.msgid:  # Exim as client: per-host error
        tokens = tail[21:].split(" ")
        j = _session(p, tokens, 0, len(tokens))
        p.kind = LineKind.HOST_ERROR
        p.extra["authenticator"] = first
        p.error = " ".join(tokens[j:])
        _response(p, p.error)
        p.smtp_phase = "auth"
        return
    if tail.startswith("router: ") or tail.startswith("transport: "):
        p.kind = LineKind.MESSAGE_INFO if p.msgid else LineKind.DAEMON
        p.detail = rest
        return
    if first[:1] == "[" and _w_bracket_ip(p, rest, tail):
        return
    if tail.startswith("authenticator failed for "):
        p.kind = LineKind.PROTOCOL
        p.extra["authenticator"] = first
        after = _fullhost_after(p, tail, "failed for ")
        if after.startswith(": "):
            after = after[2:]
        p.error = after
        p.detail = "authenticator failed"
        m = _CODE_RE.match(after)
        if m is not None:
            p.smtp_code = int(m.group(0))
        p.smtp_phase = "auth"
        return
    if tail[:1] == "[" and p.msgid:  # "name [ip] Connection refused" per-host error (older form)
        p.host = first
        tokens = tail.split(" ")
        colon = _ip_token(p, tokens[0])
        text = " ".join(tokens[1:])
        if text.startswith(": "):
            text = text[2:]
        elif colon is False and text.startswith(":"):
            text = text[1:].lstrip()
        p.kind = LineKind.HOST_ERROR
        p.error = text
        _response(p, text)
        return
    p.kind = LineKind.NOTE
    p.detail = rest


def _error_ignored(p: ParsedLine, rest: str) -> None:
    p.kind = LineKind.ERROR_IGNORED
    head = rest[: rest.rfind(":")] if ":" in rest else rest.partition(" ")[0]
    tokens = head.split(" ")
    n = len(tokens)
    _delivery_head(p, tokens, n)
    p.detail = "error ignored"


def _w_completed(p: ParsedLine, rest: str, tail: str) -> bool:
    p.kind = LineKind.COMPLETED
    if tail:
        for tok in tail.split(" "):
            eq = tok.find("=")
            if eq > 0:
                p.extra[tok[:eq]] = tok[eq + 1 :]
    return True


def _w_frozen(p: ParsedLine, rest: str, tail: str) -> bool:
    p.kind = LineKind.FROZEN
    p.detail = tail.strip("()") if tail.startswith("(") else (tail or None)
    return True


def _w_unfrozen(p: ParsedLine, rest: str, tail: str) -> bool:
    p.kind = LineKind.UNFROZEN
    p.detail = tail[3:] if tail.startswith("by ") else (tail or None)
    return True


def _w_cancelled(p: ParsedLine, rest: str, tail: str) -> bool:
    if not tail.startswith("by "):
        return False
    p.kind = LineKind.CANCELLED
    p.detail = rest
    return True


def _w_message(p: ParsedLine, rest: str, tail: str) -> bool:
    if tail.startswith("is frozen") or tail.startswith("is not frozen") or tail.startswith("is locked"):
        p.kind = LineKind.MESSAGE_INFO
        p.detail = rest
        return True
    return False


def _w_spool(p: ParsedLine, rest: str, tail: str) -> bool:
    p.kind = LineKind.MESSAGE_INFO if p.msgid or "locked" in tail else LineKind.DAEMON
    p.detail = rest
    if p.msgid is None:
        k = tail.find("for ")
        if k >= 0:
            candidate = tail[k + 4 :].partition(" ")[0]
            if _MSGID_RE.match(candidate):
                p.msgid = candidate
    return True


def _w_queue(p: ParsedLine, rest: str, tail: str) -> bool:
    if not tail.startswith("queue run"):
        return False
    p.kind = LineKind.QUEUE_RUN
    p.detail = "start" if rest[0] == "S" else "end"
    k = tail.find("pid=")
    if k >= 0:
        pid = tail[k + 4 :].partition(" ")[0].rstrip(",:")
        p.extra["queue_runner_pid"] = pid
        if p.pid is None:
            p.pid = _to_int(pid)
    return True


def _w_smtp(p: ParsedLine, rest: str, tail: str) -> bool:
    if tail.startswith("connection identification "):
        _connection_identification(p, tail[26:])
        return True
    if tail.startswith("connection outbound "):
        parts = tail[20:].split(" ")
        p.kind = LineKind.CONNECTION_OUTBOUND
        if parts and parts[0].isdigit():
            p.extra["timestamp"] = parts[0]
        if len(parts) > 1 and p.msgid is None and _MSGID_RE.match(parts[1]):
            p.msgid = parts[1]
        if len(parts) > 2:
            p.cpanel_domain = parts[2]
        if len(parts) > 3:
            p.recipients.extend(x for x in parts[3 : MAX_ITEMS + 3] if x)
        return True
    if tail.startswith(("connection from ", "call from ")):
        p.kind = LineKind.CONNECTION
        p.detail = _fullhost_after(p, tail, "from ")
        return True
    if tail.startswith("connection ") and " from " in tail[:80]:  # 4.97+: "SMTP connection Ci=N from"
        p.kind = LineKind.CONNECTION
        head = tail[11 : tail.find(" from ")].split(" ")
        _session(p, head, 0, len(head))
        p.detail = _fullhost_after(p, tail, " from ")
        return True
    if tail.startswith(("command timeout", "data timeout", "incomplete transaction")):
        p.kind = LineKind.CONNECTION
        p.detail = tail
        if " from " in tail:
            after = _fullhost_after(p, tail, " from ")
            if after:
                p.extra["after"] = after
        return True
    if tail.startswith(("protocol ", "syntax error")):
        p.kind = LineKind.PROTOCOL
        p.detail = tail
        k = tail.find(" H=")
        if k >= 0:
            tokens = tail[k + 1 :].split(" ")
            j = _session(p, tokens, 0, len(tokens))
            p.error = " ".join(tokens[j:])
        return True
    if tail.startswith(("error from remote mail", "error from remote mailer")) and p.msgid:
        p.kind = LineKind.HOST_ERROR
        p.error = rest
        _response(p, rest)
        return True
    return False


def _connection_identification(p: ParsedLine, text: str) -> None:
    """cPanel: ``SMTP connection identification H=... A=ip P=port M=msgid U=user ID=uid S=sender B=how``."""
    p.kind = LineKind.CONNECTION_IDENT
    tokens = text.split(" ")
    n = len(tokens)
    i = 0
    while i < n:
        tok = tokens[i]
        i += 1
        eq = tok.find("=")
        if eq <= 0:
            continue
        tag, value = tok[:eq], tok[eq + 1 :]
        if tag == "H":
            i, _ = _take_host(p, tokens, i, n, value)
        elif tag == "U":
            p.user = value
        elif tag == "S":
            p.sender = value
        elif tag == "M":
            p.extra["M"] = value
            if p.msgid is None and _MSGID_RE.match(value):
                p.msgid = value
        elif tag == "A":
            p.extra["client_ip"] = value
            if p.host_ip is None:
                p.host_ip = value
        elif tag == "P":
            p.extra["client_port"] = value
            if p.host_port is None:
                p.host_port = _to_int(value)
        else:
            p.extra[tag] = value


def _w_sender(p: ParsedLine, rest: str, tail: str) -> bool:
    if not tail.startswith("identification "):
        return False
    p.kind = LineKind.SENDER_IDENT
    for tok in tail[15:].split(" "):
        eq = tok.find("=")
        if eq <= 0:
            continue
        tag, value = tok[:eq], tok[eq + 1 :]
        if tag == "U":
            p.user = value
        elif tag == "D":
            p.cpanel_domain = value
        elif tag == "S":
            p.sender = value
        else:
            p.extra[tag] = value
    return True


def _w_no(p: ParsedLine, rest: str, tail: str) -> bool:
    if tail.startswith("MAIL in SMTP connection from "):
        p.kind = LineKind.CONNECTION
        p.detail = "no MAIL"
        after = _fullhost_after(p, tail, "connection from ")
        if after:
            p.extra["after"] = after
        return True
    if tail.startswith(("host name found", "IP address found")):
        p.kind = LineKind.CONNECTION
        p.detail = rest
        k = tail.rfind(" [")
        if tail.startswith("host name") and tail.rfind(" ") > 0:
            p.host_ip = tail[tail.rfind(" ") + 1 :]
        elif k > 0:
            _ip_token(p, tail[k + 1 :].rstrip(")").partition(" ")[0])
        return True
    if tail.startswith("immediate delivery"):
        p.kind = LineKind.MESSAGE_INFO if p.msgid else LineKind.DAEMON
        p.detail = rest
        return True
    return False


def _w_tls(p: ParsedLine, rest: str, tail: str) -> bool:
    p.kind = LineKind.PROTOCOL
    p.detail = rest
    for marker in ("connection from ", "connection to "):
        if marker in tail:
            after = _fullhost_after(p, tail, marker)
            if after:
                p.error = after[2:] if after.startswith(": ") else after
            break
    p.smtp_phase = "starttls"
    return True


def _w_dkim(p: ParsedLine, rest: str, tail: str) -> bool:
    p.kind = LineKind.MESSAGE_INFO if p.msgid else LineKind.PROTOCOL
    p.detail = rest
    for tok in tail.split(" "):
        if tok.startswith("d="):
            p.extra["dkim_domain"] = tok[2:]
            break
    return True


def _w_warning(p: ParsedLine, rest: str, tail: str) -> bool:
    if not _spam_warning(p, rest):
        p.kind = LineKind.MESSAGE_INFO if p.msgid else LineKind.DAEMON
        p.detail = rest
    return True


def _w_sa(p: ParsedLine, rest: str, tail: str) -> bool:
    """sa-exim: ``SA: Action: flagged as Spam but accepted: score=8.2 required=5.0 ...``."""
    if not tail.startswith("Action:"):
        return False
    p.kind = LineKind.SPAM_SCORE
    m = _SPAM_SCORE_RE.search(tail)
    if m is not None:
        p.spam_score = float(m.group(1))
    action = tail[8:].partition(":")[0]
    p.is_spam = "isn't spam" not in action and "not spam" not in action
    p.detail = action
    return True


def _w_daemon(p: ParsedLine, rest: str, tail: str) -> bool:
    p.kind = LineKind.DAEMON
    p.detail = rest
    return True


def _w_exim(p: ParsedLine, rest: str, tail: str) -> bool:
    if "daemon" not in tail[:40] and "started" not in tail[:60]:
        return False
    return _w_daemon(p, rest, tail)


def _w_connection(p: ParsedLine, rest: str, tail: str) -> bool:
    if not tail.startswith("from "):
        return False
    p.kind = LineKind.CONNECTION
    p.detail = _fullhost_after(p, tail, "from ")
    return True


def _w_unexpected(p: ParsedLine, rest: str, tail: str) -> bool:
    if not tail.startswith("disconnection"):
        return False
    p.kind = LineKind.CONNECTION
    p.detail = "unexpected disconnection"
    after = _fullhost_after(p, tail, " from ")
    if after:
        p.extra["after"] = after
    return True


def _w_refused(p: ParsedLine, rest: str, tail: str) -> bool:
    if not tail.startswith("connection from "):
        return False
    p.kind = LineKind.CONNECTION
    p.detail = "refused connection"
    after = _fullhost_after(p, tail, "from ")
    if after:
        p.extra["after"] = after
    return True


def _w_rejected(p: ParsedLine, rest: str, tail: str) -> bool:
    return _rejection(p, rest)


def _w_verb(p: ParsedLine, rest: str, tail: str) -> bool:
    """``VRFY failed for x H=...`` / ``EXPN ...`` / ``ETRN ...``: SMTP session commands."""
    p.kind = LineKind.PROTOCOL
    p.detail = rest
    k = rest.find(" H=")
    if k >= 0:
        tokens = rest[k + 1 :].split(" ")
        _session(p, tokens, 0, len(tokens))
    return True


def _w_remote(p: ParsedLine, rest: str, tail: str) -> bool:
    """Older per-host line: ``Remote host NAME [IP] closed connection in response to ...``."""
    if not tail.startswith("host ") or not p.msgid:
        return False
    p.kind = LineKind.HOST_ERROR
    p.error = rest
    _old_host(p, rest, 12)
    _response(p, rest)
    return True


def _w_problem(p: ParsedLine, rest: str, tail: str) -> bool:
    """Configuration, expansion, taint, scanner and spool problems: about a message or the daemon."""
    p.kind = LineKind.MESSAGE_INFO if p.msgid else LineKind.DAEMON
    p.detail = rest
    return True


def _w_acl(p: ParsedLine, rest: str, tail: str) -> bool:
    return tail[:1] == '"' and _w_problem(p, rest, tail)


def _w_tls_problem(p: ParsedLine, rest: str, tail: str) -> bool:
    """TLS/DANE/OCSP lines: per-host delivery errors when they carry a message id."""
    if p.msgid and ("connection to " in tail or "lookup for " in tail):
        p.kind = LineKind.HOST_ERROR
        p.error = rest
        k = rest.find("connection to ")
        if k >= 0:
            _fullhost_after(p, rest, "connection to ")
        p.smtp_phase = "starttls"
        return True
    p.kind = LineKind.PROTOCOL
    p.detail = rest
    p.smtp_phase = "starttls"
    return True


def _w_bracket_ip(p: ParsedLine, rest: str, tail: str) -> bool:
    """``[ip] SSL verify error: ...`` written while a TLS session to or from [ip] starts."""
    if not tail.startswith("SSL verify"):
        return False
    _ip_token(p, rest.partition(" ")[0])
    p.kind = LineKind.PROTOCOL
    p.detail = tail
    p.smtp_phase = "starttls"
    return True


def _w_lifecycle_lower(p: ParsedLine, rest: str, tail: str) -> bool:
    word = rest.partition(" ")[0]
    if word == "frozen":
        return _w_frozen(p, rest, tail)
    if word == "unfrozen":
        return _w_unfrozen(p, rest, tail)
    if word == "removed" and tail.startswith("by "):
        p.kind = LineKind.CANCELLED
        p.detail = rest
        return True
    return False


_WORD_HANDLERS: dict[str, Callable[[ParsedLine, str, str], bool]] = {
    "Completed": _w_completed,
    "Frozen": _w_frozen,
    "frozen": _w_lifecycle_lower,
    "Unfrozen": _w_unfrozen,
    "unfrozen": _w_lifecycle_lower,
    "removed": _w_lifecycle_lower,
    "cancelled": _w_cancelled,
    "Message": _w_message,
    "Spool": _w_spool,
    "Start": _w_queue,
    "End": _w_queue,
    "SMTP": _w_smtp,
    "Sender": _w_sender,
    "no": _w_no,
    "TLS": _w_tls,
    "DKIM:": _w_dkim,
    "Warning:": _w_warning,
    "SA:": _w_sa,
    "exim": _w_exim,
    "daemon:": _w_daemon,
    "daemon": _w_daemon,
    "SIGHUP": _w_daemon,
    "pid": _w_daemon,
    "Connection": _w_connection,
    "unexpected": _w_unexpected,
    "refused": _w_refused,
    "rejected": _w_rejected,
    "temporarily": _w_rejected,
    "VRFY": _w_verb,
    "EXPN": _w_verb,
    "ETRN": _w_verb,
    "Remote": _w_remote,
    "sender": _w_rejected,
    "recipient": _w_rejected,
    "Failed": _w_problem,
    "failed": _w_problem,
    "Expansion": _w_problem,
    "Error": _w_problem,
    "Tainted": _w_problem,
    "tainted": _w_problem,
    "malware": _w_problem,
    "spool": _w_problem,
    "re-exec": _w_problem,
    "timed": _w_problem,
    "original": _w_problem,
    "moved": _w_problem,
    "qualify/rewrite:": _w_problem,
    "ACL": _w_acl,
    "LOG:": _w_problem,
    "Peer": _w_tls_problem,
    "Server": _w_tls_problem,
    "Required": _w_tls_problem,
    "OCSP": _w_tls_problem,
    "DANE": _w_tls_problem,
}


# ---------------------------------------------------------------------------------------------- entry points


def _prefix_slow(p: ParsedLine, line: str, default_tz: tzinfo) -> int:
    """Syslog/journal prefixes, with or without Exim's own timestamp after them. Returns the body start."""
    pos = 0
    m = _PREFIX_RE.match(line)
    if m is not None:
        _apply_prefix(p, m, default_tz)
        pos = m.end()
        if p.pid is not None or p.msgid is not None:
            return pos
    else:
        b = _BSD_TIME_RE.match(line)
        if b is not None:
            p.time = _bsd_epoch(b, default_tz)
            pos = b.end()
    tag = _SYSLOG_TAG_RE.match(line, pos)
    if tag is None:
        return pos
    pos = tag.end()
    p.pid = int(tag.group(1))
    part = _PART_RE.match(line, pos)
    if part is not None:
        p.extra["part"] = f"{part.group(1)}/{part.group(3)}"
        pos = part.end()
        if part.group(1) != "1":
            p.kind = LineKind.CONTINUATION
            return pos
    m = _PREFIX_RE.match(line, pos)
    if m is not None:
        _apply_prefix(p, m, default_tz)
        return m.end()
    pid = _PID_RE.match(line, pos)
    if pid is not None:
        p.pid = int(pid.group(1))
        pos = pid.end()
    return pos


def _apply_prefix(p: ParsedLine, m: re.Match[str], default_tz: tzinfo) -> None:
    stamp, frac, zone, zone_spaced, pid, msgid = m.groups()
    t = _epoch(stamp, zone or zone_spaced, default_tz)
    if t is not None and frac is not None:
        t += float(frac)
    p.time = t
    if t is None:
        p.extra["bad_time"] = stamp
    if pid is not None:
        p.pid = int(pid)
    if msgid is not None:
        p.msgid = msgid


def _parse(raw: object, default_tz: tzinfo) -> ParsedLine:
    if type(raw) is bytes and len(raw) <= MAX_RAW:  # the usual case, inlined
        size = 0
        line = raw.decode("utf-8", "replace")
        if line[-1:] == "\n":
            line = line[:-2] if line[-2:] == "\r\n" else line[:-1]
    else:
        line, size = _text(raw)
    p = ParsedLine(LineKind.UNKNOWN, line)
    if size > MAX_RAW + 2:
        p.extra["truncated_from"] = str(size)
    m = _PREFIX_RE.match(line)
    if m is not None:
        stamp, frac, zone, zone_spaced, pid, msgid = m.groups()
        pos = m.end()
        if pid is None and msgid is None and "]: " in line[pos : pos + 300]:
            m = None  # a syslog tag follows the timestamp
    if m is not None:
        if zone is None and zone_spaced is None and default_tz is UTC:
            t = _UTC_CACHE.get(stamp, False)
            if t is False:
                t = _epoch(stamp, None, UTC)
                _UTC_CACHE[stamp] = t
                if len(_UTC_CACHE) > 8192:
                    _UTC_CACHE.clear()
        else:
            t = _epoch(stamp, zone or zone_spaced, default_tz)
        if t is None:
            p.extra["bad_time"] = stamp
        elif frac is not None:
            t += float(frac)
        p.time = t
        if pid is not None:
            p.pid = int(pid)
        p.msgid = msgid
    else:
        pos = _prefix_slow(p, line, default_tz)
        if p.kind is LineKind.CONTINUATION:
            p.detail = line[pos:]
            return _bounded(p, line) if len(line) > MAX_FIELD else p
        if p.time is None and "bad_time" not in p.extra:
            p.kind = LineKind.CONTINUATION if _printable(line) else LineKind.UNKNOWN
            p.detail = line if p.kind is LineKind.CONTINUATION else "no timestamp and not text"
            return _bounded(p, line) if len(line) > MAX_FIELD else p
    rest = line[pos:]
    if not rest:
        p.detail = "nothing after the prefix"
        return p
    entry = _FLAGS.get(rest[:2])
    if entry is not None and (rest[2:3] == " " or (p.msgid is not None and len(rest) > 2)):
        p.kind = entry[0]
        body = rest[3:] if rest[2:3] == " " else rest[2:]
        if body[:1] == " ":
            body = body.lstrip(" ")
        if body:
            entry[1](p, body)
        else:
            p.kind = LineKind.UNKNOWN
            p.detail = "flag without a body"
    else:
        _words_line(p, rest)
    return _bounded(p, line) if len(line) > MAX_FIELD else p


def _printable(line: str) -> bool:
    """Plausible log text (a continuation) rather than binary noise."""
    if not line.strip():
        return False
    sample = line[:256]
    bad = sum(1 for c in sample if (c < " " and c != "\t") or c == "\ufffd")
    return bad * 8 < len(sample)


_STRING_FIELDS = (
    "address",
    "sender",
    "router",
    "transport",
    "bounce_parent",
    "host",
    "helo",
    "host_ip",
    "interface_ip",
    "user",
    "auth",
    "protocol",
    "subject",
    "message_id_header",
    "tls",
    "confirmation",
    "error",
    "enhanced_code",
    "smtp_phase",
    "cpanel_domain",
    "detail",
)


def _bounded(p: ParsedLine, line: str) -> ParsedLine:
    """Every string within MAX_FIELD (only long lines can exceed it)."""
    if len(line) <= MAX_FIELD:
        return p
    p.raw = line
    for name in _STRING_FIELDS:
        value = getattr(p, name)
        if value is not None and len(value) > MAX_FIELD:
            setattr(p, name, value[:MAX_FIELD])
    p.recipients = [r[:MAX_FIELD] for r in p.recipients[:MAX_ITEMS]]
    p.parents = [r[:MAX_FIELD] for r in p.parents[:MAX_ITEMS]]
    p.extra = {k[:64]: v[:MAX_FIELD] for k, v in list(p.extra.items())[:256]}
    return p


def parse_line(raw: bytes | str, *, default_tz: tzinfo = UTC) -> ParsedLine:
    """Parse one main-log line. Never raises: on an internal error the kind is UNKNOWN and
    ``detail`` says why. Times without a zone are read in ``default_tz``."""
    try:
        return _parse(raw, default_tz)
    except Exception as exc:  # a parser bug must not stop the stream; the line is dead-lettered
        try:
            line = _text(raw)[0]
        except Exception:
            line = ""
        return ParsedLine(LineKind.UNKNOWN, line, detail=f"parser error: {type(exc).__name__}")


def parse_lines(lines: Iterable[bytes | str], *, default_tz: tzinfo = UTC) -> Iterator[ParsedLine]:
    """Parse a sequence of lines. A CONTINUATION line inherits the time, pid and message id of the
    last line that had a timestamp (the line it continues)."""
    last: ParsedLine | None = None
    for raw in lines:
        parsed = parse_line(raw, default_tz=default_tz)
        if parsed.kind is LineKind.CONTINUATION:
            if last is not None:
                if parsed.time is None:
                    parsed.time = last.time
                if parsed.msgid is None:
                    parsed.msgid = last.msgid
                if parsed.pid is None:
                    parsed.pid = last.pid
        elif parsed.time is not None:
            last = parsed
        yield parsed
