//! The correlator of `processors/exim/correlator.py`: parsed Exim main-log lines to delivery events,
//! correlated per (server, message id), with retry state, bounce linking, re-emission and release/flush.
//!
//! The Python state is a dict per message; here it is a typed struct that behaves the same (same
//! iteration orders, same caps, same truthiness of the values the Python code tests). The store key is
//! the server's number and the message id, which is what Python's escaped `server|msgid` key encodes.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};

use indexmap::{Equivalent, IndexMap};

use super::encode::{format_int, push_int};
use super::retry::RetryRules;
use super::types::{Classify, DeliveryEvent, EventId, EventType, LineKind, ParsedLine, Reason, RetryState, Text};

mod packed;
use packed::Packed;

pub const MAX_RECIPIENTS: usize = 5000;
pub const MAX_LISTED_RECIPIENTS: usize = 1000;
pub const MAX_STORED_EVENTS: usize = 32;
pub const MAX_HOST_ERRORS: usize = 8;
pub const CLASSIFY_CACHE_SIZE: usize = 8192;
pub const MAX_LINE_HASHES: usize = 4;

const RETRY_WAIT_ERRNOS: [i64; 3] = [-52, -53, -54];
const EXPIRY_MARKERS: [&str; 2] = ["retry timeout exceeded", "have been failing for a long time"];
const FILTER_TARGETS: [&str; 3] = [":blackhole:", "/dev/null", "discarded"];
const SYSTEM_USERS: [&str; 4] = ["mailnull", "mail", "exim", "Debian-exim"];
/// Above this many (recipients x listed) comparisons, coverage is checked through a hash set.
const LINEAR_COVER_LIMIT: usize = 256;
/// Recipients of one message are found by a linear search up to this many, then through an index.
const LINEAR_RECIPIENTS: usize = 16;

// -- Python string semantics ------------------------------------------------------------------------------

/// Upper-case letters added after Unicode 14.0 (Python 3.11's tables): Python leaves them as they are.
const NEWER_UPPERCASE: [u32; 55] = [
    0x1c89, 0xa7cb, 0xa7cc, 0xa7ce, 0xa7d2, 0xa7d4, 0xa7da, 0xa7dc, 0x10d50, 0x10d51, 0x10d52, 0x10d53, 0x10d54,
    0x10d55, 0x10d56, 0x10d57, 0x10d58, 0x10d59, 0x10d5a, 0x10d5b, 0x10d5c, 0x10d5d, 0x10d5e, 0x10d5f, 0x10d60,
    0x10d61, 0x10d62, 0x10d63, 0x10d64, 0x10d65, 0x16ea0, 0x16ea1, 0x16ea2, 0x16ea3, 0x16ea4, 0x16ea5, 0x16ea6,
    0x16ea7, 0x16ea8, 0x16ea9, 0x16eaa, 0x16eab, 0x16eac, 0x16ead, 0x16eae, 0x16eaf, 0x16eb0, 0x16eb1, 0x16eb2,
    0x16eb3, 0x16eb4, 0x16eb5, 0x16eb6, 0x16eb7, 0x16eb8,
];

fn is_newer_uppercase(char: char) -> bool {
    let code = char as u32;
    code >= 0x1c89 && NEWER_UPPERCASE.binary_search(&code).is_ok()
}

/// `to_lowercase` leaving the letters Python 3.11 does not know unchanged. They are unassigned there,
/// so neither cased nor case-ignorable: lowering the runs between them separately keeps the final-sigma
/// context Python sees.
fn lower_as_unicode_14(text: &str) -> String {
    let mut lowered = String::with_capacity(text.len());
    let mut run_start = 0;
    for (at, char) in text.char_indices() {
        if is_newer_uppercase(char) {
            lowered.push_str(&text[run_start..at].to_lowercase());
            lowered.push(char);
            run_start = at + char.len_utf8();
        }
    }
    lowered.push_str(&text[run_start..].to_lowercase());
    lowered
}

/// Whether ASCII `bytes` has no upper-case letter and no byte above 0x7f (eight bytes at a time).
fn is_lower_ascii(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let word_is_lower = |word: u64| {
        if word & HIGH != 0 {
            return false;
        }
        // per byte (all below 0x80): at least 'A' and at most 'Z'
        let at_least_a = word.wrapping_add(ONES * u64::from(0x80 - b'A'));
        let above_z = word.wrapping_add(ONES * u64::from(0x80 - b'Z' - 1));
        at_least_a & !above_z & HIGH == 0
    };
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        if !word_is_lower(u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]))) {
            return false;
        }
    }
    word_is_lower(tail_word(chunks.remainder()))
}

/// Fewer than 8 bytes as a little-endian word padded with zeros. Built from loads of the bytes
/// themselves: copying them into a zeroed array and loading that stalls on store forwarding.
#[inline]
fn tail_word(rest: &[u8]) -> u64 {
    let len = rest.len();
    if len >= 4 {
        let low = u64::from(u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]));
        let high = u64::from(u32::from_le_bytes([rest[len - 4], rest[len - 3], rest[len - 2], rest[len - 1]]));
        // the two overlap when len < 8: the shared bytes land on the same places
        low | (high << (8 * (len - 4)))
    } else if len > 0 {
        u64::from(rest[0])
            | (u64::from(rest[len / 2]) << (8 * (len / 2)))
            | (u64::from(rest[len - 1]) << (8 * (len - 1)))
    } else {
        0
    }
}

/// `a == b` for short texts, inline: for the interner's few dozen bytes a call to `memcmp` costs more
/// than comparing the words.
#[inline]
fn short_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len();
    if len != b.len() {
        return false;
    }
    if len < 8 {
        return tail_word(a) == tail_word(b);
    }
    let word = |bytes: &[u8], at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
    let mut at = 0;
    while at + 8 < len {
        if word(a, at) != word(b, at) {
            return false;
        }
        at += 8;
    }
    word(a, len - 8) == word(b, len - 8) // the last word, overlapping the one before when len % 8 != 0
}

/// `str.lower()` (Python 3.11), borrowing when nothing changes.
pub fn py_lower(text: &str) -> Cow<'_, str> {
    if is_lower_ascii(text.as_bytes()) {
        Cow::Borrowed(text)
    } else if text.is_ascii() {
        Cow::Owned(text.to_ascii_lowercase())
    } else {
        let lowered =
            if text.chars().any(is_newer_uppercase) { lower_as_unicode_14(text) } else { text.to_lowercase() };
        if lowered == text {
            Cow::Borrowed(text)
        } else {
            Cow::Owned(lowered)
        }
    }
}

/// Python's `a or b` on optional strings: `a` unless it is None or empty.
fn or_str<'a>(first: Option<&'a str>, second: Option<&'a str>) -> Option<&'a str> {
    match first {
        Some(text) if !text.is_empty() => Some(text),
        _ => second,
    }
}

fn is_truthy(text: &Option<Text>) -> bool {
    text.as_deref().is_some_and(|text| !text.is_empty())
}

fn to_text(value: &Option<Cow<'_, str>>) -> Option<Text> {
    value.as_deref().map(Text::from)
}

fn strip_parent(parent: &str) -> &str {
    let bytes = parent.as_bytes();
    if bytes.len() >= 2 && matches!(bytes[0], b'(' | b'<') && matches!(bytes[bytes.len() - 1], b')' | b'>') {
        &parent[1..parent.len() - 1]
    } else {
        parent
    }
}

fn line_hash(line: &ParsedLine<'_>) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(line.raw.as_bytes());
    crc.sum()
}

/// Shares the texts that repeat from line to line (routers, transports, domains, remote hosts): a
/// direct-mapped cache, so a hit costs a hash and a comparison instead of an allocation. Only for
/// fields with few distinct values: a miss costs more than a plain allocation.
struct Interner {
    slots: Vec<Option<(u64, Text)>>,
}

const INTERNER_SLOTS: usize = 4096;
const INTERNER_MAX_LEN: usize = 64;

impl Interner {
    fn new() -> Self {
        Interner { slots: vec![None; INTERNER_SLOTS] }
    }

    fn intern(&mut self, value: &str) -> Text {
        if value.len() > INTERNER_MAX_LEN {
            return Text::from(value);
        }
        let hash = quick_hash(value.as_bytes());
        let slot = &mut self.slots[hash as usize % INTERNER_SLOTS];
        if let Some((known_hash, known)) = slot {
            if *known_hash == hash && short_eq(known.as_bytes(), value.as_bytes()) {
                return known.clone();
            }
        }
        let text = Text::from(value);
        *slot = Some((hash, text.clone()));
        text
    }

    fn text(&mut self, value: &Option<Cow<'_, str>>) -> Option<Text> {
        value.as_deref().map(|value| self.intern(value))
    }

    /// `_domain` through the cache.
    fn domain(&mut self, address: Option<&str>) -> Option<Text> {
        let address = address.filter(|address| !address.is_empty())?;
        let at = address.as_bytes().iter().rposition(|&byte| byte == b'@')?;
        let part = &address[at + 1..];
        if part.is_empty() {
            return None;
        }
        Some(self.intern(&py_lower(part)))
    }
}

/// `str(number)` appended.
fn push_integer(buffer: &mut String, number: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = number.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if number < 0 {
        buffer.push('-');
    }
    buffer.push_str(std::str::from_utf8(&digits[at..]).unwrap_or_default());
}

/// Per-correlator buffers: the text cache and the event id buffer.
struct Scratch {
    interner: Interner,
    id_buffer: Vec<u8>,
    discriminator: String,
    defer_ids: bool,
    /// Where a completed message's state is written before its packed copy is made.
    pack_buffer: Vec<u8>,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            interner: Interner::new(),
            id_buffer: Vec::with_capacity(256),
            discriminator: String::new(),
            defer_ids: false,
            pack_buffer: Vec::new(),
        }
    }

    /// `DeliveryEvent.__post_init__`'s id (marked pending instead when ids are deferred).
    fn set_event_id(&mut self, event: &mut DeliveryEvent) {
        if self.defer_ids {
            event.id_pending = true;
            return;
        }
        event.event_id = event_id(
            &mut self.id_buffer,
            &event.server,
            event.msgid.as_deref(),
            event.recipient.as_deref(),
            event.kind.as_str(),
            event.time,
            event.retry.attempt,
        );
    }
}

/// FxHash-style hash of a short text (only picks a cache slot: a collision costs an allocation).
fn quick_hash(bytes: &[u8]) -> u64 {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let mut hash = bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        hash = (hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
    hash = (hash.rotate_left(5) ^ tail_word(chunks.remainder())).wrapping_mul(SEED);
    hash ^ (hash >> 29)
}

/// `a * b` folded to 64 bits (foldhash's mixing step).
fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// A fast keyed hasher for the correlator's maps (SipHash costs more than the rest of a lookup); the
/// key is random per process, so that crafted log lines cannot pick colliding keys in advance.
#[derive(Clone, Copy)]
struct FastHasher(u64);

const FAST_MUL: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        folded_multiply(self.0, FAST_MUL)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut state = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            state = folded_multiply(state ^ word, FAST_MUL ^ 0x2d35_8dcc_aa6c_78a5);
        }
        let tail = tail_word(chunks.remainder());
        state = folded_multiply(state ^ tail, (bytes.len() as u64) ^ 0x8bb8_4b93_962e_acc9);
        self.0 = state;
    }

    fn write_u8(&mut self, value: u8) {
        self.write_u64(u64::from(value));
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = folded_multiply(self.0 ^ value, 0x4b33_a62e_d433_d4a3);
    }

    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }
}

/// Builds `FastHasher`s with this process's key.
#[derive(Clone, Copy)]
struct FastState(u64);

impl Default for FastState {
    fn default() -> Self {
        thread_local! {
            static KEY: u64 = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64) | 1;
        }
        FastState(KEY.with(|key| *key))
    }
}

impl BuildHasher for FastState {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher(self.0)
    }
}

type FastMap<K, V> = HashMap<K, V, FastState>;

/// `make_event_id` (the same bytes hashed, the same hex), with a reused buffer and whole-second
/// times written without float formatting.
pub(super) fn event_id(
    buffer: &mut Vec<u8>,
    server: &str,
    msgid: Option<&str>,
    recipient: Option<&str>,
    kind: &str,
    time: f64,
    attempt: i64,
) -> EventId {
    use std::io::Write;
    let mut block = [0u8; ID_BLOCK];
    if let Some(len) = write_id_block(&mut block, server, msgid, recipient, kind, time, attempt) {
        return EventId(blake2b_96_block(&block, len));
    }
    let parts = [server, msgid.unwrap_or(""), recipient.unwrap_or(""), kind];
    buffer.clear();
    for part in parts {
        buffer.extend_from_slice(part.as_bytes());
        buffer.push(0x1f);
    }
    // f"{time:.6f}": exact for whole numbers of seconds below 2**53 (not -0.0, which keeps its sign)
    if is_whole_second(time) {
        push_int(buffer, time as i64);
        buffer.extend_from_slice(b".000000");
    } else {
        let _ = write!(buffer, "{time:.6}");
    }
    buffer.push(0x1f);
    push_int(buffer, attempt);
    EventId(blake2b_96(buffer))
}

fn is_whole_second(time: f64) -> bool {
    time.fract() == 0.0 && time != 0.0 && time.abs() < 9.0e15
}

