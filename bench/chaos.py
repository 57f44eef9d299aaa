"""Chaos suite: a generated fleet shipped at a steady rate through a 3-broker Kafka cluster and a Redis
Cluster while processes and nodes are killed, then every (server, message id, recipient) compared with the
generator's truth through the query service's message view.

    python bench/chaos.py [--servers 4] [--messages 3000] [--rate 300] [--brokers 3] [--no-redis-cluster]
    python bench/chaos.py --short        # the CI form (tests/test_chaos.py runs it)

Faults, in turn, each followed by a settle period: SIGKILL of one shipper (restarted), SIGKILL of one of
the processor workers (the other takes its partitions, then it is restarted), SIGKILL of one Kafka broker
(restarted after a while), SIGKILL of a Redis master (its replica is promoted, then the node comes back
as a replica), and one more worker joining the group (scale out: partitions move while records flow).
An alert worker runs throughout and must survive every fault. At the end ``trackdelivery rebuild``
replays the raw topic into a second store on the same Redis, and that store is checked against the
truth too. Every live log is rotated throughout, cycling rename+create, copytruncate and
rename+gzip. Freshness probes: for every ``--probe-every``-th arriving message, the time from appending
its ``<=`` line to the message being readable through the query service, attributed to the fault that
was active when the line was written ("baseline" when none). Prints a report and one JSON line with
``lost``, ``duplicated``, ``wrong_state`` and the worst freshness per fault.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gzip
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from scale import generate as generate_logs  # noqa: E402

from processors.agents import EXIT_STALLED  # noqa: E402
from producers.tail import Checkpointer  # noqa: E402
from producers.tail.fingerprint import fingerprint_path  # noqa: E402
from trackdelivery.devenv.kafka import KafkaCluster  # noqa: E402
from trackdelivery.devenv.ports import free_port  # noqa: E402
from trackdelivery.generator.truth import load_truth  # noqa: E402
from trackdelivery.settings import KafkaSettings, TopicNames, topic_partitions  # noqa: E402
from trackdelivery.topics import create_topics  # noqa: E402

TRACKDELIVERY = [sys.executable, "-m", "trackdelivery"]
ROTATION_KINDS = ("rename", "copytruncate", "gzip")
FAULTS = ("shipper", "worker", "broker", "redis_master", "scale_out")
#: outcome types whose events are delivery attempts (the truth's ``attempts``); in-progress is the arrival
ATTEMPT_TYPES = frozenset({"delivered", "deferred", "bounced", "expired", "filtered", "archived"})


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the fleet and its live logs -----------------------------------------------------------------------------


def generate(out: Path, servers: int, messages: int, seed: int, days: float) -> dict[str, list[bytes]]:
    """Lines of each server's generated log (truth.jsonl beside them), ending 0.1 day before now."""
    end = datetime.datetime.now(datetime.UTC).replace(microsecond=0) - datetime.timedelta(days=0.1)
    return {path.parent.name: path.read_bytes().splitlines()
            for path in generate_logs(out, servers, messages, seed, days, end)}


@dataclass
class Probe:
    server: str
    msgid: str
    appended: float
    phase: str
    seen: float | None = None


class Phase:
    """The fault in progress (read by the log writers to label their probes)."""

    def __init__(self) -> None:
        self.name = "baseline"

    @contextlib.contextmanager
    def active(self, name: str) -> Iterator[None]:
        self.name = name
        try:
            yield
        finally:
            self.name = "baseline"


