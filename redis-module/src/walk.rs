//! The search walk of `query_service/walk.py`, decision for decision: the same arguments, the same
//! buckets, bounds, per-group quotas, checks and scan accounting, and the same reply. The Lua script stays
//! the reference (and the fallback where this module is not loaded); the tests compare the two replies
//! byte for byte.
//!
//! Index members are `digest head (3) | ms since bucket start (4, big endian) | type code (1) | event
//! ref (11)`; a message hash holds field `a` (the arrival record) and one field per event (the ref's last
//! 3 bytes).

use std::collections::{HashMap, HashSet};

pub const DIGEST: usize = 3;
/// buckets per directory bitmap row (keys.DIRECTORY_SPAN)
pub const SPAN: i64 = 24;
/// where the event ref starts in an index member
const REF: usize = DIGEST + 5;
/// an index member's length (keys.MEMBER_BYTES); entries of another length were not written by the store
const MEMBER: usize = REF + 11;
/// the message part of an event ref
const MSGREF: usize = 8;
/// a check reads the other value's window when it has at most this many entries per candidate
const EXACT_RATIO: usize = 4;
const MAX_CODE: u8 = 30;
/// bounds on what a call may ask for (the service asks for far less: hourly buckets over a retention of
/// weeks, a few partitions per value); a walk past them would hold Redis, which a module cannot be
/// stopped in, for minutes
const MAX_BUCKET_SPAN: i64 = 1_000_000;
const MAX_PARTITIONS: i64 = 65_536;
/// a check reads the other value's window only over at most this many sets (else it checks members)
const MAX_WINDOW_SETS: i64 = 4_096;

/// The reads the walk makes; `module.rs` answers them from Redis's keyspace.
pub trait Store {
    /// `ZREVRANGEBYLEX key max min [LIMIT 0 limit]`
    fn rev_range(&mut self, key: &[u8], max: &[u8], min: &[u8], limit: Option<usize>) -> Vec<Vec<u8>>;
    /// whether `ZRANGEBYLEX key min max LIMIT 0 1` finds an entry
    fn any_in_range(&mut self, key: &[u8], min: &[u8], max: &[u8]) -> bool;
    /// `ZLEXCOUNT key min max`
    fn lex_count(&mut self, key: &[u8], min: &[u8], max: &[u8]) -> usize;
    /// whether `ZSCORE key member` finds it
    fn has_member(&mut self, key: &[u8], member: &[u8]) -> bool;
    /// `ZRANGEBYSCORE key min max`
    fn score_range(&mut self, key: &[u8], min: f64, max: f64) -> Vec<Vec<u8>>;
    /// `GET key`
    fn get(&mut self, key: &[u8]) -> Option<Vec<u8>>;
    /// `GETRANGE key start end` (end inclusive)
    fn get_range(&mut self, key: &[u8], start: i64, end: i64) -> Vec<u8>;
    /// `HMGET key field...`
    fn hash_get(&mut self, key: &[u8], fields: &[&[u8]]) -> Vec<Option<Vec<u8>>>;
}

struct Group {
    mask: i64,
    room: i64,
}

/// One indexed value: which sorted sets (per bucket) hold it and the prefix of its entries.
struct IndexValue {
    kind: Vec<u8>,
    width: i64,
    head: Vec<u8>,
    head_next: Vec<u8>,
    first: i64,
    partitions: i64,
}

/// A value the walk reads, with its slot in its kind's bucket directories (-1: none).
struct Source {
    value: IndexValue,
    slot: i64,
    sparse: bool,
}

pub struct Request {
    prefix: Vec<u8>,
    lo: i64,
    hi: i64,
    cursor_ms: i64,
    cursor_ref: Vec<u8>,
    budget: i64,
    directory: i64,
    max_buckets: i64,
    groups: Vec<Group>,
    sources: Vec<Source>,
    checks: Vec<Vec<IndexValue>>,
}

