"""The stream processor measured four ways, one `trackdelivery process` worker each time.

    python bench/process.py [--lines 200000] [--servers 4] [--lines-per-record 100]
                            [--fresh-rate 10000] [--fresh-seconds 20] [--recovery-messages 1000000]
                            [--skip-throughput] [--skip-freshness] [--skip-recovery]

1. Throughput, against eximstats on the same log: a seeded fleet log ending now (so nothing falls outside
   the store's retention) is produced to a fresh raw topic as shipper-style records; one worker is timed
   from its first processed line to its last with its own Prometheus counters (faust start-up and group
   join are not counted); eximstats runs over the same files.
2. Redis memory per stored event: ``used_memory`` after the throughput run minus before, over the events
   the worker wrote (a small run pays fixed costs per set and the 32 KB dictionary; bench/redis_memory.py
   measures at the design point's scale).
3. Freshness: `trackdelivery ship` tails a log a writer appends to at ``--fresh-rate`` lines/s (O_APPEND,
   10 ms ticks); for one arrival (``<=``) line in 10 the time from its append to its message record being
   readable in Redis (``HEXISTS`` of the message hash's arrival field, polled every 5 ms). Measured again
   at half the throughput of phase 1, where one worker keeps up, to show the pipeline's own latency.
4. Recovery: the state table's changelog is filled with ``--recovery-messages`` message states (real
   states of in-flight messages from an offline run of the pipeline over a generated log, repeated under
   distinct message ids); a worker is timed from its start to the moment it has processed a raw record
   produced just before it started. With the memory store (every start reads the whole changelog); with
   the rocksdb store, first on an empty disk and then restarted (the table is on its disk: it reads only
   the changelog written after it); and with no state at all (faust start-up and group join).

Kafka and Redis: KAFKA_BOOTSTRAP_SERVERS / REDIS_URL when set, else private ones started with
trackdelivery.devenv. eximstats: PATH, else Debian's exim4-base package downloaded and unpacked into
bench/.cache (never installed). Ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from anchors import find_eximstats

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"
sys.path.insert(0, str(REPO))

TARGET = 1.0
FRESHNESS_TARGET_P99 = 1.0
RECOVERY_TARGET_SECONDS = 30.0
MEMORY_TARGET_BYTES = 600
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
    """The sum of a Prometheus metric's samples (all label sets) on the worker's endpoint."""
    total = 0.0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


@dataclass
class Environment:
    """The broker and Redis every phase uses; each phase gets its own topics, consumer group and prefix."""

    bootstrap: str
    redis_url: str
    partitions: int

    def phase(self, name: str, workdir: Path) -> dict[str, str]:
        """The worker's environment for a phase, with fresh topics (created here)."""
        from trackdelivery.topics import create_topics

        tag = f"{name}{uuid.uuid4().hex[:6]}"
        topics = {"raw": f"bench.raw.{tag}", "events": f"bench.events.{tag}", "unparsed": f"bench.unparsed.{tag}"}
        create_topics(self.bootstrap, {topics["raw"]: self.partitions, topics["events"]: self.partitions,
                                       topics["unparsed"]: 1})
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap, REDIS_URL=self.redis_url,
            TRACKDELIVERY_TOPIC_RAW=topics["raw"], TRACKDELIVERY_TOPIC_EVENTS=topics["events"],
            TRACKDELIVERY_TOPIC_UNPARSED=topics["unparsed"], TRACKDELIVERY_PROCESSOR_APP_ID=f"bench-{tag}",
            TRACKDELIVERY_PROCESSOR_DATADIR=str(workdir / f"faust-{tag}"), TRACKDELIVERY_STORE_PREFIX=f"b{tag}",
            PYTHONPATH=str(REPO),
        )
        return env


