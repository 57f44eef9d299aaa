//! The reason classifier: mirrors `processors/exim/reasons.py` (`classify`, `parse_codes`, `HINTS`).
//!
//! The rule table stays in Python. The classifier is built from the engine table (`table.rs`): `RULES` and
//! `HINTS` as JSON, read from the file `processors/exim/engine_table.py` writes or rendered by that module.
//! Each rule's pattern (compiled in Python with `re.ASCII`) is translated to the `regex` crate, and the
//! module's other constants are checked to be still the ones mirrored here. The answer is the Python one:
//! the first applicable rule, in table order, whose pattern matches the lower-cased text, else the first
//! applicable rule without a pattern, else unknown.
//!
//! Python's trigger words are replaced by the literal start of every pattern alternative, looked up at
//! each word boundary of the text (through the hash of its first two bytes): an alternative that is only
//! a literal is decided by its hit and the word boundary after it; a rule with any other hit runs its
//! whole regex from the first such hit on. A rule is only ever skipped when it cannot match.
//!
//! Patterns use only what can be mirrored exactly (ASCII `\b \d \s \S \w`, classes, lazy and counted
//! repeats); a construct the `regex` crate lacks or reads differently (look-around, back-references,
//! possessive repeats, inline flags) makes the build fail rather than answer differently.

use std::borrow::Cow;
use std::sync::OnceLock;

use memchr::memmem::Finder;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyString;

use regex::Regex;

use super::types::{Classify, Reason, Text};

// A `#[pyclass]` holding the classifier gets no more than 16-byte alignment from Python's allocator.
const _: () = assert!(std::mem::align_of::<Classifier>() <= 16);

/// A set of rules by table index.
type RuleSet = u128;
const MAX_RULES: usize = RuleSet::BITS as usize;

pub(super) const MAX_SCAN: usize = 2048;
/// `parse_codes` looks at `text[:32]`.
const CODES_SCAN: usize = 32;
pub(super) const KINDS: [&str; 3] = ["defer", "fail", "reject"];
const DEFAULT_KIND: usize = 1;
pub(super) const PHASES: [&str; 8] = ["connect", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "end_of_data"];
/// The slot of "no phase" in per-phase tables.
const NO_PHASE: usize = PHASES.len();
pub(super) const REMOTE_ERROR: &str = "error from remote mail server after ";
pub(super) const LMTP_ERROR: &str = "lmtp error after ";
pub(super) const OTHER_PHASE_MARKERS: [&str; 3] =
    ["closed connection in response to ", "smtp timeout after ", "timeout after "];
/// `_COMMAND_PHASES`; an empty phase means "skip this prefix and go on with the rest of the list".
pub(super) const COMMAND_PHASES: [(&str, &str); 11] = [
    ("pipelined ", ""),
    ("mail from", "mail"),
    ("rcpt to", "rcpt"),
    ("end of data", "end_of_data"),
    ("data", "data"),
    ("initial connection", "connect"),
    ("ehlo", "ehlo"),
    ("helo", "ehlo"),
    ("lhlo", "ehlo"),
    ("starttls", "starttls"),
    ("auth", "auth"),
];

/// The Python sources of the module-level regexes mirrored by hand below; the classifier is not built
/// when one has changed.
pub(super) const PYTHON_REGEXES: [(&str, &str); 4] = [
    ("_CODES_RE", r"\s{0,8}([2-5][0-9]{2})(?:[ -]([2-5]\.[0-9]{1,3}\.[0-9]{1,3})(?![0-9.]))?(?=[ \-\r\n\\]|$)"),
    ("_ENHANCED_RE", r"([245])\.([0-9]{1,3})\.([0-9]{1,3})"),
    ("_RESPONSE_START_RE", r": (?=[2-5][0-9]{2}(?:[ -]|$))"),
    ("_CONTINUATION_RE", r"(?:\\n|\n)[2-5][0-9]{2}[ -](?:[2-5]\.[0-9]{1,3}\.[0-9]{1,3}\s?)?"),
];

/// `str.isspace()`: what `str.split()`, `str.strip()` and Unicode `\s` treat as white space.
fn is_py_space(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | '\x1c'..='\x1f'
            | ' '
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// `re.ASCII` `\w` by byte value.
const WORD_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric() || b == b'_';
        byte += 1;
    }
    table
};

/// `re.ASCII` `\w` on one byte of UTF-8 (a byte of a multi-byte character is never a word character).
#[inline]
fn is_word_byte(byte: u8) -> bool {
    WORD_BYTES[usize::from(byte)]
}

/// One row of `RULES`, with its conditions turned into the masks of `Conditions`.
struct RuleRow {
    name: Box<str>,
    reason: Reason,
    /// The pattern translated to the `regex` crate's syntax (checked when the classifier is built).
    source: Option<Box<str>>,
    /// Compiled on first use: a run meets few of the rules, and compiling them all would be most of
    /// the start-up of `trackdelivery parse`.
    pattern: OnceLock<Regex>,
}

impl RuleRow {
    fn compile(name: &str, source: &str) -> Result<Regex, String> {
        regex::RegexBuilder::new(source).size_limit(64 << 20).build().map_err(|error| format!("rule {name}: {error}"))
    }

    /// Whether the rule's pattern matches `text` from `from` on (false for a rule without one).
    fn is_match_at(&self, text: &str, from: usize) -> bool {
        let Some(source) = &self.source else { return false };
        let regex = self.pattern.get_or_init(|| {
            // the syntax was checked at build time and `NativeClassifier` compiles every rule in the tests
            Self::compile(&self.name, source).unwrap_or_else(|error| panic!("{error}"))
        });
        regex.is_match_at(text, from)
    }
}

/// `_applies` for every rule at once: each condition is a mask of the rules it lets through.
#[derive(Default)]
struct Conditions {
    any_code: RuleSet,
    by_code: Vec<(i64, RuleSet)>,
    any_class: RuleSet,
    by_class: Vec<(i64, RuleSet)>,
    any_errno: RuleSet,
    by_errno: Vec<(i64, RuleSet)>,
    by_phase: [RuleSet; PHASES.len() + 1],
    by_kind: [RuleSet; KINDS.len()],
    /// Rules that do not require the absence of a reply code.
    allows_code: RuleSet,
    any_enhanced: RuleSet,
    enhanced: Vec<(usize, Vec<Vec<Option<i64>>>)>,
    with_pattern: RuleSet,
}

fn lookup(table: &[(i64, RuleSet)], value: Option<i64>) -> RuleSet {
    value.and_then(|value| table.binary_search_by_key(&value, |entry| entry.0).ok()).map_or(0, |index| table[index].1)
}

fn add_to(table: &mut Vec<(i64, RuleSet)>, values: &[i64], bit: RuleSet) {
    for &value in values {
        match table.binary_search_by_key(&value, |entry| entry.0) {
            Ok(index) => table[index].1 |= bit,
            Err(index) => table.insert(index, (value, bit)),
        }
    }
}

