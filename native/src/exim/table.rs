//! The engine table: the reason rules, their hints and the default retry rules as the JSON that
//! `processors/exim/engine_table.py` writes. `trackdelivery parse` reads the file kept beside that
//! module (`load_current`), which spares it importing the Python modules; every other user renders the
//! table from the modules (`from_python`). Either way the same reader builds the classifier.

use std::path::Path;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use serde_json::Value;

use super::correlator::blake2b_96;
use super::encode::SCHEMA_VERSION;
use super::reasons::{
    TableRule, COMMAND_PHASES, KINDS, LMTP_ERROR, MAX_SCAN, OTHER_PHASE_MARKERS, PHASES, PYTHON_REGEXES, REMOTE_ERROR,
};
use super::retry::{RetryRule, RetryRules, RuleKind};
use super::types::{Reason, Text};

pyo3::create_exception!(
    trackdelivery_native,
    StaleEngineTable,
    pyo3::exceptions::PyException,
    "The engine table file is missing, unreadable or older than a module it was written from."
);

/// What the classifier and the correlator take from the table.
pub struct EngineTable {
    pub rules: Vec<TableRule>,
    /// By `Reason::index`.
    pub hints: Vec<Text>,
    pub retry: RetryRules,
}

fn table_error(message: String) -> PyErr {
    PyValueError::new_err(format!("processors.exim.engine_table: {message}"))
}

/// The table as `processors.exim.engine_table.render()` writes it from the Python modules.
pub fn from_python(py: Python<'_>) -> PyResult<EngineTable> {
    let text: String = py.import("processors.exim.engine_table")?.call_method0("render")?.extract()?;
    read(&serde_json::from_str(&text).map_err(|error| table_error(error.to_string()))?)
}

/// The table in the file at `path` when every source it names (relative to `root`) still has the digest
/// the file records; `StaleEngineTable` when the file or a source cannot be read, or differs.
pub fn load_current(path: &Path, root: &Path) -> PyResult<EngineTable> {
    let stale = |why: String| StaleEngineTable::new_err(format!("{}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|error| stale(error.to_string()))?;
    let table: Value = serde_json::from_str(&text).map_err(|error| stale(error.to_string()))?;
    let sources = table.get("sources").and_then(Value::as_object).ok_or_else(|| stale("no sources".into()))?;
    for (name, recorded) in sources {
        let source = std::fs::read(root.join(name)).map_err(|error| stale(format!("{name}: {error}")))?;
        if recorded.as_str() != Some(digest(&source).as_str()) {
            return Err(stale(format!("{name} has changed since the table was written")));
        }
    }
    read(&table)
}

/// BLAKE2b with 12 bytes of output, in hex (Python: `hashlib.blake2b(data, digest_size=12).hexdigest()`).
pub fn digest(data: &[u8]) -> String {
    blake2b_96(data).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Reads the table; a value of the wrong shape, a schema or a constant mirrored in `reasons.rs` that
/// differs is an error.
fn read(table: &Value) -> PyResult<EngineTable> {
    let schema = table.get("schema_version").and_then(Value::as_i64);
    if schema != Some(SCHEMA_VERSION) {
        return Err(table_error(format!(
            "events of schema {schema:?}; the native engine writes schema {SCHEMA_VERSION}: rebuild native/"
        )));
    }
    check_mirrored(field(table, "mirrored")?)?;
    let rules = array(table, "rules")?.iter().map(read_rule).collect::<PyResult<Vec<_>>>()?;
    Ok(EngineTable { rules, hints: read_hints(field(table, "hints")?)?, retry: read_retry(field(table, "retry")?)? })
}

fn field<'v>(value: &'v Value, name: &str) -> PyResult<&'v Value> {
    value.get(name).ok_or_else(|| table_error(format!("no {name:?}")))
}

fn array<'v>(value: &'v Value, name: &str) -> PyResult<&'v Vec<Value>> {
    field(value, name)?.as_array().ok_or_else(|| table_error(format!("{name:?} is not a list")))
}

fn string(value: &Value, name: &str) -> PyResult<String> {
    field(value, name)?.as_str().map(str::to_owned).ok_or_else(|| table_error(format!("{name:?} is not a string")))
}

fn number(value: &Value, name: &str) -> PyResult<f64> {
    field(value, name)?.as_f64().ok_or_else(|| table_error(format!("{name:?} is not a number")))
}

fn strings(value: &Value, name: &str) -> PyResult<Vec<String>> {
    array(value, name)?
        .iter()
        .map(|item| item.as_str().map(str::to_owned).ok_or_else(|| table_error(format!("{name:?}: not a string"))))
        .collect()
}

