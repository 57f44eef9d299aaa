"""The 250-recent lookup over N stored events (SPEC target at 10M: one filter, p99 <= 10 ms at 200 req/s
open loop; >= 1,000 req/s with 32 clients; >= 1000x exigrep on the same question).

Fills N fleet events (bench/redis_memory.py's generator, ``--workers`` writer processes; ``--reuse`` skips
that when REDIS_URL already holds them), then measures what the API's ``/api/v1/deliveries`` does for a
page of 250 (``DeliverySearch.search_rows`` and the answer's JSON) in two mixes: one filter (a server, a
cPanel user, a sender domain, a recipient domain or a sender address, drawn per request, customers
weighted by their mail volume) and two filters (a user, a sender domain or a server, each with a
recipient domain):

(a) open loop: ``--rate`` requests/s for ``--seconds`` in one process, latency measured from each
    request's scheduled start (so queueing counts);
(b) saturation: ``--clients`` concurrent clients for ``--seconds``, spread over ``--procs`` processes (the
    service runs one worker per core the same way).

Anchors in the same run: ``redis-benchmark`` running the raw index read (``ZREVRANGEBYLEX <key> + - LIMIT
0 250`` on a hot index key) with the same client count, and exigrep answering the recipient question on
the Exim main log of the same events (written once into bench/.cache/), against our answer to it.
Ends with one JSON line.

    .venv/bin/python bench/query.py [--events 10000000] [--workers 2] [--reuse] [--keep]
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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anchors import find_exigrep
from redis_memory import DESIGN_RATE_PER_DAY, RECOMMENDED_CONFIG, REMOTE_DOMAINS, Fleet, fill, fleet_events

from query_service.search import DeliverySearch
from trackdelivery.devenv.redis import RedisServer
from trackdelivery.events import DeliveryEvent, EventType
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


CACHE = Path(__file__).resolve().parent / ".cache"
FILL_END_KEY = "bench:query:fill"  # when and how the stored events were written (for --reuse)


def fill_parallel(url: str, prefix: str, events: int, workers: int, span_days: float, now: float) -> float:
    started = time.perf_counter()
    share = events // workers
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.starmap(_fill_worker, [(url, prefix, share, seed, span_days, now) for seed in range(1, workers + 1)])
    return time.perf_counter() - started


def query_mix(seed: int, filters: int = 1) -> list[Query]:
    """Queries over the fleet's real values (customers picked by their mail volume), each with one filter
    or, with ``filters=2``, a customer-side filter and a recipient domain."""
    fleet = Fleet(1)
    rng = random.Random(seed)
    queries = []
    page = Page(limit=250)
    for _ in range(2000):
        server, user, domain, sender = fleet.users[min(int(rng.paretovariate(0.6)), len(fleet.users)) - 1]
        choice = rng.randrange(5 if filters == 1 else 3)
        remote = rng.choice(REMOTE_DOMAINS)
        if filters == 2:
            side = [{"cpanel_user": user}, {"sender_domain": domain}, {"server": server}][choice]
            queries.append(Query(recipient_domain=remote, page=page, **side))  # type: ignore[arg-type]
        elif choice == 0:
            queries.append(Query(server=server, page=page))
        elif choice == 1:
            queries.append(Query(cpanel_user=user, page=page))
        elif choice == 2:
            queries.append(Query(sender_domain=domain, page=page))
        elif choice == 3:
            queries.append(Query(recipient_domain=remote, page=page))
        else:
            queries.append(Query(sender=rng.choice(sender), page=page))
    return queries


async def answer(search: DeliverySearch, query: Query) -> int:
    """What the API does for one request, minus HTTP: the search and the answer's events JSON."""
    result = await search.search_rows(query)
    body = b"[" + b",".join(result.rows) + b"]"  # the answer's events, as /api/v1/deliveries builds them
    assert body.endswith(b"]")
    return len(result.rows)


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
        found = await answer(search, query)
        latencies.append(loop.time() - scheduled)
        returned.append(found)

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


async def closed_loop(search: DeliverySearch, queries: list[Query], clients: int, seconds: float,
                      offset: int = 0, stride: int = 1) -> int:
    done = 0
    deadline = time.perf_counter() + seconds

    async def client(first: int) -> None:
        nonlocal done
        position = first
        while time.perf_counter() < deadline:
            await answer(search, queries[position % len(queries)])
            position += clients * stride
            done += 1

    await asyncio.gather(*(client(offset + number * stride) for number in range(clients)))
    return done


