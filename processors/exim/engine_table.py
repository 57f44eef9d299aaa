"""The native engine's table: the reason rules, their hints and the default retry rules, as JSON.

The native engine classifies with ``RULES`` of ``processors.exim.reasons`` and estimates retries with
``DEFAULT_RETRY_RULES``. Importing those modules (and the ``dataclasses``, ``enum`` and ``inspect`` they
pull in) was two thirds of the start-up of every ``trackdelivery parse``. So the table is also kept as
data beside this module, ``engine_table.json``, written from the Python modules by

    python -m processors.exim.engine_table          # --check: only say whether the file is current

and read by the native engine without importing them. The file records a digest of each module it was
written from; when one of them has changed since, the engine refuses the file (``StaleEngineTable``) and
``trackdelivery parse`` builds the table from the modules instead, as before. A test holds the file to
the modules, so a stale file cannot land.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

from processors.exim import reasons
from processors.exim.retry import DEFAULT_RETRY_RULES
from trackdelivery.events import REASON_HINTS, SCHEMA_VERSION

__all__ = ["ROOT", "SOURCES", "TABLE_PATH", "build", "digest", "main", "render"]

TABLE_PATH = Path(__file__).with_name("engine_table.json")
#: the folder the packages sit in; ``SOURCES`` are relative to it
ROOT = Path(__file__).resolve().parents[2]
#: the modules the table is written from (this one included: it decides what goes in)
SOURCES = (
    "processors/exim/engine_table.py",
    "processors/exim/reasons.py",
    "processors/exim/retry.py",
    "trackdelivery/events.py",
)


def digest(data: bytes) -> str:
    """A source's digest as the native engine computes it: BLAKE2b with 12 bytes of output, in hex."""
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def _rule(rule: reasons.Rule) -> dict[str, Any]:
    if rule.pattern is not None and rule.pattern.flags != re.ASCII:
        raise ValueError(f"rule {rule.name}: pattern flags {rule.pattern.flags}, only re.ASCII is mirrored")
    return {
        "name": rule.name,
        "reason": rule.reason.value,
        "pattern": None if rule.pattern is None else rule.pattern.pattern,
        "code_classes": sorted(rule.code_classes),
        "codes": sorted(rule.codes),
        "enhanced": [list(pattern) for pattern in rule.enhanced],
        "errnos": sorted(rule.errnos),
        "phases": sorted(rule.phases),
        "kinds": sorted(rule.kinds),
        "without_code": rule.without_code,
    }


def build(root: Path = ROOT) -> dict[str, Any]:
    """The table, with the digests of the sources found under ``root``."""
    return {
        "about": "written by `python -m processors.exim.engine_table` from the modules in `sources`; do not edit",
        "schema_version": SCHEMA_VERSION,
        "sources": {name: digest((root / name).read_bytes()) for name in SOURCES},
        "retry": {
            "interval_max": DEFAULT_RETRY_RULES.interval_max,
            "rules": [
                {"kind": rule.kind, "cutoff": rule.cutoff, "interval": rule.interval, "factor": rule.factor}
                for rule in DEFAULT_RETRY_RULES.rules
            ],
        },
        "hints": {reason.value: hint for reason, hint in REASON_HINTS.items()},
        "mirrored": {
            "max_scan": reasons.MAX_SCAN,
            "kinds": sorted(reasons.KINDS),
            "phases": sorted(reasons.PHASES),
            "remote_error": reasons._REMOTE_ERROR,
            "lmtp_error": reasons._LMTP_ERROR,
            "other_phase_markers": list(reasons._OTHER_PHASE_MARKERS),
            "command_phases": [list(pair) for pair in reasons._COMMAND_PHASES],
            "regexes": {
                name: getattr(reasons, name).pattern
                for name in ("_CODES_RE", "_ENHANCED_RE", "_RESPONSE_START_RE", "_CONTINUATION_RE")
            },
        },
        "rules": [_rule(rule) for rule in reasons.RULES],
    }


def render(root: Path = ROOT) -> str:
    return json.dumps(build(root), indent=1, ensure_ascii=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--check"]):
        print("usage: python -m processors.exim.engine_table [--check]", file=sys.stderr)
        return 2
    wanted = render()
    current = TABLE_PATH.read_text(encoding="utf-8") if TABLE_PATH.exists() else None
    if current == wanted:
        return 0
    if args:
        print(f"{TABLE_PATH} is out of date: run `python -m processors.exim.engine_table`", file=sys.stderr)
        return 1
    TABLE_PATH.write_text(wanted, encoding="utf-8")
    print(f"wrote {TABLE_PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
