"""The bad-input suite's short form (``bench/badinput.py`` runs a million lines): fuzzed lines written to a log
that the real shipper follows and a real ``trackdelivery process`` worker consumes; every line must be
parsed or dead-lettered and counted, no process may crash, and memory stays under the bench's bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.badinput import SuiteConfig, report, run_suite

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]


def test_fuzzed_lines_are_all_parsed_or_dead_lettered_and_nothing_crashes(
    kafka_bootstrap: str, redis_db_url: str, tmp_path: Path
) -> None:
    # 4000 recipients of one message: an unbounded state would be 1.3 MB, over faust's 1,000,000-byte records
    config = SuiteConfig(lines=30_000, seed=8, mass_mail=6000, stall_seconds=60, timeout=150)
    result = run_suite(config, kafka_bootstrap, redis_db_url, tmp_path)
    summary = report(result)

    assert result.failures == [], summary
    assert result.unaccounted == 0 and result.crashes == 0, summary
    assert result.check.shipped == result.taken_in == config.lines, summary
    assert result.parsed + result.dead_lettered == config.lines, summary
    assert result.dead_lettered > 1000 and result.kind_mismatch == 0, summary
    assert result.check.truncated == result.log.over_limit >= 6, summary  # cut at max_line_bytes, still one line
    assert result.trimmed_states > 0, f"the huge message state was never trimmed to fit\n{summary}"
    assert "detail dropped to fit" in result.children["worker"].log_text(), summary