WALKS = {"auto": None, "module": True, "script": False}


def _saturation_worker(url: str, prefix: str, filters: int, clients: int, seconds: float, offset: int,
                       stride: int, start_at: float, walk: str) -> int:
    async def run() -> int:
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=clients, timeout=None)
        client = aioredis.Redis(connection_pool=pool)
        search = DeliverySearch(client, StoreSettings(prefix=prefix), walk_module=WALKS[walk])
        queries = query_mix(seed=5, filters=filters)
        for query in queries[offset : offset + 50]:  # connections and record dictionaries
            await answer(search, query)
        await asyncio.sleep(max(0.0, start_at - time.time()))
        try:
            return await closed_loop(search, queries, clients, seconds, offset, stride)
        finally:
            await client.aclose()

    return asyncio.run(run())


def saturation(url: str, prefix: str, filters: int, clients: int, procs: int, seconds: float, walk: str) -> float:
    """Requests/s of ``clients`` concurrent clients spread over ``procs`` processes, started together."""
    start_at = time.time() + 3 + procs
    shares = [clients // procs + (1 if number < clients % procs else 0) for number in range(procs)]
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        done = pool.starmap(_saturation_worker, [
            (url, prefix, filters, share, seconds, number, procs, start_at, walk)
            for number, share in enumerate(shares)
        ])
    return sum(done) / seconds


def hot_index_key(settings: StoreSettings, now: float) -> bytes:
    """A sorted set of the busiest sender domain, from the hour before the fill's end (``now``: a --reuse
    run hours after the fill still reads a full set, not an empty one)."""
    fleet = Fleet(1)
    domain = fleet.users[0][2]
    keys = KeySpace(settings)
    value = normalize(Kind.SENDER_DOMAIN, domain, settings.max_field_chars)
    digest = value_digest(Kind.SENDER_DOMAIN, value)
    bucket = keys.bucket_of(Kind.SENDER_DOMAIN, now - 3600)
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


def _stamp(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when))


def exim_lines(events: list[DeliveryEvent]) -> Iterable[str]:
    """One message's (or one SMTP-time rejection's) Exim main log lines."""
    first = events[0]
    if first.msgid is None:
        yield (f"{_stamp(first.time)} H={first.client_host} [{first.client_ip}] F=<{first.sender}> "
               f"rejected RCPT <{first.recipient}>: {first.response}")
        return
    yield (f"{_stamp(first.arrival_time or first.time)} {first.msgid} <= {first.sender} H={first.client_host} "
           f"[{first.client_ip}] P={first.protocol} A=dovecot_login:{first.auth_id} S={first.size} "
           f"id={first.message_id_header} T=\"{first.subject}\"")
    for event in events:
        head = f"{_stamp(event.time)} {event.msgid}"
        route = f"R={event.router} T={event.transport}"
        host = f"H={event.remote_host} [{event.remote_ip}]"
        error = f"SMTP error from remote mail server after RCPT TO:<{event.recipient}>: {event.response}"
        if event.type is EventType.DELIVERED:
            yield f"{head} => {event.recipient} {route} {host} X={event.tls} C=\"{event.response}\""
        elif event.type is EventType.DEFERRED:
            yield f"{head} == {event.recipient} {route} defer (-44) {host}: {error}"
        elif event.type in (EventType.BOUNCED, EventType.EXPIRED):
            yield f"{head} ** {event.recipient} {route} {host}: {error}"
    yield f"{_stamp(max(event.time for event in events))} {first.msgid} Completed"


