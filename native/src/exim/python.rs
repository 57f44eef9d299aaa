//! The Python face of the native Exim pipeline: `exim_parse_files`, called by `trackdelivery parse`.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::PathBuf;
use std::rc::Rc;

use pyo3::exceptions::{PyBrokenPipeError, PyOSError, PyValueError};
use pyo3::prelude::*;

use super::correlator::Correlator;
use super::driver::{run, Input, Run, Sink};
use super::encode::SCHEMA_VERSION;
use super::parser::UtcClock;
use super::reasons::Classifier;
use super::retry::RetryRules;
use super::table;
use super::types::LocalClock;

/// Grace and staleness of the offline correlator (the Python `Correlator` defaults).
const GRACE_SECONDS: f64 = 3600.0;
const STALE_SECONDS: f64 = 8.0 * 86400.0;
const LOCAL_CACHE_LIMIT: usize = 8192;

/// Times without an offset in a zone other than UTC, computed by a Python function and remembered.
struct PythonClock<'py> {
    local_epoch: Bound<'py, PyAny>,
    year: i32,
    now: f64,
    cache: HashMap<String, Option<f64>>,
}

impl LocalClock for PythonClock<'_> {
    fn local_epoch(&mut self, stamp: &str) -> Option<f64> {
        if let Some(known) = self.cache.get(stamp) {
            return *known;
        }
        let value =
            self.local_epoch.call1((stamp,)).ok().and_then(|value| value.extract::<Option<f64>>().ok()).flatten();
        if self.cache.len() > LOCAL_CACHE_LIMIT {
            self.cache.clear();
        }
        self.cache.insert(stamp.to_owned(), value);
        value
    }

    fn is_utc(&self) -> bool {
        false
    }

    fn now(&self) -> f64 {
        self.now
    }

    fn current_year(&mut self) -> i32 {
        self.year
    }
}

/// A Python binary stream's `write`, called once per output chunk with a read-only memoryview of
/// the chunk (no copy into a bytes object); the view is released once `write` returns, so a stream
/// that kept it gets an error on use instead of reading freed memory. If the view cannot be released
/// (the stream holds a buffer export of it), the memory is never freed.
struct PythonWriter<'py> {
    write: Bound<'py, PyAny>,
}

impl PythonWriter<'_> {
    /// `write(view)`'s outcome, and whether the view could not be released (the stream holds it).
    fn write_view(&mut self, bytes: &[u8]) -> (io::Result<()>, bool) {
        let py = self.write.py();
        let size = match pyo3::ffi::Py_ssize_t::try_from(bytes.len()) {
            Ok(size) => size,
            Err(error) => return (Err(io::Error::other(error)), false),
        };
        // SAFETY: the view is read-only over `bytes`, which the caller neither changes nor frees before
        // the view is released below, or ever when it cannot be released (reported as kept).
        let view = unsafe {
            let pointer =
                pyo3::ffi::PyMemoryView_FromMemory(bytes.as_ptr().cast_mut().cast(), size, pyo3::ffi::PyBUF_READ);
            match Bound::from_owned_ptr_or_err(py, pointer) {
                Ok(view) => view,
                Err(error) => return (Err(python_io_error(py, error)), false),
            }
        };
        let written = self.write.call1((&view,)).map(drop).map_err(|error| python_io_error(py, error));
        (written, view.call_method0("release").is_err())
    }
}

impl Sink for PythonWriter<'_> {
    fn write_chunk(&mut self, chunk: &mut Vec<u8>) -> io::Result<()> {
        let (written, kept) = self.write_view(chunk);
        if kept {
            std::mem::forget(std::mem::take(chunk));
        }
        chunk.clear();
        written
    }

    fn write_kept(&mut self, bytes: &[u8]) -> io::Result<bool> {
        let (written, kept) = self.write_view(bytes);
        written.map(|()| kept)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A Python binary stream's `read(n)` as an `io::Read` (stdin, so that click's runner can feed it).
struct PythonReader<'py> {
    read: Bound<'py, PyAny>,
}

impl Read for PythonReader<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let py = self.read.py();
        let chunk = self.read.call1((buffer.len(),)).map_err(|error| python_io_error(py, error))?;
        let data: &[u8] = chunk.extract().map_err(|error| python_io_error(py, error))?;
        let size = data.len().min(buffer.len());
        buffer[..size].copy_from_slice(&data[..size]);
        Ok(size)
    }
}

fn python_io_error(py: Python<'_>, error: PyErr) -> io::Error {
    let kind =
        if error.is_instance_of::<PyBrokenPipeError>(py) { io::ErrorKind::BrokenPipe } else { io::ErrorKind::Other };
    io::Error::new(kind, error.to_string())
}

