//! Exim main-log line parser, a port of `processors/exim/parser.py` (`parse_line`): one line in, one
//! `ParsedLine` out, equal field for field to the Python one on every input.
//!
//! Strings borrow from the decoded line wherever Python's value is a plain slice of it; only unescaped,
//! re-joined or case-mapped values are owned. Python indexes text by code point: every window and cut
//! below does too (see `parser_text`). Where Python raises (its `int()` of a non-decimal Unicode digit),
//! the result is Python's "parser error" line.

use std::borrow::Cow;
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::time::{SystemTime, UNIX_EPOCH};

use super::parser_prefix::{
    bsd_epoch, common_parts, epoch, match_bsd, match_part, match_pid, match_prefix, match_syslog_tag, prefix_epoch,
    stamp_only, Prefix, Zone,
};
use super::parser_text::{
    advance, char_len, contains_within, eq_char_index, find, find_byte, first_char, is_alpha, is_upper, position,
    printable, py_float, rfind, to_int, unescape,
};
use super::types::{LineKind, LocalClock, ParsedLine};

pub const MAX_RAW: usize = 16384;
pub const MAX_FIELD: usize = 8192;
pub const MAX_ITEMS: usize = 1000;

type Text<'a> = Cow<'a, str>;

/// Tags that may follow an address on delivery lines (they end a pipe command's words).
const DELIVERY_TAGS: [&str; 26] = [
    "A", "C", "CV", "DKIM", "DN", "DS", "DT", "F", "H", "I", "K", "L", "M8S", "P", "PRDR", "PRX", "PS", "Q", "QT", "R",
    "S", "SRS", "ST", "T", "TFO", "X",
];
const BARE_FLAGS: [&str; 11] = ["K", "L", "L*", "L-", "L.", "PRDR", "DS", "TFO", "DMARC", "SPF", "*"];
const AFTER_WORDS: [&str; 5] = ["server", "mailer", "error", "timeout", "timed out"];

/// The clock for logs written in UTC.
pub struct UtcClock;

impl LocalClock for UtcClock {
    fn local_epoch(&mut self, stamp: &str) -> Option<f64> {
        let field = |from: usize, to: usize| stamp.get(from..to).and_then(|part| part.parse::<i64>().ok());
        let (year, month, day) = (field(0, 4)?, field(5, 7)?, field(8, 10)?);
        let (hour, minute, second) = (field(11, 13)?, field(14, 16)?, field(17, 19)?);
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
            return None;
        }
        let days = super::parser_prefix::days_from_civil(year, month, day);
        Some((days * 86400 + hour * 3600 + minute * 60 + second.min(59)) as f64)
    }

    fn is_utc(&self) -> bool {
        true
    }

    fn now(&self) -> f64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
    }

    fn current_year(&mut self) -> i32 {
        year_of_epoch(self.now())
    }
}

/// Days in a month of the proleptic Gregorian calendar.
pub fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// The calendar year of an epoch second (UTC).
pub fn year_of_epoch(seconds: f64) -> i32 {
    let days = (seconds / 86400.0).floor() as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2)) as i32
}

/// Parse one main-log line (without its trailing newline): `parse_line(raw, default_tz=...)`.
#[inline]
pub fn parse_line<'a>(raw: &'a [u8], clock: &mut dyn LocalClock) -> ParsedLine<'a> {
    // Small and inlined: the result is built where the caller keeps it (no copy of the large struct).
    let (bytes, size) = if raw.len() <= MAX_RAW {
        let line = match raw {
            [head @ .., b'\r', b'\n'] => head,
            [head @ .., b'\n'] => head,
            _ => raw,
        };
        (line, 0)
    } else {
        (strip_line_end(&raw[..MAX_RAW]), raw.len())
    };
    if let Some((line, _)) = decode(bytes) {
        let mut parsed = ParsedLine::new(LineKind::Unknown, Cow::Borrowed(line));
        return match guarded(&mut parsed, line, size, clock, ParseFor::default()) {
            Ok(()) => parsed,
            Err(detail) => failed(raw, detail),
        };
    }
    parse_repaired(raw, bytes, size, clock)
}

/// What a parse fills in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// Every field, as `parse_line` does.
    Full,
    /// What the correlator reads. It never reads `extra`, which is left empty (but for the keys the
    /// parser reads back). It reads only the kind and time of a line without a message id (a rejection
    /// aside), so an ASCII connection line without one is not taken apart further: its kind is known
    /// from its words, and only a non-ASCII digit could still make its fields fail to parse.
    Correlated,
}

/// `*line = parse_line(raw, clock)`, reusing `line`'s storage: every field of `line` is overwritten (what it
/// held before does not matter) and its vectors keep their capacity, so a caller that parses many lines
/// of one buffer into the same `ParsedLine` allocates nothing per line in the common case.
#[inline]
pub fn parse_line_into<'a>(raw: &'a [u8], clock: &mut dyn LocalClock, line: &mut ParsedLine<'a>) {
    parse_line_with(raw, clock, line, Detail::Full);
}

/// `parse_line_into` that fills in what `detail` asks for.
#[inline]
pub fn parse_line_with<'a>(raw: &'a [u8], clock: &mut dyn LocalClock, line: &mut ParsedLine<'a>, detail: Detail) {
    let (bytes, size) = if raw.len() <= MAX_RAW {
        let text = match raw {
            [head @ .., b'\r', b'\n'] => head,
            [head @ .., b'\n'] => head,
            _ => raw,
        };
        (text, 0)
    } else {
        (strip_line_end(&raw[..MAX_RAW]), raw.len())
    };
    if let Some((text, ascii)) = decode(bytes) {
        reset(line, Cow::Borrowed(text));
        let parse_for = ParseFor { correlator: detail == Detail::Correlated, ascii };
        if let Err(detail) = guarded(line, text, size, clock, parse_for) {
            *line = failed(raw, detail);
        }
        return;
    }
    *line = parse_repaired(raw, bytes, size, clock);
}

/// The line as text when it is valid UTF-8, and whether it is ASCII: almost every line is, which is
/// checked faster.
#[inline]
fn decode(bytes: &[u8]) -> Option<(&str, bool)> {
    if is_ascii(bytes) {
        // SAFETY: ASCII is valid UTF-8.
        return Some((unsafe { std::str::from_utf8_unchecked(bytes) }, true));
    }
    std::str::from_utf8(bytes).ok().map(|text| (text, false))
}

/// `bytes.is_ascii()`, 32 bytes a step.
#[inline]
fn is_ascii(bytes: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128};
        let mut at = 0;
        while at + 32 <= bytes.len() {
            // SAFETY: the 32 bytes at `at` are in bounds (checked above); the loads are unaligned.
            let high = unsafe {
                let first = _mm_loadu_si128(bytes.as_ptr().add(at).cast());
                let second = _mm_loadu_si128(bytes.as_ptr().add(at + 16).cast());
                _mm_movemask_epi8(_mm_or_si128(first, second))
            };
            if high != 0 {
                return false;
            }
            at += 32;
        }
        bytes[at..].is_ascii()
    }
    #[cfg(not(target_arch = "x86_64"))]
    bytes.is_ascii()
}