/// The usual case of `event_id`'s input, written straight into `block`, zero-padded (parts, 4
/// separators, at most 24 bytes of time, a separator and at most 20 of attempt): its length, None when it
/// does not fit or the time is not a whole second.
fn write_id_block(
    block: &mut [u8; ID_BLOCK],
    server: &str,
    msgid: Option<&str>,
    recipient: Option<&str>,
    kind: &str,
    time: f64,
    attempt: i64,
) -> Option<usize> {
    let parts = [server, msgid.unwrap_or(""), recipient.unwrap_or(""), kind];
    if !is_whole_second(time) || parts.iter().map(|part| part.len()).sum::<usize>() + 49 > ID_BLOCK {
        return None;
    }
    block.fill(0);
    let mut at = 0;
    for part in parts {
        block[at..at + part.len()].copy_from_slice(part.as_bytes());
        at += part.len();
        block[at] = 0x1f;
        at += 1;
    }
    at += format_int(&mut block[at..], time as i64);
    block[at..at + 7].copy_from_slice(b".000000");
    block[at + 7] = 0x1f;
    at += 8;
    at += format_int(&mut block[at..], attempt);
    Some(at)
}

/// Sets the id of every event whose id is pending (see `Correlator::defer_event_ids`), as `event_id`
/// computes it. With AVX2 the one-block ids are hashed four at a time: one hash waits on the latency of
/// its own rounds, four interleaved keep the vector units busy.
pub fn settle_event_ids(buffer: &mut Vec<u8>, events: &mut [DeliveryEvent]) {
    #[cfg(target_arch = "x86_64")]
    let four_at_once = std::arch::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    let four_at_once = false;
    let mut group = IdGroup { blocks: [[0; ID_BLOCK]; 4], lens: [0; 4], events: [0; 4], filled: 0 };
    for index in 0..events.len() {
        let event = &mut events[index];
        if !event.id_pending {
            continue;
        }
        event.id_pending = false;
        let (server, msgid, recipient) = (&event.server, event.msgid.as_deref(), event.recipient.as_deref());
        let (kind, time, attempt) = (event.kind.as_str(), event.time, event.retry.attempt);
        let slot = group.filled;
        let written = if four_at_once {
            write_id_block(&mut group.blocks[slot], server, msgid, recipient, kind, time, attempt)
        } else {
            None
        };
        match written {
            Some(len) => {
                (group.lens[slot], group.events[slot]) = (len, index);
                group.filled += 1;
                if group.filled == 4 {
                    group.hash_all(events);
                }
            }
            None => event.event_id = event_id(buffer, server, msgid, recipient, kind, time, attempt),
        }
    }
    for slot in 0..group.filled {
        events[group.events[slot]].event_id = EventId(blake2b_96_block(&group.blocks[slot], group.lens[slot]));
    }
}

/// Up to four one-block ids waiting to be hashed together: their blocks, lengths and events.
struct IdGroup {
    blocks: [[u8; ID_BLOCK]; 4],
    lens: [usize; 4],
    events: [usize; 4],
    filled: usize,
}

impl IdGroup {
    /// Hashes the four blocks (the caller checked that the processor has AVX2) and empties the group.
    fn hash_all(&mut self, events: &mut [DeliveryEvent]) {
        #[cfg(target_arch = "x86_64")]
        {
            let blocks = [&self.blocks[0], &self.blocks[1], &self.blocks[2], &self.blocks[3]];
            // SAFETY: `settle_event_ids` groups ids only when the processor has AVX2
            let digests = unsafe { blake2b_avx2::hash_96_blocks4(blocks, self.lens) };
            for (&index, digest) in self.events.iter().zip(digests) {
                events[index].event_id = EventId(digest);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        for slot in 0..4 {
            events[self.events[slot]].event_id = EventId(blake2b_96_block(&self.blocks[slot], self.lens[slot]));
        }
        self.filled = 0;
    }
}

/// One blake2b block: event ids that fit are hashed from it without a copy.
const ID_BLOCK: usize = 128;

/// `blake2b_96(&block[..len])` for a block zero past `len`.
fn blake2b_96_block(block: &[u8; ID_BLOCK], len: usize) -> [u8; 12] {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the processor has AVX2
            return unsafe { blake2b_avx2::hash_96_block(block, len) };
        }
    }
    blake2b_96(&block[..len])
}

/// blake2b with a 12-byte digest (`hashlib.blake2b(data, digest_size=12)`): AVX2 when the processor
/// has it (a row of the state per 256-bit register, rounds unrolled), else the `blake2` crate.
pub(crate) fn blake2b_96(data: &[u8]) -> [u8; 12] {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the processor has AVX2
            return unsafe { blake2b_avx2::hash_96(data) };
        }
    }
    use blake2::digest::{Update, VariableOutput};
    let mut hasher = blake2::Blake2bVar::new(12).expect("12 is a valid blake2b output size");
    hasher.update(data);
    let mut digest = [0u8; 12];
    hasher.finalize_variable(&mut digest).expect("the buffer is the output size");
    digest
}

#[cfg(target_arch = "x86_64")]
mod blake2b_avx2 {
    use std::arch::x86_64::*;

    const IV: [u64; 8] = [
        0x6a09_e667_f3bc_c908,
        0xbb67_ae85_84ca_a73b,
        0x3c6e_f372_fe94_f82b,
        0xa54f_f53a_5f1d_36f1,
        0x510e_527f_ade6_82d1,
        0x9b05_688c_2b3e_6c1f,
        0x1f83_d9ab_fb41_bd6b,
        0x5be0_cd19_137e_2179,
    ];

    /// BLAKE2b's G on four 64-bit lanes at once: `a`..`d` are places (registers of the state), `x` and `y`
    /// the message words, `rot24` and `rot16` the byte shuffles of those rotations.
    macro_rules! mix {
        ($a:expr, $b:expr, $c:expr, $d:expr, $x:expr, $y:expr, $rot24:expr, $rot16:expr) => {
            $a = _mm256_add_epi64(_mm256_add_epi64($a, $b), $x);
            $d = _mm256_shuffle_epi32(_mm256_xor_si256($d, $a), 0b10_11_00_01);
            $c = _mm256_add_epi64($c, $d);
            $b = _mm256_shuffle_epi8(_mm256_xor_si256($b, $c), $rot24);
            $a = _mm256_add_epi64(_mm256_add_epi64($a, $b), $y);
            $d = _mm256_shuffle_epi8(_mm256_xor_si256($d, $a), $rot16);
            $c = _mm256_add_epi64($c, $d);
            let x = _mm256_xor_si256($b, $c);
            $b = _mm256_or_si256(_mm256_srli_epi64(x, 63), _mm256_add_epi64(x, x));
        };
    }

    /// The byte shuffles that rotate each 64-bit lane right by 24 and by 16 bits.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn rotation_masks() -> (__m256i, __m256i) {
        let rot24 = _mm256_setr_epi8(
            3, 4, 5, 6, 7, 0, 1, 2, 11, 12, 13, 14, 15, 8, 9, 10, 3, 4, 5, 6, 7, 0, 1, 2, 11, 12, 13, 14, 15, 8, 9, 10,
        );
        let rot16 = _mm256_setr_epi8(
            2, 3, 4, 5, 6, 7, 0, 1, 10, 11, 12, 13, 14, 15, 8, 9, 2, 3, 4, 5, 6, 7, 0, 1, 10, 11, 12, 13, 14, 15, 8, 9,
        );
        (rot24, rot16)
    }

    /// The twelve rounds, unrolled (each `round!` takes its message schedule as a constant).
    macro_rules! twelve_rounds {
        ($round:ident) => {
            $round!(0);
            $round!(1);
            $round!(2);
            $round!(3);
            $round!(4);
            $round!(5);
            $round!(6);
            $round!(7);
            $round!(8);
            $round!(9);
            $round!(10);
            $round!(11);
        };
    }

    const SIGMA: [[usize; 16]; 12] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
        [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
        [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
        [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
        [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
        [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
        [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
        [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
        [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    ];

    /// The compression function; `counter` is the bytes hashed so far including this block.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn compress(h: &mut [u64; 8], block: &[u8; 128], counter: u128, last: bool) {
        let mut m = [0i64; 16];
        for (word, bytes) in m.iter_mut().zip(block.chunks_exact(8)) {
            *word = i64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]));
        }
        let (rot24, rot16) = rotation_masks();
        let row1_start = _mm256_loadu_si256(h.as_ptr() as *const __m256i);
        let row2_start = _mm256_loadu_si256(h.as_ptr().add(4) as *const __m256i);
        let mut a = row1_start;
        let mut b = row2_start;
        let mut c = _mm256_setr_epi64x(IV[0] as i64, IV[1] as i64, IV[2] as i64, IV[3] as i64);
        let mut d = _mm256_setr_epi64x(
            (IV[4] ^ counter as u64) as i64,
            (IV[5] ^ (counter >> 64) as u64) as i64,
            (IV[6] ^ if last { u64::MAX } else { 0 }) as i64,
            IV[7] as i64,
        );
        macro_rules! half {
            ($x:expr, $y:expr) => {
                mix!(a, b, c, d, $x, $y, rot24, rot16)
            };
        }
        macro_rules! round {
            ($r:expr) => {{
                const S: [usize; 16] = SIGMA[$r];
                half!(
                    _mm256_setr_epi64x(m[S[0]], m[S[2]], m[S[4]], m[S[6]]),
                    _mm256_setr_epi64x(m[S[1]], m[S[3]], m[S[5]], m[S[7]])
                );
                b = _mm256_permute4x64_epi64(b, 0b00_11_10_01);
                c = _mm256_permute4x64_epi64(c, 0b01_00_11_10);
                d = _mm256_permute4x64_epi64(d, 0b10_01_00_11);
                half!(
                    _mm256_setr_epi64x(m[S[8]], m[S[10]], m[S[12]], m[S[14]]),
                    _mm256_setr_epi64x(m[S[9]], m[S[11]], m[S[13]], m[S[15]])
                );
                b = _mm256_permute4x64_epi64(b, 0b10_01_00_11);
                c = _mm256_permute4x64_epi64(c, 0b01_00_11_10);
                d = _mm256_permute4x64_epi64(d, 0b00_11_10_01);
            }};
        }
        twelve_rounds!(round);
        let row1 = _mm256_xor_si256(row1_start, _mm256_xor_si256(a, c));
        let row2 = _mm256_xor_si256(row2_start, _mm256_xor_si256(b, d));
        _mm256_storeu_si256(h.as_mut_ptr() as *mut __m256i, row1);
        _mm256_storeu_si256(h.as_mut_ptr().add(4) as *mut __m256i, row2);
    }

    /// # Safety
    /// The processor must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn hash_96(data: &[u8]) -> [u8; 12] {
        let mut h = IV;
        h[0] ^= 0x0101_0000 ^ 12; // digest length 12, no key, fanout 1, depth 1
        let mut counter: u128 = 0;
        let mut rest = data;
        while rest.len() > 128 {
            let (block, tail) = rest.split_at(128);
            counter += 128;
            compress(&mut h, block.try_into().unwrap_or(&[0; 128]), counter, false);
            rest = tail;
        }
        let mut block = [0u8; 128];
        block[..rest.len()].copy_from_slice(rest);
        counter += rest.len() as u128;
        compress(&mut h, &block, counter, true);
        digest_of(&h)
    }

    fn digest_of(h: &[u64; 8]) -> [u8; 12] {
        let mut digest = [0u8; 12];
        digest[..8].copy_from_slice(&h[0].to_le_bytes());
        digest[8..].copy_from_slice(&h[1].to_le_bytes()[..4]);
        digest
    }

    /// `hash_96_block` of four blocks at once: the state of each hash in one 64-bit lane of sixteen
    /// registers, the message words transposed the same way.
    ///
    /// # Safety
    /// The processor must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn hash_96_blocks4(blocks: [&[u8; 128]; 4], lens: [usize; 4]) -> [[u8; 12]; 4] {
        let mut m = [_mm256_setzero_si256(); 16];
        for group in 0..4 {
            let r0 = _mm256_loadu_si256(blocks[0].as_ptr().add(group * 32) as *const __m256i);
            let r1 = _mm256_loadu_si256(blocks[1].as_ptr().add(group * 32) as *const __m256i);
            let r2 = _mm256_loadu_si256(blocks[2].as_ptr().add(group * 32) as *const __m256i);
            let r3 = _mm256_loadu_si256(blocks[3].as_ptr().add(group * 32) as *const __m256i);
            // a 4x4 transpose of 64-bit words: m[4 * group + k] = word k of the group in each block
            let t0 = _mm256_unpacklo_epi64(r0, r1);
            let t1 = _mm256_unpackhi_epi64(r0, r1);
            let t2 = _mm256_unpacklo_epi64(r2, r3);
            let t3 = _mm256_unpackhi_epi64(r2, r3);
            m[group * 4] = _mm256_permute2x128_si256(t0, t2, 0x20);
            m[group * 4 + 1] = _mm256_permute2x128_si256(t1, t3, 0x20);
            m[group * 4 + 2] = _mm256_permute2x128_si256(t0, t2, 0x31);
            m[group * 4 + 3] = _mm256_permute2x128_si256(t1, t3, 0x31);
        }
        let (rot24, rot16) = rotation_masks();
        let mut h = IV;
        h[0] ^= 0x0101_0000 ^ 12;
        let counters = _mm256_setr_epi64x(lens[0] as i64, lens[1] as i64, lens[2] as i64, lens[3] as i64);
        let mut v = [
            _mm256_set1_epi64x(h[0] as i64),
            _mm256_set1_epi64x(h[1] as i64),
            _mm256_set1_epi64x(h[2] as i64),
            _mm256_set1_epi64x(h[3] as i64),
            _mm256_set1_epi64x(h[4] as i64),
            _mm256_set1_epi64x(h[5] as i64),
            _mm256_set1_epi64x(h[6] as i64),
            _mm256_set1_epi64x(h[7] as i64),
            _mm256_set1_epi64x(IV[0] as i64),
            _mm256_set1_epi64x(IV[1] as i64),
            _mm256_set1_epi64x(IV[2] as i64),
            _mm256_set1_epi64x(IV[3] as i64),
            _mm256_xor_si256(_mm256_set1_epi64x(IV[4] as i64), counters),
            _mm256_set1_epi64x(IV[5] as i64),
            _mm256_set1_epi64x(!IV[6] as i64), // the last block
            _mm256_set1_epi64x(IV[7] as i64),
        ];
        macro_rules! g {
            ($a:expr, $b:expr, $c:expr, $d:expr, $x:expr, $y:expr) => {
                mix!(v[$a], v[$b], v[$c], v[$d], $x, $y, rot24, rot16)
            };
        }
        macro_rules! round {
            ($r:expr) => {{
                const S: [usize; 16] = SIGMA[$r];
                g!(0, 4, 8, 12, m[S[0]], m[S[1]]);
                g!(1, 5, 9, 13, m[S[2]], m[S[3]]);
                g!(2, 6, 10, 14, m[S[4]], m[S[5]]);
                g!(3, 7, 11, 15, m[S[6]], m[S[7]]);
                g!(0, 5, 10, 15, m[S[8]], m[S[9]]);
                g!(1, 6, 11, 12, m[S[10]], m[S[11]]);
                g!(2, 7, 8, 13, m[S[12]], m[S[13]]);
                g!(3, 4, 9, 14, m[S[14]], m[S[15]]);
            }};
        }
        twelve_rounds!(round);
        let mut first = [0u64; 4];
        let mut second = [0u64; 4];
        let out0 = _mm256_xor_si256(_mm256_set1_epi64x(h[0] as i64), _mm256_xor_si256(v[0], v[8]));
        let out1 = _mm256_xor_si256(_mm256_set1_epi64x(h[1] as i64), _mm256_xor_si256(v[1], v[9]));
        _mm256_storeu_si256(first.as_mut_ptr() as *mut __m256i, out0);
        _mm256_storeu_si256(second.as_mut_ptr() as *mut __m256i, out1);
        let mut digests = [[0u8; 12]; 4];
        for (lane, digest) in digests.iter_mut().enumerate() {
            digest[..8].copy_from_slice(&first[lane].to_le_bytes());
            digest[8..].copy_from_slice(&second[lane].to_le_bytes()[..4]);
        }
        digests
    }

    /// `hash_96(&block[..len])` for a single block already zero past `len` (len <= 128).
    ///
    /// # Safety
    /// The processor must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn hash_96_block(block: &[u8; 128], len: usize) -> [u8; 12] {
        let mut h = IV;
        h[0] ^= 0x0101_0000 ^ 12;
        compress(&mut h, block, len as u128, true);
        digest_of(&h)
    }
}