@dataclass
class Worker:
    """One `trackdelivery process` subprocess with its metrics port."""

    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    started_at: float = 0.0

    def start(self) -> Worker:
        from trackdelivery.devenv.ports import free_port

        self.port = free_port()
        profile = ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]] if os.environ.get("BENCH_PROFILE") else []
        with self.log_path.open("ab") as log_file:
            self.started_at = time.perf_counter()
            self.process = subprocess.Popen(
                [sys.executable, *profile, "-m", "trackdelivery", "process", "--metrics-port", str(self.port),
                 "--log-level", os.environ.get("BENCH_LOG_LEVEL", "warning")],
                cwd=REPO, env=self.env, stdout=log_file, stderr=subprocess.STDOUT,
            )
        return self

    def metric(self, name: str) -> float:
        self.check()
        try:
            return metric(self.port, name)
        except OSError:  # not serving yet
            return 0.0

    def check(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            kept = CACHE / f"failed-{self.log_path.parent.name}-{self.log_path.name}"
            kept.write_bytes(self.log_path.read_bytes())  # the work directory is removed on the way out
            raise SystemExit(f"the worker exited (whole log: {kept}):\n"
                             f"{self.log_path.read_text(errors='replace')[-3000:]}")

    def lines(self) -> float:
        return self.metric("trackdelivery_processor_lines_total")

    def wait_lines(self, lines: float, timeout: float) -> float:
        """Until the worker has processed ``lines`` lines; returns when (perf_counter)."""
        deadline = time.monotonic() + timeout
        while self.lines() < lines:
            if time.monotonic() > deadline:
                raise SystemExit(f"the worker processed {self.lines():.0f} of {lines:.0f} lines in {timeout}s")
            time.sleep(0.05)  # every scrape costs the worker a metrics exposition
        return time.perf_counter()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- 1 and 2: throughput and memory per event ---------------------------------------------------------------

def configure_redis(redis_url: str) -> None:
    """The settings the store is designed for, also on a Redis given by REDIS_URL (as bench/query.py)."""
    import redis

    from trackdelivery.store.types import REDIS_CONFIG

    client = redis.Redis.from_url(redis_url)
    try:
        for name, value in REDIS_CONFIG.items():
            client.config_set(name, value)
    finally:
        client.close()


def redis_used_memory(redis_url: str) -> int:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def throughput(environment: Environment, files: list[Path], lines: int, per_record: int, workdir: Path,
               timeout: float) -> dict[str, float]:
    env = environment.phase("tp", workdir)
    started = time.perf_counter()
    records = produce(environment.bootstrap, env["TRACKDELIVERY_TOPIC_RAW"], files, per_record)
    log(f"produced {records} records in {time.perf_counter() - started:.1f}s")
    memory_before = redis_used_memory(environment.redis_url)
    worker = Worker(env, workdir / "worker-throughput.log").start()
    try:
        first = worker.wait_lines(1, timeout)
        first_count = worker.lines()
        done = worker.wait_lines(lines, timeout)
        seconds = done - first
        log(f"time in Redis writes: {worker.metric('trackdelivery_processor_redis_write_seconds_sum'):.2f}s")
        events = worker.metric("trackdelivery_processor_events_total")
    finally:
        worker.stop()
    rate = (lines - first_count) / seconds if seconds > 0 else float("inf")
    log(f"trackdelivery process: {lines - first_count:.0f} lines in {seconds:.2f}s = {rate:,.0f} lines/s (1 worker)")
    stored = redis_used_memory(environment.redis_url) - memory_before
    per_event = stored / events if events else float("nan")
    log(f"Redis memory: {stored / 1e6:.1f} MB for {events:.0f} events = {per_event:.0f} bytes/event "
        f"(target <= {MEMORY_TARGET_BYTES}; fixed costs weigh more in a small run)")
    return {"lines_per_s": rate, "events": events, "bytes_per_event": per_event}


# -- 3: freshness --------------------------------------------------------------------------------------------

@dataclass
class Sample:
    key: bytes  # the message hash whose arrival field answers "readable"
    appended: float = 0.0
    seen: float = 0.0


@dataclass
class LiveLog:
    """Appends ``lines`` to ``path`` at ``rate`` lines/s from a thread, stamping the sampled arrivals."""

    path: Path
    lines: list[bytes]
    samples: dict[int, Sample]  # line index -> sample
    rate: float
    written: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def run(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                started = time.perf_counter()
                while self.written < len(self.lines):
                    due = min(len(self.lines), int((time.perf_counter() - started) * self.rate) + 1)
                    if due > self.written:
                        os.write(fd, b"".join(self.lines[self.written:due]))
                        now = time.perf_counter()
                        for index in range(self.written, due):
                            sample = self.samples.get(index)
                            if sample is not None:
                                sample.appended = now
                        self.written = due
                    time.sleep(0.01)
            finally:
                os.close(fd)
        except BaseException as error:  # reported by the poller
            self.error = error
        finally:
            self.done.set()


def arrival_samples(lines: list[bytes], server: str, prefix: str, every: int) -> dict[int, Sample]:
    from processors.exim.parser import parse_line
    from processors.exim.types import LineKind
    from trackdelivery.store.keys import KeySpace, message_ref
    from trackdelivery.store.types import StoreSettings

    keys = KeySpace(StoreSettings(prefix=prefix))
    samples: dict[int, Sample] = {}
    arrivals = 0
    for index, raw in enumerate(lines):
        parsed = parse_line(raw.rstrip(b"\n"))
        if parsed.kind is LineKind.ARRIVAL and parsed.msgid:
            arrivals += 1
            if arrivals % every == 0:
                samples[index] = Sample(keys.message(message_ref(server, parsed.msgid)))
    return samples


def shipper(env: dict[str, str], path: Path, server: str, workdir: Path) -> subprocess.Popen[bytes]:
    """`trackdelivery ship` with its defaults (poll interval, linger, record size) on ``path``."""
    with (workdir / "shipper.log").open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "trackdelivery", "ship", "--server", server, "--path", str(path),
             "--topic", env["TRACKDELIVERY_TOPIC_RAW"], "--bootstrap-servers", env["KAFKA_BOOTSTRAP_SERVERS"],
             "--checkpoint-dir", str(workdir / "checkpoints"), "--start-position", "beginning"],
            cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def freshness(environment: Environment, rate: float, seconds: float, seed: int, workdir: Path,
              timeout: float) -> dict[str, float]:
    """p50/p99 from append to readable, for one line rate; the worker and shipper start before the clock."""
    import redis

    phase_dir = workdir / f"fresh-{int(rate)}"
    phase_dir.mkdir()
    wanted = int(rate * seconds)
    files = generate(phase_dir / "fleet", 1, wanted + 2000, seed, 0.3)
    server = files[0].parent.name
    lines = files[0].read_bytes().splitlines(keepends=True)
    warmup, timed = lines[:500], lines[500:500 + wanted]
    env = environment.phase("fr", phase_dir)
    samples = arrival_samples(timed, server, env["TRACKDELIVERY_STORE_PREFIX"], every=10)
    live_path = phase_dir / "exim_mainlog"
    live_path.write_bytes(b"".join(warmup))
    worker = Worker(env, phase_dir / "worker.log").start()
    ship = shipper(env, live_path, server, phase_dir)
    client = redis.Redis.from_url(environment.redis_url)
    try:
        worker.wait_lines(len(warmup), timeout)  # faust joined, the shipper follows the file: the clock starts
        writer = LiveLog(live_path, timed, samples, rate)
        thread = threading.Thread(target=writer.run, name="live-log", daemon=True)
        thread.start()
        pending = dict(samples)
        deadline = time.monotonic() + timeout
        while pending:
            if ship.poll() is not None:
                raise SystemExit(f"the shipper exited:\n{(phase_dir / 'shipper.log').read_text()[-3000:]}")
            worker.check()
            if writer.error is not None:
                raise SystemExit(f"the log writer failed: {writer.error!r}")
            if time.monotonic() > deadline:
                raise SystemExit(f"{len(pending)} of {len(samples)} sampled lines not readable after {timeout}s")
            appended = [(index, sample) for index, sample in pending.items() if sample.appended]
            if appended:
                with client.pipeline(transaction=False) as pipe:
                    for _, sample in appended:
                        pipe.hexists(sample.key, b"a")
                    found = pipe.execute()
                now = time.perf_counter()
                for (index, sample), exists in zip(appended, found, strict=True):
                    if exists:
                        sample.seen = now
                        del pending[index]
            time.sleep(0.005)
        thread.join()
        write_seconds = time.perf_counter() - (min(s.appended for s in samples.values()) if samples else 0)
    finally:
        client.close()
        ship.terminate()
        ship.wait(timeout=60)
        worker.stop()
    latencies = [sample.seen - sample.appended for sample in samples.values()]
    result = {"rate": rate, "samples": len(latencies), "p50": percentile(latencies, 0.5),
              "p99": percentile(latencies, 0.99), "max": max(latencies, default=float("nan")),
              "mean": statistics.fmean(latencies) if latencies else float("nan")}
    log(f"freshness at {rate:,.0f} lines/s ({len(timed)} lines, {len(latencies)} sampled arrivals, "
        f"{write_seconds:.1f}s until the last was readable): p50 {result['p50'] * 1000:,.0f} ms, "
        f"p99 {result['p99'] * 1000:,.0f} ms, max {result['max'] * 1000:,.0f} ms")
    return result


# -- 4: recovery ---------------------------------------------------------------------------------------------

def message_states(files: list[Path], partitions: int) -> list[tuple[str, int, bytes]]:
    """``(key, partition, value)`` of the message states an offline run leaves in the table (in flight
    and within the grace period), each server's states in the partition its records went to."""
    from processors.pipeline import WATERMARK_PREFIX, Pipeline, server_of

    backing: dict[str, bytes] = {}
    pipeline = Pipeline(backing, message_line=lambda *fields: fields)
    for number, path in enumerate(files):
        for record in records_of(path, path.parent.name, 100):
            result = pipeline.process(record, partition=number % partitions)
            pipeline.apply(pipeline.commit(result.partition))
    states = []
    for key, value in backing.items():
        if key.startswith(WATERMARK_PREFIX) or "|" not in key or key.endswith("|#c"):
            continue
        server = server_of(key)
        states.append((key, [path.parent.name for path in files].index(server) % partitions, value))
    return states


def fill_changelog(bootstrap: str, topic: str, states: list[tuple[str, int, bytes]], count: int) -> int:
    """``count`` changelog records: the states repeated, each copy under its own message id."""
    from trackdelivery.kafka_clients import produce as produce_records

    def records() -> Iterator[tuple[bytes, bytes, int]]:
        for number in range(count):
            key, partition, value = states[number % len(states)]
            copy = number // len(states)
            name = f"{key}~{copy}" if copy else key  # '~' never occurs in an Exim id: no clash with real keys
            yield json.dumps(name).encode(), value, partition

    return produce_records(bootstrap, topic, records(), timeout=600, **{"compression.type": "lz4"})


@dataclass
class RecoveryPhase:
    """One consumer group whose state table's changelog holds ``count`` message states."""

    environment: Environment
    workdir: Path
    store: str
    env: dict[str, str] = field(default_factory=dict)
    changelog: str = ""
    markers: int = 0

    def prepare(self) -> None:
        from processors.app import STATE_TABLE
        from trackdelivery.topics import create_topics

        self.workdir.mkdir()
        self.env = {**self.environment.phase("rc", self.workdir), "TRACKDELIVERY_PROCESSOR_STORE": self.store}
        self.changelog = f"{self.env['TRACKDELIVERY_PROCESSOR_APP_ID']}-{STATE_TABLE}-changelog"
        create_topics(self.environment.bootstrap, {self.changelog: self.environment.partitions},
                      configs={"cleanup.policy": "compact"})

    def fill(self, states: list[tuple[str, int, bytes]], count: int) -> None:
        """``count`` message states appended to the changelog, as if the worker had built them."""
        started = time.perf_counter()
        fill_changelog(self.environment.bootstrap, self.changelog, states, count)
        log(f"changelog: {count:,} message states produced in {time.perf_counter() - started:.1f}s")

    def start_until_caught_up(self, name: str, timeout: float) -> float:
        """Seconds from a worker's start until it processed a raw record produced just before it started."""
        from trackdelivery.kafka_clients import produce as produce_records
        from trackdelivery.records import encode_batch

        line = b"2026-01-01 00:00:%02d 1abcde-000001-AB Completed" % self.markers
        offset = self.markers * 100
        marker = encode_batch("recovery.example", "recovery.example:1", "/var/log/exim_mainlog", [offset], [line],
                              offset + len(line) + 1)
        self.markers += 1
        produce_records(self.environment.bootstrap, self.env["TRACKDELIVERY_TOPIC_RAW"],
                        [(b"recovery.example", marker)])
        worker = Worker(self.env, self.workdir / f"worker-{name}.log").start()
        try:
            done = worker.wait_lines(1, timeout)
        finally:
            worker.stop()
        return done - worker.started_at


def recovery(environment: Environment, workdir: Path, messages: int, seed: int, timeout: float) -> dict[str, float]:
    files = generate(workdir / "recovery-fleet", 4, 60_000, seed + 1, 0.5)
    states = message_states(files, environment.partitions)
    sizes = [len(value) for _, _, value in states]
    log(f"recovery: {len(states)} real message states from an offline run, {statistics.fmean(sizes):.0f} bytes "
        f"each on average, repeated to {messages:,}")
    # Each worker is a restart of a group that has already committed its raw offsets: a first start with no
    # state, then the changelog filled as if that worker had built the states, then the timed restarts.
    memory = RecoveryPhase(environment, workdir / "recovery-memory", "memory://")
    memory.prepare()
    figures = {"messages": messages, "state_bytes": statistics.fmean(sizes),
               "empty_seconds": memory.start_until_caught_up("empty", timeout)}
    log(f"start with no state: caught up after {figures['empty_seconds']:.1f}s (faust start-up, group join)")
    memory.fill(states, messages)
    figures["memory_seconds"] = memory.start_until_caught_up("restart", timeout)
    log(f"memory store, restart with {messages:,} message states: caught up after "
        f"{figures['memory_seconds']:.1f}s (every start reads the whole changelog)")

    rocks = RecoveryPhase(environment, workdir / "recovery-rocksdb", "rocksdb://")
    rocks.prepare()
    rocks.start_until_caught_up("empty", timeout)
    rocks.fill(states, messages)
    figures["rocksdb_first_seconds"] = rocks.start_until_caught_up("first", timeout)
    log(f"rocksdb store, first start with {messages:,} message states in the changelog and none on its disk: "
        f"caught up after {figures['rocksdb_first_seconds']:.1f}s")
    figures["rocksdb_restart_seconds"] = rocks.start_until_caught_up("restart", timeout)
    log(f"rocksdb store, restart of that worker ({messages:,} message states on its disk): caught up after "
        f"{figures['rocksdb_restart_seconds']:.1f}s")
    return figures


# -- the run -------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200_000, help="about this many log lines")
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--days", type=float, default=3.0)
    parser.add_argument("--lines-per-record", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--fresh-rate", type=float, default=10_000, help="lines/s the live log is written at")
    parser.add_argument("--fresh-seconds", type=float, default=20, help="seconds of writing at that rate")
    parser.add_argument("--recovery-messages", type=int, default=1_000_000)
    parser.add_argument("--skip-throughput", action="store_true", help="(and eximstats, memory per event)")
    parser.add_argument("--skip-freshness", action="store_true")
    parser.add_argument("--skip-recovery", action="store_true")
    args = parser.parse_args()

    from trackdelivery.devenv.kafka import KafkaBroker
    from trackdelivery.devenv.redis import RedisServer

    make_cache()
    eximstats = find_eximstats(CACHE)
    figures: dict[str, object] = {"bench": "process"}
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
        configure_redis(redis_url)
        environment = Environment(bootstrap, redis_url, args.partitions)

        kept_up_rate = 2000.0
        if not args.skip_throughput:
            files = generate(workdir / "fleet", args.servers, args.lines, args.seed, args.days)
            lines = sum(path.read_bytes().count(b"\n") for path in files)
            size = sum(path.stat().st_size for path in files)
            log(f"log: {len(files)} servers, {lines} lines, {size / 1e6:.1f} MB")
            ours = throughput(environment, files, lines, args.lines_per_record, workdir, args.timeout)

            started = time.perf_counter()
            subprocess.run([*eximstats, *map(str, files)], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            their_seconds = time.perf_counter() - started
            their_rate = lines / their_seconds
            log(f"eximstats: {lines} lines in {their_seconds:.2f}s = {their_rate:,.0f} lines/s")
            ratio = ours["lines_per_s"] / their_rate
            log(f"ratio: {ratio:.3f}x eximstats per worker (target {TARGET}x)")
            figures.update(lines=lines, lines_per_s=round(ours["lines_per_s"]),
                           eximstats_lines_per_s=round(their_rate), ratio_vs_eximstats=round(ratio, 3), target=TARGET,
                           redis_bytes_per_event=round(ours["bytes_per_event"]), events=int(ours["events"]))
            kept_up_rate = max(100.0, round(ours["lines_per_s"] / 2, -2))

        if not args.skip_freshness:
            at_target = freshness(environment, args.fresh_rate, args.fresh_seconds, args.seed, workdir, args.timeout)
            kept_up = freshness(environment, kept_up_rate, args.fresh_seconds, args.seed, workdir, args.timeout)
            figures.update(
                freshness_rate=at_target["rate"], freshness_p50_s=round(at_target["p50"], 3),
                freshness_p99_s=round(at_target["p99"], 3), freshness_target_p99_s=FRESHNESS_TARGET_P99,
                freshness_kept_up_rate=kept_up["rate"], freshness_kept_up_p50_s=round(kept_up["p50"], 3),
                freshness_kept_up_p99_s=round(kept_up["p99"], 3),
            )
        if not args.skip_recovery:
            recovered = recovery(environment, workdir, args.recovery_messages, args.seed, args.timeout)
            figures.update(recovery_messages=recovered["messages"],
                           recovery_restart_s=round(recovered["rocksdb_restart_seconds"], 1),
                           recovery_rocksdb_first_s=round(recovered["rocksdb_first_seconds"], 1),
                           recovery_memory_s=round(recovered["memory_seconds"], 1),
                           recovery_no_state_s=round(recovered["empty_seconds"], 1),
                           recovery_target_s=RECOVERY_TARGET_SECONDS)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
