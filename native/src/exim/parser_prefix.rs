//! The line prefixes of `processors/exim/parser.py`: `_PREFIX_RE`, `_BSD_TIME_RE`, `_SYSLOG_TAG_RE`,
//! `_PART_RE` and `_PID_RE` as hand-written matchers (same backtracking outcome), and the epoch of a stamp
//! (`_epoch`, `_valid_stamp`, `calendar.timegm`, `_bsd_epoch`).

use super::parser_text::{digit_run, digits_at, digits_value, first_char, is_space, msgid_len};
use super::types::LocalClock;

#[derive(Clone, Copy, Debug)]
pub struct Stamp {
    pub year: i64,
    pub month: i64,
    pub day: i64,
    pub hour: i64,
    pub minute: i64,
    pub second: i64,
}

/// The zone part of a prefix: none (read in the default zone), `Z`, or an offset in seconds east.
#[derive(Clone, Copy, Debug)]
pub enum Zone {
    Default,
    Utc,
    East(i64),
}

/// A `_PREFIX_RE` match.
#[derive(Debug)]
pub struct Prefix<'a> {
    pub stamp_text: &'a str,
    pub stamp: Stamp,
    /// `_epoch_utc(stamp)`: the epoch when the stamp is read in UTC (None: an invalid stamp).
    pub utc_base: Option<f64>,
    pub frac: Option<&'a str>,
    pub zone: Zone,
    pub pid: Option<i64>,
    pub msgid: Option<&'a str>,
    pub end: usize,
}

fn at_gap(b: &[u8], at: usize) -> bool {
    at == b.len() || b.get(at) == Some(&b' ')
}

fn skip_spaces(b: &[u8], mut at: usize) -> usize {
    while b.get(at) == Some(&b' ') {
        at += 1;
    }
    at
}

fn expect(b: &[u8], at: usize, byte: u8) -> Option<usize> {
    (b.get(at) == Some(&byte)).then_some(at + 1)
}

/// The minute of the last all-ASCII stamp read (a log repeats each minute over many lines): its first 16
/// bytes (`YYYY-MM-DD HH:MM`), the UTC epoch of its second 0 (`NO_BASE` when the stamp is not valid) and
/// its year, month, day, hour and minute packed (`pack`). The key starts as bytes no text holds.
type LastMinute = (u128, i64, u64);

const NO_BASE: i64 = i64::MIN;

thread_local! {
    static LAST_MINUTE: std::cell::Cell<LastMinute> = const { std::cell::Cell::new((u128::MAX, NO_BASE, 0)) };
}

fn pack(stamp: &Stamp) -> u64 {
    (stamp.year as u64) << 32
        | (stamp.month as u64) << 24
        | (stamp.day as u64) << 16
        | (stamp.hour as u64) << 8
        | stamp.minute as u64
}

fn unpack(packed: u64, second: i64) -> Stamp {
    Stamp {
        year: (packed >> 32) as i64,
        month: (packed >> 24 & 0xff) as i64,
        day: (packed >> 16 & 0xff) as i64,
        hour: (packed >> 8 & 0xff) as i64,
        minute: (packed & 0xff) as i64,
        second,
    }
}

/// The stamp at `at`, its UTC epoch and its end; the minute of the last all-ASCII one is remembered.
#[inline]
fn stamp_with_base(s: &str, at: usize) -> Option<(Stamp, Option<f64>, usize)> {
    let Some(text) = s.as_bytes().get(at..at + 19) else {
        let (stamp, end) = stamp_at(s, at)?;
        return Some((stamp, epoch_utc(&stamp), end));
    };
    let key = u128::from_le_bytes(text[..16].try_into().unwrap_or([0; 16]));
    let (last_key, base, packed) = LAST_MINUTE.get();
    if last_key == key {
        let (tens, ones) = (text[17].wrapping_sub(b'0'), text[18].wrapping_sub(b'0'));
        if text[16] == b':' && tens <= 9 && ones <= 9 {
            let second = i64::from(tens * 10 + ones);
            let utc_base = (base != NO_BASE && second < 61).then(|| (base + second) as f64);
            return Some((unpack(packed, second), utc_base, at + 19));
        }
    }
    stamp_miss(s, at, key)
}