fn ints(value: &Value, name: &str) -> PyResult<Vec<i64>> {
    let mut values = array(value, name)?
        .iter()
        .map(|item| item.as_i64().ok_or_else(|| table_error(format!("{name:?}: not an integer"))))
        .collect::<PyResult<Vec<_>>>()?;
    values.sort_unstable();
    Ok(values)
}

fn read_rule(rule: &Value) -> PyResult<TableRule> {
    let name = string(rule, "name")?;
    let reason_name = string(rule, "reason")?;
    let reason = Reason::from_name(&reason_name)
        .ok_or_else(|| table_error(format!("rule {name}: unknown reason {reason_name:?}")))?;
    let source = match field(rule, "pattern")? {
        Value::Null => None,
        Value::String(source) => Some(source.clone()),
        _ => return Err(table_error(format!("rule {name}: the pattern is not a string"))),
    };
    let enhanced = array(rule, "enhanced")?
        .iter()
        .map(|pattern| {
            let parts = pattern.as_array().ok_or_else(|| table_error(format!("rule {name}: enhanced pattern")))?;
            parts
                .iter()
                .map(|part| match part {
                    Value::Null => Ok(None),
                    _ => part.as_i64().map(Some).ok_or_else(|| table_error(format!("rule {name}: enhanced part"))),
                })
                .collect::<PyResult<Vec<_>>>()
        })
        .collect::<PyResult<Vec<_>>>()?;
    let without_code =
        field(rule, "without_code")?.as_bool().ok_or_else(|| table_error(format!("rule {name}: without_code")))?;
    Ok(TableRule {
        code_classes: ints(rule, "code_classes")?,
        codes: ints(rule, "codes")?,
        enhanced,
        errnos: ints(rule, "errnos")?,
        phases: strings(rule, "phases")?,
        kinds: strings(rule, "kinds")?,
        without_code,
        name,
        reason,
        source,
    })
}

fn read_hints(hints: &Value) -> PyResult<Vec<Text>> {
    Reason::ALL
        .iter()
        .map(|reason| {
            hints
                .get(reason.as_str())
                .and_then(Value::as_str)
                .map(Text::from)
                .ok_or_else(|| table_error(format!("HINTS has no hint for {}", reason.as_str())))
        })
        .collect()
}

fn read_retry(retry: &Value) -> PyResult<RetryRules> {
    let rules = array(retry, "rules")?
        .iter()
        .map(|rule| {
            let kind = match string(rule, "kind")?.as_str() {
                "F" => RuleKind::Fixed,
                "G" => RuleKind::Geometric,
                "H" => RuleKind::Heuristic,
                other => return Err(table_error(format!("unknown retry rule type {other:?}"))),
            };
            Ok(RetryRule {
                kind,
                cutoff: number(rule, "cutoff")?,
                interval: number(rule, "interval")?,
                factor: number(rule, "factor")?,
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    RetryRules::new(rules, number(retry, "interval_max")?).map_err(|why| table_error(why.into()))
}

/// Refuses a table whose module constants differ from the ones mirrored in `reasons.rs`.
fn check_mirrored(mirrored: &Value) -> PyResult<()> {
    let sorted = |mut values: Vec<String>| {
        values.sort();
        values
    };
    let want = |values: &[&str]| sorted(values.iter().map(|value| value.to_string()).collect());
    let command_phases = array(mirrored, "command_phases")?
        .iter()
        .map(|pair| match pair.as_array().map(Vec::as_slice) {
            Some([Value::String(prefix), Value::String(phase)]) => Ok((prefix.clone(), phase.clone())),
            _ => Err(table_error("command_phases: not a list of pairs".into())),
        })
        .collect::<PyResult<Vec<_>>>()?;
    let same = field(mirrored, "max_scan")?.as_u64() == Some(MAX_SCAN as u64)
        && sorted(strings(mirrored, "kinds")?) == want(&KINDS)
        && sorted(strings(mirrored, "phases")?) == want(&PHASES)
        && string(mirrored, "remote_error")? == REMOTE_ERROR
        && string(mirrored, "lmtp_error")? == LMTP_ERROR
        && strings(mirrored, "other_phase_markers")? == OTHER_PHASE_MARKERS
        && command_phases.iter().map(|(a, b)| (a.as_str(), b.as_str())).eq(COMMAND_PHASES.iter().copied());
    if !same {
        return Err(table_error("a constant mirrored in reasons.rs has changed".into()));
    }
    let regexes = field(mirrored, "regexes")?;
    for (name, source) in PYTHON_REGEXES {
        if regexes.get(name).and_then(Value::as_str) != Some(source) {
            return Err(table_error(format!("{name} has changed; reasons.rs mirrors {source:?}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_blake2b_96_in_hex() {
        // hashlib.blake2b(b"abc", digest_size=12).hexdigest()
        assert_eq!(digest(b"abc"), "48b4f1f9042a2d5033b382b5");
    }
}