/// The validated call: `_classify`'s `code`, `enhanced`, `errno_value`, `phase_value`, `kind_value`.
struct Facts {
    code: Option<i64>,
    enhanced: Option<[i64; 3]>,
    errno: Option<i64>,
    phase: usize,
    kind: usize,
}

impl Conditions {
    fn applicable(&self, facts: &Facts) -> RuleSet {
        let code_class = match (facts.code, facts.enhanced) {
            (Some(code), _) => Some(code.div_euclid(100)),
            (None, Some(enhanced)) => Some(enhanced[0]),
            (None, None) => None,
        };
        let mut rules = (self.any_code | lookup(&self.by_code, facts.code))
            & (self.any_class | lookup(&self.by_class, code_class))
            & (self.any_errno | lookup(&self.by_errno, facts.errno))
            & self.by_phase[facts.phase]
            & self.by_kind[facts.kind];
        if code_class.is_some() {
            rules &= self.allows_code;
        }
        let mut enhanced_ok = self.any_enhanced;
        if let Some(have) = facts.enhanced {
            for (index, patterns) in &self.enhanced {
                let matches = patterns.iter().any(|pattern| {
                    pattern.len() <= have.len()
                        && pattern.iter().zip(have.iter()).all(|(want, have)| want.is_none_or(|want| want == *have))
                });
                if matches {
                    enhanced_ok |= 1 << index;
                }
            }
        }
        rules & enhanced_ok
    }
}

/// How much of each literal start is a key: a hit on a key is checked against the whole literal start.
const KEY_BYTES: usize = 8;
/// Keys are found through the hash of their first two bytes.
const BUCKETS: usize = 1024;

fn bucket_of(first: u8, second: u8) -> usize {
    ((usize::from(first) << 5) ^ usize::from(second)) % BUCKETS
}

/// What a hit of one alternative's literal start says about its rule.
struct Hit {
    rule: usize,
    /// The whole literal start (its key holds only the first `KEY_BYTES` bytes).
    literal_start: Box<[u8]>,
    /// `Some(end_boundary)`: the alternative is this literal (followed by `\b` when true), so a hit at
    /// word boundaries is a match; `None`: the rule's regex must decide.
    literal: Option<bool>,
}

/// The first `KEY_BYTES` bytes of one or more literal starts, for a comparison of eight bytes at once.
struct Key {
    bytes: [u8; KEY_BYTES],
    len: usize,
    /// `bytes` and the mask of its `len` bytes as little-endian words.
    word: u64,
    mask: u64,
}

impl Key {
    fn new(bytes: &[u8]) -> Key {
        let mut padded = [0u8; KEY_BYTES];
        padded[..bytes.len()].copy_from_slice(bytes);
        let mask = if bytes.len() == KEY_BYTES { u64::MAX } else { (1u64 << (8 * bytes.len())) - 1 };
        Key { bytes: padded, len: bytes.len(), word: u64::from_le_bytes(padded), mask }
    }

    fn is_at(&self, bytes: &[u8], at: usize) -> bool {
        match bytes.get(at..at + KEY_BYTES) {
            Some(eight) => {
                let eight: [u8; KEY_BYTES] = eight.try_into().unwrap_or_default();
                (u64::from_le_bytes(eight) ^ self.word) & self.mask == 0
            }
            None => bytes[at..].starts_with(&self.bytes[..self.len]),
        }
    }
}

/// Which text rules can match: the literal starts of all alternatives, looked up at each word boundary of
/// the text (a rule's pattern is `\b(?:...)`, so every match of an alternative starts at a boundary with
/// the alternative's literal start).
struct TextFilter {
    keys: Vec<Key>,
    hits: Vec<Vec<Hit>>,
    /// The keys of bucket `b` are `bucket_keys[bucket_start[b]..bucket_start[b + 1]]`.
    bucket_start: Box<[u16]>,
    bucket_keys: Box<[u16]>,
    /// Rules with an alternative without a literal start, or of another shape: always left to their regex.
    unfiltered: RuleSet,
    /// Some literal starts with a non-word character: look at word ends too.
    from_word_ends: bool,
}

impl TextFilter {
    fn new(sources: &[Option<String>]) -> Result<TextFilter, String> {
        let mut keys: Vec<Key> = Vec::new();
        let mut hits: Vec<Vec<Hit>> = Vec::new();
        let mut unfiltered: RuleSet = 0;
        for (rule, source) in sources.iter().enumerate() {
            let Some(source) = source else { continue };
            let Some(alternatives) = rule_alternatives(source) else {
                unfiltered |= 1 << rule;
                continue;
            };
            for alternative in alternatives {
                let (literal, ending) = literal_start(&alternative);
                if literal.is_empty() {
                    unfiltered |= 1 << rule;
                    continue;
                }
                let key = &literal.as_bytes()[..literal.len().min(KEY_BYTES)];
                let hit = Hit { rule, literal_start: literal.as_bytes().into(), literal: ending };
                match keys.iter().position(|known| known.bytes[..known.len] == *key) {
                    Some(index) => hits[index].push(hit),
                    None => {
                        keys.push(Key::new(key));
                        hits.push(vec![hit]);
                    }
                }
            }
        }
        if keys.len() > usize::from(u16::MAX) {
            return Err(format!("{} literal starts; reasons.rs handles {}", keys.len(), u16::MAX));
        }
        // a one-byte key is in every bucket of its first byte
        let mut by_bucket: Vec<Vec<u16>> = vec![Vec::new(); BUCKETS];
        for (index, key) in keys.iter().enumerate() {
            if key.len == 1 {
                for second in 0..=u8::MAX {
                    let bucket = &mut by_bucket[bucket_of(key.bytes[0], second)];
                    if !bucket.contains(&(index as u16)) {
                        bucket.push(index as u16);
                    }
                }
            } else {
                by_bucket[bucket_of(key.bytes[0], key.bytes[1])].push(index as u16);
            }
        }
        let mut bucket_start = Vec::with_capacity(BUCKETS + 1);
        let mut bucket_keys = Vec::new();
        for bucket in by_bucket {
            bucket_start.push(bucket_keys.len() as u16);
            bucket_keys.extend(bucket);
        }
        if bucket_keys.len() > usize::from(u16::MAX) {
            return Err("too many literal starts of one byte".to_string());
        }
        bucket_start.push(bucket_keys.len() as u16);
        let from_word_ends = keys.iter().any(|key| !is_word_byte(key.bytes[0]));
        Ok(TextFilter {
            keys,
            hits,
            bucket_start: bucket_start.into(),
            bucket_keys: bucket_keys.into(),
            unfiltered,
            from_word_ends,
        })
    }