/// One returned event: (time ms, event ref, the message's arrival record with its first event only,
/// the event record).
pub struct Candidate {
    pub ms: i64,
    pub reference: Vec<u8>,
    pub arrival: Option<Vec<u8>>,
    pub record: Vec<u8>,
}

pub struct Reply {
    pub complete: bool,
    pub scanned: i64,
    pub resume: i64,
    pub candidates: Vec<Candidate>,
}

struct Arguments<'a> {
    items: &'a [&'a [u8]],
    at: usize,
}

impl<'a> Arguments<'a> {
    fn take(&mut self) -> Result<&'a [u8], String> {
        let item = self.items.get(self.at).ok_or("too few arguments")?;
        self.at += 1;
        Ok(item)
    }

    fn number(&mut self) -> Result<i64, String> {
        let raw = self.take()?;
        std::str::from_utf8(raw)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| format!("not an integer: {:?}", String::from_utf8_lossy(raw)))
    }

    /// kind, bucket width (ms), head, the head after it, first partition, partitions
    fn index_value(&mut self) -> Result<IndexValue, String> {
        Ok(IndexValue {
            kind: self.take()?.to_vec(),
            width: positive(self.number()?)?,
            head: self.take()?.to_vec(),
            head_next: self.take()?.to_vec(),
            first: self.number()?,
            partitions: match self.number()? {
                count @ 0..=MAX_PARTITIONS => count,
                count => return Err(format!("partitions out of range: {count}")),
            },
        })
    }

    fn count(&mut self, most: i64) -> Result<usize, String> {
        let count = self.number()?;
        if !(0..=most).contains(&count) {
            return Err(format!("a count out of range: {count}"));
        }
        Ok(count as usize)
    }
}

impl Request {
    pub fn parse(items: &[&[u8]]) -> Result<Request, String> {
        let mut args = Arguments { items, at: 0 };
        let prefix = args.take()?.to_vec();
        let (lo, hi) = (args.number()?, args.number()?);
        let (cursor_ms, cursor_ref) = (args.number()?, args.take()?.to_vec());
        let (budget, directory, max_buckets) = (args.number()?, args.number()?, args.number()?);
        let mut groups = Vec::new();
        for _ in 0..args.count(64)? {
            groups.push(Group { mask: args.number()?, room: args.number()? });
        }
        let mut sources = Vec::new();
        for _ in 0..args.count(4096)? {
            sources.push(Source { value: args.index_value()?, slot: args.number()?, sparse: false });
        }
        let mut checks = Vec::new();
        for _ in 0..args.count(64)? {
            let alternatives = (0..args.count(4096)?).map(|_| args.index_value()).collect::<Result<_, _>>()?;
            checks.push(alternatives);
        }
        if sources.is_empty() {
            return Err("no source to walk".into());
        }
        let width = sources[0].value.width;
        if hi.div_euclid(width) - lo.div_euclid(width) > MAX_BUCKET_SPAN {
            return Err(format!("the period spans more than {MAX_BUCKET_SPAN} buckets"));
        }
        if args.at != items.len() {
            return Err("too many arguments".into());
        }
        Ok(Request { prefix, lo, hi, cursor_ms, cursor_ref, budget, directory, max_buckets, groups, sources, checks })
    }
}

fn positive(width: i64) -> Result<i64, String> {
    if width > 0 {
        Ok(width)
    } else {
        Err(format!("a bucket width must be positive: {width}"))
    }
}

