"""The native engine of ``trackdelivery parse`` writes exactly what the Python modules write.

Each test runs the real command twice, ``--engine python`` and ``--engine native``, on the same input and
compares stdout byte for byte and the summary on stderr: over the whole corpus, generated fleets, hostile
and mutated lines, other time zones and retry rules.
"""

from __future__ import annotations

import gzip
import os
import random
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.processors.exim.corpus import REPO, corpus_dir

pytestmark = pytest.mark.timeout(600)

GENERATE = (sys.executable, "-m", "trackdelivery", "generate")


def native_built() -> bool:
    try:
        import trackdelivery_native
    except ImportError:
        return False
    return hasattr(trackdelivery_native, "exim_parse_files")


def require_native() -> None:
    """Fails under CI (which builds the native engine) when it is missing; skips elsewhere."""
    if not native_built():
        if os.environ.get("CI") == "true":
            pytest.fail("CI builds the native engine (`make install`); it is missing")
        pytest.skip("the native engine is not built here (make install)")


@pytest.fixture(autouse=True)
def _native_required() -> None:
    require_native()


def parse(engine: str, *args: str | Path, stdin: bytes | None = None) -> tuple[int, bytes, str]:
    result = subprocess.run(
        [sys.executable, "-m", "trackdelivery", "parse", "--engine", engine, *map(str, args)],
        input=stdin,
        capture_output=True,
        cwd=REPO,
        timeout=300,
    )
    return result.returncode, result.stdout, result.stderr.decode()


def assert_same(*args: str | Path, stdin: bytes | None = None) -> bytes:
    """Both engines on the same arguments; the (equal) output."""
    python = parse("python", *args, stdin=stdin)
    native = parse("native", *args, stdin=stdin)
    assert python[0] == 0, python[2]
    assert native[0] == 0, native[2]
    if native[1] != python[1]:
        ours, theirs = native[1].splitlines(), python[1].splitlines()
        first = next(
            (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs))
        )
        pytest.fail(
            f"outputs differ: native {len(ours)} lines, python {len(theirs)}; first difference at line {first + 1}:\n"
            f"native: {ours[first][:3000] if first < len(ours) else None!r}\n"
            f"python: {theirs[first][:3000] if first < len(theirs) else None!r}"
        )
    assert native[2] == python[2]
    return native[1]


def corpus_files() -> list[Path]:
    return sorted(path for path in corpus_dir().rglob("*") if path.is_file() and path.name != "SOURCES.md")


@pytest.mark.parametrize("output", ["lines", "events"])
def test_the_whole_corpus_gives_the_same_output(output: str) -> None:
    files = corpus_files()
    out = assert_same("--output", output, *files)
    assert len(out.splitlines()) > (12_000 if output == "lines" else 1_000)