    /// (rules whose literal alternative matched, rules whose regex must decide, a byte offset before
    /// which none of the latter can match), within `rules`.
    fn scan(&self, lowered: &str, rules: RuleSet) -> (RuleSet, RuleSet, usize) {
        let mut scan = Scan { matched: 0, undecided: self.unfiltered & rules, undecided_from: usize::MAX };
        // an unfiltered rule may match anywhere; else the first undecided hit is where a match can start
        if scan.undecided != 0 {
            scan.undecided_from = 0;
        }
        let bytes = lowered.as_bytes();
        let mut previous_is_word = false;
        for (chunk_index, chunk) in bytes.chunks(64).enumerate() {
            let mut word: u64 = 0;
            for (at, &byte) in chunk.iter().enumerate() {
                word |= u64::from(is_word_byte(byte)) << at;
            }
            let previous = (word << 1) | u64::from(previous_is_word);
            let in_chunk = if chunk.len() == 64 { u64::MAX } else { (1u64 << chunk.len()) - 1 };
            // word starts, and word ends when some literal starts with a non-word byte
            let mut starts = word & !previous;
            if self.from_word_ends {
                starts |= !word & previous & in_chunk;
            }
            previous_is_word = word >> 63 != 0;
            while starts != 0 {
                let start = chunk_index * 64 + starts.trailing_zeros() as usize;
                starts &= starts - 1;
                self.hits_at(bytes, start, rules, &mut scan);
            }
        }
        (scan.matched, scan.undecided & !scan.matched, scan.undecided_from.min(bytes.len()))
    }

    /// Every literal start at `start`, a word boundary.
    fn hits_at(&self, bytes: &[u8], start: usize, rules: RuleSet, scan: &mut Scan) {
        let second = bytes.get(start + 1).copied().unwrap_or(0);
        let bucket = bucket_of(bytes[start], second);
        let (from, to) = (usize::from(self.bucket_start[bucket]), usize::from(self.bucket_start[bucket + 1]));
        for &key in &self.bucket_keys[from..to] {
            if !self.keys[usize::from(key)].is_at(bytes, start) {
                continue;
            }
            let rest = &bytes[start..];
            for hit in &self.hits[usize::from(key)] {
                let bit: RuleSet = 1 << hit.rule;
                if rules & bit == 0 || !rest.starts_with(&hit.literal_start) {
                    continue;
                }
                let literal_end = start + hit.literal_start.len();
                match hit.literal {
                    None => {
                        scan.undecided |= bit;
                        scan.undecided_from = scan.undecided_from.min(start);
                    }
                    Some(end_boundary) if !end_boundary || is_boundary(bytes, literal_end) => scan.matched |= bit,
                    Some(_) => {}
                }
            }
        }
    }
}

struct Scan {
    matched: RuleSet,
    undecided: RuleSet,
    undecided_from: usize,
}

/// ASCII `\b` at byte offset `at` of `bytes`.
fn is_boundary(bytes: &[u8], at: usize) -> bool {
    let before = at.checked_sub(1).and_then(|index| bytes.get(index)).is_some_and(|&b| is_word_byte(b));
    let after = bytes.get(at).is_some_and(|&b| is_word_byte(b));
    before != after
}

/// The top-level alternatives of a pattern built by `_rule` (`\b(?:...)`), or None for another shape.
fn rule_alternatives(pattern: &str) -> Option<Vec<String>> {
    let inner: Vec<char> = pattern.strip_prefix(r"\b(?:")?.strip_suffix(')')?.chars().collect();
    let mut parts = Vec::new();
    let mut start = 0;
    let mut depth = 0i32;
    let mut index = 0;
    while index < inner.len() {
        match inner[index] {
            '\\' => index += 1,
            '[' => index = class_end(&inner, index + 1)?,
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return None; // the `(?:` closed before the end: not one group
                }
            }
            '|' if depth == 0 => {
                parts.push(inner[start..index].iter().collect());
                start = index + 1;
            }
            _ => {}
        }
        index += 1;
    }
    if depth != 0 || index != inner.len() {
        return None;
    }
    parts.push(inner[start..].iter().collect());
    Some(parts)
}

/// The index of the `]` closing a class whose members start at `index` (a `]` first is a member).
fn class_end(chars: &[char], mut index: usize) -> Option<usize> {
    if chars.get(index) == Some(&'^') {
        index += 1;
    }
    if chars.get(index) == Some(&']') {
        index += 1;
    }
    while index < chars.len() {
        match chars[index] {
            '\\' => index += 2,
            ']' => return Some(index),
            _ => index += 1,
        }
    }
    None
}

/// The literal text every match of `alternative` starts with, and whether the alternative is nothing
/// but that literal: `Some(false)`, or the literal then `\b`: `Some(true)`.
fn literal_start(alternative: &str) -> (String, Option<bool>) {
    let chars: Vec<char> = alternative.chars().collect();
    let mut literal = String::new();
    let mut index = 0;
    while index < chars.len() {
        let (char, step) = match chars[index] {
            '\\' => match chars.get(index + 1) {
                Some('b') if index + 2 == chars.len() => return (literal, Some(true)),
                Some(&escaped) if escaped.is_ascii_punctuation() || escaped == ' ' => (escaped, 2),
                _ => return (literal, None),
            },
            c if "().[]|?*+{}^$".contains(c) => return (literal, None),
            c => (c, 1),
        };
        match chars.get(index + step) {
            Some('?' | '*' | '{') => return (literal, None),
            Some('+') => {
                literal.push(char);
                return (literal, None);
            }
            _ => {}
        }
        literal.push(char);
        index += step;
    }
    (literal, Some(false))
}

/// A Python `re` pattern (flags `re.ASCII`) in `regex` syntax, for `is_match`. Constructs that the
/// `regex` crate lacks or reads differently are refused rather than approximated.
fn translate_pattern(source: &str) -> Result<String, String> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len() * 2);
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        index += 1;
        match c {
            '\\' => {
                let escaped = *chars.get(index).ok_or("trailing backslash")?;
                index += 1;
                out.push_str(&translate_escape(escaped)?);
            }
            '[' => index = translate_class(&chars, index, &mut out)?,
            '(' => {
                if chars.get(index) == Some(&'?') {
                    if chars.get(index + 1) == Some(&':') {
                        out.push_str("(?:");
                        index += 2;
                    } else {
                        return Err(format!("group construct (?{:?} is not supported", chars.get(index + 1)));
                    }
                } else {
                    out.push('(');
                }
            }
            '*' | '+' | '?' => {
                out.push(c);
                index = translate_quantifier_suffix(&chars, index, &mut out)?;
            }
            '{' => match parse_counted(&chars, index) {
                Some((min, max, next)) => {
                    out.push_str(&format!("{{{min},{max}}}"));
                    index = translate_quantifier_suffix(&chars, next, &mut out)?;
                }
                None => out.push_str(r"\{"),
            },
            '^' => out.push_str(r"\A"),
            '$' => {
                if !matches!(chars.get(index), None | Some('|' | ')')) {
                    return Err("`$` before more pattern is not supported".into());
                }
                out.push_str(r"(?:\z|\n\z)");
            }
            '.' | '|' | ')' => out.push(c),
            _ => out.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    Ok(out)
}

