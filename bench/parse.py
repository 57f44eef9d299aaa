"""Parser throughput: ``trackdelivery parse --output events`` against eximstats on the same log, one core.

    python bench/parse.py [--lines 1000000] [--runs 3] [--profile]

Generates a seeded one-server log with the project's generator (cached in bench/.cache/), runs the
native engine, the Python engine (the reference modules) and eximstats alternately (pinned with
``taskset -c 0`` when available, output to /dev/null) and ends with one line of JSON. eximstats comes
from PATH, else from Debian's exim4-base package, downloaded and unpacked
into the cache (never installed: it would pull an MTA in).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from anchors import find_eximstats

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"
TARGET = 3.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def count_lines(path: Path) -> int:
    with path.open("rb") as file:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b""))


def generate(messages: int, seed: int, out: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "trackdelivery",
            "generate",
            "--servers",
            "1",
            "--messages",
            str(messages),
            "--out",
            str(out),
            "--seed",
            str(seed),
        ],
        check=True,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    logs = sorted(out.glob("*/exim_mainlog"))
    if not logs:
        raise SystemExit(f"the generator wrote no */exim_mainlog under {out}")
    return logs[0]


def make_cache() -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    ignore = CACHE / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")


def bench_log(lines: int, seed: int) -> Path:
    """A cached one-server log of exactly ``lines`` lines."""
    target = CACHE / f"parse-{lines}-seed{seed}" / "exim_mainlog"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        messages = 2000
        full = generate(messages, seed, Path(scratch) / "probe")
        for attempt in range(4):
            written = count_lines(full)
            if written >= lines:
                break
            # lines per message vary with the volume (retries span more time): aim again from what came out
            messages = int(messages * lines / max(written, 1) * 1.03) + 1
            log(f"generating {messages} messages for {lines} lines (got {written})")
            full = generate(messages, seed, Path(scratch) / f"run{attempt}")
        written = 0
        with full.open("rb") as source, target.with_suffix(".tmp").open("wb") as sink:
            for raw in source:
                if written == lines:
                    break
                sink.write(raw)
                written += 1
        if written < lines:
            log(f"note: the generator wrote {written} lines, fewer than {lines}")
        target.with_suffix(".tmp").rename(target)
    return target


def native_build() -> str:
    """How the installed extension was built: "pgo" or "release" (native/build.sh), "missing" without it."""
    try:
        import trackdelivery_native
    except ImportError:
        return "missing"
    return str(getattr(trackdelivery_native, "BUILD", "release"))


def pinned(command: list[str]) -> list[str]:
    return ["taskset", "-c", "0", *command] if shutil.which("taskset") else command


# an installed program runs from cached bytecode: let the children write and use it
CHILD_ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def trackdelivery_command() -> list[str]:
    """The installed `trackdelivery` command, as users run it (else `python -m trackdelivery`, which also
    pays for runpy: ~3 ms a run)."""
    script = Path(sys.executable).with_name("trackdelivery")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "trackdelivery"]


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, env=CHILD_ENV)
    return time.perf_counter() - start


def profile(path: Path, limit: int = 200_000) -> None:
    """Where parse + correlate spend their time, in process, on the first ``limit`` lines."""
    sys.path.insert(0, str(REPO))
    from processors.exim.cli import encode_event
    from processors.exim.correlator import Correlator
    from processors.exim.parser import parse_line

    with path.open("rb") as file:
        raws = [raw.rstrip(b"\n") for _, raw in zip(range(limit), file, strict=False)]
    correlator = Correlator(emit_in_progress=False)  # as the CLI runs it

    def work() -> None:
        for raw in raws:
            for event in correlator.feed("bench", parse_line(raw)):
                encode_event(event)
        for event in correlator.flush():
            encode_event(event)

    profiler = cProfile.Profile()
    profiler.runcall(work)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    log(text.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also profile the Python engine in process")
    parser.add_argument("--python-every-run", action="store_true", help="time the Python engine in every run")
    args = parser.parse_args()

    make_cache()
    path = bench_log(args.lines, args.seed)
    lines = count_lines(path)
    command = [*trackdelivery_command(), "parse", "--output", "events"]
    ours = pinned([*command, "--engine", "native", str(path)])
    reference = pinned([*command, "--engine", "python", str(path)])
    theirs = pinned([*find_eximstats(CACHE), str(path)])
    log(f"log: {path} ({lines} lines, {path.stat().st_size / 1e6:.1f} MB)")
    build = native_build()
    log(f"native engine: {build} build (native/build.sh); command: {' '.join(ours)}")

    for command in (ours, theirs):  # warm-up: bytecode, page cache
        timed(command)
    our_rates, python_rates, their_rates = [], [], []
    for run in range(1, args.runs + 1):
        our_rates.append(lines / timed(ours))
        their_rates.append(lines / timed(theirs))
        if run == 1 or args.python_every_run:
            python_rates.append(lines / timed(reference))
        log(
            f"run {run}: trackdelivery {our_rates[-1]:,.0f} lines/s (python engine {python_rates[-1]:,.0f}),"
            f" eximstats {their_rates[-1]:,.0f} lines/s"
        )

    our_rate = statistics.median(our_rates)
    python_rate = statistics.median(python_rates)
    their_rate = statistics.median(their_rates)
    ratio = our_rate / their_rate
    log(f"median: trackdelivery {our_rate:,.0f} lines/s, eximstats {their_rate:,.0f} lines/s, ratio {ratio:.2f}x")
    spread = sorted(rate / their_rate for rate in our_rates)
    log(f"single runs against that eximstats: {spread[0]:.2f}x to {spread[-1]:.2f}x (the machine is shared)")
    best_ratio = max(our_rates) / max(their_rates)
    log(f"fastest run of each: {best_ratio:.2f}x (the least disturbed runs; the target is judged on the median)")
    log(f"python engine: {python_rate:,.0f} lines/s ({python_rate / their_rate:.3f}x eximstats)")
    if args.profile:
        profile(path)
    result = {
        "bench": "parse",
        "lines": lines,
        "trackdelivery_lines_per_s": round(our_rate),
        "python_engine_lines_per_s": round(python_rate),
        "eximstats_lines_per_s": round(their_rate),
        "ratio_vs_eximstats": round(ratio, 3),
        # every run's ratio against the median eximstats: how far the machine's noise moved this one
        "run_ratios": [round(rate / their_rate, 3) for rate in our_rates],
        "best_ratio": round(best_ratio, 3),
        "native_build": build,
        "target": TARGET,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
