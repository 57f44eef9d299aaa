//! Python `str` semantics the Exim parser (`processors/exim/parser.py`) depends on: code-point indices and
//! windows over UTF-8 text, CPython's Unicode predicates, `str.upper()`, `int()` and `float()` of text, and
//! the hand-written equivalents of the module's small regular expressions (`\d` is any Unicode decimal).

use std::borrow::Cow;

use super::parser_unicode::{ALPHA, DECIMAL, DIGIT, SPACE, UPPER, UPPER_MAP};

fn in_ranges(table: &[(u32, u32)], code: u32) -> bool {
    table
        .binary_search_by(|&(lo, hi)| {
            if hi < code {
                std::cmp::Ordering::Less
            } else if lo > code {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// `str.isspace()` (also re's `\s`).
pub fn is_space(c: char) -> bool {
    if c.is_ascii() {
        matches!(c, ' ' | '\t'..='\r' | '\x1c'..='\x1f')
    } else {
        in_ranges(SPACE, c as u32)
    }
}

/// `str.isdigit()` for one character.
pub fn is_digit_char(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_digit()
    } else {
        in_ranges(DIGIT, c as u32)
    }
}

/// `str.isalpha()` for one character.
pub fn is_alpha(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphabetic()
    } else {
        in_ranges(ALPHA, c as u32)
    }
}

/// `str.isupper()` for one character.
pub fn is_upper(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_uppercase()
    } else {
        in_ranges(UPPER, c as u32)
    }
}

/// Value of a Unicode decimal digit (re's `\d`, what `int()` accepts).
pub fn decimal_value(c: char) -> Option<u32> {
    if c.is_ascii() {
        return c.to_digit(10);
    }
    let code = c as u32;
    let at = DECIMAL.partition_point(|&(_, hi, _)| hi < code);
    match DECIMAL.get(at) {
        Some(&(lo, _, base)) if lo <= code => Some(base as u32 + code - lo),
        _ => None,
    }
}

/// `s.isdigit()`: not empty and every character a digit.
pub fn is_digit_str(s: &str) -> bool {
    if s.bytes().all(|c| c.is_ascii_digit()) {
        return !s.is_empty();
    }
    !s.is_empty() && s.chars().all(is_digit_char)
}

/// The first character (the caller knows `s` is not empty; an empty string gives NUL).
pub fn first_char(s: &str) -> char {
    s.chars().next().unwrap_or('\0')
}

/// Width in bytes of the UTF-8 sequence led by `lead` (valid UTF-8 only).
fn utf8_width(lead: u8) -> usize {
    match lead {
        0x00..=0x7F => 1,
        0x80..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

/// Byte offset `count` characters after byte offset `from` (clamped to the end): a Python index window.
pub fn advance(s: &str, from: usize, count: usize) -> usize {
    let bytes = s.as_bytes();
    let mut at = from.min(bytes.len());
    let end = at.saturating_add(count).min(bytes.len());
    if bytes[at..end].is_ascii() {
        return end; // one byte a character
    }
    let mut left = count;
    while left > 0 && at < bytes.len() {
        at += utf8_width(bytes[at]);
        left -= 1;
    }
    at.min(bytes.len())
}

/// Number of characters (`len(s)`).
pub fn char_len(s: &str) -> usize {
    s.as_bytes().iter().filter(|&&b| (b as i8) >= -0x40).count()
}

/// Characters in `s[..byte]`: the Python index of a byte offset.
pub fn char_index(s: &str, byte: usize) -> usize {
    let head = &s.as_bytes()[..byte.min(s.len())];
    if head.is_ascii() {
        head.len()
    } else {
        head.iter().filter(|&&b| (b as i8) >= -0x40).count()
    }
}

/// `s[:count]` in characters.
pub fn prefix_chars(s: &str, count: usize) -> &str {
    if s.len() <= count {
        return s;
    }
    &s[..advance(s, 0, count)]
}

/// `haystack.find(needle, start, end)` with byte offsets for the window (`end` clamped).
pub fn find_in(haystack: &str, needle: &str, start: usize, end: usize) -> Option<usize> {
    let end = end.min(haystack.len());
    if start > end {
        return None;
    }
    find_bytes(&haystack.as_bytes()[start..end], needle.as_bytes()).map(|at| at + start)
}

/// `needle in haystack[start:start + chars]` (start a byte offset, the window in characters).
pub fn contains_within(haystack: &str, needle: &str, start: usize, chars: usize) -> bool {
    let Some(tail) = haystack.get(start..) else { return false };
    if tail.len() > chars {
        // only the window is searched: the needle must end within its first `chars` characters
        let end = advance(tail, 0, chars);
        return find(&tail[..end], needle).is_some();
    }
    match find(tail, needle) {
        None => false,
        Some(at) => {
            let end = at + needle.len();
            end <= chars || char_index(tail, end) <= chars
        }
    }
}

/// `haystack.find(needle)` as a byte offset. memchr finds candidates for one byte of the needle (not a
/// leading space, which is everywhere); short texts are scanned directly. No searcher is built.
pub fn find(haystack: &str, needle: &str) -> Option<usize> {
    find_bytes(haystack.as_bytes(), needle.as_bytes())
}

fn find_bytes(h: &[u8], n: &[u8]) -> Option<usize> {
    if let [byte] = n {
        return position(h, *byte);
    }
    if n.len() > h.len() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if n.len() >= 2 {
        return find_pair_sse2(h, n);
    }
    let pick = usize::from(n.len() > 1 && n[0] == b' ');
    let key = *n.get(pick)?;
    let last_start = h.len() - n.len();
    if h.len() < 16 {
        return (0..=last_start).find(|&at| h[at + pick] == key && &h[at..at + n.len()] == n);
    }
    let mut from = 0;
    while from <= last_start {
        let start = memchr::memchr(key, &h[from + pick..=last_start + pick])? + from;
        if &h[start..start + n.len()] == n {
            return Some(start);
        }
        from = start + 1;
    }
    None
}

/// The first `n` (two bytes or more, not longer than `h`) in `h`: candidates are where both of its first
/// two bytes match, sixteen places at a time.
#[cfg(target_arch = "x86_64")]
fn find_pair_sse2(h: &[u8], n: &[u8]) -> Option<usize> {
    use std::arch::x86_64::{_mm_and_si128, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
    let last_start = h.len() - n.len();
    let (first, second) = (n[0], n[1]);
    let mut i = 0;
    while i + 17 <= h.len() && i <= last_start {
        // SAFETY: `i + 17 <= h.len()`, so both 16-byte loads (at i and i + 1) are in bounds.
        let mut found = unsafe {
            let here = _mm_loadu_si128(h.as_ptr().add(i).cast());
            let next = _mm_loadu_si128(h.as_ptr().add(i + 1).cast());
            let both = _mm_and_si128(
                _mm_cmpeq_epi8(here, _mm_set1_epi8(first as i8)),
                _mm_cmpeq_epi8(next, _mm_set1_epi8(second as i8)),
            );
            _mm_movemask_epi8(both) as u32
        };
        while found != 0 {
            let at = i + found.trailing_zeros() as usize;
            if at > last_start {
                return None;
            }
            if &h[at..at + n.len()] == n {
                return Some(at);
            }
            found &= found - 1;
        }
        i += 16;
    }
    while i <= last_start {
        if h[i] == first && &h[i..i + n.len()] == n {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The first byte from `from` on that is a digit 2 to 5: sixteen bytes a step, then byte by byte.
#[inline]
pub(super) fn first_code_digit(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_set1_epi8, _mm_sub_epi8,
        };
        while i + 16 <= b.len() {
            // SAFETY: `i + 16 <= b.len()`, so the 16-byte load is in bounds.
            let found = unsafe {
                let block = _mm_sub_epi8(_mm_loadu_si128(b.as_ptr().add(i).cast()), _mm_set1_epi8(b'2' as i8));
                _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_min_epu8(block, _mm_set1_epi8(3)), block)) as u32
            };
            if found != 0 {
                return Some(i + found.trailing_zeros() as usize);
            }
            i += 16;
        }
    }
    while i < b.len() {
        if (b'2'..=b'5').contains(&b[i]) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// `haystack.rfind(needle)` as a byte offset.
pub fn rfind(haystack: &str, needle: &str) -> Option<usize> {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    if n.len() > h.len() {
        return None;
    }
    // keyed on the needle's last byte (" DT=" would stop at every space on its first)
    let last = n.len().checked_sub(1)?;
    let key = n[last];
    let mut end = h.len() - n.len() + 1;
    while end > 0 {
        let start = memchr::memrchr(key, &h[last..end + last])?;
        if &h[start..start + n.len()] == n {
            return Some(start);
        }
        end = start;
    }
    None
}

/// `needle in haystack`.
pub fn contains(haystack: &str, needle: &str) -> bool {
    find(haystack, needle).is_some()
}

/// `s.find(c)` for an ASCII byte.
pub fn find_byte(s: &str, byte: u8) -> Option<usize> {
    position(s.as_bytes(), byte)
}

/// The first `byte` in `b`: sixteen bytes a step from 16 bytes on, else byte by byte; memchr (whose
/// call costs more than a short search) for long texts.
#[inline]
pub(super) fn position(b: &[u8], byte: u8) -> Option<usize> {
    if b.len() >= 128 {
        return memchr::memchr(byte, b);
    }
    #[cfg(target_arch = "x86_64")]
    if b.len() >= 16 {
        use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
        // SAFETY: every load reads 16 bytes starting at most 16 bytes before the end of `b`.
        let found_at = |at: usize| unsafe {
            let block = _mm_loadu_si128(b.as_ptr().add(at).cast());
            _mm_movemask_epi8(_mm_cmpeq_epi8(block, _mm_set1_epi8(byte as i8))) as u32
        };
        let mut at = 0;
        while at + 16 <= b.len() {
            let found = found_at(at);
            if found != 0 {
                return Some(at + found.trailing_zeros() as usize);
            }
            at += 16;
        }
        if at < b.len() {
            // the last 16 bytes, less those already searched
            let last = b.len() - 16;
            let found = found_at(last) >> (at - last);
            if found != 0 {
                return Some(at + found.trailing_zeros() as usize);
            }
        }
        return None;
    }
    b.iter().position(|&c| c == byte)
}

/// `s.split(" ")` without a searcher.
pub fn split_space(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.as_bytes().iter().position(|&c| c == b' ') {
            Some(at) => {
                rest = Some(&current[at + 1..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// `str.strip()` (Unicode whitespace).
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// `str.lstrip()` (Unicode whitespace).
pub fn py_lstrip(s: &str) -> &str {
    s.trim_start_matches(is_space)
}

/// `s.partition(sep)`: (head, tail); tail is empty when `sep` is missing.
pub fn partition<'s>(s: &'s str, sep: &str) -> (&'s str, &'s str) {
    match find(s, sep) {
        Some(at) => (&s[..at], &s[at + sep.len()..]),
        None => (s, &s[s.len()..]),
    }
}

/// `s.partition(sep)` with whether `sep` was found.
pub fn partition3<'s>(s: &'s str, sep: &str) -> (&'s str, bool, &'s str) {
    match find(s, sep) {
        Some(at) => (&s[..at], true, &s[at + sep.len()..]),
        None => (s, false, &s[s.len()..]),
    }
}

/// `text.find("=")` as a character index, or None.
pub fn eq_char_index(tok: &str) -> Option<(usize, usize)> {
    let byte = find_byte(tok, b'=')?;
    Some((byte, char_index(tok, byte)))
}

fn upper_of(c: char, out: &mut String) {
    if c.is_ascii() {
        out.push(c.to_ascii_uppercase());
        return;
    }
    match UPPER_MAP.binary_search_by_key(&(c as u32), |&(code, _)| code) {
        Ok(at) => out.push_str(UPPER_MAP[at].1),
        Err(_) => out.push(c),
    }
}

/// `s.upper()` (CPython's full case mapping).
pub fn py_upper(s: &str) -> Cow<'_, str> {
    if s.is_ascii() {
        if s.bytes().any(|b| b.is_ascii_lowercase()) {
            return Cow::Owned(s.to_ascii_uppercase());
        }
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        upper_of(c, &mut out);
    }
    Cow::Owned(out)
}

/// `s[:count].upper()` of the first characters only (for the phase of an SMTP command).
pub fn upper_head(s: &str, count: usize) -> String {
    let mut out = String::with_capacity(count + 4);
    for c in s.chars().take(count) {
        upper_of(c, &mut out);
    }
    out
}

/// Result of Python's `int(s)` on a string whose characters all pass `isdigit()`: Err when `int()` raises
/// (a digit that is not decimal, such as a superscript).
fn decimal_int(s: &str) -> Result<i64, ()> {
    let mut value: i64 = 0;
    for c in s.chars() {
        let digit = decimal_value(c).ok_or(())?;
        value = value * 10 + digit as i64;
    }
    Ok(value)
}

/// `_to_int`: Ok(None) when `s` is not an integer, Err when Python's `int()` raises ValueError.
pub fn to_int(s: &str) -> Result<Option<i64>, ()> {
    let b = s.as_bytes();
    let (negative, digits) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        _ => (false, b),
    };
    if !digits.is_empty() && b.len() < 19 && digits.iter().all(u8::is_ascii_digit) {
        // the usual case: ASCII digits
        let value = digits.iter().fold(0i64, |acc, &c| acc * 10 + i64::from(c - b'0'));
        return Ok(Some(if negative { -value } else { value }));
    }
    if char_len(s) >= 19 {
        return Ok(None);
    }
    if is_digit_str(s) {
        return decimal_int(s).map(Some);
    }
    if let Some(digits) = s.strip_prefix('-') {
        if is_digit_str(digits) {
            return decimal_int(digits).map(|v| Some(-v));
        }
    }
    Ok(None)
}

/// Python's `float(s)`; None where it raises ValueError.
pub fn py_float(s: &str) -> Option<f64> {
    if s.bytes().all(|b| b.is_ascii() && b != b'_' && b != 0 && b != 0x7f) {
        return ascii_float(s);
    }
    // _PyUnicode_TransformDecimalAndSpaceToASCII: Unicode spaces to ' ', decimals to ASCII, anything else
    // non-ASCII (or DEL) ends the text with '?', which fails.
    let mut ascii = String::with_capacity(s.len());
    for c in s.chars() {
        if (c as u32) < 127 {
            if c == '\0' {
                return None;
            }
            ascii.push(c);
        } else if is_space(c) {
            ascii.push(' ');
        } else {
            ascii.push(char::from_digit(decimal_value(c)?, 10)?);
        }
    }
    let text = if ascii.contains('_') { remove_underscores(&ascii)? } else { ascii };
    ascii_float(&text)
}

/// `float()` of ASCII text without underscores or NUL.
fn ascii_float(text: &str) -> Option<f64> {
    if let Some(value) = short_decimal(text.as_bytes()) {
        return Some(value);
    }
    let text = text.trim_matches(|c: char| matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r'));
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    if unsigned.eq_ignore_ascii_case("inf") || unsigned.eq_ignore_ascii_case("infinity") {
        return Some(if text.starts_with('-') { f64::NEG_INFINITY } else { f64::INFINITY });
    }
    if unsigned.eq_ignore_ascii_case("nan") {
        return Some(if text.starts_with('-') { -f64::NAN } else { f64::NAN });
    }
    if !is_decimal_literal(unsigned) {
        return None;
    }
    text.parse::<f64>().ok()
}

/// `[-]digits[.digits]` with at most 15 digits in all: the quotient of two exact doubles, which IEEE
/// division rounds correctly, so it equals the parsed value (Clinger's fast path). None: not that form.
fn short_decimal(b: &[u8]) -> Option<f64> {
    const POWERS: [f64; 16] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];
    let (negative, digits) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    let (mut mantissa, mut count, mut scale, mut point) = (0u64, 0usize, 0usize, false);
    for &c in digits {
        if c.is_ascii_digit() {
            mantissa = mantissa * 10 + u64::from(c - b'0');
            count += 1;
            scale += usize::from(point);
        } else if c == b'.' && !point {
            point = true;
        } else {
            return None;
        }
    }
    // a digit on both sides of the point
    if count == 0 || count > 15 || !digits[0].is_ascii_digit() || !digits[digits.len() - 1].is_ascii_digit() {
        return None;
    }
    let value = mantissa as f64 / POWERS[scale];
    Some(if negative { -value } else { value })
}

/// `_Py_string_to_number_with_underscores`: an underscore only between two digits.
fn remove_underscores(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut prev = '\0';
    for c in s.chars() {
        if c == '_' {
            if !prev.is_ascii_digit() {
                return None;
            }
        } else {
            if prev == '_' && !c.is_ascii_digit() {
                return None;
            }
            out.push(c);
        }
        prev = c;
    }
    if prev == '_' {
        return None;
    }
    Some(out)
}

/// digits [. digits] [e [sign] digits], at least one mantissa digit (what `PyOS_string_to_double` reads).
fn is_decimal_literal(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let mut mantissa = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
        mantissa += 1;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
            mantissa += 1;
        }
    }
    if mantissa == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    i == b.len()
}

/// A run of Unicode decimal digits from byte `at`, not past `limit_end`: (number of digits, end byte).
/// Counting stops after 16 digits: every caller only needs to know whether the run is short (the
/// patterns read at most 10), and an unbounded count would make a search over a digit run quadratic.
pub fn digit_run(s: &str, at: usize, limit_end: usize) -> (usize, usize) {
    let end_limit = limit_end.min(s.len());
    let mut count = 0;
    let mut pos = at;
    while pos < end_limit && count <= 16 {
        let b = s.as_bytes()[pos];
        if b.is_ascii_digit() {
            pos += 1;
        } else if b < 0x80 {
            break;
        } else {
            let c = first_char(&s[pos..]);
            if decimal_value(c).is_none() || pos + c.len_utf8() > end_limit {
                break;
            }
            pos += c.len_utf8();
        }
        count += 1;
    }
    (count, pos)
}

/// Value of the decimal digits in `s` (all known to be decimal; at most 18).
pub fn digits_value(s: &str) -> i64 {
    s.chars().fold(0i64, |acc, c| acc * 10 + decimal_value(c).unwrap_or(0) as i64)
}

/// One decimal digit at byte `at`: (value, next byte).
pub fn digit_at(s: &str, at: usize) -> Option<(u32, usize)> {
    let b = *s.as_bytes().get(at)?;
    if b.is_ascii_digit() {
        return Some(((b - b'0') as u32, at + 1));
    }
    if b < 0x80 {
        return None;
    }
    let c = first_char(s.get(at..)?);
    decimal_value(c).map(|v| (v, at + c.len_utf8()))
}

/// Value of `count` decimal digits at byte `at`.
pub fn digits_at(s: &str, at: usize, count: usize) -> Option<(u32, usize)> {
    let mut value = 0;
    let mut pos = at;
    for _ in 0..count {
        let (digit, next) = digit_at(s, pos)?;
        value = value * 10 + digit;
        pos = next;
    }
    Some((value, pos))
}

/// The character ending at byte `at` (None at the start).
pub fn char_before(s: &str, at: usize) -> Option<char> {
    s.get(..at)?.chars().next_back()
}

/// `_MSGID_RE.match(s)`: the whole of `s` is a message id.
pub fn is_msgid(s: &str) -> bool {
    msgid_len(s.as_bytes(), 0) == Some(s.len())
}

const fn alnum_table() -> [bool; 256] {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = (byte as u8).is_ascii_alphanumeric();
        byte += 1;
    }
    table
}

static ALNUM: [bool; 256] = alnum_table();

/// `[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}` at `at`: its end.
pub fn msgid_len(b: &[u8], at: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if b.len() >= at + 24 {
        return msgid_len_sse2(b, at);
    }
    let alnum = |c: u8| ALNUM[c as usize];
    let all_alnum = |part: &[u8]| part.iter().fold(true, |ok, &c| ok & alnum(c));
    // the shortest id: 6-6-2 characters
    let head = b.get(at..at + 16)?;
    if head[6] != b'-' || !all_alnum(&head[..6]) || !all_alnum(&head[7..13]) {
        return None;
    }
    // the second part: 6 characters seen, up to 5 more, then '-'
    let mut dash = at + 13;
    while dash < b.len() && dash - at < 18 && alnum(b[dash]) {
        dash += 1;
    }
    if b.get(dash) != Some(&b'-') {
        return None;
    }
    let third_at = dash + 1;
    let mut end = third_at;
    while end < b.len() && end - third_at < 5 && alnum(b[end]) {
        end += 1;
    }
    (2..=4).contains(&(end - third_at)).then_some(end)
}

/// `msgid_len` where 24 bytes are left from `at` (the longest id, 6-11-4, and the byte after it): every
/// byte classified at once into a bit mask (bit k: byte `at + k` is ASCII alphanumeric).
#[cfg(target_arch = "x86_64")]
fn msgid_len_sse2(b: &[u8], at: usize) -> Option<usize> {
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_cmpgt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    // SAFETY: plain SSE2 arithmetic on a value.
    let classify = |block: __m128i| unsafe {
        let above = |x: __m128i, low: u8| _mm_cmpgt_epi8(x, _mm_set1_epi8(low as i8 - 1));
        let below = |x: __m128i, high: u8| _mm_cmpgt_epi8(_mm_set1_epi8(high as i8 + 1), x);
        // bytes of 0x80 and up are negative, so below '0' and below 'a' after the or
        let digit = _mm_and_si128(above(block, b'0'), below(block, b'9'));
        let folded = _mm_or_si128(block, _mm_set1_epi8(0x20));
        let letter = _mm_and_si128(above(folded, b'a'), below(folded, b'z'));
        _mm_movemask_epi8(_mm_or_si128(digit, letter)) as u32
    };
    // SAFETY: `at + 24 <= b.len()` (the caller checks), so both 16-byte loads are in bounds.
    let mask = unsafe {
        let low = classify(_mm_loadu_si128(b.as_ptr().add(at).cast()));
        let high = classify(_mm_loadu_si128(b.as_ptr().add(at + 8).cast()));
        low | (high << 8)
    };
    if mask & 0x3f != 0x3f || b[at + 6] != b'-' {
        return None;
    }
    let second = (!(mask >> 7)).trailing_zeros() as usize;
    if !(6..=11).contains(&second) || b[at + 7 + second] != b'-' {
        return None;
    }
    let third_at = 8 + second;
    let third = ((!(mask >> third_at)).trailing_zeros() as usize).min(5);
    (2..=4).contains(&third).then_some(at + third_at + third)
}

/// `_CODE_RE` (`[2-5]\d\d(?=[ -]|\Z)`) at byte `at`: (code, end byte).
pub fn code_at(s: &str, at: usize) -> Option<(i64, usize)> {
    let b = *s.as_bytes().get(at)?;
    if !(b'2'..=b'5').contains(&b) {
        return None;
    }
    let (tens, next) = digit_at(s, at + 1)?;
    let (ones, end) = digit_at(s, next)?;
    match s.as_bytes().get(end) {
        None | Some(b' ') | Some(b'-') => Some(((b - b'0') as i64 * 100 + tens as i64 * 10 + ones as i64, end)),
        _ => None,
    }
}

fn is_dot_or_decimal(c: char) -> bool {
    c == '.' || decimal_value(c).is_some()
}

/// `_ENHANCED_RE.match(text, at, endpos)`: `(?<![.\d])([245]\.\d{1,3}\.\d{1,3})(?![.\d])` with the text
/// cut at `endpos` (the look-behind sees the real text before `at`). Returns the end of the match.
pub fn enhanced_at(s: &str, at: usize, endpos: usize) -> Option<usize> {
    let end = endpos.min(s.len());
    if at >= end {
        return None;
    }
    let b = s.as_bytes();
    if !matches!(b[at], b'2' | b'4' | b'5') {
        return None;
    }
    if let Some(prev) = char_before(s, at) {
        if is_dot_or_decimal(prev) {
            return None;
        }
    }
    if b.get(at + 1) != Some(&b'.') || at + 1 >= end {
        return None;
    }
    let (first, after_first) = digit_run(s, at + 2, end);
    if !(1..=3).contains(&first) || after_first >= end || b[after_first] != b'.' {
        return None;
    }
    let (second, after_second) = digit_run(s, after_first + 1, end);
    if !(1..=3).contains(&second) {
        return None;
    }
    if after_second < end {
        let next = first_char(&s[after_second..]);
        if is_dot_or_decimal(next) {
            return None;
        }
    }
    Some(after_second)
}

/// `_ENHANCED_RE.search(text)`: (start, end) of the first match.
pub fn enhanced_search(s: &str) -> Option<(usize, usize)> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(at) = first_code_digit(b, from) {
        if b[at] == b'3' {
            from = at + 1;
            continue;
        }
        if let Some(end) = enhanced_at(s, at, s.len()) {
            return Some((at, end));
        }
        from = at + 1;
    }
    None
}

/// `_SPAM_SCORE_RE.search(text).group(1)`: `score=(-?\d{1,6}(?:\.\d{1,6})?)`.
pub fn spam_score_search(s: &str) -> Option<&str> {
    let mut from = 0;
    while let Some(found) = find_in(s, "score=", from, s.len()) {
        let start = found + 6;
        let mut at = start;
        if s.as_bytes().get(at) == Some(&b'-') {
            at += 1;
        }
        let (count, mut end) = digit_run(s, at, s.len());
        if count > 0 {
            if count > 6 {
                end = advance(s, at, 6);
            }
            if s.as_bytes().get(end) == Some(&b'.') {
                let (frac, frac_end) = digit_run(s, end + 1, s.len());
                if frac > 0 {
                    end = if frac > 6 { advance(s, end + 1, 6) } else { frac_end };
                }
            }
            return Some(&s[start..end]);
        }
        from = found + 1;
    }
    None
}

/// `_unescape`: Exim's C-like quoting undone; octal byte runs are read as UTF-8 with replacement.
pub fn unescape(s: &str) -> Cow<'_, str> {
    if find_byte(s, b'\\').is_none() {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut at = 0;
    let mut copied = 0;
    while let Some(found) = memchr::memchr(b'\\', &b[at..]) {
        let slash = at + found;
        out.push_str(&s[copied..slash]);
        let mut octal = Vec::new();
        let mut pos = slash;
        while pos + 3 < b.len() && b[pos] == b'\\' && b[pos + 1..pos + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let value = (b[pos + 1] - b'0') as u32 * 64 + (b[pos + 2] - b'0') as u32 * 8 + (b[pos + 3] - b'0') as u32;
            octal.push((value & 0xFF) as u8);
            pos += 4;
        }
        if !octal.is_empty() {
            out.push_str(&String::from_utf8_lossy(&octal));
            at = pos;
            copied = pos;
            continue;
        }
        match s[slash + 1..].chars().next() {
            Some(c) => {
                out.push(match c {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    'b' => '\x08',
                    'f' => '\x0c',
                    'v' => '\x0b',
                    'e' => '\x1b',
                    'a' => '\x07',
                    other => other,
                });
                at = slash + 1 + c.len_utf8();
                copied = at;
            }
            None => {
                at = slash + 1;
                copied = slash;
            }
        }
    }
    out.push_str(&s[copied..]);
    Cow::Owned(out)
}

/// `_printable`: plausible log text rather than binary noise.
pub fn printable(line: &str) -> bool {
    if py_strip(line).is_empty() {
        return false;
    }
    let mut total = 0usize;
    let mut bad = 0usize;
    for c in line.chars().take(256) {
        total += 1;
        if (c < ' ' && c != '\t') || c == '\u{fffd}' {
            bad += 1;
        }
    }
    bad * 8 < total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_fast_paths_agree_with_the_tables() {
        for code in 0u32..128 {
            let c = char::from_u32(code).unwrap();
            assert_eq!(is_space(c), in_ranges(SPACE, code), "{code}");
            assert_eq!(is_digit_char(c), in_ranges(DIGIT, code), "{code}");
            assert_eq!(is_alpha(c), in_ranges(ALPHA, code), "{code}");
            assert_eq!(is_upper(c), in_ranges(UPPER, code), "{code}");
        }
    }

    #[test]
    fn floats_follow_python() {
        assert_eq!(py_float(" 1_0 "), Some(10.0));
        assert_eq!(py_float("1__0"), None);
        assert_eq!(py_float(".5"), Some(0.5));
        assert_eq!(py_float("5."), Some(5.0));
        assert_eq!(py_float("."), None);
        assert_eq!(py_float("-Infinity"), Some(f64::NEG_INFINITY));
        assert_eq!(py_float("1e"), None);
        assert_eq!(py_float("\u{661}.\u{665}"), Some(1.5));
    }

    #[test]
    fn message_ids_found_alike() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        const BYTES: &[u8] = b"aZ09-- x\xc3\xa9@[`{/:";
        for _ in 0..3_000_000 {
            let mut line = Vec::new();
            let (a, b, c) = (4 + next() % 4, 4 + next() % 10, 1 + next() % 6);
            for part in [a, b, c] {
                for _ in 0..part {
                    let r = next();
                    line.push(if r % 8 == 0 {
                        BYTES[(r / 8 % BYTES.len() as u64) as usize]
                    } else {
                        b'a' + (r % 26) as u8
                    });
                }
                line.push(b'-');
            }
            line.pop();
            for _ in 0..next() % 12 {
                line.push(BYTES[(next() % BYTES.len() as u64) as usize]);
            }
            let fast = if line.len() >= 24 { msgid_len_sse2(&line, 0) } else { continue };
            let alnum = |c: u8| ALNUM[c as usize];
            let all_alnum = |part: &[u8]| part.iter().fold(true, |ok, &c| ok & alnum(c));
            let slow = (|| {
                let head = line.get(..16)?;
                if head[6] != b'-' || !all_alnum(&head[..6]) || !all_alnum(&head[7..13]) {
                    return None;
                }
                let mut dash = 13;
                while dash < line.len() && dash < 18 && alnum(line[dash]) {
                    dash += 1;
                }
                if line.get(dash) != Some(&b'-') {
                    return None;
                }
                let third_at = dash + 1;
                let mut end = third_at;
                while end < line.len() && end - third_at < 5 && alnum(line[end]) {
                    end += 1;
                }
                (2..=4).contains(&(end - third_at)).then_some(end)
            })();
            assert_eq!(fast, slow, "{}", String::from_utf8_lossy(&line));
        }
    }

    #[test]
    fn pair_search_finds_the_first() {
        let mut state = 0x1234_5678_9ABC_DEF1u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..1_000_000 {
            let len = (next() % 80) as usize;
            let h: Vec<u8> = (0..len).map(|_| b"ab :]"[(next() % 5) as usize]).collect();
            let nlen = 2 + (next() % 4) as usize;
            let n: Vec<u8> = (0..nlen).map(|_| b"ab :]"[(next() % 5) as usize]).collect();
            if n.len() > h.len() {
                continue;
            }
            let want = h.windows(n.len()).position(|w| w == n.as_slice());
            assert_eq!(find_pair_sse2(&h, &n), want);
        }
    }

    #[test]
    fn byte_search_finds_the_first() {
        let mut state = 0x0DDB_1A5E_5BAD_5EEDu64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..1_000_000 {
            let len = (next() % 200) as usize;
            let h: Vec<u8> = (0..len).map(|_| if next() % 90 == 0 { b'=' } else { b'a' }).collect();
            assert_eq!(position(&h, b'='), h.iter().position(|&c| c == b'='));
        }
    }

    #[test]
    fn short_decimals_equal_the_full_parse() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2_000_000 {
            let r = next();
            let digits = 1 + (r % 16) as usize;
            let mut text = String::new();
            if r & (1 << 8) != 0 {
                text.push('-');
            }
            let point = ((r >> 9) % (digits as u64 + 2)) as usize;
            for k in 0..digits {
                if k == point {
                    text.push('.');
                }
                text.push(char::from(b'0' + (next() % 10) as u8));
            }
            let fast = short_decimal(text.as_bytes());
            if let Some(value) = fast {
                let full = text.parse::<f64>().unwrap();
                assert_eq!(value.to_bits(), full.to_bits(), "{text}");
            }
        }
    }
}
