"""``trackdelivery parse`` through click's CliRunner: files, gzip, stdin, both outputs, errors."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from processors.exim.cli import server_name_for
from tests.processors.exim.test_native_engine import require_native
from trackdelivery.cli import main

LOG = "".join(
    line + "\n"
    for line in [
        (
            '2025-03-14 10:22:40 1tsxAK-0000000Gk9-0aBc Warning: "SpamAssassin as cpaneleximscanner'
            ' detected message as NOT spam (0.3)"'
        ),
        (
            "2025-03-14 10:22:40 1tsxAK-0000000Gk9-0aBc <= alice@example.com H=(laptop)"
            " [203.0.113.7]:51234 P=esmtpsa X=TLS1.3:TLS_AES_256_GCM_SHA384:256 CV=no"
            ' A=dovecot_login:alice@example.com S=18234 id=CAB123@mail.example.com T="Quarterly'
            ' report" for carol@yahoo.com dave@yahoo.com bob@gmail.com'
        ),
        (
            "2025-03-14 10:22:42 1tsxAK-0000000Gk9-0aBc => carol@yahoo.com R=dkim_lookuphost"
            " T=dkim_remote_smtp H=mta6.am0.yahoodns.net [67.195.204.72]"
            ' X=TLS1.3:TLS_AES_128_GCM_SHA256:128 CV=yes C="250 ok dirdel"'
        ),
        (
            "2025-03-14 10:22:42 1tsxAK-0000000Gk9-0aBc -> dave@yahoo.com R=dkim_lookuphost"
            ' T=dkim_remote_smtp H=mta6.am0.yahoodns.net [67.195.204.72]* C="250 ok dirdel"'
        ),
        (
            "2025-03-14 10:22:43 1tsxAK-0000000Gk9-0aBc == bob@gmail.com R=dkim_lookuphost"
            " T=dkim_remote_smtp defer (-44) H=gmail-smtp-in.l.google.com [142.250.102.27]: SMTP error"
            " from remote mail server after RCPT TO:<bob@gmail.com>: 451 4.7.1 Greylisting in action,"
            " please come back later"
        ),
        (
            "2025-03-14 10:30:02 H=(ylmf-pc) [185.220.101.7]:61234 F=<spam@bad.example> rejected RCPT"
            " <info@example.com>: JunkMail rejected - (ylmf-pc) [185.220.101.7]:61234 is in an RBL:"
            " https://www.spamhaus.org/"
        ),
        (
            "2025-03-14 10:31:00 1tsxB0-0000000GkA-1111 <= shop@example.com U=shopuser P=local S=2345"
            ' T="Order #1042" for zed@example.org'
        ),
        "this line is not an exim line at all",
    ]
).encode()


@pytest.fixture(autouse=True, params=["python", "native"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with both engines (the native one writes through the same streams)."""
    if request.param == "native":
        require_native()
    monkeypatch.setenv("TRACKDELIVERY_PARSE_ENGINE", request.param)
    return str(request.param)


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    folder = tmp_path / "web7"
    folder.mkdir()
    path = folder / "exim_mainlog"
    path.write_bytes(LOG)
    return path


def invoke(*args: str, input: bytes | None = None) -> tuple[int, list[dict[str, Any]], str]:
    result = CliRunner().invoke(main, ["parse", *args], input=input, catch_exceptions=False)
    stdout = result.stdout_bytes
    records = [orjson.loads(raw) for raw in stdout.splitlines() if raw.strip()] if result.exit_code == 0 else []
    return result.exit_code, records, result.stderr


def test_lines_output_has_one_record_per_line(log_file: Path) -> None:
    code, records, stderr = invoke("--output", "lines", str(log_file))
    assert code == 0
    assert [record["line"] for record in records] == list(range(1, 9))
    assert records[1]["kind"] == "arrival" and records[1]["msgid"] == "1tsxAK-0000000Gk9-0aBc"
    assert records[1]["subject"] == "Quarterly report" and records[1]["size"] == 18234
    assert records[5]["kind"] == "rejection" and records[5]["msgid"] is None
    assert records[7]["kind"] == "continuation" and records[7]["raw"] == "this line is not an exim line at all"
    assert all(record["server"] == "web7" for record in records)
    assert all(value not in (None, "", [], {}) for record in records for key, value in record.items() if key != "msgid")
    assert "8 lines, 0 unknown" in stderr and "arrival=2" in stderr


def test_events_output_correlates_and_flushes_in_progress(log_file: Path) -> None:
    code, records, stderr = invoke("--output", "events", str(log_file))
    assert code == 0
    by_type = {(record["type"], record["recipient"]) for record in records}
    assert by_type == {
        ("delivered", "carol@yahoo.com"),
        ("delivered", "dave@yahoo.com"),
        ("deferred", "bob@gmail.com"),
        ("rejected", "info@example.com"),
        ("in_progress", "zed@example.org"),
    }
    delivered = next(record for record in records if record["recipient"] == "carol@yahoo.com")
    assert delivered["spam_score"] == 0.3 and delivered["server"] == "web7" and delivered["v"] == 1
    assert delivered["response"] == "250 ok dirdel" and delivered["auth_id"] == "alice@example.com"
    assert len({record["event_id"] for record in records}) == len(records)
    assert "events: 5" in stderr


