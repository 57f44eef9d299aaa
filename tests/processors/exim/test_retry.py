import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.exim.retry import (
    DEFAULT_RETRY_RULES,
    DEFAULT_RETRY_SPEC,
    RetryRule,
    RetryRules,
    parse_duration,
)

M = 60.0
H = 3600.0
D = 86400.0
T0 = 1_700_000_000.0


def test_parse_default_spec():
    rules = RetryRules.parse(DEFAULT_RETRY_SPEC)
    assert rules.rules == (
        RetryRule("F", 2 * H, 15 * M),
        RetryRule("G", 16 * H, 1 * H, 1.5),
        RetryRule("F", 4 * D, 6 * H),
    )
    assert rules == DEFAULT_RETRY_RULES


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("15m", 900), ("1d12h", 129600), ("2w", 1209600), ("1h30m15s", 5415), (" 6H ", 21600)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_parse_tolerates_spacing_lowercase_and_trailing_semicolon():
    rules = RetryRules.parse("  f, 1d12h , 30m ;h,3d,1h,2;")
    assert rules.rules == (RetryRule("F", 1.5 * D, 30 * M), RetryRule("H", 3 * D, H, 2.0))


def test_default_schedule_concrete_times():
    schedule = [t - T0 for t in DEFAULT_RETRY_RULES.schedule(T0, until=T0 + 10 * D)]
    # every 15 minutes for 2 hours (the attempt at exactly 2 h still falls under the first rule) ...
    assert schedule[:9] == [k * 15 * M for k in range(1, 10)]
    # ... then geometric from 1 h, x1.5 each time, while within 16 h of the first failure ...
    assert schedule[9:15] == [3.25 * H, 4.75 * H, 7 * H, 10.375 * H, 15.4375 * H, 23.03125 * H]
    # ... then every 6 hours until 4 days
    tail = schedule[14:]
    assert all(b - a == 6 * H for a, b in itertools.pairwise(tail))
    assert schedule[-1] == 95.03125 * H
    assert len(schedule) == 27


def test_give_up_is_the_largest_cutoff():
    assert DEFAULT_RETRY_RULES.give_up(T0) == T0 + 4 * D
    assert RetryRules.parse("F,1d,1h; F,2h,5m").give_up(T0) == T0 + D


def test_next_retry_follows_the_schedule():
    rules = DEFAULT_RETRY_RULES
    assert rules.next_retry(T0, T0) == T0 + 15 * M
    assert rules.next_retry(T0, T0 + 2 * H) == T0 + 2.25 * H
    assert rules.next_retry(T0, T0 + 2.25 * H) == T0 + 3.25 * H
    assert rules.next_retry(T0, T0 + 7 * H) == T0 + 10.375 * H
    # a late queue run: the interval counts from the actual attempt
    assert rules.next_retry(T0, T0 + 50 * H) == T0 + 56 * H


def test_next_retry_after_the_last_deferral_lands_past_give_up():
    last = T0 + 95.03125 * H
    next_attempt = DEFAULT_RETRY_RULES.next_retry(T0, last)
    assert next_attempt is not None
    assert next_attempt > DEFAULT_RETRY_RULES.give_up(T0)  # that attempt bounces: retry timeout exceeded


def test_next_retry_is_none_past_give_up():
    assert DEFAULT_RETRY_RULES.next_retry(T0, T0 + 4 * D + 1) is None


def test_retry_interval_max_caps_the_gap():
    rules = RetryRules.parse("G,30d,1d,3", interval_max=2 * D)
    schedule = [t - T0 for t in rules.schedule(T0, until=T0 + 10 * D)]
    # 1 d, then 1 d x 3 = 3 d capped to 2 d, and the cap holds from then on
    assert schedule[:4] == [D, 3 * D, 5 * D, 7 * D]


def test_small_fixed_interval_is_fast_and_exact():
    rules = RetryRules.parse("F,4d,1s")
    assert rules.next_retry(T0, T0 + 300_000.5) == T0 + 300_001.5
    assert rules.next_retry(T0, T0 + 200_000) == T0 + 200_001


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "no retry rules"),
        ("X,2h,15m", "unknown retry rule type 'X' at position 0"),
        ("F,2h,15m; G,16h,1h", "position 9 has 3 fields"),
        ("F,2h", "has 2 fields"),
        ("F,2h,15x", "unknown time unit 'x' at position 7"),
        ("F,2h,0m", "must be positive at position 5"),
        ("G,16h,1h,fast", "bad multiplier 'fast' at position 9"),
        ("F,,15m", "empty time value at position 2"),
        ("F,2h,15m;;F,4d,6h", "empty retry rule at position 9"),
        ("F,h,15m", "expected a number at position 2"),
        ("F,2h,15m," + "x" * 2000, "longer than"),
    ],
)
def test_bad_specs_raise_with_position(spec, message):
    with pytest.raises(ValueError, match=message):
        RetryRules.parse(spec)


durations = st.integers(min_value=60, max_value=10 * 86400)
rule_strategy = st.one_of(
    st.tuples(st.just("F"), durations, durations).map(lambda r: f"F,{r[1]}s,{r[2]}s"),
    st.tuples(st.sampled_from("GH"), durations, durations, st.floats(0.5, 4.0)).map(
        lambda r: f"{r[0]},{r[1]}s,{r[2]}s,{r[3]:.3f}"
    ),
)


@settings(deadline=None)
@given(
    specs=st.lists(rule_strategy, min_size=1, max_size=4),
    first=st.floats(min_value=0, max_value=2e9),
)
def test_schedule_increases_strictly_and_ends_by_give_up(specs, first):
    rules = RetryRules.parse("; ".join(specs))
    schedule = rules.schedule(first, until=first + 5 * 86400)
    assert all(b > a for a, b in itertools.pairwise(schedule))
    assert all(first < t <= rules.give_up(first) for t in schedule)
    # next_retry of each scheduled attempt is the following one
    for a, b in itertools.pairwise(schedule[:21]):
        assert rules.next_retry(first, a) == pytest.approx(b)
