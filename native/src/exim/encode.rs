//! JSON lines of the native `trackdelivery parse`, byte for byte what `processors/exim/cli.py` writes
//! with orjson: `encode_line` (a parsed line without its empty fields) and `encode_event`
//! (`DeliveryEvent.to_dict()` with `"v"` first).

use std::borrow::Cow;

use super::types::{DeliveryEvent, ParsedLine, Text};

/// `trackdelivery.events.SCHEMA_VERSION`, checked against Python at start-up by the driver.
pub const SCHEMA_VERSION: i64 = 1;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Bytes that orjson escapes in a string: `"`, `\\` and the control characters.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = true;
        byte += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Whether any byte needs an escape. Written without an early exit so that it compiles to vector code.
#[cfg(not(target_arch = "x86_64"))]
fn any_escape(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |found, &byte| found | (byte < 0x20) | (byte == b'"') | (byte == b'\\'))
}

/// Nonzero when a byte of `word` needs an escape (below 0x20, `"` or `\\`); exact as a yes or no.
#[inline(always)]
fn flagged(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    (word.wrapping_sub(ONES * 0x20) & !word & HIGH) | zero(word ^ (ONES * 0x22)) | zero(word ^ (ONES * 0x5c))
}

/// Whether any byte needs an escape: 16 bytes at a time (SSE2, always there on x86_64), the last
/// block overlapping the one before; texts under 16 bytes eight (or fewer) at a time.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn any_escape(bytes: &[u8]) -> bool {
    use std::arch::x86_64::*;
    let len = bytes.len();
    if len < 16 {
        let word = |chunk: &[u8]| {
            let mut padded = [b' '; 8];
            padded[..chunk.len()].copy_from_slice(chunk);
            u64::from_le_bytes(padded)
        };
        return if len > 8 {
            let head = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([b' '; 8]));
            let tail = u64::from_le_bytes(bytes[len - 8..].try_into().unwrap_or([b' '; 8]));
            flagged(head) | flagged(tail) != 0
        } else {
            flagged(word(bytes)) != 0
        };
    }
    // SAFETY: every load reads 16 bytes inside `bytes` (len >= 16); SSE2 is part of x86_64.
    unsafe {
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let control = _mm_set1_epi8(0x1f);
        let test = |at: usize| {
            let block = _mm_loadu_si128(bytes.as_ptr().add(at) as *const __m128i);
            let low = _mm_cmpeq_epi8(_mm_min_epu8(block, control), block);
            let special = _mm_or_si128(_mm_cmpeq_epi8(block, quote), _mm_cmpeq_epi8(block, backslash));
            _mm_or_si128(low, special)
        };
        let mut found = _mm_setzero_si128();
        let mut at = 0;
        while at + 16 <= len {
            found = _mm_or_si128(found, test(at));
            at += 16;
        }
        if at < len {
            found = _mm_or_si128(found, test(len - 16));
        }
        _mm_movemask_epi8(found) != 0
    }
}

/// A JSON string as orjson writes it: short escapes for `\b \t \n \f \r`, `\u00XX` for the other
/// control characters, everything else (DEL and non-ASCII included) as UTF-8.
pub fn push_str(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    if !any_escape(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    while let Some(offset) = bytes[start..].iter().position(|&byte| NEEDS_ESCAPE[byte as usize]) {
        let index = start + offset;
        out.extend_from_slice(&bytes[start..index]);
        let byte = bytes[index];
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(byte >> 4) as usize]);
                out.push(HEX[(byte & 15) as usize]);
            }
        }
        start = index + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Whole numbers below this are written as integers plus `.0`, the same text as the general path.
const WHOLE_FAST_LIMIT: f64 = 1e15;

/// A float as orjson writes it (shortest round trip, `.0` on whole numbers, `e+NN`/`e-N` exponents).
pub fn push_float(out: &mut Vec<u8>, value: f64) {
    if !value.is_finite() {
        out.extend_from_slice(b"null");
        return;
    }
    let whole = value as i64; // saturating; exact below 2^53
    if whole as f64 == value && value.abs() < WHOLE_FAST_LIMIT && !(value == 0.0 && value.is_sign_negative()) {
        push_int(out, whole);
        out.extend_from_slice(b".0");
        return;
    }
    let text = format!("{value:?}");
    match text.find('e') {
        Some(exponent) if !text[exponent + 1..].starts_with('-') => {
            out.extend_from_slice(&text.as_bytes()[..=exponent]);
            out.push(b'+');
            out.extend_from_slice(&text.as_bytes()[exponent + 1..]);
        }
        _ => out.extend_from_slice(text.as_bytes()),
    }
}

