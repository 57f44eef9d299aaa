"""deploy/systemd: hardening of every unit, real subcommands and flags, state directories, env files."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from tests.deploy._support import (
    DEPLOY,
    check_env_names,
    check_flags,
    exec_args,
    resolve_command,
    validate_env,
)

SYSTEMD = DEPLOY / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service"))
BINARY = "/opt/trackdelivery/bin/trackdelivery"

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    """Sections -> key -> every value in order (systemd allows repeated keys and ``\\`` continuations)."""
    sections: Unit = defaultdict(lambda: defaultdict(list))
    section = ""
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        assert section, f"{path.name}: {line!r} outside a section"
        key, separator, value = line.partition("=")
        assert separator, f"{path.name}: not a key=value line: {line!r}"
        sections[section][key.strip()].append(value.strip())
    return sections


def last(unit: Unit, key: str, section: str = "Service") -> str:
    values = unit[section].get(key)
    assert values, f"{key}= missing from [{section}]"
    return values[-1]


def test_the_expected_units_exist() -> None:
    names = {path.name for path in UNITS}
    assert {"trackdelivery-shipper.service", "trackdelivery-processor.service", "trackdelivery-query.service",
            "trackdelivery-alerts.service"} <= names


@pytest.mark.parametrize("path", UNITS, ids=lambda path: path.name)
def test_hardening(path: Path) -> None:
    unit = parse_unit(path)
    expected = {
        "User": "trackdelivery",
        "Group": "trackdelivery",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "RestrictSUIDSGID": "yes",
        "Restart": "always",
    }
    for key, value in expected.items():
        assert last(unit, key) == value, f"{path.name}: {key}={last(unit, key)!r}, expected {value!r}"
    families = set(last(unit, "RestrictAddressFamilies").split())
    assert families <= {"AF_UNIX", "AF_INET", "AF_INET6"} and {"AF_INET", "AF_INET6"} <= families
    assert float(last(unit, "RestartSec").rstrip("s")) > 0
    assert "@system-service" in unit["Service"]["SystemCallFilter"]
    assert last(unit, "WantedBy", "Install") == "multi-user.target"
    assert "network-online.target" in last(unit, "After", "Unit")


@pytest.mark.parametrize("path", UNITS, ids=lambda path: path.name)
def test_exec_start_is_a_real_subcommand_with_real_flags(path: Path) -> None:
    unit = parse_unit(path)
    starts = unit["Service"]["ExecStart"]
    assert len(starts) == 1, f"{path.name}: one ExecStart expected"
    args = exec_args(starts[0])
    assert args[0] == BINARY, f"{path.name}: ExecStart runs {args[0]}"
    subcommand_path, command, rest = resolve_command(args[1:])
    check_flags(subcommand_path, command, rest)


def _state_paths(unit: Unit) -> list[str]:
    return [f"%S/{name}" for value in unit["Service"].get("StateDirectory", []) for name in value.split()]


@pytest.mark.parametrize("path", UNITS, ids=lambda path: path.name)
def test_writable_paths_are_the_state_directory(path: Path) -> None:
    """ProtectSystem=strict leaves only the StateDirectory writable: every data path must be inside it."""
    unit = parse_unit(path)
    args = exec_args(last(unit, "ExecStart"))
    environment = dict(value.split("=", 1) for value in unit["Service"].get("Environment", []))
    state = _state_paths(unit)
    writable_flags = {"--checkpoint-dir", "--datadir"}
    for arg in args:
        flag, _, value = arg.partition("=")
        if flag in writable_flags:
            assert any(value == p or value.startswith(p + "/") for p in state), f"{path.name}: {arg} not in {state}"
    for key, value in environment.items():
        if key.endswith(("_DATADIR", "_DIR", "_PATH")):
            assert any(value.startswith(p) for p in state), f"{path.name}: {key}={value} not in {state}"
    subcommand = args[1]
    if subcommand in ("ship", "process", "alerts"):
        assert state, f"{path.name}: `{subcommand}` keeps state but has no StateDirectory="


def test_shipper_reads_the_log_and_keeps_checkpoints_in_its_state_directory() -> None:
    unit = parse_unit(SYSTEMD / "trackdelivery-shipper.service")
    assert last(unit, "SupplementaryGroups") == "mail"
    assert "/var/log" in last(unit, "ReadOnlyPaths").split()
    assert last(unit, "StateDirectory") == "trackdelivery-shipper"
    assert last(unit, "EnvironmentFile") == "/etc/trackdelivery/shipper.env"
    assert "--checkpoint-dir=%S/trackdelivery-shipper" in exec_args(last(unit, "ExecStart"))
    # the shipper waits up to shutdown_timeout (30 s) for Kafka when stopping: systemd must wait longer
    assert int(last(unit, "TimeoutStopSec")) > 30


def example_env(path: Path) -> tuple[dict[str, str], set[str]]:
    """Assignments of an env file, and the names of commented-out assignments."""
    values: dict[str, str] = {}
    commented: set[str] = set()
    for line in path.read_text().splitlines():
        if match := re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line):
            values[match.group(1)] = match.group(2)
        elif match := re.match(r"^#\s*([A-Z][A-Z0-9_]*)=", line):
            commented.add(match.group(1))
    return values, commented


@pytest.mark.parametrize("path", UNITS, ids=lambda path: path.name)
def test_environment_files_have_valid_examples(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unit = parse_unit(path)
    env_file = last(unit, "EnvironmentFile")
    assert env_file.startswith("/etc/trackdelivery/"), env_file
    example = SYSTEMD / (Path(env_file).name + ".example")
    assert example.is_file(), f"{path.name}: no example for {env_file} ({example.name})"
    command = exec_args(last(unit, "ExecStart"))[1]
    values, commented = example_env(example)
    environment = dict(value.split("=", 1) for value in unit["Service"].get("Environment", []))
    check_env_names(command, values.keys() | commented | environment.keys(), example.name)
    validate_env(command, {**environment, **values}, monkeypatch)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own parser: unknown keys or bad values are reported (the binary path is swapped for one
    that exists, as verify checks it)."""
    true = shutil.which("true")
    assert true is not None
    for unit in UNITS:
        (tmp_path / unit.name).write_text(unit.read_text().replace(BINARY, true))
    result = subprocess.run(
        ["systemd-analyze", "verify", *sorted(str(path) for path in tmp_path.glob("*.service"))],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), (
        result.stdout + result.stderr
    )
