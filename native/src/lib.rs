//! The query service's hot path: the event records a search walk returns, turned into the API's JSON
//! rows without building a Python object per event.
//!
//! A row is exactly `orjson.dumps(codec.decode_event(record, arrival).to_dict())`: the stored records are
//! orjson output, so every stored value's JSON token is copied as it is, and only the values the store
//! leaves out (derived domains, the event id, the retry state, the type name) are computed here. A record
//! this module is not sure about (a derived domain that is not ASCII, JSON it cannot read) comes back as
//! `None` and the caller decodes it in Python.

use std::collections::HashMap;

use blake2::digest::{Update, VariableOutput};
use blake2::Blake2bVar;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyFloat, PyString, PyTuple};

mod exim;

/// Rust's allocations in this extension (the parse engine makes many small ones) go to mimalloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A record key packed into an integer (stored keys are one to three ASCII letters); a longer key packs
/// to `LONG_KEY`, which no key the decoder reads has.
const LONG_KEY: u32 = u32::MAX;

const fn pack_key(key: &[u8]) -> u32 {
    if key.is_empty() || key.len() > 3 {
        return LONG_KEY;
    }
    let mut packed = key.len() as u32;
    let mut index = 0;
    while index < key.len() {
        packed = (packed << 8) | key[index] as u32;
        index += 1;
    }
    packed
}

const K_SERVER: u32 = pack_key(b"h");
const K_MSGID: u32 = pack_key(b"m");
const K_TYPE: u32 = pack_key(b"y");
const K_RETRY: u32 = pack_key(b"rt");
const K_EVENT_ID: u32 = pack_key(b"id");
const K_TIME: u32 = pack_key(b"t");
const K_RECIPIENT: u32 = pack_key(b"r");
const K_RECIPIENT_DOMAIN: u32 = pack_key(b"rd");
const K_SENDER_DOMAIN: u32 = pack_key(b"sd");
const K_SENDER: u32 = pack_key(b"s");

/// A stored record's members as (packed key, raw JSON value), in stored order (records are flat orjson
/// objects of a few dozen short keys: a linear search of integers beats hashing them). The record's text
/// is valid UTF-8 (checked once by `parse`), so every value slice is too.
struct Record<'a> {
    members: Vec<(u32, &'a [u8])>,
}

impl<'a> Record<'a> {
    fn get(&self, key: u32) -> Option<&'a [u8]> {
        self.members.iter().find(|(name, _)| *name == key).map(|(_, value)| *value)
    }

    fn contains_key(&self, key: u32) -> bool {
        self.get(key).is_some()
    }

    /// Splits `{"k":v,...}` into its members without decoding the values; Err for anything else
    /// (an escaped key, a nested object), which the caller leaves to Python.
    fn parse(text: &'a [u8]) -> Result<Self, ()> {
        std::str::from_utf8(text).map_err(|_| ())?;
        let mut members = Vec::with_capacity(32);
        let mut at = skip_space(text, 0);
        if text.get(at) != Some(&b'{') {
            return Err(());
        }
        at = skip_space(text, at + 1);
        if text.get(at) == Some(&b'}') {
            return Ok(Record { members });
        }
        loop {
            if text.get(at) != Some(&b'"') {
                return Err(());
            }
            let key_end = at + 1 + memchr::memchr(b'"', &text[at + 1..]).ok_or(())?;
            let key = &text[at + 1..key_end];
            if key.contains(&b'\\') {
                return Err(());
            }
            at = skip_space(text, key_end + 1);
            if text.get(at) != Some(&b':') {
                return Err(());
            }
            at = skip_space(text, at + 1);
            let end = value_end(text, at)?;
            members.push((pack_key(key), &text[at..end]));
            at = skip_space(text, end);
            match text.get(at) {
                Some(b',') => at = skip_space(text, at + 1),
                Some(b'}') => return Ok(Record { members }),
                _ => return Err(()),
            }
        }
    }
}

fn skip_space(text: &[u8], mut at: usize) -> usize {
    while matches!(text.get(at), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        at += 1;
    }
    at
}