class LiveLog(threading.Thread):
    """Appends one server's lines to its live log at a steady rate (O_APPEND, as Exim does) and rotates the
    file every ``rotate_every`` lines, cycling the rotation kinds. A rotation waits until the shipper's
    checkpoint holds the live file and the previous rotated file is read to its end: the shipper's
    guarantee covers a shipper at most one rotation behind (docs/guarantees.md)."""

    def __init__(self, server: str, lines: list[bytes], path: Path, checkpoints: Path, rate: float,
                 rotate_every: int, probe_every: int, phase: Phase, probes: list[Probe], first_kind: int = 0) -> None:
        super().__init__(daemon=True, name=f"live-{server}")
        self.server, self.lines, self.path, self.checkpoints = server, lines, path, checkpoints
        self.rate, self.rotate_every, self.probe_every = rate, rotate_every, probe_every
        self.phase, self.probes = phase, probes
        self.rotations: list[str] = []
        self.first_kind = first_kind
        self.error: BaseException | None = None
        self.written = 0
        self._previous: tuple[str, int] | None = None
        self._arrivals = 0

    def run(self) -> None:
        try:
            self._write_all()
        except BaseException as error:  # reported by check()
            self.error = error

    def _write_all(self) -> None:
        tick = 0.05
        per_tick = max(1, round(self.rate * tick))
        in_file = 0
        handle = open(self.path, "ab")  # noqa: SIM115 - reopened after each rotation
        started = time.monotonic()
        try:
            while self.written < len(self.lines):
                chunk = self.lines[self.written : self.written + per_tick]
                handle.write(b"".join(line + b"\n" for line in chunk))
                handle.flush()
                now = time.time()
                for line in chunk:
                    self._maybe_probe(line, now)
                self.written += len(chunk)
                in_file += len(chunk)
                if in_file >= self.rotate_every and self.written < len(self.lines):
                    handle.close()
                    self._rotate()
                    handle = open(self.path, "ab")  # noqa: SIM115
                    in_file = 0
                delay = started + self.written / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        finally:
            handle.close()

    def _maybe_probe(self, line: bytes, now: float) -> None:
        parts = line.split(b" ", 5)
        if len(parts) < 5 or parts[3] != b"<=":
            return
        self._arrivals += 1
        if self._arrivals % self.probe_every == 0:
            self.probes.append(Probe(self.server, parts[2].decode(), now, self.phase.name))

    def _checkpoint(self) -> dict[str, int]:
        try:
            return {file_id: cp.offset for file_id, cp in Checkpointer(self.checkpoints).load().items()}
        except (OSError, ValueError):
            return {}

    def _rotate(self) -> None:
        identity = fingerprint_path(self.path)
        if identity is None:  # nothing written yet
            return
        deadline = time.monotonic() + 300
        while True:
            state = self._checkpoint()
            previous_done = self._previous is None or state.get(self._previous[0], -1) >= self._previous[1]
            if identity in state and previous_done:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.server}: the shipper never reached the file to rotate")
            time.sleep(0.05)
        kind = ROTATION_KINDS[(self.first_kind + len(self.rotations)) % len(ROTATION_KINDS)]
        rotated = self.path.with_name(self.path.name + ".1")
        for older in (rotated, Path(f"{rotated}.gz")):
            if older.exists():
                os.rename(older, self.path.with_name(f"old-{len(self.rotations)}-{older.name}"))
        size = self.path.stat().st_size
        if kind == "copytruncate":
            shutil.copyfile(self.path, rotated)
            os.truncate(self.path, 0)
        else:
            os.rename(self.path, rotated)
            if kind == "gzip":
                with gzip.open(f"{rotated}.gz.tmp", "wb") as out:
                    out.write(rotated.read_bytes())
                os.rename(f"{rotated}.gz.tmp", f"{rotated}.gz")
                os.unlink(rotated)
        self.rotations.append(kind)
        self._previous = (identity, size)

    def drained(self) -> bool:
        """Everything written and the live file read to its end by the shipper."""
        if self.is_alive() or self.written < len(self.lines):
            return False
        identity = fingerprint_path(self.path)
        state = self._checkpoint()
        live_done = identity is None or state.get(identity, -1) >= self.path.stat().st_size
        previous_done = self._previous is None or state.get(self._previous[0], -1) >= self._previous[1]
        return live_done and previous_done


# -- processes -------------------------------------------------------------------------------------------------