#[inline(never)]
fn stamp_miss(s: &str, at: usize, key: u128) -> Option<(Stamp, Option<f64>, usize)> {
    let (stamp, end) = stamp_at(s, at)?;
    let utc_base = epoch_utc(&stamp);
    if end == at + 19 {
        // 19 characters in 19 bytes: all ASCII, so the year is below 10000 and the rest below 100
        let minute = epoch_utc(&Stamp { second: 0, ..stamp }).map_or(NO_BASE, |base| base as i64);
        LAST_MINUTE.set((key, minute, pack(&stamp)));
    }
    Some((stamp, utc_base, end))
}

/// `YYYY-MM-DD HH:MM:SS` (or `T`) at `at`: the stamp and its end.
fn stamp_at(s: &str, at: usize) -> Option<(Stamp, usize)> {
    let b = s.as_bytes();
    if let Some(found) = b.get(at..at + 19).and_then(ascii_stamp) {
        return Some((found, at + 19));
    }
    let (year, i) = digits_at(s, at, 4)?;
    let (month, i) = digits_at(s, expect(b, i, b'-')?, 2)?;
    let (day, i) = digits_at(s, expect(b, i, b'-')?, 2)?;
    let i = match b.get(i) {
        Some(b' ') | Some(b'T') => i + 1,
        _ => return None,
    };
    let (hour, i) = digits_at(s, i, 2)?;
    let (minute, i) = digits_at(s, expect(b, i, b':')?, 2)?;
    let (second, i) = digits_at(s, expect(b, i, b':')?, 2)?;
    let stamp = Stamp {
        year: year as i64,
        month: month as i64,
        day: day as i64,
        hour: hour as i64,
        minute: minute as i64,
        second: second as i64,
    };
    Some((stamp, i))
}

/// The usual all-ASCII `YYYY-MM-DD HH:MM:SS` (19 bytes), checked without branching per byte.
fn ascii_stamp(b: &[u8]) -> Option<Stamp> {
    const DIGITS: [usize; 14] = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18];
    let digit = |at: usize| b[at].wrapping_sub(b'0') as i64;
    let mut bad =
        (b[4] != b'-') | (b[7] != b'-') | !(b[10] == b' ' || b[10] == b'T') | (b[13] != b':') | (b[16] != b':');
    for at in DIGITS {
        bad |= digit(at) > 9;
    }
    if bad {
        return None;
    }
    let two = |at: usize| digit(at) * 10 + digit(at + 1);
    Some(Stamp {
        year: two(0) * 100 + two(2),
        month: two(5),
        day: two(8),
        hour: two(11),
        minute: two(14),
        second: two(17),
    })
}

/// `(Z|[+-]\d\d:?\d\d)| ([+-]\d{4})` or nothing, each followed by a space or the end.
fn zone_at(s: &str, at: usize) -> Option<(Zone, usize)> {
    let b = s.as_bytes();
    match b.get(at) {
        Some(b'Z') if at_gap(b, at + 1) => return Some((Zone::Utc, at + 1)),
        Some(&sign @ (b'+' | b'-')) => {
            if let Some((hours, after)) = digits_at(s, at + 1, 2) {
                if b.get(after) == Some(&b':') {
                    if let Some((minutes, end)) = digits_at(s, after + 1, 2) {
                        if at_gap(b, end) {
                            return Some((offset(sign, hours, minutes), end));
                        }
                    }
                }
                if let Some((minutes, end)) = digits_at(s, after, 2) {
                    if at_gap(b, end) {
                        return Some((offset(sign, hours, minutes), end));
                    }
                }
            }
        }
        Some(b' ') => {
            if let Some(&sign @ (b'+' | b'-')) = b.get(at + 1) {
                if let Some((hours, after)) = digits_at(s, at + 2, 2) {
                    if let Some((minutes, end)) = digits_at(s, after, 2) {
                        if at_gap(b, end) {
                            return Some((offset(sign, hours, minutes), end));
                        }
                    }
                }
            }
        }
        _ => {}
    }
    at_gap(b, at).then_some((Zone::Default, at))
}

fn offset(sign: u8, hours: u32, minutes: u32) -> Zone {
    let seconds = hours as i64 * 3600 + minutes as i64 * 60;
    Zone::East(if sign == b'+' { seconds } else { -seconds })
}