/// "00" to "99", for writing two digits at a time.
static DIGIT_PAIRS: [u8; 200] = {
    let mut table = [0u8; 200];
    let mut pair = 0;
    while pair < 100 {
        table[pair * 2] = b'0' + (pair / 10) as u8;
        table[pair * 2 + 1] = b'0' + (pair % 10) as u8;
        pair += 1;
    }
    table
};

pub fn push_int(out: &mut Vec<u8>, value: i64) {
    let start = out.len();
    out.resize(start + INT_ROOM, 0);
    let len = format_int(&mut out[start..], value);
    out.truncate(start + len);
}

/// The longest `str(i64)`: a sign and 19 digits.
const INT_ROOM: usize = 20;

/// `10^k` for k in 0..20.
const POWERS_OF_TEN: [u64; 20] = {
    let mut table = [1u64; 20];
    let mut k = 1;
    while k < 20 {
        table[k] = table[k - 1] * 10;
        k += 1;
    }
    table
};

/// The number of decimal digits of `value`.
#[inline(always)]
fn digit_count(value: u64) -> usize {
    if value < 10 {
        return 1;
    }
    // floor(log10) from floor(log2) (1233 / 4096 ~ log10(2)), corrected by one comparison
    let estimate = ((64 - value.leading_zeros() as usize) * 1233) >> 12;
    estimate + 1 - usize::from(value < POWERS_OF_TEN[estimate])
}

/// Writes `str(value)` at the start of `out` and returns its length. The digits go straight to their
/// place: digits built in a scratch buffer and then copied make the copy's wide loads wait for the
/// narrow stores before them.
#[inline(always)]
pub(crate) fn format_int(out: &mut [u8], value: i64) -> usize {
    let mut rest = value.unsigned_abs();
    let negative = usize::from(value < 0);
    let len = digit_count(rest) + negative;
    let out = &mut out[..len];
    let mut at = len;
    while rest >= 100 {
        let pair = (rest % 100) as usize * 2;
        rest /= 100;
        at -= 2;
        out[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if rest >= 10 {
        let pair = rest as usize * 2;
        out[at - 2..at].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        out[at - 1] = b'0' + rest as u8;
    }
    if negative == 1 {
        out[0] = b'-';
    }
    len
}

/// `,"name":` as one literal.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":").as_bytes()
    };
}

#[inline(always)]
fn push_key(out: &mut Vec<u8>, key: &[u8]) {
    out.extend_from_slice(key);
}

/// Writes into room reserved beforehand (see `event_bound`): no capacity check per piece.
struct Cursor {
    at: *mut u8,
}

