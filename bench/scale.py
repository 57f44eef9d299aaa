"""Scale simulation: a generated fleet of many servers (1,000 by default) fed to the pipeline by a few
producer processes, each standing for many servers, then figures for docs/capacity.md.

    python bench/scale.py [--servers 1000] [--messages 30000] [--workers 2] [--feeders 2] [--partitions 8]

1. Throughput: every server's log is produced to the raw topic up front (shipper records, interleaved
   across servers), then ``--workers`` `trackdelivery process` workers drain it; lines/s end to end
   (Kafka → parse → correlate → Redis + events topic) from the workers' own counters.
2. Freshness at a sustained rate: a second fleet (other messages, same servers) is fed at ``--load``
   (default 60 %) of the measured throughput by ``--feeders`` processes; for every ``--probe-every``-th
   arriving message the time from its record being acknowledged by Kafka to the message being readable
   in Redis through the query service's message lookup. p50/p99/max.
3. Redis memory per stored event (``used_memory`` growth / events written) and Kafka bytes per line.

Kafka and Redis are private ones from trackdelivery.devenv (``--brokers`` nodes, ``--redis-cluster``).
Ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import itertools
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trackdelivery.devenv.kafka import KafkaCluster  # noqa: E402
from trackdelivery.devenv.ports import free_port  # noqa: E402
from trackdelivery.records import encode_batch  # noqa: E402
from trackdelivery.settings import KafkaSettings, TopicNames, topic_partitions  # noqa: E402
from trackdelivery.topics import create_topics  # noqa: E402

LINES_PER_RECORD = 16


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def generate(out: Path, servers: int, messages: int, seed: int, days: float, end: datetime.datetime) -> list[Path]:
    from trackdelivery.generator.runner import FleetRun, GenerateConfig

    start = end - datetime.timedelta(days=days)
    run = FleetRun(GenerateConfig(servers=servers, messages=messages, out=out, seed=seed, days=days, start=start,
                                  incidents=()))
    try:
        run.run()
    finally:
        run.close()
    return sorted(out.glob("*/exim_mainlog"))


def fleet_records(files: list[Path], tag: str) -> list[tuple[str, bytes, list[str]]]:
    """(server, record, message ids arriving in it) for every server's log, interleaved across servers in log
    order per server, as the shippers of a fleet would produce them."""
    per_server: list[list[tuple[str, bytes, list[str]]]] = []
    for path in files:
        server = path.parent.name
        lines, offsets, position = [], [], 0
        for line in path.read_bytes().splitlines():
            lines.append(line)
            offsets.append(position)
            position += len(line) + 1
        records = []
        for start in range(0, len(lines), LINES_PER_RECORD):
            chunk = lines[start : start + LINES_PER_RECORD]
            arrivals = [parts[2].decode() for parts in (line.split(b" ", 4) for line in chunk)
                        if len(parts) > 3 and parts[3] == b"<="]
            end = offsets[start + len(chunk) - 1] + len(chunk[-1]) + 1
            records.append((server, encode_batch(server, f"{tag}-{server}", str(path),
                                                 offsets[start : start + len(chunk)], chunk, end), arrivals))
        per_server.append(records)
    return [record for round_ in itertools.zip_longest(*per_server) for record in round_ if record is not None]


def split_by_server(records: list[tuple[str, bytes, list[str]]], feeders: int) -> list[list[Any]]:
    """Each server's records to one feeder, in order (as one shipper per server sends them): records of a
    file that reached Kafka out of order would be dropped by the processor's per-file watermark."""
    servers = sorted({server for server, _, _ in records})
    owner = {server: index % feeders for index, server in enumerate(servers)}
    shares: list[list[Any]] = [[] for _ in range(feeders)]
    for record in records:
        shares[owner[record[0]]].append(record)
    return shares