/// After a quantifier: `?` (lazy) is kept; `+` (possessive) is refused.
fn translate_quantifier_suffix(chars: &[char], index: usize, out: &mut String) -> Result<usize, String> {
    match chars.get(index) {
        Some('?') => {
            out.push('?');
            Ok(index + 1)
        }
        Some('+') => Err("possessive quantifiers are not supported".into()),
        _ => Ok(index),
    }
}

/// Python's `{m}`, `{m,}`, `{,n}`, `{m,n}` after the `{` at `index - 1`: (min, max text, next index).
fn parse_counted(chars: &[char], index: usize) -> Option<(u32, String, usize)> {
    let close = index + chars.get(index..)?.iter().position(|&c| c == '}')?;
    let body: String = chars[index..close].iter().collect();
    let (min, max) = match body.split_once(',') {
        None => (body.clone(), body.clone()),
        Some((min, max)) => (min.to_string(), max.to_string()),
    };
    let valid = |text: &str| text.chars().all(|c| c.is_ascii_digit());
    if !valid(&min) || !valid(&max) {
        return None;
    }
    if body.is_empty() {
        return None; // Python reads `{}` as literal text (and `{,}` as `{0,}`)
    }
    let min_value: u32 = if min.is_empty() { 0 } else { min.parse().ok()? };
    if !max.is_empty() && max.parse::<u32>().ok()? < min_value {
        return None;
    }
    Some((min_value, max, close + 1))
}

fn translate_escape(escaped: char) -> Result<String, String> {
    Ok(match escaped {
        'b' => r"(?-u:\b)".to_string(),
        'd' => "[0-9]".to_string(),
        'D' => "[^0-9]".to_string(),
        's' => r"[\t\n\x0B\x0C\r ]".to_string(),
        'S' => r"[^\t\n\x0B\x0C\r ]".to_string(),
        'w' => "[0-9A-Za-z_]".to_string(),
        'W' => "[^0-9A-Za-z_]".to_string(),
        'A' => r"\A".to_string(),
        'Z' => r"\z".to_string(),
        'n' => r"\n".to_string(),
        't' => r"\t".to_string(),
        'r' => r"\r".to_string(),
        'f' => r"\x0C".to_string(),
        'v' => r"\x0B".to_string(),
        'a' => r"\x07".to_string(),
        c if c.is_ascii_alphanumeric() => return Err(format!(r"escape \{c} is not supported")),
        c => regex::escape(c.encode_utf8(&mut [0; 4])),
    })
}

/// A Python character class starting after its `[` at `index`, as explicit code point ranges.
fn translate_class(chars: &[char], mut index: usize, out: &mut String) -> Result<usize, String> {
    let mut ranges: Vec<(char, char)> = Vec::new();
    let negated = chars.get(index) == Some(&'^');
    if negated {
        index += 1;
    }
    let mut first = true;
    loop {
        let c = *chars.get(index).ok_or("unterminated character class")?;
        if c == ']' && !first {
            index += 1;
            break;
        }
        first = false;
        let (low, next) = class_member(chars, index, &mut ranges)?;
        index = next;
        let Some(low) = low else { continue };
        if chars.get(index) == Some(&'-') && chars.get(index + 1).is_some_and(|&c| c != ']') {
            let (high, next) = class_member(chars, index + 1, &mut ranges)?;
            let high = high.ok_or("a class escape cannot end a range")?;
            if high < low {
                return Err("bad character range".into());
            }
            ranges.push((low, high));
            index = next;
        } else {
            ranges.push((low, low));
        }
    }
    out.push('[');
    if negated {
        out.push('^');
    }
    for (low, high) in ranges {
        out.push_str(&format!(r"\x{{{:X}}}-\x{{{:X}}}", low as u32, high as u32));
    }
    out.push(']');
    Ok(index)
}

/// One member of a class at `index`: a single character (returned) or a class escape (added to `ranges`).
fn class_member(chars: &[char], index: usize, ranges: &mut Vec<(char, char)>) -> Result<(Option<char>, usize), String> {
    let c = *chars.get(index).ok_or("unterminated character class")?;
    if c != '\\' {
        return Ok((Some(c), index + 1));
    }
    let escaped = *chars.get(index + 1).ok_or("unterminated character class")?;
    let single = match escaped {
        'd' => {
            ranges.push(('0', '9'));
            None
        }
        's' => {
            ranges.extend([('\t', '\r'), (' ', ' ')]);
            None
        }
        'w' => {
            ranges.extend([('0', '9'), ('A', 'Z'), ('a', 'z'), ('_', '_')]);
            None
        }
        'n' => Some('\n'),
        't' => Some('\t'),
        'r' => Some('\r'),
        'f' => Some('\x0c'),
        'v' => Some('\x0b'),
        'a' => Some('\x07'),
        'b' => Some('\x08'),
        c if c.is_ascii_alphanumeric() => return Err(format!(r"class escape \{c} is not supported")),
        c => Some(c),
    };
    Ok((single, index + 2))
}

/// The reason classifier built from the Python rule table.
pub struct Classifier {
    rules: Vec<RuleRow>,
    conditions: Conditions,
    filter: TextFilter,
    /// Boxed: memchr's searchers are 32-byte aligned, more than a Python object's storage guarantees.
    markers: Box<Markers>,
    hints: Vec<Text>,
}

fn config_error(message: String) -> PyErr {
    PyValueError::new_err(format!("processors.exim.reasons: {message}"))
}

/// A rule of the engine table (`processors/exim/engine_table.py`).
pub struct TableRule {
    pub name: String,
    pub reason: Reason,
    pub source: Option<String>,
    pub code_classes: Vec<i64>,
    pub codes: Vec<i64>,
    pub enhanced: Vec<Vec<Option<i64>>>,
    pub errnos: Vec<i64>,
    pub phases: Vec<String>,
    pub kinds: Vec<String>,
    pub without_code: bool,
}

impl Classifier {
    /// Builds the classifier from `processors.exim.reasons` (`RULES`, `HINTS`), through the engine table.
    pub fn from_python(py: Python<'_>) -> PyResult<Classifier> {
        let table = super::table::from_python(py)?;
        Classifier::from_table(table.rules, table.hints)
    }

    /// Builds the classifier from the rules and hints of the engine table.
    pub fn from_table(rules: Vec<TableRule>, hints: Vec<Text>) -> PyResult<Classifier> {
        if rules.len() > MAX_RULES {
            return Err(config_error(format!("{} rules; reasons.rs handles {MAX_RULES}", rules.len())));
        }
        Classifier::build(rules, hints)
    }