/// `_rcpt_in_error`: the address of `RCPT TO:<address>` in a per-host error, lower case.
fn rcpt_in_error(text: Option<&str>) -> Option<Text> {
    let text = text.filter(|text| !text.is_empty())?;
    let start = text.find("RCPT TO:<")? + 9;
    let rest = &text[start..];
    let (end, _) = rest.char_indices().take(512).find(|&(_, char)| char == '>')?;
    if end == 0 {
        return None;
    }
    Some(Text::from(py_lower(&rest[..end]).as_ref()))
}

/// `_auth_id`: the id of `authenticator:id`, else the whole value (shared through the text cache).
fn auth_id(interner: &mut Interner, auth: Option<&str>) -> Option<Text> {
    let auth = auth.filter(|auth| !auth.is_empty())?;
    Some(interner.intern(match auth.split_once(':') {
        Some((_, ident)) if !ident.is_empty() => ident,
        Some((name, _)) => name,
        None => auth,
    }))
}

fn is_delay_warning(subject: Option<&str>) -> bool {
    subject.is_some_and(|subject| subject.starts_with("Warning: message"))
}

fn is_failed(kind: EventType) -> bool {
    matches!(kind, EventType::Bounced | EventType::Expired)
}

fn is_finishing(kind: LineKind) -> bool {
    matches!(
        kind,
        LineKind::Delivery
            | LineKind::DeliveryMore
            | LineKind::Cutthrough
            | LineKind::Suppressed
            | LineKind::Failure
            | LineKind::Cancelled
    )
}

fn has_handler(kind: LineKind) -> bool {
    matches!(
        kind,
        LineKind::Arrival
            | LineKind::FakeReject
            | LineKind::Delivery
            | LineKind::DeliveryMore
            | LineKind::Cutthrough
            | LineKind::Suppressed
            | LineKind::Deferral
            | LineKind::Failure
            | LineKind::Completed
            | LineKind::Frozen
            | LineKind::Cancelled
            | LineKind::HostError
            | LineKind::SpamScore
            | LineKind::SenderIdent
            | LineKind::ConnectionIdent
    )
}

#[allow(dead_code)] // the native store keys by (server number, msgid); kept for callers that show keys
/// `state_key`: the Python store key of one message, `server|msgid` with `|` and `\` escaped.
pub fn state_key(server: &str, msgid: &str) -> String {
    fn escape(value: &str) -> Cow<'_, str> {
        if value.contains(['|', '\\']) {
            Cow::Owned(value.replace('\\', "\\\\").replace('|', "\\|"))
        } else {
            Cow::Borrowed(value)
        }
    }
    format!("{}|{}", escape(server), escape(msgid))
}

// -- the state of one message ---------------------------------------------------------------------------

/// The arrival data attached to every event of a message (the `a` dict; None = key absent).
#[derive(Clone, Debug, Default)]
struct Arrival {
    arrival_time: Option<f64>,
    sender: Option<Text>,
    sender_domain: Option<Text>,
    cpanel_user: Option<Text>,
    auth_id: Option<Text>,
    client_host: Option<Text>,
    client_ip: Option<Text>,
    protocol: Option<Text>,
    spam_score: Option<f64>,
    size: Option<i64>,
    subject: Option<Text>,
    message_id_header: Option<Text>,
    parent_msgid: Option<Text>,
}

macro_rules! arrival_fields {
    ($macro:ident) => {
        $macro!(
            arrival_time,
            sender,
            sender_domain,
            cpanel_user,
            auth_id,
            client_host,
            client_ip,
            protocol,
            spam_score,
            size,
            subject,
            message_id_header,
            parent_msgid
        )
    };
}

impl Arrival {
    /// `DeliveryEvent(..., **arrival)` / `{**data, **arrival}`: the present keys override.
    fn apply(&self, event: &mut DeliveryEvent) {
        macro_rules! set {
            ($($name:ident),*) => {$(
                if let Some(value) = &self.$name {
                    event.$name = Some(value.clone());
                }
            )*};
        }
        arrival_fields!(set);
    }

    /// `_compact`'s removal of the arrival data from an event kept for re-emission.
    fn clear(event: &mut DeliveryEvent) {
        macro_rules! clear {
            ($($name:ident),*) => {$( event.$name = None; )*};
        }
        arrival_fields!(clear);
    }
}

/// Per-recipient retry data (the `r` dict's values; None / 0 / empty = key absent).
#[derive(Clone, Debug, Default)]
struct RecipientState {
    attempts: i64,
    first_attempt: Option<f64>,
    first_failure: Option<f64>,
    last_attempt: Option<f64>,
    final_type: Option<EventType>,
    hashes: [u32; MAX_LINE_HASHES],
    hash_count: u8,
    last_event: Option<i64>,
    /// The rarely set texts, boxed: a message's recipients stay in small allocations.
    names: Option<Box<RecipientNames>>,
}

#[derive(Clone, Debug, Default)]
struct RecipientNames {
    original: Option<Text>,
    address: Option<Text>,
    bounce: Option<Text>,
}

impl RecipientState {
    fn hashes(&self) -> &[u32] {
        &self.hashes[..self.hash_count as usize]
    }

    fn push_hash(&mut self, hash: u32) {
        let count = self.hash_count as usize;
        if count == MAX_LINE_HASHES {
            self.hashes.copy_within(1.., 0);
            self.hashes[MAX_LINE_HASHES - 1] = hash;
        } else {
            self.hashes[count] = hash;
            self.hash_count += 1;
        }
    }

    /// `rstate.get(R_ORIGINAL)`.
    fn original(&self) -> Option<&Text> {
        self.names.as_ref()?.original.as_ref()
    }

    /// `rstate.get(R_ADDRESS)`.
    fn address(&self) -> Option<&Text> {
        self.names.as_ref()?.address.as_ref()
    }

    /// `rstate.get(R_BOUNCE)`.
    fn bounce(&self) -> Option<&Text> {
        self.names.as_ref()?.bounce.as_ref()
    }

    fn names_mut(&mut self) -> &mut RecipientNames {
        self.names.get_or_insert_with(Box::default)
    }
}

/// A list whose first item is stored inline: most messages have one recipient, and this saves an
/// allocation per message.
#[derive(Clone, Debug)]
struct InlineVec<T> {
    first: Option<T>,
    rest: Vec<T>,
}

impl<T> Default for InlineVec<T> {
    fn default() -> Self {
        InlineVec { first: None, rest: Vec::new() }
    }
}

impl<T> InlineVec<T> {
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn push(&mut self, item: T) {
        if self.first.is_none() {
            self.first = Some(item);
        } else {
            self.rest.push(item);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.first.iter().chain(self.rest.iter())
    }

    fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        if index == 0 {
            self.first.as_mut()
        } else {
            self.rest.get_mut(index - 1)
        }
    }
}

impl<'a, T> IntoIterator for &'a InlineVec<T> {
    type Item = &'a T;
    type IntoIter = std::iter::Chain<std::option::Iter<'a, T>, std::slice::Iter<'a, T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.first.iter().chain(self.rest.iter())
    }
}

/// Recipient (lower case) -> its state, in insertion order; never shrinks.
#[derive(Clone, Debug, Default)]
struct Recipients {
    entries: InlineVec<(Text, RecipientState)>,
    index: Option<Box<FastMap<Text, usize>>>,
}

impl Recipients {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, key: &str) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(key).copied(),
            None => self.entries.iter().position(|(name, _)| &**name == key),
        }
    }

    /// `recipients[key] = state`: replaces in place, or appends.
    fn set(&mut self, key: Text, state: RecipientState) -> usize {
        if let Some(position) = self.position(&key) {
            if let Some(entry) = self.entries.get_mut(position) {
                entry.1 = state;
            }
            return position;
        }
        let position = self.entries.len();
        if let Some(index) = &mut self.index {
            index.insert(key.clone(), position);
        } else if position >= LINEAR_RECIPIENTS {
            let mut index: FastMap<Text, usize> =
                self.entries.iter().enumerate().map(|(at, (name, _))| (name.clone(), at)).collect();
            index.insert(key.clone(), position);
            self.index = Some(Box::new(index));
        }
        self.entries.push((key, state));
        position
    }
}

#[derive(Clone, Debug)]
struct Listed {
    address: Text,
    lower: Text,
}

/// One per-host error (`he` entries; None = key absent).
#[derive(Clone, Debug, Default)]
struct HostError {
    remote_host: Option<Text>,
    remote_ip: Option<Text>,
    response: Option<Text>,
    smtp_code: Option<i64>,
    enhanced_code: Option<Text>,
    smtp_phase: Option<Text>,
    exim_errno: Option<i64>,
    rcpt: Option<Text>,
}

impl HostError {
    fn is_empty(&self) -> bool {
        self.remote_host.is_none()
            && self.remote_ip.is_none()
            && self.response.is_none()
            && self.smtp_code.is_none()
            && self.enhanced_code.is_none()
            && self.smtp_phase.is_none()
            && self.exim_errno.is_none()
            && self.rcpt.is_none()
    }
}

#[derive(Clone, Debug, Default)]
struct MessageState {
    /// The message id, shared by the message's events.
    msgid: Option<Text>,
    arrival: Arrival,
    arrived: bool,
    listed: InlineVec<Listed>,
    recipients: Recipients,
    host_errors: Vec<HostError>,
    host_errors_used: bool,
    /// Events kept for re-emission, without their arrival data (boxed: an allocation of a few of these
    /// is big enough to make glibc's malloc consolidate its free lists).
    #[allow(clippy::vec_box)]
    stored: Vec<Box<DeliveryEvent>>,
    pending_bounce: Option<Text>,
    last_time: Option<f64>,
    /// 0.0 = not done (Python tests the value's truthiness).
    done: f64,
}

fn is_done(state: &MessageState) -> bool {
    state.done != 0.0
}

/// `_covered`: recipients with an outcome of their own or through an address they redirect to.
struct Covered<'a> {
    recipients: &'a Recipients,
    set: Option<HashSet<&'a str>>,
}

