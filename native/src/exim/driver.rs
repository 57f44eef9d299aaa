//! The loop of `trackdelivery parse` in native code: read plain or gzip logs (or stdin), split lines,
//! parse, correlate, and write JSON lines to stdout in big chunks. It mirrors `processors/exim/cli.py`
//! step for step: the same release cadence, the same event window, the same counts for the summary.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, BufReader, Read};

use flate2::read::MultiGzDecoder;

use super::correlator::{settle_event_ids, Correlator};
use super::encode::{event_bound, push_event, push_line};
use super::parser::{parse_line_with, Detail};
use super::types::{Classify, DeliveryEvent, EventType, LineKind, LocalClock, ParsedLine, Text};

/// Bytes read at a time: small enough that the lines just read are still in the core's L2 cache (1 MiB
/// on the EPYC this was measured on, shared with the correlator's state) when they are parsed; 128 KiB
/// ran ~2% faster than 1 MiB, and 64 or 256 KiB no faster than 128.
pub const READ_CHUNK: usize = 1 << 17;
pub const WRITE_CHUNK: usize = 1 << 20;
/// Lines between two releases of finished messages (`RELEASE_EVERY` in cli.py).
pub const RELEASE_EVERY: u64 = 200_000;
/// Events wait this many lines for a re-emission before being written (`WINDOW_LINES`).
pub const WINDOW_LINES: u64 = 10_000;
pub const WINDOW_CHECK_EVERY: u64 = 1000;
pub const PROGRESS_EVERY: u64 = 65_536;
/// Lines parsed before they are correlated.
const PARSE_BATCH: usize = 32;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// One input: a path (`-` for stdin) and the server its lines belong to.
pub struct Input {
    pub path: String,
    pub server: Text,
}

/// What the caller prints in its summary; counts in the order each kind or type was first seen.
#[derive(Default)]
pub struct Summary {
    pub lines: u64,
    pub kinds: Vec<(LineKind, u64)>,
    pub event_types: Vec<(EventType, u64)>,
}

/// A failure to read an input (`path` is the input) or to write the output (`path` is None).
pub struct RunError {
    pub path: Option<String>,
    pub error: io::Error,
}

/// Counts by first appearance, as a Python `Counter` keeps them.
struct FirstSeenCounts<T: Copy + PartialEq> {
    slots: Vec<Option<usize>>,
    order: Vec<(T, u64)>,
}

impl<T: Copy + PartialEq> FirstSeenCounts<T> {
    fn new(size: usize) -> Self {
        FirstSeenCounts { slots: vec![None; size], order: Vec::new() }
    }

    fn add(&mut self, key: T, index: usize) {
        match self.slots[index] {
            Some(slot) => self.order[slot].1 += 1,
            None => {
                self.slots[index] = Some(self.order.len());
                self.order.push((key, 1));
            }
        }
    }
}

/// Where the output goes, a chunk at a time.
pub trait Sink {
    /// Write all of `chunk` and leave it empty (or replace it with an empty buffer).
    fn write_chunk(&mut self, chunk: &mut Vec<u8>) -> io::Result<()>;
    /// Write all of `bytes`. True when the sink may still read them after the call: the caller must
    /// then neither change nor free them.
    fn write_kept(&mut self, bytes: &[u8]) -> io::Result<bool>;
    fn flush(&mut self) -> io::Result<()>;
}

/// Buffered output of JSON lines; written to the sink in chunks of about `WRITE_CHUNK` bytes.
struct Output<'w> {
    sink: &'w mut dyn Sink,
    buffer: Vec<u8>,
    write_failed: bool,
}

impl Output<'_> {
    fn end_line(&mut self) -> io::Result<()> {
        self.buffer.push(b'\n');
        if self.buffer.len() >= WRITE_CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            let written = self.sink.write_chunk(&mut self.buffer);
            self.write_failed = written.is_err();
            written?;
            if self.buffer.capacity() < WRITE_CHUNK {
                self.buffer.reserve(WRITE_CHUNK + 65_536);
            }
        }
        Ok(())
    }
}

/// Hashes an event-id key: its bits are already a hash.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64 ^ (value >> 64) as u64;
    }
}

/// An event waiting in the window: the line number of its first version and where its JSON is.
struct Held {
    line: u64,
    key: u128,
    kind: EventType,
    block: u64,
    start: u32,
    len: u32,
}

/// Encoded events are appended to blocks of this size, reused once every event in them is written.
const BLOCK_BYTES: usize = 1 << 20;

struct Block {
    bytes: Vec<u8>,
    /// Held events whose JSON is in this block.
    live: u32,
    /// The sink may still read the block's bytes: never free or reuse them.
    kept: bool,
}