    fn build(python_rules: Vec<TableRule>, hints: Vec<Text>) -> PyResult<Classifier> {
        let mut conditions = Conditions { by_phase: [0; PHASES.len() + 1], ..Conditions::default() };
        let mut rules = Vec::with_capacity(python_rules.len());
        let sources: Vec<Option<String>> = python_rules.iter().map(|rule| rule.source.clone()).collect();
        for (index, rule) in python_rules.into_iter().enumerate() {
            let bit: RuleSet = 1 << index;
            add_condition(&mut conditions.any_code, &mut conditions.by_code, &rule.codes, bit);
            add_condition(&mut conditions.any_class, &mut conditions.by_class, &rule.code_classes, bit);
            add_condition(&mut conditions.any_errno, &mut conditions.by_errno, &rule.errnos, bit);
            for (slot, mask) in conditions.by_phase.iter_mut().enumerate() {
                if rule.phases.is_empty()
                    || PHASES.get(slot).is_some_and(|phase| rule.phases.iter().any(|p| p == phase))
                {
                    *mask |= bit;
                }
            }
            for (slot, mask) in conditions.by_kind.iter_mut().enumerate() {
                if rule.kinds.is_empty() || rule.kinds.iter().any(|kind| kind == KINDS[slot]) {
                    *mask |= bit;
                }
            }
            if !rule.without_code {
                conditions.allows_code |= bit;
            }
            if rule.enhanced.is_empty() {
                conditions.any_enhanced |= bit;
            } else {
                conditions.enhanced.push((index, rule.enhanced));
            }
            let pattern = match &rule.source {
                None => None,
                Some(source) => {
                    conditions.with_pattern |= bit;
                    let translated =
                        translate_pattern(source).map_err(|why| config_error(format!("rule {}: {why}", rule.name)))?;
                    regex_syntax::Parser::new()
                        .parse(&translated)
                        .map_err(|error| config_error(format!("rule {}: {error}", rule.name)))?;
                    Some(translated.into_boxed_str())
                }
            };
            rules.push(RuleRow {
                name: rule.name.into_boxed_str(),
                reason: rule.reason,
                source: pattern,
                pattern: OnceLock::new(),
            });
        }
        let filter = TextFilter::new(&sources).map_err(config_error)?;
        Ok(Classifier { rules, conditions, filter, markers: Box::new(Markers::new()), hints })
    }

    /// `classify(...)` as (reason, rule name); the rule name is "unknown" when no rule applied.
    pub fn classify_rule(
        &self,
        text: &str,
        smtp_code: Option<i64>,
        enhanced_code: Option<&str>,
        errno: Option<i64>,
        phase: Option<&str>,
        kind: &str,
    ) -> (Reason, &str) {
        match self.classify_index(text, smtp_code, enhanced_code, errno, phase, kind) {
            Some(index) => (self.rules[index].reason, &self.rules[index].name),
            None => (Reason::Unknown, "unknown"),
        }
    }

    /// `_classify`: the index of the deciding rule.
    fn classify_index<'t>(
        &self,
        text: &'t str,
        mut smtp_code: Option<i64>,
        mut enhanced_code: Option<&'t str>,
        errno: Option<i64>,
        phase: Option<&str>,
        kind: &str,
    ) -> Option<usize> {
        let scan = prefix_chars(text, MAX_SCAN);
        let mut found_phase = None;
        let scan_lowered = python_lower(scan);
        let joined: Cow<'_, str>;
        let cleaned: Cow<'_, str>;
        let relowered: Cow<'_, str>;
        let mut lowered: &str = "";
        if !scan.is_empty() {
            let (scan_part, phase_found, response) = self.markers.split_response(scan, &scan_lowered);
            found_phase = phase_found;
            if let Some(response) = response {
                if smtp_code.is_none() && enhanced_code.is_none() {
                    (smtp_code, enhanced_code) = parse_codes(response);
                }
            }
            if scan.is_ascii() && !scan_part.contains("\\N") {
                // On ASCII text lower-casing commutes with `_joined` (no "\N" becomes "\n") and with
                // `_without_addresses`, and a suffix of `scan` lower-cases to that suffix of `scan_lowered`.
                let offset = scan_part.as_ptr() as usize - scan.as_ptr() as usize;
                joined = joined_lines(&scan_lowered[offset..]);
                cleaned = without_addresses(&joined);
                lowered = &cleaned;
            } else {
                joined = joined_lines(scan_part);
                cleaned = without_addresses(&joined);
                relowered = python_lower(&cleaned);
                lowered = &relowered;
            }
        }
        let facts = Facts {
            code: smtp_code.filter(|code| (200..=599).contains(code)),
            enhanced: enhanced_code.and_then(enhanced_tuple),
            errno: errno.filter(|errno| (-1000..=1000).contains(errno)),
            phase: phase.and_then(phase_index).or(found_phase).unwrap_or(NO_PHASE),
            kind: KINDS.iter().position(|known| *known == kind).unwrap_or(DEFAULT_KIND),
        };
        let applicable = self.conditions.applicable(&facts);
        let floor_rules = applicable & !self.conditions.with_pattern;
        let floor = (floor_rules != 0).then(|| floor_rules.trailing_zeros() as usize);
        let before_floor: RuleSet = match floor {
            Some(index) => (1 << index) - 1,
            None => RuleSet::MAX,
        };
        let text_rules = applicable & self.conditions.with_pattern & before_floor;
        if lowered.is_empty() || text_rules == 0 {
            return floor;
        }
        self.first_text_match(lowered, text_rules).or(floor)
    }

    fn first_text_match(&self, lowered: &str, text_rules: RuleSet) -> Option<usize> {
        let (matched, undecided, from) = self.filter.scan(lowered, text_rules);
        let mut pending = matched | undecided;
        while pending != 0 {
            let index = pending.trailing_zeros() as usize;
            let bit: RuleSet = 1 << index;
            if matched & bit != 0 || self.rules[index].is_match_at(lowered, from) {
                return Some(index);
            }
            pending &= !bit;
        }
        None
    }
}

fn add_condition(any: &mut RuleSet, table: &mut Vec<(i64, RuleSet)>, values: &[i64], bit: RuleSet) {
    if values.is_empty() {
        *any |= bit;
    } else {
        add_to(table, values, bit);
    }
}

fn phase_index(phase: &str) -> Option<usize> {
    PHASES.iter().position(|known| *known == phase)
}

/// `text[:count]` in code points.
fn prefix_chars(text: &str, count: usize) -> &str {
    if text.len() <= count {
        return text;
    }
    if text.as_bytes()[..count].is_ascii() {
        return &text[..count]; // `count` ASCII characters
    }
    match text.char_indices().nth(count) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// `str.lower()`. Only the length and the ASCII letters of the result matter to the classifier, and
/// Rust's full lower-case mapping agrees with Python's on both (U+0130 gives two code points in both).
fn python_lower(text: &str) -> Cow<'_, str> {
    if text.is_ascii() {
        if text.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(text.to_ascii_lowercase())
        } else {
            Cow::Borrowed(text)
        }
    } else {
        Cow::Owned(text.to_lowercase())
    }
}

