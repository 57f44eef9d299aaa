"""``trackdelivery generate`` through click, and --follow as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.trackdelivery.generator._grammar import line_problem
from trackdelivery.generator.cli import generate


def _files(out: Path) -> dict[str, bytes]:
    return {str(path.relative_to(out)): path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()}


def _run(out: Path, *args: str) -> None:
    result = CliRunner().invoke(generate, ["--out", str(out), *args])
    assert result.exit_code == 0, result.output


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    common = ("--servers", "4", "--messages", "1500", "--days", "2")
    _run(tmp_path / "a", *common, "--seed", "7")
    _run(tmp_path / "b", *common, "--seed", "7")
    _run(tmp_path / "c", *common, "--seed", "8")
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert set(a) == set(b) == set(c)
    assert len(a) == 6  # 4 logs, truth, manifest
    assert a == b
    assert all(a[name] != c[name] for name in a)


def test_single_version_and_start_options(tmp_path: Path) -> None:
    _run(
        tmp_path,
        "--servers",
        "2",
        "--messages",
        "300",
        "--exim-version",
        "4.96",
        "--start",
        "2024-06-01T12:00:00",
        "--days",
        "1",
    )
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert {s["id_format"] for s in manifest["servers"]} == {16}
    assert manifest["start"].startswith("2024-06-01T12:00:00")
    first = (tmp_path / manifest["servers"][0]["name"] / "exim_mainlog").read_text().splitlines()[0]
    assert first.startswith("2024-06-01 1")


@pytest.mark.slow
def test_fifty_servers(tmp_path: Path) -> None:
    # 100k messages take 7-30 s on the shared 2-core dev box, so the test runs 20k (100k measured by hand)
    _run(tmp_path, "--servers", "50", "--messages", "20000")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert len(manifest["servers"]) == 50
    assert manifest["line_kinds"]["arrival"] >= 20_000
    assert manifest["lines"] > 100_000
    for info in manifest["servers"]:
        log = tmp_path / info["name"] / "exim_mainlog"
        assert log.stat().st_size > 0
        assert info["lines"] == log.read_bytes().count(b"\n")


def test_follow_appends_whole_lines_until_sigterm(tmp_path: Path) -> None:
    command = [
        str(Path(sys.executable).parent / "trackdelivery"),
        "generate",
        "--servers",
        "3",
        "--messages",
        "300",
        "--days",
        "1",
        "--out",
        str(tmp_path),
        "--follow",
        "--rate",
        "3000",
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert process.stderr is not None
        banner = process.stderr.readline().decode()  # written once the bulk part is complete
        assert banner.startswith("wrote "), banner
        logs = sorted(tmp_path.glob("*/exim_mainlog"))
        sizes = {log: log.stat().st_size for log in logs}
        truth_size = (tmp_path / "truth.jsonl").stat().st_size
        started = time.monotonic()
        while time.monotonic() < started + 2 or (
            time.monotonic() < started + 20 and sum(log.stat().st_size for log in logs) < sum(sizes.values()) + 100_000
        ):
            for log in logs:  # a reader never sees a partial line at the end of a flushed batch
                data = log.read_bytes()
                assert data.endswith(b"\n")
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
    assert all(log.stat().st_size > sizes[log] for log in logs)
    assert (tmp_path / "truth.jsonl").stat().st_size > truth_size
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["followed"] is True
    for log in logs:
        lines = log.read_text().splitlines()
        assert lines == [line for line in lines if line_problem(line) is None]
        assert [line[:19] for line in lines] == sorted(line[:19] for line in lines)