impl<'a> Covered<'a> {
    fn new(recipients: &'a Recipients, queries: usize) -> Self {
        let set = (recipients.len().saturating_mul(queries) > LINEAR_COVER_LIMIT).then(|| {
            let mut set: HashSet<&str> = recipients.entries.iter().map(|(key, _)| &**key).collect();
            set.extend(recipients.entries.iter().filter_map(|(_, state)| state.original().map(|text| &**text)));
            set
        });
        Covered { recipients, set }
    }

    fn contains(&self, lower: &str) -> bool {
        match &self.set {
            Some(set) => set.contains(lower),
            None => {
                self.recipients.entries.iter().any(|(key, state)| {
                    &**key == lower || state.original().is_some_and(|original| &**original == lower)
                })
            }
        }
    }
}

fn all_final(state: &MessageState) -> bool {
    let recipients = &state.recipients;
    if recipients.is_empty() || recipients.entries.iter().any(|(_, rstate)| rstate.final_type.is_none()) {
        return false;
    }
    let covered = Covered::new(recipients, state.listed.len());
    state.listed.iter().all(|listed| covered.contains(&listed.lower))
}

// -- the store ----------------------------------------------------------------------------------------------

/// Message ids up to this long are kept in the key itself (Exim's are 16 or 23 characters).
const INLINE_MSGID: usize = 23;

/// The store key: the server's number and the message id, inline when short (no pointer to follow).
#[derive(Clone, Debug, PartialEq, Eq)]
enum MessageKey {
    Inline { server: u32, len: u8, bytes: [u8; INLINE_MSGID] },
    Long { server: u32, msgid: Box<str> },
}

impl MessageKey {
    fn new(server: u32, msgid: &str) -> Self {
        if msgid.len() <= INLINE_MSGID {
            let mut bytes = [0u8; INLINE_MSGID];
            bytes[..msgid.len()].copy_from_slice(msgid.as_bytes());
            MessageKey::Inline { server, len: msgid.len() as u8, bytes }
        } else {
            MessageKey::Long { server, msgid: Box::from(msgid) }
        }
    }

    fn server(&self) -> u32 {
        match self {
            MessageKey::Inline { server, .. } | MessageKey::Long { server, .. } => *server,
        }
    }

    fn msgid(&self) -> &[u8] {
        match self {
            MessageKey::Inline { len, bytes, .. } => &bytes[..*len as usize],
            MessageKey::Long { msgid, .. } => msgid.as_bytes(),
        }
    }
}

fn hash_key<H: Hasher>(server: u32, msgid: &[u8], state: &mut H) {
    state.write_u32(server);
    state.write(msgid);
}

impl Hash for MessageKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_key(self.server(), self.msgid(), state);
    }
}

struct MessageKeyRef<'a> {
    server: u32,
    msgid: &'a str,
}

impl Hash for MessageKeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_key(self.server, self.msgid.as_bytes(), state);
    }
}

impl Equivalent<MessageKey> for MessageKeyRef<'_> {
    fn equivalent(&self, key: &MessageKey) -> bool {
        self.server == key.server() && self.msgid.as_bytes() == key.msgid()
    }
}

/// How much of a state `look_up` has loaded into the cache.
const PREFETCH_BYTES: usize = 512;

/// Message states boxed (the store's entries move when it grows or releases), packed once completed.
type Store = IndexMap<MessageKey, Slot, FastState>;

enum Slot {
    Open(Box<MessageState>),
    Packed(Packed),
}

impl Slot {
    /// The state, unpacked first when it is packed.
    fn open(&mut self) -> &mut MessageState {
        if let Slot::Packed(packed) = self {
            *self = Slot::Open(Box::new(packed.unpack()));
        }
        match self {
            Slot::Open(state) => state,
            Slot::Packed(_) => unreachable!("unpacked above"),
        }
    }

    /// Packs the state when it holds no more than a completed message keeps.
    fn pack(&mut self, buffer: &mut Vec<u8>) {
        if let Slot::Open(state) = self {
            if let Some(packed) = Packed::pack(state, buffer) {
                *self = Slot::Packed(packed);
            }
        }
    }

    /// Starts loading the state into the cache.
    fn prefetch(&self) {
        let (start, len) = match self {
            Slot::Open(state) => ((&**state as *const MessageState).cast::<u8>(), std::mem::size_of::<MessageState>()),
            Slot::Packed(packed) => (packed.bytes().as_ptr(), packed.bytes().len()),
        };
        #[cfg(target_arch = "x86_64")]
        for offset in (0..len.min(PREFETCH_BYTES)).step_by(64) {
            // SAFETY: a prefetch is a hint; the address lies within the state
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(start.add(offset).cast());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (start, len);
    }

    /// (done, last_time) of the state.
    fn times(&self) -> (f64, Option<f64>) {
        match self {
            Slot::Open(state) => (state.done, state.last_time),
            Slot::Packed(packed) => (packed.done, packed.last_time),
        }
    }
}

struct Server {
    name: Text,
    last_time: Option<f64>,
}

/// Fields of an outcome event that depend on the line kind (`fields` in Python).
#[derive(Default)]
struct OutcomeFields {
    response: Option<Text>,
    remote_host: Option<Text>,
    remote_ip: Option<Text>,
    smtp_code: Option<i64>,
    enhanced_code: Option<Text>,
    smtp_phase: Option<Text>,
    exim_errno: Option<i64>,
    reason: Option<Reason>,
    hint: Option<Text>,
}

impl OutcomeFields {
    fn apply(self, event: &mut DeliveryEvent) {
        event.response = self.response;
        event.remote_host = self.remote_host;
        event.remote_ip = self.remote_ip;
        event.smtp_code = self.smtp_code;
        event.enhanced_code = self.enhanced_code;
        event.smtp_phase = self.smtp_phase;
        event.exim_errno = self.exim_errno;
        event.reason = self.reason;
        event.hint = self.hint;
    }
}

struct OutcomeSpec {
    event_type: EventType,
    attempt: bool,
    is_final: bool,
}

/// `Correlator._classify`'s memory: the same responses come back again and again.
#[derive(Default)]
struct ClassifyCache {
    answers: FastMap<Box<str>, (Reason, Text)>,
    key: String,
}

impl ClassifyCache {
    #[allow(clippy::too_many_arguments)]
    fn classify(
        &mut self,
        classifier: &mut dyn Classify,
        text: &str,
        smtp_code: Option<i64>,
        enhanced_code: Option<&str>,
        errno: Option<i64>,
        phase: Option<&str>,
        kind: &str,
    ) -> (Reason, Text) {
        let key = &mut self.key;
        key.clear();
        let push_text = |key: &mut String, value: Option<&str>| match value {
            Some(value) => {
                push_integer(key, value.len() as i64);
                key.push(':');
                key.push_str(value);
            }
            None => key.push('-'),
        };
        let push_number = |key: &mut String, value: Option<i64>| match value {
            Some(value) => {
                key.push('=');
                push_integer(key, value);
            }
            None => key.push('-'),
        };
        push_text(key, Some(kind));
        push_text(key, enhanced_code);
        push_text(key, phase);
        push_number(key, smtp_code);
        push_number(key, errno);
        push_text(key, Some(text));
        if let Some(answer) = self.answers.get(key.as_str()) {
            return answer.clone();
        }
        let reason = classifier.classify(text, smtp_code, enhanced_code, errno, phase, kind);
        let answer = (reason, classifier.hint(reason));
        if self.answers.len() >= CLASSIFY_CACHE_SIZE {
            self.answers.clear();
        }
        self.answers.insert(Box::from(key.as_str()), answer.clone());
        answer
    }
}

/// Everything of the correlator but the store (so that a handler can hold a message state and this).
struct Engine {
    retry_rules: RetryRules,
    emit_in_progress: bool,
    servers: Vec<Server>,
    server_ids: FastMap<Text, u32>,
    last_server: Option<u32>,
    classified: ClassifyCache,
    scratch: Scratch,
}

/// Feed it the parsed lines of one or many servers in log order; it appends the events each line makes.
pub struct Correlator {
    store: Store,
    /// Where the last line's message is in the store: a message's lines often come one after the other.
    /// Checked against the key there before use (a release moves entries).
    last_index: usize,
    engine: Engine,
    grace_seconds: f64,
    stale_seconds: f64,
}

impl Correlator {
    pub fn new(retry_rules: RetryRules, grace_seconds: f64, stale_seconds: f64, emit_in_progress: bool) -> Self {
        Correlator {
            store: Store::default(),
            last_index: usize::MAX,
            engine: Engine {
                retry_rules,
                emit_in_progress,
                servers: Vec::new(),
                server_ids: FastMap::default(),
                last_server: None,
                classified: ClassifyCache::default(),
                scratch: Scratch::new(),
            },
            grace_seconds,
            stale_seconds,
        }
    }

    /// Leave the ids of most events to the caller: they are marked `id_pending` and computed by
    /// `settle_event_ids`, which hashes several at once. Only the caller's reading of `event_id` and
    /// the events' other fields change (they never depend on the id).
    pub fn defer_event_ids(&mut self) {
        self.engine.scratch.defer_ids = true;
    }

    /// Messages in the store.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    #[allow(dead_code)]
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// The events this line produces (possibly none, possibly re-emissions of earlier events), appended.
    pub fn feed(
        &mut self,
        server: &Text,
        line: &ParsedLine<'_>,
        classifier: &mut dyn Classify,
        out: &mut Vec<DeliveryEvent>,
    ) {
        self.feed_looked_up(server, line, usize::MAX, classifier, out);
    }

    /// Where the message of a line to be fed soon is in the store (a hint for `feed_looked_up`, which
    /// checks it), its state being loaded into the cache meanwhile. Looked up one after the other, the
    /// lines of a batch wait for memory together instead of one by one.
    pub fn look_up(&self, server: &Text, line: &ParsedLine<'_>) -> usize {
        let Some(sid) = self.engine.last_server_id(server) else {
            return usize::MAX;
        };
        let Some(msgid) = line.msgid.as_deref().filter(|msgid| !msgid.is_empty()) else {
            return usize::MAX;
        };
        match self.store.get_full(&MessageKeyRef { server: sid, msgid }) {
            Some((index, _, slot)) => {
                slot.prefetch();
                index
            }
            None => usize::MAX,
        }
    }

    /// `feed`, with where `look_up` found the line's message (usize::MAX: not found).
    pub fn feed_looked_up(
        &mut self,
        server: &Text,
        line: &ParsedLine<'_>,
        hint: usize,
        classifier: &mut dyn Classify,
        out: &mut Vec<DeliveryEvent>,
    ) {
        let engine = &mut self.engine;
        let sid = engine.server_id(server);
        if let Some(time) = line.time {
            engine.servers[sid as usize].last_time = Some(time);
        }
        if line.kind == LineKind::Rejection {
            engine.on_rejection(&mut self.store, sid, line, classifier, out);
            return;
        }
        let Some(msgid) = line.msgid.as_deref().filter(|msgid| !msgid.is_empty()) else {
            return;
        };
        // the hint, else the last line's message; checked against the key there (a release moves entries)
        let guess = if hint != usize::MAX { hint } else { self.last_index };
        let found =
            self.store.get_index(guess).is_some_and(|(key, _)| key.server() == sid && key.msgid() == msgid.as_bytes());
        let known = if found { Some(guess) } else { self.store.get_index_of(&MessageKeyRef { server: sid, msgid }) };
        let (index, is_new) = match known {
            Some(index) => (index, false),
            None if has_handler(line.kind) => {
                let state = Box::new(MessageState { msgid: Some(Text::from(msgid)), ..MessageState::default() });
                (self.store.insert_full(MessageKey::new(sid, msgid), Slot::Open(state)).0, true)
            }
            None => return, // nothing about a message worth opening a state for
        };
        self.last_index = index;
        let Some((_, slot)) = self.store.get_index_mut(index) else {
            return;
        };
        let state = slot.open();
        let Some(msgid) = state.msgid.clone() else {
            return;
        };
        let link = engine.process(sid, &msgid, line, state, classifier, out);
        if line.kind == LineKind::Completed {
            slot.pack(&mut engine.scratch.pack_buffer);
        }
        if let Some(parent) = link {
            // Python stores a new state after its line: a bounce naming itself finds no parent then
            if !(is_new && parent == msgid) {
                engine.link_bounce(&mut self.store, sid, &parent, &msgid, out);
            }
        }
    }

    /// Drops finished messages older than the grace period and unfinished ones gone stale.
    pub fn release(&mut self, now: f64) -> usize {
        let before = self.store.len();
        let (grace, stale) = (self.grace_seconds, self.stale_seconds);
        self.store.retain(|_, slot| {
            let (done, last_time) = slot.times();
            let expired = (done != 0.0 && now - done > grace) || now - last_time.unwrap_or(now) > stale;
            !expired
        });
        before - self.store.len()
    }

