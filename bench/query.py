"""The 250-recent lookup, one filter, over N stored events (SPEC target at 10M: p99 <= 10 ms at 200 req/s
open loop; >= 1,000 req/s with 32 clients).

Fills N fleet events (bench/redis_memory.py's generator, ``--workers`` writer processes), then runs
``DeliverySearch.search`` with one filter and ``limit=250``, the filter drawn at random per request from
servers, cPanel users, sender domains, recipient domains and sender addresses of the fleet:

(a) open loop: ``--rate`` requests/s for ``--seconds``, latency measured from each request's scheduled
    start (so queueing counts); (b) closed loop: ``--clients`` concurrent clients for ``--seconds``.

Anchors on the same server: ``redis-benchmark`` running the raw index read (``ZREVRANGEBYLEX <key> + -
LIMIT 0 250`` on a hot index key) with the same client count; exigrep over an equivalent log is the
issue-6 anchor (see ``exigrep_anchor``). Ends with one JSON line.

    .venv/bin/python bench/query.py [--events 1000000] [--workers 2] [--reuse]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from redis_memory import DESIGN_RATE_PER_DAY, RECOMMENDED_CONFIG, REMOTE_DOMAINS, Fleet, fill

from query_service.search import DeliverySearch
from trackdelivery.devenv.redis import RedisServer
from trackdelivery.store.keys import KeySpace, Kind, normalize, value_digest, value_partitions
from trackdelivery.store.types import Page, Query, StoreSettings


def _fill_worker(url: str, prefix: str, count: int, seed: int, span_days: float, now: float) -> tuple[int, float]:
    async def run() -> tuple[int, float]:
        client = aioredis.Redis.from_url(url)
        try:
            return await fill(client, StoreSettings(prefix=prefix), count, seed=seed, span_days=span_days,
                              progress=seed == 1, now=now)
        finally:
            await client.aclose()

    return asyncio.run(run())


def fill_parallel(url: str, prefix: str, events: int, workers: int, span_days: float) -> float:
    now = time.time()
    started = time.perf_counter()
    share = events // workers
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.starmap(_fill_worker, [(url, prefix, share, seed, span_days, now) for seed in range(1, workers + 1)])
    return time.perf_counter() - started


def query_mix(seed: int) -> list[Query]:
    """One-filter queries over the fleet's real values; customers are picked by their mail volume."""
    fleet = Fleet(1)
    rng = random.Random(seed)
    queries = []
    for _ in range(2000):
        server, user, domain, sender = fleet.users[min(int(rng.paretovariate(0.6)), len(fleet.users)) - 1]
        choice = rng.randrange(5)
        if choice == 0:
            query = Query(server=server, page=Page(limit=250))
        elif choice == 1:
            query = Query(cpanel_user=user, page=Page(limit=250))
        elif choice == 2:
            query = Query(sender_domain=domain, page=Page(limit=250))
        elif choice == 3:
            query = Query(recipient_domain=rng.choice(REMOTE_DOMAINS), page=Page(limit=250))
        else:
            query = Query(sender=rng.choice(sender), page=Page(limit=250))
        queries.append(query)
    return queries


async def open_loop(search: DeliverySearch, queries: list[Query], rate: float, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    returned: list[int] = []
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    tasks = []

    async def one(query: Query, scheduled: float) -> None:
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        result = await search.search(query)
        latencies.append(loop.time() - scheduled)
        returned.append(len(result.events))

    for number in range(int(rate * seconds)):
        tasks.append(asyncio.create_task(one(queries[number % len(queries)], start + number / rate)))
    await asyncio.gather(*tasks)
    latencies.sort()
    return {
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 2),
        "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99) - 1], 2),
        "max_ms": round(1000 * latencies[-1], 2),
        "requests": len(latencies),
        "mean_results": round(statistics.fmean(returned), 1),
    }


async def closed_loop(search: DeliverySearch, queries: list[Query], clients: int, seconds: float) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def client(offset: int) -> None:
        nonlocal done
        position = offset
        while time.perf_counter() < deadline:
            await search.search(queries[position % len(queries)])
            position += clients
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(offset) for offset in range(clients)))
    return done / (time.perf_counter() - started)


def hot_index_key(settings: StoreSettings) -> bytes:
    """A sorted set of the busiest sender domain, from the bucket before the current one."""
    fleet = Fleet(1)
    domain = fleet.users[0][2]
    keys = KeySpace(settings)
    value = normalize(Kind.SENDER_DOMAIN, domain, settings.max_field_chars)
    digest = value_digest(Kind.SENDER_DOMAIN, value)
    bucket = keys.bucket_of(Kind.SENDER_DOMAIN, time.time() - 3600)
    partition = value_partitions(Kind.SENDER_DOMAIN, digest, keys.partitions(Kind.SENDER_DOMAIN))[0]
    return keys.index(Kind.SENDER_DOMAIN, bucket, partition)


