"""Shipper throughput against kcat: the same Exim log, the same broker, fresh topics, alternating runs.

    python bench/ship.py [--lines 1000000] [--runs 2]

Starts its own Kafka (``KafkaBroker``) unless KAFKA_BOOTSTRAP_SERVERS is set. The shipper side is
``trackdelivery replay`` (acks=all, idempotent, lz4, several lines per record); the anchor is
``kcat -P -l`` with one message per line, lz4 and acks=all. After an untimed warm-up of both, runs
alternate which side goes first; both topics are read back and counted; medians are reported.
The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trackdelivery import kafka_clients  # noqa: E402
from trackdelivery.devenv.kafka import KafkaBroker  # noqa: E402
from trackdelivery.records import decode_batch  # noqa: E402
from trackdelivery.topics import create_topics  # noqa: E402

TRACKDELIVERY = str(Path(sys.executable).with_name("trackdelivery"))
LINES_PER_MESSAGE = 7.5  # what `trackdelivery generate` writes on average (a little less)


def make_log(directory: Path, lines: int) -> Path:
    """A realistic cPanel/Exim main log of exactly ``lines`` lines."""
    messages = math.ceil(lines / LINES_PER_MESSAGE * 1.1)
    while True:
        out = directory / f"gen-{messages}"
        subprocess.run([TRACKDELIVERY, "generate", "--servers", "1", "--messages", str(messages),
                        "--out", str(out), "--no-progress"], check=True, stdout=subprocess.DEVNULL)
        source = next(out.glob("*/exim_mainlog"))
        log = directory / "exim_mainlog"
        written = 0
        with open(source, "rb") as src, open(log, "wb") as dst:
            for line in src:
                if written == lines:
                    break
                dst.write(line)
                written += 1
        shutil.rmtree(out)
        if written == lines:
            return log
        messages = math.ceil(messages * 1.3 * lines / max(written, 1))


def fresh_topic(bootstrap: str, prefix: str) -> str:
    name = f"bench.{prefix}.{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, {name: 1})
    return name


# Runs a command and prints its wall seconds, CPU seconds, peak RSS (KiB) and exit code. A child's peak RSS
# starts at the peak of the process it was forked from (Linux keeps ru_maxrss across exec), and this
# process grows to a few hundred MiB counting a topic, so the measured command is forked from this small
# launcher instead (its own peak, ~10 MiB, is below any measured command's).
LAUNCHER = """
import os, sys, time
report = os.dup(1)
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    try:
        os.execvp(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
os.write(report, b"%f %f %d %d" % (wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss,
                                   os.waitstatus_to_exitcode(status)))
"""


def timed(command: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (MiB) of a child process."""
    launched = subprocess.run([sys.executable, "-I", "-S", "-c", LAUNCHER, *command], capture_output=True,
                              check=False)
    try:
        wall, cpu, rss, code = launched.stdout.split()
    except ValueError:
        raise SystemExit(f"launcher failed:\n{launched.stderr.decode(errors='replace')[-3000:]}") from None
    if int(code) != 0:
        raise SystemExit(f"{command[0]} failed ({int(code)}):\n{launched.stderr.decode(errors='replace')[-3000:]}")
    return float(wall), float(cpu), int(rss) / 1024


def count_kcat(bootstrap: str, topic: str) -> int:
    return sum(kafka_clients.end_offsets(bootstrap, topic).values())


def count_shipped(bootstrap: str, topic: str) -> tuple[int, int]:
    """(lines, distinct (file, offset)) in the shipper's topic.

    Counted with a per-file high-water mark instead of a set of a million keys: this process forks the
    next child, whose peak RSS would otherwise include our memory."""
    lines, distinct, highest = 0, 0, {}
    for record in kafka_clients.read_topic(bootstrap, topic, timeout=300):
        for line in decode_batch(record.value):
            lines += 1
            if line.offset > highest.get(line.file, -1):
                distinct += 1
                highest[line.file] = line.offset
    return lines, distinct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3, help="runs of each side, alternating (median)")
    args = parser.parse_args()
    if shutil.which("kcat") is None:
        raise SystemExit("kcat is not installed")
    with tempfile.TemporaryDirectory(prefix="bench-ship-") as tmp:
        workdir = Path(tmp)
        broker = None
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            broker = KafkaBroker(workdir / "kafka")
            broker.start()
            bootstrap = broker.bootstrap
        try:
            log = make_log(workdir, args.lines)
            size = log.stat().st_size
            print(f"log: {args.lines:,} lines, {size / 1e6:.1f} MB; broker {bootstrap}", file=sys.stderr)
            warmup = workdir / "warmup.log"  # a fresh broker's JIT would otherwise slow the first run
            with open(log, "rb") as src, open(warmup, "wb") as dst:
                dst.writelines(line for _, line in zip(range(100_000), src, strict=False))
            timed([TRACKDELIVERY, "replay", "--bootstrap-servers", bootstrap, "--topic",
                   fresh_topic(bootstrap, "warmup"), "--no-progress", str(warmup)])
            timed(["kcat", "-P", "-b", bootstrap, "-t", fresh_topic(bootstrap, "warmup"), "-X",
                   "compression.codec=lz4", "-X", "acks=all", "-l", str(warmup)])
            shipper_runs: list[tuple[float, float, float]] = []
            kcat_runs: list[float] = []
            lost = 0
            for run in range(args.runs):
                sides = ["shipper", "kcat"] if run % 2 == 0 else ["kcat", "shipper"]
                for side in sides:
                    topic = fresh_topic(bootstrap, side)
                    if side == "shipper":
                        wall, cpu, rss = timed([TRACKDELIVERY, "replay", "--bootstrap-servers", bootstrap,
                                                "--topic", topic, "--compression", "lz4", "--no-progress",
                                                "--server", "bench", str(log)])
                        lines, distinct = count_shipped(bootstrap, topic)
                        lost = max(lost, args.lines - distinct)
                        shipper_runs.append((wall, cpu, rss))
                        print(f"run {run} shipper: {wall:.2f}s {args.lines / wall:,.0f} lines/s cpu {cpu:.2f}s "
                              f"rss {rss:.0f} MiB; topic has {lines:,} lines ({distinct:,} distinct)",
                              file=sys.stderr)
                        if lines != args.lines:
                            raise SystemExit(f"shipper topic has {lines} lines, expected {args.lines}")
                    else:
                        wall, _, _ = timed(["kcat", "-P", "-b", bootstrap, "-t", topic, "-X",
                                            "compression.codec=lz4", "-X", "acks=all", "-l", str(log)])
                        count = count_kcat(bootstrap, topic)
                        kcat_runs.append(wall)
                        print(f"run {run} kcat:    {wall:.2f}s {args.lines / wall:,.0f} lines/s; topic has "
                              f"{count:,} messages", file=sys.stderr)
                        if count != args.lines:
                            raise SystemExit(f"kcat topic has {count} messages, expected {args.lines}")
        finally:
            if broker is not None:
                broker.stop()
    shipper_wall = statistics.median(w for w, _, _ in shipper_runs)
    kcat_wall = statistics.median(kcat_runs)
    result = {
        "bench": "ship",
        "lines": args.lines,
        "shipper_lines_per_s": round(args.lines / shipper_wall),
        "kcat_lines_per_s": round(args.lines / kcat_wall),
        "ratio_vs_kcat": round(kcat_wall / shipper_wall, 2),
        "cpu_s": round(statistics.median(c for _, c, _ in shipper_runs), 2),
        "peak_rss_mb": round(max(r for _, _, r in shipper_runs), 1),
        "lost": lost,
    }
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