/// End (exclusive) of the JSON value starting at `at`: a string, a flat array, or a scalar.
fn value_end(text: &[u8], at: usize) -> Result<usize, ()> {
    match text.get(at) {
        Some(b'"') => string_end(text, at),
        Some(b'[') => {
            let mut position = at + 1;
            loop {
                match text.get(position) {
                    Some(b']') => return Ok(position + 1),
                    Some(b'"') => position = string_end(text, position)?,
                    Some(b'[' | b'{') | None => return Err(()),
                    Some(_) => position += 1,
                }
            }
        }
        Some(b'{') | None => Err(()),
        Some(_) => {
            let mut position = at;
            while let Some(&byte) = text.get(position) {
                if matches!(byte, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                    break;
                }
                position += 1;
            }
            Ok(position)
        }
    }
}

/// End (exclusive) of the JSON string starting at `at` (a vectorised search for its quote or a backslash:
/// responses and subjects are the long values of a record).
fn string_end(text: &[u8], at: usize) -> Result<usize, ()> {
    let mut position = at + 1;
    loop {
        position += memchr::memchr2(b'"', b'\\', text.get(position..).ok_or(())?).ok_or(())?;
        if text[position] == b'"' {
            return Ok(position + 1);
        }
        position += 2; // an escape: the byte after the backslash is not the end
    }
}

/// A value of a `Record` as text. Values are cut at ASCII delimiters out of text `Record::parse` found to
/// be UTF-8, so they are too; checking each again cost more than the rest of a row.
fn utf8(raw: &[u8]) -> Result<&str, ()> {
    debug_assert!(std::str::from_utf8(raw).is_ok());
    // SAFETY: see above; every caller passes a slice of a parsed record's text
    Ok(unsafe { std::str::from_utf8_unchecked(raw) })
}

const MARKER: u8 = 1;
const MSGREF_BYTES: usize = 8;
const HEADER: usize = 3;
const MAX_OUTPUT: usize = 1 << 22;
const RETRY_NAMES: [&str; 5] = ["attempt", "first_attempt", "last_attempt", "next_retry", "give_up"];

/// Where one field of a row comes from.
#[derive(Clone)]
enum Source {
    Type,
    Retry,
    EventId,
    RecipientDomain,
    SenderDomain,
    Server,
    Event(u32),
    Arrival(u32),
    Null,
}

/// A zstd decompression context. It holds raw pointers, so Rust does not move it between threads on its
/// own; it is safe to: a context is used by one call at a time (PyO3 hands out `&mut RowDecoder` only
/// under its borrow flag), and the service's server threads take turns under the GIL.
struct Context(zstd::bulk::Decompressor<'static>);

unsafe impl Send for Context {}
unsafe impl Sync for Context {}

#[pyclass]
struct RowDecoder {
    /// (field name, its `"name":` in a row, where its value comes from)
    fields: Vec<(String, String, Source)>,
    schema_version: i64,
    type_names: HashMap<i64, (String, PyObject)>,
    decompressors: HashMap<[u8; 2], Context>,
}

fn escape_ascii(value: &str, out: &mut String) {
    out.push('"');
    for byte in value.bytes() {
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0..=0x1f => out.push_str(&format!("\\u{:04x}", byte)),
            _ => out.push(byte as char),
        }
    }
    out.push('"');
}

/// `codec.domain_of` as a JSON token: None when the address has no domain; Err when it is not ASCII
/// (Python's `str.lower` decides those).
/// `codec.domain_of` of a stored address, as a JSON token: null when it has no domain; Err when it is not
/// ASCII (Python's `str.lower` decides those).
fn push_domain(address: Option<&[u8]>, out: &mut String) -> Result<(), ()> {
    let Some(raw) = address else {
        out.push_str("null");
        return Ok(());
    };
    if raw.len() >= 2 && raw[0] == b'"' && !raw.contains(&b'\\') {
        // no escape: no quote, backslash or control character either, so nothing to escape once lowered
        let text = &raw[1..raw.len() - 1];
        if !text.is_ascii() {
            return Err(());
        }
        match text.iter().rposition(|&byte| byte == b'@') {
            Some(at) if at + 1 < text.len() => {
                out.push('"');
                out.extend(text[at + 1..].iter().map(|&byte| byte.to_ascii_lowercase() as char));
                out.push('"');
            }
            _ => out.push_str("null"),
        }
        return Ok(());
    }
    let text: Option<String> = serde_json::from_slice(raw).map_err(|_| ())?;
    let Some(text) = text else {
        out.push_str("null");
        return Ok(());
    };
    if !text.is_ascii() {
        return Err(());
    }
    match text.rfind('@') {
        Some(at) if at + 1 < text.len() => escape_ascii(&text[at + 1..].to_ascii_lowercase(), out),
        _ => out.push_str("null"),
    }
    Ok(())
}

