//! JSON lines of the native `trackdelivery parse`, byte for byte what `processors/exim/cli.py` writes
//! with orjson: `encode_line` (a parsed line without its empty fields) and `encode_event`
//! (`DeliveryEvent.to_dict()` with `"v"` first).

use std::borrow::Cow;

use super::types::{DeliveryEvent, ParsedLine, RetryState, Text};

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
fn any_escape(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |found, &byte| found | (byte < 0x20) | (byte == b'"') | (byte == b'\\'))
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
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = value.unsigned_abs();
    while rest >= 100 {
        let pair = (rest % 100) as usize * 2;
        rest /= 100;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if rest >= 10 {
        let pair = rest as usize * 2;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        digits[at] = b'0' + rest as u8;
    }
    if value < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
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

#[inline(always)]
fn field_text(out: &mut Vec<u8>, key: &[u8], value: &Option<Text>) {
    push_key(out, key);
    match value {
        Some(text) => push_str(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

#[inline(always)]
fn field_float(out: &mut Vec<u8>, key: &[u8], value: Option<f64>) {
    push_key(out, key);
    match value {
        Some(number) => push_float(out, number),
        None => out.extend_from_slice(b"null"),
    }
}

#[inline(always)]
fn field_int(out: &mut Vec<u8>, key: &[u8], value: Option<i64>) {
    push_key(out, key);
    match value {
        Some(number) => push_int(out, number),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_retry(out: &mut Vec<u8>, retry: &RetryState) {
    out.extend_from_slice(b",\"retry\":{\"attempt\":");
    push_int(out, retry.attempt);
    field_float(out, key!("first_attempt"), retry.first_attempt);
    field_float(out, key!("last_attempt"), retry.last_attempt);
    field_float(out, key!("next_retry"), retry.next_retry);
    field_float(out, key!("give_up"), retry.give_up);
    out.push(b'}');
}

/// Room made before an event is written: its keys, nulls and usual values fit without a reallocation.
const EVENT_RESERVE: usize = 2048;

/// `processors.exim.cli.encode_event`: one event as a JSON object (no newline).
pub fn push_event(out: &mut Vec<u8>, event: &DeliveryEvent) {
    out.reserve(EVENT_RESERVE);
    out.extend_from_slice(b"{\"v\":");
    push_int(out, SCHEMA_VERSION);
    push_key(out, key!("type"));
    push_str(out, event.kind.as_str());
    push_key(out, key!("server"));
    push_str(out, &event.server);
    field_text(out, key!("msgid"), &event.msgid);
    push_key(out, key!("time"));
    push_float(out, event.time);
    field_text(out, key!("recipient"), &event.recipient);
    field_text(out, key!("original_recipient"), &event.original_recipient);
    field_text(out, key!("recipient_domain"), &event.recipient_domain);
    field_float(out, key!("arrival_time"), event.arrival_time);
    field_text(out, key!("sender"), &event.sender);
    field_text(out, key!("sender_domain"), &event.sender_domain);
    field_text(out, key!("cpanel_user"), &event.cpanel_user);
    field_text(out, key!("auth_id"), &event.auth_id);
    field_text(out, key!("client_host"), &event.client_host);
    field_text(out, key!("client_ip"), &event.client_ip);
    field_text(out, key!("protocol"), &event.protocol);
    field_float(out, key!("spam_score"), event.spam_score);
    field_int(out, key!("size"), event.size);
    field_text(out, key!("subject"), &event.subject);
    field_text(out, key!("message_id_header"), &event.message_id_header);
    field_text(out, key!("router"), &event.router);
    field_text(out, key!("transport"), &event.transport);
    field_text(out, key!("remote_host"), &event.remote_host);
    field_text(out, key!("remote_ip"), &event.remote_ip);
    field_text(out, key!("tls"), &event.tls);
    field_text(out, key!("response"), &event.response);
    field_int(out, key!("smtp_code"), event.smtp_code);
    field_text(out, key!("enhanced_code"), &event.enhanced_code);
    field_text(out, key!("smtp_phase"), &event.smtp_phase);
    field_int(out, key!("exim_errno"), event.exim_errno);
    push_key(out, key!("reason"));
    match event.reason {
        Some(reason) => push_str(out, reason.as_str()),
        None => out.extend_from_slice(b"null"),
    }
    field_text(out, key!("hint"), &event.hint);
    push_retry(out, &event.retry);
    field_text(out, key!("bounce_msgid"), &event.bounce_msgid);
    field_text(out, key!("parent_msgid"), &event.parent_msgid);
    field_text(out, key!("delivered_to"), &event.delivered_to);
    push_key(out, key!("event_id"));
    push_str(out, &event.event_id);
    out.push(b'}');
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