/// The byte offset in `text` of the code point at index `chars` (Python index), None past the end.
fn byte_offset_of_char(text: &str, chars: usize) -> Option<usize> {
    if text.is_ascii() {
        return (chars <= text.len()).then_some(chars);
    }
    text.char_indices().map(|(offset, _)| offset).chain(std::iter::once(text.len())).nth(chars)
}

/// The markers `_split_response` looks for, with their searchers built once.
struct Markers {
    remote_error: Finder<'static>,
    lmtp_error: Finder<'static>,
    other: [Finder<'static>; OTHER_PHASE_MARKERS.len()],
    /// `AFTER`, which most markers contain: a text without it is searched only for the others.
    after: Finder<'static>,
    /// Whether each of REMOTE_ERROR, LMTP_ERROR, OTHER_PHASE_MARKERS contains `AFTER`.
    needs_after: [bool; 2 + OTHER_PHASE_MARKERS.len()],
}

const AFTER: &str = "after ";

impl Markers {
    fn new() -> Markers {
        Markers {
            remote_error: Finder::new(REMOTE_ERROR),
            lmtp_error: Finder::new(LMTP_ERROR),
            other: OTHER_PHASE_MARKERS.map(Finder::new),
            after: Finder::new(AFTER),
            needs_after: [
                REMOTE_ERROR.contains(AFTER),
                LMTP_ERROR.contains(AFTER),
                OTHER_PHASE_MARKERS[0].contains(AFTER),
                OTHER_PHASE_MARKERS[1].contains(AFTER),
                OTHER_PHASE_MARKERS[2].contains(AFTER),
            ],
        }
    }

    /// `_split_response`: (text to scan, phase, response).
    fn split_response<'t>(&self, text: &'t str, lowered: &str) -> (&'t str, Option<usize>, Option<&'t str>) {
        let haystack = lowered.as_bytes();
        // a marker holding `AFTER` can only be found when `AFTER` is
        let has_after = self.after.find(haystack).is_some();
        let may_hold = |index: usize| has_after || !self.needs_after[index];
        if let Some(position) = may_hold(0).then(|| self.remote_error.find(haystack)).flatten() {
            let command = position + REMOTE_ERROR.len();
            let phase = phase_after(lowered, command);
            return match response_start(text, lowered, command) {
                None => (text, phase, None),
                Some(start) => (&text[start..], phase, Some(&text[start..])),
            };
        }
        if let Some(position) = may_hold(1).then(|| self.lmtp_error.find(haystack)).flatten() {
            let command = position + LMTP_ERROR.len();
            let response = response_start(text, lowered, command).map(|start| &text[start..]);
            return (text, phase_after(lowered, command), response);
        }
        for (index, (marker, finder)) in OTHER_PHASE_MARKERS.iter().zip(&self.other).enumerate() {
            if !may_hold(2 + index) {
                continue;
            }
            if let Some(position) = finder.find(haystack) {
                return (text, phase_after(lowered, position + marker.len()), None);
            }
        }
        (text, None, Some(text))
    }
}

/// `_phase_after(lowered, start)` with `start` a byte offset in `lowered`.
fn phase_after(lowered: &str, mut start: usize) -> Option<usize> {
    for (prefix, phase) in COMMAND_PHASES {
        if lowered.get(start..).is_some_and(|rest| rest.starts_with(prefix)) {
            if phase.is_empty() {
                start += prefix.len();
                continue;
            }
            return phase_index(phase);
        }
    }
    None
}

/// `_RESPONSE_START_RE.search(text, command).end()`, where `command` is a byte offset in `lowered`
/// that Python uses as a code point index into `text`.
fn response_start(text: &str, lowered: &str, command: usize) -> Option<usize> {
    let chars_before = if lowered.is_ascii() { command } else { lowered.get(..command)?.chars().count() };
    let from = byte_offset_of_char(text, chars_before)?;
    let bytes = text.as_bytes();
    let mut search = from;
    while let Some(found) = bytes.get(search..).and_then(|rest| memchr::memchr(b':', rest)) {
        let colon = search + found;
        if bytes.get(colon + 1) == Some(&b' ') && reply_code_follows(bytes, colon + 2) {
            return Some(colon + 2);
        }
        search = colon + 1;
    }
    None
}

/// `(?=[2-5][0-9]{2}(?:[ -]|$))` at `at` (`$`: the end, or a final newline).
fn reply_code_follows(bytes: &[u8], at: usize) -> bool {
    let Some(code) = bytes.get(at..at + 3) else { return false };
    if !(b'2'..=b'5').contains(&code[0]) || !code[1].is_ascii_digit() || !code[2].is_ascii_digit() {
        return false;
    }
    match bytes.get(at + 3) {
        None | Some(b' ' | b'-') => true,
        Some(b'\n') => at + 4 == bytes.len(),
        Some(_) => false,
    }
}

/// `parse_codes`: the basic reply code and the enhanced code at the start of a response.
pub fn parse_codes(text: &str) -> (Option<i64>, Option<&str>) {
    let head = prefix_chars(text, CODES_SCAN);
    let spaces = head.chars().take_while(|&c| is_py_space(c)).take(9).count();
    if spaces > 8 {
        return (None, None);
    }
    let start: usize = head.chars().take(spaces).map(char::len_utf8).sum();
    let bytes = head.as_bytes();
    let Some(code) = bytes.get(start..start + 3) else { return (None, None) };
    if !(b'2'..=b'5').contains(&code[0]) || !code[1].is_ascii_digit() || !code[2].is_ascii_digit() {
        return (None, None);
    }
    let after_code = start + 3;
    let ends_reply = |at: usize| matches!(bytes.get(at), None | Some(b' ' | b'-' | b'\r' | b'\n' | b'\\'));
    let code_value = i64::from(code[0] - b'0') * 100 + i64::from(code[1] - b'0') * 10 + i64::from(code[2] - b'0');
    if let Some(end) = enhanced_after(bytes, after_code) {
        if ends_reply(end) {
            let enhanced = &head[after_code + 1..end];
            let consistent = enhanced.as_bytes().first() == Some(&code[0]);
            return (Some(code_value), consistent.then_some(enhanced));
        }
    }
    if ends_reply(after_code) {
        (Some(code_value), None)
    } else {
        (None, None)
    }
}

/// `[ -]([2-5]\.[0-9]{1,3}\.[0-9]{1,3})(?![0-9.])` at `at`: the end of the enhanced code.
fn enhanced_after(bytes: &[u8], at: usize) -> Option<usize> {
    if !matches!(bytes.get(at), Some(b' ' | b'-')) || !bytes.get(at + 1).is_some_and(|b| (b'2'..=b'5').contains(b)) {
        return None;
    }
    if bytes.get(at + 2) != Some(&b'.') {
        return None;
    }
    let middle_end = digits_end(bytes, at + 3)?;
    if bytes.get(middle_end) != Some(&b'.') {
        return None;
    }
    let end = digits_end(bytes, middle_end + 1)?;
    if bytes.get(end) == Some(&b'.') {
        return None;
    }
    Some(end)
}

