//! A completed message's state in one small buffer.
//!
//! Almost no line comes after a message's `Completed`, but its state must stay until the next release
//! (an hour of log time or more): tens of thousands of states, a struct of about 500 bytes and a dozen
//! texts each. Packed, a state is one allocation of its texts and numbers, a quarter of that. The
//! memory the open states used is given back at once, so the next messages' states are made in memory
//! that is still in cache. Packing is lossless: a line for a packed message unpacks it first.

use super::{Arrival, InlineVec, MessageState, RecipientNames, RecipientState, Recipients, Text, MAX_LINE_HASHES};
use crate::exim::types::EventType;

/// A packed state, with the two numbers a release reads without unpacking.
pub(super) struct Packed {
    pub(super) done: f64,
    pub(super) last_time: Option<f64>,
    bytes: Box<[u8]>,
}

/// Values are written one after the other; an absent one is a zero tag byte.
struct Writer(Vec<u8>);

impl Writer {
    fn tag(&mut self, present: bool) -> bool {
        self.0.push(u8::from(present));
        present
    }

    fn float(&mut self, value: Option<f64>) {
        if let Some(value) = value {
            self.tag(true);
            self.0.extend_from_slice(&value.to_bits().to_le_bytes());
        } else {
            self.tag(false);
        }
    }

    fn int(&mut self, value: Option<i64>) {
        if let Some(value) = value {
            self.tag(true);
            self.0.extend_from_slice(&value.to_le_bytes());
        } else {
            self.tag(false);
        }
    }

    fn text(&mut self, value: Option<&Text>) {
        if let Some(value) = value {
            self.tag(true);
            self.length(value.len());
            self.0.extend_from_slice(value.as_bytes());
        } else {
            self.tag(false);
        }
    }