/// `_PREFIX_RE.match(line, at)`.
pub fn match_prefix(s: &str, at: usize) -> Option<Prefix<'_>> {
    if at == 0 {
        if let Some(found) = common_prefix(s) {
            return Some(found);
        }
    }
    let b = s.as_bytes();
    let (stamp, utc_base, mut i) = stamp_with_base(s, at)?;
    let stamp_text = &s[at..i];
    let mut frac = None;
    if b.get(i) == Some(&b'.') {
        let (count, end) = digit_run(s, i + 1, s.len());
        if !(1..=9).contains(&count) {
            return None;
        }
        frac = Some(&s[i..end]);
        i = end;
    }
    let (zone, mut i) = zone_at(s, i)?;
    let mut pid = None;
    let spaced = skip_spaces(b, i);
    if spaced > i && b.get(spaced) == Some(&b'[') {
        let mut digits_start = spaced + 1;
        if b.get(digits_start) == Some(&b'p') {
            digits_start += 1;
        }
        let (count, end) = digit_run(s, digits_start, s.len());
        if (1..=10).contains(&count) && b.get(end) == Some(&b']') && at_gap(b, end + 1) {
            pid = Some(digits_value(&s[digits_start..end]));
            i = end + 1;
        }
    }
    let mut msgid = None;
    let spaced = skip_spaces(b, i);
    if spaced > i {
        if let Some(end) = msgid_len(b, spaced) {
            if at_gap(b, end) {
                msgid = Some(&s[spaced..end]);
                i = end;
            }
        }
    }
    Some(Prefix { stamp_text, stamp, utc_base, frac, zone, pid, msgid, end: skip_spaces(b, i) })
}

/// `match_prefix(s, 0)` for the usual `YYYY-MM-DD HH:MM:SS [msgid ]`: a stamp of 19 bytes and a single
/// space after it, then no zone, pid or second space (None: not that shape, the general matcher decides).
#[inline]
fn common_prefix(s: &str) -> Option<Prefix<'_>> {
    let b = s.as_bytes();
    if b.len() < 21 || b[19] != b' ' || matches!(b[20], b'+' | b'-' | b'[' | b' ') {
        return None;
    }
    let (stamp, utc_base, end) = stamp_with_base(s, 0)?;
    if end != 19 {
        return None;
    }
    let mut msgid = None;
    let mut i = 19;
    if let Some(end) = msgid_len(b, 20) {
        if at_gap(b, end) {
            msgid = Some(&s[20..end]);
            i = end;
        }
    }
    Some(Prefix {
        stamp_text: &s[..19],
        stamp,
        utc_base,
        frac: None,
        zone: Zone::Default,
        pid: None,
        msgid,
        end: skip_spaces(b, i),
    })
}

/// `common_prefix` without building a `Prefix`: (stamp text, UTC epoch, msgid, end). The stamp itself
/// (for a clock that is not UTC) is `stamp_at(s, 0)`.
#[inline]
pub fn common_parts(s: &str) -> Option<(&str, Option<f64>, Option<&str>, usize)> {
    let b = s.as_bytes();
    if b.len() < 21 || b[19] != b' ' || matches!(b[20], b'+' | b'-' | b'[' | b' ') {
        return None;
    }
    let utc_base = base19(s)?;
    let mut msgid = None;
    let mut i = 19;
    if let Some(end) = msgid_len(b, 20) {
        if at_gap(b, end) {
            msgid = Some(&s[20..end]);
            i = end;
        }
    }
    Some((&s[..19], utc_base, msgid, skip_spaces(b, i)))
}

/// `stamp_with_base(s, 0)` when the stamp ends at byte 19, as its UTC epoch only (None: no such stamp).
#[inline]
fn base19(s: &str) -> Option<Option<f64>> {
    let text = s.as_bytes().get(..19)?;
    let key = u128::from_le_bytes(text[..16].try_into().unwrap_or([0; 16]));
    let (last_key, base, _) = LAST_MINUTE.get();
    if last_key == key {
        let (tens, ones) = (text[17].wrapping_sub(b'0'), text[18].wrapping_sub(b'0'));
        if text[16] == b':' && tens <= 9 && ones <= 9 {
            let second = i64::from(tens * 10 + ones);
            return Some((base != NO_BASE && second < 61).then(|| (base + second) as f64));
        }
    }
    let (_, utc_base, end) = stamp_miss(s, 0, key)?;
    (end == 19).then_some(utc_base)
}