/// A stored string (absent or null: empty).
fn string_of(raw: Option<&[u8]>) -> Result<std::borrow::Cow<'_, str>, ()> {
    use std::borrow::Cow;
    match raw {
        None => Ok(Cow::Borrowed("")),
        Some(raw) if !raw.contains(&b'\\') && raw.len() >= 2 && raw[0] == b'"' => {
            Ok(Cow::Borrowed(utf8(&raw[1..raw.len() - 1])?))
        }
        Some(raw) => {
            let value: Option<String> = serde_json::from_slice(raw).map_err(|_| ())?;
            Ok(Cow::Owned(value.unwrap_or_default()))
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `events.make_event_id`: blake2b-96 of the identifying fields, hex, as a JSON token.
fn push_event_id(server: &str, msgid: &str, recipient: &str, kind: &str, time: f64, attempt: i64, out: &mut String) {
    use std::fmt::Write;
    let mut raw = String::with_capacity(128);
    let _ = write!(raw, "{server}\x1f{msgid}\x1f{recipient}\x1f{kind}\x1f{time:.6}\x1f{attempt}");
    let mut hasher = Blake2bVar::new(12).expect("12 is a valid blake2b size");
    hasher.update(raw.as_bytes());
    let mut digest = [0u8; 12];
    hasher.finalize_variable(&mut digest).expect("the buffer has the digest's size");
    out.push('"');
    for byte in digest {
        out.push(HEX[(byte >> 4) as usize] as char);
        out.push(HEX[(byte & 15) as usize] as char);
    }
    out.push('"');
}

/// The values of a flat JSON array (the retry state).
fn array_items(raw: &[u8]) -> Result<Vec<&[u8]>, ()> {
    if raw.first() != Some(&b'[') || raw.last() != Some(&b']') {
        return Err(());
    }
    let mut items = Vec::with_capacity(5);
    let mut at = skip_space(raw, 1);
    if raw.get(at) == Some(&b']') {
        return Ok(items);
    }
    loop {
        let end = value_end(raw, at)?;
        items.push(&raw[at..end]);
        at = skip_space(raw, end);
        match raw.get(at) {
            Some(b',') => at = skip_space(raw, at + 1),
            Some(b']') => return Ok(items),
            _ => return Err(()),
        }
    }
}

impl RowDecoder {
    /// `blob` decompressed into `buffer` (or `blob` itself when it is stored raw).
    fn unpack<'b>(&mut self, blob: &'b [u8], buffer: &'b mut Vec<u8>) -> Result<&'b [u8], ()> {
        if blob.first() != Some(&MARKER) {
            return Ok(blob);
        }
        if blob.len() < HEADER {
            return Err(());
        }
        let id = [blob[1], blob[2]];
        let decompressor = self.decompressors.get_mut(&id).ok_or(())?;
        let frame = &blob[HEADER..];
        // the writer records the content size in every frame: reserve that, not the 4 MB bound
        let size = match zstd::zstd_safe::get_frame_content_size(frame) {
            Ok(Some(size)) if (size as usize) <= MAX_OUTPUT => size as usize,
            _ => MAX_OUTPUT,
        };
        buffer.clear();
        buffer.reserve(size);
        decompressor.0.decompress_to_buffer(frame, buffer).map_err(|_| ())?;
        Ok(buffer.as_slice())
    }

    /// One row's JSON into `out`, and the (start, end) in `out` of each field's token; returns the event's
    /// type code. Err leaves the record to the Python decoder.
    fn row(
        &self,
        event: &Record,
        arrival: Option<&Record>,
        out: &mut String,
        spans: &mut Vec<(usize, usize)>,
    ) -> Result<i64, ()> {
        let inline = arrival.is_none() || event.contains_key(K_SERVER);
        let source: &Record = if inline { event } else { arrival.ok_or(())? };
        let code: i64 = utf8(event.get(K_TYPE).ok_or(())?)?.parse().map_err(|_| ())?;
        let type_name = &self.type_names.get(&code).ok_or(())?.0;
        let retry = match event.get(K_RETRY) {
            Some(raw) => {
                let items = array_items(raw)?;
                if items.len() != RETRY_NAMES.len() {
                    return Err(());
                }
                Some(items)
            }
            None => None,
        };
        out.clear();
        spans.clear();
        out.push('{');
        for (_, key, from) in &self.fields {
            out.push_str(key);
            let start = out.len();
            match from {
                Source::Type => escape_ascii(type_name, out),
                Source::Retry => {
                    out.push('{');
                    for (index, name) in RETRY_NAMES.iter().enumerate() {
                        if index > 0 {
                            out.push(',');
                        }
                        out.push('"');
                        out.push_str(name);
                        out.push_str("\":");
                        match &retry {
                            Some(items) => out.push_str(utf8(items[index])?),
                            None => out.push_str(if index == 0 { "0" } else { "null" }),
                        }
                    }
                    out.push('}');
                }
                Source::EventId => match event.get(K_EVENT_ID) {
                    Some(raw) => out.push_str(utf8(raw)?),
                    None => {
                        let attempt: i64 = match &retry {
                            Some(items) => utf8(items[0])?.parse().map_err(|_| ())?,
                            None => 0,
                        };
                        let time: f64 = utf8(event.get(K_TIME).ok_or(())?)?.parse().map_err(|_| ())?;
                        push_event_id(
                            &string_of(source.get(K_SERVER))?,
                            &string_of(source.get(K_MSGID))?,
                            &string_of(event.get(K_RECIPIENT))?,
                            type_name,
                            time,
                            attempt,
                            out,
                        );
                    }
                },
                Source::RecipientDomain => match event.get(K_RECIPIENT_DOMAIN) {
                    Some(raw) => out.push_str(utf8(raw)?),
                    None => push_domain(event.get(K_RECIPIENT), out)?,
                },
                Source::SenderDomain => match source.get(K_SENDER_DOMAIN) {
                    Some(raw) => out.push_str(utf8(raw)?),
                    None => push_domain(source.get(K_SENDER), out)?,
                },
                Source::Server => out.push_str(match source.get(K_SERVER) {
                    Some(raw) => utf8(raw)?,
                    None => "\"\"",
                }),
                Source::Event(key) => out.push_str(match event.get(*key) {
                    Some(raw) => utf8(raw)?,
                    None => "null",
                }),
                Source::Arrival(key) => out.push_str(match source.get(*key) {
                    Some(raw) => utf8(raw)?,
                    None => "null",
                }),
                Source::Null => out.push_str("null"),
            }
            spans.push((start, out.len()));
            out.push(',');
        }
        out.push_str("\"v\":");
        out.push_str(&self.schema_version.to_string());
        out.push('}');
        Ok(code)
    }
}

/// What a search checks on a row in its simplest form: the row's time (ms, truncated as Python's `int`)
/// within `lo..=hi`, and each filter's stored value exactly its normalised value on one of its fields.
struct ExactCheck {
    /// the time field's index in `wanted`, and the bounds
    time: (usize, i64, i64),
    /// per filter: indexes in `wanted` of the fields that may hold it, and its JSON token
    filters: Vec<(Vec<usize>, Vec<u8>)>,
}

impl ExactCheck {
    fn holds(&self, row: &str, spans: &[(usize, usize)], positions: &[usize]) -> bool {
        let token =
            |index: usize| positions.get(index).and_then(|&at| spans.get(at)).map(|&(start, end)| &row[start..end]);
        let (time_at, lo, hi) = self.time;
        let Some(time) = token(time_at).and_then(|text| text.parse::<f64>().ok()) else { return false };
        let ms = (time * 1000.0) as i64;
        if ms < lo || ms > hi {
            return false;
        }
        self.filters.iter().all(|(fields, wanted)| {
            fields.iter().any(|&index| token(index).map(str::as_bytes) == Some(wanted.as_slice()))
        })
    }
}

/// `ExactCheck` as Python passes it: ((time index, lo ms, hi ms), [(field indexes, JSON token)]).
type ExactArgument = ((usize, i64, i64), Vec<(Vec<usize>, Vec<u8>)>);

/// A walk candidate: (time ms, event ref, arrival record or None, event record).
type Candidate<'py> = (Bound<'py, PyAny>, Bound<'py, PyBytes>, Option<Bound<'py, PyBytes>>, Bound<'py, PyBytes>);

/// The message part of an event ref.
fn msgref(reference: &[u8]) -> &[u8] {
    &reference[..reference.len().min(MSGREF_BYTES)]
}

fn to_python(py: Python<'_>, token: &str) -> PyResult<PyObject> {
    let invalid = || PyValueError::new_err(format!("not a scalar JSON value: {token:.40}"));
    Ok(match token.as_bytes().first() {
        None => return Err(invalid()),
        Some(b'n') if token == "null" => py.None(),
        Some(b't') if token == "true" => true.into_pyobject(py)?.to_owned().into_any().unbind(),
        Some(b'f') if token == "false" => false.into_pyobject(py)?.to_owned().into_any().unbind(),
        Some(b'"') if !token.contains('\\') => PyString::new(py, &token[1..token.len() - 1]).into_any().unbind(),
        Some(b'"') => {
            let text: String = serde_json::from_str(token).map_err(|_| invalid())?;
            PyString::new(py, &text).into_any().unbind()
        }
        // numbers by the standard library's correctly rounded parser (serde_json's default one is not)
        Some(_) if token.contains(['.', 'e', 'E']) => {
            PyFloat::new(py, token.parse::<f64>().map_err(|_| invalid())?).into_any().unbind()
        }
        Some(_) => match token.parse::<i64>() {
            Ok(integer) => integer.into_pyobject(py)?.into_any().unbind(),
            Err(_) => PyFloat::new(py, token.parse::<f64>().map_err(|_| invalid())?).into_any().unbind(),
        },
    })
}

#[pymethods]
impl RowDecoder {
    /// `fields`: the row's field names in order (`DeliveryEvent`'s); `event_keys`/`arrival_keys`: field
    /// name -> stored key (codec.EVENT_FIELDS, codec.ARRIVAL_FIELDS + IDENTITY_FIELDS); `type_names`: type
    /// code -> type name.
    #[new]
    fn new(
        fields: Vec<String>,
        event_keys: HashMap<String, String>,
        arrival_keys: HashMap<String, String>,
        types: Vec<(i64, String, PyObject)>,
        schema_version: i64,
    ) -> PyResult<Self> {
        if let Some(key) =
            event_keys.values().chain(arrival_keys.values()).find(|key| pack_key(key.as_bytes()) == LONG_KEY)
        {
            return Err(PyValueError::new_err(format!("stored key {key:?} is longer than 3 bytes")));
        }
        let sources = fields
            .into_iter()
            .map(|name| {
                let source = match name.as_str() {
                    "type" => Source::Type,
                    "retry" => Source::Retry,
                    "event_id" => Source::EventId,
                    "recipient_domain" => Source::RecipientDomain,
                    "sender_domain" => Source::SenderDomain,
                    "server" => Source::Server,
                    other => match (event_keys.get(other), arrival_keys.get(other)) {
                        (Some(key), _) => Source::Event(pack_key(key.as_bytes())),
                        (None, Some(key)) => Source::Arrival(pack_key(key.as_bytes())),
                        (None, None) => Source::Null,
                    },
                };
                let key = format!("\"{name}\":");
                (name, key, source)
            })
            .collect();
        let type_names = types.into_iter().map(|(code, name, object)| (code, (name, object))).collect();
        Ok(RowDecoder { fields: sources, schema_version, type_names, decompressors: HashMap::new() })
    }

    /// Installs the zstd dictionary stored under the 2-byte `dictionary_id`.
    fn add_dictionary(&mut self, dictionary_id: &[u8], data: &[u8]) -> PyResult<()> {
        let id: [u8; 2] = dictionary_id.try_into().map_err(|_| PyValueError::new_err("a dictionary id has 2 bytes"))?;
        // a prepared dictionary: loading the raw one would digest its 32 KB again for every frame. It is
        // leaked on purpose: a store has a handful of dictionaries and a decoder lives as long as the service
        let prepared: &'static zstd::dict::DecoderDictionary<'static> =
            Box::leak(Box::new(zstd::dict::DecoderDictionary::copy(data)));
        let decompressor = zstd::bulk::Decompressor::with_prepared_dictionary(prepared)
            .map_err(|error| PyValueError::new_err(error.to_string()))?;
        self.decompressors.insert(id, Context(decompressor));
        Ok(())
    }

    /// For each walk candidate (time ms, event ref, arrival record or None, event record): None (decode it
    /// in Python) or (event type, row JSON, tuple of the `wanted` fields' values). A candidate without an
    /// arrival record takes its message's from an earlier candidate, if one has it.
    ///
    /// With `exact` ((index in `wanted` of the time field, lo ms, hi ms), [(indexes in `wanted` of a
    /// filter's fields, the filter's JSON token)]), a row that passes that check comes with None for its
    /// values: the caller needs to look at the values of the others only.
    #[pyo3(signature = (candidates, wanted, exact=None))]
    fn decode<'py>(
        &mut self,
        py: Python<'py>,
        candidates: Vec<Candidate<'py>>,
        wanted: Vec<String>,
        exact: Option<ExactArgument>,
    ) -> PyResult<Vec<PyObject>> {
        let exact = exact.map(|(time, filters)| ExactCheck { time, filters });
        let positions: Vec<usize> = wanted
            .iter()
            .map(|name| self.fields.iter().position(|(field, _, _)| field == name))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| PyValueError::new_err("asked for a field rows do not have"))?;
        // arrival records decompressed once per message
        let mut arrival_text: Vec<Option<Vec<u8>>> = Vec::new();
        let mut arrival_at: HashMap<&[u8], usize> = HashMap::new();
        for (_, reference, arrival, _) in &candidates {
            if let Some(blob) = arrival {
                let key = msgref(reference.as_bytes());
                if !arrival_at.contains_key(key) {
                    let mut buffer = Vec::new();
                    let text = self.unpack(blob.as_bytes(), &mut buffer).ok().map(|slice| slice.to_vec());
                    arrival_at.insert(key, arrival_text.len());
                    arrival_text.push(text);
                }
            }
        }
        let arrivals: Vec<Option<Record>> =
            arrival_text.iter().map(|text| text.as_deref().and_then(|bytes| Record::parse(bytes).ok())).collect();
        let mut out = Vec::with_capacity(candidates.len());
        let mut buffer = Vec::with_capacity(4096);
        let mut row = String::with_capacity(2048);
        let mut spans = Vec::with_capacity(self.fields.len());
        for (_, reference, arrival, blob) in &candidates {
            // without an arrival record: its message's from an earlier candidate (the walk sends each
            // message's once), else none (a record with its arrival data inline)
            let arrival_record = match (arrival, arrival_at.get(msgref(reference.as_bytes()))) {
                (None, None) => Ok(None),
                (_, Some(&index)) => arrivals[index].as_ref().map(Some).ok_or(()),
                (Some(_), None) => Err(()),
            };
            let mut event_buffer = std::mem::take(&mut buffer);
            let decoded = match self.unpack(blob.as_bytes(), &mut event_buffer) {
                Ok(text) => arrival_record.and_then(|arrival_record| {
                    let event = Record::parse(text)?;
                    let code = self.row(&event, arrival_record, &mut row, &mut spans)?;
                    Ok(code)
                }),
                Err(()) => Err(()),
            };
            buffer = event_buffer;
            match decoded {
                Ok(code) => {
                    let values = if exact.as_ref().is_some_and(|check| check.holds(&row, &spans, &positions)) {
                        py.None()
                    } else {
                        let values = positions
                            .iter()
                            .map(|&index| to_python(py, &row[spans[index].0..spans[index].1]))
                            .collect::<PyResult<Vec<_>>>()?;
                        PyTuple::new(py, values)?.into_any().unbind()
                    };
                    let event_type = self.type_names[&code].1.clone_ref(py);
                    let item =
                        PyTuple::new(py, [event_type, PyBytes::new(py, row.as_bytes()).into_any().unbind(), values])?;
                    out.push(item.into_any().unbind());
                }
                Err(()) => out.push(py.None()),
            }
        }
        Ok(out)
    }
}

/// How the extension was built (`native/build.sh`): "pgo", "release", or "instrumented" (its training run).
const BUILD: &str = match option_env!("TRACKDELIVERY_NATIVE_BUILD") {
    Some(build) => build,
    None => "release",
};

#[pymodule]
fn trackdelivery_native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add("BUILD", BUILD)?;
    module.add_class::<RowDecoder>()?;
    module.add_function(wrap_pyfunction!(exim::python::exim_parse_files, module)?)?;
    module.add("StaleEngineTable", module.py().get_type::<exim::table::StaleEngineTable>())?;
    module.add_function(wrap_pyfunction!(exim::python::exim_event_id, module)?)?;
    module.add_class::<exim::reasons::NativeClassifier>()?;
    module.add_class::<exim::correlator::probe::NativeCorrelatorProbe>()?;
    module.add_function(wrap_pyfunction!(exim::parser_hook::exim_parse_line_fields, module)?)?;
    module.add_function(wrap_pyfunction!(exim::parser_hook::exim_parse_file_count, module)?)?;
    Ok(())
}
