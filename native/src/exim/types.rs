//! Types shared by the native Exim parser, classifier, correlator and driver.
//!
//! They mirror `processors/exim/types.py` (`LineKind`, `ParsedLine`) and `trackdelivery/events.py`
//! (`EventType`, `Reason`, `RetryState`, `DeliveryEvent`) field for field: the native path must write
//! the same JSON as the Python one, byte for byte.

use std::borrow::Cow;
use std::rc::Rc;

/// Shared immutable text: arrival data is attached to every event of a message, so it is cloned often.
pub type Text = Rc<str>;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            #[allow(dead_code)] // not every enum is read from text
            pub fn from_name(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }

            pub fn index(self) -> usize {
                self as usize
            }
        }
    };
}

string_enum!(
    /// `processors.exim.types.LineKind`.
    LineKind {
        Arrival = "arrival",
        FakeReject = "fakereject",
        Delivery = "delivery",
        DeliveryMore = "delivery_more",
        Cutthrough = "cutthrough",
        Suppressed = "suppressed",
        Deferral = "deferral",
        Failure = "failure",
        Completed = "completed",
        Frozen = "frozen",
        Unfrozen = "unfrozen",
        Cancelled = "cancelled",
        ErrorIgnored = "error_ignored",
        HostError = "host_error",
        Rejection = "rejection",
        SpamScore = "spam_score",
        SenderIdent = "sender_identification",
        ConnectionIdent = "connection_identification",
        ConnectionOutbound = "connection_outbound",
        Connection = "connection",
        Protocol = "protocol",
        QueueRun = "queue_run",
        Arguments = "arguments",
        MessageInfo = "message_info",
        Daemon = "daemon",
        Note = "note",
        Continuation = "continuation",
        Unknown = "unknown",
    }
);

string_enum!(
    /// `trackdelivery.events.EventType`.
    EventType {
        Delivered = "delivered",
        Deferred = "deferred",
        Bounced = "bounced",
        Expired = "expired",
        Rejected = "rejected",
        Filtered = "filtered",
        Archived = "archived",
        InProgress = "in_progress",
        Frozen = "frozen",
        Cancelled = "cancelled",
    }
);

string_enum!(
    /// `trackdelivery.events.Reason`.
    Reason {
        RecipientUnknown = "recipient_unknown",
        RecipientDomainInvalid = "recipient_domain_invalid",
        MailboxInactive = "mailbox_inactive",
        MailboxFull = "mailbox_full",
        MessageTooLarge = "message_too_large",
        Greylisted = "greylisted",
        RateLimited = "rate_limited",
        IpReputation = "ip_reputation",
        DomainOrContentReputation = "domain_or_content_reputation",
        AuthFailure = "auth_failure",
        PolicyRejection = "policy_rejection",
        RelayDenied = "relay_denied",
        VirusOrAttachment = "virus_or_attachment",
        TlsFailure = "tls_failure",
        ConnectionFailure = "connection_failure",
        DnsFailure = "dns_failure",
        RemoteServerError = "remote_server_error",
        ProtocolError = "protocol_error",
        LocalLimit = "local_limit",
        LocalDeliveryError = "local_delivery_error",
        RetryWait = "retry_wait",
        Expired = "expired",
        Unknown = "unknown",
    }
);

