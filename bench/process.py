"""Processor throughput: one `trackdelivery process` worker, Kafka → Redis, against eximstats on the same log.

    python bench/process.py [--lines 200000] [--servers 4] [--lines-per-record 100]

Generates a seeded fleet log ending now (so nothing falls outside the store's retention), produces it to a
fresh raw topic as shipper-style records, then starts one worker and times it from its first processed
line to its last, reading the worker's own Prometheus counters (faust start-up and group join are not
counted). eximstats runs over the same log files. Kafka and Redis: KAFKA_BOOTSTRAP_SERVERS / REDIS_URL
when set, else private ones started with trackdelivery.devenv. eximstats: PATH, else Debian's exim4-base
package downloaded and unpacked into bench/.cache (never installed). Ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

from anchors import find_eximstats

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"
sys.path.insert(0, str(REPO))

TARGET = 1.0
LINES_PER_MESSAGE = 12  # about what the generator writes per message (retries, connections, queue runs)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_cache() -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    ignore = CACHE / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")


def generate(out: Path, servers: int, lines: int, seed: int, days: float) -> list[Path]:
    from trackdelivery.generator.runner import FleetRun, GenerateConfig

    start = datetime.datetime.now(datetime.UTC).replace(microsecond=0) - datetime.timedelta(days=days + 0.1)
    run = FleetRun(GenerateConfig(servers=servers, messages=max(1, lines // LINES_PER_MESSAGE), out=out,
                                  seed=seed, days=days, start=start))
    try:
        run.run()
    finally:
        run.close()
    return sorted(out.glob("*/exim_mainlog"))


def records_of(path: Path, server: str, per_record: int) -> list[bytes]:
    from trackdelivery.records import encode_batch

    records, offsets, lines, position = [], [], [], 0
    with path.open("rb") as file:
        for raw in file:
            offsets.append(position)
            lines.append(raw.rstrip(b"\n"))
            position += len(raw)
            if len(lines) == per_record:
                records.append(encode_batch(server, f"{server}:1", str(path), offsets, lines, position))
                offsets, lines = [], []
    if lines:
        records.append(encode_batch(server, f"{server}:1", str(path), offsets, lines, position))
    return records


def produce(bootstrap: str, topic: str, files: list[Path], per_record: int) -> int:
    from trackdelivery.kafka_clients import produce as produce_records

    def keyed() -> Iterator[tuple[bytes, bytes]]:
        for path in files:
            server = path.parent.name
            for record in records_of(path, server, per_record):
                yield server.encode(), record

    return produce_records(bootstrap, topic, keyed(), timeout=300, **{"batch.size": 1 << 20})


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def run_worker(env: dict[str, str], lines: int, workdir: Path, timeout: float) -> tuple[float, float]:
    """(seconds from the first processed line to the last, lines seen at the first observation)."""
    from trackdelivery.devenv.ports import free_port

    port = free_port()
    log_file = (workdir / "worker.log").open("wb")
    profile = ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]] if os.environ.get("BENCH_PROFILE") else []
    worker = subprocess.Popen(
        [sys.executable, *profile, "-m", "trackdelivery", "process", "--metrics-port", str(port),
         "--log-level", "warning"],
        cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + timeout
        first_at, first_count = None, 0.0
        while True:
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited:\n{(workdir / 'worker.log').read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"not done after {timeout}s")
            try:
                seen = metric(port, "trackdelivery_processor_lines_total")
            except OSError:
                seen = 0.0
            now = time.perf_counter()
            if seen > 0 and first_at is None:
                first_at, first_count = now, seen
            if seen >= lines and first_at is not None:
                redis_seconds = metric(port, "trackdelivery_processor_redis_write_seconds_sum")
                log(f"time in Redis writes: {redis_seconds:.2f}s")
                return now - first_at, first_count
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
        log_file.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200_000, help="about this many log lines")
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--days", type=float, default=3.0)
    parser.add_argument("--lines-per-record", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()

    from trackdelivery.devenv.kafka import KafkaBroker
    from trackdelivery.devenv.redis import RedisServer
    from trackdelivery.topics import create_topics

    make_cache()
    eximstats = find_eximstats(CACHE)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=CACHE, prefix="process-")))
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if not bootstrap:
            broker = KafkaBroker(workdir / "kafka", heap="1g")
            broker.start()
            stack.callback(broker.stop)
            bootstrap = broker.bootstrap
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            redis_server = RedisServer(workdir / "redis")
            redis_server.start()
            stack.callback(redis_server.stop)
            redis_url = redis_server.url

        files = generate(workdir / "fleet", args.servers, args.lines, args.seed, args.days)
        lines = sum(path.read_bytes().count(b"\n") for path in files)
        size = sum(path.stat().st_size for path in files)
        log(f"log: {len(files)} servers, {lines} lines, {size / 1e6:.1f} MB")

        tag = uuid.uuid4().hex[:8]
        topics = {"raw": f"bench.raw.{tag}", "events": f"bench.events.{tag}", "unparsed": f"bench.unparsed.{tag}"}
        create_topics(bootstrap, {topics["raw"]: args.partitions, topics["events"]: args.partitions,
                                  topics["unparsed"]: 1})
        started = time.perf_counter()
        records = produce(bootstrap, topics["raw"], files, args.lines_per_record)
        log(f"produced {records} records in {time.perf_counter() - started:.1f}s")

        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=bootstrap, REDIS_URL=redis_url,
            TRACKDELIVERY_TOPIC_RAW=topics["raw"], TRACKDELIVERY_TOPIC_EVENTS=topics["events"],
            TRACKDELIVERY_TOPIC_UNPARSED=topics["unparsed"], TRACKDELIVERY_PROCESSOR_APP_ID=f"bench-{tag}",
            TRACKDELIVERY_PROCESSOR_DATADIR=str(workdir / "faust"), TRACKDELIVERY_STORE_PREFIX=f"bench{tag}",
            PYTHONPATH=str(REPO),
        )
        seconds, first = run_worker(env, lines, workdir, args.timeout)
        rate = (lines - first) / seconds if seconds > 0 else float("inf")
        log(f"trackdelivery process: {lines - first:.0f} lines in {seconds:.2f}s = {rate:,.0f} lines/s (1 worker)")

        started = time.perf_counter()
        subprocess.run([*eximstats, *map(str, files)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        their_seconds = time.perf_counter() - started
        their_rate = lines / their_seconds
        log(f"eximstats: {lines} lines in {their_seconds:.2f}s = {their_rate:,.0f} lines/s")

    ratio = rate / their_rate
    print(json.dumps({
        "bench": "process",
        "lines": lines,
        "lines_per_s": round(rate),
        "eximstats_lines_per_s": round(their_rate),
        "ratio_vs_eximstats": round(ratio, 3),
        "target": TARGET,
    }))


if __name__ == "__main__":
    main()