def redis_benchmark(url: str, key: bytes, clients: int, requests: int = 50_000) -> float | None:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    match = re.match(r"redis://([^:/]+):(\d+)", url)
    if match is None:
        return None
    host, port = match.groups()
    command = [binary, "-h", host, "-p", port, "-c", str(clients), "-n", str(requests), "-q",
               "ZREVRANGEBYLEX", key.decode("latin-1"), "+", "-", "LIMIT", "0", "250"]
    output = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300).stdout
    found = re.findall(r"([\d.]+) requests per second", output.replace(",", ""))
    return float(found[-1]) if found else None


def exigrep_anchor(events: int) -> float | None:
    """TODO(issue 6): write an Exim main log equivalent to the stored events (the generator's log
    writer), time ``exigrep <address> <log>`` for the same 250-recent question and return its seconds,
    so the JSON line can carry ``exigrep_ratio`` (target >= 1000x). Not measured yet: returns None."""
    return None


async def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    sync = redis.Redis.from_url(url)
    for name, value in RECOMMENDED_CONFIG.items():
        sync.config_set(name, value)
    settings = StoreSettings(prefix=args.prefix)
    span_days = args.days or max(args.events / DESIGN_RATE_PER_DAY, 0.05)
    fill_seconds = None
    if not args.reuse:
        before = int(sync.info("memory")["used_memory"])
        fill_seconds = fill_parallel(url, args.prefix, args.events, args.workers, span_days)
        used = int(sync.info("memory")["used_memory"]) - before
    else:
        used = int(sync.info("memory")["used_memory"])
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=64, timeout=None)
    client = aioredis.Redis(connection_pool=pool)
    search = DeliverySearch(client, settings)
    queries = query_mix(seed=5)
    for query in queries[:200]:  # warm the connection pool and the record dictionaries
        await search.search(query)
    opened = await open_loop(search, queries, args.rate, args.seconds)
    saturation = await closed_loop(search, queries, args.clients, args.seconds)
    per_type = Query(sender_domain=Fleet(1).users[0][2])  # cPanel's default: up to 250 of each type
    started = time.perf_counter()
    for _ in range(20):
        cpanel = await search.search(per_type)
    cpanel_ms = (time.perf_counter() - started) / 20 * 1000
    await client.aclose()
    key = hot_index_key(settings)
    raw_rps = redis_benchmark(url, key, args.clients)
    exigrep_seconds = exigrep_anchor(args.events)
    return {
        "bench": "query",
        "events": args.events,
        "p50_ms": opened["p50_ms"],
        "p99_ms": opened["p99_ms"],
        "saturation_rps": round(saturation, 1),
        "redis_benchmark_rps": raw_rps,
        "target_p99_ms": 10,
        "target_rps": 1000,
        "open_loop_rate": args.rate,
        "open_loop": opened,
        "clients": args.clients,
        "max_results_by_type_250_ms": round(cpanel_ms, 2),
        "max_results_by_type_250_events": len(cpanel.events),
        "exigrep_seconds": exigrep_seconds,
        "fill_seconds": round(fill_seconds, 1) if fill_seconds is not None else None,
        "used_memory_bytes": used,
        "bytes_per_event": round(used / args.events, 1) if not args.reuse else None,
        "span_days": round(span_days, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=None, help="time span of the events (default: design rate)")
    parser.add_argument("--workers", type=int, default=max(1, min(4, (os.cpu_count() or 2) - 1)))
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--prefix", default="tdbench")
    parser.add_argument("--reuse", action="store_true", help="REDIS_URL already holds the events: skip the fill")
    parser.add_argument("--keep", action="store_true", help="leave the redis-server running (prints its URL)")
    args = parser.parse_args()
    url = os.environ.get("REDIS_URL")
    server = None
    workdir = tempfile.mkdtemp(prefix="query-bench-")
    if url is None:
        server = RedisServer(Path(workdir))
        server.start()
        url = server.url
    try:
        result = asyncio.run(measure(url, args))
    finally:
        if server is not None and not args.keep:
            server.stop()
            shutil.rmtree(workdir, ignore_errors=True)
        elif server is not None:
            print(f"redis-server left running at {url} (pid {server.pid})", file=sys.stderr)
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