/// One main-log line taken apart (`processors.exim.types.ParsedLine`). Strings borrow from the line
/// where they can; every string is untrusted and already bounded by the parser.
#[derive(Clone, Debug)]
pub struct ParsedLine<'a> {
    pub kind: LineKind,
    pub raw: Cow<'a, str>,
    pub time: Option<f64>,
    pub msgid: Option<Cow<'a, str>>,
    pub pid: Option<i64>,
    pub address: Option<Cow<'a, str>>,
    pub parents: Vec<Cow<'a, str>>,
    pub sender: Option<Cow<'a, str>>,
    pub recipients: Vec<Cow<'a, str>>,
    pub router: Option<Cow<'a, str>>,
    pub transport: Option<Cow<'a, str>>,
    pub bounce_parent: Option<Cow<'a, str>>,
    pub host: Option<Cow<'a, str>>,
    pub helo: Option<Cow<'a, str>>,
    pub host_ip: Option<Cow<'a, str>>,
    pub host_port: Option<i64>,
    pub host_reused: bool,
    pub interface_ip: Option<Cow<'a, str>>,
    pub user: Option<Cow<'a, str>>,
    pub auth: Option<Cow<'a, str>>,
    pub protocol: Option<Cow<'a, str>>,
    pub size: Option<i64>,
    pub subject: Option<Cow<'a, str>>,
    pub message_id_header: Option<Cow<'a, str>>,
    pub tls: Option<Cow<'a, str>>,
    pub confirmation: Option<Cow<'a, str>>,
    pub errno: Option<i64>,
    pub error: Option<Cow<'a, str>>,
    pub smtp_code: Option<i64>,
    pub enhanced_code: Option<Cow<'a, str>>,
    pub smtp_phase: Option<Cow<'a, str>>,
    pub spam_score: Option<f64>,
    pub is_spam: Option<bool>,
    pub cpanel_domain: Option<Cow<'a, str>>,
    pub detail: Option<Cow<'a, str>>,
    /// Python's `extra` dict: insertion order, and setting a present key keeps its place (use `set_extra`).
    pub extra: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> ParsedLine<'a> {
    pub fn new(kind: LineKind, raw: Cow<'a, str>) -> Self {
        ParsedLine {
            kind,
            raw,
            time: None,
            msgid: None,
            pid: None,
            address: None,
            parents: Vec::new(),
            sender: None,
            recipients: Vec::new(),
            router: None,
            transport: None,
            bounce_parent: None,
            host: None,
            helo: None,
            host_ip: None,
            host_port: None,
            host_reused: false,
            interface_ip: None,
            user: None,
            auth: None,
            protocol: None,
            size: None,
            subject: None,
            message_id_header: None,
            tls: None,
            confirmation: None,
            errno: None,
            error: None,
            smtp_code: None,
            enhanced_code: None,
            smtp_phase: None,
            spam_score: None,
            is_spam: None,
            cpanel_domain: None,
            detail: None,
            extra: Vec::new(),
        }
    }

    /// `extra[key] = value` with Python dict semantics.
    pub fn set_extra(&mut self, key: impl Into<Cow<'a, str>>, value: impl Into<Cow<'a, str>>) {
        let key = key.into();
        let value = value.into();
        match self.extra.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.extra.push((key, value)),
        }
    }

    pub fn get_extra(&self, key: &str) -> Option<&str> {
        self.extra.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_ref())
    }
}

/// `trackdelivery.events.RetryState`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RetryState {
    pub attempt: i64,
    pub first_attempt: Option<f64>,
    pub last_attempt: Option<f64>,
    pub next_retry: Option<f64>,
    pub give_up: Option<f64>,
}

/// `trackdelivery.events.DeliveryEvent`, same fields in the same order (the JSON follows this order).
#[derive(Clone, Debug)]
pub struct DeliveryEvent {
    pub kind: EventType, // "type" in JSON
    pub server: Text,
    pub msgid: Option<Text>,
    pub time: f64,
    pub recipient: Option<Text>,
    pub original_recipient: Option<Text>,
    pub recipient_domain: Option<Text>,
    pub arrival_time: Option<f64>,
    pub sender: Option<Text>,
    pub sender_domain: Option<Text>,
    pub cpanel_user: Option<Text>,
    pub auth_id: Option<Text>,
    pub client_host: Option<Text>,
    pub client_ip: Option<Text>,
    pub protocol: Option<Text>,
    pub spam_score: Option<f64>,
    pub size: Option<i64>,
    pub subject: Option<Text>,
    pub message_id_header: Option<Text>,
    pub router: Option<Text>,
    pub transport: Option<Text>,
    pub remote_host: Option<Text>,
    pub remote_ip: Option<Text>,
    pub tls: Option<Text>,
    pub response: Option<Text>,
    pub smtp_code: Option<i64>,
    pub enhanced_code: Option<Text>,
    pub smtp_phase: Option<Text>,
    pub exim_errno: Option<i64>,
    pub reason: Option<Reason>,
    pub hint: Option<Text>,
    pub retry: RetryState,
    pub bounce_msgid: Option<Text>,
    pub parent_msgid: Option<Text>,
    pub delivered_to: Option<Text>,
    /// All zero until set (Python computes it in `__post_init__` when not given).
    pub event_id: EventId,
    /// The id is still to be computed from the other fields (`settle_event_ids`).
    pub id_pending: bool,
}

impl DeliveryEvent {
    pub fn new(kind: EventType, server: Text, msgid: Option<Text>, time: f64) -> Self {
        DeliveryEvent {
            kind,
            server,
            msgid,
            time,
            recipient: None,
            original_recipient: None,
            recipient_domain: None,
            arrival_time: None,
            sender: None,
            sender_domain: None,
            cpanel_user: None,
            auth_id: None,
            client_host: None,
            client_ip: None,
            protocol: None,
            spam_score: None,
            size: None,
            subject: None,
            message_id_header: None,
            router: None,
            transport: None,
            remote_host: None,
            remote_ip: None,
            tls: None,
            response: None,
            smtp_code: None,
            enhanced_code: None,
            smtp_phase: None,
            exim_errno: None,
            reason: None,
            hint: None,
            retry: RetryState::default(),
            bounce_msgid: None,
            parent_msgid: None,
            delivered_to: None,
            event_id: EventId::default(),
            id_pending: false,
        }
    }
}