/// The stamp at `at` (`YYYY-MM-DD HH:MM:SS`), without its epoch.
pub fn stamp_only(s: &str, at: usize) -> Option<Stamp> {
    stamp_at(s, at).map(|(stamp, _)| stamp)
}

/// A `_BSD_TIME_RE` match: month name, day, hour, minute, second, end.
pub struct BsdTime<'a> {
    pub month: &'a str,
    pub day: i64,
    pub hour: i64,
    pub minute: i64,
    pub second: i64,
    pub end: usize,
}

/// `([A-Z][a-z]{2}) +(\d{1,2}) (\d\d):(\d\d):(\d\d)(?:\.\d{1,9})? +` at the start.
pub fn match_bsd(s: &str) -> Option<BsdTime<'_>> {
    let b = s.as_bytes();
    if b.len() < 4 || !b[0].is_ascii_uppercase() || !b[1].is_ascii_lowercase() || !b[2].is_ascii_lowercase() {
        return None;
    }
    let i = skip_spaces(b, 3);
    if i == 3 {
        return None;
    }
    let (count, end) = digit_run(s, i, s.len());
    if !(1..=2).contains(&count) || b.get(end) != Some(&b' ') {
        return None;
    }
    let day = digits_value(&s[i..end]);
    let (hour, i) = digits_at(s, end + 1, 2)?;
    let (minute, i) = digits_at(s, expect(b, i, b':')?, 2)?;
    let (second, mut i) = digits_at(s, expect(b, i, b':')?, 2)?;
    if b.get(i) == Some(&b'.') {
        let (count, end) = digit_run(s, i + 1, s.len());
        if !(1..=9).contains(&count) {
            return None;
        }
        i = end;
    }
    let spaced = skip_spaces(b, i);
    if spaced == i {
        return None;
    }
    Some(BsdTime { month: &s[..3], day, hour: hour as i64, minute: minute as i64, second: second as i64, end: spaced })
}

/// `[A-Za-z0-9_./-]{1,64}\[(\d{1,10})\]: *` at `at`: (pid digits, end).
fn tag_at(s: &str, at: usize) -> Option<(&str, usize)> {
    let b = s.as_bytes();
    let name =
        b.get(at..)?.iter().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'/' | b'-')).count();
    if !(1..=64).contains(&name) {
        return None;
    }
    let open = expect(b, at + name, b'[')?;
    let (count, end) = digit_run(s, open, s.len());
    if !(1..=10).contains(&count) {
        return None;
    }
    let after = expect(b, expect(b, end, b']')?, b':')?;
    Some((&s[open..end], skip_spaces(b, after)))
}

/// `_SYSLOG_TAG_RE.match(line, at)`: `(?:[^\s\[\]]{1,255} +)?` then the tag.
pub fn match_syslog_tag(s: &str, at: usize) -> Option<(&str, usize)> {
    let b = s.as_bytes();
    let mut pos = at;
    let mut count = 0;
    while pos < b.len() && count <= 255 {
        let c = first_char(&s[pos..]);
        if is_space(c) || c == '[' || c == ']' {
            break;
        }
        pos += c.len_utf8();
        count += 1;
    }
    if (1..=255).contains(&count) && b.get(pos) == Some(&b' ') {
        if let Some(found) = tag_at(s, skip_spaces(b, pos)) {
            return Some(found);
        }
    }
    tag_at(s, at)
}

/// `_PART_RE.match(line, at)`: `\[(\d{1,4})([\\/])(\d{1,4})\] *` as (part, of, end).
pub fn match_part(s: &str, at: usize) -> Option<(&str, &str, usize)> {
    let b = s.as_bytes();
    let start = expect(b, at, b'[')?;
    let (count, end) = digit_run(s, start, s.len());
    if !(1..=4).contains(&count) || !matches!(b.get(end), Some(b'\\') | Some(b'/')) {
        return None;
    }
    let (count_of, end_of) = digit_run(s, end + 1, s.len());
    if !(1..=4).contains(&count_of) {
        return None;
    }
    let close = expect(b, end_of, b']')?;
    Some((&s[start..end], &s[end + 1..end_of], skip_spaces(b, close)))
}