impl Drop for Block {
    fn drop(&mut self) {
        if self.kept {
            std::mem::forget(std::mem::take(&mut self.bytes)); // the sink may still read them
        }
    }
}

/// Events taken from the window whose JSON lines lie one after the other in a block, not written yet.
struct Unwritten {
    block: u64,
    start: usize,
    end: usize,
}

/// `EventWindow` of cli.py: holds events so that a re-emission (same event id) replaces the first
/// version instead of being written twice. An event keeps the place and line number of its first
/// version. Events are encoded as they come, while their texts are in cache, one after the other into
/// a few reused blocks (a buffer per event would spread them over megabytes), each followed by its
/// newline. Events leave in the order they came, which is mostly the order of their JSON in the
/// blocks: the sink is given runs of a block as they are, not copies.
#[derive(Default)]
struct EventWindow {
    held: VecDeque<Held>,
    /// The sequence number of `held[0]`; an event's number is fixed when it first comes.
    first_sequence: u64,
    sequence_of: HashMap<u128, u64, BuildHasherDefault<IdHasher>>,
    blocks: VecDeque<Block>,
    /// The number of `blocks[0]`.
    first_block: u64,
    spare: Vec<Vec<u8>>,
    unwritten: Option<Unwritten>,
}

impl EventWindow {
    fn add(&mut self, line_number: u64, event: &DeliveryEvent) {
        let (block, start, len) = self.encode(event);
        let key = event.event_id.key();
        if let Some(&sequence) = self.sequence_of.get(&key) {
            if let Some(held) = self.held.get_mut((sequence - self.first_sequence) as usize) {
                let replaced = held.block;
                (held.kind, held.block, held.start, held.len) = (event.kind, block, start, len);
                if let Some(old) = self.blocks.get_mut((replaced - self.first_block) as usize) {
                    old.live -= 1;
                }
                return;
            }
        }
        self.sequence_of.insert(key, self.first_sequence + self.held.len() as u64);
        self.held.push_back(Held { line: line_number, key, kind: event.kind, block, start, len });
    }

    /// Append the event's JSON to the last block (a new one when it may not fit): (block, start, len).
    fn encode(&mut self, event: &DeliveryEvent) -> (u64, u32, u32) {
        let bound = event_bound(event);
        // the JSON and its newline; a block never grows past its capacity (the sink may hold its bytes)
        let fits = self.blocks.back().is_some_and(|last| last.bytes.len() + bound < last.bytes.capacity());
        if !fits {
            let mut bytes = self.spare.pop().unwrap_or_default();
            bytes.reserve(BLOCK_BYTES.max(bound + 1));
            self.blocks.push_back(Block { bytes, live: 0, kept: false });
        }
        let number = self.first_block + self.blocks.len() as u64 - 1;
        let Some(last) = self.blocks.back_mut() else { unreachable!("a block was just added") };
        let start = last.bytes.len();
        push_event(&mut last.bytes, event, bound);
        last.bytes.push(b'\n');
        last.live += 1;
        (number, start as u32, (last.bytes.len() - start) as u32)
    }

    /// Write the events first seen at or before `up_to_line`, in the order they came.
    fn drain(
        &mut self,
        up_to_line: u64,
        out: &mut Output<'_>,
        types: &mut FirstSeenCounts<EventType>,
    ) -> io::Result<()> {
        while let Some(held) = self.held.front() {
            if held.line > up_to_line {
                break;
            }
            types.add(held.kind, held.kind.index());
            let (key, block, start, end) =
                (held.key, held.block, held.start as usize, (held.start + held.len) as usize);
            if let Some(counted) = self.blocks.get_mut((block - self.first_block) as usize) {
                counted.live -= 1;
            }
            match &mut self.unwritten {
                Some(run) if run.block == block && run.end == start => run.end = end,
                _ => {
                    self.write_unwritten(out)?;
                    self.unwritten = Some(Unwritten { block, start, end });
                }
            }
            self.sequence_of.remove(&key);
            self.held.pop_front();
            self.first_sequence += 1;
        }
        self.release_blocks();
        Ok(())
    }

    /// Hand the events taken but not written yet to the sink.
    fn write_unwritten(&mut self, out: &mut Output<'_>) -> io::Result<()> {
        let Some(run) = self.unwritten.take() else { return Ok(()) };
        out.flush()?; // what was written before, first
        let Some(block) = self.blocks.get_mut((run.block - self.first_block) as usize) else { return Ok(()) };
        let written = out.sink.write_kept(&block.bytes[run.start..run.end]);
        out.write_failed = written.is_err();
        block.kept |= written?;
        Ok(())
    }

