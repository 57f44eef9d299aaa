"""The rules file (TOML): overrides, new rules, and errors that name the problem; and the
``trackdelivery alerts --check / --dry-run`` command on top of it."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.alerts.cli import alerts
from processors.alerts.exceptions import RuleConfigError
from processors.alerts.rules import DEFAULT_RULES, build_rules, load_rules, parse_duration
from processors.alerts.simulate import simulate
from processors.alerts.types import RuleKind, RuleSettings, ScopeKind, Severity
from tests.processors.alerts._synthetic import GMAIL_RATE_LIMIT, HOUR, SERVER, T0, YAHOO_TSS04, event, fired, spread


def rules_file(tmp_path: Path, text: str, name: str = "rules.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(RuleConfigError) as caught:
        load_rules(rules_file(tmp_path, text))
    return str(caught.value)


def test_no_file_gives_the_defaults() -> None:
    assert load_rules(None) == {rule.name: rule for rule in DEFAULT_RULES}


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_rules(rules_file(tmp_path, "# nothing to change\n")) == build_rules()


def test_override_threshold_and_window(tmp_path: Path) -> None:
    rules = load_rules(rules_file(tmp_path, '[rules.provider_throttling]\nthreshold = 20\nwindow = "30m"\n'))
    default = build_rules()["provider_throttling"]
    assert rules["provider_throttling"] == dataclasses.replace(default, threshold=20, window=1800.0)
    assert {name: rule for name, rule in rules.items() if name != "provider_throttling"} == {
        name: rule for name, rule in build_rules().items() if name != "provider_throttling"
    }


def test_overrides_of_every_kind_of_setting(tmp_path: Path) -> None:
    rules = load_rules(rules_file(tmp_path, """
[rules.outbound_spam]
severity = "warning"
enabled = false
cooldown = "1d"
resolve_after = 5400
messages_per_hour = 1000
bounce_ratio = 0.8
scope = "server"

[rules.ip_blocklisted]
signatures = ["spamhaus"]
providers = ["Gmail", "yahoo"]
min_share = 0.5
"""))
    spam = rules["outbound_spam"]
    assert (spam.severity, spam.enabled) == (Severity.WARNING, False)
    assert (spam.cooldown, spam.resolve_after) == (86400.0, 5400.0)
    assert (spam.messages_per_hour, spam.bounce_ratio, spam.scope) == (1000, 0.8, (ScopeKind.SERVER,))
    blocked = rules["ip_blocklisted"]
    assert (blocked.signatures, blocked.providers, blocked.min_share) == (("spamhaus",), ("gmail", "yahoo"), 0.5)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("90s", 90.0), ("15m", 900.0), ("30m", 1800.0), ("4h", 14400.0), ("2d", 172800.0), ("1.5h", 5400.0),
     (" 10 m ", 600.0), ("45", 45.0), (45, 45.0), (2.5, 2.5)],
)
def test_parse_duration(value: Any, seconds: float) -> None:
    assert parse_duration(value, "window") == seconds


@pytest.mark.parametrize("value", ["30 minutes", "soon", "", "1w", "-5m", "m", True, -5])
def test_parse_duration_rejects(value: Any) -> None:
    with pytest.raises(RuleConfigError, match="window"):
        parse_duration(value, "window")


def test_a_new_rule_of_a_known_kind(tmp_path: Path) -> None:
    rules = load_rules(rules_file(tmp_path, """