impl Cursor {
    /// # Safety
    /// There must be room for `bytes` (the caller reserved an upper bound of everything written).
    #[inline(always)]
    unsafe fn put(&mut self, bytes: &[u8]) {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.at, bytes.len());
        self.at = self.at.add(bytes.len());
    }

    /// # Safety
    /// As `put`.
    #[inline(always)]
    unsafe fn byte(&mut self, byte: u8) {
        *self.at = byte;
        self.at = self.at.add(1);
    }

    /// # Safety
    /// Room for `2 + 6 * text.len()` bytes plus 16 (the fixed room of an event covers the 16).
    #[inline(always)]
    unsafe fn text(&mut self, text: &str) {
        let bytes = text.as_bytes();
        self.byte(b'"');
        if !self.copy_plain(bytes) {
            self.at = write_escaped(self.at, bytes);
        }
        self.byte(b'"');
    }

    /// Copies `bytes` when none needs an escape (true); else writes nothing that counts (false).
    /// Blocks of 16 are copied as they are checked (SSE2); the last block overlaps the one before,
    /// and texts under 16 bytes are moved in two overlapping words. May write up to 16 bytes past
    /// the text (into reserved room, overwritten later).
    ///
    /// # Safety
    /// Room for `bytes.len() + 16` bytes.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn copy_plain(&mut self, bytes: &[u8]) -> bool {
        use std::arch::x86_64::*;
        let len = bytes.len();
        let source = bytes.as_ptr();
        if len < 16 {
            if len >= 8 {
                let head = (source as *const u64).read_unaligned();
                let tail = (source.add(len - 8) as *const u64).read_unaligned();
                if flagged(head) | flagged(tail) != 0 {
                    return false;
                }
                (self.at as *mut u64).write_unaligned(head);
                (self.at.add(len - 8) as *mut u64).write_unaligned(tail);
            } else if len >= 4 {
                let head = (source as *const u32).read_unaligned();
                let tail = (source.add(len - 4) as *const u32).read_unaligned();
                let word = u64::from(head) | (u64::from(tail) << 32);
                if flagged(word) != 0 {
                    return false;
                }
                (self.at as *mut u32).write_unaligned(head);
                (self.at.add(len - 4) as *mut u32).write_unaligned(tail);
            } else {
                for index in 0..len {
                    let byte = *source.add(index);
                    if NEEDS_ESCAPE[byte as usize] {
                        return false;
                    }
                    *self.at.add(index) = byte;
                }
            }
            self.at = self.at.add(len);
            return true;
        }
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let control = _mm_set1_epi8(0x1f);
        let mut found = _mm_setzero_si128();
        let mut at = 0;
        loop {
            let from = if at + 16 <= len { at } else { len - 16 };
            let block = _mm_loadu_si128(source.add(from) as *const __m128i);
            let low = _mm_cmpeq_epi8(_mm_min_epu8(block, control), block);
            let special = _mm_or_si128(_mm_cmpeq_epi8(block, quote), _mm_cmpeq_epi8(block, backslash));
            found = _mm_or_si128(found, _mm_or_si128(low, special));
            _mm_storeu_si128(self.at.add(from) as *mut __m128i, block);
            at += 16;
            if at >= len {
                break;
            }
        }
        if _mm_movemask_epi8(found) != 0 {
            return false;
        }
        self.at = self.at.add(len);
        true
    }

    /// # Safety
    /// Room for `bytes.len()` bytes.
    #[cfg(not(target_arch = "x86_64"))]
    #[inline(always)]
    unsafe fn copy_plain(&mut self, bytes: &[u8]) -> bool {
        if any_escape(bytes) {
            return false;
        }
        self.put(bytes);
        true
    }

    /// # Safety
    /// As `text`.
    #[inline(always)]
    unsafe fn escaped(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if !NEEDS_ESCAPE[byte as usize] {
                self.byte(byte);
                continue;
            }
            match byte {
                b'"' => self.put(b"\\\""),
                b'\\' => self.put(b"\\\\"),
                b'\n' => self.put(b"\\n"),
                b'\r' => self.put(b"\\r"),
                b'\t' => self.put(b"\\t"),
                0x08 => self.put(b"\\b"),
                0x0c => self.put(b"\\f"),
                _ => {
                    self.put(b"\\u00");
                    self.byte(HEX[(byte >> 4) as usize]);
                    self.byte(HEX[(byte & 15) as usize]);
                }
            }
        }
    }

    /// # Safety
    /// Room for `NUMBER_ROOM` bytes.
    #[inline(always)]
    unsafe fn int(&mut self, value: i64) {
        self.at = write_int(self.at, value);
    }

    /// Writes a float; returns where its text is, for `again`.
    ///
    /// # Safety
    /// Room for `NUMBER_ROOM` bytes.
    #[inline(always)]
    unsafe fn float(&mut self, value: f64) -> Written {
        let start = self.at;
        self.at = write_float(self.at, value);
        Written { start, len: self.at.offset_from(start) as usize }
    }

    /// Copies a text written before in this output.
    ///
    /// # Safety
    /// `text` lies in the output before the cursor; room for its length.
    #[inline(always)]
    unsafe fn again(&mut self, text: Written) {
        std::ptr::copy_nonoverlapping(text.start, self.at, text.len);
        self.at = self.at.add(text.len);
    }

    /// # Safety
    /// Room for the key and `2 + 6 * len` bytes.
    #[inline(always)]
    unsafe fn field_text(&mut self, key: &[u8], value: &Option<Text>) {
        self.put(key);
        match value {
            Some(text) => self.text(text),
            None => self.put(b"null"),
        }
    }

    /// # Safety
    /// Room for the key and `NUMBER_ROOM` bytes.
    #[inline(always)]
    unsafe fn field_float(&mut self, key: &[u8], value: Option<f64>) {
        self.put(key);
        match value {
            Some(number) => {
                self.float(number);
            }
            None => self.put(b"null"),
        }
    }

    /// # Safety
    /// Room for the key and `NUMBER_ROOM` bytes.
    #[inline(always)]
    unsafe fn field_int(&mut self, key: &[u8], value: Option<i64>) {
        self.put(key);
        match value {
            Some(number) => self.int(number),
            None => self.put(b"null"),
        }
    }
}

