//! Test hooks of the native Exim parser: `exim_parse_line_fields` (every `ParsedLine` field, named as in
//! the Python dataclass, to compare with `dataclasses.asdict(parse_line(raw))`) and `exim_parse_file_count`
//! (parse every line of a file in a loop, to time the parser alone).

use std::borrow::Cow;
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use super::parser::{days_in_month, parse_line, parse_line_into, year_of_epoch, UtcClock};
use super::parser_prefix::days_from_civil;
use super::types::{LocalClock, ParsedLine};

/// A fixed offset from UTC (`timezone(timedelta(hours=h))`); zero is Python's `UTC` singleton.
struct FixedClock {
    east_seconds: i64,
}

impl LocalClock for FixedClock {
    fn local_epoch(&mut self, stamp: &str) -> Option<f64> {
        let field = |from: usize, to: usize| stamp.get(from..to).and_then(|part| part.parse::<i64>().ok());
        let (year, month, day) = (field(0, 4)?, field(5, 7)?, field(8, 10)?);
        let (hour, minute, second) = (field(11, 13)?, field(14, 16)?, field(17, 19)?);
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
            return None;
        }
        let days = days_from_civil(year, month, day);
        Some((days * 86400 + hour * 3600 + minute * 60 + second.min(59) - self.east_seconds) as f64)
    }

    fn is_utc(&self) -> bool {
        self.east_seconds == 0
    }

    fn now(&self) -> f64 {
        UtcClock.now()
    }

    fn current_year(&mut self) -> i32 {
        year_of_epoch(self.now() + self.east_seconds as f64)
    }
}

fn text<'v>(value: &'v Option<Cow<'_, str>>) -> Option<&'v str> {
    value.as_deref()
}

/// Every field of `parse_line(raw)` as a dict (`kind` as its value).
#[pyfunction]
#[pyo3(signature = (raw, tz_offset_hours=None))]
pub fn exim_parse_line_fields(py: Python<'_>, raw: &[u8], tz_offset_hours: Option<f64>) -> PyResult<PyObject> {
    // parsed into a line left full by an earlier parse: `parse_line_into` must overwrite all of it
    let mut parsed = parse_line(DIRTY[raw.len() % DIRTY.len()], &mut UtcClock);
    match tz_offset_hours {
        Some(hours) => {
            parse_line_into(raw, &mut FixedClock { east_seconds: (hours * 3600.0).round() as i64 }, &mut parsed)
        }
        None => parse_line_into(raw, &mut UtcClock, &mut parsed),
    }
    fields_dict(py, &parsed)
}

/// Lines that fill many fields, parsed before the line under test (see `exim_parse_line_fields`).
const DIRTY: [&[u8]; 5] = [
    b"2025-03-10 00:00:26.123 +0200 [123] 1trQZG-00000000ULQ-1R2O <= orders@x.com R=1abc-000000-00 H=mail.x.com (helo.x) [77.5.104.174]:29566 I=[10.0.0.1]:25 P=esmtpsa X=TLS1.3:T:128 CV=no A=dovecot_plain:o@x.com U=bob S=5353 id*=5@x.com DKIM=x.com T=\"Tab\\tsub \\\"q\\\" x\" from <a b@c> for a@b.io \"x y\"@z.com c@d.org",
    b"2025-03-10 00:00:16 1trQZ5-00000000UKa-2yf5 => e@gmail.com (p1@x, p2@y) <o@w.io> R=dkim T=remote F=<s@x> P=<r@x> H=alt1.google.com [142.250.43.108]:25* I=[1.2.3.4]:587 X=TLS1.3:TLS_AES_256_GCM_SHA384:256 CV=yes K DN=\"CN=x y\" C=\"250 2.0.0 OK  1741564816 gsmtp\" QT=3s DT=1s",
    b"2025-03-10 00:00:26 1trQZG-00000000ULQ-1R2O == john@gmail.con R=dnslookup T=remote_smtp defer (-44) H=mx.gmail.con [1.2.3.4]: SMTP error from remote mail server after RCPT TO:<john@gmail.con>: 451 4.7.1 Greylisted DT=3s",
    b"2025-03-10 00:00:15 1trQZ5-00000000UKa-2yf5 H=mail.l.com (h) [91.20.248.57]:63907 Warning: \"SpamAssassin as wrightsa detected OUTGOING message as spam (11.4)\"",
    b"2025-03-10 00:00:15 1trQZ5-00000000UKa-2yf5 ** a\xff@b.c <x\xfe@y> R=r T=t H=h [1.1.1.1]: 550 5.1.1 no \xc3 such user",
];