/// The end of a run of one to three ASCII digits at `at` that is not followed by a fourth.
fn digits_end(bytes: &[u8], at: usize) -> Option<usize> {
    let count = bytes.get(at..).map_or(0, |rest| rest.iter().take(4).take_while(|b| b.is_ascii_digit()).count());
    (1..=3).contains(&count).then_some(at + count)
}

/// `_enhanced_tuple`: "5.1.1" → [5, 1, 1]; anything else → None.
fn enhanced_tuple(enhanced: &str) -> Option<[i64; 3]> {
    if enhanced.chars().count() > 11 {
        return None;
    }
    let bytes = enhanced.trim_matches(is_py_space).as_bytes();
    let class = *bytes.first()?;
    if !matches!(class, b'2' | b'4' | b'5') || bytes.get(1) != Some(&b'.') {
        return None;
    }
    let middle_end = digits_end(bytes, 2)?;
    if bytes.get(middle_end) != Some(&b'.') {
        return None;
    }
    let end = digits_end(bytes, middle_end + 1)?;
    if end != bytes.len() {
        return None;
    }
    let number = |digits: &[u8]| digits.iter().fold(0i64, |value, digit| value * 10 + i64::from(digit - b'0'));
    Some([i64::from(class - b'0'), number(&bytes[2..middle_end]), number(&bytes[middle_end + 1..end])])
}

/// `_without_addresses`: words holding an '@' are dropped (and white space normalised) when there is one.
fn without_addresses(text: &str) -> Cow<'_, str> {
    if !text.contains('@') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    for word in text.split(is_py_space).filter(|word| !word.is_empty() && !word.contains('@')) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    Cow::Owned(out)
}

/// `_joined`: every match of `_CONTINUATION_RE` (`(?:\\n|\n)[2-5][0-9]{2}[ -]` then, when it follows,
/// `[2-5]\.[0-9]{1,3}\.[0-9]{1,3}\s?` with Unicode `\s`), left to right, becomes one space.
fn joined_lines(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut at = 0;
    while let Some(found) = bytes.get(at..).and_then(|rest| memchr::memchr2(b'\n', b'\\', rest)) {
        let marker = at + found;
        let code_start = if bytes[marker] == b'\n' {
            Some(marker + 1)
        } else if bytes.get(marker + 1) == Some(&b'n') {
            Some(marker + 2)
        } else {
            None
        };
        match code_start.and_then(|start| continuation_end(text, start)) {
            Some(end) => {
                let out = out.get_or_insert_with(|| String::with_capacity(text.len()));
                out.push_str(&text[copied..marker]);
                out.push(' ');
                copied = end;
                at = end;
            }
            None => at = marker + 1,
        }
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut out) => {
            out.push_str(&text[copied..]);
            Cow::Owned(out)
        }
    }
}

/// The end of `[2-5][0-9]{2}[ -](?:[2-5]\.[0-9]{1,3}\.[0-9]{1,3}\s?)?` at `at` (greedy, as `re` takes it).
fn continuation_end(text: &str, at: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let code = bytes.get(at..at + 4)?;
    if !(b'2'..=b'5').contains(&code[0])
        || !code[1].is_ascii_digit()
        || !code[2].is_ascii_digit()
        || !matches!(code[3], b' ' | b'-')
    {
        return None;
    }
    let end = at + 4;
    Some(enhanced_continuation_end(text, end).unwrap_or(end))
}

/// `[2-5]\.[0-9]{1,3}\.[0-9]{1,3}\s?` at `at`: its end, or None when it does not match there.
fn enhanced_continuation_end(text: &str, at: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    if !bytes.get(at).is_some_and(|b| (b'2'..=b'5').contains(b)) || bytes.get(at + 1) != Some(&b'.') {
        return None;
    }
    // a fourth digit can be followed by no `.`, whatever number of digits the repeat gives back
    let middle_end = digits_end(bytes, at + 2)?;
    if bytes.get(middle_end) != Some(&b'.') {
        return None;
    }
    let last =
        bytes.get(middle_end + 1..).map_or(0, |rest| rest.iter().take(3).take_while(|b| b.is_ascii_digit()).count());
    if last == 0 {
        return None;
    }
    let end = middle_end + 1 + last;
    match text.get(end..).and_then(|rest| rest.chars().next()) {
        Some(c) if is_py_space(c) => Some(end + c.len_utf8()),
        _ => Some(end),
    }
}

impl Classify for Classifier {
    fn classify(
        &mut self,
        text: &str,
        smtp_code: Option<i64>,
        enhanced_code: Option<&str>,
        errno: Option<i64>,
        phase: Option<&str>,
        kind: &str,
    ) -> Reason {
        self.classify_rule(text, smtp_code, enhanced_code, errno, phase, kind).0
    }

    fn hint(&self, reason: Reason) -> Text {
        self.hints[reason.index()].clone()
    }
}

/// Test hook: the native classifier with Python's `classify` signature, answering
/// `(result.reason.value, result.rule)`.
#[pyclass(unsendable, module = "trackdelivery_native")]
pub struct NativeClassifier {
    inner: Box<Classifier>,
}

/// A Python str as Rust text; a lone surrogate (not UTF-8) becomes U+FFFD, which the classifier treats the
/// same way (one code point, not a letter, digit or space).
fn python_text(value: &Bound<'_, PyString>) -> PyResult<String> {
    if let Ok(text) = value.to_str() {
        return Ok(text.to_string());
    }
    let encoded = value.call_method1("encode", ("utf-32-le", "surrogatepass"))?;
    let bytes: Vec<u8> = encoded.extract()?;
    Ok(bytes
        .chunks_exact(4)
        .map(|unit| char::from_u32(u32::from_le_bytes([unit[0], unit[1], unit[2], unit[3]])).unwrap_or('\u{fffd}'))
        .collect())
}

/// An int argument: None stays None; an int outside i64, a bool or another type is "given but invalid".
fn python_int(value: Option<&Bound<'_, PyAny>>) -> Option<i64> {
    let value = value?;
    if value.is_none() {
        return None;
    }
    let is_int = value.get_type().is(&value.py().get_type::<pyo3::types::PyInt>());
    Some(if is_int { value.extract().unwrap_or(i64::MIN) } else { i64::MIN })
}