/// Powers of ten that are exact in an f64.
const POWERS: [f64; 7] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6];

/// A float of at most six decimals between 1e-3 and 1e9 written as its shortest round trip, without
/// the general formatting: the first `k` for which `round(v * 10^k) / 10^k == v` (IEEE division is
/// correctly rounded, so that decimal reads back as `v`; fewer decimals are fewer digits in this
/// range, and at most one `k`-decimal number is that close to `v` since 1e-6 exceeds the spacing of
/// floats below 1e9). None for other values. Returns the length written at the start of `digits`.
fn short_decimal(digits: &mut [u8], value: f64) -> Option<usize> {
    let magnitude = value.abs();
    if !(1e-3..1e9).contains(&magnitude) {
        return None;
    }
    for (k, &power) in POWERS.iter().enumerate().skip(1) {
        let scaled = (magnitude * power).round();
        if scaled / power != magnitude {
            continue;
        }
        let scaled = scaled as u64;
        let scale = power as u64;
        let (whole, fraction) = (scaled / scale, scaled % scale);
        let mut len = 0;
        if value < 0.0 {
            digits[0] = b'-';
            len = 1;
        }
        len += format_int(&mut digits[len..], whole as i64);
        digits[len] = b'.';
        len += 1;
        let mut rest = fraction;
        for index in (0..k).rev() {
            digits[len + index] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        return Some(len + k);
    }
    None
}

/// Where a number's text was written, to be copied where it repeats.
#[derive(Clone, Copy)]
struct Written {
    start: *const u8,
    len: usize,
}

/// Writes a float as `push_float` does, straight to its place (digits built elsewhere and then copied
/// stall the copy on store forwarding); returns the end.
///
/// # Safety
/// Room for `NUMBER_ROOM` bytes at `at`.
#[inline(never)]
unsafe fn write_float(at: *mut u8, value: f64) -> *mut u8 {
    // SAFETY: the caller reserved `NUMBER_ROOM` bytes at `at`
    let room = std::slice::from_raw_parts_mut(at, NUMBER_ROOM);
    let whole = value as i64; // saturating; exact below 2^53
    if whole as f64 == value && value.abs() < WHOLE_FAST_LIMIT && !(value == 0.0 && value.is_sign_negative()) {
        let len = format_int(room, whole);
        room[len..len + 2].copy_from_slice(b".0");
        return at.add(len + 2);
    }
    if let Some(len) = short_decimal(room, value) {
        return at.add(len);
    }
    let mut text = Vec::with_capacity(NUMBER_ROOM);
    push_float(&mut text, value);
    let len = text.len().min(NUMBER_ROOM);
    room[..len].copy_from_slice(&text[..len]);
    at.add(len)
}

/// Writes an integer at `at`; returns the end. May write up to 24 bytes.
///
/// # Safety
/// Room for `NUMBER_ROOM` bytes at `at`.
#[inline(never)]
unsafe fn write_int(at: *mut u8, value: i64) -> *mut u8 {
    // SAFETY: the caller reserved `NUMBER_ROOM` bytes at `at`, more than the 20 an i64 takes
    let room = std::slice::from_raw_parts_mut(at, NUMBER_ROOM);
    at.add(format_int(room, value))
}

/// `Cursor::escaped` at `at`, out of line; returns the end.
///
/// # Safety
/// Room for `6 * bytes.len()` bytes at `at`.
#[inline(never)]
unsafe fn write_escaped(at: *mut u8, bytes: &[u8]) -> *mut u8 {
    let mut cursor = Cursor { at };
    cursor.escaped(bytes);
    cursor.at
}

/// Room for a number: orjson's longest float (`-2.2250738585072014e-308`) or an i64, with margin.
const NUMBER_ROOM: usize = 32;

/// Room for everything of an event but its free texts: keys, punctuation, numbers, nulls, enums and
/// the id (the keys take about 500 bytes; 13 numbers at most `NUMBER_ROOM` each).
const EVENT_FIXED_ROOM: usize = 1536;

/// An upper bound of an event's JSON length: the fixed room plus each text escaped at worst.
pub(super) fn event_bound(event: &DeliveryEvent) -> usize {
    let len = |value: &Option<Text>| value.as_ref().map_or(0, |text| text.len());
    let texts = event.server.len()
        + len(&event.msgid)
        + len(&event.recipient)
        + len(&event.original_recipient)
        + len(&event.recipient_domain)
        + len(&event.sender)
        + len(&event.sender_domain)
        + len(&event.cpanel_user)
        + len(&event.auth_id)
        + len(&event.client_host)
        + len(&event.client_ip)
        + len(&event.protocol)
        + len(&event.subject)
        + len(&event.message_id_header)
        + len(&event.router)
        + len(&event.transport)
        + len(&event.remote_host)
        + len(&event.remote_ip)
        + len(&event.tls)
        + len(&event.response)
        + len(&event.enhanced_code)
        + len(&event.smtp_phase)
        + len(&event.hint)
        + len(&event.bounce_msgid)
        + len(&event.parent_msgid)
        + len(&event.delivered_to);
    EVENT_FIXED_ROOM + 6 * texts
}

/// `processors.exim.cli.encode_event`: one event as a JSON object (no newline).
/// `bound` is `event_bound(event)`, which the caller has computed to choose where the event goes.
pub(super) fn push_event(out: &mut Vec<u8>, event: &DeliveryEvent, bound: usize) {
    debug_assert!(!event.id_pending, "an event is written before its id is computed");
    debug_assert!(bound == event_bound(event));
    out.reserve(bound);
    let start = out.len();
    // SAFETY: `event_bound` is an upper bound of what is written below (every text at most 6 bytes
    // per byte plus its quotes, which the fixed room covers along with keys, numbers and nulls), and
    // all of it is reserved; every byte up to the cursor is written before the length is set.
    unsafe {
        let base = out.as_mut_ptr().add(start);
        let mut cursor = Cursor { at: base };
        let c = &mut cursor;
        c.put(b"{\"v\":");
        c.int(SCHEMA_VERSION);
        c.put(key!("type"));
        c.byte(b'"');
        c.put(event.kind.as_str().as_bytes());
        c.byte(b'"');
        c.put(key!("server"));
        c.text(&event.server);
        c.field_text(key!("msgid"), &event.msgid);
        // times repeat within an event (time, arrival, first and last attempt): each formatted once,
        // copied from where it was written first
        c.put(key!("time"));
        let time = c.float(event.time);
        let time_bits = event.time.to_bits();
        // the first other time written (usually the arrival), with its bits
        let mut other: Option<(u64, Written)> = None;
        let when = |c: &mut Cursor, key: &[u8], value: Option<f64>, other: &mut Option<(u64, Written)>| {
            c.put(key);
            match value {
                None => c.put(b"null"),
                Some(value) if value.to_bits() == time_bits => c.again(time),
                Some(value) => match *other {
                    Some((bits, text)) if bits == value.to_bits() => c.again(text),
                    _ => {
                        let text = c.float(value);
                        other.get_or_insert((value.to_bits(), text));
                    }
                },
            }
        };
        c.field_text(key!("recipient"), &event.recipient);
        c.field_text(key!("original_recipient"), &event.original_recipient);
        c.field_text(key!("recipient_domain"), &event.recipient_domain);
        when(c, key!("arrival_time"), event.arrival_time, &mut other);
        c.field_text(key!("sender"), &event.sender);
        c.field_text(key!("sender_domain"), &event.sender_domain);
        c.field_text(key!("cpanel_user"), &event.cpanel_user);
        c.field_text(key!("auth_id"), &event.auth_id);
        c.field_text(key!("client_host"), &event.client_host);
        c.field_text(key!("client_ip"), &event.client_ip);
        c.field_text(key!("protocol"), &event.protocol);
        c.field_float(key!("spam_score"), event.spam_score);
        c.field_int(key!("size"), event.size);
        c.field_text(key!("subject"), &event.subject);
        c.field_text(key!("message_id_header"), &event.message_id_header);
        c.field_text(key!("router"), &event.router);
        c.field_text(key!("transport"), &event.transport);
        c.field_text(key!("remote_host"), &event.remote_host);
        c.field_text(key!("remote_ip"), &event.remote_ip);
        c.field_text(key!("tls"), &event.tls);
        c.field_text(key!("response"), &event.response);
        c.field_int(key!("smtp_code"), event.smtp_code);
        c.field_text(key!("enhanced_code"), &event.enhanced_code);
        c.field_text(key!("smtp_phase"), &event.smtp_phase);
        c.field_int(key!("exim_errno"), event.exim_errno);
        c.put(key!("reason"));
        match event.reason {
            Some(reason) => {
                c.byte(b'"');
                c.put(reason.as_str().as_bytes());
                c.byte(b'"');
            }
            None => c.put(b"null"),
        }
        c.field_text(key!("hint"), &event.hint);
        c.put(b",\"retry\":{\"attempt\":");
        c.int(event.retry.attempt);
        when(c, key!("first_attempt"), event.retry.first_attempt, &mut other);
        when(c, key!("last_attempt"), event.retry.last_attempt, &mut other);
        when(c, key!("next_retry"), event.retry.next_retry, &mut other);
        when(c, key!("give_up"), event.retry.give_up, &mut other);
        c.byte(b'}');
        c.field_text(key!("bounce_msgid"), &event.bounce_msgid);
        c.field_text(key!("parent_msgid"), &event.parent_msgid);
        c.field_text(key!("delivered_to"), &event.delivered_to);
        c.put(key!("event_id"));
        c.byte(b'"');
        for word in event.event_id.hex_words() {
            c.put(&word.to_le_bytes());
        }
        c.put(b"\"}");
        let written = cursor.at.offset_from(base) as usize;
        debug_assert!(written <= bound);
        out.set_len(start + written);
    }
}

fn line_text(out: &mut Vec<u8>, key: &[u8], value: &Option<Cow<'_, str>>) {
    if let Some(text) = value {
        if !text.is_empty() {
            push_key(out, key);
            push_str(out, text);
        }
    }
}

fn line_int(out: &mut Vec<u8>, key: &[u8], value: Option<i64>) {
    if let Some(number) = value {
        push_key(out, key);
        push_int(out, number);
    }
}

fn line_float(out: &mut Vec<u8>, key: &[u8], value: Option<f64>) {
    if let Some(number) = value {
        push_key(out, key);
        push_float(out, number);
    }
}

fn line_list(out: &mut Vec<u8>, key: &[u8], values: &[Cow<'_, str>]) {
    if values.is_empty() {
        return;
    }
    push_key(out, key);
    out.push(b'[');
    for (index, value) in values.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        push_str(out, value);
    }
    out.push(b']');
}

/// `processors.exim.cli.encode_line`: the line number, server, kind and message id, then every field
/// of the parsed line that is not empty (None, "", [], {} and False are left out), in field order.
pub fn push_line(out: &mut Vec<u8>, number: u64, server: &str, line: &ParsedLine<'_>) {
    out.extend_from_slice(b"{\"line\":");
    push_int(out, i64::try_from(number).unwrap_or(i64::MAX));
    push_key(out, key!("server"));
    push_str(out, server);
    push_key(out, key!("kind"));
    push_str(out, line.kind.as_str());
    push_key(out, key!("msgid"));
    match &line.msgid {
        Some(msgid) => push_str(out, msgid),
        None => out.extend_from_slice(b"null"),
    }
    if !line.raw.is_empty() {
        push_key(out, key!("raw"));
        push_str(out, &line.raw);
    }
    line_float(out, key!("time"), line.time);
    line_int(out, key!("pid"), line.pid);
    line_text(out, key!("address"), &line.address);
    line_list(out, key!("parents"), &line.parents);
    line_text(out, key!("sender"), &line.sender);
    line_list(out, key!("recipients"), &line.recipients);
    line_text(out, key!("router"), &line.router);
    line_text(out, key!("transport"), &line.transport);
    line_text(out, key!("bounce_parent"), &line.bounce_parent);
    line_text(out, key!("host"), &line.host);
    line_text(out, key!("helo"), &line.helo);
    line_text(out, key!("host_ip"), &line.host_ip);
    line_int(out, key!("host_port"), line.host_port);
    if line.host_reused {
        out.extend_from_slice(b",\"host_reused\":true");
    }
    line_text(out, key!("interface_ip"), &line.interface_ip);
    line_text(out, key!("user"), &line.user);
    line_text(out, key!("auth"), &line.auth);
    line_text(out, key!("protocol"), &line.protocol);
    line_int(out, key!("size"), line.size);
    line_text(out, key!("subject"), &line.subject);
    line_text(out, key!("message_id_header"), &line.message_id_header);
    line_text(out, key!("tls"), &line.tls);
    line_text(out, key!("confirmation"), &line.confirmation);
    line_int(out, key!("errno"), line.errno);
    line_text(out, key!("error"), &line.error);
    line_int(out, key!("smtp_code"), line.smtp_code);
    line_text(out, key!("enhanced_code"), &line.enhanced_code);
    line_text(out, key!("smtp_phase"), &line.smtp_phase);
    line_float(out, key!("spam_score"), line.spam_score);
    if line.is_spam == Some(true) {
        out.extend_from_slice(b",\"is_spam\":true");
    }
    line_text(out, key!("cpanel_domain"), &line.cpanel_domain);
    line_text(out, key!("detail"), &line.detail);
    if !line.extra.is_empty() {
        push_key(out, key!("extra"));
        out.push(b'{');
        for (index, (key, value)) in line.extra.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            push_str(out, key);
            out.push(b':');
            push_str(out, value);
        }
        out.push(b'}');
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn general(value: f64) -> Vec<u8> {
        let text = format!("{value:?}");
        text.into_bytes()
    }

    #[test]
    fn short_decimals_match_the_general_path() {
        let mut state: u64 = 0x1234_5678_9abc_def1;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut checked = 0;
        for round in 0..4_000_000u64 {
            let raw = next();
            let value = match round % 4 {
                0 => (raw % 100_000) as f64 / 10f64.powi((raw >> 40) as i32 % 7),
                1 => f64::from_bits(raw >> 2 | 0x3f00_0000_0000_0000) * 1e3,
                2 => (raw % 2_000_000_000) as f64 / 1e6 - 1000.0,
                _ => {
                    ((raw % 1_000_000_000) as f64 + (raw >> 50) as f64 / 16384.0)
                        * if raw & 1 == 1 { -1.0 } else { 1.0 }
                }
            };
            let mut digits = [0u8; 32];
            if let Some(len) = short_decimal(&mut digits, value) {
                assert_eq!(&digits[..len], &general(value)[..], "{value:?}");
                checked += 1;
            }
        }
        assert!(checked > 1_000_000);
    }

    #[test]
    fn any_escape_matches_bytes() {
        let mut state: u64 = 99;
        for len in 0..80usize {
            for _ in 0..2000 {
                let mut bytes = Vec::new();
                for _ in 0..len {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let byte = if state.is_multiple_of(50) { (state >> 8) as u8 } else { b'a' + (state % 60) as u8 };
                    bytes.push(byte & 0x7f);
                }
                let expected = bytes.iter().any(|&byte| byte < 0x20 || byte == b'"' || byte == b'\\');
                let text = String::from_utf8(bytes).unwrap();
                assert_eq!(any_escape(text.as_bytes()), expected, "{text:?}");
                let mut out = vec![0u8; 2 + 6 * len + 64];
                let start = out.as_mut_ptr();
                let mut cursor = Cursor { at: start };
                // SAFETY: the buffer has the room `text` needs
                let written = unsafe {
                    cursor.text(&text);
                    cursor.at.offset_from(start) as usize
                };
                let mut reference = Vec::new();
                push_str(&mut reference, &text);
                assert_eq!(&out[..written], &reference[..], "{text:?}");
            }
        }
    }
}