    /// In-progress events for listed recipients that have no outcome (end of an offline input).
    pub fn flush(&mut self, _classifier: &mut dyn Classify, out: &mut Vec<DeliveryEvent>) {
        for (key, slot) in &self.store {
            // a packed state is a completed one
            let Slot::Open(state) = slot else {
                continue;
            };
            if is_done(state) || !state.arrived {
                continue;
            }
            let server = self.engine.servers[key.server() as usize].name.clone();
            if let Some(msgid) = &state.msgid {
                in_progress(&mut self.engine.scratch, &server, msgid, state, out);
            }
        }
    }
}

/// `_in_progress`: an event per listed recipient without an outcome.
fn in_progress(scratch: &mut Scratch, server: &Text, msgid: &Text, state: &MessageState, out: &mut Vec<DeliveryEvent>) {
    let time = state.arrival.arrival_time.or(state.last_time).unwrap_or(0.0);
    let covered = Covered::new(&state.recipients, state.listed.len());
    for listed in &state.listed {
        if covered.contains(&listed.lower) {
            continue;
        }
        let mut event = DeliveryEvent::new(EventType::InProgress, server.clone(), Some(msgid.clone()), time);
        event.recipient = Some(listed.address.clone());
        event.recipient_domain = scratch.interner.domain(Some(&listed.address));
        state.arrival.apply(&mut event);
        scratch.set_event_id(&mut event);
        out.push(event);
    }
}

/// `DeliveryEvent.from_dict({**data, **arrival})` for an event kept for re-emission.
fn reemitted(stored: &DeliveryEvent, arrival: &Arrival) -> DeliveryEvent {
    let mut event = stored.clone();
    arrival.apply(&mut event);
    event
}

impl Engine {
    /// The last line's server's number when `server` is that server.
    fn last_server_id(&self, server: &Text) -> Option<u32> {
        self.last_server.filter(|&id| {
            let known = &self.servers[id as usize].name;
            std::rc::Rc::ptr_eq(known, server) || **known == **server
        })
    }

    fn server_id(&mut self, server: &Text) -> u32 {
        if let Some(id) = self.last_server_id(server) {
            return id;
        }
        let id = match self.server_ids.get(server) {
            Some(&id) => id,
            None => {
                let id = self.servers.len() as u32;
                self.servers.push(Server { name: server.clone(), last_time: None });
                self.server_ids.insert(server.clone(), id);
                id
            }
        };
        self.last_server = Some(id);
        id
    }

    /// `_time`: the line's time, else the message's last time, else the server's.
    fn time_of(&self, sid: u32, line: &ParsedLine<'_>, state: Option<&MessageState>) -> f64 {
        if let Some(time) = line.time {
            return time;
        }
        if let Some(last) = state.and_then(|state| state.last_time) {
            return last;
        }
        self.servers[sid as usize].last_time.unwrap_or(0.0)
    }

    /// The body of `feed` for a message state; returns the parent to link a bounce arrival to.
    fn process(
        &mut self,
        sid: u32,
        msgid: &Text,
        line: &ParsedLine<'_>,
        state: &mut MessageState,
        classifier: &mut dyn Classify,
        out: &mut Vec<DeliveryEvent>,
    ) -> Option<Text> {
        let time = match line.time {
            Some(time) => time,
            None => state.last_time.or(self.servers[sid as usize].last_time).unwrap_or(0.0),
        };
        if time >= state.last_time.unwrap_or(time) {
            state.last_time = Some(time);
        }
        let server = self.servers[sid as usize].name.clone();
        let mut link = None;
        match line.kind {
            LineKind::Arrival | LineKind::FakeReject => link = self.on_arrival(&server, msgid, line, state, out),
            LineKind::Delivery | LineKind::DeliveryMore | LineKind::Cutthrough | LineKind::Suppressed => {
                self.on_delivery(sid, &server, msgid, line, state, out)
            }
            LineKind::Deferral => self.on_deferral(sid, &server, msgid, line, state, classifier, out),
            LineKind::Failure => self.on_failure(sid, &server, msgid, line, state, classifier, out),
            LineKind::Completed => self.on_completed(sid, line, state),
            LineKind::Frozen => self.for_open_recipients(sid, &server, msgid, line, state, EventType::Frozen, out),
            LineKind::Cancelled => {
                self.for_open_recipients(sid, &server, msgid, line, state, EventType::Cancelled, out)
            }
            LineKind::HostError => on_host_error(line, state),
            LineKind::SpamScore => {
                if let Some(score) = line.spam_score {
                    if state.arrival.spam_score != Some(score) {
                        state.arrival.spam_score = Some(score);
                        self.after_enrichment(&server, msgid, state, out);
                    }
                }
            }
            LineKind::SenderIdent | LineKind::ConnectionIdent => {
                if let Some(user) = line.user.as_deref().filter(|user| !user.is_empty()) {
                    let overwrite = line.kind == LineKind::SenderIdent;
                    let current = state.arrival.cpanel_user.as_deref();
                    if current != Some(user) && (current.is_none() || overwrite) {
                        state.arrival.cpanel_user = Some(self.scratch.interner.intern(user));
                        self.after_enrichment(&server, msgid, state, out);
                    }
                }
            }
            _ => {}
        }
        if is_finishing(line.kind) && !is_done(state) && all_final(state) {
            state.done = time;
        }
        link
    }

    // -- arrival ---------------------------------------------------------------------------------------------

    fn on_arrival(
        &mut self,
        server: &Text,
        msgid: &Text,
        line: &ParsedLine<'_>,
        state: &mut MessageState,
        out: &mut Vec<DeliveryEvent>,
    ) -> Option<Text> {
        let arrival = &mut state.arrival;
        let interner = &mut self.scratch.interner;
        if let Some(time) = line.time.or(state.last_time) {
            arrival.arrival_time = Some(time);
        }
        let sender = line.address.as_deref();
        macro_rules! set {
            ($name:ident, $value:expr) => {
                if let Some(value) = $value {
                    arrival.$name = Some(value);
                }
            };
        }
        // senders and client addresses differ from message to message (most would miss the text cache and
        // push out texts that repeat): they get texts of their own
        set!(sender, sender.map(Text::from));
        set!(sender_domain, interner.domain(sender));
        set!(auth_id, auth_id(interner, line.auth.as_deref()));
        set!(client_host, or_str(line.host.as_deref(), line.helo.as_deref()).map(|host| interner.intern(host)));
        set!(client_ip, line.host_ip.as_deref().map(Text::from));
        set!(protocol, interner.text(&line.protocol));
        set!(size, line.size);
        set!(subject, to_text(&line.subject));
        set!(message_id_header, to_text(&line.message_id_header));
        set!(parent_msgid, to_text(&line.bounce_parent));
        if let Some(user) = line.user.as_deref().filter(|user| !user.is_empty()) {
            if !SYSTEM_USERS.contains(&user) && arrival.cpanel_user.is_none() {
                arrival.cpanel_user = Some(interner.intern(user));
            }
        }
        state.arrived = true;
        add_listed(&mut state.listed, &line.recipients);

        reemit_with_arrival(state, out);
        if self.emit_in_progress {
            in_progress(&mut self.scratch, server, msgid, state, out);
        }
        let parent = line.bounce_parent.as_deref().filter(|parent| !parent.is_empty())?;
        if is_delay_warning(line.subject.as_deref()) {
            return None;
        }
        Some(Text::from(parent))
    }

    fn after_enrichment(&mut self, server: &Text, msgid: &Text, state: &MessageState, out: &mut Vec<DeliveryEvent>) {
        if self.emit_in_progress && state.arrived {
            in_progress(&mut self.scratch, server, msgid, state, out);
        }
    }

    fn link_bounce(
        &self,
        store: &mut Store,
        sid: u32,
        parent_msgid: &str,
        bounce: &Text,
        out: &mut Vec<DeliveryEvent>,
    ) {
        let Some(parent) = store.get_mut(&MessageKeyRef { server: sid, msgid: parent_msgid }).map(Slot::open) else {
            return;
        };
        let bounce_text = Some(&**bounce);
        if parent.pending_bounce.as_deref() == bounce_text
            || parent.recipients.entries.iter().any(|(_, rstate)| rstate.bounce().map(|text| &**text) == bounce_text)
        {
            // linked already: this arrival line is replayed
            return;
        }
        let mut linked = false;
        let stored = std::mem::take(&mut parent.stored);
        let mut kept = Vec::with_capacity(stored.len());
        for mut data in stored {
            if is_failed(data.kind) && !is_truthy(&data.bounce_msgid) {
                data.bounce_msgid = Some(bounce.clone());
                let rkey = py_lower(data.recipient.as_deref().unwrap_or(""));
                if let Some(position) = parent.recipients.position(&rkey) {
                    if let Some((_, rstate)) = parent.recipients.entries.get_mut(position) {
                        rstate.names_mut().bounce = Some(bounce.clone());
                    }
                }
                out.push(reemitted(&data, &parent.arrival));
                linked = true;
                if !parent.arrived {
                    kept.push(data); // still waiting for its arrival data
                }
            } else {
                kept.push(data);
            }
        }
        parent.stored = kept;
        if !linked {
            parent.pending_bounce = Some(bounce.clone()); // the failure line has not been seen yet
        }
    }

    // -- outcomes --------------------------------------------------------------------------------------------

