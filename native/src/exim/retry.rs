//! Exim retry rules: the computations of `processors/exim/retry.py` (`give_up`, `next_retry`,
//! `schedule`). The spec text is parsed in Python; `RetryRules::from_python` reads the parsed rules, and
//! the engine table (`table.rs`) holds the default ones.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// `_MAX_STEPS`: attempts walked by one computation.
const MAX_STEPS: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleKind {
    Fixed,
    Geometric,
    Heuristic,
}

/// `processors.exim.retry.RetryRule`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryRule {
    pub kind: RuleKind,
    pub cutoff: f64,
    pub interval: f64,
    pub factor: f64,
}

impl RetryRule {
    /// `rule.kind == "F" or rule.factor <= 1.0`: a fixed interval.
    fn is_uniform(&self) -> bool {
        self.kind == RuleKind::Fixed || self.factor <= 1.0
    }
}

/// `processors.exim.retry.RetryRules` (never empty).
#[derive(Clone, Debug, PartialEq)]
pub struct RetryRules {
    rules: Vec<RetryRule>,
    interval_max: f64,
    give_up_after: f64,
    /// The first rule with the largest cutoff (`max(self.rules, key=cutoff)`).
    last_rule: RetryRule,
}

/// Python's `min(a, b)`: `a` unless `b < a`.
fn py_min(a: f64, b: f64) -> f64 {
    if b < a {
        b
    } else {
        a
    }
}

/// Python's `max(a, b)`: `a` unless `b > a`.
fn py_max(a: f64, b: f64) -> f64 {
    if b > a {
        b
    } else {
        a
    }
}

impl RetryRules {
    /// Rules as `RetryRules.parse` leaves them; Err when there is none.
    pub fn new(rules: Vec<RetryRule>, interval_max: f64) -> Result<Self, &'static str> {
        let first = *rules.first().ok_or("no retry rules given")?;
        let mut last_rule = first;
        for rule in &rules[1..] {
            if rule.cutoff > last_rule.cutoff {
                last_rule = *rule;
            }
        }
        Ok(RetryRules { give_up_after: last_rule.cutoff, rules, interval_max, last_rule })
    }

    /// `DEFAULT_RETRY_RULES`: `F,2h,15m; G,16h,1h,1.5; F,4d,6h`, interval max 24 h.
    pub fn default_rules() -> Self {
        let rule = |kind, cutoff, interval, factor| RetryRule { kind, cutoff, interval, factor };
        RetryRules::new(
            vec![
                rule(RuleKind::Fixed, 7200.0, 900.0, 1.0),
                rule(RuleKind::Geometric, 57600.0, 3600.0, 1.5),
                rule(RuleKind::Fixed, 345600.0, 21600.0, 1.0),
            ],
            86400.0,
        )
        .expect("the default rules are not empty")
    }

    /// Reads a `processors.exim.retry.RetryRules` instance (its `rules` and `interval_max`).
    pub fn from_python(obj: &Bound<PyAny>) -> PyResult<RetryRules> {
        let interval_max: f64 = obj.getattr("interval_max")?.extract()?;
        let mut rules = Vec::new();
        for item in obj.getattr("rules")?.try_iter()? {
            let item = item?;
            let kind: String = item.getattr("kind")?.extract()?;
            let kind = match kind.as_str() {
                "F" => RuleKind::Fixed,
                "G" => RuleKind::Geometric,
                "H" => RuleKind::Heuristic,
                other => return Err(PyValueError::new_err(format!("unknown retry rule type {other:?}"))),
            };
            rules.push(RetryRule {
                kind,
                cutoff: item.getattr("cutoff")?.extract()?,
                interval: item.getattr("interval")?.extract()?,
                factor: item.getattr("factor")?.extract()?,
            });
        }
        RetryRules::new(rules, interval_max).map_err(PyValueError::new_err)
    }

    /// Seconds after the first failure after which a failing attempt bounces.
    #[allow(dead_code)]
    pub fn give_up_after(&self) -> f64 {
        self.give_up_after
    }

    /// When Exim stops retrying.
    pub fn give_up(&self, first_failure: f64) -> f64 {
        first_failure + self.give_up_after
    }

    /// Estimate of the next attempt after a failed attempt at `last_attempt`; None when past give-up.
    pub fn next_retry(&self, first_failure: f64, last_attempt: f64) -> Option<f64> {
        if !(first_failure.is_finite() && last_attempt.is_finite()) {
            return None;
        }
        let last_attempt = py_max(last_attempt, first_failure);
        if last_attempt - first_failure > self.give_up_after {
            return None;
        }
        let (mut previous_try, mut previous_next) = (first_failure, first_failure);
        self.attempts(first_failure, last_attempt, true, |attempt, predicted| {
            previous_try = attempt;
            previous_next = predicted;
        });
        if previous_try == last_attempt {
            return Some(previous_next);
        }
        Some(self.next_after(first_failure, last_attempt, previous_try, previous_next))
    }

    /// Retry times after `first_failure` up to `until` and the give-up time, for a punctual queue runner.
    pub fn schedule(&self, first_failure: f64, until: f64) -> Vec<f64> {
        let limit = py_min(until, self.give_up(first_failure));
        let mut times = Vec::new();
        self.attempts(first_failure, limit, false, |attempt, _| {
            if attempt > first_failure {
                times.push(attempt);
            }
        });
        times
    }

    fn rule_at(&self, elapsed: f64) -> Option<&RetryRule> {
        self.rules.iter().find(|rule| elapsed <= rule.cutoff)
    }

    /// Exim's retry_update() for a failure at `now` given the previous attempt and its prediction.
    fn next_after(&self, first_failure: f64, now: f64, previous_try: f64, previous_next: f64) -> f64 {
        let rule = self.rule_at(now - first_failure).unwrap_or(&self.last_rule);
        let gap = if rule.is_uniform() {
            rule.interval
        } else {
            let last_gap = py_min(previous_next - previous_try, now - previous_try);
            if last_gap < rule.interval {
                rule.interval
            } else {
                last_gap * rule.factor
            }
        };
        now + py_min(gap, self.interval_max)
    }

    /// `_attempts`: calls `visit(attempt, predicted)` for the punctual schedule up to `until`.
    fn attempts(&self, first_failure: f64, until: f64, skip_uniform: bool, mut visit: impl FnMut(f64, f64)) {
        let mut attempt = first_failure;
        let mut predicted = self.next_after(first_failure, attempt, attempt, attempt);
        for _ in 0..MAX_STEPS {
            if attempt > until {
                return;
            }
            visit(attempt, predicted);
            if predicted - first_failure > self.give_up_after {
                return;
            }
            let gap = predicted - attempt;
            if skip_uniform && gap > 0.0 {
                if let Some(rule) = self.rule_at(attempt - first_failure).filter(|rule| rule.is_uniform()) {
                    let end = py_min(first_failure + rule.cutoff, until);
                    let steps = ((end - attempt) / gap).floor() - 1.0;
                    if steps > 1.0 {
                        attempt += steps * gap;
                        predicted = attempt + gap;
                        continue;
                    }
                }
            }
            let following = self.next_after(first_failure, predicted, attempt, predicted);
            attempt = predicted;
            predicted = following;
        }
    }
}

impl Default for RetryRules {
    fn default() -> Self {
        RetryRules::default_rules()
    }
}
