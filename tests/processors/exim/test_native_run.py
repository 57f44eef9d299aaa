"""``trackdelivery parse`` without click: which command lines it takes, and that they give exactly what
the click command gives (output, summary, errors, exit code)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from processors.exim.cli import parse
from processors.exim.native_run import PLAIN_OPTIONS, plain_arguments
from tests.processors._support import REPO_ROOT
from tests.processors.exim.test_native_engine import require_native
from tests.processors.exim.test_parse_cli import LOG
from trackdelivery.cli import main

#: what the plain path must not import: click, and the modules of the command's start-up that the engine
#: table (processors/exim/engine_table.py) spares it, with what they pull in
HEAVY_MODULES = (
    "click",
    "typing",
    "dataclasses",
    "inspect",
    "enum",
    "re",
    "datetime",
    "processors.exim.reasons",
    "processors.exim.retry",
    "processors.exim.types",
    "trackdelivery.events",
)

#: runs the console script's `run` and, when the process ends by `os._exit`, says which of
#: `HEAVY_MODULES` were loaded
PROBE = f"""
import os, sys
exit_now = os._exit
def report(code):
    loaded = [name for name in {HEAVY_MODULES!r} if name in sys.modules]
    sys.stderr.write("[loaded: " + ",".join(loaded) + "]\\n")
    sys.stderr.flush()
    exit_now(code)
os._exit = report
sys.argv = ["trackdelivery", *sys.argv[1:]]
from trackdelivery.program import run
run()
"""


@pytest.fixture(autouse=True)
def _native_required(monkeypatch: pytest.MonkeyPatch) -> None:
    require_native()
    monkeypatch.delenv("TRACKDELIVERY_PARSE_ENGINE", raising=False)


@pytest.fixture
def logs(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "web7").mkdir()
    first = tmp_path / "web7" / "exim_mainlog"
    first.write_bytes(LOG)
    second = tmp_path / "mx2.log.gz"
    second.write_bytes(gzip.compress(LOG.replace(b"1tsx", b"1tsy")))
    return first, second


def program(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> tuple[int, bytes, str, list[str]]:
    """(exit code, stdout, stderr without the probe's line, the `HEAVY_MODULES` loaded; ["click"] when
    the process did not end through `os._exit`, as click ends it)."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], input=stdin, capture_output=True, cwd=REPO_ROOT,
        env={**os.environ, **(env or {})}, timeout=60, check=False,
    )
    stderr, loaded = "", ["click"]
    for line in done.stderr.decode().splitlines(keepends=True):
        if line.startswith("[loaded: "):
            loaded = [name for name in line.strip()[len("[loaded: ") : -1].split(",") if name]
        else:
            stderr += line
    return done.returncode, done.stdout, stderr, loaded


def through_click(*args: str, stdin: bytes = b"") -> tuple[int, bytes, str]:
    result = CliRunner().invoke(main, list(args), input=stdin, catch_exceptions=False, prog_name="trackdelivery")
    return result.exit_code, result.stdout_bytes, result.stderr


@pytest.mark.parametrize(
    "arguments",
    [
        ["{first}"],
        ["--output", "lines", "{first}"],
        ["--output=events", "--server", "mx9", "{first}", "{second}"],
        ["{second}", "--tz", "utc", "--engine", "native", "--format", "jsonl", "--server="],
        ["--output", "lines", "--output", "events", "-"],
        [],
    ],
)
def test_a_plain_command_line_runs_without_click_or_the_rule_modules_and_gives_what_click_gives(
    arguments: list[str], logs: tuple[Path, Path]
) -> None:
    args = ["parse", *(argument.format(first=logs[0], second=logs[1]) for argument in arguments)]
    code, stdout, stderr, loaded = program(*args, stdin=LOG)
    assert loaded == [], stderr
    assert (code, stdout, stderr) == through_click(*args, stdin=LOG)
    assert code == 0 and stdout.count(b"\n") >= 5 and "lines, 0 unknown" in stderr


@pytest.mark.parametrize(
    "arguments",
    [
        ["--format", "table", "{first}"],
        ["--engine", "python", "{first}"],
        ["--tz", "Europe/Paris", "{first}"],
        ["--retry-rules", "F,2h,15m", "{first}"],
        ["-h"],
        ["--help"],
        ["--output", "json", "{first}"],
        ["{first}", "--output"],
        ["--", "{first}"],
        ["--unknown", "{first}"],
        ["{missing}"],
        ["{folder}"],
    ],
)
def test_any_other_command_line_goes_to_click(arguments: list[str], logs: tuple[Path, Path]) -> None:
    names = {"first": logs[0], "second": logs[1], "missing": logs[0].parent / "nothing", "folder": logs[0].parent}
    assert plain_arguments([argument.format(**names) for argument in arguments]) is None


def test_the_engine_variable_is_read_as_click_reads_it(
    logs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACKDELIVERY_PARSE_ENGINE", "python")
    assert plain_arguments([str(logs[0])]) is None
    monkeypatch.setenv("TRACKDELIVERY_PARSE_ENGINE", "native")
    assert plain_arguments([str(logs[0])]) == ([str(logs[0])], {"--engine": "native"})


def test_click_still_says_what_is_wrong(logs: tuple[Path, Path]) -> None:
    missing = str(logs[0].parent / "nothing")
    code, stdout, stderr, loaded = program("parse", "--output", "events", missing)
    assert "click" in loaded and code == 2 and stdout == b""
    assert "does not exist" in stderr and (code, stderr) == through_click("parse", "--output", "events", missing)[::2]


def test_a_failure_reads_as_clicks(tmp_path: Path) -> None:
    damaged = tmp_path / "mx3.gz"
    damaged.write_bytes(gzip.compress(LOG)[:-12] + b"\xff" * 12)
    code, _, stderr, _ = program("parse", str(damaged))
    click_code, _, click_stderr = through_click("parse", str(damaged))
    assert code == click_code == 1
    assert stderr.splitlines()[-1] == click_stderr.splitlines()[-1]
    assert stderr.splitlines()[-1].startswith(f"Error: cannot read {damaged}")


def test_the_plain_options_are_the_click_commands() -> None:
    """The options read without click exist on the click command, accept no value it refuses, and
    default to its defaults."""
    params = {option: param for param in parse.params if isinstance(param, click.Option) for option in param.opts}
    for name, accepted in PLAIN_OPTIONS.items():
        param = params[name]
        assert not param.is_flag and param.nargs == 1, name
        if isinstance(param.type, click.Choice):
            assert accepted is not None and set(accepted) <= set(param.type.choices), name
        if accepted is not None:
            assert accepted[0] == param.get_default(click.Context(parse)), name
    assert set(params) - set(PLAIN_OPTIONS) == {"--retry-rules"}