    fn on_delivery(
        &mut self,
        sid: u32,
        server: &Text,
        msgid: &Text,
        line: &ParsedLine<'_>,
        state: &mut MessageState,
        out: &mut Vec<DeliveryEvent>,
    ) {
        let target = line.address.as_deref().unwrap_or("");
        let transport = line.transport.as_deref().unwrap_or("");
        let event_type = if line.kind == LineKind::Suppressed
            || transport == "**bypassed**"
            || FILTER_TARGETS.contains(&target)
        {
            EventType::Filtered
        } else if transport.starts_with("archiver_") || line.router.as_deref().unwrap_or("").starts_with("archiver_") {
            EventType::Archived
        } else {
            EventType::Delivered
        };
        let fields = OutcomeFields {
            response: to_text(&line.confirmation),
            remote_host: self.scratch.interner.text(&line.host),
            remote_ip: self.scratch.interner.text(&line.host_ip),
            smtp_code: line.smtp_code,
            enhanced_code: self.scratch.interner.text(&line.enhanced_code),
            ..OutcomeFields::default()
        };
        let spec = OutcomeSpec { event_type, attempt: true, is_final: true };
        self.outcome(sid, server, msgid, line, state, fields, spec, out);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_deferral(
        &mut self,
        sid: u32,
        server: &Text,
        msgid: &Text,
        line: &ParsedLine<'_>,
        state: &mut MessageState,
        classifier: &mut dyn Classify,
        out: &mut Vec<DeliveryEvent>,
    ) {
        let text = or_str(line.error.as_deref(), line.detail.as_deref());
        let retry_wait = line.errno.is_some_and(|errno| RETRY_WAIT_ERRNOS.contains(&errno))
            || text.is_some_and(|text| {
                text.contains("retry time not reached") && !text.contains("failing for a long time")
            });
        let fields = self.failure_fields(line, state, "defer", retry_wait, false, classifier);
        let spec = OutcomeSpec { event_type: EventType::Deferred, attempt: !retry_wait, is_final: false };
        self.outcome(sid, server, msgid, line, state, fields, spec, out);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_failure(
        &mut self,
        sid: u32,
        server: &Text,
        msgid: &Text,
        line: &ParsedLine<'_>,
        state: &mut MessageState,
        classifier: &mut dyn Classify,
        out: &mut Vec<DeliveryEvent>,
    ) {
        let text = or_str(or_str(line.error.as_deref(), line.detail.as_deref()), Some(&line.raw)).unwrap_or("");
        let lowered = py_lower(text);
        let expired = EXPIRY_MARKERS.iter().any(|marker| lowered.contains(marker));
        let fields = self.failure_fields(line, state, "fail", false, expired, classifier);
        let event_type = if expired { EventType::Expired } else { EventType::Bounced };
        let spec = OutcomeSpec { event_type, attempt: !expired, is_final: true };
        self.outcome(sid, server, msgid, line, state, fields, spec, out);
    }

    fn failure_fields(
        &mut self,
        line: &ParsedLine<'_>,
        state: &mut MessageState,
        kind: &str,
        retry_wait: bool,
        expired: bool,
        classifier: &mut dyn Classify,
    ) -> OutcomeFields {
        let interner = &mut self.scratch.interner;
        let mut fields = OutcomeFields {
            remote_host: interner.text(&line.host),
            remote_ip: interner.text(&line.host_ip),
            response: or_str(line.error.as_deref(), line.detail.as_deref()).map(Text::from),
            smtp_code: line.smtp_code,
            enhanced_code: interner.text(&line.enhanced_code),
            smtp_phase: interner.text(&line.smtp_phase),
            exim_errno: line.errno,
            reason: None,
            hint: None,
        };
        if !(retry_wait || expired) {
            let address = line.address.as_deref().unwrap_or("");
            if let Some(host_error) = host_error_for(state, address, line.error.as_deref()) {
                merge_host_error(&mut fields, host_error);
            }
        }
        let (reason, hint) = if retry_wait {
            (Reason::RetryWait, classifier.hint(Reason::RetryWait))
        } else if expired {
            (Reason::Expired, classifier.hint(Reason::Expired))
        } else {
            self.classified.classify(
                classifier,
                fields.response.as_deref().unwrap_or(""),
                fields.smtp_code,
                fields.enhanced_code.as_deref(),
                fields.exim_errno,
                fields.smtp_phase.as_deref(),
                kind,
            )
        };
        fields.reason = Some(reason);
        fields.hint = Some(hint);
        fields
    }

    #[allow(clippy::too_many_arguments)]
    fn outcome(
        &mut self,
        sid: u32,
        server: &Text,
        msgid: &Text,
        line: &ParsedLine<'_>,
        state: &mut MessageState,
        fields: OutcomeFields,
        spec: OutcomeSpec,
        out: &mut Vec<DeliveryEvent>,
    ) {
        let target = line.address.as_deref().unwrap_or("");
        let mut parents = line.parents.iter().filter(|parent| !parent.is_empty()).map(|parent| strip_parent(parent));
        // the first address among the target and its parents (a file, pipe or local part is a target only)
        let from_parent = if target.contains('@') { None } else { parents.clone().find(|parent| parent.contains('@')) };
        let recipient_str = from_parent.unwrap_or(target);
        let delivered_to = from_parent.map(|_| Text::from(target));
        let lowered = py_lower(recipient_str);
        let original = parents.next_back().filter(|parent| *py_lower(parent) != *lowered);
        let time = self.time_of(sid, line, Some(state));
        let hash = line_hash(line);

        let MessageState { arrival, arrived, recipients, stored, pending_bounce, listed, .. } = state;
        let mut detached = RecipientState::default();
        // the recipient's text: its key's or its address's when they are the same text (no new allocation)
        let mut recipient: Option<Text> = None;
        let position = match recipients.position(&lowered) {
            Some(position) => Some(position),
            None => {
                // a listed recipient's first outcome: the texts of the arrival line's list serve
                let known = if listed.len() <= LINEAR_RECIPIENTS {
                    listed.iter().find(|item| *item.lower == *lowered)
                } else {
                    None
                };
                let rkey = match (known, &lowered) {
                    (Some(item), _) => {
                        if *item.address == *recipient_str {
                            recipient = Some(item.address.clone());
                        }
                        item.lower.clone()
                    }
                    (None, Cow::Borrowed(_)) => {
                        let text = Text::from(recipient_str);
                        recipient = Some(text.clone());
                        text
                    }
                    (None, Cow::Owned(lower)) => Text::from(lower.as_str()),
                };
                if recipients.len() < MAX_RECIPIENTS {
                    Some(recipients.set(rkey, RecipientState::default()))
                } else {
                    None
                }
            }
        };
        let rstate = match position.and_then(|position| recipients.entries.get_mut(position)) {
            Some((key, rstate)) => {
                if recipient.is_none() {
                    if **key == *recipient_str {
                        recipient = Some(key.clone());
                    } else if let Some(address) = rstate.address().filter(|address| ***address == *recipient_str) {
                        recipient = Some(address.clone());
                    }
                }
                rstate
            }
            None => &mut detached,
        };
        let recipient = recipient.unwrap_or_else(|| Text::from(recipient_str));
        let repeat = rstate.hashes().contains(&hash);
        if repeat && rstate.hashes().last() != Some(&hash) {
            return; // an older line of this recipient fed again: its event was emitted then
        }
        if !repeat {
            rstate.push_hash(hash);
            if *recipient != *lowered {
                rstate.names_mut().address = Some(recipient.clone());
            }
            if let Some(original) = original {
                rstate.names_mut().original = Some(Text::from(py_lower(original).as_ref()));
            }
        }

        let number = if repeat {
            rstate.last_event.unwrap_or(0)
        } else if spec.attempt {
            let number = rstate.attempts + 1;
            rstate.attempts = number;
            rstate.first_attempt.get_or_insert(time);
            rstate.last_attempt = Some(time);
            if spec.event_type == EventType::Deferred {
                rstate.first_failure.get_or_insert(time);
            }
            number
        } else {
            0
        };
        rstate.last_event = (number != 0).then_some(number);
        let retry = if spec.is_final {
            rstate.final_type = Some(spec.event_type);
            RetryState {
                attempt: number,
                first_attempt: rstate.first_attempt,
                last_attempt: rstate.last_attempt,
                next_retry: None,
                give_up: None,
            }
        } else {
            if rstate.final_type == Some(EventType::Archived) {
                // cPanel's outgoing archive copy is logged before the remote outcome
                rstate.final_type = None;
            }
            self.retry_estimate(rstate, number)
        };

        let mut event = DeliveryEvent::new(spec.event_type, server.clone(), Some(msgid.clone()), time);
        let interner = &mut self.scratch.interner;
        event.recipient_domain = interner.domain(Some(recipient_str));
        event.recipient = (!recipient.is_empty()).then_some(recipient);
        event.original_recipient = original.map(Text::from);
        event.router = interner.text(&line.router);
        event.transport = interner.text(&line.transport);
        event.tls = interner.text(&line.tls);
        event.retry = retry;
        event.delivered_to = delivered_to;
        fields.apply(&mut event);
        arrival.apply(&mut event);
        self.scratch.set_event_id(&mut event);
        let failed = is_failed(spec.event_type);
        if repeat {
            event.bounce_msgid = if failed { rstate.bounce().cloned() } else { None };
            out.push(event);
            return;
        }
        if failed && is_truthy(pending_bounce) {
            let bounce = pending_bounce.take();
            if let Some(bounce) = &bounce {
                rstate.names_mut().bounce = Some(bounce.clone());
            }
            event.bounce_msgid = bounce;
        }
        if !*arrived || (failed && !is_truthy(&event.bounce_msgid)) {
            let mut compact = event.clone();
            Arrival::clear(&mut compact);
            stored.push(Box::new(compact));
            if stored.len() > MAX_STORED_EVENTS {
                stored.drain(..stored.len() - MAX_STORED_EVENTS);
            }
        }
        out.push(event);
    }

    fn retry_estimate(&self, rstate: &RecipientState, attempt: i64) -> RetryState {
        let mut retry = RetryState {
            attempt,
            first_attempt: rstate.first_attempt,
            last_attempt: rstate.last_attempt,
            next_retry: None,
            give_up: None,
        };
        if let (Some(first_failure), Some(last_attempt)) = (rstate.first_failure, rstate.last_attempt) {
            retry.next_retry = self.retry_rules.next_retry(first_failure, last_attempt);
            retry.give_up = Some(self.retry_rules.give_up(first_failure));
        }
        retry
    }

    // -- message lifecycle -----------------------------------------------------------------------------------

    fn on_completed(&mut self, sid: u32, line: &ParsedLine<'_>, state: &mut MessageState) {
        state.done = self.time_of(sid, line, Some(state));
        state.stored = Vec::new();
        state.host_errors = Vec::new();
        state.host_errors_used = false;
        state.listed = InlineVec::default();
        state.pending_bounce = None;
    }

    #[allow(clippy::too_many_arguments)]
    fn for_open_recipients(
        &mut self,
        sid: u32,
        server: &Text,
        msgid: &Text,
        line: &ParsedLine<'_>,
        state: &mut MessageState,
        event_type: EventType,
        out: &mut Vec<DeliveryEvent>,
    ) {
        enum Open {
            Tracked(usize),
            Listed(Text, Text),
        }
        let time = self.time_of(sid, line, Some(state));
        let response = or_str(line.detail.as_deref(), line.error.as_deref()).map(Text::from);
        // `list(self._open_recipients(state))`: all of them before any change
        let mut open: Vec<Open> = Vec::new();
        for (position, (_, rstate)) in state.recipients.entries.iter().enumerate() {
            if rstate.final_type.is_none() {
                open.push(Open::Tracked(position));
            }
        }
        {
            let covered = Covered::new(&state.recipients, state.listed.len());
            for listed in &state.listed {
                if !covered.contains(&listed.lower) {
                    open.push(Open::Listed(listed.address.clone(), listed.lower.clone()));
                }
            }
        }
        for item in open {
            let mut retry = RetryState::default();
            let (recipient, original) = match item {
                Open::Tracked(position) => {
                    let Some((key, rstate)) = state.recipients.entries.get_mut(position) else {
                        continue;
                    };
                    retry.first_attempt = rstate.first_attempt;
                    retry.last_attempt = rstate.last_attempt;
                    if event_type == EventType::Cancelled {
                        rstate.final_type = Some(event_type);
                    } else if let Some(first_failure) = rstate.first_failure {
                        retry.give_up = Some(self.retry_rules.give_up(first_failure));
                    }
                    // an empty tracked state is stored under its own (lower-case) key already
                    (rstate.address().unwrap_or(key).clone(), rstate.original().cloned())
                }
                Open::Listed(address, lower) => {
                    // a listed recipient gets an outcome of its own (when its state stays empty)
                    if event_type != EventType::Cancelled && state.recipients.len() < MAX_RECIPIENTS {
                        let mut rstate = RecipientState::default();
                        if address != lower {
                            rstate.names_mut().address = Some(address.clone());
                        }
                        state.recipients.set(lower, rstate);
                    }
                    (address, None)
                }
            };
            let mut event = DeliveryEvent::new(event_type, server.clone(), Some(msgid.clone()), time);
            event.recipient_domain = self.scratch.interner.domain(Some(&recipient));
            event.recipient = Some(recipient);
            event.original_recipient = original;
            event.response = response.clone();
            event.retry = retry;
            state.arrival.apply(&mut event);
            self.scratch.set_event_id(&mut event);
            out.push(event);
        }
    }

    // -- stateless ---------------------------------------------------------------------------------------------

    fn on_rejection(
        &mut self,
        store: &mut Store,
        sid: u32,
        line: &ParsedLine<'_>,
        classifier: &mut dyn Classify,
        out: &mut Vec<DeliveryEvent>,
    ) {
        let time = self.time_of(sid, line, None);
        let mut arrival = Arrival::default();
        if let Some(msgid) = line.msgid.as_deref().filter(|msgid| !msgid.is_empty()) {
            // rejected after DATA: the message was never accepted; keep what the ACLs logged before
            if let Some(state) = store.get_mut(&MessageKeyRef { server: sid, msgid }).map(Slot::open) {
                arrival = state.arrival.clone();
                state.done = time;
            }
        }
        let text = or_str(line.error.as_deref(), line.detail.as_deref()).unwrap_or("");
        let (reason, hint) = self.classified.classify(
            classifier,
            text,
            line.smtp_code,
            line.enhanced_code.as_deref(),
            line.errno,
            line.smtp_phase.as_deref(),
            "reject",
        );
        let interner = &mut self.scratch.interner;
        let sender = line.sender.as_deref();
        // as on arrival: senders, client names and addresses of rejected mail seldom repeat
        arrival.sender = sender.map(Text::from);
        arrival.sender_domain = interner.domain(sender);
        arrival.client_host = or_str(line.host.as_deref(), line.helo.as_deref()).map(Text::from);
        arrival.client_ip = line.host_ip.as_deref().map(Text::from);
        if line.auth.as_deref().is_some_and(|auth| !auth.is_empty()) {
            arrival.auth_id = auth_id(interner, line.auth.as_deref());
        }
        if let Some(user) = line.user.as_deref().filter(|user| !user.is_empty()) {
            if arrival.cpanel_user.is_none() {
                arrival.cpanel_user = Some(Text::from(user));
            }
        }
        let server = self.servers[sid as usize].name.clone();
        let msgid = to_text(&line.msgid);
        let hash = line_hash(line);
        let response = (!text.is_empty()).then(|| Text::from(text));
        let recipients = unique_recipients(&line.recipients);
        let enhanced_code = interner.text(&line.enhanced_code);
        let smtp_phase = interner.text(&line.smtp_phase);
        let scratch = &mut self.scratch;
        let mut discriminator = std::mem::take(&mut scratch.discriminator);
        let mut emit = |recipient: Option<&str>| {
            let mut event = DeliveryEvent::new(EventType::Rejected, server.clone(), msgid.clone(), time);
            event.recipient = recipient.map(Text::from);
            event.recipient_domain = scratch.interner.domain(recipient);
            event.response = response.clone();
            event.smtp_code = line.smtp_code;
            event.enhanced_code = enhanced_code.clone();
            event.smtp_phase = smtp_phase.clone();
            event.reason = Some(reason);
            event.hint = Some(hint.clone());
            // rejections of one address in the same second (from different clients) are different events
            discriminator.clear();
            discriminator.push_str(recipient.unwrap_or("None"));
            discriminator.push('\u{1f}');
            push_integer(&mut discriminator, i64::from(hash));
            event.event_id = event_id(
                &mut scratch.id_buffer,
                &server,
                line.msgid.as_deref(),
                Some(&discriminator),
                EventType::Rejected.as_str(),
                time,
                0,
            );
            arrival.apply(&mut event);
            out.push(event);
        };
        if recipients.is_empty() {
            emit(None);
        }
        for recipient in recipients {
            emit(Some(recipient));
        }
        self.scratch.discriminator = discriminator;
    }
}

/// `list(dict.fromkeys(recipients[:MAX_LISTED_RECIPIENTS]))`.
fn unique_recipients<'a>(recipients: &'a [Cow<'_, str>]) -> Vec<&'a str> {
    let recipients = &recipients[..recipients.len().min(MAX_LISTED_RECIPIENTS)];
    let mut unique: Vec<&str> = Vec::with_capacity(recipients.len());
    if recipients.len() <= LINEAR_RECIPIENTS {
        for recipient in recipients {
            if !unique.contains(&&**recipient) {
                unique.push(recipient);
            }
        }
    } else {
        let mut seen = HashSet::with_capacity(recipients.len());
        for recipient in recipients {
            if seen.insert(&**recipient) {
                unique.push(recipient);
            }
        }
    }
    unique
}

/// The `for` list of an arrival line added to the listed recipients, once per lower-case address.
fn add_listed(listed: &mut InlineVec<Listed>, recipients: &[Cow<'_, str>]) {
    let mut known: Option<HashSet<Text>> = None;
    for recipient in recipients {
        if listed.len() >= MAX_LISTED_RECIPIENTS {
            break;
        }
        if recipient.is_empty() {
            continue;
        }
        let lower = py_lower(recipient);
        let is_known = if listed.len() < LINEAR_RECIPIENTS && known.is_none() {
            listed.iter().any(|item| *item.lower == *lower)
        } else {
            let known = known.get_or_insert_with(|| listed.iter().map(|item| item.lower.clone()).collect());
            known.contains(lower.as_ref())
        };
        if is_known {
            continue;
        }
        let address = Text::from(recipient.as_ref());
        let lower = match lower {
            Cow::Borrowed(_) => address.clone(),
            Cow::Owned(lower) => Text::from(lower),
        };
        if let Some(known) = &mut known {
            known.insert(lower.clone());
        }
        listed.push(Listed { address, lower });
    }
}

/// `_reemit_with_arrival`: every kept event again with the arrival data; failures without a bounce stay.
fn reemit_with_arrival(state: &mut MessageState, out: &mut Vec<DeliveryEvent>) {
    if state.stored.is_empty() {
        return;
    }
    let stored = std::mem::take(&mut state.stored);
    let mut kept = Vec::new();
    for data in stored {
        out.push(reemitted(&data, &state.arrival));
        if is_failed(data.kind) && !is_truthy(&data.bounce_msgid) {
            kept.push(data);
        }
    }
    state.stored = kept;
}

fn on_host_error(line: &ParsedLine<'_>, state: &mut MessageState) {
    if state.host_errors_used {
        state.host_errors.clear(); // a new delivery attempt starts
        state.host_errors_used = false;
    }
    state.host_errors.push(HostError {
        remote_host: to_text(&line.host),
        remote_ip: to_text(&line.host_ip),
        response: or_str(line.error.as_deref(), line.detail.as_deref()).map(Text::from),
        smtp_code: line.smtp_code,
        enhanced_code: to_text(&line.enhanced_code),
        smtp_phase: to_text(&line.smtp_phase),
        exim_errno: line.errno,
        rcpt: rcpt_in_error(line.error.as_deref()),
    });
    if state.host_errors.len() > MAX_HOST_ERRORS {
        let excess = state.host_errors.len() - MAX_HOST_ERRORS;
        state.host_errors.drain(..excess);
    }
}

/// `_host_error_for`: the per-host error a ==/** line summarises, None when there is none (or it is empty).
fn host_error_for<'a>(state: &'a mut MessageState, address: &str, text: Option<&str>) -> Option<&'a HostError> {
    if state.host_errors.is_empty() {
        return None;
    }
    state.host_errors_used = true;
    let lowered = py_lower(address);
    let errors = &state.host_errors;
    let found = errors.iter().rev().find(|entry| entry.rcpt.as_deref() == Some(&*lowered)).or_else(|| {
        errors.iter().rev().find(|entry| {
            let response = entry.response.as_deref().unwrap_or("");
            entry.rcpt.is_none()
                && match text.filter(|text| !text.is_empty()) {
                    None => true,
                    Some(text) => !response.is_empty() && (response.contains(text) || text.contains(response)),
                }
        })
    })?;
    (!found.is_empty()).then_some(found)
}

fn merge_host_error(fields: &mut OutcomeFields, host_error: &HostError) {
    if fields.remote_host.is_none() && fields.remote_ip.is_none() {
        fields.remote_host = host_error.remote_host.clone();
        fields.remote_ip = host_error.remote_ip.clone();
    }
    if fields.smtp_code.is_none() {
        // the host's SMTP answer says more than the summary on the ==/** line
        if fields.smtp_code.is_none() {
            fields.smtp_code = host_error.smtp_code;
        }
        if fields.enhanced_code.is_none() {
            fields.enhanced_code = host_error.enhanced_code.clone();
        }
        if fields.smtp_phase.is_none() {
            fields.smtp_phase = host_error.smtp_phase.clone();
        }
        if fields.response.is_none() || host_error.smtp_code.is_some() {
            if let Some(response) = &host_error.response {
                fields.response = Some(response.clone());
            }
        }
    }
    if fields.exim_errno.is_none() {
        fields.exim_errno = host_error.exim_errno;
    }
}

// -- test hook: the correlator driven from Python ------------------------------------------------------------

pub mod probe {
    //! `NativeCorrelatorProbe`: the native correlator fed Python `ParsedLine`s and classified by a Python
    //! callable, returning `DeliveryEvent.to_dict()` dicts, to compare it with the Python correlator.

    use std::borrow::Cow;

    use pyo3::exceptions::PyValueError;
    use pyo3::prelude::*;
    use pyo3::types::PyDict;

    use super::super::retry::RetryRules;
    use super::super::types::{Classify, DeliveryEvent, LineKind, ParsedLine, Reason, Text};
    use super::Correlator;

    struct PythonClassifier<'py> {
        classify: Bound<'py, PyAny>,
        hints: Vec<Text>,
        error: Option<PyErr>,
    }

    impl Classify for PythonClassifier<'_> {
        fn classify(
            &mut self,
            text: &str,
            smtp_code: Option<i64>,
            enhanced_code: Option<&str>,
            errno: Option<i64>,
            phase: Option<&str>,
            kind: &str,
        ) -> Reason {
            let answer = self
                .classify
                .call1((text, smtp_code, enhanced_code, errno, phase, kind))
                .and_then(|value| value.extract::<String>());
            match answer {
                Ok(name) => Reason::from_name(&name).unwrap_or(Reason::Unknown),
                Err(error) => {
                    self.error.get_or_insert(error);
                    Reason::Unknown
                }
            }
        }

        fn hint(&self, reason: Reason) -> Text {
            self.hints[reason.index()].clone()
        }
    }