[rules.gmail_only]
kind = "provider_block"
providers = ["gmail"]
scope = ["fleet", "provider"]
threshold = 3
"""))
    assert set(rules) == set(build_rules()) | {"gmail_only"}
    rule = rules["gmail_only"]
    assert (rule.kind, rule.scope, rule.providers, rule.threshold) == (
        RuleKind.PROVIDER_BLOCK, (ScopeKind.FLEET, ScopeKind.PROVIDER), ("gmail",), 3)
    # the rest comes from the first default rule of that kind
    template = build_rules()["provider_throttling"]
    assert (rule.window, rule.signatures, rule.min_share) == (template.window, template.signatures, template.min_share)

    # it works: three throttled Gmail responses on different servers fire one fleet-wide alert; Yahoo does not count
    events = [event("deferred", t, server=f"srv{i}", recipient=f"r{i}@yahoo.com", response=YAHOO_TSS04)
              for i, t in enumerate(spread(10, T0, 300))]
    events += [event("deferred", t, server=f"srv{i}", recipient=f"r{i}@gmail.com", response=GMAIL_RATE_LIMIT)
               for i, t in enumerate(spread(3, T0 + 400, 300))]
    (alert,) = fired(simulate(events, rules), "gmail_only")
    assert alert.scope == {"fleet": "all", "provider": "gmail"} and alert.count == 3


def test_a_disabled_rule_does_not_fire(tmp_path: Path) -> None:
    rules = load_rules(rules_file(tmp_path, "[rules.frozen_messages]\nenabled = false\n"))
    events = [event("frozen", t, remote=False) for t in spread(30, T0, HOUR / 2)]
    assert fired(simulate(events, build_rules()), "frozen_messages")
    assert not fired(simulate(events, rules), "frozen_messages")


#: values of a valid TOML type that no setting takes (each once got past the checks or raised a traceback)
WRONG_TYPED_SETTINGS = [
    pytest.param("rules = 5\n", ["'rules' must be a table", "[rules.NAME]"], id="rules-is-not-a-table"),
    pytest.param("[rules.ip_blocklisted]\nsignatures = 5\n", ["ip_blocklisted", "signatures", "a list of"],
                 id="signatures-not-a-list"),
    pytest.param("[rules.ip_blocklisted]\nproviders = 5\n", ["ip_blocklisted", "providers", "a list of"],
                 id="providers-not-a-list"),
    pytest.param("[rules.frozen_messages]\nthreshold = nan\n", ["frozen_messages", "threshold", "finite"],
                 id="nan-threshold"),
    pytest.param("[rules.frozen_messages]\nthreshold = inf\n", ["frozen_messages", "threshold", "finite"],
                 id="infinite-threshold"),
    pytest.param("[rules.frozen_messages]\nwindow = nan\n", ["frozen_messages", "window", "finite"],
                 id="nan-window"),
    pytest.param("[rules.frozen_messages]\nwindow = inf\n", ["frozen_messages", "window", "finite"],
                 id="infinite-window"),
    pytest.param("[rules.sender_domain_bounce_ratio]\nmin_volume = 2.5\n",
                 ["sender_domain_bounce_ratio", "min_volume", "whole number"], id="fraction-for-a-count"),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param('[rules.storm]\nkind = "spam_storm"\n', ["storm", "unknown kind", "'spam_storm'", "outbound_spam"],
                     id="unknown-kind"),
        pytest.param("[rules.storm]\nthreshold = 3\n", ["storm", "is new", "needs a kind"], id="new-rule-without-kind"),
        pytest.param("[rules.frozen_messages]\ntreshold = 3\n", ["frozen_messages", "unknown setting", "treshold"],
                     id="unknown-setting"),
        pytest.param('[rules.frozen_messages]\nname = "other"\n', ["frozen_messages", "unknown setting", "name"],
                     id="name-is-not-a-setting"),
        pytest.param('[rules.frozen_messages]\nwindow = "soon"\n', ["frozen_messages", "window", "'soon'"],
                     id="bad-duration"),
        pytest.param('[rules.frozen_messages]\ncooldown = "-1h"\n', ["frozen_messages", "cooldown", "'-1h'"],
                     id="negative-duration-text"),
        pytest.param("[rules.frozen_messages]\nwindow = 0\n", ["frozen_messages", "window must be positive"],
                     id="zero-window"),
        pytest.param('[rules.frozen_messages]\nscope = ["server", "planet"]\n', ["frozen_messages", "scope", "fleet"],
                     id="bad-scope"),
        pytest.param('[rules.frozen_messages]\nscope = ["server", "server"]\n',
                     ["frozen_messages", "scope", "different scopes"], id="repeated-scope"),
        pytest.param("[rules.frozen_messages]\nscope = []\n", ["frozen_messages", "scope"], id="empty-scope"),
        pytest.param('[rules.frozen_messages]\nseverity = "apocalyptic"\n',
                     ["frozen_messages", "severity", "'apocalyptic'", "critical"], id="bad-severity"),
        pytest.param('[rules.ip_blocklisted]\nsignatures = ["spamhaus", "nope"]\n',
                     ["ip_blocklisted", "signatures", "gmail_rate_limit"], id="unknown-signature"),
        pytest.param("[rules.frozen_messages]\nthreshold = -1\n", ["frozen_messages", "threshold", "non-negative"],
                     id="negative-threshold"),
        pytest.param('[rules.frozen_messages]\nthreshold = "ten"\n', ["frozen_messages", "threshold", "number"],
                     id="text-threshold"),
        pytest.param('[rules.frozen_messages]\nenabled = "yes"\n', ["frozen_messages", "enabled", "true or false"],
                     id="non-boolean-enabled"),
        pytest.param("[rules]\nfrozen_messages = 3\n", ["frozen_messages", "table"], id="rule-is-not-a-table"),
        pytest.param('[rules."bad name!"]\nthreshold = 1\n', ["bad name!", "letters"], id="bad-rule-name"),
        pytest.param("[rule.frozen_messages]\nthreshold = 1\n", ["unknown top-level key", "rule", "[rules.NAME]"],
                     id="unknown-top-level-key"),
        pytest.param("[rules.frozen_messages\nthreshold = 1\n", ["not valid TOML"], id="invalid-toml"),
        pytest.param("[rules.frozen_messages]\nthreshold = 1\nthreshold = 2\n", ["not valid TOML"],
                     id="duplicate-key"),
        *WRONG_TYPED_SETTINGS,
    ],
)
def test_config_errors_name_the_problem(tmp_path: Path, text: str, expected: list[str]) -> None:
    message = config_error(tmp_path, text)
    for part in expected:
        assert part in message, message


SETTINGS = sorted({f.name for f in dataclasses.fields(RuleSettings)} - {"name"})
TOML_SCALARS = (
    st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=10)
    | st.sampled_from([math.nan, math.inf, -math.inf, 2.5, "15m", "4h", "server", "provider_block", "spamhaus"])
)
TOML_VALUES = TOML_SCALARS | st.recursive(  # scalars first: st.recursive alone draws mostly tables and arrays
    TOML_SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=2),
    max_leaves=4,
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([*build_rules(), "new_rule"]),
       st.dictionaries(st.sampled_from(SETTINGS), TOML_VALUES, max_size=2))
def test_any_setting_of_any_type_gives_rules_or_a_config_error(name: str, values: dict[str, Any]) -> None:
    try:
        rules = build_rules({name: values})
    except RuleConfigError as error:
        assert name in str(error)
        return
    for rule in rules.values():
        numbers = [value for value in dataclasses.astuple(rule) if isinstance(value, int | float)]
        assert all(math.isfinite(value) and value >= 0 for value in numbers), rule
        assert rule.window > 0
    for key, value in values.items():  # a number is taken as given, never rounded
        if isinstance(value, int | float) and not isinstance(value, bool):
            assert getattr(rules[name], key) == value, key


def test_invalid_toml_error_names_the_file(tmp_path: Path) -> None:
    assert str(tmp_path / "rules.toml") in config_error(tmp_path, "this is = = not toml")


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "rules.toml"
    with pytest.raises(RuleConfigError, match="cannot read the rules file") as caught:
        load_rules(missing)
    assert str(missing) in str(caught.value)


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_bytes(b"[rules.frozen_messages]\nthreshold = 1 # \xff\xfe\n")
    with pytest.raises(RuleConfigError, match="not valid TOML"):
        load_rules(path)


# ---- trackdelivery alerts ------------------------------------------------------------------------


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in list(os.environ):
        if name.startswith("TRACKDELIVERY_ALERTS_"):
            monkeypatch.delenv(name)
    return CliRunner()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def test_check_prints_one_json_line_per_rule(runner: CliRunner, tmp_path: Path) -> None:
    path = rules_file(tmp_path, """