    fn length(&mut self, length: usize) {
        self.0.extend_from_slice(&(length as u32).to_le_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().unwrap_or([0; N])
    }

    fn tag(&mut self) -> bool {
        self.take::<1>()[0] != 0
    }

    fn float(&mut self) -> Option<f64> {
        self.tag().then(|| f64::from_bits(u64::from_le_bytes(self.take())))
    }

    fn int(&mut self) -> Option<i64> {
        self.tag().then(|| i64::from_le_bytes(self.take()))
    }

    fn length(&mut self) -> usize {
        u32::from_le_bytes(self.take()) as usize
    }

    fn text(&mut self) -> Option<Text> {
        self.tag().then(|| {
            let length = self.length();
            let (head, rest) = self.0.split_at(length);
            self.0 = rest;
            // written from a str: the bytes are UTF-8
            Text::from(std::str::from_utf8(head).unwrap_or_default())
        })
    }
}

macro_rules! arrival_codec {
    ($macro:ident, $io:expr, $arrival:expr) => {
        $macro!(
            $io,
            $arrival,
            float: arrival_time,
            text: sender,
            text: sender_domain,
            text: cpanel_user,
            text: auth_id,
            text: client_host,
            text: client_ip,
            text: protocol,
            float: spam_score,
            int: size,
            text: subject,
            text: message_id_header,
            text: parent_msgid
        )
    };
}

macro_rules! write_fields {
    (@one text, $writer:expr, $value:expr) => { $writer.text($value.as_ref()) };
    (@one float, $writer:expr, $value:expr) => { $writer.float($value) };
    (@one int, $writer:expr, $value:expr) => { $writer.int($value) };
    ($writer:expr, $from:expr, $($kind:ident: $name:ident),*) => {$(
        write_fields!(@one $kind, $writer, $from.$name);
    )*};
}

macro_rules! read_fields {
    ($reader:expr, $into:expr, $($kind:ident: $name:ident),*) => {$(
        $into.$name = $reader.$kind();
    )*};
}

impl Packed {
    /// The state packed (written through `buffer`), when it holds only what a completed message keeps
    /// (`on_completed` empties the rest); None leaves it open.
    pub(super) fn pack(state: &MessageState, buffer: &mut Vec<u8>) -> Option<Packed> {
        let idle = state.listed.is_empty()
            && state.host_errors.is_empty()
            && !state.host_errors_used
            && state.stored.is_empty()
            && state.pending_bounce.is_none();
        if !idle || state.done == 0.0 {
            return None;
        }
        buffer.clear();
        let mut writer = Writer(std::mem::take(buffer));
        writer.text(state.msgid.as_ref());
        arrival_codec!(write_fields, writer, state.arrival);
        writer.tag(state.arrived);
        writer.length(state.recipients.len());
        for (key, recipient) in state.recipients.entries.iter() {
            writer.text(Some(key));
            writer.int(Some(recipient.attempts));
            writer.float(recipient.first_attempt);
            writer.float(recipient.first_failure);
            writer.float(recipient.last_attempt);
            writer.int(recipient.final_type.map(|kind| kind.index() as i64));
            writer.0.push(recipient.hash_count);
            for hash in recipient.hashes() {
                writer.0.extend_from_slice(&hash.to_le_bytes());
            }
            writer.int(recipient.last_event);
            writer.tag(recipient.names.is_some());
            if let Some(names) = recipient.names.as_deref() {
                writer.text(names.original.as_ref());
                writer.text(names.address.as_ref());
                writer.text(names.bounce.as_ref());
            }
        }
        let packed = Packed { done: state.done, last_time: state.last_time, bytes: Box::from(writer.0.as_slice()) };
        *buffer = writer.0;
        Some(packed)
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub(super) fn unpack(&self) -> MessageState {
        let mut reader = Reader(&self.bytes);
        let msgid = reader.text();
        let mut arrival = Arrival::default();
        arrival_codec!(read_fields, reader, arrival);
        let arrived = reader.tag();
        let mut recipients = Recipients::default();
        for _ in 0..reader.length() {
            let key = reader.text().unwrap_or_else(|| Text::from(""));
            let mut recipient = RecipientState {
                attempts: reader.int().unwrap_or(0),
                first_attempt: reader.float(),
                first_failure: reader.float(),
                last_attempt: reader.float(),
                final_type: reader.int().and_then(|index| EventType::ALL.get(index as usize).copied()),
                hash_count: reader.take::<1>()[0],
                ..RecipientState::default()
            };
            let count = usize::from(recipient.hash_count).min(MAX_LINE_HASHES);
            for hash in &mut recipient.hashes[..count] {
                *hash = u32::from_le_bytes(reader.take());
            }
            recipient.last_event = reader.int();
            if reader.tag() {
                recipient.names = Some(Box::new(RecipientNames {
                    original: reader.text(),
                    address: reader.text(),
                    bounce: reader.text(),
                }));
            }
            recipients.set(key, recipient);
        }
        // every field named: one added to the state must be packed too, or `pack` must refuse it
        MessageState {
            msgid,
            arrival,
            arrived,
            listed: InlineVec::default(),
            recipients,
            host_errors: Vec::new(),
            host_errors_used: false,
            stored: Vec::new(),
            pending_bounce: None,
            last_time: self.last_time,
            done: self.done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exim::correlator::{HostError, Listed};

    fn text(value: &str) -> Option<Text> {
        Some(Text::from(value))
    }

    fn completed_state(recipients: usize) -> MessageState {
        let arrival = Arrival {
            arrival_time: Some(1_741_564_805.25),
            sender: text("Ann@Example.com"),
            sender_domain: text("example.com"),
            cpanel_user: text("ann"),
            auth_id: None,
            client_host: text("mx.example.net"),
            client_ip: text("2001:db8::1"),
            protocol: text("esmtpsa"),
            spam_score: Some(-0.1),
            size: Some(12_345),
            subject: text("héllo \"world\"\n"),
            message_id_header: text(""),
            parent_msgid: None,
        };
        let mut state = MessageState {
            msgid: text("1tsxAK-0000000Gk9-0aBc"),
            arrival,
            arrived: true,
            last_time: Some(1_741_564_900.0),
            done: 1_741_564_900.0,
            ..MessageState::default()
        };
        for at in 0..recipients {
            let mut recipient = RecipientState {
                attempts: at as i64,
                first_attempt: (at % 2 == 0).then_some(1.5),
                first_failure: (at % 3 == 0).then_some(2.5),
                last_attempt: Some(3.5),
                final_type: EventType::ALL.get(at % (EventType::ALL.len() + 1)).copied(),
                last_event: (at % 2 == 1).then_some(at as i64),
                ..RecipientState::default()
            };
            for hash in 0..at % (MAX_LINE_HASHES + 2) {
                recipient.push_hash(hash as u32 * 7919);
            }
            if at % 4 == 1 {
                recipient.names_mut().original = text("list@example.org");
                recipient.names_mut().bounce = text("1tsxAL-0000000Gk9-0aBc");
            }
            if at % 4 == 2 {
                recipient.names_mut(); // a box of nothing: kept as it is
            }
            state.recipients.set(Text::from(format!("r{at}@example.org").as_str()), recipient);
        }
        state
    }

    fn same(left: &MessageState, right: &MessageState) {
        assert_eq!(format!("{:?}", left.msgid), format!("{:?}", right.msgid));
        assert_eq!(format!("{:?}", left.arrival), format!("{:?}", right.arrival));
        assert_eq!(left.arrived, right.arrived);
        assert_eq!(format!("{:?}", left.recipients.entries), format!("{:?}", right.recipients.entries));
        assert_eq!(left.recipients.index.is_some(), right.recipients.index.is_some());
        for (at, (key, _)) in left.recipients.entries.iter().enumerate() {
            assert_eq!(right.recipients.position(key), Some(at));
        }
        assert_eq!((left.last_time, left.done), (right.last_time, right.done));
    }

    #[test]
    fn a_completed_state_comes_back_whole() {
        let mut buffer = Vec::new();
        for recipients in [0, 1, 5, 40] {
            let state = completed_state(recipients);
            let packed = Packed::pack(&state, &mut buffer).expect("a completed state packs");
            assert_eq!((packed.done, packed.last_time), (state.done, state.last_time));
            let unpacked = packed.unpack();
            same(&state, &unpacked);
            // packing what was unpacked gives the same bytes
            let again = Packed::pack(&unpacked, &mut buffer).expect("packs again");
            assert_eq!(again.bytes, packed.bytes);
        }
    }

    #[test]
    fn a_state_with_more_than_a_completed_message_keeps_stays_open() {
        let mut buffer = Vec::new();
        let mut open = completed_state(1);
        open.done = 0.0;
        assert!(Packed::pack(&open, &mut buffer).is_none());
        let mut listed = completed_state(1);
        listed.listed.push(Listed { address: Text::from("A@x"), lower: Text::from("a@x") });
        assert!(Packed::pack(&listed, &mut buffer).is_none());
        let mut errors = completed_state(1);
        errors.host_errors.push(HostError::default());
        assert!(Packed::pack(&errors, &mut buffer).is_none());
        let mut used = completed_state(1);
        used.host_errors_used = true;
        assert!(Packed::pack(&used, &mut buffer).is_none());
        let mut bounce = completed_state(1);
        bounce.pending_bounce = text("1tsxAL-0000000Gk9-0aBc");
        assert!(Packed::pack(&bounce, &mut buffer).is_none());
        let mut stored = completed_state(1);
        stored.stored.push(Box::new(crate::exim::types::DeliveryEvent::new(
            EventType::Deferred,
            Text::from("s1"),
            None,
            0.0,
        )));
        assert!(Packed::pack(&stored, &mut buffer).is_none());
    }
}