/// `*p = ParsedLine::new(LineKind::Unknown, raw)`, keeping the vectors' capacity (field by field: no
/// temporary line is built and copied).
#[inline]
fn reset<'a>(p: &mut ParsedLine<'a>, text: Cow<'a, str>) {
    // every field named (no `..`): a field added to ParsedLine must be added here
    let ParsedLine {
        kind,
        raw,
        time,
        msgid,
        pid,
        address,
        parents,
        sender,
        recipients,
        router,
        transport,
        bounce_parent,
        host,
        helo,
        host_ip,
        host_port,
        host_reused,
        interface_ip,
        user,
        auth,
        protocol,
        size,
        subject,
        message_id_header,
        tls,
        confirmation,
        errno,
        error,
        smtp_code,
        enhanced_code,
        smtp_phase,
        spam_score,
        is_spam,
        cpanel_domain,
        detail,
        extra,
    } = p;
    *kind = LineKind::Unknown;
    *raw = text;
    *time = None;
    *msgid = None;
    *pid = None;
    *address = None;
    parents.clear();
    *sender = None;
    recipients.clear();
    *router = None;
    *transport = None;
    *bounce_parent = None;
    *host = None;
    *helo = None;
    *host_ip = None;
    *host_port = None;
    *host_reused = false;
    *interface_ip = None;
    *user = None;
    *auth = None;
    *protocol = None;
    *size = None;
    *subject = None;
    *message_id_header = None;
    *tls = None;
    *confirmation = None;
    *errno = None;
    *error = None;
    *smtp_code = None;
    *enhanced_code = None;
    *smtp_phase = None;
    *spam_score = None;
    *is_spam = None;
    *cpanel_domain = None;
    *detail = None;
    extra.clear();
}

/// A line that is not valid UTF-8: parsed from its repaired text, then detached from it.
#[cold]
fn parse_repaired<'a>(raw: &'a [u8], bytes: &[u8], size: usize, clock: &mut dyn LocalClock) -> ParsedLine<'a> {
    let line = String::from_utf8_lossy(bytes).into_owned();
    let mut parsed = ParsedLine::new(LineKind::Unknown, Cow::Borrowed(line.as_str()));
    match guarded(&mut parsed, &line, size, clock, ParseFor::default()) {
        Ok(()) => into_owned(parsed),
        Err(detail) => failed(raw, detail),
    }
}

/// `parse_text` where a panic (a bug) gives an UNKNOWN line, as Python's exceptions do.
#[inline(never)]
fn guarded<'b>(
    parsed: &mut ParsedLine<'b>,
    line: &'b str,
    size: usize,
    clock: &mut dyn LocalClock,
    parse_for: ParseFor,
) -> Result<(), &'static str> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse_text(parsed, line, size, clock, parse_for))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(())) => Err("parser error: ValueError"),
        Err(_) => Err("parser error: panic"),
    }
}

/// `_text`'s end of line handling: "\r\n", "\n" or "\r".
fn strip_line_end(bytes: &[u8]) -> &[u8] {
    match bytes {
        [head @ .., b'\r', b'\n'] => head,
        [head @ .., b'\n'] | [head @ .., b'\r'] => head,
        _ => bytes,
    }
}

/// What `parse_line` returns when Python's `_parse` raised.
#[cold]
fn failed<'a>(raw: &'a [u8], detail: &'static str) -> ParsedLine<'a> {
    let line = String::from_utf8_lossy(strip_line_end(&raw[..raw.len().min(MAX_RAW)]));
    let mut parsed = ParsedLine::new(LineKind::Unknown, line);
    parsed.detail = Some(Cow::Borrowed(detail));
    parsed
}