fn fields_dict(py: Python<'_>, p: &ParsedLine<'_>) -> PyResult<PyObject> {
    let d = PyDict::new(py);
    d.set_item("kind", p.kind.as_str())?;
    d.set_item("raw", p.raw.as_ref())?;
    d.set_item("time", p.time)?;
    d.set_item("msgid", text(&p.msgid))?;
    d.set_item("pid", p.pid)?;
    d.set_item("address", text(&p.address))?;
    d.set_item("parents", PyList::new(py, p.parents.iter().map(|v| v.as_ref()))?)?;
    d.set_item("sender", text(&p.sender))?;
    d.set_item("recipients", PyList::new(py, p.recipients.iter().map(|v| v.as_ref()))?)?;
    d.set_item("router", text(&p.router))?;
    d.set_item("transport", text(&p.transport))?;
    d.set_item("bounce_parent", text(&p.bounce_parent))?;
    d.set_item("host", text(&p.host))?;
    d.set_item("helo", text(&p.helo))?;
    d.set_item("host_ip", text(&p.host_ip))?;
    d.set_item("host_port", p.host_port)?;
    d.set_item("host_reused", p.host_reused)?;
    d.set_item("interface_ip", text(&p.interface_ip))?;
    d.set_item("user", text(&p.user))?;
    d.set_item("auth", text(&p.auth))?;
    d.set_item("protocol", text(&p.protocol))?;
    d.set_item("size", p.size)?;
    d.set_item("subject", text(&p.subject))?;
    d.set_item("message_id_header", text(&p.message_id_header))?;
    d.set_item("tls", text(&p.tls))?;
    d.set_item("confirmation", text(&p.confirmation))?;
    d.set_item("errno", p.errno)?;
    d.set_item("error", text(&p.error))?;
    d.set_item("smtp_code", p.smtp_code)?;
    d.set_item("enhanced_code", text(&p.enhanced_code))?;
    d.set_item("smtp_phase", text(&p.smtp_phase))?;
    d.set_item("spam_score", p.spam_score)?;
    d.set_item("is_spam", p.is_spam)?;
    d.set_item("cpanel_domain", text(&p.cpanel_domain))?;
    d.set_item("detail", text(&p.detail))?;
    let extra = PyDict::new(py);
    for (key, value) in &p.extra {
        extra.set_item(key.as_ref(), value.as_ref())?;
    }
    d.set_item("extra", extra)?;
    Ok(d.into_any().unbind())
}

/// Parse every line of a file (split on "\n") `rounds` times into one reused `ParsedLine`, as the driver
/// does: (lines per round, seconds in all, a checksum of the kinds so the work is not optimised away).
/// With `check`, each line is parsed both into the reused line and afresh instead, and the third value
/// is how many lines differ (`parse_into_check`).
#[pyfunction]
#[pyo3(signature = (path, rounds=1, floor=false, check=false))]
pub fn exim_parse_file_count(
    py: Python<'_>,
    path: &str,
    rounds: usize,
    floor: bool,
    check: bool,
) -> PyResult<(usize, f64, usize)> {
    let data = std::fs::read(path)?;
    if check {
        return parse_into_check(py, &data);
    }
    py.allow_threads(|| {
        let mut lines = 0;
        let mut checksum = 0usize;
        let mut clock = UtcClock;
        let started = Instant::now();
        let mut parsed = ParsedLine::new(super::types::LineKind::Unknown, Cow::Borrowed(""));
        for _ in 0..rounds.max(1) {
            lines = 0;
            let mut start = 0;
            for end in memchr::memchr_iter(b'\n', &data).chain(std::iter::once(data.len())) {
                let line = &data[start..end];
                start = end + 1;
                if floor {
                    // the floor: what every line costs before any parsing (decode, build, drop)
                    parsed = ParsedLine::new(
                        super::types::LineKind::Unknown,
                        Cow::Borrowed(std::str::from_utf8(line).unwrap_or("")),
                    )
                } else {
                    // as the driver does: one ParsedLine for every line of the buffer
                    parse_line_into(line, &mut clock, &mut parsed)
                }
                checksum = checksum.wrapping_add(parsed.kind.index() + parsed.extra.len());
                lines += 1;
            }
        }
        Ok((lines, started.elapsed().as_secs_f64(), checksum))
    })
}

/// Parse every line of a file in turn into one reused `ParsedLine` and compare each result with a fresh
/// `parse_line` (their `Debug` text): how many lines differ, and the first few of them.
/// (`exim_parse_file_count(path, check=True)`; the first lines that differ go to stderr.)
fn parse_into_check(py: Python<'_>, data: &[u8]) -> PyResult<(usize, f64, usize)> {
    py.allow_threads(|| {
        let mut clock = UtcClock;
        let mut reused = ParsedLine::new(super::types::LineKind::Unknown, Cow::Borrowed(""));
        let (mut lines, mut bad) = (0, 0);
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', data).chain(std::iter::once(data.len())) {
            let line = &data[start..end];
            start = end + 1;
            parse_line_into(line, &mut clock, &mut reused);
            let fresh = parse_line(line, &mut clock);
            if format!("{reused:?}") != format!("{fresh:?}") {
                bad += 1;
                if bad <= 5 {
                    eprintln!("differs: {}", String::from_utf8_lossy(line));
                }
            }
            lines += 1;
        }
        Ok((lines, 0.0, bad))
    })
}
