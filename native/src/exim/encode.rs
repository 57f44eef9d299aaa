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

/// A JSON string as orjson writes it: short escapes for `\b \t \n \f \r`, `\u00XX` for the other
/// control characters, everything else (DEL and non-ASCII included) as UTF-8.
pub fn push_str(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
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
    if value.fract() == 0.0 && value.abs() < WHOLE_FAST_LIMIT && !(value == 0.0 && value.is_sign_negative()) {
        push_int(out, value as i64);
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

pub fn push_int(out: &mut Vec<u8>, value: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = value.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if value < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

fn push_key(out: &mut Vec<u8>, key: &str) {
    out.push(b',');
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

fn field_text(out: &mut Vec<u8>, key: &str, value: &Option<Text>) {
    push_key(out, key);
    match value {
        Some(text) => push_str(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

fn field_float(out: &mut Vec<u8>, key: &str, value: Option<f64>) {
    push_key(out, key);
    match value {
        Some(number) => push_float(out, number),
        None => out.extend_from_slice(b"null"),
    }
}

fn field_int(out: &mut Vec<u8>, key: &str, value: Option<i64>) {
    push_key(out, key);
    match value {
        Some(number) => push_int(out, number),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_retry(out: &mut Vec<u8>, retry: &RetryState) {
    out.extend_from_slice(b",\"retry\":{\"attempt\":");
    push_int(out, retry.attempt);
    field_float(out, "first_attempt", retry.first_attempt);
    field_float(out, "last_attempt", retry.last_attempt);
    field_float(out, "next_retry", retry.next_retry);
    field_float(out, "give_up", retry.give_up);
    out.push(b'}');
}

/// `processors.exim.cli.encode_event`: one event as a JSON object (no newline).
pub fn push_event(out: &mut Vec<u8>, event: &DeliveryEvent) {
    out.extend_from_slice(b"{\"v\":");
    push_int(out, SCHEMA_VERSION);
    push_key(out, "type");
    push_str(out, event.kind.as_str());
    push_key(out, "server");
    push_str(out, &event.server);
    field_text(out, "msgid", &event.msgid);
    push_key(out, "time");
    push_float(out, event.time);
    field_text(out, "recipient", &event.recipient);
    field_text(out, "original_recipient", &event.original_recipient);
    field_text(out, "recipient_domain", &event.recipient_domain);
    field_float(out, "arrival_time", event.arrival_time);
    field_text(out, "sender", &event.sender);
    field_text(out, "sender_domain", &event.sender_domain);
    field_text(out, "cpanel_user", &event.cpanel_user);
    field_text(out, "auth_id", &event.auth_id);
    field_text(out, "client_host", &event.client_host);
    field_text(out, "client_ip", &event.client_ip);
    field_text(out, "protocol", &event.protocol);
    field_float(out, "spam_score", event.spam_score);
    field_int(out, "size", event.size);
    field_text(out, "subject", &event.subject);
    field_text(out, "message_id_header", &event.message_id_header);
    field_text(out, "router", &event.router);
    field_text(out, "transport", &event.transport);
    field_text(out, "remote_host", &event.remote_host);
    field_text(out, "remote_ip", &event.remote_ip);
    field_text(out, "tls", &event.tls);
    field_text(out, "response", &event.response);
    field_int(out, "smtp_code", event.smtp_code);
    field_text(out, "enhanced_code", &event.enhanced_code);
    field_text(out, "smtp_phase", &event.smtp_phase);
    field_int(out, "exim_errno", event.exim_errno);
    push_key(out, "reason");
    match event.reason {
        Some(reason) => push_str(out, reason.as_str()),
        None => out.extend_from_slice(b"null"),
    }
    field_text(out, "hint", &event.hint);
    push_retry(out, &event.retry);
    field_text(out, "bounce_msgid", &event.bounce_msgid);
    field_text(out, "parent_msgid", &event.parent_msgid);
    field_text(out, "delivered_to", &event.delivered_to);
    push_key(out, "event_id");
    push_str(out, &event.event_id);
    out.push(b'}');
}

fn line_text(out: &mut Vec<u8>, key: &str, value: &Option<Cow<'_, str>>) {
    if let Some(text) = value {
        if !text.is_empty() {
            push_key(out, key);
            push_str(out, text);
        }
    }
}

fn line_int(out: &mut Vec<u8>, key: &str, value: Option<i64>) {
    if let Some(number) = value {
        push_key(out, key);
        push_int(out, number);
    }
}

fn line_float(out: &mut Vec<u8>, key: &str, value: Option<f64>) {
    if let Some(number) = value {
        push_key(out, key);
        push_float(out, number);
    }
}

fn line_list(out: &mut Vec<u8>, key: &str, values: &[Cow<'_, str>]) {
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
    push_key(out, "server");
    push_str(out, server);
    push_key(out, "kind");
    push_str(out, line.kind.as_str());
    push_key(out, "msgid");
    match &line.msgid {
        Some(msgid) => push_str(out, msgid),
        None => out.extend_from_slice(b"null"),
    }
    if !line.raw.is_empty() {
        push_key(out, "raw");
        push_str(out, &line.raw);
    }
    line_float(out, "time", line.time);
    line_int(out, "pid", line.pid);
    line_text(out, "address", &line.address);
    line_list(out, "parents", &line.parents);
    line_text(out, "sender", &line.sender);
    line_list(out, "recipients", &line.recipients);
    line_text(out, "router", &line.router);
    line_text(out, "transport", &line.transport);
    line_text(out, "bounce_parent", &line.bounce_parent);
    line_text(out, "host", &line.host);
    line_text(out, "helo", &line.helo);
    line_text(out, "host_ip", &line.host_ip);
    line_int(out, "host_port", line.host_port);
    if line.host_reused {
        out.extend_from_slice(b",\"host_reused\":true");
    }
    line_text(out, "interface_ip", &line.interface_ip);
    line_text(out, "user", &line.user);
    line_text(out, "auth", &line.auth);
    line_text(out, "protocol", &line.protocol);
    line_int(out, "size", line.size);
    line_text(out, "subject", &line.subject);
    line_text(out, "message_id_header", &line.message_id_header);
    line_text(out, "tls", &line.tls);
    line_text(out, "confirmation", &line.confirmation);
    line_int(out, "errno", line.errno);
    line_text(out, "error", &line.error);
    line_int(out, "smtp_code", line.smtp_code);
    line_text(out, "enhanced_code", &line.enhanced_code);
    line_text(out, "smtp_phase", &line.smtp_phase);
    line_float(out, "spam_score", line.spam_score);
    if line.is_spam == Some(true) {
        out.extend_from_slice(b",\"is_spam\":true");
    }
    line_text(out, "cpanel_domain", &line.cpanel_domain);
    line_text(out, "detail", &line.detail);
    if !line.extra.is_empty() {
        push_key(out, "extra");
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