fn own(text: Text<'_>) -> Text<'static> {
    Cow::Owned(text.into_owned())
}

fn own_opt(text: Option<Text<'_>>) -> Option<Text<'static>> {
    text.map(own)
}

/// A line parsed from its owned (repaired) text, detached from it.
fn into_owned(p: ParsedLine<'_>) -> ParsedLine<'static> {
    ParsedLine {
        kind: p.kind,
        raw: own(p.raw),
        time: p.time,
        msgid: own_opt(p.msgid),
        pid: p.pid,
        address: own_opt(p.address),
        parents: p.parents.into_iter().map(own).collect(),
        sender: own_opt(p.sender),
        recipients: p.recipients.into_iter().map(own).collect(),
        router: own_opt(p.router),
        transport: own_opt(p.transport),
        bounce_parent: own_opt(p.bounce_parent),
        host: own_opt(p.host),
        helo: own_opt(p.helo),
        host_ip: own_opt(p.host_ip),
        host_port: p.host_port,
        host_reused: p.host_reused,
        interface_ip: own_opt(p.interface_ip),
        user: own_opt(p.user),
        auth: own_opt(p.auth),
        protocol: own_opt(p.protocol),
        size: p.size,
        subject: own_opt(p.subject),
        message_id_header: own_opt(p.message_id_header),
        tls: own_opt(p.tls),
        confirmation: own_opt(p.confirmation),
        errno: p.errno,
        error: own_opt(p.error),
        smtp_code: p.smtp_code,
        enhanced_code: own_opt(p.enhanced_code),
        smtp_phase: own_opt(p.smtp_phase),
        spam_score: p.spam_score,
        is_spam: p.is_spam,
        cpanel_domain: own_opt(p.cpanel_domain),
        detail: own_opt(p.detail),
        extra: p.extra.into_iter().map(|(k, v)| (own(k), own(v))).collect(),
    }
}

/// Time of a prefix match (`_apply_prefix` / the inlined fast path of `_parse`).
fn prefix_time(m: &Prefix<'_>, clock: &mut dyn LocalClock) -> Option<f64> {
    let t = prefix_epoch(m, clock)?;
    Some(match m.frac {
        Some(frac) => t + py_float(frac).unwrap_or(0.0),
        None => t,
    })
}

/// `_parse` on the decoded, bounded line. Err when Python would raise.
fn parse_text<'a>(
    p: &mut ParsedLine<'a>,
    line: &'a str,
    size: usize,
    clock: &mut dyn LocalClock,
    parse_for: ParseFor,
) -> Result<(), ()> {
    let mut c = Ctx { line, p, err: false, extra_index: None, parse_for };
    if size > MAX_RAW + 2 {
        c.p.set_extra("truncated_from", size.to_string());
    }
    if let Some((stamp_text, utc_base, msgid, end)) = common_parts(line) {
        // the usual `YYYY-MM-DD HH:MM:SS [msgid ]` (what `match_prefix` and `apply_prefix` do for it)
        if msgid.is_some() || !tag_end_within(line, end) {
            let t = if clock.is_utc() {
                utc_base
            } else {
                stamp_only(line, 0).and_then(|stamp| epoch(&stamp, Zone::Default, clock))
            };
            c.p.time = t;
            if t.is_none() {
                c.set_extra("bad_time", stamp_text);
            }
            if let Some(msgid) = msgid {
                c.p.msgid = Some(Cow::Borrowed(msgid));
            }
            return c.body(&line[end..]);
        }
    }
    let mut m = match_prefix(line, 0);
    if let Some(found) = &m {
        if found.pid.is_none() && found.msgid.is_none() && tag_end_within(line, found.end) {
            m = None; // a syslog tag follows the timestamp
        }
    }
    let pos = match m {
        Some(m) => {
            c.apply_prefix(&m, clock);
            m.end
        }
        None => {
            let pos = c.prefix_slow(clock);
            if c.p.kind == LineKind::Continuation {
                c.p.detail = Some(Cow::Borrowed(&line[pos..]));
                return c.finish();
            }
            if c.p.time.is_none() && c.p.get_extra("bad_time").is_none() {
                if printable(line) {
                    c.p.kind = LineKind::Continuation;
                    c.p.detail = Some(Cow::Borrowed(line));
                } else {
                    c.p.kind = LineKind::Unknown;
                    c.p.detail = Some(Cow::Borrowed("no timestamp and not text"));
                }
                return c.finish();
            }
            pos
        }
    };
    c.body(&line[pos..])
}

impl<'a> Ctx<'a, '_> {
    /// The rest of `_parse` once the prefix is read: `rest` is what follows it.
    fn body(self, rest: &'a str) -> Result<(), ()> {
        let mut c = self;
        if rest.is_empty() {
            c.p.detail = Some(Cow::Borrowed("nothing after the prefix"));
            return if c.err { Err(()) } else { Ok(()) };
        }
        let rb = rest.as_bytes();
        let flag = if rb.len() >= 2 { flag_kind(&rb[..2]) } else { None };
        match flag {
            Some(kind) if rb.get(2) == Some(&b' ') || (c.p.msgid.is_some() && rb.len() > 2) => {
                c.p.kind = kind;
                let body = if rb.get(2) == Some(&b' ') { &rest[3..] } else { &rest[2..] };
                let body = body.trim_start_matches(' ');
                if body.is_empty() {
                    c.p.kind = LineKind::Unknown;
                    c.p.detail = Some(Cow::Borrowed("flag without a body"));
                } else {
                    match kind {
                        LineKind::Arrival | LineKind::FakeReject => with_tokens(body, |t| c.arrival(t)),
                        LineKind::Failure | LineKind::Deferral => with_tokens(body, |t| c.failure_or_deferral(t)),
                        _ => match quoted_span(body, b" C=") {
                            Some(span) => with_quoted_span(body, span, |t| c.delivery(t)),
                            None => with_tokens(body, |t| c.delivery(t)),
                        },
                    }
                }
            }
            _ => c.words_line(rest),
        }
        c.finish()
    }
}

/// `contains_within(line, "]: ", start, 300)`: a syslog tag's end within 300 characters of `start`.
#[inline]
fn tag_end_within(line: &str, start: usize) -> bool {
    let b = line.as_bytes();
    let Some(window) = b.get(start..b.len().min(start.saturating_add(300))) else { return false };
    let mut from = 0;
    while let Some(found) = position(&window[from..], b']') {
        let k = from + found;
        if window.get(k + 1..k + 3) == Some(b": ") {
            return true; // it ends within 300 bytes, so within 300 characters
        }
        from = k + 1;
    }
    // none within 300 bytes: nor within 300 characters when they are the same
    !is_ascii(window) && contains_within(line, "]: ", start, 300)
}

/// The byte index of the first '=' of `tok` when its character index is in 1..limit
/// (`eq_char_index(tok).filter(|(_, at)| 0 < at && at < limit)`), ASCII heads without counting.
#[inline]
pub(super) fn tag_eq(tok: &str, limit: usize) -> Option<usize> {
    for (at, &c) in tok.as_bytes().iter().enumerate().take(limit) {
        if c == b'=' {
            return (at > 0).then_some(at);
        }
        if c >= 0x80 {
            return eq_char_index(tok).filter(|&(_, at)| at > 0 && at < limit).map(|(eq, _)| eq);
        }
    }
    None // the first `limit` characters are ASCII and hold no '='
}

fn flag_kind(flag: &[u8]) -> Option<LineKind> {
    Some(match flag {
        b"<=" => LineKind::Arrival,
        b"(=" => LineKind::FakeReject,
        b"=>" => LineKind::Delivery,
        b"->" => LineKind::DeliveryMore,
        b">>" => LineKind::Cutthrough,
        b"*>" => LineKind::Suppressed,
        b"**" => LineKind::Failure,
        b"==" => LineKind::Deferral,
        _ => return None,
    })
}

const STACK_TOKENS: usize = 48;

/// Splits `s` on single spaces (`s.split(" ")`) into a stack buffer (a vector when it is too small) and
/// hands the tokens to `f`.
pub(super) fn with_tokens<'a, R>(s: &'a str, f: impl FnOnce(&[&'a str]) -> R) -> R {
    with_tokens_span(s, None, f)
}

/// A quoted `tag="..."` value of a flagged line's body that may be handed over as one token: `(at, close)`
/// where `at` is the space before the tag and `close` the space after the word that ends the value (None:
/// the value runs to the end). Only when no quote comes before it, so that nothing before the value
/// reads into it, and `take_quoted` then reads exactly those words and joins them back.
fn quoted_span(body: &str, tag: &[u8; 3]) -> Option<(usize, Option<usize>)> {
    let b = body.as_bytes();
    let quote = position(b, b'"')?;
    if quote < 3 || &b[quote - 3..quote] != tag {
        return None;
    }
    let at = quote - 3;
    let mut from = quote + 1;
    while let Some(found) = position(&b[from..], b'"') {
        let q = from + found;
        if q + 1 == b.len() {
            break;
        }
        if b[q + 1] == b' ' {
            // this word ends with a quote: it closes the value unless the backslashes before it are odd
            let mut k = q;
            while k > quote + 1 && b[k - 1] == b'\\' {
                k -= 1;
            }
            if (q - k) % 2 == 0 {
                return Some((at, Some(q + 1)));
            }
        }
        from = q + 1;
    }
    Some((at, None))
}

/// `with_tokens(body)` where `quoted_span` found `span`: the words before it, the value as one token, then
/// the words after it.
fn with_quoted_span<'a, R>(body: &'a str, span: (usize, Option<usize>), f: impl FnOnce(&[&'a str]) -> R) -> R {
    let (at, close) = span;
    match close {
        None => with_tokens_span(&body[..at], Some((&body[at + 1..], None)), f),
        Some(close) => with_tokens_span(&body[..at], Some((&body[at + 1..close], Some(&body[close + 1..]))), f),
    }
}

/// The words of `s`, then (when given) one more token and the words of one more text.
fn with_tokens_span<'a, R>(s: &'a str, span: Option<(&'a str, Option<&'a str>)>, f: impl FnOnce(&[&'a str]) -> R) -> R {
    // not initialised up front (that alone cost more than splitting a short line)
    let mut buffer: [MaybeUninit<&'a str>; STACK_TOKENS] = [const { MaybeUninit::uninit() }; STACK_TOKENS];
    let mut count = 0;
    // where the words stopped fitting: (which text, from which byte of it)
    let mut stopped = push_words(s, &mut buffer, &mut count).map(|from| (0, from));
    if let (None, Some((word, rest))) = (stopped, span) {
        if count < STACK_TOKENS {
            buffer[count].write(word);
            count += 1;
            if let Some(rest) = rest {
                stopped = push_words(rest, &mut buffer, &mut count).map(|from| (2, from));
            }
        } else {
            stopped = Some((1, 0));
        }
    }
    // SAFETY: the first `count` entries were written above, and `MaybeUninit<T>` has `T`'s layout.
    let written = unsafe { std::slice::from_raw_parts(buffer.as_ptr().cast::<&'a str>(), count) };
    let Some((part, from)) = stopped else { return f(written) };
    // too many for the stack: the rest goes to a vector
    let mut all: Vec<&'a str> = Vec::with_capacity(STACK_TOKENS * 4);
    all.extend_from_slice(written);
    if part == 0 {
        push_all_words(s, from, &mut all);
    }
    if let Some((word, rest)) = span {
        if part <= 1 {
            all.push(word);
        }
        if let Some(rest) = rest {
            push_all_words(rest, if part == 2 { from } else { 0 }, &mut all);
        }
    }
    f(&all)
}

/// Appends the words of `s[from..]` (`from` is 0 or just after a space) to `all`.
fn push_all_words<'a>(s: &'a str, from: usize, all: &mut Vec<&'a str>) {
    let mut start = from;
    for_each_space(s.as_bytes(), from, |at| {
        all.push(between_spaces(s, start, at));
        start = at + 1;
        true
    });
    all.push(&s[start..]);
}

/// Appends the words of `s` to `buffer` from `count` on; when they do not all fit, those that do are
/// written and the offset where the rest starts is returned.
#[inline]
fn push_words<'a>(s: &'a str, buffer: &mut [MaybeUninit<&'a str>; STACK_TOKENS], count: &mut usize) -> Option<usize> {
    let mut n = *count;
    let mut start = 0;
    let stopped = for_each_space(s.as_bytes(), 0, |at| {
        if n == STACK_TOKENS {
            return false;
        }
        buffer[n].write(between_spaces(s, start, at));
        n += 1;
        start = at + 1;
        true
    });
    *count = n;
    if stopped || n == STACK_TOKENS {
        return Some(start);
    }
    buffer[n].write(&s[start..]);
    *count = n + 1;
    None
}

/// `&s[start..at]` where `at` is a space and `start` is 0 or just after a space (both char boundaries).
#[inline(always)]
fn between_spaces(s: &str, start: usize, at: usize) -> &str {
    debug_assert!(start <= at && at < s.len() && s.as_bytes()[at] == b' ' && s.is_char_boundary(start));
    // SAFETY: `at` is the offset of an ASCII space and `start` is 0 or one past an earlier space, so both
    // are in bounds, ordered and on character boundaries.
    unsafe { s.get_unchecked(start..at) }
}

/// Calls `emit` with the offset of every space from `from` on, until it returns false (then true is
/// returned). Eight bytes are tested at a time (SWAR: a space becomes zero after the xor, and the
/// expression sets the high bit of exactly the zero bytes).
fn for_each_space(bytes: &[u8], from: usize, mut emit: impl FnMut(usize) -> bool) -> bool {
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    const SPACES: u64 = 0x2020_2020_2020_2020;
    let mut chunk = from;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
        // sixteen bytes at a time (SSE2 is part of x86_64)
        while chunk + 16 <= bytes.len() {
            // SAFETY: the 16 bytes at `chunk` are in bounds (checked above); the load is unaligned.
            let mut found = unsafe {
                let block = _mm_loadu_si128(bytes.as_ptr().add(chunk).cast());
                _mm_movemask_epi8(_mm_cmpeq_epi8(block, _mm_set1_epi8(b' ' as i8))) as u32
            };
            while found != 0 {
                if !emit(chunk + found.trailing_zeros() as usize) {
                    return true;
                }
                found &= found - 1;
            }
            chunk += 16;
        }
    }
    while chunk + 8 <= bytes.len() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[chunk..chunk + 8]);
        let x = u64::from_le_bytes(word) ^ SPACES;
        let mut found = !(((x & LOW7) + LOW7) | x | LOW7);
        while found != 0 {
            if !emit(chunk + (found.trailing_zeros() / 8) as usize) {
                return true;
            }
            found &= found - 1;
        }
        chunk += 8;
    }
    for (at, &byte) in bytes.iter().enumerate().skip(chunk) {
        if byte == b' ' && !emit(at) {
            return true;
        }
    }
    false
}

fn starts(s: &str, byte: u8) -> bool {
    s.as_bytes().first() == Some(&byte)
}

fn ends(s: &str, byte: u8) -> bool {
    s.as_bytes().last() == Some(&byte)
}

/// `s[1:-1]` of a string that starts and ends with ASCII brackets or quotes.
fn inner(s: Text<'_>) -> Text<'_> {
    slice_text(s, 1, None, true)
}

/// A byte range of a Cow: borrowed stays borrowed.
fn slice_text(s: Text<'_>, from: usize, to: Option<usize>, drop_last: bool) -> Text<'_> {
    let len = s.len();
    let end = to.unwrap_or(if drop_last { len.saturating_sub(1) } else { len }).max(from.min(len));
    let from = from.min(end);
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(&b[from..end]),
        Cow::Owned(o) => Cow::Owned(o[from..end].to_owned()),
    }
}

/// `s[:MAX_FIELD]`-style cut in characters.
fn cut_chars(s: Text<'_>, count: usize) -> Text<'_> {
    if s.len() <= count {
        return s;
    }
    let end = advance(&s, 0, count);
    if end == s.len() {
        return s;
    }
    slice_text(s, 0, Some(end), false)
}

/// The parse of one line: the result being filled, the line every token borrows from, and whether
/// Python would have raised (its `int()` of a non-decimal digit).
pub(super) struct Ctx<'a, 'p> {
    pub line: &'a str,
    pub p: &'p mut ParsedLine<'a>,
    pub err: bool,
    /// Positions of the `extra` keys, built once a line has many (a linear search per key would make
    /// a long line of tags quadratic; Python's dict is not).
    extra_index: Option<HashMap<&'a str, usize>>,
    parse_for: ParseFor,
}

/// Who reads the parsed line (`Detail`), and whether the line is ASCII.
#[derive(Clone, Copy, Default)]
struct ParseFor {
    /// `Detail::Correlated`: no `extra` but the keys the parser reads back, and less of some lines.
    correlator: bool,
    ascii: bool,
}

/// The `extra` keys the parser reads back while it parses a line.
const EXTRAS_READ_BACK: [&str; 3] = ["bad_time", "unparsed", "strerror"];

/// `extra` sizes up to which a linear search is used.
const EXTRA_LINEAR: usize = 16;

impl<'a> Ctx<'a, '_> {
    /// `p.extra[key] = value` (a present key keeps its place).
    pub(super) fn set_extra(&mut self, key: &'a str, value: impl Into<Text<'a>>) {
        if self.parse_for.correlator && !EXTRAS_READ_BACK.contains(&key) {
            return;
        }
        let value = value.into();
        if self.extra_index.is_none() && self.p.extra.len() < EXTRA_LINEAR {
            self.p.set_extra(key, value);
            return;
        }
        let extra = &mut self.p.extra;
        let index = self.extra_index.get_or_insert_with(|| {
            let mut index = HashMap::with_capacity(extra.len() * 2);
            for (at, (known, _)) in extra.iter().enumerate() {
                if let Cow::Borrowed(known) = known {
                    index.insert(*known, at);
                }
            }
            index
        });
        match index.get(key) {
            Some(&at) => extra[at].1 = value,
            None => {
                index.insert(key, extra.len());
                extra.push((Cow::Borrowed(key), value));
            }
        }
    }

    pub(super) fn has_extra(&self, key: &str) -> bool {
        match &self.extra_index {
            Some(index) => index.contains_key(key),
            None => self.p.get_extra(key).is_some(),
        }
    }

    fn finish(self) -> Result<(), ()> {
        if self.err {
            return Err(());
        }
        if self.line.len() > MAX_FIELD && char_len(self.line) > MAX_FIELD {
            bounded(self.p);
        }
        Ok(())
    }

    fn apply_prefix(&mut self, m: &Prefix<'a>, clock: &mut dyn LocalClock) {
        let t = prefix_time(m, clock);
        self.p.time = t;
        if t.is_none() {
            self.set_extra("bad_time", m.stamp_text);
        }
        if let Some(pid) = m.pid {
            self.p.pid = Some(pid);
        }
        if let Some(msgid) = m.msgid {
            self.p.msgid = Some(Cow::Borrowed(msgid));
        }
    }

    /// `_prefix_slow`: syslog and journal prefixes. Returns where the body starts.
    fn prefix_slow(&mut self, clock: &mut dyn LocalClock) -> usize {
        let line = self.line;
        let mut pos = 0;
        if let Some(m) = match_prefix(line, 0) {
            self.apply_prefix(&m, clock);
            pos = m.end;
            if self.p.pid.is_some() || self.p.msgid.is_some() {
                return pos;
            }
        } else if let Some(b) = match_bsd(line) {
            self.p.time = bsd_epoch(&b, clock);
            pos = b.end;
        }
        let Some((pid, end)) = match_syslog_tag(line, pos) else { return pos };
        pos = end;
        self.p.pid = Some(super::parser_text::digits_value(pid));
        if let Some((part, of, end)) = match_part(line, pos) {
            self.set_extra("part", format!("{part}/{of}"));
            pos = end;
            if part != "1" {
                self.p.kind = LineKind::Continuation;
                return pos;
            }
        }
        if let Some(m) = match_prefix(line, pos) {
            self.apply_prefix(&m, clock);
            return m.end;
        }
        if let Some((pid, end)) = match_pid(line, pos) {
            self.p.pid = Some(pid);
            pos = end;
        }
        pos
    }

    /// Whether the parse is for the correlator (`Detail::Correlated`), which reads less of some lines.
    pub(super) fn only_correlated(&self) -> bool {
        self.parse_for.correlator
    }

    /// Whether the fields of a line whose kind is known can be left out: for the correlator, on an ASCII
    /// line (only a non-ASCII digit could still make them fail to parse) without a message id.
    pub(super) fn skip_fields(&self) -> bool {
        self.parse_for.correlator && self.parse_for.ascii && self.p.msgid.is_none()
    }

    pub(super) fn int_of(&mut self, s: &str) -> Option<i64> {
        match to_int(s) {
            Ok(value) => value,
            Err(()) => {
                self.err = true;
                None
            }
        }
    }

    fn offset(&self, s: &str) -> usize {
        s.as_ptr() as usize - self.line.as_ptr() as usize
    }

    /// `" ".join(tokens)` of consecutive tokens of the line.
    pub(super) fn join(&self, tokens: &[&'a str]) -> &'a str {
        match (tokens.first(), tokens.last()) {
            (Some(first), Some(last)) => &self.line[self.offset(first)..self.offset(last) + last.len()],
            _ => &self.line[..0],
        }
    }

    /// `" ".join([first, *tokens])` where `first` is (a part of) the token before `tokens`.
    fn join_after(&self, first: &'a str, tokens: &[&'a str]) -> Text<'a> {
        let Some(next) = tokens.first() else { return Cow::Borrowed(first) };
        let start = self.offset(first);
        if start + first.len() + 1 == self.offset(next) {
            let last = tokens[tokens.len() - 1];
            Cow::Borrowed(&self.line[start..self.offset(last) + last.len()])
        } else {
            let rest = self.join(tokens);
            let mut joined = String::with_capacity(first.len() + 1 + rest.len());
            joined.push_str(first);
            joined.push(' ');
            joined.push_str(rest);
            Cow::Owned(joined)
        }
    }

    /// `_take_quoted`: a value that starts with a quote in `first`; unescaped content and next index.
    pub(super) fn take_quoted(&self, tokens: &[&'a str], mut i: usize, first: &'a str) -> (Text<'a>, usize) {
        if closes(first, 1) {
            return (unescape(&first[1..first.len() - 1]), i);
        }
        let start = i;
        while i < tokens.len() {
            let tok = tokens[i];
            i += 1;
            if closes(tok, 0) {
                return (unescape_text(inner(self.join_after(first, &tokens[start..i]))), i);
            }
        }
        (unescape_text(slice_text(self.join_after(first, &tokens[start..i]), 1, None, false)), i)
    }

    /// `_take_group`: a `(...)` or `<...>` group that may hold spaces.
    pub(super) fn take_group(&self, tokens: &[&'a str], mut i: usize, first: &'a str, close: u8) -> (Text<'a>, usize) {
        if ends(first, close) {
            return (Cow::Borrowed(first.get(1..first.len() - 1).unwrap_or("")), i);
        }
        let start = i;
        let limit = tokens.len().min(i + 24);
        let opener = first.as_bytes().first().copied().unwrap_or(0);
        while i < limit {
            let tok = tokens[i];
            if starts(tok, opener) || eq_char_index(tok).is_some_and(|(_, at)| at > 0 && at < 4) {
                break;
            }
            i += 1;
            if ends(tok, close) {
                return (inner(self.join_after(first, &tokens[start..i])), i);
            }
        }
        (Cow::Borrowed(first.get(1..).unwrap_or("")), start)
    }

    /// `_take_address`: a quoted local part with spaces spans several tokens.
    pub(super) fn take_address(&self, tokens: &[&'a str], mut i: usize, first: &'a str) -> (Text<'a>, usize) {
        if quote_count(first).is_multiple_of(2) {
            return (Cow::Borrowed(first), i);
        }
        let start = i;
        let limit = tokens.len().min(i + 32);
        while i < limit {
            let tok = tokens[i];
            i += 1;
            if !quote_count(tok).is_multiple_of(2) {
                return (self.join_after(first, &tokens[start..i]), i);
            }
        }
        (Cow::Borrowed(first), start)
    }

    /// `_ip_token`: host_ip/port/reused from `[ip]:port*`; true when a ':' separator was glued to it.
    pub(super) fn ip_token(&mut self, tok: &'a str) -> bool {
        let Some(close) = find_byte(tok, b']') else {
            self.p.host_ip = Some(Cow::Borrowed(tok.get(1..).unwrap_or("")));
            return false;
        };
        self.p.host_ip = Some(Cow::Borrowed(&tok[1..close]));
        let mut after = &tok[close + 1..];
        let mut colon = false;
        if !after.is_empty() {
            if let Some(head) = after.strip_suffix(':') {
                colon = true;
                after = head;
            }
            if let Some(head) = after.strip_suffix('*') {
                self.p.host_reused = true;
                after = head;
            }
            if let Some(port) = after.strip_prefix(':') {
                self.p.host_port = self.int_of(port);
            }
        }
        colon
    }

    /// `_take_host`: `name (helo) [ip]:port` and variants from `first` (the H= value).
    pub(super) fn take_host(&mut self, tokens: &[&'a str], mut i: usize, first: &'a str) -> (usize, bool) {
        let n = tokens.len();
        if starts(first, b'[') {
            return (i, self.ip_token(first));
        }
        if starts(first, b'(') {
            let (helo, next) = self.take_group(tokens, i, first, b')');
            self.p.helo = Some(helo);
            i = next;
        } else {
            if let Some(bracket) = find_byte(first, b'[') {
                if bracket > 0 {
                    self.p.host = Some(Cow::Borrowed(&first[..bracket]));
                    return (i, self.ip_token(&first[bracket..]));
                }
            }
            if ends(first, b':') && (i >= n || !(starts(tokens[i], b'[') || starts(tokens[i], b'('))) {
                self.p.host = Some(Cow::Borrowed(&first[..first.len() - 1]));
                return (i, true);
            }
            self.p.host = Some(Cow::Borrowed(first));
        }
        while i < n {
            let tok = tokens[i];
            if starts(tok, b'[') {
                return (i + 1, self.ip_token(tok));
            }
            if starts(tok, b'(') && self.p.helo.is_none() {
                let (helo, next) = self.take_group(tokens, i + 1, tok, b')');
                self.p.helo = Some(helo);
                i = next;
            } else if tok == "DS" {
                self.set_extra("DS", "1");
                i += 1;
            } else {
                break;
            }
        }
        (i, false)
    }

    /// `_interface`: I=[ip]:port or I=value.
    pub(super) fn interface(&mut self, value: &'a str) {
        if starts(value, b'[') {
            if let Some(close) = find_byte(value, b']') {
                if close > 0 {
                    self.p.interface_ip = Some(Cow::Borrowed(&value[1..close]));
                    if value.as_bytes().get(close + 1) == Some(&b':') {
                        let port = &value[close + 2..];
                        if !port.is_empty() {
                            self.set_extra("interface_port", port);
                        }
                    }
                    return;
                }
            }
        }
        self.p.interface_ip = Some(Cow::Borrowed(value));
    }

    /// `_arrival`: `<= sender [R=ref] H= I= U= P= X= A= S= id= T="..." from <x> for a b c`.
    fn arrival(&mut self, tokens: &[&'a str]) {
        let n = tokens.len();
        let (address, mut i) = self.take_address(tokens, 1, tokens[0]);
        self.p.address = Some(if address == "<>" { Cow::Borrowed("") } else { address });
        while i < n {
            let tok = tokens[i];
            i += 1;
            match find_byte(tok, b'=') {
                Some(eq) if eq > 0 => {
                    let tag = &tok[..eq];
                    let value = &tok[eq + 1..];
                    match tag {
                        "H" => i = self.take_host(tokens, i, value).0,
                        "T" => {
                            if starts(value, b'"') {
                                let (subject, next) = self.take_quoted(tokens, i, value);
                                self.p.subject = Some(subject);
                                i = next;
                            } else {
                                self.p.subject = Some(Cow::Borrowed(value));
                            }
                        }
                        "S" => self.p.size = self.int_of(value),
                        "P" => self.p.protocol = Some(Cow::Borrowed(value)),
                        "U" => self.p.user = Some(Cow::Borrowed(value)),
                        "id" | "id*" => {
                            self.p.message_id_header = Some(Cow::Borrowed(value));
                            if tag == "id*" {
                                self.set_extra("id_created", "1");
                            }
                        }
                        "X" => self.p.tls = Some(Cow::Borrowed(value)),
                        "A" => self.p.auth = Some(Cow::Borrowed(value)),
                        "R" => self.p.bounce_parent = Some(Cow::Borrowed(value)),
                        "I" => self.interface(value),
                        _ if starts(value, b'"') => {
                            let (quoted, next) = self.take_quoted(tokens, i, value);
                            self.set_extra(tag, quoted);
                            i = next;
                        }
                        _ => self.set_extra(tag, value),
                    }
                }
                _ if tok == "for" => {
                    self.recipients(tokens, i);
                    break;
                }
                _ if tok == "from" && i < n && starts(tokens[i], b'<') => {
                    let (value, next) = self.take_group(tokens, i + 1, tokens[i], b'>');
                    self.set_extra("from", value);
                    i = next;
                }
                _ if !tok.is_empty() => self.set_extra(tok, "1"),
                _ => {}
            }
        }
    }

    fn recipients(&mut self, tokens: &[&'a str], mut i: usize) {
        while i < tokens.len() {
            let tok = tokens[i];
            i += 1;
            if tok.is_empty() {
                continue;
            }
            if tok == "<trunc>" || self.p.recipients.len() >= MAX_ITEMS {
                self.set_extra("recipients_truncated", "1");
                break;
            }
            if !quote_count(tok).is_multiple_of(2) {
                let (address, next) = self.take_address(tokens, i, tok);
                self.p.recipients.push(address);
                i = next;
            } else {
                self.p.recipients.push(Cow::Borrowed(tok));
            }
        }
    }

    /// `_delivery_head`: address, `(parent, ...)` and `<top>` parts; next index and whether ':' ended it.
    pub(super) fn delivery_head(&mut self, tokens: &[&'a str]) -> (usize, bool) {
        let n = tokens.len();
        let first = tokens[0];
        let mut i = 1;
        let mut address: Text<'a>;
        if starts(first, b'|') || first == "save" {
            while i < n {
                let tok = tokens[i];
                if starts(tok, b'(') || starts(tok, b'<') || tok == "defer" || is_delivery_tag(tok) {
                    break;
                }
                i += 1;
            }
            address = Cow::Borrowed(self.join(&tokens[..i]));
        } else {
            let (found, next) = self.take_address(tokens, i, first);
            address = found;
            i = next;
        }
        let mut colon = false;
        if ends(&address, b':') && address != ":blackhole:" {
            address = slice_text(address, 0, None, true);
            colon = true;
        }
        self.p.address = Some(address);
        while !colon && i < n {
            let tok = tokens[i];
            if starts(tok, b'(') {
                let (group, next) = self.take_group(tokens, i + 1, tok.trim_end_matches(':'), b')');
                i = next;
                match group {
                    Cow::Borrowed(text) => {
                        self.p.parents.extend(text.split(", ").filter(|part| !part.is_empty()).map(Cow::Borrowed))
                    }
                    Cow::Owned(text) => self.p.parents.extend(
                        text.split(", ").filter(|part| !part.is_empty()).map(|part| Cow::Owned(part.to_owned())),
                    ),
                }
            } else if starts(tok, b'<') {
                colon = ends(tok, b':');
                let (group, next) = self.take_group(tokens, i + 1, tok.trim_end_matches(':'), b'>');
                self.p.parents.push(group);
                i = next;
            } else if tok.is_empty() {
                i += 1;
            } else {
                break;
            }
        }
        self.p.parents.truncate(MAX_ITEMS);
        (i, colon)
    }

    /// `_delivery_fields`: tagged fields of delivery lines. With `stop_on_text` (** and ==) returns where
    /// the error message starts (n if none).
    fn delivery_fields(&mut self, tokens: &[&'a str], mut i: usize, stop_on_text: bool) -> usize {
        let n = tokens.len();
        while i < n {
            let tok = tokens[i];
            i += 1;
            let eq = tag_eq(tok, 9).filter(|_| is_alpha(first_char(tok)));
            if let Some(eq) = eq {
                let tag = &tok[..eq];
                let mut value = &tok[eq + 1..];
                if tag == "C" || (starts(value, b'"') && (tag == "DN" || tag == "T")) {
                    let text = if starts(value, b'"') {
                        let (text, next) = self.take_quoted(tokens, i, value);
                        i = next;
                        text
                    } else {
                        Cow::Borrowed(value)
                    };
                    if tag == "C" {
                        self.p.confirmation = Some(text);
                    } else {
                        self.set_extra(tag, text);
                    }
                    continue;
                }
                if tag == "H" {
                    let (next, colon) = self.take_host(tokens, i, value);
                    i = next;
                    if colon && stop_on_text {
                        return i;
                    }
                    continue;
                }
                let colon = stop_on_text && ends(value, b':') && i < n;
                if colon {
                    value = &value[..value.len() - 1];
                }
                match tag {
                    "R" => self.p.router = Some(Cow::Borrowed(value)),
                    "T" => self.p.transport = Some(Cow::Borrowed(value)),
                    "F" => self.p.sender = Some(Cow::Borrowed(strip_angle(value))),
                    "P" => self.set_extra("return_path", strip_angle(value)),
                    "X" => self.p.tls = Some(Cow::Borrowed(value)),
                    "A" => self.p.auth = Some(Cow::Borrowed(value)),
                    "S" => self.p.size = self.int_of(value),
                    "I" => self.interface(value),
                    _ if is_upper(first_char(tag)) || tag == "id" || tag == "Ci" => self.set_extra(tag, value),
                    _ if stop_on_text => return i - 1,
                    _ => self.set_extra(tag, value),
                }
                if colon {
                    return i;
                }
            } else if tok.is_empty() {
                continue;
            } else if BARE_FLAGS.contains(&tok) {
                self.set_extra(tok, "1");
            } else if stop_on_text {
                if tok == ":" {
                    return i;
                }
                if tok == "defer" && i < n && starts(tokens[i], b'(') {
                    let (next, message_follows) = self.defer(tokens, i);
                    if message_follows {
                        return next;
                    }
                    i = next;
                    continue;
                }
                if (tok == "routing" || tok == "transporting") && i < n && tokens[i] == "defer" {
                    self.set_extra("driver", tok);
                    continue;
                }
                return i - 1;
            } else if !self.has_extra("unparsed") {
                self.set_extra("unparsed", tok);
            }
        }
        n
    }

    /// `_defer`: `(errno)[: strerror]` after `defer`; the next index and whether a message follows.
    fn defer(&mut self, tokens: &[&'a str], mut i: usize) -> (usize, bool) {
        let n = tokens.len();
        let tok = tokens[i];
        i += 1;
        let colon = ends(tok, b':');
        let inner = match tok.rfind(')') {
            Some(close) => &tok[1..close.max(1)],
            None => &tok[1..],
        };
        self.p.errno = self.int_of(inner);
        if self.p.errno.is_none() {
            self.set_extra("errno_text", inner);
        }
        if !colon {
            return (i, false);
        }
        if self.p.errno.is_some_and(|errno| errno <= 0) {
            return (i, true);
        }
        let start = i;
        while i < n {
            let word = tokens[i];
            if word.starts_with("H=") || word.starts_with("DT=") {
                if i > start {
                    let strerror = self.join(&tokens[start..i]);
                    self.set_extra("strerror", strerror);
                }
                return (i, false);
            }
            i += 1;
            if ends(word, b':') {
                let strerror = self.join(&tokens[start..i]);
                self.set_extra("strerror", &strerror[..strerror.len() - 1]);
                return (i, true);
            }
        }
        if i > start {
            let strerror = self.join(&tokens[start..i]);
            self.set_extra("strerror", strerror);
        }
        (i, false)
    }

    fn delivery(&mut self, tokens: &[&'a str]) {
        let (i, _) = self.delivery_head(tokens);
        self.delivery_fields(tokens, i, false);
    }

    /// `_failure_or_deferral`: `** addr ... : message` and `== addr ... defer (N): message`.
    fn failure_or_deferral(&mut self, tokens: &[&'a str]) {
        let n = tokens.len();
        let (mut i, colon) = self.delivery_head(tokens);
        if !colon {
            i = self.delivery_fields(tokens, i, true);
        }
        if i < n {
            let mut message = self.join(&tokens[i..]).trim_start_matches(' ');
            if let Some(tail) = message.strip_prefix(": ") {
                message = tail;
            }
            if let Some(dt) = rfind(message, " DT=") {
                let value = &message[dt + 4..];
                if find_byte(value, b' ').is_none() {
                    self.set_extra("DT", value);
                    message = &message[..dt];
                }
            }
            self.p.error = Some(Cow::Borrowed(message));
        } else if let Some((_, strerror)) = self.p.extra.iter().find(|(key, _)| key == "strerror") {
            self.p.error = Some(strerror.clone());
        }
        // error texts are always slices of the line
        let error = match &self.p.error {
            Some(Cow::Borrowed(error)) => Some(*error),
            _ => None,
        };
        match error {
            Some(error) if !error.is_empty() => {
                self.response(error);
                if error.ends_with("error ignored") {
                    self.set_extra("error_ignored", "1");
                }
            }
            _ => {
                if let Some(errno) = self.p.errno {
                    self.p.smtp_phase = errno_phase(errno).map(Cow::Borrowed);
                }
            }
        }
    }

    /// `_response`: SMTP reply code, enhanced status code and phase from an error or response text.
    pub(super) fn response(&mut self, text: &'a str) {
        let mut phase = phase_in(text);
        if phase.is_none() {
            if let Some(errno) = self.p.errno {
                phase = errno_phase(errno);
            }
            if phase.is_none() {
                phase = tls_or_connect(text);
            }
        }
        self.p.smtp_phase = phase.map(Cow::Borrowed);
        let mut start = 0;
        if let Some(k) = find(text, ": host ") {
            self.old_host(text, k + 7);
            start = k;
        }
        let b = text.as_bytes();
        let mut pos = start;
        while let Some(at) = super::parser_text::first_code_digit(b, pos) {
            // the context first: no position inside a code (decimal characters) follows ": " or "\\n",
            // so moving on by one byte where `_CODE_RE` matched finds what moving past it would
            if at == 0 || (at >= 2 && (&b[at - 2..at] == b": " || &b[at - 2..at] == b"\\n")) {
                if let Some((code, end)) = super::parser_text::code_at(text, at) {
                    self.p.smtp_code = Some(code);
                    let window = advance(text, end, 24);
                    let after = advance(text, end, 1);
                    let mut e = super::parser_text::enhanced_at(text, after, window).map(|stop| (after, stop));
                    if e.is_none() && b.get(after) == Some(&b'#') && after > end {
                        e = super::parser_text::enhanced_at(text, after + 1, window).map(|stop| (after + 1, stop));
                    }
                    self.p.enhanced_code = e.map(|(from, to)| Cow::Borrowed(&text[from..to]));
                    return;
                }
            }
            pos = at + 1;
        }
        if let Some((from, to)) = super::parser_text::enhanced_search(text) {
            if matches!(b[from], b'4' | b'5') {
                self.p.enhanced_code = Some(Cow::Borrowed(&text[from..to]));
            }
        }
    }

    /// `_old_host`: pre-4.80 "...: host NAME [IP]: ..." inside an error text.
    pub(super) fn old_host(&mut self, text: &'a str, start: usize) {
        let Some(open) = super::parser_text::find_in(text, " [", start, advance(text, start, 300)) else { return };
        if open == 0 {
            return;
        }
        let Some(close) = super::parser_text::find_in(text, "]", open + 2, advance(text, open, 64)) else { return };
        if close > 0 && self.p.host_ip.is_none() {
            self.p.host = Some(Cow::Borrowed(&text[start..open]));
            self.p.host_ip = Some(Cow::Borrowed(&text[open + 2..close]));
        }
    }
}

fn unescape_text(text: Text<'_>) -> Text<'_> {
    match text {
        Cow::Borrowed(b) => unescape(b),
        Cow::Owned(o) => Cow::Owned(unescape(&o).into_owned()),
    }
}

fn quote_count(s: &str) -> usize {
    s.as_bytes().iter().filter(|&&c| c == b'"').count()
}

/// `_closes`: `tok` ends in a double quote (at index >= start) that is not backslash-escaped.
fn closes(tok: &str, start: usize) -> bool {
    let b = tok.as_bytes();
    if b.is_empty() {
        return false;
    }
    let end = b.len() - 1;
    if end < start || b[end] != b'"' {
        return false;
    }
    let mut slashes = 0;
    let mut k = end;
    while k > start && b[k - 1] == b'\\' {
        k -= 1;
        slashes += 1;
    }
    slashes % 2 == 0
}

pub(super) fn strip_angle(s: &str) -> &str {
    match s.strip_prefix('<') {
        Some(rest) => rest.strip_suffix('>').unwrap_or(rest),
        None => s,
    }
}

fn is_delivery_tag(tok: &str) -> bool {
    match find_byte(tok, b'=') {
        Some(eq) if eq > 0 => DELIVERY_TAGS.contains(&&tok[..eq]),
        _ => false,
    }
}

pub(super) fn errno_phase(errno: i64) -> Option<&'static str> {
    Some(match errno {
        -44 => "rcpt",
        -45 => "mail",
        -46 => "data",
        -37 | -38 => "starttls",
        -42 | -48 => "auth",
        -43 | 101 | 110 | 111 | 113 => "connect",
        _ => return None,
    })
}

/// `_phase_in`: phase from "... server/mailer/error/timeout after <cmd>" or "in response to <cmd>".
/// 0 when nothing starts at `at`, 1 for "TLS", 2 for one of the connection errors.
#[inline]
fn tls_or_connect_at(b: &[u8], at: usize) -> u8 {
    let rest = &b[at..];
    match rest.first() {
        Some(b'T') if rest.starts_with(b"TLS") => 1,
        Some(b'C')
            if rest.starts_with(b"Connection refused")
                || rest.starts_with(b"Connection timed out")
                || rest.starts_with(b"Connection reset") =>
        {
            2
        }
        Some(b'u')
            if rest.starts_with(b"unreachable")
                && (b[..at].ends_with(b"Network is ") || b[..at].ends_with(b"Host is ")) =>
        {
            2
        }
        Some(b'N') if rest.starts_with(b"No route to host") => 2,
        _ => 0,
    }
}

/// `"starttls" if "TLS" in text else "connect" if any(needle in text for needle in CONNECT_ERRORS)`
/// in one pass: sixteen positions a step for the pairs "TL", "Co", "un" and "No", each then checked.
fn tls_or_connect(text: &str) -> Option<&'static str> {
    let b = text.as_bytes();
    let mut connect = false;
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            _mm_and_si128, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        };
        while i + 17 <= b.len() {
            // SAFETY: `i + 17 <= b.len()`, so both 16-byte loads (at i and i + 1) are in bounds.
            let mut found = unsafe {
                let here = _mm_loadu_si128(b.as_ptr().add(i).cast());
                let next = _mm_loadu_si128(b.as_ptr().add(i + 1).cast());
                let pair = |x: u8, y: u8| {
                    _mm_and_si128(
                        _mm_cmpeq_epi8(here, _mm_set1_epi8(x as i8)),
                        _mm_cmpeq_epi8(next, _mm_set1_epi8(y as i8)),
                    )
                };
                let any = _mm_or_si128(
                    _mm_or_si128(pair(b'T', b'L'), pair(b'C', b'o')),
                    _mm_or_si128(pair(b'u', b'n'), pair(b'N', b'o')),
                );
                _mm_movemask_epi8(any) as u32
            };
            while found != 0 {
                match tls_or_connect_at(b, i + found.trailing_zeros() as usize) {
                    1 => return Some("starttls"),
                    2 => connect = true,
                    _ => {}
                }
                found &= found - 1;
            }
            i += 16;
        }
    }
    while i < b.len() {
        match tls_or_connect_at(b, i) {
            1 => return Some("starttls"),
            2 => connect = true,
            _ => {}
        }
        i += 1;
    }
    connect.then_some("connect")
}

fn phase_in(text: &str) -> Option<&'static str> {
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(k) = super::parser_text::find_in(text, " after ", from, text.len()) {
        if AFTER_WORDS.iter().any(|word| b[..k].ends_with(word.as_bytes())) {
            return phase_of(&text[k + 7..advance(text, k + 7, 40)]);
        }
        from = k + 7;
    }
    let k = find(text, "in response to ")?;
    phase_of(&text[k + 15..advance(text, k + 15, 40)])
}

fn phase_of(cmd: &str) -> Option<&'static str> {
    let cmd = cmd.strip_prefix("pipelined ").unwrap_or(cmd);
    if cmd.starts_with("initial connection") {
        return Some("connect");
    }
    if cmd.starts_with("end of data") {
        return Some("end_of_data");
    }
    let head_ascii;
    let head_owned;
    let head: &str = if cmd.len() >= 8 && cmd.as_bytes()[..8].is_ascii() {
        head_ascii = cmd.as_bytes()[..8].to_ascii_uppercase();
        std::str::from_utf8(&head_ascii).unwrap_or("")
    } else {
        head_owned = super::parser_text::upper_head(cmd, 8);
        &head_owned
    };
    if head.starts_with("EHLO") || head.starts_with("HELO") || head.starts_with("LHLO") {
        return Some("ehlo");
    }
    if head.starts_with("STARTTLS") {
        return Some("starttls");
    }
    if head.starts_with("AUTH") {
        return Some("auth");
    }
    if head.starts_with("MAIL") {
        return Some("mail");
    }
    if head.starts_with("RCPT") {
        return Some("rcpt");
    }
    if head.starts_with("DATA") || head.starts_with("BDAT") || cmd.starts_with("sending data") {
        return Some("data");
    }
    None
}

/// `_bounded`: every string within MAX_FIELD characters (only long lines can exceed it).
fn bounded(p: &mut ParsedLine<'_>) {
    for field in [
        &mut p.address,
        &mut p.sender,
        &mut p.router,
        &mut p.transport,
        &mut p.bounce_parent,
        &mut p.host,
        &mut p.helo,
        &mut p.host_ip,
        &mut p.interface_ip,
        &mut p.user,
        &mut p.auth,
        &mut p.protocol,
        &mut p.subject,
        &mut p.message_id_header,
        &mut p.tls,
        &mut p.confirmation,
        &mut p.error,
        &mut p.enhanced_code,
        &mut p.smtp_phase,
        &mut p.cpanel_domain,
        &mut p.detail,
    ] {
        if let Some(value) = field.take() {
            *field = Some(cut_chars(value, MAX_FIELD));
        }
    }
    p.recipients.truncate(MAX_ITEMS);
    for item in p.recipients.iter_mut().chain(p.parents.iter_mut()) {
        let value = std::mem::take(item);
        *item = cut_chars(value, MAX_FIELD);
    }
    p.parents.truncate(MAX_ITEMS);
    let entries = std::mem::take(&mut p.extra);
    let mut bounded_extra: Vec<(Text<'_>, Text<'_>)> = Vec::with_capacity(entries.len().min(256));
    for (key, value) in entries.into_iter().take(256) {
        let key = cut_chars(key, 64);
        let value = cut_chars(value, MAX_FIELD);
        match bounded_extra.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => bounded_extra.push((key, value)),
        }
    }
    p.extra = bounded_extra;
}