/// An event id: the 12 bytes of its blake2b digest, held inline (written as 24 hex digits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EventId(pub [u8; 12]);

impl EventId {
    /// The 24 lower-case hex digits of the id.
    pub fn hex(&self) -> [u8; 24] {
        let mut hex = [0u8; 24];
        for (digits, word) in hex.chunks_exact_mut(8).zip(self.hex_words()) {
            digits.copy_from_slice(&word.to_le_bytes());
        }
        hex
    }

    /// The hex digits as three little-endian words of eight digits, computed in registers (written
    /// out where they go, they are never stored and read back).
    pub fn hex_words(&self) -> [u64; 3] {
        let id = &self.0;
        [0, 4, 8].map(|at| hex_digits(u32::from_le_bytes([id[at], id[at + 1], id[at + 2], id[at + 3]])))
    }

    /// The id as a number (the digest's bytes, big-endian): a key without collisions.
    pub fn key(&self) -> u128 {
        let mut bytes = [0u8; 16];
        bytes[4..].copy_from_slice(&self.0);
        u128::from_be_bytes(bytes)
    }

    pub fn to_hex_string(self) -> String {
        String::from_utf8_lossy(&self.hex()).into_owned()
    }
}

/// The lower-case hex digits of four bytes (the first byte in the low bits), in the order they are
/// written, as a little-endian word: each byte's nibbles are spread to two bytes, then a nibble above
/// 9 gets the distance from '0' + 10 to 'a' added.
fn hex_digits(bytes: u32) -> u64 {
    const LOW_NIBBLES: u64 = 0x000f_000f_000f_000f;
    let mut spread = u64::from(bytes);
    spread = (spread | (spread << 16)) & 0x0000_ffff_0000_ffff;
    spread = (spread | (spread << 8)) & 0x00ff_00ff_00ff_00ff;
    let nibbles = ((spread >> 4) & LOW_NIBBLES) | ((spread & LOW_NIBBLES) << 8);
    let letters = ((nibbles + 0x7676_7676_7676_7676) >> 7) & 0x0101_0101_0101_0101;
    nibbles + 0x3030_3030_3030_3030 + letters * (u64::from(b'a') - u64::from(b'0') - 10)
}

/// `trackdelivery.events.make_event_id`: blake2b (12 bytes, hex) of the fields joined by U+001F, the
/// same computation the correlator makes for every event.
pub fn make_event_id(
    server: &str,
    msgid: Option<&str>,
    recipient: Option<&str>,
    kind: &str,
    time: f64,
    attempt: i64,
) -> String {
    super::correlator::event_id(&mut Vec::new(), server, msgid, recipient, kind, time, attempt).to_hex_string()
}

/// What the correlator needs from the reason classifier (`processors.exim.reasons.classify` plus
/// `HINTS`). The native classifier implements it; tests may back it with the Python one.
pub trait Classify {
    /// `classify(text=..., smtp_code=..., enhanced_code=..., errno=..., phase=..., kind=...).reason`;
    /// never fails (a failure is `Reason::Unknown`).
    fn classify(
        &mut self,
        text: &str,
        smtp_code: Option<i64>,
        enhanced_code: Option<&str>,
        errno: Option<i64>,
        phase: Option<&str>,
        kind: &str,
    ) -> Reason;

    /// `HINTS[reason]`.
    fn hint(&self, reason: Reason) -> Text;
}

/// Where the parser gets times it cannot compute alone: stamps without an offset in a zone other than
/// UTC, and the current year for syslog (BSD) stamps. `None` from `local_epoch` = invalid stamp.
pub trait LocalClock {
    /// `_epoch(stamp, None, default_tz)` for `YYYY-MM-DD HH:MM:SS` when the default zone is not UTC.
    fn local_epoch(&mut self, stamp: &str) -> Option<f64>;
    /// True when the default zone is UTC (the parser then computes every time itself).
    fn is_utc(&self) -> bool;
    /// `time.time()`.
    fn now(&self) -> f64;
    /// `datetime.fromtimestamp(now, default_tz).year`.
    fn current_year(&mut self) -> i32;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digits_are_each_byte_in_order() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for round in 0..10_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut id = [0u8; 12];
            for (at, byte) in id.iter_mut().enumerate() {
                *byte = if round < 256 { round as u8 } else { (seed >> (at * 5)) as u8 };
            }
            let expected: String = id.iter().map(|byte| format!("{byte:02x}")).collect();
            assert_eq!(EventId(id).hex(), expected.as_bytes(), "{id:?}");
        }
    }
}
