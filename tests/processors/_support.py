"""Helpers shared by the processor tests: generated logs cut into raw-topic records, offline reference runs."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from bench.badinput import scrape
from processors.pipeline import BatchResult, Pipeline
from trackdelivery import kafka_clients
from trackdelivery.events import DeliveryEvent
from trackdelivery.records import encode_batch
from trackdelivery.store.keys import is_record_field
from trackdelivery.store.types import StoreSettings


def generate_fleet(
    out: Path, servers: int, messages: int, seed: int = 7, days: float = 1.0, start: datetime.datetime | None = None
) -> list[Path]:
    """A generated fleet log (``DIR/<server>/exim_mainlog``) ending about now, or starting at ``start``;
    the log files by server."""
    from trackdelivery.generator.runner import FleetRun, GenerateConfig

    if start is None:
        start = datetime.datetime.now(datetime.UTC).replace(microsecond=0) - datetime.timedelta(days=days + 0.1)
    run = FleetRun(GenerateConfig(servers=servers, messages=messages, out=out, seed=seed, days=days, start=start))
    try:
        run.run()
    finally:
        run.close()
    return sorted(out.glob("*/exim_mainlog"))


def file_lines(path: Path) -> list[tuple[int, bytes]]:
    """``(byte offset, line without newline)`` of every line of a file."""
    lines = []
    offset = 0
    for line in path.read_bytes().splitlines(keepends=True):
        lines.append((offset, line.rstrip(b"\n")))
        offset += len(line)
    return lines


def file_records(path: Path, server: str, lines_per_record: int = 8, file_id: str | None = None) -> list[bytes]:
    """The raw-topic records a shipper would produce for ``path``: batches of consecutive lines."""
    lines = file_lines(path)
    file_id = file_id or hashlib.blake2b(str(path).encode(), digest_size=8).hexdigest()
    records = []
    for start in range(0, len(lines), lines_per_record):
        chunk = lines[start : start + lines_per_record]
        end = chunk[-1][0] + len(chunk[-1][1]) + 1
        records.append(
            encode_batch(server, file_id, str(path), [offset for offset, _ in chunk], [data for _, data in chunk], end)
        )
    return records


def fleet_records(files: Iterable[Path], lines_per_record: int = 8) -> list[tuple[str, bytes]]:
    """``(server, record)`` for every file of a generated fleet, interleaved round-robin across servers."""
    per_server = [[(path.parent.name, record) for record in file_records(path, path.parent.name, lines_per_record)]
                  for path in files]
    interleaved = []
    for index in range(max(len(records) for records in per_server)):
        for records in per_server:
            if index < len(records):
                interleaved.append(records[index])
    return interleaved


def tuple_line(server: str, msgid: str, time: float, text: str, file: str, offset: int) -> tuple[str, str, float, str]:
    return (server, msgid, time, text)


def offline_pipeline(**kwargs: Any) -> Pipeline:
    kwargs.setdefault("message_line", tuple_line)
    return Pipeline({}, **kwargs)


def run_offline(records: Iterable[bytes], pipeline: Pipeline | None = None) -> Iterator[BatchResult]:
    """Process records one after another, committing each (what a clean run does)."""
    pipeline = pipeline or offline_pipeline()
    for record in records:
        result = pipeline.process(record)
        pipeline.apply(pipeline.commit(result.partition))
        yield result


def final_events(events: Iterable[DeliveryEvent]) -> dict[str, dict[str, Any]]:
    """Event id → the last version written (what an idempotent store ends up holding)."""
    return {event.event_id: event.to_dict() for event in events}


# -- running `trackdelivery process` as a subprocess against the test broker --------------------------------

REPO_ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """One `trackdelivery process` subprocess with its own log file and metrics port."""

    COMMAND = "process"

    def __init__(self, env: dict[str, str], log_path: Path, metrics_port: int) -> None:
        self.env = env
        self.log_path = log_path
        self.metrics_port = metrics_port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "trackdelivery", self.COMMAND, "--metrics-port", str(self.metrics_port),
                 "--log-level", "info"],
                cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def metrics(self) -> dict[str, float]:
        """The worker's Prometheus samples, ``name{labels}`` → value."""
        return scrape(self.metrics_port)


def produce(bootstrap: str, topic: str, records: Iterable[tuple[str, bytes]]) -> int:
    return kafka_clients.produce(bootstrap, topic, ((server.encode(), record) for server, record in records),
                                 timeout=60)


def read_topic(bootstrap: str, topic: str) -> dict[int, list[kafka_clients.Record]]:
    """Every record of ``topic`` by partition, in offset order."""
    records: dict[int, list[kafka_clients.Record]] = {p: [] for p in kafka_clients.end_offsets(bootstrap, topic)}
    for record in kafka_clients.read_topic(bootstrap, topic, timeout=60):
        records[record.partition].append(record)
    return records


def committed_behind(bootstrap: str, group: str, topic: str) -> int:
    """Records of ``topic`` the consumer group has not committed yet."""
    end = kafka_clients.end_offsets(bootstrap, topic)
    try:
        committed = kafka_clients.committed_offsets(bootstrap, group, topic)
    except kafka_clients.KafkaException:  # no coordinator / no group yet: nothing committed
        committed = {}
    return sum(offset - committed.get(partition, 0) for partition, offset in end.items())