/// `_PID_RE.match(line, at)`: `\[p?(\d{1,10})\] +` as (pid, end).
pub fn match_pid(s: &str, at: usize) -> Option<(i64, usize)> {
    let b = s.as_bytes();
    let mut start = expect(b, at, b'[')?;
    if b.get(start) == Some(&b'p') {
        start += 1;
    }
    let (count, end) = digit_run(s, start, s.len());
    if !(1..=10).contains(&count) {
        return None;
    }
    let close = expect(b, end, b']')?;
    let spaced = skip_spaces(b, close);
    (spaced > close).then(|| (digits_value(&s[start..end]), spaced))
}

/// `_valid_stamp`.
fn valid(stamp: &Stamp) -> bool {
    (1..=12).contains(&stamp.month)
        && (1..=31).contains(&stamp.day)
        && stamp.hour < 24
        && stamp.minute < 60
        && stamp.second < 61
        && stamp.year >= 1
}

/// Days from 1970-01-01 to the first of the month (proleptic Gregorian).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `_epoch_utc`: `calendar.timegm` of a valid stamp (it normalises, e.g. 31 April is 1 May).
pub fn epoch_utc(stamp: &Stamp) -> Option<f64> {
    if !valid(stamp) {
        return None;
    }
    let days = days_from_civil(stamp.year, stamp.month, 1) + stamp.day - 1;
    Some((((days * 24 + stamp.hour) * 60 + stamp.minute) * 60 + stamp.second) as f64)
}

/// `_compute_epoch` of a prefix match, from its UTC epoch.
pub fn prefix_epoch(m: &Prefix<'_>, clock: &mut dyn LocalClock) -> Option<f64> {
    match m.zone {
        Zone::Utc => m.utc_base,
        Zone::East(seconds) => m.utc_base.map(|base| base - seconds as f64),
        Zone::Default if clock.is_utc() => m.utc_base,
        Zone::Default => epoch(&m.stamp, m.zone, clock),
    }
}

/// `_compute_epoch(stamp, zone, default_tz)`.
pub fn epoch(stamp: &Stamp, zone: Zone, clock: &mut dyn LocalClock) -> Option<f64> {
    match zone {
        Zone::Utc => epoch_utc(stamp),
        Zone::East(seconds) => epoch_utc(stamp).map(|base| base - seconds as f64),
        Zone::Default if clock.is_utc() => epoch_utc(stamp),
        Zone::Default => {
            if !valid(stamp) {
                return None;
            }
            let mut text = [0u8; 19];
            let write = |out: &mut [u8], value: i64| {
                let mut v = value;
                for slot in out.iter_mut().rev() {
                    *slot = b'0' + (v % 10) as u8;
                    v /= 10;
                }
            };
            write(&mut text[0..4], stamp.year);
            text[4] = b'-';
            write(&mut text[5..7], stamp.month);
            text[7] = b'-';
            write(&mut text[8..10], stamp.day);
            text[10] = b' ';
            write(&mut text[11..13], stamp.hour);
            text[13] = b':';
            write(&mut text[14..16], stamp.minute);
            text[16] = b':';
            write(&mut text[17..19], stamp.second);
            clock.local_epoch(std::str::from_utf8(&text).ok()?)
        }
    }
}

/// `_bsd_epoch`: a syslog stamp has no year, so take the current one, or last year's if that lies ahead.
pub fn bsd_epoch(time: &BsdTime<'_>, clock: &mut dyn LocalClock) -> Option<f64> {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|name| *name == time.month)? as i64 + 1;
    let now = clock.now();
    let year = clock.current_year() as i64;
    for candidate in [year, year - 1] {
        let stamp =
            Stamp { year: candidate, month, day: time.day, hour: time.hour, minute: time.minute, second: time.second };
        let value = epoch(&stamp, Zone::Default, clock);
        match value {
            None => return None,
            Some(v) if v <= now + 2.0 * 86400.0 => return value,
            _ => {}
        }
    }
    None
}