fn be32(bytes: &[u8]) -> i64 {
    i64::from(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn pack32(value: i64) -> [u8; 4] {
    (value as u32).to_be_bytes()
}

fn in_mask(mask: i64, code: u8) -> bool {
    code < 32 && (mask as u32 >> code) & 1 != 0
}

/// Lua's byte-wise `a < b` over `a`'s length (refs have one length)
fn less(a: &[u8], b: &[u8]) -> bool {
    for (index, &x) in a.iter().enumerate() {
        match b.get(index) {
            Some(&y) if x != y => return x < y,
            Some(_) => {}
            None => return false,
        }
    }
    false
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|part| part.len()).sum());
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

/// The lex bounds of a value's entries from ms `lo` to `top` in the bucket starting at `base`: (max, min).
fn bounds(head: &[u8], head_next: &[u8], base: i64, lo: i64, top: i64) -> (Vec<u8>, Vec<u8>) {
    let mut upper = concat(&[b"(", head_next]);
    let mut lower = concat(&[b"[", head]);
    let (low_off, high_off) = (lo - base, top - base);
    if (0..=4_294_967_294).contains(&low_off) {
        lower = concat(&[b"[", head, &pack32(low_off)]);
    }
    if (0..4_294_967_294).contains(&high_off) {
        upper = concat(&[b"(", head, &pack32(high_off + 1)]);
    }
    (upper, lower)
}

fn index_key(prefix: &[u8], kind: &[u8], bucket: i64, partition: i64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + kind.len() + 24);
    key.extend_from_slice(prefix);
    key.extend_from_slice(b"x:");
    key.extend_from_slice(kind);
    key.extend_from_slice(format!(":{bucket}:{partition}").as_bytes());
    key
}

/// A sorted set of a check's window: (key, max, min).
type WindowSet = (Vec<u8>, Vec<u8>, Vec<u8>);

/// The walk's state over one call.
struct Walk<'a, S: Store> {
    store: &'a mut S,
    request: &'a Request,
    scanned: i64,
    since_ms: f64,
    directory_bits: HashMap<(Vec<u8>, i64, i64), Vec<u8>>,
    /// candidates of the current bucket: (time ms, index member, type code)
    cms: Vec<i64>,
    cmem: Vec<Vec<u8>>,
    ccode: Vec<u8>,
}

