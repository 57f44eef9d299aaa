"""Bad-input suite: fuzzed lines through the whole pipeline, every line accounted for, no crash, bounded memory.

    python bench/badinput.py [--lines 1000000] [--seed 1] [--long-lines N] [--corpus DIR]

Writes an ``exim_mainlog`` of N lines while the real shipper (``trackdelivery ship``) follows it and one real
worker (``trackdelivery process``) consumes the raw topic. The lines (each is the bytes up to a newline) are
a seeded mix of generator output (``trackdelivery.generator``, interleaved in log order), real lines from
``../shared/corpus`` as they are, truncated and mutated, random bytes, NUL runs, invalid UTF-8, control
characters, empty lines, 2-60 KB fields, odd timestamps (year 1 to 9999; future ones only at the end, as
they move the server's log clock for good), lines of up to 1 MiB (``--long-lines``, plus lines right at the
shipper's ``max_line_bytes``), three lines of control characters that JSON escaping turns into the largest
raw record, and one message to up to 5,000 long addresses, whose correlation state outgrows a Kafka record.
The file is written in chunks of random size (1 byte to 1 MiB), so the shipper also sees lines cut between
its reads. The generated part is dated up to now, so the same seed gives slightly different lines each day.

The shipper cuts a line longer than ``max_line_bytes`` (64 KiB) to that size, marks it ``truncated`` in the
record and drops the rest: the line stays one line at its own offset (``trackdelivery_shipper_long_lines``).
Every line is then accounted for, line by line, by its byte offset:

- shipped: the raw topic, read back and compared with the file (offset, bytes, ``truncated`` flag);
- taken in: the worker's ``trackdelivery_processor_lines_total`` minus duplicates;
- parsed: the worker's ``trackdelivery_processor_parsed_lines_total{kind}`` for every kind but ``unknown``,
  which must equal, kind by kind, an offline parse of the shipped bytes;
- dead-lettered: the distinct offsets on the unparsed topic, read back: every line the offline parse
  calls ``unknown`` must be there;
- unaccounted = lines - parsed - dead-lettered (+ lines counted in both: parsed, then failed in the
  correlator); must be 0, with no line missing from the raw topic and no kind mismatch.

Crashes: a shipper, worker, Kafka or Redis process that exits before it is stopped, a non-zero exit on
SIGTERM, or a Python traceback in the shipper's or worker's log. Memory: VmRSS of the shipper and the
worker sampled from /proc every half second and their VmHWM (the kernel's exact peak) at the end, held
against ``RSS_BOUND_MIB`` (why those values: see there). Kafka and Redis: KAFKA_BOOTSTRAP_SERVERS /
REDIS_URL when set, else private ones started with trackdelivery.devenv. The last line is one JSON object;
the exit status is 1 when any check fails. ``tests/test_bad_input.py`` runs a short form of the same code.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from processors.exim.parser import parse_line  # noqa: E402
from processors.exim.types import LineKind  # noqa: E402
from trackdelivery.records import decode_batch  # noqa: E402

CACHE = REPO / "bench" / ".cache"
DEFAULT_CORPUS = Path(os.environ.get("TRACKDELIVERY_CORPUS") or REPO.parent / "shared" / "corpus")
MAX_LINE_BYTES = 64 << 10  # the shipper's default max_line_bytes (producers/settings.py)
MIB = 1 << 20
LINES_PER_MESSAGE = 9  # what the generator writes per message, about
UNKNOWN = LineKind.UNKNOWN.value

#: Peak RSS bounds (MiB): what each process can hold, whatever the lines are.
#: - shipper: interpreter, librdkafka, pydantic, prometheus_client ~45 MiB at start; a read buffer of
#:   max_line_bytes + 1 MiB; at most batch_bytes (1 MiB) of lines read and not checkpointed, as records that
#:   JSON escaping makes up to 6 times larger (a NUL is ``\u0000``) and that librdkafka copies and
#:   compresses: ~20 MiB that depends on the lines. A long line is never held whole: what is past
#:   max_line_bytes is dropped as it is read. Measured: 60 MiB peak for 1,000,000 lines, flat from start.
#: - worker: interpreter, faust, aiokafka, redis-py ~85 MiB at start; faust's stream buffer of raw records
#:   read ahead (STREAM_BUFFER_RECORDS = 128 in processors/app.py): 16 MiB of 128 KiB records, 120 MiB if
#:   every record were 960 KiB of escaped control characters; the state table, one entry per open message
#:   (dropped 1 h after completion or 8 days after its last line, log time) and per file, each at most
#:   MAX_STATE_BYTES; one record's outputs and faust's producer buffer. Measured: 261 MiB peak for 1,000,000
#:   lines (734 MiB with faust's default buffer of 4096 records, which the bound catches).
RSS_BOUND_MIB = {"shipper": 150, "worker": 400}

# -- fuzzed lines ------------------------------------------------------------------------------------------

FALLBACK_CORPUS = [
    b"2025-03-14 10:22:40 1sDcIh-000000004YY-3wAT <= alice@example.com H=(laptop) [203.0.113.7]:51234 "
    b'P=esmtpsa S=18234 T="Quarterly \\"report\\"" for carol@yahoo.com',
    b"1999-03-02 09:44:33 10HmaX-0005vi-00 ** d@test.ex R=all T=smtp H=127.0.0.1 [127.0.0.1]* : 550 no",
    b"2010-09-13 05:00:14 [1534] 1Ov4tU-0000Nz-Rm => user <user@example.org> R=localuser T=local_delivery",
]
TOKENS = [b" ", b'"', b"\\", b"(", b")", b"<", b">", b"[", b"]", b"=", b":", b": ", b" : ", b"\x00", b"\xff",
          b"\xc3", b"H=", b"R=", b'T="', b'C="', b"defer (", b"for ", b"\\n", b"\\316", b"**", b"=>", b"<=",
          b"\t", b"Completed", b"-", b"1sDcIh-000000004YY-3wAT", b"10HmaX-0005vi-00", b"U=", b"S=", b"P="]
INVALID_UTF8 = [b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xed\xbf\xbf",
                b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xfe", b"\xff", b"\xe2\x82",
                b"\xf0\x9f\x98", b"\xc3", b"caf\xe9", b"\x8e\xa1"]
CONTROLS = [b"\r", b"\t", b"\x0b", b"\x0c", b"\x1b[31m", b"\x1b]0;title\x07", b"\x08", b"\x7f", b"\x1c", b"\x1d",
            b"\x1e", b"\x01", b"\x1f", b"\x00", "\u0085".encode(), "\u2028".encode(), "\u2029".encode(),
            "\ufeff".encode(), "\u202e".encode(), "\u200b".encode(), b"\r\r"]
#: timestamps a corrupted or hostile log may carry; the future ones move the server's log clock for good
PAST_TIMES = [b"0001-01-01 00:00:00", b"1970-01-01 00:00:00", b"1970-01-01 00:00:00 -1400", b"1999-12-31 23:59:60",
              b"2025-02-30 25:61:61", b"0000-00-00 00:00:00", b"2025-03-14T10:22:40.123456789+99:99"]
FUTURE_TIMES = [b"9999-12-31 23:59:59", b"2038-01-19 03:14:08", b"2106-02-07 06:28:16 +1400"]
TIMESTAMP = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")

#: share of each kind of line (the long lines are placed separately, ``long_lines`` of them)
MIX: tuple[tuple[str, float], ...] = (
    ("generator", 0.40),  # generated traffic in log order: correlated messages, events, Redis writes
    ("corpus", 0.065),  # real lines, unchanged
    ("mutated", 0.17),  # real lines with tokens, bytes and NULs inserted or overwritten
    ("truncated", 0.08),  # real or generated lines cut anywhere (also inside a UTF-8 sequence)
    ("random", 0.09),  # random bytes, 0-300 of them
    ("nul", 0.03),  # NUL runs (a log file's preallocated hole after a crash), or NULs inside a line
    ("invalid_utf8", 0.05),  # real lines with invalid UTF-8 sequences, overlong forms, surrogates, Latin-1
    ("control", 0.05),  # CR, ESC sequences, C0/C1 controls, U+2028/2029 (splitlines() boundaries), BOM
    ("empty", 0.01),
    ("whitespace", 0.01),
    ("huge_field", 0.005),  # a subject, recipient list or host name of 2-60 KB (under the shipper's cut)
    ("time_warp", 0.005),  # a real line with a timestamp from year 1 to 2025 that is odd or invalid
)


def load_corpus(root: Path) -> list[bytes]:
    """Every non-empty line of the corpus files (``# source:`` headers and fail2ban comments left out)."""
    lines: list[bytes] = []
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix != ".md":
                lines.extend(line for line in path.read_bytes().split(b"\n") if line and not line.startswith(b"#"))
    return lines or list(FALLBACK_CORPUS)


def generated_lines(out: Path, lines: int, seed: int, days: float = 3.0) -> Iterator[bytes]:
    """About ``lines`` lines of one generated server, ending now, then the same again (never runs dry)."""
    from trackdelivery.generator.runner import FleetRun, GenerateConfig

    start = datetime.datetime.now(datetime.UTC).replace(microsecond=0) - datetime.timedelta(days=days + 0.1)
    run = FleetRun(GenerateConfig(servers=1, messages=max(10, lines // LINES_PER_MESSAGE + 10), out=out, seed=seed,
                                  days=days, start=start))
    try:
        run.run()
    finally:
        run.close()
    path = next(out.glob("*/exim_mainlog"))
    while True:
        with path.open("rb") as file:
            for line in file:
                yield line.rstrip(b"\n")


class LineFuzzer:
    """Hostile lines, one at a time, without newlines (a newline would make two lines)."""

    def __init__(self, rng: random.Random, corpus: list[bytes], generated: Iterator[bytes],
                 max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.rng = rng
        self.corpus = corpus
        self.generated = generated
        self.max_line_bytes = max_line_bytes
        self._names = [name for name, _ in MIX]
        self._weights = [weight for _, weight in MIX]

    def real(self) -> bytes:
        return self.rng.choice(self.corpus) if self.rng.random() < 0.5 else next(self.generated)

    def line(self) -> tuple[str, bytes]:
        category = self.rng.choices(self._names, self._weights)[0]
        return category, getattr(self, "_" + category)().replace(b"\n", b" ")

    def _generator(self) -> bytes:
        return next(self.generated)

    def _corpus(self) -> bytes:
        return self.rng.choice(self.corpus)

    def _splice(self, data: bytes, tokens: list[bytes], count: int) -> bytes:
        rng = self.rng
        buffer = bytearray(data)
        for _ in range(count):
            position = rng.randint(0, len(buffer))
            token = rng.choice(tokens)
            if rng.random() < 0.5:
                buffer[position:position] = token
            else:
                buffer[position:position + len(token)] = token
        return bytes(buffer)

    def _mutated(self) -> bytes:
        rng = self.rng
        data = self.real()
        if rng.random() < 0.3:  # swap two fields
            words = data.split(b" ")
            if len(words) > 3:
                i, j = rng.randrange(len(words)), rng.randrange(len(words))
                words[i], words[j] = words[j], words[i]
            data = b" ".join(words)
        tokens = TOKENS if rng.random() < 0.7 else [rng.randbytes(rng.randint(1, 4)) for _ in range(4)]
        return self._splice(data, tokens, rng.randint(1, 6))

    def _truncated(self) -> bytes:
        data = self.real()
        return data[: self.rng.randint(0, len(data))]

    def _random(self) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, 300))

    def _nul(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.4:
            return b"\x00" * rng.randint(1, 4096)
        return self._splice(self.real(), [b"\x00", b"\x00" * 16, b"\x00\x00\x00\x00"], rng.randint(1, 5))

    def _invalid_utf8(self) -> bytes:
        rng = self.rng
        data = self.real()
        if rng.random() < 0.15:  # a line that is Latin-1 instead of UTF-8
            return data.decode("utf-8", "replace").encode("latin-1", "replace") + b" r\xe9sum\xe9 \xa3"
        return self._splice(data, INVALID_UTF8, rng.randint(1, 4))

    def _control(self) -> bytes:
        rng = self.rng
        data = self.real()
        if rng.random() < 0.2:
            data += b"\r"  # CRLF line ending
        return self._splice(data, CONTROLS, rng.randint(1, 5))

    def _empty(self) -> bytes:
        return b""

    def _whitespace(self) -> bytes:
        return bytes(self.rng.choice(b" \t\r") for _ in range(self.rng.randint(1, 200)))

    def _huge_field(self) -> bytes:
        rng = self.rng
        size = rng.randint(2_000, 60_000)
        head = next(self.generated)
        match rng.randrange(4):
            case 0:
                return head + b' T="' + (b"A\\\"" * size)[:size] + b'"'
            case 1:
                return head + b" for " + b" ".join(b"u%d@example.com" % i for i in range(size // 16))
            case 2:
                return head + b" H=" + b"a." * (size // 2) + b" [203.0.113.9]"
            case _:
                return head + b" C=\"250 " + "é€😀".encode() * (size // 9) + b'"'

    def _time_warp(self) -> bytes:
        data = self.real()
        stamp = self.rng.choice(PAST_TIMES)
        return TIMESTAMP.sub(lambda _: stamp, data, count=1) if TIMESTAMP.match(data) else stamp + b" " + data

    def future(self) -> bytes:
        """A real line dated in the future (written only at the end: it moves the server's clock for good)."""
        data = self.real()
        stamp = self.rng.choice(FUTURE_TIMES)
        return TIMESTAMP.sub(lambda _: stamp, data, count=1) if TIMESTAMP.match(data) else stamp + b" " + data

    def long(self) -> tuple[str, bytes]:
        """A line longer than max_line_bytes: half of them exactly 1 MiB, the others up to 1 MiB."""
        rng = self.rng
        size = MIB if rng.random() < 0.5 else rng.randint(self.max_line_bytes + 1, MIB)
        head = self.real()
        match rng.randrange(5):
            case 0:  # a real line with an endless recipient list
                body = head + b" for " + b"x@example.com " * (size // 14 + 1)
            case 1:  # NULs
                body = b"\x00" * size
            case 2:  # random bytes
                body = rng.randbytes(size)
            case 3:  # valid multi-byte UTF-8 (the cut lands inside a character)
                body = head + b' T="' + "€".encode() * (size // 3 + 1)
            case _:  # a real line followed by spaces
                body = head + b" " * size
        return "long", body[:size].replace(b"\n", b" ")

    def escape_run(self) -> list[tuple[str, bytes]]:
        """Three lines of 65,000 control characters (valid UTF-8): one record of lines that start within
        record_bytes (128 KiB) holds all three, 195 KB that JSON-escaping makes 1,065,945 bytes (``\\u001f``
        each): more than a broker's default message.max.bytes (1 MiB) unless the shipper compresses."""
        controls = bytes(c for c in range(1, 32) if c != 0x0A)
        return [("escapes", bytes(self.rng.choice(controls) for _ in range(65_000))) for _ in range(3)]

    def mass_mail(self, when: bytes, recipients: int) -> list[tuple[str, bytes]]:
        """One message to ``recipients`` long addresses, each deferred: its state grows with every line
        (a newsletter from a compromised account while the remote side greylists)."""
        rng = self.rng
        msgid = f"1v{rng.randrange(10_000):04d}-{rng.randrange(10**11):011d}-{rng.randrange(10_000):04d}"
        domain = ".".join(f"d{i:02d}{'x' * 50}" for i in range(3)) + ".example"
        addresses = [b"%s%05d@%s" % (b"r" * 50, i, domain.encode()) for i in range(recipients)]
        head = when + b" " + msgid.encode()
        lines = [("mass_mail", head + b" <= news@example.com H=(pc) [198.51.100.7]:4711 P=esmtpsa A=login:news "
                  b'S=4096 T="Newsletter" for ' + b" ".join(addresses[:1000]))]
        for address in addresses:
            lines.append(("mass_mail", head + b" == " + address + b" R=dnslookup T=remote_smtp defer (-44) "
                          b"H=mx.example.net [192.0.2.25]: SMTP error from remote mail server after RCPT TO:<"
                          + address + b">: 451 4.7.1 Greylisted, please try again later"))
        return lines

    def edge_lines(self) -> list[tuple[str, bytes]]:
        """Lines right at the shipper's cut: one byte under, at and over ``max_line_bytes``, and a cut that
        splits a 3-byte character."""
        limit, head = self.max_line_bytes, self.real()
        pad = (head + b" " + b"y" * limit)
        euro = (head + b" " + "€".encode() * limit)
        return [("edge", pad[: limit - 1]), ("edge", pad[:limit]), ("long", pad[: limit + 1]),
                ("long", euro[: limit + 2])]


@dataclass
class WrittenLog:
    path: Path
    lines: int = 0
    bytes: int = 0
    categories: Counter[str] = field(default_factory=Counter)
    over_limit: int = 0  # lines longer than max_line_bytes (the shipper cuts them)
    done: bool = False
    error: BaseException | None = None


def write_fuzzed_log(log: WrittenLog, lines: int, seed: int, corpus: list[bytes], workdir: Path,
                     long_lines: int, max_line_bytes: int = MAX_LINE_BYTES, first_lines: threading.Event | None = None,
                     future_share: float = 0.002, mass_mail: int | None = None) -> None:
    """Append ``lines`` fuzzed lines to ``log.path`` in chunks of random size, counting as it goes.

    Besides the mix: at the start, the lines whose JSON escaping makes the largest record; ``long_lines``
    lines over ``max_line_bytes`` and the edge lines at random places; one message with ``mass_mail``
    recipients (default lines / 10, at most 5000) in the middle; lines dated in the future at the end.
    """
    rng = random.Random(seed)
    generated = Timed(generated_lines(workdir / "generated", int(lines * 0.45) + 1000, seed))
    fuzzer = LineFuzzer(rng, corpus, generated, max_line_bytes)
    specials: dict[int, str] = {}
    edges = fuzzer.edge_lines()
    long_count = max(0, min(long_lines, lines - len(edges)))
    for position in rng.sample(range(1, max(2, lines)), min(lines - 1, long_count + len(edges))):
        specials[position] = "edge" if len(specials) < len(edges) else "long"
    specials[0] = "escapes"  # first: the shipper's first read, and so its first record, starts with them
    specials[max(1, lines // 2)] = "mass_mail"
    recipients = mass_mail if mass_mail is not None else min(5000, max(10, lines // 10))
    future_from = lines - int(lines * future_share)
    pending: list[tuple[str, bytes]] = []
    fd = os.open(log.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    buffer = bytearray()
    target = 1
    try:
        index = 0
        while index < lines:
            if not pending:
                special = specials.pop(index, None)
                if special == "edge":
                    pending.append(edges.pop())
                elif special == "escapes":
                    pending.extend(fuzzer.escape_run()[: lines - index])
                elif special == "long":
                    pending.append(fuzzer.long())
                elif special == "mass_mail":
                    pending.extend(fuzzer.mass_mail(generated.last_time, recipients))
                elif index >= future_from:
                    pending.append(("future_time", fuzzer.future()))
                else:
                    pending.append(fuzzer.line())
                pending.reverse()
            category, data = pending.pop()
            buffer += data
            buffer += b"\n"
            log.categories[category] += 1
            log.over_limit += len(data) > max_line_bytes
            index += 1
            while len(buffer) >= target or (index == lines and buffer):
                written = os.write(fd, buffer[:target])
                del buffer[:written]
                log.bytes += written
                target = _chunk_size(rng)
            log.lines = index
            if first_lines is not None and index >= 100:
                first_lines.set()
    except BaseException as error:
        log.error = error
        raise
    finally:
        os.close(fd)
        log.done = True
        if first_lines is not None:
            first_lines.set()


class Timed:
    """An iterator of generated lines that remembers the timestamp of the last one."""

    def __init__(self, lines: Iterator[bytes]) -> None:
        self.lines = lines
        self.last_time = b"2025-01-01 00:00:00"

    def __iter__(self) -> Timed:
        return self

    def __next__(self) -> bytes:
        line = next(self.lines)
        if TIMESTAMP.match(line):
            self.last_time = line[:19]
        return line


def _chunk_size(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.1:
        return rng.randint(1, 100)
    if roll < 0.8:
        return rng.randint(100, 64 << 10)
    return rng.randint(64 << 10, MIB)


# -- processes, metrics, memory ---------------------------------------------------------------------------

def scrape(port: int) -> dict[str, float]:
    """A Prometheus endpoint's samples, ``name{labels}`` → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a live process in KiB; empty once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


@dataclass
class Child:
    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    peak_kib: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, VmRSS KiB)
    exit_code: int | None = None
    died_early: bool = False

    def start(self) -> Child:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def sample(self, now: float) -> None:
        if self.process is None:
            return
        status = proc_status(self.process.pid)
        if status:
            self.peak_kib = max(self.peak_kib, status.get("VmHWM", 0), status.get("VmRSS", 0))
            self.samples.append((now, status.get("VmRSS", 0)))

    def stop(self, timeout: float = 90.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.exit_code = self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
                self.exit_code = -9
        else:
            self.exit_code = self.process.returncode
            self.died_early = True
        return self.exit_code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tracebacks(self) -> int:
        return self.log_text().count("Traceback (most recent call last)")

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024

    def rss_at(self, share: float) -> float:
        """VmRSS (MiB) at ``share`` of the run's samples (0.25 = a quarter of the way)."""
        if not self.samples:
            return 0.0
        return self.samples[min(len(self.samples) - 1, int(share * len(self.samples)))][1] / 1024


# -- reading the topics back and accounting -----------------------------------------------------------------

def topic_records(bootstrap: str, topic: str) -> Iterator[tuple[int, int, bytes]]:
    """``(partition, offset, value)`` of every record of ``topic``, partition by partition, in offset order."""
    from trackdelivery.kafka_clients import read_topic

    for record in read_topic(bootstrap, topic, timeout=300):
        yield record.partition, record.offset, record.value


@dataclass
class DeadLetters:
    offsets: dict[int, str] = field(default_factory=dict)  # line offset → reason (first seen)
    records: int = 0
    without_offset: int = 0  # undecodable raw records
    reasons: Counter[str] = field(default_factory=Counter)


def reason_class(reason: str) -> str:
    reason = reason.removeprefix("truncated by the shipper; ")
    return re.sub(r"\d+", "N", reason)[:60]


def read_dead_letters(bootstrap: str, topic: str) -> DeadLetters:
    import orjson

    dead = DeadLetters()
    for _, _, value in topic_records(bootstrap, topic):
        dead.records += 1
        entry = orjson.loads(value)
        offset = entry.get("offset")
        reason = str(entry.get("reason"))
        dead.reasons[reason_class(reason)] += 1
        if offset is None:
            dead.without_offset += 1
        else:
            dead.offsets.setdefault(int(offset), reason)
    return dead


@dataclass
class LineCheck:
    """The raw topic against the file, line by line, and what an offline parse makes of each shipped line."""

    shipped: int = 0
    truncated: int = 0
    duplicates: int = 0  # a line at an offset already seen (a shipper retry): dropped by the processor
    missing: int = 0  # file lines not on the raw topic
    mismatched: int = 0  # on the topic, but not the file's bytes (or a wrong truncated flag)
    kinds: Counter[str] = field(default_factory=Counter)  # offline parse of every shipped line
    dead_lettered: int = 0  # shipped lines with a dead letter
    dead_known: int = 0  # ... although the parser gives them a known kind (correlator or parser error)
    unknown_not_dead: int = 0  # parsed as unknown by the offline parse but no dead letter: lost
    examples: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.examples) < 8:
            self.examples.append(text)


def check_lines(bootstrap: str, raw_topic: str, log_path: Path, dead: DeadLetters, max_line_bytes: int,
                progress: Callable[[int], None] | None = None) -> tuple[LineCheck, set[int]]:
    """Walk the file and the raw topic together (both in offset order: one file, one server, one partition)."""
    check = LineCheck()
    seen_dead: set[int] = set()
    with log_path.open("rb") as file:
        file_offset = 0
        next_line = file.readline()

        def advance() -> None:
            nonlocal file_offset, next_line
            file_offset += len(next_line)
            next_line = file.readline()

        last = -1
        for _, _, value in topic_records(bootstrap, raw_topic):
            for raw in decode_batch(value):
                if raw.offset <= last:
                    check.duplicates += 1
                    continue
                last = raw.offset
                while next_line and file_offset < raw.offset:
                    check.missing += 1
                    check.note(f"line at {file_offset} not shipped")
                    advance()
                if not next_line or file_offset != raw.offset:
                    check.mismatched += 1
                    check.note(f"shipped offset {raw.offset} is not a line start of the file")
                    continue
                line = next_line.removesuffix(b"\n")
                cut = len(line) > max_line_bytes
                if raw.data != line[:max_line_bytes] or raw.truncated != cut:
                    check.mismatched += 1
                    check.note(f"line at {raw.offset}: shipped bytes or truncated flag differ from the file")
                advance()
                check.shipped += 1
                check.truncated += raw.truncated
                kind = parse_line(raw.data).kind.value
                check.kinds[kind] += 1
                if raw.offset in dead.offsets:
                    seen_dead.add(raw.offset)
                    check.dead_lettered += 1
                    if kind != UNKNOWN:
                        check.dead_known += 1
                elif kind == UNKNOWN:
                    check.unknown_not_dead += 1
                    check.note(f"line at {raw.offset} is unknown to the parser but was not dead-lettered")
                if progress is not None and check.shipped % 50_000 == 0:
                    progress(check.shipped)
        while next_line:
            check.missing += 1
            check.note(f"line at {file_offset} not shipped")
            advance()
    return check, seen_dead


# -- the run ----------------------------------------------------------------------------------------------

@dataclass
class SuiteConfig:
    lines: int = 1_000_000
    seed: int = 1
    long_lines: int | None = None  # lines over max_line_bytes (default lines // 5000, at least 3)
    mass_mail: int | None = None  # recipients of the one huge message (default lines // 10, at most 5000)
    corpus: Path = DEFAULT_CORPUS
    partitions: int = 1
    shipper_args: list[str] = field(default_factory=list)  # extra `trackdelivery ship` flags
    timeout: float | None = None  # default: 600 s + 2 ms per line
    stall_seconds: float = 180.0  # no progress for this long while behind: give up
    rss_bound_mib: dict[str, float] = field(default_factory=lambda: dict(RSS_BOUND_MIB))

    def long_count(self) -> int:
        return self.long_lines if self.long_lines is not None else max(3, self.lines // 5000)


@dataclass
class SuiteResult:
    config: SuiteConfig
    log: WrittenLog
    seconds: float = 0.0
    process_seconds: float = 0.0
    shipper_metrics: dict[str, float] = field(default_factory=dict)
    worker_metrics: dict[str, float] = field(default_factory=dict)
    check: LineCheck = field(default_factory=LineCheck)
    dead: DeadLetters = field(default_factory=DeadLetters)
    phantom_dead_letters: int = 0  # dead letters for offsets that are no line of the file
    checkpoint_offset: int | None = None
    children: dict[str, Child] = field(default_factory=dict)
    service_deaths: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    redis_peak_mib: float | None = None

    # -- the figures ---------------------------------------------------------------------------------------

    @property
    def taken_in(self) -> int:
        metrics = self.worker_metrics
        return int(metrics.get("trackdelivery_processor_lines_total", 0)
                   - metrics.get("trackdelivery_processor_duplicate_lines_total", 0))

    @property
    def trimmed_states(self) -> int:
        return int(self.worker_metrics.get("trackdelivery_processor_trimmed_states_total", 0))

    def processor_kinds(self) -> Counter[str]:
        kinds: Counter[str] = Counter()
        for name, value in self.worker_metrics.items():
            match = re.fullmatch(r'trackdelivery_processor_parsed_lines_total\{kind="([^"]+)"\}', name)
            if match:
                kinds[match.group(1)] = int(value)
        return kinds

    @property
    def parsed(self) -> int:
        return sum(count for kind, count in self.processor_kinds().items() if kind != UNKNOWN)

    @property
    def dead_lettered(self) -> int:
        return len(self.dead.offsets)

    @property
    def kind_mismatch(self) -> int:
        processor, offline = self.processor_kinds(), self.check.kinds
        return sum(abs(processor[kind] - offline[kind]) for kind in set(processor) | set(offline))

    @property
    def unaccounted(self) -> int:
        by_count = self.log.lines - (self.parsed + self.dead_lettered - self.check.dead_known)
        by_line = self.check.missing + self.check.unknown_not_dead
        return max(abs(by_count), by_line)

    @property
    def crashes(self) -> int:
        count = len(self.service_deaths)
        for child in self.children.values():
            count += child.died_early or (child.exit_code not in (0, None))
            count += child.tracebacks()
        return count

    def peak_rss_mib(self) -> dict[str, float]:
        return {name: round(child.peak_mib, 1) for name, child in self.children.items()}

    def evaluate(self) -> None:
        check, log = self.check, self.log
        if self.unaccounted:
            self.failures.append(f"{self.unaccounted} lines unaccounted for")
        if check.missing or check.mismatched:
            self.failures.append(f"raw topic: {check.missing} lines missing, {check.mismatched} differ from the file")
        if self.kind_mismatch:
            self.failures.append(f"processor kinds differ from the offline parse by {self.kind_mismatch} lines")
        if self.taken_in != check.shipped:
            self.failures.append(f"processor took in {self.taken_in} lines, {check.shipped} were shipped")
        if self.phantom_dead_letters or self.dead.without_offset:
            self.failures.append(f"{self.phantom_dead_letters} dead letters for no line of the file, "
                                 f"{self.dead.without_offset} undecodable records")
        acked = self.shipper_metrics.get("trackdelivery_shipper_lines_acked_total", 0)
        if acked != log.lines:
            self.failures.append(f"shipper acknowledged {acked:.0f} lines of {log.lines}")
        cut = self.shipper_metrics.get("trackdelivery_shipper_long_lines_total", 0)
        if cut != log.over_limit or check.truncated != log.over_limit:
            self.failures.append(f"{log.over_limit} lines over max_line_bytes: shipper counted {cut:.0f}, "
                                 f"{check.truncated} marked truncated on the topic")
        if self.checkpoint_offset != log.bytes:
            self.failures.append(f"checkpoint at {self.checkpoint_offset}, file size {log.bytes}")
        if self.crashes:
            self.failures.append(f"{self.crashes} crashes (abnormal exits or tracebacks)")
        for name, child in self.children.items():
            bound = self.config.rss_bound_mib.get(name)
            if bound is not None and child.peak_mib > bound:
                self.failures.append(f"{name} peak RSS {child.peak_mib:.0f} MiB over the bound of {bound:.0f} MiB")

    def summary(self) -> dict[str, Any]:
        return {
            "bench": "badinput",
            "lines": self.log.lines,
            "shipped": self.check.shipped,
            "taken_in": self.taken_in,
            "parsed": self.parsed,
            "dead_lettered": self.dead_lettered,
            "unaccounted": self.unaccounted,
            "crashes": self.crashes,
            "cut_at_max_line_bytes": self.check.truncated,
            "kind_mismatch": self.kind_mismatch,
            "peak_rss_mib": self.peak_rss_mib(),
            "rss_bound_mib": self.config.rss_bound_mib,
            "lines_per_s": round(self.log.lines / self.process_seconds) if self.process_seconds else None,
            "seconds": round(self.seconds, 1),
            "ok": not self.failures,
        }


class Progress:
    """One status line, redrawn on a terminal, printed every ``every`` seconds otherwise."""

    def __init__(self, stream: Any = sys.stderr, every: float = 15.0, enabled: bool = True) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.every = every
        self.enabled = enabled
        self._last = 0.0
        self._width = 0

    def show(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
            self.stream.flush()
        elif force or now - self._last >= self.every:
            self._last = now
            print(text, file=self.stream, flush=True)

    def done(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r" + " " * self._width + "\r")
        print(text, file=self.stream, flush=True)
        self._width = 0


def _metric(samples: dict[str, float], name: str) -> float:
    return samples.get(name, 0.0)


def run_suite(config: SuiteConfig, bootstrap: str, redis_url: str, workdir: Path,
              progress: Progress | None = None, services: dict[str, Any] | None = None) -> SuiteResult:
    """The whole suite against a running Kafka and Redis; ``services`` (name → object with ``running``) are
    watched for deaths."""
    from trackdelivery.devenv.ports import free_port
    from trackdelivery.topics import create_topics

    progress = progress or Progress(enabled=False)
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    topics = {"raw": f"badinput.raw.{tag}", "events": f"badinput.events.{tag}",
              "unparsed": f"badinput.unparsed.{tag}"}
    create_topics(bootstrap, {topics["raw"]: config.partitions, topics["events"]: config.partitions,
                              topics["unparsed"]: 1})
    log = WrittenLog(workdir / "exim_mainlog")
    log.path.unlink(missing_ok=True)
    result = SuiteResult(config, log)
    corpus = load_corpus(config.corpus)
    progress.done(f"corpus: {len(corpus)} real lines from {config.corpus}")

    base_env = {**os.environ, "PYTHONPATH": str(REPO), "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "REDIS_URL": redis_url}
    shipper_port, worker_port = free_port(), free_port()
    shipper = Child("shipper", [
        sys.executable, "-m", "trackdelivery", "ship", "--server", f"fuzz-{tag}", "--topic", topics["raw"],
        "--path", str(log.path), "--checkpoint-dir", str(workdir / "checkpoints"), "--start-position", "beginning",
        "--metrics-port", str(shipper_port), "--log-level", "INFO", *config.shipper_args,
    ], {**base_env, "TRACKDELIVERY_HEARTBEAT_INTERVAL": "0", "TRACKDELIVERY_METRICS_HOST": "127.0.0.1"},
        workdir / "shipper.log")
    worker = Child("worker", [
        sys.executable, "-m", "trackdelivery", "process", "--metrics-port", str(worker_port), "--log-level", "warning",
    ], {**base_env, "TRACKDELIVERY_TOPIC_RAW": topics["raw"], "TRACKDELIVERY_TOPIC_EVENTS": topics["events"],
        "TRACKDELIVERY_TOPIC_UNPARSED": topics["unparsed"], "TRACKDELIVERY_PROCESSOR_APP_ID": f"badinput-{tag}",
        "TRACKDELIVERY_PROCESSOR_DATADIR": str(workdir / "faust"), "TRACKDELIVERY_STORE_PREFIX": f"bad{tag}"},
        workdir / "worker.log")
    result.children = {"shipper": shipper, "worker": worker}

    first_lines = threading.Event()
    writer = threading.Thread(target=write_fuzzed_log, name="fuzz-writer", daemon=True, kwargs=dict(
        log=log, lines=config.lines, seed=config.seed, corpus=corpus, workdir=workdir,
        long_lines=config.long_count(), first_lines=first_lines, mass_mail=config.mass_mail))
    try:
        worker.start()
        writer.start()
        first_lines.wait(timeout=300)
        shipper.start()
        result.process_seconds = _follow(config, result, shipper, worker, shipper_port, worker_port, writer,
                                         services or {}, progress)
        result.shipper_metrics = scrape(shipper_port)
        result.worker_metrics = scrape(worker_port)
        for child in (shipper, worker):
            child.sample(time.monotonic() - started)
    finally:
        for child in (shipper, worker):
            if child.process is not None and child.exit_code is None:
                child.stop()
            child.kill()
        writer.join(timeout=60)
    result.checkpoint_offset = _checkpoint_offset(workdir / "checkpoints")

    progress.done("reading exim.mainlog.unparsed back ...")
    result.dead = read_dead_letters(bootstrap, topics["unparsed"])
    progress.done(f"{result.dead.records:,} dead-letter records; checking the raw topic line by line ...")
    result.check, seen = check_lines(
        bootstrap, topics["raw"], log.path, result.dead, MAX_LINE_BYTES,
        lambda n: progress.show(f"checked {n:,} of {log.lines:,} lines", force=True))
    result.phantom_dead_letters = len(result.dead.offsets) - len(seen)
    result.redis_peak_mib = _redis_peak(redis_url)
    for name, service in (services or {}).items():
        if not service.running:
            result.service_deaths.append(name)
    result.seconds = time.monotonic() - started
    result.evaluate()
    return result


def _follow(config: SuiteConfig, result: SuiteResult, shipper: Child, worker: Child, shipper_port: int,
            worker_port: int, writer: threading.Thread, services: dict[str, Any], progress: Progress) -> float:
    """Sample memory and progress until the worker has taken in every line; seconds from start to the end."""
    log = result.log
    started = time.monotonic()
    timeout = config.timeout or 600 + config.lines * 0.002
    last_seen, last_change = -1.0, started
    shipped = seen = 0.0
    while True:
        now = time.monotonic()
        for child in (shipper, worker):
            child.sample(now - started)
            if not child.alive():
                child.died_early = True
                raise SuiteError(f"the {child.name} exited ({child.process and child.process.returncode}):\n"
                                 f"{child.log_text()[-4000:]}")
        for name, service in services.items():
            if not service.running:
                result.service_deaths.append(name)
                raise SuiteError(f"{name} died during the run")
        if log.error is not None:
            raise SuiteError(f"writing the log failed: {log.error!r}")
        with suppress(OSError):
            shipped = _metric(scrape(shipper_port), "trackdelivery_shipper_lines_acked_total")
        with suppress(OSError):
            seen = _metric(scrape(worker_port), "trackdelivery_processor_lines_total")
        elapsed = now - started
        rate = seen / elapsed if elapsed > 0 else 0.0
        eta = (config.lines - seen) / rate if rate > 0 else float("inf")
        progress.show(
            f"[{elapsed:6.0f}s] written {log.lines / config.lines:4.0%}  shipped {shipped / config.lines:4.0%}  "
            f"processed {seen:,.0f}/{config.lines:,} ({rate:,.0f} lines/s, ETA {_duration(eta)})  "
            f"RSS shipper {shipper.rss_at(1.0):.0f} MiB, worker {worker.rss_at(1.0):.0f} MiB")
        if log.done and seen >= log.lines and shipped >= log.lines:
            progress.done(f"processed {seen:,.0f} lines in {elapsed:.0f}s ({rate:,.0f} lines/s)")
            return elapsed
        if seen != last_seen or shipped < log.lines:
            last_seen, last_change = seen, now
        if now - last_change > config.stall_seconds:
            raise SuiteError(f"the worker made no progress for {config.stall_seconds:.0f}s at {seen:,.0f} lines:\n"
                             f"{worker.log_text()[-4000:]}")
        if elapsed > timeout:
            raise SuiteError(f"not done after {timeout:.0f}s: {shipped:,.0f} shipped, {seen:,.0f} processed")
        time.sleep(0.5)


class SuiteError(Exception):
    """The run could not finish: a process died, stalled or the time ran out."""


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _checkpoint_offset(directory: Path) -> int | None:
    import orjson

    path = directory / "checkpoints.json"
    if not path.exists():
        return None
    state = orjson.loads(path.read_bytes())
    files = state.get("files", state) if isinstance(state, dict) else {}
    offsets = [entry.get("offset") for entry in files.values() if isinstance(entry, dict)]
    return max((offset for offset in offsets if isinstance(offset, int)), default=None)


def _redis_peak(url: str) -> float | None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return round(int(client.info("memory")["used_memory_peak"]) / MIB, 1)
    except redis.RedisError:
        return None
    finally:
        client.close()


# -- the report -------------------------------------------------------------------------------------------

def report(result: SuiteResult) -> str:
    log, check, dead = result.log, result.check, result.dead
    cut = result.shipper_metrics.get("trackdelivery_shipper_long_lines_total", 0)
    lines = [
        f"bad-input suite: {log.lines:,} lines, {log.bytes / 1e6:,.1f} MB, seed {result.config.seed}",
        "  mix: " + ", ".join(f"{name} {count:,}" for name, count in log.categories.most_common()),
        "",
        f"  written        {log.lines:>10,}  ({log.over_limit:,} longer than max_line_bytes = {MAX_LINE_BYTES:,} B)",
        f"  shipped        {check.shipped:>10,}  (raw topic read back and compared with the file: "
        f"{check.missing} missing, {check.mismatched} different, {check.duplicates} duplicates; "
        f"shipper acked {result.shipper_metrics.get('trackdelivery_shipper_lines_acked_total', 0):,.0f}, "
        f"cut {cut:,.0f} = {check.truncated:,} marked truncated; checkpoint {result.checkpoint_offset:,} "
        f"of {log.bytes:,} bytes)" if result.checkpoint_offset is not None else
        f"  shipped        {check.shipped:>10,}  (no checkpoint found)",
        f"  taken in       {result.taken_in:>10,}  (worker lines_total - duplicate_lines)",
        f"  parsed         {result.parsed:>10,}  (worker parsed_lines_total, known kinds; differs from an "
        f"offline parse by {result.kind_mismatch})",
        f"  dead-lettered  {result.dead_lettered:>10,}  (distinct offsets on the unparsed topic, "
        f"{dead.records:,} records; {check.dead_known} of them parsed to a known kind first)",
        f"  unaccounted    {result.unaccounted:>10,}",
        "",
        "  kinds: " + ", ".join(f"{kind} {count:,}" for kind, count in result.processor_kinds().most_common()),
        "  dead-letter reasons: " + "; ".join(f"{reason} ({count:,})" for reason, count in dead.reasons.most_common(8)),
        "",
    ]
    for name, child in result.children.items():
        bound = result.config.rss_bound_mib.get(name)
        lines.append(
            f"  {name:<8} exit {child.exit_code}, tracebacks {child.tracebacks()}, peak RSS {child.peak_mib:.0f} MiB "
            f"(bound {bound:.0f}); RSS at 25/50/75/100% of the run: "
            + "/".join(f"{child.rss_at(share):.0f}" for share in (0.25, 0.5, 0.75, 1.0)) + " MiB")
    keys = sum(value for name, value in result.worker_metrics.items()
               if name.startswith("trackdelivery_processor_table_keys{"))
    lines.append(f"  worker state: {keys:,.0f} table keys at its last full sweep (one a minute), "
                 f"{result.worker_metrics.get('trackdelivery_processor_released_keys_total', 0):,.0f} released, "
                 f"{result.trimmed_states:,.0f} message states trimmed to fit a changelog record")
    if result.redis_peak_mib is not None:
        lines.append(f"  redis    used_memory_peak {result.redis_peak_mib:.0f} MiB")
    if result.process_seconds:
        lines.append(f"  pipeline: {log.lines / result.process_seconds:,.0f} lines/s end to end "
                     f"({result.process_seconds:.0f}s), whole suite {result.seconds:.0f}s")
    for example in check.examples:
        lines.append(f"  ! {example}")
    lines.append("  result: " + ("OK, every line accounted for" if not result.failures else
                                 "FAILED: " + "; ".join(result.failures)))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000, help="fuzzed lines to write and ship")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--long-lines", type=int, help="lines over max_line_bytes, up to 1 MiB [lines/5000]")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--timeout", type=float, help="seconds for the whole pipeline [600 + 2 ms per line]")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, the fuzzed file)")
    parser.add_argument("--shipper-arg", action="append", default=[], metavar="ARG",
                        help="extra flag for `trackdelivery ship` (repeat: --shipper-arg=--compression "
                             "--shipper-arg=zstd)")
    args = parser.parse_args()
    config = SuiteConfig(lines=args.lines, seed=args.seed, long_lines=args.long_lines, corpus=args.corpus,
                         timeout=args.timeout, shipper_args=args.shipper_arg)

    from trackdelivery.devenv.kafka import KafkaBroker
    from trackdelivery.devenv.redis import RedisServer

    CACHE.mkdir(parents=True, exist_ok=True)
    if not (CACHE / ".gitignore").exists():
        (CACHE / ".gitignore").write_text("*\n")
    progress = Progress()
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(dir=CACHE, prefix="badinput-"))
        if not args.keep:
            import shutil

            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        services: dict[str, Any] = {}
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            progress.done("starting Kafka ...")
            broker = KafkaBroker(workdir / "kafka", heap="1g")
            broker.start()
            stack.callback(broker.stop)
            services["kafka"], bootstrap = broker, broker.bootstrap
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            redis_server = RedisServer(workdir / "redis")
            redis_server.start()
            stack.callback(redis_server.stop)
            services["redis"], redis_url = redis_server, redis_server.url
        try:
            result = run_suite(config, bootstrap, redis_url, workdir / "run", progress, services)
        except SuiteError as error:
            print(f"bad-input suite did not finish: {error}", file=sys.stderr)
            print(json.dumps({"bench": "badinput", "lines": config.lines, "ok": False, "error": str(error)[:500]}))
            return 1
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
    print(report(result))
    print(json.dumps(result.summary()))
    return 0 if not result.failures else 1


if __name__ == "__main__":
    sys.exit(main())