def test_one_server_for_all_corpus_files_gives_the_same_events() -> None:
    """Every file fed as one server: message ids of different files meet in one correlator state."""
    assert_same("--server", "one", *corpus_files())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fleet")
    subprocess.run(
        [*GENERATE, "--servers", "3", "--messages", "4000", "--out", str(out), "--seed", "7"],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    return out


@pytest.mark.parametrize("output", ["lines", "events"])
def test_a_generated_fleet_gives_the_same_output(fleet: Path, output: str) -> None:
    logs = sorted(fleet.glob("*/exim_mainlog"))
    assert len(logs) == 3
    out = assert_same("--output", output, *logs)
    if output == "events":
        types = {orjson.loads(line)["type"] for line in out.splitlines()}
        assert {"delivered", "deferred", "bounced", "rejected"} <= types


def test_lines_after_a_message_completed_give_the_same_events(fleet: Path, tmp_path: Path) -> None:
    """The native engine packs a message's state when it completes; a later line unpacks it."""
    log = sorted(fleet.glob("*/exim_mainlog"))[0]
    # the log fed twice as one server: the second time every line finds its message completed
    out = assert_same("--server", "s1", log, log)
    assert len(out.splitlines()) > len(assert_same("--server", "s1", log).splitlines())
    late = tmp_path / "late.log"
    late.write_text(
        "2025-03-10 10:00:00 1tsxAK-0000000Gk9-0aBc <= a@x.example U=a P=local S=10 for b@y.example C@y.example\n"
        "2025-03-10 10:00:01 1tsxAK-0000000Gk9-0aBc ** b@y.example R=dnslookup T=remote_smtp H=mx.y.example"
        " [192.0.2.1]: SMTP error from remote mail server after RCPT TO:<b@y.example>: 550 5.1.1 No such user\n"
        "2025-03-10 10:00:01 1tsxAK-0000000Gk9-0aBc => C@y.example <c@y.example> R=dnslookup T=remote_smtp"
        ' H=mx.y.example [192.0.2.1] C="250 OK"\n'
        "2025-03-10 10:00:02 1tsxAK-0000000Gk9-0aBc Completed\n"
        "2025-03-10 10:00:03 1tsxAL-0000000Gk9-0aBc <= <> R=1tsxAK-0000000Gk9-0aBc U=mailnull P=local S=2000"
        " for a@x.example\n"
        "2025-03-10 10:00:04 1tsxAK-0000000Gk9-0aBc == C@y.example R=dnslookup T=remote_smtp defer (-44):"
        " SMTP error from remote mail server after RCPT TO:<c@y.example>: 451 4.7.1 Greylisted\n"
        "2025-03-10 10:00:05 1tsxAK-0000000Gk9-0aBc Message is frozen\n"
        "2025-03-10 10:00:06 1tsxAK-0000000Gk9-0aBc Completed\n"
        "2025-03-10 10:00:07 1tsxAK-0000000Gk9-0aBc => C@y.example <c@y.example> R=dnslookup T=remote_smtp"
        ' H=mx.y.example [192.0.2.1] C="250 OK again"\n'
        "2025-03-10 10:00:08 1tsxAK-0000000Gk9-0aBc Completed\n"
    )
    for output in ("lines", "events"):
        assert_same("--output", output, late)


def test_output_memory_a_stream_keeps_is_never_reused(fleet: Path) -> None:
    """The engine hands `write` views of its own buffers; a stream that keeps a view (here through a
    buffer export, so the view cannot be released) must find the same bytes there later."""
    import pickle

    import trackdelivery_native

    from processors.exim.retry import DEFAULT_RETRY_RULES
    from trackdelivery.events import SCHEMA_VERSION

    logs = sorted(fleet.glob("*/exim_mainlog"))
    kept: list[tuple[bytes, pickle.PickleBuffer]] = []

    def write(view: memoryview) -> None:
        kept.append((bytes(view), pickle.PickleBuffer(view)))

    for events in (True, False):
        kept.clear()
        pairs = [(str(log), log.parent.name) for log in logs]
        trackdelivery_native.exim_parse_files(pairs, events, DEFAULT_RETRY_RULES, SCHEMA_VERSION, write)
        assert kept
        assert all(bytes(buffer.raw()) == copy for copy, buffer in kept)
        output = b"".join(copy for copy, _ in kept)
        assert output == parse("native", "--output", "events" if events else "lines", *logs)[1]


def test_gzip_and_stdin_give_what_the_plain_file_gives(fleet: Path, tmp_path: Path) -> None:
    log = sorted(fleet.glob("*/exim_mainlog"))[0]
    data = log.read_bytes()
    compressed = tmp_path / "mainlog.gz"
    # two gzip members, as a log rotated by appending gives
    half = data.rfind(b"\n", 0, len(data) // 2) + 1
    compressed.write_bytes(gzip.compress(data[:half]) + gzip.compress(data[half:]))
    plain = assert_same("--server", "s1", log)
    assert assert_same("--server", "s1", compressed) == plain
    assert assert_same("--server", "s1", "-", stdin=data) == plain


def mutate(rng: random.Random, line: bytes) -> bytes:
    tokens = [b" ", b'"', b"\\", b"(", b")", b"<", b">", b"[", b"]", b"=", b":", b" : ", b"\x00", b"\xff", b"\xc3"]
    tokens += [b"H=", b"R=", b'T="', b'C="', b"defer (", b"for ", b"\\n", b"\\316", b"**", b"=>", b"\t", b"\r"]
    tokens += ["é".encode(), "\u2003".encode(), "٣".encode(), b"\x1c", b"\x85", b"\xa0", b"@", b"|"]
    data = bytearray(line)
    for _ in range(rng.randint(1, 6)):
        position = rng.randint(0, len(data))
        token = rng.choice(tokens) if rng.random() < 0.7 else rng.randbytes(rng.randint(1, 4))
        if rng.random() < 0.5:
            data[position:position] = token
        else:
            data[position : position + len(token)] = token
    return bytes(data).replace(b"\n", b" ")


def hostile_lines(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    real = [
        line
        for path in corpus_files()
        for line in path.read_bytes().split(b"\n")
        if line and not path.name.endswith(".gz")
    ]
    lines = []
    for _ in range(count):
        choice = rng.random()
        line = rng.choice(real)
        if choice < 0.1:
            lines.append(rng.randbytes(rng.randint(0, 200)).replace(b"\n", b""))
        elif choice < 0.3:
            lines.append(line[: rng.randint(0, len(line))])
        else:
            lines.append(mutate(rng, line))
    lines.append(real[0] + b"x" * 100_000)
    lines.append(real[-1] + "é".encode() * 40_000)
    return lines


@pytest.mark.parametrize("output", ["lines", "events"])
def test_mutated_and_hostile_lines_give_the_same_output(tmp_path: Path, output: str) -> None:
    log = tmp_path / "hostile.log"
    lines = hostile_lines(seed=3, count=20_000)
    # each mutated line also goes in beside its original's neighbours, so the correlator sees damaged
    # lines of messages it knows
    log.write_bytes(b"\n".join(lines) + b"\n")
    assert_same("--output", output, log)


def test_other_time_zones_and_syslog_stamps_give_the_same_output(tmp_path: Path) -> None:
    log = tmp_path / "zones.log"
    log.write_text(
        "2025-03-30 01:59:59 1tsxAK-0000000Gk9-0aBc <= a@example.com U=alice P=local S=100 for b@example.org\n"
        "2025-03-30 02:30:00 1tsxAK-0000000Gk9-0aBc => b@example.org R=lookuphost T=remote_smtp"
        ' H=mx.example.org [192.0.2.1] C="250 ok"\n'
        "2025-03-30 03:00:00 1tsxAK-0000000Gk9-0aBc Completed\n"
        "2025-10-26 02:30:00 +0100 1tsxAL-0000000Gk9-0aBc <= c@example.com U=carl P=local S=1 for d@example.org\n"
        "2025-10-26 02:30:00.123 1tsxAL-0000000Gk9-0aBc == d@example.org R=lookuphost T=remote_smtp defer (111):"
        " Connection refused\n"
        "Feb 14 18:12:33 mail exim[1234]: 2025-02-14 18:12:33 1tsxAM-0000000Gk9-0aBc <= e@x.example U=e P=local"
        " S=5 for f@y.example\n"
        "Feb 14 18:12:34 mail exim[1234]: 1tsxAM-0000000Gk9-0aBc ** f@y.example: Unrouteable address\n"
        "2025-02-31 10:00:00 1tsxAN-0000000Gk9-0aBc <= g@x.example U=g P=local S=5 for h@y.example\n"
    )
    for zone in ("UTC", "Europe/Berlin", "America/New_York"):
        for output in ("lines", "events"):
            assert_same("--tz", zone, "--output", output, log)


def test_other_retry_rules_give_the_same_events(fleet: Path) -> None:
    log = sorted(fleet.glob("*/exim_mainlog"))[1]
    assert_same("--retry-rules", "F,1h,10m; G,2d,30m,2.0; F,5d,8h", log)


def test_the_native_engine_refuses_a_table() -> None:
    code, _, stderr = parse("native", "--format", "table", "-", stdin=b"")
    assert code == 2
    assert "JSON lines only" in stderr


def test_a_closed_pipe_ends_the_native_engine_quietly(fleet: Path) -> None:
    logs = sorted(fleet.glob("*/exim_mainlog"))
    command = (
        f"{sys.executable} -m trackdelivery parse --engine native --output lines {' '.join(map(str, logs))} | head -1"
    )
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, cwd=REPO, timeout=120)
    assert result.stdout.count(b"\n") == 1
    assert result.returncode == 0, result.stderr
    assert b"Traceback" not in result.stderr


def test_an_unreadable_input_is_a_clear_error(tmp_path: Path, fleet: Path) -> None:
    log = sorted(fleet.glob("*/exim_mainlog"))[0]
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(log.read_bytes())[:5000])
    code, _, stderr = parse("native", broken)
    assert code == 1
    assert f"cannot read {broken}" in stderr
    assert "Traceback" not in stderr


# -- the parts, in process: many more inputs than the command runs can take ---------------------------------


def test_each_line_parses_to_the_same_fields_with_both_parsers() -> None:
    """Every corpus line and 30,000 mutated ones, field by field (``extra`` in order), also in a fixed zone."""
    import dataclasses
    from datetime import timedelta, timezone

    import trackdelivery_native

    from processors.exim.parser import parse_line

    rng = random.Random(11)
    real = [line for path in corpus_files() for line in path.read_bytes().split(b"\n") if not path.name.endswith(".gz")]
    inputs = real + [mutate(rng, rng.choice(real)) for _ in range(30_000)] + [rng.randbytes(80) for _ in range(2000)]
    differences = []
    for raw in inputs:
        for hours in (None, 5.5):
            zone = timezone(timedelta(hours=hours)) if hours is not None else None
            want = dataclasses.asdict(parse_line(raw, default_tz=zone) if zone else parse_line(raw))
            want["kind"] = str(want["kind"])
            got = trackdelivery_native.exim_parse_line_fields(raw, hours)
            if got != want or list(got["extra"]) != list(want["extra"]):
                differences.append((raw[:200], hours, {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}))
    assert not differences, f"{len(differences)} lines differ, first: {differences[:3]}"


def test_the_native_classifier_gives_the_python_reason_and_rule() -> None:
    """Every deferral, failure and rejection text of the corpus, under every kind and several codes and
    phases, plus mutated texts."""
    import trackdelivery_native

    from processors.exim.parser import parse_line
    from processors.exim.reasons import classify

    texts = []
    for path in corpus_files():
        for raw in path.read_bytes().split(b"\n"):
            line = parse_line(raw)
            if line.error:
                texts.append((line.error, line.smtp_code, line.enhanced_code, line.errno, line.smtp_phase))
    assert len(texts) > 300
    rng = random.Random(5)
    for _ in range(5000):
        text = mutate(rng, rng.choice(texts)[0].encode()).decode(errors="replace")
        texts.append((text, rng.choice([None, 421, 450, 550, 554, 999]), rng.choice([None, "5.7.1", "4.2.2", "x"])))
        texts[-1] += (rng.choice([None, -44, -53, 111, 5000]), rng.choice([None, "rcpt", "data", "nonsense"]))
    native = trackdelivery_native.NativeClassifier()
    differences = []
    for text, code, enhanced, errno, phase in texts:
        for kind in ("defer", "fail", "reject"):
            want = classify(text=text, smtp_code=code, enhanced_code=enhanced, errno=errno, phase=phase, kind=kind)
            got = native.classify(text, code, enhanced, errno, phase, kind)
            if got != (want.reason.value, want.rule):
                differences.append((text[:200], code, enhanced, errno, phase, kind, got, want.rule))
    assert not differences, f"{len(differences)} of {3 * len(texts)} differ, first: {differences[:3]}"


def test_event_ids_are_the_python_ones() -> None:
    import trackdelivery_native

    from trackdelivery.events import make_event_id

    rng = random.Random(2)
    for _ in range(20_000):
        server = "srv" + "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(0, 200)))
        args = (
            server,
            rng.choice([None, "1tsxAK-0000000Gk9-0aBc", ""]),
            rng.choice([None, "bob@example.com", "é@x", "x" * rng.randint(0, 300)]),
            rng.choice(["delivered", "deferred", "rejected"]),
            rng.choice(
                [
                    rng.uniform(0, 2e9),
                    float(rng.randint(0, 2**31)),
                    # whole seconds at the digit-count edges, negative ones and the last exact ones
                    float(10 ** rng.randint(0, 15) - rng.randint(0, 1)),
                    -float(10 ** rng.randint(0, 15) - rng.randint(0, 1)),
                    float(rng.randint(-(2**53), 2**53)),
                ]
            ),
            rng.choice(
                [
                    rng.randint(0, 30),
                    10 ** rng.randint(0, 18) - rng.randint(0, 1),
                    -(10 ** rng.randint(0, 18)) + rng.randint(0, 1),
                    rng.randint(-(2**63), 2**63 - 1),
                ]
            ),
        )
        assert trackdelivery_native.exim_event_id(*args) == make_event_id(*args), args