def produce(bootstrap: str, topic: str, records: list[tuple[str, bytes, list[str]]], rate: float | None,
            probe_every: int, out: Any) -> None:
    """Produce ``records`` (at ``rate`` lines/s when given); puts (server, msgid, acked time) probes on ``out``."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "compression.type": "lz4", "linger.ms": 5})
    probes: list[tuple[str, str, float]] = []
    arrivals = 0
    started = time.monotonic()
    sent_lines = 0

    def acked(wanted: list[str], server: str, error: Any, _message: Any) -> None:
        if error is None:
            now = time.time()
            probes.extend((server, msgid, now) for msgid in wanted)

    for server, value, msgids in records:
        wanted = []
        for msgid in msgids:
            arrivals += 1
            if probe_every and arrivals % probe_every == 0:
                wanted.append(msgid)
        while True:
            try:
                callback = functools.partial(acked, wanted, server)
                producer.produce(topic, value, key=server.encode(), on_delivery=callback)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        sent_lines += LINES_PER_RECORD
        if rate:
            delay = started + sent_lines / rate - time.monotonic()
            if delay > 0:
                producer.flush(delay)
                time.sleep(max(0.0, started + sent_lines / rate - time.monotonic()))
        if len(probes) > 50:
            out.put(probes[:])
            probes.clear()
    producer.flush(120)
    if probes:
        out.put(probes)


class Worker:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        with log_path.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "trackdelivery", "process", "--metrics-port", str(self.port),
                 "--log-level", "warning"], env=env, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)

    def counters(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return {}
        totals: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            name, _, value = line.rpartition(" ")
            base = name.split("{", 1)[0]
            if base in ("trackdelivery_processor_lines_total", "trackdelivery_processor_events_total"):
                totals[base] = totals.get(base, 0.0) + float(value)
        return totals

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)


def totals(workers: list[Worker]) -> dict[str, float]:
    summed: dict[str, float] = {}
    for worker in workers:
        for name, value in worker.counters().items():
            summed[name] = summed.get(name, 0.0) + value
    return summed


def used_memory(url: str, cluster: bool) -> int:
    import redis

    if cluster:
        client: Any = redis.RedisCluster.from_url(url)
        info = client.info("memory", target_nodes=redis.RedisCluster.PRIMARIES)
        client.close()
        return sum(int(node["used_memory"]) for node in info.values())
    plain = redis.Redis.from_url(url)
    try:
        return int(plain.info("memory")["used_memory"])
    finally:
        plain.close()


async def poll_freshness(
    url: str, cluster: bool, prefix: str, queue: Any, producers: list[Any], give_up: float = 120.0
) -> tuple[list[float], list[tuple[str, str, float]]]:
    """Delays of the probes that became readable, and the probes that did not within ``give_up`` seconds
    of the last record produced."""
    import redis.asyncio as aioredis

    from query_service.search import DeliverySearch
    from trackdelivery.store import StoreSettings

    kind = aioredis.RedisCluster if cluster else aioredis.Redis
    search = DeliverySearch(kind.from_url(url), StoreSettings(prefix=prefix))
    pending: list[tuple[str, str, float]] = []
    delays: list[float] = []
    finished: float | None = None
    try:
        while True:
            with contextlib.suppress(Exception):
                while True:
                    pending.extend(queue.get_nowait())
            still = []
            for server, msgid, acked in pending:
                if await search.message(server, msgid) is not None:
                    delays.append(max(0.0, time.time() - acked))
                else:
                    still.append((server, msgid, acked))
            pending = still
            feeding = any(p.is_alive() for p in producers) or not queue.empty()
            if not feeding:
                finished = finished or time.monotonic()
                if not pending or time.monotonic() - finished > give_up:
                    return delays, pending
            await asyncio.sleep(0.05)
    finally:
        await search.client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=30000, help="messages per phase, fleet-wide")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--feeders", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--brokers", type=int, default=1)
    parser.add_argument("--redis-cluster", action="store_true")
    parser.add_argument("--load", type=float, default=0.6, help="freshness phase rate, share of the throughput")
    parser.add_argument("--probe-every", type=int, default=20)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="scale-"))
    kafka = KafkaCluster(workdir / "kafka", args.brokers, heap="1g" if args.brokers == 1 else "512m")
    redis_servers: Any
    if args.redis_cluster:
        from trackdelivery.devenv.redis import RedisClusterServers

        redis_servers = RedisClusterServers(workdir / "redis")
    else:
        from trackdelivery.devenv.redis import RedisServer

        redis_servers = RedisServer(workdir / "redis")
    workers: list[Worker] = []
    try:
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        log(f"generating two fleets of {args.servers} servers x {args.messages} messages")
        first = generate(workdir / "fleet1", args.servers, args.messages, 3, 1.0, now - datetime.timedelta(hours=2))
        second = generate(workdir / "fleet2", args.servers, args.messages, 4, 0.05, now)
        records1, records2 = fleet_records(first, "a"), fleet_records(second, "b")
        lines1 = sum(len(path.read_bytes().splitlines()) for path in first)
        lines2 = sum(len(path.read_bytes().splitlines()) for path in second)
        log(f"{lines1:,} + {lines2:,} lines, {len(records1):,} + {len(records2):,} records")
        kafka.start()
        redis_servers.start()
        settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, partitions=args.partitions,
                                 replication_factor=kafka.replication)
        topics = TopicNames()
        create_topics(settings, topic_partitions(settings, topics), kafka.replication)
        from trackdelivery.devenv.redis import RedisServer

        if isinstance(redis_servers, RedisServer):
            import redis

            plain = redis.Redis.from_url(redis_servers.url)
            from trackdelivery.store.types import REDIS_CONFIG

            for name, value in REDIS_CONFIG.items():
                plain.config_set(name, value)
            plain.close()
        memory_before = used_memory(redis_servers.url, args.redis_cluster)

        log("phase 1: producing the first fleet up front")
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        shares = split_by_server(records1, args.feeders)
        feeders = [context.Process(target=produce, args=(kafka.bootstrap, topics.raw, share, None, 0, queue))
                   for share in shares]
        for feeder in feeders:
            feeder.start()
        for feeder in feeders:
            feeder.join()
        kafka_bytes = sum(len(value) for _, value, _ in records1)
        prefix = f"scale{uuid.uuid4().hex[:6]}"
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "REDIS_URL": redis_servers.url,
               "REDIS_CLUSTER": "1" if args.redis_cluster else "0", "TRACKDELIVERY_STORE_PREFIX": prefix,
               "KAFKA_REPLICATION_FACTOR": str(kafka.replication),
               "TRACKDELIVERY_PROCESSOR_APP_ID": f"scale-{prefix}", "PYTHONPATH": str(REPO),
               "TRACKDELIVERY_PROCESSOR_SESSION_TIMEOUT": "10"}
        log(f"phase 1: {args.workers} workers draining {lines1:,} lines")
        for number in range(args.workers):
            worker_env = {**env, "TRACKDELIVERY_PROCESSOR_DATADIR": str(workdir / f"faust{number}")}
            workers.append(Worker(worker_env, workdir / f"worker{number}.log"))
        first_seen: tuple[float, float] | None = None
        last = (0.0, 0.0)
        deadline = time.monotonic() + 3600
        while True:
            done = totals(workers).get("trackdelivery_processor_lines_total", 0.0)
            now_s = time.monotonic()
            if done > 0 and first_seen is None:
                first_seen = (now_s, done)
            if done > last[1]:
                last = (now_s, done)
            if done >= lines1:
                break
            if any(worker.process.poll() is not None for worker in workers):
                raise RuntimeError("a worker exited during phase 1")
            if now_s > deadline:
                raise TimeoutError("phase 1 did not finish within an hour")
            time.sleep(1.0)
        assert first_seen is not None
        throughput = (last[1] - first_seen[1]) / max(last[0] - first_seen[0], 1e-9)
        events = totals(workers).get("trackdelivery_processor_events_total", 0.0)
        memory_after = used_memory(redis_servers.url, args.redis_cluster)
        log(f"phase 1: {throughput:,.0f} lines/s with {args.workers} workers; {events:,.0f} events")

        rate = max(50.0, throughput * args.load)
        log(f"phase 2: feeding the second fleet at {rate:,.0f} lines/s, probing freshness")
        shares = split_by_server(records2, args.feeders)
        feeders = [context.Process(target=produce, args=(kafka.bootstrap, topics.raw, share, rate / args.feeders,
                                                         args.probe_every, queue)) for share in shares]
        for feeder in feeders:
            feeder.start()
        delays, unseen = asyncio.run(poll_freshness(redis_servers.url, args.redis_cluster, prefix, queue, feeders))
        for feeder in feeders:
            feeder.join()
        delays.sort()
        result = {
            "bench": "scale",
            "servers": args.servers,
            "workers": args.workers,
            "partitions": args.partitions,
            "kafka_brokers": args.brokers,
            "redis_cluster": args.redis_cluster,
            "lines": lines1,
            "lines_per_s": round(throughput),
            "lines_per_s_per_worker": round(throughput / args.workers),
            "events": int(events),
            "events_per_line": round(events / lines1, 3),
            "redis_bytes_per_event": round((memory_after - memory_before) / max(events, 1), 1),
            "kafka_bytes_per_line": round(kafka_bytes / lines1, 1),
            "freshness_rate_lines_per_s": round(rate),
            "freshness_probes": len(delays),
            "freshness_unseen": len(unseen),
            "unseen_examples": [[server, msgid] for server, msgid, _ in unseen[:5]],
            "freshness_p50_s": round(statistics.median(delays), 3) if delays else None,
            "freshness_p99_s": round(delays[int(len(delays) * 0.99) - 1], 3) if delays else None,
            "freshness_max_s": round(delays[-1], 3) if delays else None,
        }
    finally:
        for worker in workers:
            worker.stop()
        with contextlib.suppress(Exception):
            kafka.stop()
        with contextlib.suppress(Exception):
            redis_servers.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"scale simulation: {result['servers']} servers, {result['workers']} workers, {result['partitions']} "
          f"partitions, {result['kafka_brokers']} broker(s), Redis {'Cluster' if args.redis_cluster else 'single'}")
    print(f"  throughput  {result['lines_per_s']:,} lines/s end to end ({result['lines_per_s_per_worker']:,} per "
          f"worker) over {result['lines']:,} lines; {result['events_per_line']} events per line")
    print(f"  freshness   at {result['freshness_rate_lines_per_s']:,} lines/s: p50 {result['freshness_p50_s']}s, "
          f"p99 {result['freshness_p99_s']}s, max {result['freshness_max_s']}s ({result['freshness_probes']} probes)")
    print(f"  storage     Redis {result['redis_bytes_per_event']} bytes/event, Kafka "
          f"{result['kafka_bytes_per_line']} bytes/line (uncompressed record)")
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
