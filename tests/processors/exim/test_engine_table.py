"""The engine table (``processors/exim/engine_table.json``): current with the modules it is written from,
refused by the native engine when stale or when it does not mirror the engine, and never a reason for
``trackdelivery parse`` to answer differently."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from processors.exim import engine_table, native_run
from processors.exim.retry import RetryRules
from tests.processors.exim.test_native_engine import require_native
from tests.processors.exim.test_parse_cli import LOG
from trackdelivery import program


@pytest.fixture
def native() -> Any:
    require_native()
    import trackdelivery_native

    return trackdelivery_native


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "web7" / "exim_mainlog"
    path.parent.mkdir()
    path.write_bytes(LOG)
    return path


@pytest.fixture
def copied_root(tmp_path: Path) -> Path:
    """A folder holding copies of the table's sources and of the table file, as in the repository."""
    root = tmp_path / "root"
    for name in engine_table.SOURCES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(engine_table.ROOT / name, root / name)
    shutil.copyfile(engine_table.TABLE_PATH, root / "engine_table.json")
    return root


def parse_with(native: Any, log: Path, table: tuple[Path, Path] | None, rules: RetryRules | None = None) -> bytes:
    written: list[bytes] = []
    native.exim_parse_files(
        [(str(log), "web7")], True, rules, None, lambda view: written.append(bytes(view)), None, None, 0.0, 0, None,
        None if table is None else (str(table[0]), str(table[1])),
    )
    return b"".join(written)


def test_the_table_file_is_the_one_the_modules_write() -> None:
    assert engine_table.TABLE_PATH.read_text(encoding="utf-8") == engine_table.render(), (
        "processors/exim/engine_table.json is stale: run `python -m processors.exim.engine_table`"
    )
    assert engine_table.main(["--check"]) == 0


def test_the_table_holds_every_rule_and_the_default_retry_rules() -> None:
    from processors.exim.reasons import RULES
    from processors.exim.retry import DEFAULT_RETRY_RULES

    table = json.loads(engine_table.TABLE_PATH.read_text(encoding="utf-8"))
    assert [rule["name"] for rule in table["rules"]] == [rule.name for rule in RULES]
    assert [rule["cutoff"] for rule in table["retry"]["rules"]] == [rule.cutoff for rule in DEFAULT_RETRY_RULES.rules]
    assert set(table["sources"]) == set(engine_table.SOURCES)


def test_the_file_and_the_modules_give_the_same_events(native: Any, log: Path) -> None:
    from processors.exim.retry import DEFAULT_RETRY_RULES

    from_file = parse_with(native, log, native_run_table())
    assert from_file.count(b"\n") >= 5
    assert from_file == parse_with(native, log, None) == parse_with(native, log, None, DEFAULT_RETRY_RULES)


def native_run_table() -> tuple[Path, Path]:
    path, root = native_run.engine_table_file()
    return Path(path), Path(root)


@pytest.mark.parametrize("damage", ["edited source", "missing source", "missing table", "not json"])
def test_a_stale_or_unreadable_table_is_refused(native: Any, log: Path, copied_root: Path, damage: str) -> None:
    table = copied_root / "engine_table.json"
    reasons = copied_root / "processors/exim/reasons.py"
    assert parse_with(native, log, (table, copied_root)) == parse_with(native, log, None)  # the copies are current
    if damage == "edited source":
        reasons.write_text(reasons.read_text(encoding="utf-8") + "\n# a change\n", encoding="utf-8")
    elif damage == "missing source":
        reasons.unlink()
    elif damage == "missing table":
        table.unlink()
    else:
        table.write_text("{", encoding="utf-8")
    with pytest.raises(native.StaleEngineTable):
        parse_with(native, log, (table, copied_root))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda table: table.update(schema_version=99), "rebuild native/"),
        (lambda table: table["mirrored"].update(max_scan=4096), "a constant mirrored in reasons.rs has changed"),
        (lambda table: table["mirrored"]["regexes"].update(_ENHANCED_RE="x"), "_ENHANCED_RE has changed"),
        (lambda table: table["rules"][0].update(reason="no_such_reason"), "unknown reason"),
        (lambda table: table["rules"][0].update(pattern=r"(?<=a)b"), "rule exim_retry_timeout"),
        (lambda table: table["hints"].pop("mailbox_full"), "no hint for mailbox_full"),
        (lambda table: table["retry"].update(rules=[]), "no retry rules given"),
    ],
)
def test_a_table_the_engine_does_not_mirror_is_refused(
    native: Any, log: Path, copied_root: Path, change: Any, message: str
) -> None:
    table_path = copied_root / "engine_table.json"
    table = json.loads(table_path.read_text(encoding="utf-8"))
    change(table)
    table_path.write_text(json.dumps(table), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        parse_with(native, log, (table_path, copied_root))


def test_the_command_falls_back_to_the_modules_when_the_table_is_stale(
    native: Any,
    log: Path,
    copied_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfdbinary: pytest.CaptureFixture[bytes],
) -> None:
    monkeypatch.setattr(program, "_skip_teardown", False)
    native_run.run_native(native, [str(log)], None, True, None, None)
    current = capfdbinary.readouterr()
    reasons = copied_root / "processors/exim/reasons.py"
    reasons.write_text(reasons.read_text(encoding="utf-8") + "\n# a change\n", encoding="utf-8")
    stale = (str(copied_root / "engine_table.json"), str(copied_root))
    monkeypatch.setattr(native_run, "engine_table_file", lambda: stale)
    with pytest.raises(native.StaleEngineTable):
        parse_with(native, log, (Path(stale[0]), Path(stale[1])))
    native_run.run_native(native, [str(log)], None, True, None, None)
    fallen_back = capfdbinary.readouterr()
    assert current.out.count(b"\n") >= 5
    assert (fallen_back.out, fallen_back.err) == (current.out, current.err)


def test_check_says_when_the_file_is_stale(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stale = tmp_path / "engine_table.json"
    stale.write_text("{}\n", encoding="utf-8")
    monkeypatch.setattr(engine_table, "TABLE_PATH", stale)
    assert engine_table.main(["--check"]) == 1
    assert stale.read_text(encoding="utf-8") == "{}\n"
    assert engine_table.main([]) == 0
    assert stale.read_text(encoding="utf-8") == engine_table.render()
    assert engine_table.main(["--bad"]) == 2


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({}, "not built"),
        ({"exim_parse_files": print}, "older than this code"),  # a build from before the engine table
    ],
)
def test_an_engine_without_the_table_is_not_used(
    monkeypatch: pytest.MonkeyPatch, attributes: dict[str, Any], message: str
) -> None:
    monkeypatch.setitem(sys.modules, "trackdelivery_native", types.SimpleNamespace(**attributes))
    assert native_run.load_native("auto") is None  # the Python engine runs instead
    with pytest.raises(native_run.ParseFailed, match=message):
        native_run.load_native("native")
