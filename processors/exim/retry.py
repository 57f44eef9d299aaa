"""Exim retry rules (spec chapter "Retry configuration"): parse them and predict retry and give-up times.

A rule set such as ``F,2h,15m; G,16h,1h,1.5; F,4d,6h`` is a list of rules, each with a cutoff measured
from the FIRST failure. At a failed attempt Exim takes the first rule whose cutoff has not passed and
computes the next retry time from it:

* ``F,cutoff,interval``: the attempt time plus the interval;
* ``G,cutoff,interval,factor``: the previous gap (the smaller of the predicted and the actual one)
  times the factor, but at least the interval;
* ``H,cutoff,interval,factor``: a random time between the interval and the ``G`` value (estimated
  here with the ``G`` value);

all capped by ``retry_interval_max`` (24 hours by default); a multiplier of 1 or less is taken as a
fixed interval. When an attempt fails after the largest cutoff, the address is bounced with "retry
timeout exceeded": that cutoff is the give-up time.

Real Exim retries only when a queue runner (or a new message to the same host) reaches the address
after the retry time, so every time computed here is a lower bound of when the attempt happens.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["DEFAULT_RETRY_RULES", "DEFAULT_RETRY_SPEC", "RetryRule", "RetryRules", "parse_duration"]

DEFAULT_RETRY_SPEC = "F,2h,15m; G,16h,1h,1.5; F,4d,6h"
DEFAULT_RETRY_INTERVAL_MAX = 24 * 3600.0

_MAX_SPEC = 1000
_MAX_RULES = 32
_MAX_STEPS = 100_000  # attempts walked by one computation; only absurd rule sets get near it
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True, slots=True)
class RetryRule:
    kind: str  # "F", "G" or "H"
    cutoff: float  # seconds after the first failure
    interval: float  # seconds
    factor: float = 1.0  # G and H only


def parse_duration(text: str, position: int = 0) -> float:
    """Exim time value: ``90``, ``15m``, ``1d12h``, ``2w`` (s m h d w; a bare number is seconds).

    ``position`` is where ``text`` starts in a larger spec, for the error message.
    """
    stripped = text.strip()
    offset = position + (len(text) - len(text.lstrip()))
    if not stripped:
        raise ValueError(f"empty time value at position {offset}")
    total = 0
    index = 0
    while index < len(stripped):
        start = index
        while index < len(stripped) and stripped[index].isascii() and stripped[index].isdigit():
            index += 1
        if start == index:
            raise ValueError(f"expected a number at position {offset + index} in time value {stripped!r}")
        if index - start > 12:
            raise ValueError(f"time value too large at position {offset + start}: {stripped!r}")
        number = int(stripped[start:index])
        if index == len(stripped):
            total += number  # trailing bare number: seconds
            break
        unit = stripped[index].lower()
        if unit not in _UNITS:
            raise ValueError(
                f"unknown time unit {stripped[index]!r} at position {offset + index} in {stripped!r} "
                "(use s, m, h, d or w)"
            )
        total += number * _UNITS[unit]
        index += 1
    return float(total)


def _parse_factor(text: str, position: int) -> float:
    stripped = text.strip()
    try:
        factor = float(stripped)
    except ValueError:
        factor = math.nan
    if not math.isfinite(factor) or factor <= 0 or len(stripped) > 20:
        raise ValueError(f"bad multiplier {stripped!r} at position {position}: expected a number like 1.5")
    return factor


@dataclass(frozen=True, slots=True)
class RetryRules:
    rules: tuple[RetryRule, ...]
    interval_max: float = DEFAULT_RETRY_INTERVAL_MAX  # Exim's retry_interval_max

    @classmethod
    def parse(cls, spec: str, *, interval_max: float = DEFAULT_RETRY_INTERVAL_MAX) -> RetryRules:
        """Parse ``"F,2h,15m; G,16h,1h,1.5; F,4d,6h"``; raises ValueError naming the position of the fault."""
        if not isinstance(spec, str):
            raise ValueError("retry rules must be a string")
        if len(spec) > _MAX_SPEC:
            raise ValueError(f"retry rules longer than {_MAX_SPEC} characters")
        if not spec.strip():
            raise ValueError("no retry rules given")
        rules: list[RetryRule] = []
        position = 0
        chunks = spec.split(";")
        for number, chunk in enumerate(chunks):
            if chunk.strip():
                rules.append(_parse_rule(chunk, position))
            elif not (rules and number == len(chunks) - 1):  # one trailing ";" is tolerated
                raise ValueError(f"empty retry rule at position {position} in {spec!r}")
            position += len(chunk) + 1
        if len(rules) > _MAX_RULES:
            raise ValueError(f"more than {_MAX_RULES} retry rules")
        if not interval_max > 0:
            raise ValueError("interval_max must be positive")
        return cls(tuple(rules), float(interval_max))

    @property
    def give_up_after(self) -> float:
        """Seconds after the first failure after which a failing attempt bounces."""
        return max(rule.cutoff for rule in self.rules)

    def give_up(self, first_failure: float) -> float:
        """When Exim stops retrying: the next attempt after this time bounces ("retry timeout exceeded")."""
        return first_failure + self.give_up_after

    def next_retry(self, first_failure: float, last_attempt: float) -> float | None:
        """Estimate of the next attempt after a failed attempt at ``last_attempt``; None when past give-up.

        The returned time may lie after ``give_up``: that attempt, if it fails, bounces. The gap used by
        ``G``/``H`` rules is taken from the schedule a punctual queue runner would have produced.
        """
        if not (math.isfinite(first_failure) and math.isfinite(last_attempt)):
            return None
        last_attempt = max(last_attempt, first_failure)
        if last_attempt - first_failure > self.give_up_after:
            return None
        previous_try, previous_next = first_failure, first_failure
        for attempt, predicted in self._attempts(first_failure, until=last_attempt, skip_uniform=True):
            previous_try, previous_next = attempt, predicted
        if previous_try == last_attempt:  # the failure at last_attempt itself is the latest walked
            return previous_next
        return self._next_after(first_failure, last_attempt, previous_try, previous_next)

    def schedule(self, first_failure: float, until: float) -> list[float]:
        """Retry times after ``first_failure`` (exclusive) up to ``until`` and the give-up time (inclusive),
        if a queue runner ran exactly on time and every attempt failed. The attempt that follows the
        last one, if any, is the one that bounces."""
        limit = min(until, self.give_up(first_failure))
        return [attempt for attempt, _ in self._attempts(first_failure, until=limit) if attempt > first_failure]

    # -- internals ------------------------------------------------------------------------------------------

    def _rule_at(self, elapsed: float) -> RetryRule | None:
        for rule in self.rules:
            if elapsed <= rule.cutoff:
                return rule
        return None

    def _next_after(self, first_failure: float, now: float, previous_try: float, previous_next: float) -> float:
        """Exim's retry_update() for a failure at ``now`` given the previous attempt and its prediction."""
        rule = self._rule_at(now - first_failure)
        if rule is None:  # past the last cutoff: Exim fails the address; keep a sane estimate anyway
            rule = max(self.rules, key=lambda item: item.cutoff)
        if rule.kind == "F" or rule.factor <= 1.0:
            gap = rule.interval
        else:
            last_gap = min(previous_next - previous_try, now - previous_try)
            gap = rule.interval if last_gap < rule.interval else last_gap * rule.factor
        return now + min(gap, self.interval_max)

    def _attempts(
        self, first_failure: float, until: float, *, skip_uniform: bool = False
    ) -> Iterator[tuple[float, float]]:
        """(attempt time, predicted next) for the punctual schedule, from the first failure to ``until``.

        With ``skip_uniform`` runs of equal gaps (F rules) are jumped over, so only the last state before
        ``until`` is exact; used when only that state matters.
        """
        attempt = first_failure
        predicted = self._next_after(first_failure, attempt, attempt, attempt)
        for _ in range(_MAX_STEPS):
            if attempt > until:
                return
            yield attempt, predicted
            if predicted - first_failure > self.give_up_after:
                return
            gap = predicted - attempt
            rule = self._rule_at(attempt - first_failure)
            if skip_uniform and rule is not None and (rule.kind == "F" or rule.factor <= 1.0) and gap > 0:
                end = min(first_failure + rule.cutoff, until)
                steps = math.floor((end - attempt) / gap) - 1
                if steps > 1:
                    attempt += steps * gap
                    predicted = attempt + gap
                    continue
            following = self._next_after(first_failure, predicted, attempt, predicted)
            attempt, predicted = predicted, following


def _parse_rule(chunk: str, position: int) -> RetryRule:
    fields = chunk.split(",")
    offsets = [position]
    for field in fields[:-1]:
        offsets.append(offsets[-1] + len(field) + 1)
    kind = fields[0].strip().upper()
    if kind not in ("F", "G", "H"):
        raise ValueError(f"unknown retry rule type {fields[0].strip()!r} at position {position}: expected F, G or H")
    expected = 3 if kind == "F" else 4
    if len(fields) != expected:
        shape = "F,<cutoff>,<interval>" if kind == "F" else f"{kind},<cutoff>,<interval>,<multiplier>"
        raise ValueError(f"retry rule at position {position} has {len(fields)} fields, expected {shape}")
    cutoff = parse_duration(fields[1], offsets[1])
    interval = parse_duration(fields[2], offsets[2])
    if interval <= 0:
        raise ValueError(f"retry interval must be positive at position {offsets[2]}")
    factor = _parse_factor(fields[3], offsets[3]) if kind != "F" else 1.0
    return RetryRule(kind, cutoff, interval, factor)


DEFAULT_RETRY_RULES = RetryRules.parse(DEFAULT_RETRY_SPEC)