    /// Give the written blocks at the front back for reuse (never the last: events are appended to it;
    /// nor one with events still to be written).
    fn release_blocks(&mut self) {
        let unwritten = self.unwritten.as_ref().map_or(u64::MAX, |run| run.block);
        while self.blocks.len() > 1
            && self.first_block < unwritten
            && self.blocks.front().is_some_and(|block| block.live == 0)
        {
            if let Some(mut block) = self.blocks.pop_front() {
                if !block.kept {
                    let mut bytes = std::mem::take(&mut block.bytes);
                    bytes.clear();
                    self.spare.push(bytes);
                }
            }
            self.first_block += 1;
        }
    }
}

/// Reads an input, counting the bytes taken from the file itself (compressed bytes for gzip).
struct Counted<R> {
    inner: R,
    taken: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.taken += read as u64;
        Ok(read)
    }
}

/// The parts of a run that do not change between inputs.
pub struct Run<'r> {
    pub events: bool,
    pub correlator: &'r mut Correlator,
    pub classifier: &'r mut dyn Classify,
    pub clock: &'r mut dyn LocalClock,
    /// Called with (input index, bytes of the file read so far) every `PROGRESS_EVERY` lines.
    pub progress: Option<&'r mut dyn FnMut(usize, u64)>,
}

struct State<'w> {
    out: Output<'w>,
    window: EventWindow,
    kinds: FirstSeenCounts<LineKind>,
    types: FirstSeenCounts<EventType>,
    /// Events of the last lines whose ids are not computed yet, with their line numbers.
    produced: Vec<DeliveryEvent>,
    produced_at: Vec<u64>,
    id_buffer: Vec<u8>,
    total_lines: u64,
    last_time: f64,
}

/// Events wait for their ids until this many are produced: their hashes are computed together.
const ID_BATCH: usize = 8;

impl State<'_> {
    fn drain(&mut self, up_to_line: u64) -> io::Result<()> {
        self.settle();
        self.window.drain(up_to_line, &mut self.out, &mut self.types)
    }

    /// Compute the waiting events' ids and pass them to the window, in the order they came.
    fn settle(&mut self) {
        settle_event_ids(&mut self.id_buffer, &mut self.produced);
        for (event, &at) in self.produced.iter().zip(&self.produced_at) {
            self.window.add(at, event);
        }
        self.produced.clear();
        self.produced_at.clear();
    }
}

