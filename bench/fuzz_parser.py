"""Feed the Exim line parser N generated hostile inputs; count kinds and exceptions.

Usage: python bench/fuzz_parser.py [--inputs 1000000] [--seed 1] [--corpus DIR] [--engine python|native]

``--engine native`` writes the inputs to one file (a newline inside an input splits it) and runs the real
``trackdelivery parse --engine native`` on it twice, ``--output lines`` and ``--output events``: both
must exit 0 and account for every line.
Inputs: random bytes, corpus lines truncated / mutated / with NUL and invalid UTF-8 spliced in,
and occasional 100 KB to 1 MB lines. The last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from processors.exim.parser import MAX_FIELD, MAX_RAW, parse_line
from processors.exim.types import LineKind

FALLBACK = [
    b"2025-03-14 10:22:40 1sDcIh-000000004YY-3wAT <= alice@example.com H=(laptop) [203.0.113.7]:51234 "
    b'P=esmtpsa S=18234 T="Quarterly \\"report\\"" for carol@yahoo.com',
    b"1999-03-02 09:44:33 10HmaX-0005vi-00 ** d@test.ex R=all T=smtp H=127.0.0.1 [127.0.0.1]* : 550 no",
]
TOKENS = [
    b" ",
    b'"',
    b"\\",
    b"(",
    b")",
    b"<",
    b">",
    b"[",
    b"]",
    b"=",
    b":",
    b": ",
    b" : ",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"H=",
    b"R=",
    b'T="',
    b'C="',
    b"defer (",
    b"for ",
    b"\\n",
    b"\\316",
    b"**",
    b"=>",
    b"\t",
]


def load_corpus(root: Path) -> list[bytes]:
    lines = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "SOURCES.md":
            lines.extend(line for line in path.read_bytes().split(b"\n") if line and not line.startswith(b"#"))
    return lines or FALLBACK


def generate(rng: random.Random, corpus: list[bytes]) -> bytes:
    choice = rng.random()
    line = rng.choice(corpus)
    if choice < 0.15:
        return rng.randbytes(rng.randint(0, 300))
    if choice < 0.35:
        return line[: rng.randint(0, len(line))]
    if choice < 0.85:
        data = bytearray(line)
        for _ in range(rng.randint(1, 6)):
            position = rng.randint(0, len(data))
            token = rng.choice(TOKENS) if rng.random() < 0.7 else rng.randbytes(rng.randint(1, 4))
            if rng.random() < 0.5:
                data[position:position] = token
            else:
                data[position : position + len(token)] = token
        return bytes(data)
    if choice < 0.8505:
        return line + rng.choice(TOKENS) * rng.randint(100_000, 1_000_000)
    return line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    default_corpus = os.environ.get("TRACKDELIVERY_CORPUS") or str(
        Path(__file__).resolve().parents[2] / "shared" / "corpus"
    )
    parser.add_argument("--corpus", default=default_corpus)
    parser.add_argument("--engine", choices=["python", "native"], default="python")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    corpus = load_corpus(Path(args.corpus)) if Path(args.corpus).is_dir() else FALLBACK
    if args.engine == "native":
        return fuzz_native(rng, corpus, args.inputs)
    kinds: Counter[str] = Counter()
    exceptions = 0
    internal_errors = 0
    unbounded = 0
    slowest = 0.0
    start = time.perf_counter()
    for count in range(1, args.inputs + 1):
        data = generate(rng, corpus)
        t0 = time.perf_counter()
        try:
            parsed = parse_line(data)
        except Exception:  # the parser must never raise: count and show it
            exceptions += 1
            if exceptions <= 5:
                traceback.print_exc()
            continue
        slowest = max(slowest, time.perf_counter() - t0)
        kinds[parsed.kind.value] += 1
        if parsed.kind is LineKind.UNKNOWN and (parsed.detail or "").startswith("parser error"):
            internal_errors += 1
            if internal_errors <= 5:
                print("internal error on", data[:200], parsed.detail, file=sys.stderr)
        fields = [
            parsed.subject,
            parsed.error,
            parsed.confirmation,
            parsed.detail,
            parsed.address,
            *parsed.extra.values(),
        ]
        if len(parsed.raw) > MAX_RAW or any(f is not None and len(f) > MAX_FIELD for f in fields):
            unbounded += 1
        if count % 100_000 == 0:
            print(f"{count:>9} inputs, {exceptions} exceptions, {internal_errors} internal errors", flush=True)
    elapsed = time.perf_counter() - start
    print(dict(kinds.most_common()))
    print(
        json.dumps(
            {
                "bench": "fuzz_parser",
                "inputs": args.inputs,
                "exceptions": exceptions,
                "internal_errors": internal_errors,
                "unbounded": unbounded,
                "kinds": len(kinds),
                "seconds": round(elapsed, 1),
                "inputs_per_s": round(args.inputs / elapsed),
                "slowest_ms": round(slowest * 1000, 2),
            }
        )
    )
    return 1 if exceptions or internal_errors or unbounded else 0


def fuzz_native(rng: random.Random, corpus: list[bytes], inputs: int) -> int:
    """The native engine on every input, in one real process per output kind."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "fuzz.log"
        with path.open("wb") as file:
            for _ in range(inputs):
                file.write(generate(rng, corpus) + b"\n")
        lines = path.read_bytes().count(b"\n")
        failures = 0
        results: dict[str, object] = {"bench": "fuzz_parser", "engine": "native", "inputs": inputs, "lines": lines}
        for output in ("lines", "events"):
            start = time.perf_counter()
            run = subprocess.run(
                [sys.executable, "-m", "trackdelivery", "parse", "--engine", "native", "--output", output, str(path)],
                capture_output=True,
                cwd=Path(__file__).resolve().parents[1],
            )
            elapsed = time.perf_counter() - start
            summary = run.stderr.decode(errors="replace").strip().splitlines()
            counted = summary[-1].startswith(f"{lines} lines") if summary else False
            written = run.stdout.count(b"\n")
            ok = run.returncode == 0 and counted and (output != "lines" or written == lines)
            failures += not ok
            print(f"--output {output}: exit {run.returncode}, {written} records, {elapsed:.1f} s; {summary[-1:]}")
            if not ok:
                print(run.stderr.decode(errors="replace")[-3000:], file=sys.stderr)
            results[f"{output}_exit"] = run.returncode
            results[f"{output}_records"] = written
            results[f"{output}_seconds"] = round(elapsed, 1)
        results["failures"] = failures
        print(json.dumps(results))
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