def test_gzip_and_stdin_give_the_same_events(log_file: Path, tmp_path: Path) -> None:
    compressed = tmp_path / "web7.log.gz"  # the name says nothing: the magic bytes do
    compressed.write_bytes(gzip.compress(LOG))
    _, plain, _ = invoke("--server", "web7", str(log_file))
    code, unzipped, _ = invoke("--server", "web7", str(compressed))
    assert code == 0 and unzipped == plain
    code, piped, _ = invoke("--server", "web7", "-", input=LOG)
    assert code == 0 and piped == plain
    code, piped_gz, _ = invoke("--server", "web7", input=gzip.compress(LOG))
    assert code == 0 and piped_gz == plain


def test_table_format(log_file: Path) -> None:
    # a table is the Python engine's work whichever engine is configured ("auto" picks it)
    result = CliRunner().invoke(main, ["parse", "--engine", "auto", "--format", "table", str(log_file)])
    assert result.exit_code == 0
    assert "carol@yahoo.com" in result.stdout and "delivered" in result.stdout


def test_time_zone_applies_to_times_without_offset(log_file: Path) -> None:
    _, utc, _ = invoke("--output", "lines", str(log_file))
    _, shifted, _ = invoke("--output", "lines", "--tz", "Europe/Berlin", str(log_file))
    assert utc[0]["time"] - shifted[0]["time"] == 3600


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/exim_mainlog"], "does not exist"),
        (["--tz", "Mars/Olympus"], "unknown time zone"),
        (["--retry-rules", "nonsense,,"], "--retry-rules"),
        (["--output", "xml"], "xml"),
    ],
)
def test_bad_usage_is_a_clear_error(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["parse", *args], input=b"")
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_unreadable_gzip_is_a_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(LOG)[:40])
    result = CliRunner().invoke(main, ["parse", str(broken)])
    assert result.exit_code == 1
    assert "cannot read" in result.stderr and "Traceback" not in result.stderr


def test_server_name_from_path(tmp_path: Path) -> None:
    assert server_name_for(str(tmp_path / "mx3" / "exim_mainlog")) == "mx3"
    assert server_name_for(str(tmp_path / "mx3" / "exim_mainlog.1.gz")) == "mx3"
    assert server_name_for(str(tmp_path / "web12.log.gz")) == "web12"
    assert server_name_for("-") == "stdin"


BOUNCE_LOG = (
    b"2025-03-14 11:00:00 1tsxC0-0000000GkB-2222 <= alice@example.com U=alice P=local S=100 for nosuch@gmail.com\n"
    b"2025-03-14 11:00:01 1tsxC0-0000000GkB-2222 ** nosuch@gmail.com R=dkim_lookuphost T=dkim_remote_smtp"
    b" H=gmail-smtp-in.l.google.com [142.250.102.27]: SMTP error from remote mail server after RCPT"
    b" TO:<nosuch@gmail.com>: 550 5.1.1 The email account that you tried to reach does not exist\n"
    b"2025-03-14 11:00:01 1tsxC1-0000000GkC-3333 <= <> R=1tsxC0-0000000GkB-2222 U=mailnull P=local S=200"
    b' T="Mail delivery failed: returning message to sender" for alice@example.com\n'
    b"2025-03-14 11:00:01 1tsxC0-0000000GkB-2222 Completed\n"
)


def test_a_failure_linked_to_its_bounce_is_written_once() -> None:
    code, records, _ = invoke("--server", "web7", input=BOUNCE_LOG)
    assert code == 0
    bounced = [record for record in records if record["type"] == "bounced"]
    assert len(bounced) == 1
    assert bounced[0]["bounce_msgid"] == "1tsxC1-0000000GkC-3333"
    assert bounced[0]["reason"] == "recipient_unknown" and bounced[0]["smtp_code"] == 550
    bounce = [record for record in records if record["msgid"] == "1tsxC1-0000000GkC-3333"]
    assert [record["type"] for record in bounce] == ["in_progress"]
    assert bounce[0]["parent_msgid"] == "1tsxC0-0000000GkB-2222" and bounce[0]["sender"] == ""


def test_the_program_skips_the_teardown_after_a_native_parse(
    engine: str, log_file: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """`trackdelivery parse` with the native engine ends with `os._exit(0)` once everything is written
    (the interpreter's teardown is a few milliseconds of every run); the Python engine ends normally."""
    import sys

    import trackdelivery.program as program

    class Exited(Exception):
        pass

    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise Exited

    monkeypatch.setattr(program.os, "_exit", fake_exit)
    monkeypatch.setattr(program, "_skip_teardown", False)
    monkeypatch.delitem(sys.modules, "coverage", raising=False)  # a measured run keeps its teardown
    monkeypatch.setattr(sys, "argv", ["trackdelivery", "parse", "--output", "events", str(log_file)])
    if engine == "native":
        with pytest.raises(Exited):
            program.run()
        assert exits == [0]
    else:
        with pytest.raises(SystemExit) as done:
            program.run()
        assert done.value.code == 0
        assert exits == []
    out, err = capfd.readouterr()
    assert len(out.splitlines()) == len(invoke("--output", "events", str(log_file))[1])
    assert "events:" in err