/// Parse every input in order and write lines or events to `sink`; the summary on success.
pub fn run(
    run: &mut Run<'_>,
    inputs: &[Input],
    mut stdin: Option<&mut dyn Read>,
    sink: &mut dyn Sink,
) -> Result<Summary, RunError> {
    // the events' ids are computed here, several at once, before they enter the window
    run.correlator.defer_event_ids();
    let mut state = State {
        out: Output { sink, buffer: Vec::with_capacity(WRITE_CHUNK + 65_536), write_failed: false },
        window: EventWindow::default(),
        kinds: FirstSeenCounts::new(LineKind::ALL.len()),
        types: FirstSeenCounts::new(EventType::ALL.len()),
        produced: Vec::new(),
        produced_at: Vec::new(),
        id_buffer: Vec::new(),
        total_lines: 0,
        last_time: 0.0,
    };
    for (index, input) in inputs.iter().enumerate() {
        let opened = match (input.path.as_str(), stdin.as_mut()) {
            ("-", Some(reader)) => Ok(Box::new(reader) as Box<dyn Read + '_>),
            ("-", None) => Ok(Box::new(io::stdin().lock()) as Box<dyn Read + '_>),
            (path, _) => File::open(path).map(|file| Box::new(file) as Box<dyn Read + '_>),
        };
        match opened.and_then(|source| read_input(run, &mut state, index, input, source)) {
            Ok(number) => state.total_lines += number,
            Err(error) => {
                let path = if state.out.write_failed { None } else { Some(input.path.clone()) };
                return Err(RunError { path, error });
            }
        }
    }
    let total = state.total_lines;
    let finish = |state: &mut State<'_>, run: &mut Run<'_>| -> io::Result<()> {
        if run.events {
            run.correlator.flush(run.classifier, &mut state.produced);
            state.produced_at.resize(state.produced.len(), total);
            state.drain(total)?;
            state.window.write_unwritten(&mut state.out)?;
        }
        state.out.flush()?;
        state.out.write_failed = true;
        state.out.sink.flush()
    };
    finish(&mut state, run).map_err(|error| RunError { path: None, error })?;
    Ok(Summary { lines: total, kinds: state.kinds.order, event_types: state.types.order })
}

fn read_input(
    run: &mut Run<'_>,
    state: &mut State<'_>,
    index: usize,
    input: &Input,
    source: Box<dyn Read + '_>,
) -> io::Result<u64> {
    let mut file = BufReader::with_capacity(READ_CHUNK, Counted { inner: source, taken: 0 });
    let gzip = {
        let head = io::BufRead::fill_buf(&mut file)?;
        head.len() >= 2 && head[..2] == GZIP_MAGIC
    };
    if gzip {
        let mut reader = MultiGzDecoder::new(file);
        read_lines(run, state, index, input, &mut reader, |reader| reader.get_ref().get_ref().taken)
    } else {
        // read straight into the line buffer (a BufReader would copy every chunk once more)
        let head = io::Cursor::new(io::BufRead::fill_buf(&mut file)?.to_vec());
        let mut reader = head.chain(file.into_inner());
        read_lines(run, state, index, input, &mut reader, |reader| reader.get_ref().1.taken)
    }
}

fn read_lines<R: Read>(
    run: &mut Run<'_>,
    state: &mut State<'_>,
    index: usize,
    input: &Input,
    reader: &mut R,
    taken: impl Fn(&R) -> u64,
) -> io::Result<u64> {
    let mut buffer = vec![0u8; READ_CHUNK];
    let mut filled = 0;
    let mut number: u64 = 0;
    let detail = if run.events { Detail::Correlated } else { Detail::Full };
    let mut at_end = false;
    while !at_end {
        if filled == buffer.len() {
            buffer.resize(buffer.len() * 2, 0); // a line longer than the buffer
        }
        let read = reader.read(&mut buffer[filled..])?;
        at_end = read == 0;
        filled += read;
        let mut start = 0;
        {
            // Lines are parsed a batch at a time, then correlated: the parser's code and the
            // correlator's each stay in the instruction cache for a batch. The parsed lines are
            // refilled batch after batch (their lists keep their capacity).
            let mut lines: Vec<ParsedLine<'_>> =
                (0..PARSE_BATCH).map(|_| ParsedLine::new(LineKind::Unknown, Cow::Borrowed(""))).collect();
            loop {
                let mut parsed = 0;
                while parsed < PARSE_BATCH && start < filled {
                    let end = match memchr::memchr(b'\n', &buffer[start..filled]) {
                        Some(offset) => start + offset,
                        None if at_end => filled,
                        None => break,
                    };
                    parse_line_with(&buffer[start..end], run.clock, &mut lines[parsed], detail);
                    parsed += 1;
                    start = end + 1;
                }
                // the batch's messages looked up together: their cache misses overlap
                let mut found = [usize::MAX; PARSE_BATCH];
                if run.events {
                    let mut previous: (Option<&str>, usize) = (None, usize::MAX);
                    for (line, found) in lines[..parsed].iter().zip(&mut found) {
                        // a message's lines often come one after the other
                        *found = match line.msgid.as_deref() {
                            Some(msgid) if previous.0 == Some(msgid) => previous.1,
                            msgid => {
                                let index = run.correlator.look_up(&input.server, line);
                                previous = (msgid, index);
                                index
                            }
                        };
                    }
                }
                for (line, &found) in lines[..parsed].iter().zip(&found) {
                    number += 1;
                    one_line(run, state, &input.server, line, found, number)?;
                    if number.is_multiple_of(PROGRESS_EVERY) {
                        if let Some(progress) = run.progress.as_mut() {
                            progress(index, taken(reader));
                        }
                    }
                }
                if parsed < PARSE_BATCH {
                    break; // the chunk's complete lines are done
                }
            }
        }
        buffer.copy_within(start.min(filled)..filled, 0);
        filled -= start.min(filled);
    }
    Ok(number)
}

fn one_line(
    run: &mut Run<'_>,
    state: &mut State<'_>,
    server: &Text,
    line: &ParsedLine<'_>,
    found: usize,
    number: u64,
) -> io::Result<()> {
    state.kinds.add(line.kind, line.kind.index());
    if !run.events {
        push_line(&mut state.out.buffer, number, server, line);
        return state.out.end_line();
    }
    if let Some(time) = line.time {
        state.last_time = time;
    }
    let at = state.total_lines + number;
    run.correlator.feed_looked_up(server, line, found, run.classifier, &mut state.produced);
    state.produced_at.resize(state.produced.len(), at);
    if state.produced.len() >= ID_BATCH {
        state.settle();
    }
    if number.is_multiple_of(WINDOW_CHECK_EVERY) {
        state.drain(at.saturating_sub(WINDOW_LINES))?;
    }
    if number.is_multiple_of(RELEASE_EVERY) {
        run.correlator.release(state.last_time);
    }
    Ok(())
}