def write_exim_log(path: Path, events: int, workers: int, now: float, span_days: float) -> None:
    """The Exim main log of the events the fill stores (the same generator, seeds and shares)."""
    if path.exists():
        return
    print(f"writing the Exim main log of the {events:,} events to {path} ...", file=sys.stderr, flush=True)
    partial = path.with_suffix(".partial")
    with partial.open("w", encoding="utf-8", errors="surrogateescape") as out:
        for seed in range(1, workers + 1):
            for message, _ in fleet_events(events // workers, seed + 1000, now - 60, span_days * 86400):
                out.write("\n".join(exim_lines(message)))
                out.write("\n")
    partial.rename(path)


def probe_recipient(events: int, workers: int, now: float, span_days: float) -> str:
    """A recipient address the fill stored and the log holds: one of the first writer's first 10,000
    messages (its middle one when it wrote fewer)."""
    messages = []
    for message, _ in fleet_events(events // workers, 1001, now - 60, span_days * 86400):
        if message[0].msgid is not None and message[0].recipient:
            messages.append(message)
            if len(messages) >= 10_000:
                break
    if not messages:
        raise RuntimeError("the generator produced no message to ask about")
    recipient = messages[len(messages) // 2][0].recipient
    assert recipient is not None
    return recipient


def exigrep_seconds(log: Path, address: str) -> tuple[float, int]:
    """exigrep's time to print every message of ``address`` from the log (-l: a literal, not a regex)."""
    command = [*find_exigrep(CACHE), "-l", address, str(log)]
    started = time.perf_counter()
    output = subprocess.run(command, capture_output=True, check=True, timeout=3600).stdout
    return time.perf_counter() - started, output.count(address.encode())


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    sync = redis.Redis.from_url(url)
    for name, value in RECOMMENDED_CONFIG.items():
        sync.config_set(name, value)
    settings = StoreSettings(prefix=args.prefix)
    fill_seconds = None
    if not args.reuse:
        span_days = args.days or max(args.events / DESIGN_RATE_PER_DAY, 0.05)
        now = time.time()
        before = int(sync.info("memory")["used_memory"])
        log(f"filling {args.events:,} events over {span_days:.1f} days with {args.workers} writers ...")
        fill_seconds = fill_parallel(url, args.prefix, args.events, args.workers, span_days, now)
        used = int(sync.info("memory")["used_memory"]) - before
        sync.hset(FILL_END_KEY, mapping={"now": now, "events": args.events, "workers": args.workers,
                                         "span_days": span_days})
    else:
        stored = {key.decode(): float(value) for key, value in sync.hgetall(FILL_END_KEY).items()}
        if not stored:
            raise SystemExit(f"--reuse: {url} has no {FILL_END_KEY} (written by a fill of this bench)")
        now, span_days = stored["now"], stored["span_days"]
        args.events, args.workers = int(stored["events"]), int(stored["workers"])
        used = int(sync.info("memory")["used_memory"])
    log(f"{args.events:,} events stored, Redis used_memory {used / 1e9:.2f} GB")
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=64, timeout=None)
    client = aioredis.Redis(connection_pool=pool)
    search = DeliverySearch(client, settings, walk_module=WALKS[args.walk])
    mixes = {"one_filter": query_mix(seed=5, filters=1), "two_filters": query_mix(seed=5, filters=2)}
    results: dict[str, Any] = {}
    for name, queries in mixes.items():
        for query in queries[:200]:  # warm the connection pool and the record dictionaries
            await answer(search, query)
        log(f"{name}: open loop at {args.rate:.0f} req/s for {args.seconds:.0f} s ...")
        opened = await open_loop(search, queries, args.rate, args.seconds)
        log(f"{name}: {args.clients} clients in {args.procs} processes for {args.seconds:.0f} s ...")
        rps = saturation(url, args.prefix, 1 if name == "one_filter" else 2, args.clients, args.procs, args.seconds,
                         args.walk)
        results[name] = {**opened, "saturation_rps": round(rps, 1)}
        log(f"{name}: p50 {opened['p50_ms']} ms, p99 {opened['p99_ms']} ms at {args.rate:.0f} req/s; "
            f"{rps:,.0f} req/s with {args.clients} clients; {opened['mean_results']} events per answer")
    assert search._walk is not None
    walk_used = "module" if search._walk.uses_module else "script"
    script_rps = None
    if walk_used == "module":  # the same saturation through the Lua script: what the module buys
        log(f"one_filter through the Lua script: {args.clients} clients for {args.seconds:.0f} s ...")
        script_rps = saturation(url, args.prefix, 1, args.clients, args.procs, args.seconds, "script")
    per_type = Query(sender_domain=Fleet(1).users[0][2])  # cPanel's default: up to 250 of each type
    started = time.perf_counter()
    for _ in range(20):
        cpanel = await search.search_rows(per_type)
    cpanel_ms = (time.perf_counter() - started) / 20 * 1000
    address = probe_recipient(args.events, args.workers, now, span_days)
    ours = []
    for _ in range(50):
        started = time.perf_counter()
        found = await answer(search, Query(recipient=address, page=Page(limit=250)))
        ours.append(time.perf_counter() - started)
    await client.aclose()
    key = hot_index_key(settings, now)
    log(f"redis-benchmark: ZREVRANGEBYLEX LIMIT 0 250 on {key!r}, {args.clients} clients ...")
    raw_rps = redis_benchmark(url, key, args.clients)
    exigrep = exigrep_found = None
    if not args.no_exigrep:
        exim_log = CACHE / f"query-{args.events}-{args.workers}.log"
        write_exim_log(exim_log, args.events, args.workers, now, span_days)
        log(f"exigrep -l {address} on {exim_log} ({exim_log.stat().st_size / 1e9:.2f} GB) ...")
        exigrep, exigrep_found = exigrep_seconds(exim_log, address)
    ours_ms = statistics.median(ours) * 1000
    one = results["one_filter"]
    summary = {
        "bench": "query",
        "events": args.events,
        "native_rows": search._rows.native,
        "walk": walk_used,
        "script_walk_saturation_rps": round(script_rps, 1) if script_rps is not None else None,
        "ratio_module_vs_script": round(one["saturation_rps"] / script_rps, 2) if script_rps else None,
        "p50_ms": one["p50_ms"],
        "p99_ms": one["p99_ms"],
        "saturation_rps": one["saturation_rps"],
        "two_filters_p99_ms": results["two_filters"]["p99_ms"],
        "two_filters_saturation_rps": results["two_filters"]["saturation_rps"],
        "redis_benchmark_rps": raw_rps,
        "exigrep_seconds": round(exigrep, 2) if exigrep is not None else None,
        "recipient_lookup_ms": round(ours_ms, 3),
        "ratio_vs_exigrep": round(exigrep / (ours_ms / 1000)) if exigrep is not None else None,
        "target_p99_ms": 10,
        "target_rps": 1000,
        "target_ratio_vs_exigrep": 1000,
        "open_loop_rate": args.rate,
        "clients": args.clients,
        "procs": args.procs,
        "mixes": results,
        "recipient_lookup_found": found,
        "exigrep_found_lines": exigrep_found,
        "max_results_by_type_250_ms": round(cpanel_ms, 2),
        "max_results_by_type_250_events": len(cpanel.rows),
        "fill_seconds": round(fill_seconds, 1) if fill_seconds is not None else None,
        "used_memory_bytes": used,
        "bytes_per_event": round(used / args.events, 1) if not args.reuse else None,
        "span_days": round(span_days, 2),
    }
    print(f"""
query bench: {args.events:,} events over {span_days:.1f} days, walks by the Redis {walk_used}, rows decoded \
{'natively' if search._rows.native else 'in Python'}
  one filter : p50 {one['p50_ms']} ms, p99 {one['p99_ms']} ms at {args.rate:.0f} req/s (target p99 <= 10 ms); \
{one['saturation_rps']:,.0f} req/s with {args.clients} clients (target >= 1,000)
  two filters: p50 {results['two_filters']['p50_ms']} ms, p99 {results['two_filters']['p99_ms']} ms; \
{results['two_filters']['saturation_rps']:,.0f} req/s
  one filter through the Lua script (the walk without the module): \
{f"{script_rps:,.0f} req/s (module: {summary['ratio_module_vs_script']}x)" if script_rps else "not measured"}
  redis-benchmark raw index read: {raw_rps} req/s
  recipient question: ours {ours_ms:.2f} ms (median of 50), exigrep {summary['exigrep_seconds']} s \
-> {summary['ratio_vs_exigrep']}x (target >= 1000x)
  cPanel default (250 of each type, busiest sender domain): {cpanel_ms:.1f} ms for {len(cpanel.rows)} events
""")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--days", type=float, default=None, help="time span of the events (default: design rate)")
    parser.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 2)), help="writers of the fill")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 2, help="client processes at saturation")
    parser.add_argument("--no-exigrep", action="store_true", help="skip the exigrep anchor (writes a GB-sized log)")
    parser.add_argument("--prefix", default="tdbench")
    parser.add_argument("--walk", choices=sorted(WALKS), default="auto",
                        help="the server walk: the Redis module, the Lua script, or the module where loaded")
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