/// Parse Exim main logs into JSON lines on stdout, as `trackdelivery parse --format jsonl` does.
///
/// `inputs` are (path or "-", server) pairs; `write(bytes)` takes the output, `read(n)` gives stdin.
/// `local_epoch(stamp)` converts times without an offset
/// when the default zone is not UTC (None: UTC), with `now` and `year` for syslog stamps without a year.
/// `progress(index, bytes)` is called now and then. Returns (lines, [(kind, count)], [(type, count)]).
///
/// The reason rules and the default retry rules (used when `retry_rules` is None) come from the engine
/// table: the file `engine_table = (path, root)` when given (`StaleEngineTable` when it is older than
/// its sources under `root`), else rendered from the Python modules. `schema_version` None: the table's
/// schema is the one checked.
#[pyfunction]
#[pyo3(signature = (inputs, events, retry_rules, schema_version, write, read=None, local_epoch=None, now=0.0, year=0, progress=None, engine_table=None))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn exim_parse_files(
    py: Python<'_>,
    inputs: Vec<(String, String)>,
    events: bool,
    retry_rules: Option<&Bound<'_, PyAny>>,
    schema_version: Option<i64>,
    write: Bound<'_, PyAny>,
    read: Option<Bound<'_, PyAny>>,
    local_epoch: Option<Bound<'_, PyAny>>,
    now: f64,
    year: i32,
    progress: Option<Bound<'_, PyAny>>,
    engine_table: Option<(PathBuf, PathBuf)>,
) -> PyResult<(u64, Vec<(&'static str, u64)>, Vec<(&'static str, u64)>)> {
    if let Some(expected) = schema_version.filter(|&expected| expected != SCHEMA_VERSION) {
        return Err(PyValueError::new_err(format!(
            "the native parser writes events of schema {SCHEMA_VERSION}, Python expects {expected}: rebuild native/"
        )));
    }
    let table = match &engine_table {
        Some((path, root)) => table::load_current(path, root)?,
        None => table::from_python(py)?,
    };
    let retry_rules = match retry_rules {
        Some(rules) if !rules.is_none() => RetryRules::from_python(rules)?,
        _ => table.retry,
    };
    let inputs: Vec<Input> =
        inputs.into_iter().map(|(path, server)| Input { path, server: Rc::from(server.as_str()) }).collect();
    let mut correlator = Correlator::new(retry_rules, GRACE_SECONDS, STALE_SECONDS, false);
    let mut classifier = Classifier::from_table(table.rules, table.hints)?;
    let mut utc = UtcClock;
    let mut python_clock;
    let clock: &mut dyn LocalClock = match local_epoch {
        Some(function) => {
            python_clock = PythonClock { local_epoch: function, year, now, cache: HashMap::new() };
            &mut python_clock
        }
        None => &mut utc,
    };
    let mut report = |index: usize, taken: u64| {
        if let Some(callback) = progress.as_ref() {
            let _ = callback.call1((index, taken));
        }
    };
    let mut settings = Run {
        events,
        correlator: &mut correlator,
        classifier: &mut classifier,
        clock,
        progress: if progress.is_some() { Some(&mut report) } else { None },
    };
    let mut stdout = PythonWriter { write };
    let mut stdin = read.map(|read| PythonReader { read });
    let stdin: Option<&mut dyn Read> = stdin.as_mut().map(|reader| reader as &mut dyn Read);
    let summary = run(&mut settings, &inputs, stdin, &mut stdout).map_err(|failure| match failure.path {
        _ if failure.error.kind() == io::ErrorKind::BrokenPipe => PyBrokenPipeError::new_err(failure.error.to_string()),
        Some(path) => PyOSError::new_err(format!("cannot read {path}: {}", failure.error)),
        None => PyOSError::new_err(format!("cannot write the output: {}", failure.error)),
    })?;
    Ok((
        summary.lines,
        summary.kinds.into_iter().map(|(kind, count)| (kind.as_str(), count)).collect(),
        summary.event_types.into_iter().map(|(kind, count)| (kind.as_str(), count)).collect(),
    ))
}

/// `trackdelivery.events.make_event_id`, natively (for tests).
#[pyfunction]
#[pyo3(signature = (server, msgid, recipient, kind, time, attempt=0))]
pub fn exim_event_id(
    server: &str,
    msgid: Option<&str>,
    recipient: Option<&str>,
    kind: &str,
    time: f64,
    attempt: i64,
) -> String {
    super::types::make_event_id(server, msgid, recipient, kind, time, attempt)
}