def wait_caught_up(bootstrap: str, group: str, topic: str, workers: list[WorkerProcess], timeout: float = 150) -> None:
    """Until the group committed everything; a worker whose watchdog exits with EXIT_STALLED is started
    again, as its supervisor would (any other exit fails)."""
    from processors.agents import EXIT_STALLED

    deadline = time.monotonic() + timeout
    while True:
        for worker in workers:
            if worker.process is not None and worker.process.poll() == EXIT_STALLED:
                worker.start()
            if not worker.alive:
                raise AssertionError(f"worker exited early:\n{worker.log_tail()}")
        if committed_behind(bootstrap, group, topic) == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not caught up after {timeout}s:\n{workers[0].log_tail()}")
        time.sleep(0.5)


def redis_dump(url: str, prefix: str, *, cluster: bool = False) -> dict[bytes, tuple[bytes, Any]]:
    """Every key under ``prefix:`` (the prefix removed) with its type and value; TTLs are ignored.
    ``cluster``: ``url`` is a node of a Redis Cluster (the keys of every master are read)."""
    from trackdelivery.connections import sync_redis_client
    from trackdelivery.settings import RedisSettings

    client = sync_redis_client(RedisSettings.model_construct(url=url, cluster=cluster))
    try:
        dump: dict[bytes, tuple[bytes, Any]] = {}
        head = prefix.encode() + b":"
        for key in client.scan_iter(match=head + b"*", count=1000):
            kind = client.type(key)
            value: Any
            if kind == b"string":
                value = client.get(key)
            elif kind == b"zset":
                value = client.zrange(key, 0, -1, withscores=True)
            elif kind == b"hash":
                value = client.hgetall(key)
            elif kind == b"list":
                value = client.lrange(key, 0, -1)
            elif kind == b"set":
                value = sorted(client.smembers(key))
            else:
                value = None
            dump[key[len(head):]] = (kind, value)
        return dump
    finally:
        client.close()


async def write_reference(
    records_by_partition: dict[int, list[bytes]], redis_url: str, prefix: str
) -> list[BatchResult]:
    """The clean offline run: the pipeline with a dict store, each partition in order, into Redis."""
    import redis.asyncio

    from processors.sinks.redis import RedisWriter

    client = redis.asyncio.Redis.from_url(redis_url)
    writer = RedisWriter(client, StoreSettings(prefix=prefix))
    pipeline = Pipeline({})
    results = []
    try:
        for partition, records in sorted(records_by_partition.items()):
            for record in records:
                result = pipeline.process(record, partition)
                await writer.write(result.events, result.lines)
                pipeline.apply(pipeline.commit(partition))
                results.append(result)
    finally:
        await client.aclose()
    return results


async def message_views(
    redis_url: str, prefix: str, messages: Iterable[tuple[str, str]], *, cluster: bool = False
) -> dict[Any, Any]:
    """The query service's view of every message: its decoded events, transcript and arrival data."""
    from query_service.search import DeliverySearch
    from trackdelivery.connections import redis_client
    from trackdelivery.settings import RedisSettings

    client = redis_client(RedisSettings.model_construct(url=redis_url, cluster=cluster))
    try:
        search = DeliverySearch(client, StoreSettings(prefix=prefix))
        views: dict[tuple[str, str], Any] = {}
        for server, msgid in sorted(set(messages)):
            view = await search.message(server, msgid)
            views[(server, msgid)] = None if view is None else (
                sorted((event.event_id, orjson.dumps(event.to_dict())) for event in view.events),
                view.lines,
                view.arrival,
            )
        return views
    finally:
        await client.aclose()


def store_structure(redis_url: str, prefix: str, *, cluster: bool = False) -> dict[bytes, Any]:
    """Every key of the store with its value, except what legitimately differs between two writers of the
    same events: record blobs (compressed with a dictionary each writer trains on its own samples) are
    reduced to the names of their event and arrival fields, the dictionaries left out, and line lists to
    their type (lines are compressed the same way and chunked by batch: the message views compare them
    decoded and de-duplicated, as the reader shows them)."""
    structure: dict[bytes, Any] = {}
    for key, (kind, value) in redis_dump(redis_url, prefix, cluster=cluster).items():
        if key.startswith(b"dict:"):
            continue
        if kind == b"string":
            structure[key] = kind
        elif kind == b"hash" and key.startswith(b"m:"):
            # line chunks depend on how records were batched (a crash replays other batches): the message
            # views compare the lines
            structure[key] = (kind, sorted(name for name in value if is_record_field(name)))
        elif kind == b"list":
            structure[key] = kind
        else:
            structure[key] = (kind, value)
    return structure


def answers_of(redis_url: str, prefix: str, results: Iterable[BatchResult], *, cluster: bool = False) -> dict[str, Any]:
    """The store as the query service sees it (message views) plus its exact structure (indexes, stats)."""
    messages = {(event.server, event.msgid) for result in results for event in result.events if event.msgid}
    return {
        "messages": asyncio.run(message_views(redis_url, prefix, messages, cluster=cluster)),
        "structure": store_structure(redis_url, prefix, cluster=cluster),
    }