impl<S: Store> Walk<'_, S> {
    fn in_directory(&mut self, source: &Source, bucket: i64) -> bool {
        if source.slot < 0 || self.since_ms < 0.0 || ((bucket * source.value.width) as f64) < self.since_ms {
            return true;
        }
        let group = bucket.div_euclid(SPAN);
        let cache_key = (source.value.kind.clone(), group, source.slot);
        if !self.directory_bits.contains_key(&cache_key) {
            let key = concat(&[&self.request.prefix, b"xd:", &source.value.kind, format!(":{group}").as_bytes()]);
            let bits = self.store.get_range(&key, source.slot * SPAN / 8, (source.slot + 1) * SPAN / 8 - 1);
            self.directory_bits.insert(cache_key.clone(), bits);
        }
        let bits = &self.directory_bits[&cache_key];
        let position = bucket - group * SPAN;
        match bits.get((position / 8) as usize) {
            Some(&byte) => byte & (1 << (7 - position % 8)) != 0,
            None => false,
        }
    }

    /// The alternatives' sets over ms oldest..newest, with the lex bounds of that window: (key, max, min).
    /// None when they are more than `MAX_WINDOW_SETS`.
    fn window_sets(&self, alternatives: &[IndexValue], oldest: i64, newest: i64) -> Option<Vec<WindowSet>> {
        let count: i64 = alternatives
            .iter()
            .map(|alt| (newest.div_euclid(alt.width) - oldest.div_euclid(alt.width) + 1).saturating_mul(alt.partitions))
            .fold(0, i64::saturating_add);
        if count > MAX_WINDOW_SETS {
            return None;
        }
        let mut sets = Vec::new();
        for alt in alternatives {
            let mut bucket = newest.div_euclid(alt.width);
            while bucket >= oldest.div_euclid(alt.width) {
                let (upper, lower) = bounds(&alt.head, &alt.head_next, bucket * alt.width, oldest, newest);
                for partition in alt.first..alt.first + alt.partitions {
                    sets.push((
                        index_key(&self.request.prefix, &alt.kind, bucket, partition),
                        upper.clone(),
                        lower.clone(),
                    ));
                }
                bucket -= 1;
            }
        }
        Some(sets)
    }

    /// Drops the candidates from `first` on that no alternative's index holds.
    fn check(&mut self, first: usize, alternatives: &[IndexValue]) {
        let count = self.cms.len();
        if count <= first {
            return;
        }
        let candidates = count - first;
        let mut present: HashSet<Vec<u8>> = HashSet::new();
        let mut windows = None;
        if candidates > 8 {
            let newest = *self.cms[first..].iter().max().expect("candidates");
            let oldest = *self.cms[first..].iter().min().expect("candidates");
            if let Some(sets) = self.window_sets(alternatives, oldest, newest) {
                let entries: usize = sets.iter().map(|(key, max, min)| self.store.lex_count(key, min, max)).sum();
                if entries <= EXACT_RATIO * candidates {
                    windows = Some(sets);
                }
            }
        }
        if let Some(sets) = windows {
            for (key, max, min) in sets {
                let entries = self.store.rev_range(&key, &max, &min, None);
                self.scanned += entries.len() as i64;
                for member in entries {
                    if member.len() >= REF {
                        present.insert(member[REF..].to_vec());
                    }
                }
            }
        } else {
            for index in first..count {
                let reference = &self.cmem[index][REF..];
                for alt in alternatives {
                    let ms = self.cms[index];
                    let bucket = ms.div_euclid(alt.width);
                    let mut partition = alt.first;
                    if alt.partitions > 1 && reference.len() >= 11 {
                        partition += be32(&reference[7..11]) % alt.partitions;
                    }
                    let key = index_key(&self.request.prefix, &alt.kind, bucket, partition);
                    let member =
                        concat(&[&alt.head, &pack32(ms - bucket * alt.width), &[self.ccode[index]], reference]);
                    if self.store.has_member(&key, &member) {
                        present.insert(reference.to_vec());
                        break;
                    }
                }
            }
        }
        let mut kept = first;
        for index in first..count {
            if present.contains(&self.cmem[index][REF..]) {
                self.cms.swap(kept, index);
                self.cmem.swap(kept, index);
                self.ccode.swap(kept, index);
                kept += 1;
            }
        }
        self.cms.truncate(kept);
        self.cmem.truncate(kept);
        self.ccode.truncate(kept);
    }
}

fn room(groups: &[Group]) -> i64 {
    groups.iter().map(|group| group.room).max().unwrap_or(0).max(0)
}

fn wanted_codes(groups: &[Group]) -> [bool; MAX_CODE as usize + 1] {
    let mut wanted = [false; MAX_CODE as usize + 1];
    for (code, slot) in wanted.iter_mut().enumerate() {
        *slot = groups.iter().any(|group| group.room > 0 && in_mask(group.mask, code as u8));
    }
    wanted
}