    /// For timing the correlator alone: every response is `unknown`.
    struct ConstantClassifier {
        hint: Text,
    }

    impl Classify for ConstantClassifier {
        fn classify(
            &mut self,
            _: &str,
            _: Option<i64>,
            _: Option<&str>,
            _: Option<i64>,
            _: Option<&str>,
            _: &str,
        ) -> Reason {
            Reason::Unknown
        }

        fn hint(&self, _: Reason) -> Text {
            self.hint.clone()
        }
    }

    fn owned(value: Option<String>) -> Option<Cow<'static, str>> {
        value.map(Cow::Owned)
    }

    fn strings(values: Vec<String>) -> Vec<Cow<'static, str>> {
        values.into_iter().map(Cow::Owned).collect()
    }

    /// A Python `ParsedLine` as the native one, field by field.
    fn convert(line: &Bound<'_, PyAny>) -> PyResult<ParsedLine<'static>> {
        let kind: String = line.getattr("kind")?.str()?.extract()?;
        let kind = LineKind::from_name(&kind).ok_or_else(|| PyValueError::new_err(format!("kind {kind}")))?;
        let raw: String = line.getattr("raw")?.extract()?;
        let mut parsed = ParsedLine::new(kind, Cow::Owned(raw));
        macro_rules! get {
            ($name:ident) => {
                line.getattr(stringify!($name))?.extract()?
            };
        }
        macro_rules! text {
            ($($name:ident),*) => {$( parsed.$name = owned(get!($name)); )*};
        }
        text!(
            msgid,
            address,
            sender,
            router,
            transport,
            bounce_parent,
            host,
            helo,
            host_ip,
            interface_ip,
            user,
            auth,
            protocol,
            subject,
            message_id_header,
            tls,
            confirmation,
            error,
            enhanced_code,
            smtp_phase,
            cpanel_domain,
            detail
        );
        parsed.time = get!(time);
        parsed.pid = get!(pid);
        parsed.parents = strings(get!(parents));
        parsed.recipients = strings(get!(recipients));
        parsed.host_port = get!(host_port);
        parsed.host_reused = get!(host_reused);
        parsed.size = get!(size);
        parsed.errno = get!(errno);
        parsed.smtp_code = get!(smtp_code);
        parsed.spam_score = get!(spam_score);
        parsed.is_spam = get!(is_spam);
        Ok(parsed)
    }

    fn to_dict<'py>(py: Python<'py>, event: &DeliveryEvent) -> PyResult<Bound<'py, PyDict>> {
        let data = PyDict::new(py);
        data.set_item("type", event.kind.as_str())?;
        data.set_item("server", &*event.server)?;
        data.set_item("msgid", event.msgid.as_deref())?;
        data.set_item("time", event.time)?;
        macro_rules! text {
            ($($name:ident),*) => {$( data.set_item(stringify!($name), event.$name.as_deref())?; )*};
        }
        text!(recipient, original_recipient, recipient_domain);
        data.set_item("arrival_time", event.arrival_time)?;
        text!(sender, sender_domain, cpanel_user, auth_id, client_host, client_ip, protocol);
        data.set_item("spam_score", event.spam_score)?;
        data.set_item("size", event.size)?;
        text!(subject, message_id_header, router, transport, remote_host, remote_ip, tls, response);
        data.set_item("smtp_code", event.smtp_code)?;
        text!(enhanced_code, smtp_phase);
        data.set_item("exim_errno", event.exim_errno)?;
        data.set_item("reason", event.reason.map(Reason::as_str))?;
        text!(hint);
        let retry = PyDict::new(py);
        retry.set_item("attempt", event.retry.attempt)?;
        retry.set_item("first_attempt", event.retry.first_attempt)?;
        retry.set_item("last_attempt", event.retry.last_attempt)?;
        retry.set_item("next_retry", event.retry.next_retry)?;
        retry.set_item("give_up", event.retry.give_up)?;
        data.set_item("retry", retry)?;
        text!(bounce_msgid, parent_msgid, delivered_to);
        data.set_item("event_id", event.event_id.to_hex_string())?;
        data.set_item("v", 1)?;
        Ok(data)
    }

    /// Lines kept in one text arena, to time the correlator on lines whose text is close together in
    /// memory (as the parser's borrowed lines are) rather than in a million scattered allocations.
    #[derive(Default)]
    struct Compact {
        arena: String,
        lists: Vec<Span>,
        lines: Vec<CompactLine>,
    }

    type Span = (usize, usize);

    struct CompactLine {
        server: usize,
        kind: LineKind,
        numbers: [Option<i64>; 5], // pid, host_port, size, errno, smtp_code
        time: Option<f64>,
        spam_score: Option<f64>,
        is_spam: Option<bool>,
        host_reused: bool,
        texts: [Option<Span>; 23],
        parents: Span,
        recipients: Span,
    }

    macro_rules! with_texts {
        ($macro:ident, $($args:tt)*) => {
            $macro!($($args)* raw_opt, msgid, address, sender, router, transport, bounce_parent, host, helo, host_ip,
                interface_ip, user, auth, protocol, subject, message_id_header, tls, confirmation, error,
                enhanced_code, smtp_phase, cpanel_domain, detail)
        };
    }

    impl Compact {
        fn span(&mut self, text: &str) -> Span {
            let start = self.arena.len();
            self.arena.push_str(text);
            (start, self.arena.len())
        }

        fn list(&mut self, items: &[Cow<'_, str>]) -> Span {
            let spans: Vec<Span> = items.iter().map(|item| self.span(item)).collect();
            let start = self.lists.len();
            self.lists.extend(spans);
            (start, self.lists.len())
        }

        fn push(&mut self, server: usize, line: &ParsedLine<'_>) {
            let raw_opt = Some(line.raw.clone());
            let mut texts = [None; 23];
            macro_rules! fill {
                ($line:ident, $($name:ident),*) => {{
                    let values: [&Option<Cow<'_, str>>; 23] = [$( fill!(@get $line, $name) ),*];
                    for (slot, value) in texts.iter_mut().zip(values) {
                        *slot = value.as_deref().map(|text| self.span(text));
                    }
                }};
                (@get $line:ident, raw_opt) => { &raw_opt };
                (@get $line:ident, $name:ident) => { &$line.$name };
            }
            with_texts!(fill, line,);
            let parents = self.list(&line.parents);
            let recipients = self.list(&line.recipients);
            self.lines.push(CompactLine {
                server,
                kind: line.kind,
                numbers: [line.pid, line.host_port, line.size, line.errno, line.smtp_code],
                time: line.time,
                spam_score: line.spam_score,
                is_spam: line.is_spam,
                host_reused: line.host_reused,
                texts,
                parents,
                recipients,
            });
        }

        fn text(&self, span: Option<Span>) -> Option<Cow<'_, str>> {
            span.map(|(start, end)| Cow::Borrowed(&self.arena[start..end]))
        }

        fn line(&self, compact: &CompactLine) -> ParsedLine<'_> {
            let list = |(start, end): Span| -> Vec<Cow<'_, str>> {
                self.lists[start..end].iter().map(|&(from, to)| Cow::Borrowed(&self.arena[from..to])).collect()
            };
            let mut texts = compact.texts.iter().map(|span| self.text(*span));
            let mut next = || texts.next().flatten();
            let raw = next().unwrap_or(Cow::Borrowed(""));
            let mut line = ParsedLine::new(compact.kind, raw);
            macro_rules! take {
                ($($name:ident),*) => {$( line.$name = next(); )*};
            }
            take!(
                msgid,
                address,
                sender,
                router,
                transport,
                bounce_parent,
                host,
                helo,
                host_ip,
                interface_ip,
                user,
                auth,
                protocol,
                subject,
                message_id_header,
                tls,
                confirmation,
                error,
                enhanced_code,
                smtp_phase,
                cpanel_domain,
                detail
            );
            [line.pid, line.host_port, line.size, line.errno, line.smtp_code] = compact.numbers;
            line.time = compact.time;
            line.spam_score = compact.spam_score;
            line.is_spam = compact.is_spam;
            line.host_reused = compact.host_reused;
            line.parents = list(compact.parents);
            line.recipients = list(compact.recipients);
            line
        }
    }

    #[pyclass(unsendable)]
    pub struct NativeCorrelatorProbe {
        correlator: Correlator,
        classify: PyObject,
        hints: Vec<Text>,
        servers: Vec<Text>,
        /// Lines converted by `convert_lines`, for `time_feed`.
        converted: Compact,
        /// Per line kind: lines, nanoseconds in `feed`, events (the last `time_feed`).
        kind_times: Vec<(u64, u64, u64)>,
    }

    impl NativeCorrelatorProbe {
        fn server(&mut self, name: &str) -> Text {
            match self.servers.iter().find(|server| &***server == name) {
                Some(server) => server.clone(),
                None => {
                    let server = Text::from(name);
                    self.servers.push(server.clone());
                    server
                }
            }
        }

        fn run<'py>(
            &mut self,
            py: Python<'py>,
            action: impl FnOnce(&mut Correlator, &mut PythonClassifier<'py>, &mut Vec<DeliveryEvent>),
        ) -> PyResult<Vec<Bound<'py, PyDict>>> {
            let mut classifier =
                PythonClassifier { classify: self.classify.bind(py).clone(), hints: self.hints.clone(), error: None };
            let mut events = Vec::new();
            action(&mut self.correlator, &mut classifier, &mut events);
            if let Some(error) = classifier.error {
                return Err(error);
            }
            events.iter().map(|event| to_dict(py, event)).collect()
        }
    }

    #[pymethods]
    impl NativeCorrelatorProbe {
        #[new]
        fn new(
            py: Python<'_>,
            retry_rules: &Bound<'_, PyAny>,
            classify: PyObject,
            emit_in_progress: bool,
            grace_seconds: f64,
            stale_seconds: f64,
        ) -> PyResult<Self> {
            let rules = RetryRules::from_python(retry_rules)?;
            let hints_map = py.import("processors.exim.reasons")?.getattr("HINTS")?;
            let hints = Reason::ALL
                .iter()
                .map(|reason| Ok(Text::from(hints_map.get_item(reason.as_str())?.extract::<String>()?)))
                .collect::<PyResult<Vec<Text>>>()?;
            Ok(NativeCorrelatorProbe {
                correlator: Correlator::new(rules, grace_seconds, stale_seconds, emit_in_progress),
                classify,
                hints,
                servers: Vec::new(),
                converted: Compact::default(),
                kind_times: vec![(0, 0, 0); LineKind::ALL.len()],
            })
        }

        fn feed<'py>(
            &mut self,
            py: Python<'py>,
            server: &str,
            line: &Bound<'py, PyAny>,
        ) -> PyResult<Vec<Bound<'py, PyDict>>> {
            let server = self.server(server);
            let parsed = convert(line)?;
            self.run(py, |correlator, classifier, events| correlator.feed(&server, &parsed, classifier, events))
        }

        /// (kind, lines, ns in feed, events) per line kind, summed over the `time_feed` runs.
        fn kind_times(&self) -> Vec<(&'static str, u64, u64, u64)> {
            LineKind::ALL
                .iter()
                .map(|kind| {
                    let (lines, nanos, events) = self.kind_times[kind.index()];
                    (kind.as_str(), lines, nanos, events)
                })
                .collect()
        }

        /// `py_lower` (Python's `str.lower()` in Rust).
        #[staticmethod]
        fn lower(text: &str) -> String {
            super::py_lower(text).into_owned()
        }

        fn release(&mut self, now: f64) -> usize {
            self.correlator.release(now)
        }

        /// `retry_rules.next_retry(first_failure, last_attempt)` computed natively.
        #[staticmethod]
        fn retry_next_retry(
            retry_rules: &Bound<'_, PyAny>,
            first_failure: f64,
            last_attempt: f64,
        ) -> PyResult<Option<f64>> {
            Ok(RetryRules::from_python(retry_rules)?.next_retry(first_failure, last_attempt))
        }

        /// `retry_rules.give_up(first_failure)` computed natively.
        #[staticmethod]
        fn retry_give_up(retry_rules: &Bound<'_, PyAny>, first_failure: f64) -> PyResult<f64> {
            Ok(RetryRules::from_python(retry_rules)?.give_up(first_failure))
        }

        /// `retry_rules.schedule(first_failure, until)` computed natively.
        #[staticmethod]
        fn retry_schedule(retry_rules: &Bound<'_, PyAny>, first_failure: f64, until: f64) -> PyResult<Vec<f64>> {
            Ok(RetryRules::from_python(retry_rules)?.schedule(first_failure, until))
        }

        fn flush<'py>(&mut self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
            self.run(py, |correlator, classifier, events| correlator.flush(classifier, events))
        }

        fn __len__(&self) -> usize {
            self.correlator.len()
        }

        /// Writes the converted lines to a file (for timing runs that skip the conversion).
        fn save_converted(&self, path: &str) -> PyResult<()> {
            let mut out: Vec<u8> = Vec::new();
            let put = |out: &mut Vec<u8>, value: u64| out.extend_from_slice(&value.to_le_bytes());
            put(&mut out, self.servers.len() as u64);
            for server in &self.servers {
                put(&mut out, server.len() as u64);
                out.extend_from_slice(server.as_bytes());
            }
            let c = &self.converted;
            put(&mut out, c.arena.len() as u64);
            out.extend_from_slice(c.arena.as_bytes());
            put(&mut out, c.lists.len() as u64);
            for &(a, b) in &c.lists {
                put(&mut out, a as u64);
                put(&mut out, b as u64);
            }
            put(&mut out, c.lines.len() as u64);
            for line in &c.lines {
                put(&mut out, line.server as u64);
                put(&mut out, line.kind.index() as u64);
                for number in line.numbers {
                    put(&mut out, u64::from(number.is_some()));
                    put(&mut out, number.unwrap_or(0) as u64);
                }
                for value in [line.time, line.spam_score] {
                    put(&mut out, u64::from(value.is_some()));
                    put(&mut out, value.unwrap_or(0.0).to_bits());
                }
                put(&mut out, line.is_spam.map_or(0, |spam| 1 + u64::from(spam)));
                put(&mut out, u64::from(line.host_reused));
                for text in line.texts {
                    put(&mut out, u64::from(text.is_some()));
                    let (a, b) = text.unwrap_or((0, 0));
                    put(&mut out, a as u64);
                    put(&mut out, b as u64);
                }
                for (a, b) in [line.parents, line.recipients] {
                    put(&mut out, a as u64);
                    put(&mut out, b as u64);
                }
            }
            std::fs::write(path, out).map_err(|error| PyValueError::new_err(error.to_string()))
        }

        /// Reads lines written by `save_converted` (replacing the converted lines).
        fn load_converted(&mut self, path: &str) -> PyResult<()> {
            struct Reader {
                data: Vec<u8>,
                at: usize,
            }
            impl Reader {
                fn u(&mut self) -> u64 {
                    let value = u64::from_le_bytes(self.data[self.at..self.at + 8].try_into().unwrap_or([0; 8]));
                    self.at += 8;
                    value
                }
                fn text(&mut self, len: usize) -> String {
                    let text = String::from_utf8_lossy(&self.data[self.at..self.at + len]).into_owned();
                    self.at += len;
                    text
                }
            }
            let data = std::fs::read(path).map_err(|error| PyValueError::new_err(error.to_string()))?;
            let mut r = Reader { data, at: 0 };
            self.servers.clear();
            for _ in 0..r.u() {
                let len = r.u() as usize;
                let name = r.text(len);
                self.servers.push(Text::from(name));
            }
            let mut c = Compact::default();
            let len = r.u() as usize;
            c.arena = r.text(len);
            for _ in 0..r.u() {
                c.lists.push((r.u() as usize, r.u() as usize));
            }
            for _ in 0..r.u() {
                let server = r.u() as usize;
                let kind = LineKind::ALL[r.u() as usize];
                let mut numbers = [None; 5];
                for number in &mut numbers {
                    let (flag, value) = (r.u(), r.u());
                    *number = (flag == 1).then_some(value as i64);
                }
                let mut floats = [None; 2];
                for value in &mut floats {
                    let (flag, bits) = (r.u(), r.u());
                    *value = (flag == 1).then_some(f64::from_bits(bits));
                }
                let is_spam = match r.u() {
                    0 => None,
                    spam => Some(spam == 2),
                };
                let host_reused = r.u() == 1;
                let mut texts = [None; 23];
                for text in &mut texts {
                    let (flag, a, b) = (r.u(), r.u() as usize, r.u() as usize);
                    *text = (flag == 1).then_some((a, b));
                }
                let parents = (r.u() as usize, r.u() as usize);
                let recipients = (r.u() as usize, r.u() as usize);
                c.lines.push(CompactLine {
                    server,
                    kind,
                    numbers,
                    time: floats[0],
                    spam_score: floats[1],
                    is_spam,
                    host_reused,
                    texts,
                    parents,
                    recipients,
                });
            }
            self.converted = c;
            Ok(())
        }

        /// Converts (server, line) pairs once, for `time_feed`.
        fn convert_lines(&mut self, items: Vec<(String, Bound<'_, PyAny>)>) -> PyResult<()> {
            for (server, line) in items {
                let parsed = convert(&line)?;
                let server = self.server(&server);
                let index = self.servers.iter().position(|known| *known == server).unwrap_or(0);
                self.converted.push(index, &parsed);
            }
            Ok(())
        }

        /// Feeds the converted lines to a fresh correlator (releasing every `release_every` lines with the
        /// last time seen, then flushing); returns (seconds, events, released).
        #[allow(clippy::too_many_arguments)]
        fn time_feed(
            &mut self,
            py: Python<'_>,
            retry_rules: &Bound<'_, PyAny>,
            emit_in_progress: bool,
            release_every: usize,
            python_classify: bool,
            baseline: bool,
            by_kind: bool,
        ) -> PyResult<(f64, usize, usize)> {
            let rules = RetryRules::from_python(retry_rules)?;
            let mut correlator = Correlator::new(rules, 3600.0, 8.0 * 86400.0, emit_in_progress);
            let mut python =
                PythonClassifier { classify: self.classify.bind(py).clone(), hints: self.hints.clone(), error: None };
            let mut constant = ConstantClassifier { hint: self.hints[Reason::Unknown.index()].clone() };
            let classifier: &mut dyn Classify = if python_classify { &mut python } else { &mut constant };
            let mut events = Vec::with_capacity(64);
            let (mut total, mut released, mut last_time) = (0usize, 0usize, 0.0);
            let start = std::time::Instant::now();
            for (number, compact) in self.converted.lines.iter().enumerate() {
                let line = self.converted.line(compact);
                if baseline {
                    std::hint::black_box(&line);
                    continue;
                }
                if let Some(time) = line.time {
                    last_time = time;
                }
                if by_kind {
                    let before = std::time::Instant::now();
                    correlator.feed(&self.servers[compact.server], &line, classifier, &mut events);
                    let spent = before.elapsed().as_nanos() as u64;
                    let slot = &mut self.kind_times[line.kind.index()];
                    slot.0 += 1;
                    slot.1 += spent;
                    slot.2 += events.len() as u64;
                } else {
                    correlator.feed(&self.servers[compact.server], &line, classifier, &mut events);
                }
                total += events.len();
                events.clear();
                if release_every > 0 && (number + 1) % release_every == 0 {
                    released += correlator.release(last_time);
                }
            }
            correlator.flush(classifier, &mut events);
            total += events.len();
            let seconds = start.elapsed().as_secs_f64();
            if let Some(error) = python.error {
                return Err(error);
            }
            Ok((seconds, total, released))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_eq_is_equality() {
        let base: Vec<u8> = (0..71u8).map(|at| at.wrapping_mul(29).wrapping_add(3)).collect();
        for len in 0..base.len() {
            let a = &base[..len];
            assert!(short_eq(a, a), "{len} bytes");
            assert!(!short_eq(a, &base[..len + 1]), "{len} bytes against {}", len + 1);
            for at in 0..len {
                let mut other = a.to_vec();
                other[at] ^= 0x20;
                assert!(!short_eq(a, &other), "{len} bytes, byte {at} differs");
            }
        }
    }

    #[test]
    fn a_tail_word_is_the_bytes_padded_with_zeros() {
        let bytes: Vec<u8> = (0..8u8).map(|at| at.wrapping_mul(37).wrapping_add(0x91)).collect();
        for len in 0..8 {
            let mut padded = [0u8; 8];
            padded[..len].copy_from_slice(&bytes[..len]);
            assert_eq!(tail_word(&bytes[..len]), u64::from_le_bytes(padded), "{len} bytes");
        }
    }

    #[test]
    fn lower_ascii_is_seen_at_any_length() {
        for len in 0..20 {
            let lower = "a".repeat(len);
            assert!(is_lower_ascii(lower.as_bytes()));
            for at in 0..len {
                let mut upper = lower.clone().into_bytes();
                upper[at] = b'Q';
                assert!(!is_lower_ascii(&upper), "{len} bytes, upper case at {at}");
                upper[at] = 0xc3;
                assert!(!is_lower_ascii(&upper), "{len} bytes, non-ASCII at {at}");
            }
        }
    }
}