@dataclass
class Child:
    """A pipeline process (shipper or worker) that can be killed and started again."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                            cwd=REPO, stdin=subprocess.DEVNULL)
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self, timeout: float = 90.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        return self.process.returncode

    def tail(self, size: int = 3000) -> str:
        return self.log_path.read_bytes()[-size:].decode("utf-8", "replace") if self.log_path.exists() else ""


# -- Redis: one server or a cluster --------------------------------------------------------------------------


class RedisTopology:
    """A Redis Cluster (3 masters + 3 replicas) or a single Redis, with the fault the suite injects."""

    def __init__(self, workdir: Path, cluster: bool) -> None:
        self.cluster = cluster
        if cluster:
            from trackdelivery.devenv.redis import RedisClusterServers

            self.servers: Any = RedisClusterServers(workdir / "redis-cluster")
        else:
            from trackdelivery.devenv.redis import RedisServer

            self.servers = RedisServer(workdir / "redis")

    def start(self) -> None:
        self.servers.start()

    @property
    def url(self) -> str:
        return str(self.servers.url)

    def kill_master(self) -> str:
        """SIGKILL one master; on a cluster wait for its replica's promotion and bring the node back as a
        replica. A single Redis without persistence loses its data: the suite needs the cluster."""
        if not self.cluster:
            self.servers.kill()
            self.servers.pid = None
            self.servers.start()
            return f"single redis {self.servers.port} restarted (empty)"
        master = self.servers.masters()[0]
        master.kill()
        started = time.monotonic()
        self.servers.wait_healthy()
        failover = time.monotonic() - started
        master.pid = None
        master.start()
        self.servers.wait_healthy()
        return f"master :{master.port} killed, replica promoted after {failover:.1f}s, node rejoined"

    def stop(self) -> None:
        self.servers.stop()


# -- the suite ---------------------------------------------------------------------------------------------------


@dataclass
class ChaosConfig:
    servers: int = 4
    messages: int = 3000
    rate: float = 300.0
    days: float = 0.5
    partitions: int = 6
    workers: int = 2
    brokers: int = 3
    redis_cluster: bool = True
    rotate_every: int = 2500
    probe_every: int = 5
    warmup: float = 8.0
    settle: float = 8.0
    broker_down: float = 10.0
    seed: int = 11
    faults: tuple[str, ...] = FAULTS
    rebuild: bool = True


@dataclass
class ChaosRun:
    config: ChaosConfig
    workdir: Path
    phase: Phase = field(default_factory=Phase)
    probes: list[Probe] = field(default_factory=list)
    faults_done: list[dict[str, Any]] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    supervisor_restarts: int = 0

    def __post_init__(self) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.prefix = f"chaos{self.tag}"
        self.group = f"chaos-{self.tag}"

    # ---- set-up

    def start_services(self) -> None:
        config = self.config
        log(f"starting Kafka ({config.brokers} broker{'s' if config.brokers > 1 else ''}) and Redis "
            f"({'cluster' if config.redis_cluster else 'single'})")
        self.kafka = KafkaCluster(self.workdir / "kafka", config.brokers)
        self.kafka.start()
        self.redis = RedisTopology(self.workdir, config.redis_cluster)
        self.redis.start()
        self.kafka_settings = KafkaSettings(bootstrap_servers=self.kafka.bootstrap, partitions=config.partitions,
                                            replication_factor=self.kafka.replication)
        self.topics = TopicNames()
        create_topics(self.kafka_settings, topic_partitions(self.kafka_settings, self.topics),
                      self.kafka.replication)

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap,
            "KAFKA_REPLICATION_FACTOR": str(self.kafka.replication),
            "KAFKA_PARTITIONS": str(self.config.partitions),
            "REDIS_URL": self.redis.url,
            "REDIS_CLUSTER": "1" if self.config.redis_cluster else "0",
            "TRACKDELIVERY_STORE_PREFIX": self.prefix,
            "TRACKDELIVERY_PROCESSOR_APP_ID": self.group,
            "TRACKDELIVERY_PROCESSOR_SESSION_TIMEOUT": "6",
            "TRACKDELIVERY_PROCESSOR_STALL_SECONDS": "15",
            "TRACKDELIVERY_PROCESSOR_OUTPUT_TIMEOUT": "20",
            "REDIS_WAIT_REPLICAS": "1" if self.config.redis_cluster else "0",
            "TRACKDELIVERY_POLL_INTERVAL": "0.05",
            "PYTHONPATH": str(REPO),
        }

    def start_pipeline(self, fleet: dict[str, list[bytes]]) -> None:
        env = self.environment()
        self.workers: list[Child] = []
        for number in range(1, self.config.workers + 1):
            worker_env = {**env, "TRACKDELIVERY_PROCESSOR_DATADIR": str(self.workdir / f"faust{number}")}
            command = [*TRACKDELIVERY, "process", "--metrics-port", str(free_port()), "--log-level", "info"]
            self.workers.append(Child(f"worker{number}", command, worker_env, self.workdir / f"worker{number}.log"))
        alerts_env = {**env, "TRACKDELIVERY_ALERTS_APP_ID": f"{self.group}-alerts",
                      "TRACKDELIVERY_ALERTS_DATADIR": str(self.workdir / "alerts"),
                      "TRACKDELIVERY_ALERTS_METRICS_PORT": str(free_port()),
                      "TRACKDELIVERY_ALERTS_SESSION_TIMEOUT": "10"}
        self.alerts = Child("alerts", [*TRACKDELIVERY, "alerts"], alerts_env, self.workdir / "alerts.log")
        self.shippers: list[Child] = []
        self.logs: list[LiveLog] = []
        per_server = self.config.rate / len(fleet)
        for server, lines in fleet.items():
            live = self.workdir / "live" / server / "exim_mainlog"
            live.parent.mkdir(parents=True, exist_ok=True)
            live.touch()
            checkpoints = self.workdir / "checkpoints" / server
            command = [*TRACKDELIVERY, "ship", "--bootstrap-servers", self.kafka.bootstrap, "--server", server,
                       "--checkpoint-dir", str(checkpoints), "--path", str(live), "--start-position", "beginning",
                       "--rotate-wait", "1", "--scan-interval", "0.2", "--linger-ms", "5"]
            self.shippers.append(Child(f"shipper-{server}", command, env, self.workdir / f"shipper-{server}.log"))
            self.logs.append(LiveLog(server, lines, live, checkpoints, per_server, self.config.rotate_every,
                                     self.config.probe_every, self.phase, self.probes, first_kind=len(self.logs)))
        for child in (*self.workers, *self.shippers, self.alerts):
            child.start()

    async def wait_workers_ready(self, timeout: float = 180.0) -> None:
        """Until every worker has joined the group and recovered its tables (faust logs "Worker ready")."""
        deadline = time.monotonic() + timeout
        while not all(worker.log_path.exists() and b"Worker ready" in worker.log_path.read_bytes()
                      for worker in self.workers):
            self.check_children()
            if self.crashes or time.monotonic() > deadline:
                raise RuntimeError(f"the workers did not get ready:\n{self.workers[0].tail()}")
            await asyncio.sleep(0.5)

    # ---- faults

    def check_children(self) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() == EXIT_STALLED:
                # what systemd's Restart=on-failure or Kubernetes does with a worker whose watchdog gave up
                log(f"{worker.name} exited with {EXIT_STALLED} (stalled consumer): restarted, as its supervisor would")
                self.supervisor_restarts += 1
                worker.start()
        for child in (*self.workers, *self.shippers, self.alerts):
            if child.process is not None and child.process.poll() not in (None, -signal.SIGKILL):
                message = f"{child.name} exited with {child.process.returncode}:\n{child.tail()}"
                if message not in self.crashes:
                    self.crashes.append(message)
                    log(message)

    def inject(self, fault: str) -> str:
        if fault == "shipper":
            shipper = self.shippers[0]
            shipper.kill()
            time.sleep(1.0)
            shipper.start()
            return f"{shipper.name} SIGKILLed and restarted"
        if fault == "worker":
            worker = self.workers[-1]
            worker.kill()
            time.sleep(max(3.0, self.config.settle / 2))  # the survivor takes the partitions meanwhile
            worker.start()
            return f"{worker.name} SIGKILLed; restarted after the others took its partitions"
        if fault == "broker":
            node = len(self.kafka.brokers)
            self.kafka.brokers[node - 1].kill()
            time.sleep(self.config.broker_down)
            self.kafka.restart(node)
            return f"kafka node {node} SIGKILLed, restarted after {self.config.broker_down:.0f}s"
        if fault == "redis_master":
            return self.redis.kill_master()
        if fault == "scale_out":
            number = len(self.workers) + 1
            env = {**self.workers[0].env, "TRACKDELIVERY_PROCESSOR_DATADIR": str(self.workdir / f"faust{number}")}
            command = [*TRACKDELIVERY, "process", "--metrics-port", str(free_port()), "--log-level", "info"]
            worker = Child(f"worker{number}", command, env, self.workdir / f"worker{number}.log")
            worker.start()
            self.workers.append(worker)
            return f"{worker.name} joined the group"
        raise ValueError(f"unknown fault {fault!r}")

    async def run_faults(self) -> None:
        await asyncio.sleep(self.config.warmup)
        for fault in self.config.faults:
            if not any(live.is_alive() for live in self.logs):
                log(f"the logs were written before fault {fault}: it runs on a quiet pipeline")
            started = time.monotonic()
            with self.phase.active(fault):
                log(f"fault: {fault}")
                detail = await asyncio.to_thread(self.inject, fault)
                log(f"  {detail}")
                await asyncio.sleep(self.config.settle)
            self.faults_done.append({"fault": fault, "detail": detail, "seconds": round(time.monotonic() - started, 1)})

    async def poll_probes(self, stop: asyncio.Event) -> None:
        search = self.searcher()
        try:
            while not stop.is_set():
                pending = [probe for probe in list(self.probes) if probe.seen is None][:64]
                for probe in pending:
                    try:
                        view = await search.message(probe.server, probe.msgid)
                    except Exception:  # Redis failing over: try again on the next round
                        break
                    if view is not None:
                        probe.seen = time.time()
                await asyncio.sleep(0.1)
        finally:
            await search.client.aclose()

    def searcher(self) -> Any:
        import redis.asyncio as aioredis

        from query_service.search import DeliverySearch
        from trackdelivery.store import StoreSettings

        kind = aioredis.RedisCluster if self.config.redis_cluster else aioredis.Redis
        return DeliverySearch(kind.from_url(self.redis.url), StoreSettings(prefix=self.prefix))

    def behind(self) -> int:
        from trackdelivery import kafka_clients

        end = kafka_clients.end_offsets(self.kafka.bootstrap, self.topics.raw)
        committed = kafka_clients.committed_offsets(self.kafka.bootstrap, self.group, self.topics.raw)
        return sum(offset - committed.get(partition, 0) for partition, offset in end.items())

    async def wait_drained(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(live.drained() for live in self.logs):
            self.check_children()
            for live in self.logs:
                if live.error is not None:
                    raise RuntimeError(f"log writer {live.server} failed: {live.error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("the shippers did not read every log to its end")
            await asyncio.sleep(0.5)
        log("every log shipped; waiting for the workers to commit everything")
        while True:
            self.check_children()
            try:
                behind = await asyncio.to_thread(self.behind)
            except Exception as error:  # a coordinator moving: ask again
                log(f"  lag unknown ({type(error).__name__}: {error})")
                behind = -1
            if behind == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workers are still {behind} records behind")
            await asyncio.sleep(1.0)

    # ---- verdict

    async def compare(self, truth_path: Path) -> dict[str, Any]:
        from query_service.present import message_view

        truth = {
            (server, msgid, recipient.lower()): row
            for (server, msgid, recipient, _), row in load_truth(str(truth_path)).items()
            if msgid is not None
        }
        search = self.searcher()
        found: dict[tuple[str, str, str], dict[str, Any]] = {}
        try:
            for server, msgid in sorted({(key[0], key[1]) for key in truth}):
                view = await search.message(server, msgid)
                if view is None:
                    continue
                for recipient in message_view(view)["recipients"]:
                    found[(server, msgid, (recipient["recipient"] or "").lower())] = recipient
        finally:
            await search.client.aclose()
        lost, duplicated, wrong = [], [], []
        for key, row in truth.items():
            stored = found.get(key)
            if stored is None:
                lost.append(key)
                continue
            # a deferral without an attempt number is a queue run that did not try (retry time not reached)
            attempts = [
                a for a in stored["attempts"]
                if a["type"] in ATTEMPT_TYPES and (a["type"] != "deferred" or (a.get("retry") or {}).get("attempt"))
            ]
            identities = [(a["type"], a["time"], (a.get("retry") or {}).get("attempt")) for a in stored["attempts"]]
            if len(identities) != len(set(identities)) or len(attempts) > int(row.get("attempts") or 0):
                duplicated.append((key, row.get("attempts"), identities))
            elif len(attempts) < int(row.get("attempts") or 0):
                lost.append(key)
            if stored["state"] != row["final"]:
                wrong.append((key, row["final"], stored["state"]))
        return {"recipients": len(truth), "lost": lost, "duplicated": duplicated, "wrong_state": wrong}

    def freshness(self) -> dict[str, dict[str, float | int | None]]:
        report: dict[str, dict[str, float | int | None]] = {}
        for name in ("baseline", *self.config.faults):
            delays = sorted(p.seen - p.appended for p in self.probes if p.phase == name and p.seen is not None)
            unseen = sum(1 for p in self.probes if p.phase == name and p.seen is None)
            report[name] = {
                "probes": len(delays) + unseen,
                "unseen": unseen,
                "p50_s": round(statistics.median(delays), 3) if delays else None,
                "worst_s": round(delays[-1], 3) if delays else None,
            }
        return report

    def rebuild(self) -> str:
        """``trackdelivery rebuild`` of the whole raw topic into a second store (prefix) on the same Redis."""
        self.prefix = f"{self.prefix}rb"
        env = {**self.environment(), "TRACKDELIVERY_STORE_PREFIX": self.prefix}
        done = subprocess.run([*TRACKDELIVERY, "rebuild", "--force", "--json", "--no-progress"], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            self.crashes.append(f"rebuild exited with {done.returncode}:\n{done.stderr[-2000:]}")
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""

    def stop(self) -> None:
        for child in (*getattr(self, "shippers", ()), *getattr(self, "workers", ()),
                      *([self.alerts] if hasattr(self, "alerts") else [])):
            child.stop()
        for name in ("kafka", "redis"):
            service = getattr(self, name, None)
            if service is not None:
                with contextlib.suppress(Exception):
                    service.stop()


async def run_suite(config: ChaosConfig, workdir: Path) -> dict[str, Any]:
    started = time.monotonic()
    log(f"generating {config.messages} messages on {config.servers} servers")
    fleet = generate(workdir / "fleet", config.servers, config.messages, config.seed, config.days)
    total = sum(len(lines) for lines in fleet.values())
    log(f"{total:,} lines; shipping at {config.rate:.0f} lines/s (~{total / config.rate:.0f}s)")
    run = ChaosRun(config, workdir)
    try:
        await asyncio.to_thread(run.start_services)
        run.start_pipeline(fleet)
        await run.wait_workers_ready()
        for live in run.logs:
            live.start()
        stop = asyncio.Event()
        poller = asyncio.create_task(run.poll_probes(stop))
        await run.run_faults()
        await run.wait_drained(timeout=max(300.0, 3 * total / config.rate))
        await asyncio.sleep(1.0)
        stop.set()
        await poller
        for worker in run.workers:
            code = worker.stop()
            if code not in (0, None):
                run.crashes.append(f"{worker.name} stopped with {code}:\n{worker.tail()}")
        if run.alerts.alive:
            code = run.alerts.stop()
            if code not in (0, None):
                run.crashes.append(f"alerts stopped with {code}:\n{run.alerts.tail()}")
        verdict = await run.compare(workdir / "fleet" / "truth.jsonl")
        rebuilt = None
        if config.rebuild:
            log("rebuild: replaying the raw topic into a second store")
            counts = await asyncio.to_thread(run.rebuild)
            rebuilt = await run.compare(workdir / "fleet" / "truth.jsonl")
            log(f"  {counts}")
    finally:
        run.stop()
    rotations: dict[str, int] = {}
    for live in run.logs:
        for kind in live.rotations:
            rotations[kind] = rotations.get(kind, 0) + 1
    return {
        "bench": "chaos",
        "kafka_brokers": config.brokers,
        "redis_cluster": config.redis_cluster,
        "servers": config.servers,
        "lines": total,
        "recipients": verdict["recipients"],
        "lost": len(verdict["lost"]),
        "duplicated": len(verdict["duplicated"]),
        "wrong_state": len(verdict["wrong_state"]),
        "crashes": len(run.crashes),
        "supervisor_restarts": run.supervisor_restarts,
        "rebuild": None if rebuilt is None else {
            name: len(rebuilt[name]) for name in ("lost", "duplicated", "wrong_state")
        },
        "faults": run.faults_done,
        "rotations": rotations,
        "freshness": run.freshness(),
        "examples": {
            "lost": [list(key) for key in verdict["lost"][:5]],
            "duplicated": [[*key, truth_attempts, stored] for key, truth_attempts, stored in verdict["duplicated"][:5]],
            "wrong_state": [[*key, want, got] for key, want, got in verdict["wrong_state"][:5]],
            "crashes": [crash[:500] for crash in run.crashes[:3]],
        },
        "seconds": round(time.monotonic() - started, 1),
    }


def report(result: dict[str, Any]) -> None:
    print(f"chaos suite: {result['lines']:,} lines from {result['servers']} servers, "
          f"{result['kafka_brokers']} Kafka broker(s), Redis {'Cluster' if result['redis_cluster'] else 'single'}")
    for fault in result["faults"]:
        print(f"  {fault['fault']:<13} {fault['detail']}")
    print(f"  rotations: {result['rotations']}")
    print("  freshness (line appended -> message readable), by fault active when it was appended:")
    for name, figures in result["freshness"].items():
        print(f"    {name:<13} probes {figures['probes']:>4}  p50 {figures['p50_s']}s  worst {figures['worst_s']}s"
              f"  never seen {figures['unseen']}")
    print(f"  recipients {result['recipients']:,}: lost={result['lost']} duplicated={result['duplicated']} "
          f"wrong_state={result['wrong_state']} crashes={result['crashes']}  ({result['seconds']}s)")
    if result["rebuild"] is not None:
        print(f"  after `trackdelivery rebuild` into a second store: {result['rebuild']}")


def short_config() -> ChaosConfig:
    """The CI form: every fault, a small fleet, a few minutes."""
    return ChaosConfig(servers=3, messages=900, rate=120.0, rotate_every=1200, warmup=5.0, settle=6.0,
                       broker_down=6.0)


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = ChaosConfig()
    parser.add_argument("--short", action="store_true", help="the small CI form")
    parser.add_argument("--servers", type=int, default=defaults.servers)
    parser.add_argument("--messages", type=int, default=defaults.messages)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="lines/s over the whole fleet")
    parser.add_argument("--brokers", type=int, default=defaults.brokers)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--partitions", type=int, default=defaults.partitions)
    parser.add_argument("--no-redis-cluster", action="store_true", help="a single Redis (its kill loses data)")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated subset of {','.join(FAULTS)}")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs of every process)")
    args = parser.parse_args(argv)
    if args.short:
        config = short_config()
    else:
        config = ChaosConfig(servers=args.servers, messages=args.messages, rate=args.rate, brokers=args.brokers,
                             workers=args.workers, partitions=args.partitions)
    config.redis_cluster = not args.no_redis_cluster
    config.faults = tuple(fault for fault in args.faults.split(",") if fault)
    unknown = set(config.faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown fault(s): {', '.join(sorted(unknown))}")
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    signal.signal(signal.SIGTERM, _stop_on_sigterm)  # a killed run still stops every process it started
    try:
        result = asyncio.run(run_suite(config, workdir))
    finally:
        if args.keep:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report(result)
    print(orjson.dumps(result).decode())
    clean = result["lost"] == result["duplicated"] == result["wrong_state"] == result["crashes"] == 0
    if result["rebuild"] is not None:
        clean = clean and not any(result["rebuild"].values())
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