pub fn walk<S: Store>(request: &mut Request, store: &mut S) -> Reply {
    let mut groups = std::mem::take(&mut request.groups);
    let mut sources = std::mem::take(&mut request.sources);
    let since_ms = store
        .get(&concat(&[&request.prefix, b"xd:since"]))
        .and_then(|raw| std::str::from_utf8(&raw).ok().and_then(|text| text.trim().parse::<f64>().ok()))
        .unwrap_or(-1.0)
        * 1000.0;
    let (lo, hi) = (request.lo, request.hi);
    let mut walk = Walk {
        store,
        request,
        scanned: 0,
        since_ms,
        directory_bits: HashMap::new(),
        cms: Vec::new(),
        cmem: Vec::new(),
        ccode: Vec::new(),
    };
    let width = sources[0].value.width;
    let mut buckets: Vec<i64> = Vec::new();
    if walk.request.directory > 0 {
        let mut known = HashSet::new();
        for code in 1..=MAX_CODE {
            if in_mask(walk.request.directory, code) {
                let key = concat(&[&walk.request.prefix, format!("tb:{code}").as_bytes()]);
                let busy = walk.store.score_range(&key, lo.div_euclid(width) as f64, hi.div_euclid(width) as f64);
                for raw in busy {
                    let bucket = std::str::from_utf8(&raw).ok().and_then(|text| text.parse::<f64>().ok());
                    if let Some(bucket) = bucket {
                        let bucket = bucket as i64;
                        if known.insert(bucket) {
                            buckets.push(bucket);
                        }
                    }
                }
            }
        }
        buckets.sort_unstable_by(|a, b| b.cmp(a));
    } else {
        let mut bucket = hi.div_euclid(width);
        while bucket >= lo.div_euclid(width) {
            buckets.push(bucket);
            bucket -= 1;
        }
    }

    let request = walk.request;
    let (cursor_ms, cursor_ref) = (request.cursor_ms, request.cursor_ref.as_slice());
    let single = groups.len() == 1;
    let union = sources.len() > 1;
    let mut wanted = wanted_codes(&groups);
    let mut filled = false;
    let mut seen: Option<HashSet<Vec<u8>>> = if union { Some(HashSet::new()) } else { None };
    let mut sent: HashSet<Vec<u8>> = HashSet::new();
    let mut out: Vec<Candidate> = Vec::new();
    let (mut visited, mut resume, mut complete) = (0i64, -1i64, true);
    for bucket in buckets {
        let need = room(&groups);
        if need <= 0 {
            break;
        }
        if walk.scanned >= request.budget {
            complete = false;
            break;
        }
        if visited >= request.max_buckets {
            resume = (bucket + 1) * width - 1;
            break;
        }
        let mut marked = false;
        for source in &sources {
            if walk.in_directory(source, bucket) {
                marked = true;
                break;
            }
        }
        if !marked {
            continue;
        }
        visited += 1;
        let base = bucket * width;
        walk.cms.clear();
        walk.cmem.clear();
        walk.ccode.clear();
        for source in sources.iter_mut() {
            let (upper, lower) = bounds(&source.value.head, &source.value.head_next, base, lo, hi);
            let partitions = if walk.in_directory(source, bucket) { source.value.partitions } else { 0 };
            let mut found = false;
            for partition in source.value.first..source.value.first + partitions {
                let key = index_key(&request.prefix, &source.value.kind, bucket, partition);
                let mut page = need.clamp(16, 250);
                if !single {
                    page = (page * 2).min(250);
                }
                let page = page as usize;
                let mut got = vec![0i64; groups.len()];
                let mut top = upper.clone();
                let before = walk.cms.len();
                // see walk.py: a forward probe is the shorter way to learn that a sparse value has nothing here
                let skip = source.sparse
                    && source.value.head.first().is_some_and(|&byte| byte < 128)
                    && !walk.store.any_in_range(&key, &lower, &upper);
                if !skip {
                    loop {
                        let entries = walk.store.rev_range(&key, &top, &lower, Some(page));
                        walk.scanned += entries.len() as i64;
                        let full = entries.len() == page;
                        // the next page starts below this one's last entry
                        let below = if full { entries.last().map(|last| concat(&[b"(", last])) } else { None };
                        let first = walk.cms.len();
                        for member in entries {
                            if member.len() != MEMBER {
                                continue;
                            }
                            let code = member[DIGEST + 4];
                            if code > MAX_CODE || !wanted[code as usize] {
                                continue;
                            }
                            let ms = base + be32(&member[DIGEST..DIGEST + 4]);
                            if ms >= lo
                                && ms <= hi
                                && (cursor_ms < 0
                                    || ms < cursor_ms
                                    || (ms == cursor_ms && less(&member[REF..], cursor_ref)))
                            {
                                walk.cms.push(ms);
                                walk.cmem.push(member);
                                walk.ccode.push(code);
                            }
                        }
                        for alternatives in &request.checks {
                            walk.check(first, alternatives);
                        }
                        if single {
                            got[0] += (walk.cms.len() - first) as i64;
                        } else {
                            for &code in &walk.ccode[first..] {
                                for (index, group) in groups.iter().enumerate() {
                                    if in_mask(group.mask, code) {
                                        got[index] += 1;
                                    }
                                }
                            }
                        }
                        let Some(below) = below else { break };
                        if groups.iter().zip(&got).all(|(group, &got)| group.room <= 0 || got >= group.room) {
                            break;
                        }
                        top = below;
                    }
                }
                if walk.cms.len() > before {
                    found = true;
                }
            }
            source.sparse = !found;
        }
        // newest first: time, then event ref, both descending
        let mut ordered: Vec<usize> = (0..walk.cms.len()).collect();
        ordered.sort_by(|&a, &b| {
            walk.cms[b].cmp(&walk.cms[a]).then_with(|| walk.cmem[b][REF..].cmp(&walk.cmem[a][REF..]))
        });
        // take candidates while a group has room, then read their records one HMGET per message; a record
        // that is gone gives its room back to the candidates after it
        let mut at = 0;
        while at < ordered.len() && room(&groups) > 0 {
            let mut batch: Vec<usize> = Vec::new();
            if single && seen.is_none() {
                let group = &mut groups[0];
                while at < ordered.len() && group.room > 0 {
                    batch.push(ordered[at]);
                    at += 1;
                    group.room -= 1;
                }
                if group.room == 0 {
                    filled = true;
                }
            } else {
                while at < ordered.len() && room(&groups) > 0 {
                    let candidate = ordered[at];
                    at += 1;
                    let member = &walk.cmem[candidate];
                    if let Some(seen) = seen.as_mut() {
                        if !seen.insert(member[REF..].to_vec()) {
                            continue;
                        }
                    }
                    let code = walk.ccode[candidate];
                    let mut take = false;
                    for group in groups.iter_mut() {
                        if group.room > 0 && in_mask(group.mask, code) {
                            take = true;
                            group.room -= 1;
                            if group.room == 0 {
                                filled = true;
                            }
                        }
                    }
                    if take {
                        batch.push(candidate);
                    }
                }
            }
            // the batch's messages in order of first appearance, each with its fields
            let mut messages: Vec<(&[u8], Vec<&[u8]>)> = Vec::new();
            let mut message_at: HashMap<&[u8], usize> = HashMap::new();
            let mut slots: Vec<(usize, usize)> = Vec::with_capacity(batch.len());
            for &candidate in &batch {
                let reference = &walk.cmem[candidate][REF..];
                let msgref = &reference[..reference.len().min(MSGREF)];
                let field = &reference[reference.len().min(MSGREF)..];
                let message = *message_at.entry(msgref).or_insert_with(|| {
                    messages.push((msgref, vec![b"a".as_slice()]));
                    messages.len() - 1
                });
                messages[message].1.push(field);
                slots.push((message, messages[message].1.len() - 1));
            }
            let mut values: Vec<Vec<Option<Vec<u8>>>> = messages
                .iter()
                .map(|(msgref, fields)| walk.store.hash_get(&concat(&[&request.prefix, b"m:", msgref]), fields))
                .collect();
            for (&candidate, &(message, slot)) in batch.iter().zip(&slots) {
                match values[message][slot].take() {
                    Some(record) => {
                        // the message's arrival record goes out with its first event only
                        let first = sent.insert(messages[message].0.to_vec());
                        out.push(Candidate {
                            ms: walk.cms[candidate],
                            reference: walk.cmem[candidate][REF..].to_vec(),
                            arrival: if first { values[message][0].take() } else { None },
                            record,
                        });
                    }
                    None => {
                        let code = walk.ccode[candidate];
                        for group in groups.iter_mut() {
                            if in_mask(group.mask, code) {
                                group.room += 1;
                            }
                        }
                    }
                }
            }
        }
        if filled {
            wanted = wanted_codes(&groups);
            filled = false;
        }
    }
    Reply { complete, scanned: walk.scanned, resume, candidates: out }
}