[rules.provider_throttling]
threshold = 20
window = "30m"

[rules.gmail_only]
kind = "provider_block"
providers = ["gmail"]
scope = ["fleet", "provider"]
""")
    result = runner.invoke(alerts, ["--check", "--rules", str(path)])
    assert result.exit_code == 0, result.output
    lines = json_lines(result.stdout)
    assert [line["name"] for line in lines] == [*build_rules(), "gmail_only"]
    by_name = {line["name"]: line for line in lines}
    assert by_name["provider_throttling"] == {
        "name": "provider_throttling", "kind": "provider_block", "enabled": True, "scope": ["server", "provider"],
        "window": 1800.0, "threshold": 20, "cooldown": 3600.0, "severity": "critical",
    }
    assert by_name["gmail_only"]["scope"] == ["fleet", "provider"]


def test_check_without_a_file_prints_the_defaults(runner: CliRunner) -> None:
    result = runner.invoke(alerts, ["--check"])
    assert result.exit_code == 0, result.output
    assert [line["name"] for line in json_lines(result.stdout)] == [rule.name for rule in DEFAULT_RULES]


def test_check_takes_the_rules_file_from_the_environment(runner: CliRunner, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = rules_file(tmp_path, "[rules.frozen_messages]\nthreshold = 99\n")
    monkeypatch.setenv("TRACKDELIVERY_ALERTS_RULES_FILE", str(path))
    result = runner.invoke(alerts, ["--check"])
    assert result.exit_code == 0, result.output
    assert {line["name"]: line["threshold"] for line in json_lines(result.stdout)}["frozen_messages"] == 99


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[rules.storm]\nkind = "spam_storm"\n', "unknown kind 'spam_storm'"),
        ('[rules.frozen_messages]\nwindow = "soon"\n', "not a duration: 'soon'"),
        ("[rules.frozen_messages\n", "not valid TOML"),
    ],
)
def test_check_with_a_bad_file_fails_with_a_clear_message(
    runner: CliRunner, tmp_path: Path, text: str, message: str
) -> None:
    result = runner.invoke(alerts, ["--check", "--rules", str(rules_file(tmp_path, text))])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)  # a message, not a traceback
    assert "Error:" in result.stderr and message in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("text", "expected"), WRONG_TYPED_SETTINGS)
def test_check_with_a_wrong_typed_setting_fails_with_a_clear_message(
    runner: CliRunner, tmp_path: Path, text: str, expected: list[str]
) -> None:
    result = runner.invoke(alerts, ["--check", "--rules", str(rules_file(tmp_path, text))])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Error:" in result.stderr and "Traceback" not in result.output
    assert all(part in result.stderr for part in expected), result.stderr
    assert result.stdout == ""


def test_check_with_a_missing_file_fails(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(alerts, ["--check", "--rules", str(tmp_path / "missing.toml")])
    assert result.exit_code != 0
    assert "cannot read the rules file" in result.stderr and "missing.toml" in result.stderr


def frozen_storm_file(tmp_path: Path) -> Path:
    events = [event("frozen", t, server=SERVER, remote=False) for t in spread(12, T0, HOUR / 2)]
    events += [event("delivered", t, server="srv009", response="250 OK") for t in spread(200, T0, 3 * HOUR)]
    events.sort(key=lambda e: e["time"])
    lines = [orjson.dumps(e) for e in events]
    lines.insert(5, b"{not json")
    lines.insert(9, b'["a", "list"]')
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_dry_run_prints_the_alerts_as_json_lines(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(alerts, ["--dry-run", str(frozen_storm_file(tmp_path))])
    assert result.exit_code == 0, result.output
    records = json_lines(result.stdout)
    assert {record["rule"] for record in records} == {"frozen_messages"}
    assert records[0]["version"] == 1 and records[0]["state"] == "firing"
    assert records[0]["scope"] == {"server": SERVER}
    assert records[-1]["state"] == "resolved" and records[-1]["id"] == records[0]["id"]
    assert "1 alert(s) fired" in result.stderr and "2 unreadable line(s)" in result.stderr


def test_dry_run_uses_the_rules_file(runner: CliRunner, tmp_path: Path) -> None:
    events = frozen_storm_file(tmp_path)
    path = rules_file(tmp_path, "[rules.frozen_messages]\nthreshold = 50\n")
    result = runner.invoke(alerts, ["--dry-run", str(events), "--rules", str(path)])
    assert result.exit_code == 0, result.output
    assert json_lines(result.stdout) == []
    assert "0 alert(s) fired" in result.stderr


def test_dry_run_reads_stdin(runner: CliRunner, tmp_path: Path) -> None:
    data = frozen_storm_file(tmp_path).read_bytes()
    result = runner.invoke(alerts, ["--dry-run", "-"], input=data)
    assert result.exit_code == 0, result.output
    assert fired_rules(json_lines(result.stdout)) == ["frozen_messages"]


def fired_rules(records: list[dict[str, Any]]) -> list[str]:
    return [record["rule"] for record in records if record["version"] == 1]
