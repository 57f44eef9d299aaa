"""The parser over every real Exim log line in the shared corpus (``shared/corpus``, beside the clone)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from processors.exim.parser import parse_line
from processors.exim.types import LineKind
from tests.processors.exim.corpus import corpus_dir

REPO = Path(__file__).resolve().parents[3]
# a timestamp at the start: Exim's own, ISO/journal, BSD syslog, or "host exim[pid]: " then Exim's
TIMESTAMPED = re.compile(
    rb"^(?:\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d|[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d|\S+ \S+\[\d+\]: \d{4}-\d\d-\d\d )"
)
FLAGGED = re.compile(rb" ([0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}) (=>|->|\*\*|==) +\S")
FLAG_KINDS = {
    b"=>": LineKind.DELIVERY,
    b"->": LineKind.DELIVERY_MORE,
    b"**": LineKind.FAILURE,
    b"==": LineKind.DEFERRAL,
}


def corpus_lines() -> list[tuple[str, bytes]]:
    root = corpus_dir()
    lines = []
    for path in sorted(root.rglob("*.log")) + sorted(p for p in root.rglob("*") if p.is_file() and not p.suffix):
        testsuite = "exim-testsuite" in path.parts
        for raw in path.read_bytes().split(b"\n"):
            if not testsuite and raw.startswith(b"#"):
                continue
            lines.append((str(path.relative_to(root)), raw))
    return lines


@pytest.fixture(scope="module")
def lines() -> list[tuple[str, bytes]]:
    found = corpus_lines()
    assert len(found) > 10_000, "the corpus looks incomplete"
    return found


def test_timestamped_lines_are_understood(lines: list[tuple[str, bytes]]) -> None:
    kinds: Counter[LineKind] = Counter()
    unknown = []
    timestamped = 0
    for name, raw in lines:
        parsed = parse_line(raw)
        assert isinstance(parsed.kind, LineKind)
        if not TIMESTAMPED.match(raw):
            continue
        timestamped += 1
        kinds[parsed.kind] += 1
        if parsed.kind is LineKind.UNKNOWN:
            unknown.append(f"{name}: {raw[:200]!r} ({parsed.detail})")
    ratio = 1 - len(unknown) / timestamped
    print(f"\n{timestamped} timestamped lines, understood {ratio:.4%}; kinds {dict(kinds.most_common())}")
    assert ratio >= 0.99, "UNKNOWN lines:\n" + "\n".join(unknown)


def test_real_world_lines_are_rarely_free_text(lines: list[tuple[str, bytes]]) -> None:
    """NOTE is the kind for text we do not interpret. The test suite is full of its own ACL ``logwrite``
    output, so this is measured on the third-party files only: lines written by production servers."""
    real = [(name, raw) for name, raw in lines if not name.startswith("exim-testsuite") and TIMESTAMPED.match(raw)]
    notes = [f"{name}: {raw[:160]!r}" for name, raw in real if parse_line(raw).kind is LineKind.NOTE]
    print(f"\n{len(notes)} of {len(real)} third-party lines are free text")
    assert len(notes) <= 0.02 * len(real), "\n".join(notes)


def test_every_delivery_outcome_line_yields_its_kind_msgid_and_address(lines: list[tuple[str, bytes]]) -> None:
    checked = 0
    wrong = []
    for name, raw in lines:
        m = FLAGGED.search(raw[:120])
        if m is None or not TIMESTAMPED.match(raw):
            continue
        checked += 1
        parsed = parse_line(raw)
        msgid = m.group(1).decode()
        if parsed.kind is not FLAG_KINDS[m.group(2)] or parsed.msgid != msgid or not parsed.address:
            wrong.append(f"{name}: {raw[:200]!r} -> {parsed.kind} {parsed.msgid} {parsed.address!r}")
    assert checked > 2000
    assert not wrong, "\n".join(wrong)