fn python_str(value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<String>> {
    match value {
        Some(value) => match value.downcast::<PyString>() {
            Ok(text) => python_text(text).map(Some),
            Err(_) => Ok(None),
        },
        None => Ok(None),
    }
}

/// `(text, smtp_code, enhanced_code, errno, phase, kind)` for `NativeClassifier.bench`.
type BenchCall = (String, Option<i64>, Option<String>, Option<i64>, Option<String>, String);

#[pymethods]
impl NativeClassifier {
    /// `HINTS[Reason(reason)]`.
    fn hint(&self, reason: &str) -> PyResult<String> {
        let reason = Reason::from_name(reason).ok_or_else(|| PyValueError::new_err(format!("no reason {reason:?}")))?;
        Ok(self.inner.hint(reason).to_string())
    }

    /// The classifier of `trackdelivery parse`, with every rule's pattern compiled up front (the
    /// engine compiles them on first use): a pattern that does not compile fails here.
    #[new]
    fn new(py: Python<'_>) -> PyResult<NativeClassifier> {
        let classifier = Classifier::from_python(py)?;
        for rule in &classifier.rules {
            if let Some(source) = &rule.source {
                let compiled = RuleRow::compile(&rule.name, source).map_err(config_error)?;
                let _ = rule.pattern.set(compiled);
            }
        }
        Ok(NativeClassifier { inner: Box::new(classifier) })
    }

    #[pyo3(signature = (text, smtp_code=None, enhanced_code=None, errno=None, phase=None, kind=None))]
    fn classify(
        &self,
        text: Option<&Bound<'_, PyAny>>,
        smtp_code: Option<&Bound<'_, PyAny>>,
        enhanced_code: Option<&Bound<'_, PyAny>>,
        errno: Option<&Bound<'_, PyAny>>,
        phase: Option<&Bound<'_, PyAny>>,
        kind: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(&'static str, String)> {
        let text = python_str(text)?.unwrap_or_default();
        // a non-str enhanced code is "given" (codes are then not read from the text) but never valid
        let enhanced = match enhanced_code {
            Some(value) if !value.is_none() => Some(python_str(Some(value))?.unwrap_or_else(|| "x".repeat(12))),
            _ => None,
        };
        let phase = python_str(phase)?;
        let kind = match kind {
            None => "fail".to_string(),
            Some(value) => python_str(Some(value))?.unwrap_or_default(),
        };
        let (reason, rule) = self.inner.classify_rule(
            &text,
            python_int(smtp_code),
            enhanced.as_deref(),
            python_int(errno),
            phase.as_deref(),
            &kind,
        );
        Ok((reason.as_str(), rule.to_string()))
    }

    /// Test hook: `parse_codes(text)`.
    #[staticmethod]
    fn parse_codes(text: &Bound<'_, PyString>) -> PyResult<(Option<i64>, Option<String>)> {
        let text = python_text(text)?;
        let (code, enhanced) = parse_codes(&text);
        Ok((code, enhanced.map(str::to_string)))
    }

    /// Test hook: nanoseconds per `classify_rule` over `calls` (argument tuples of ints and strs), `rounds` times.
    fn bench(&self, calls: Vec<BenchCall>, rounds: usize) -> f64 {
        let started = std::time::Instant::now();
        let mut sink = 0usize;
        for _ in 0..rounds {
            for (text, code, enhanced, errno, phase, kind) in &calls {
                let (reason, _) =
                    self.inner.classify_rule(text, *code, enhanced.as_deref(), *errno, phase.as_deref(), kind);
                sink = sink.wrapping_add(reason.index());
            }
        }
        std::hint::black_box(sink);
        started.elapsed().as_nanos() as f64 / (rounds * calls.len()).max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scan by definition: at every word boundary (and word end when some literal starts with a
    /// non-word byte), every alternative whose literal start is there.
    fn scan_by_definition(filter: &TextFilter, lowered: &str, rules: RuleSet) -> (RuleSet, RuleSet, usize) {
        let bytes = lowered.as_bytes();
        let (mut matched, mut undecided) = (0, filter.unfiltered & rules);
        let mut from = if undecided != 0 { 0 } else { usize::MAX };
        for start in 0..bytes.len() {
            let is_word = is_word_byte(bytes[start]);
            let previous_is_word = start > 0 && is_word_byte(bytes[start - 1]);
            if is_word == previous_is_word || !(is_word || filter.from_word_ends) {
                continue;
            }
            for hit in filter.hits.iter().flatten() {
                let bit: RuleSet = 1 << hit.rule;
                if rules & bit == 0 || !bytes[start..].starts_with(&hit.literal_start) {
                    continue;
                }
                match hit.literal {
                    None => {
                        undecided |= bit;
                        from = from.min(start);
                    }
                    Some(end_boundary) if !end_boundary || is_boundary(bytes, start + hit.literal_start.len()) => {
                        matched |= bit
                    }
                    Some(_) => {}
                }
            }
        }
        (matched, undecided & !matched, from.min(bytes.len()))
    }

    #[test]
    fn the_boundary_lookup_finds_what_a_scan_of_every_position_finds() {
        let sources: Vec<Option<String>> = [
            Some(r"\b(?:mailbox (?:is )?full|over ?quota|quota exceeded\b|user unknown)"),
            Some(r"\b(?:5\.7\.26|5\.7\.1\b|spamhaus|spam)"),
            Some(r"\b(?:\.spam\b|-block|x|blocked using [a-z.]+)"),
            None,
            Some(r"(?:not a rule of the usual shape)"),
            Some(r"\b(?:greylist(?:ed|ing)|try again later|mailbo\w+)"),
            Some(r"\b(?:é\b|ü[a-z]+)"),
        ]
        .iter()
        .map(|source| source.map(str::to_string))
        .collect();
        let filter = TextFilter::new(&sources).expect("the filter builds");
        assert!(filter.from_word_ends);
        let pieces = [
            "mailbox full",
            "mailbox is full",
            "overquota",
            "quota exceeded",
            "quota exceededx",
            "user unknown",
            "5.7.26",
            "5.7.1",
            "5.7.10",
            "spamhaus",
            "spam",
            ".spam",
            "a.spam",
            "-block",
            "x",
            "xx",
            "blocked using",
            "greylisted",
            "try again later",
            "mailboxes",
            "é",
            "éa",
            "über",
            " ",
            " ",
            "  ",
            "-",
            ".",
            ":",
            "<a@b>",
            "\u{a0}",
            "\n",
            "_",
            "9",
            "full",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..next() % 40 {
                text.push_str(pieces[(next() % pieces.len() as u64) as usize]);
            }
            let rules = if next() % 4 == 0 { next() as RuleSet } else { RuleSet::MAX };
            assert_eq!(filter.scan(&text, rules), scan_by_definition(&filter, &text, rules), "{text:?}");
        }
        // texts longer than one 64-byte block, with a boundary on each side of a block's edge
        for pad in 60..70 {
            let text = format!("{}spamhaus {} user unknown .spam", "a".repeat(pad), "b ".repeat(pad));
            assert_eq!(filter.scan(&text, RuleSet::MAX), scan_by_definition(&filter, &text, RuleSet::MAX));
        }
    }
}
