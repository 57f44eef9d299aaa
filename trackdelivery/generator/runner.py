"""Runs a whole fleet: plans the incidents, simulates each server into its own log, writes the truth file and
the manifest, and (with ``follow``) keeps appending live traffic until told to stop."""

from __future__ import annotations

import bisect
import heapq
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from trackdelivery.generator.fastrandom import FastRandom
from trackdelivery.generator.fleet import World, build_server
from trackdelivery.generator.responses import BY_KEY
from trackdelivery.generator.scenarios import Incident, ServerSim
from trackdelivery.generator.truth import TruthWriter

DEFAULT_START = "2025-03-10T00:00:00"
#: share of arrivals by kind in normal traffic
TRAFFIC_MIX = (("inbound", 0.48), ("auth", 0.36), ("local", 0.16))
#: rejected-only connections per accepted message
REJECTIONS_PER_MESSAGE = 0.1


#: Incidents a run can inject (``GenerateConfig.incidents``).
INCIDENTS = ("gmail_storm", "compromised", "provider_blocks", "frozen_queue")
#: The default run: every incident but the frozen queue (kept as before for existing answer keys).
DEFAULT_INCIDENTS = ("gmail_storm", "compromised", "provider_blocks")
#: A frozen queue holds about this share of a server's arrivals during its window.
FROZEN_QUEUE_SHARE = 0.9
FROZEN_QUEUE_SECONDS = 2 * 3600


@dataclass(slots=True)
class GenerateConfig:
    servers: int
    messages: int
    out: Path
    seed: int = 1
    start: datetime = field(default_factory=lambda: datetime.fromisoformat(DEFAULT_START).replace(tzinfo=UTC))
    days: float = 7.0
    exim_version: str = "mixed"
    incidents: tuple[str, ...] = DEFAULT_INCIDENTS

    @property
    def start_epoch(self) -> int:
        start = self.start if self.start.tzinfo else self.start.replace(tzinfo=UTC)
        return int(start.timestamp())

    @property
    def end_epoch(self) -> int:
        return self.start_epoch + max(60, int(self.days * 86400))


@dataclass(slots=True)
class ServerPlan:
    index: int
    messages: int
    newsletter: int = 0
    newsletter_start: int = 0
    compromised: int = 0
    compromised_start: int = 0
    incidents: list[Incident] = field(default_factory=list)
    frozen_start: int = 0
    frozen_end: int = 0


class DiurnalClock:
    """Maps a share of the day's traffic in [0, 1) to a time in the span, busier in (UTC) office hours."""

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.edges: list[int] = []
        self.cumulative: list[float] = []
        total = 0.0
        t = start
        while t < end:
            nxt = min(end, (t // 3600 + 1) * 3600)
            hour = (t // 3600) % 24
            weight = (0.35 + 0.65 * max(0.0, math.sin(math.pi * (hour - 5) / 16))) * (nxt - t)
            self.edges.append(t)
            total += weight
            self.cumulative.append(total)
            t = nxt
        self.edges.append(end)
        self.total = total

    def time_at(self, share: float) -> int:
        target = share * self.total
        i = bisect.bisect_right(self.cumulative, target)
        if i >= len(self.cumulative):
            return self.edges[-1] - 1
        low = self.cumulative[i - 1] if i else 0.0
        width = self.cumulative[i] - low
        fraction = (target - low) / width if width > 0 else 0.0
        return int(self.edges[i] + fraction * (self.edges[i + 1] - self.edges[i]))


def _pick_kind(rng: random.Random) -> str:
    roll = rng.random()
    for kind, weight in TRAFFIC_MIX:
        if roll < weight:
            return kind
        roll -= weight
    return TRAFFIC_MIX[0][0]


def _spread(n: int, clock: DiurnalClock, rng: random.Random, kind: str | None) -> Iterator[tuple[int, str]]:
    for i in range(n):
        yield clock.time_at((i + rng.random()) / n), kind or _pick_kind(rng)


def _burst(n: int, start: int, duration: int, rng: random.Random, kind: str) -> Iterator[tuple[int, str]]:
    for i in range(n):
        yield start + int(duration * (i + rng.random()) / n), kind


def _versions(config: GenerateConfig, rng: random.Random) -> list[str]:
    if config.exim_version != "mixed":
        return [config.exim_version] * config.servers
    pattern = ["4.98", "4.96", "4.99", "4.98", "4.96", "4.98", "4.99", "4.98", "4.96", "4.98"]
    versions = [pattern[i % len(pattern)] for i in range(config.servers)]
    rng.shuffle(versions)
    return versions


def plan_fleet(config: GenerateConfig, rng: random.Random) -> list[ServerPlan]:
    n = config.servers
    weights = [rng.lognormvariate(0.0, 0.6) for _ in range(n)]
    total = sum(weights)
    counts = [int(config.messages * w / total) for w in weights]
    for i in range(config.messages - sum(counts)):
        counts[i % n] += 1
    plans = [ServerPlan(i, counts[i]) for i in range(n)]
    start, end = config.start_epoch, config.end_epoch
    span = end - start

    def when(low: float, high: float) -> int:
        return start + int(span * rng.uniform(low, high))

    # The draws happen whether an incident is wanted or not, so a run's traffic does not depend on it.
    wanted = set(config.incidents)
    throttled = plans[rng.randrange(n)]
    t0 = when(0.3, 0.45)
    if "gmail_storm" in wanted:
        throttled.incidents.append(Incident(t0, t0 + 3600, "gmail", BY_KEY["gmail_rate_limited"]))
        throttled.newsletter = min(max(3, throttled.messages * 2 // 100), 120, throttled.messages // 4)
        throttled.newsletter_start = t0 - 300
    compromised = plans[rng.randrange(n)]
    compromised_start = when(0.55, 0.7)
    if "compromised" in wanted:
        compromised.compromised = min(max(20, compromised.messages * 15 // 100), 600, compromised.messages // 2)
        compromised.compromised_start = compromised_start
    for provider, key, hours in (
        ("microsoft", "microsoft_s3150", 3),
        ("other", "remote_spamhaus", 2),
        ("yahoo", "yahoo_tss04", 2),
    ):
        t = when(0.05, 0.9)
        target = plans[rng.randrange(n)]
        if "provider_blocks" in wanted:
            target.incidents.append(Incident(t, t + hours * 3600, provider, BY_KEY[key]))
    if "frozen_queue" in wanted:
        frozen = plans[rng.randrange(n)]
        frozen.frozen_start = when(0.2, 0.75)
        frozen.frozen_end = frozen.frozen_start + FROZEN_QUEUE_SECONDS
    for plan in plans:
        plan.incidents.sort(key=lambda incident: incident.start)
    return plans


class _AppendLog:
    """A log file opened for each batch of whole lines (follow mode keeps no descriptor per server)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending: list[str] = []

    def write(self, text: str) -> None:
        self._pending.append(text)

    def flush(self) -> None:
        if self._pending:
            data = "".join(self._pending).encode("utf-8")
            self._pending.clear()
            with open(self.path, "ab") as stream:
                stream.write(data)


@dataclass(slots=True)
class _Live:
    sim: ServerSim
    rng: random.Random
    next_time: float
    spacing: float


class FleetRun:
    def __init__(self, config: GenerateConfig) -> None:
        if config.servers < 1 or config.messages < 0:
            raise ValueError("need at least one server and a non-negative message count")
        self.config = config
        self.out = Path(config.out)
        self.fleet_rng = FastRandom(f"trackdelivery-generator:{config.seed}")
        self.world = World(self.fleet_rng)
        self.versions = _versions(config, self.fleet_rng)
        self.plans = plan_fleet(config, self.fleet_rng)
        self.sims: list[ServerSim] = []
        self.manifest: dict[str, Any] = {}
        self._taken_domains: set[str] = set()
        self._truth_stream: IO[bytes] | None = None
        self.truth: TruthWriter | None = None
        self._kind_totals: dict[str, int] = {}

    def run(self, keep: bool = False, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Writes every server's log for the whole span; ``keep`` keeps the simulations for ``follow``."""
        config = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        start, end = config.start_epoch, config.end_epoch
        clock = DiurnalClock(start, end)
        self._truth_stream = open(self.out / "truth.jsonl", "wb")  # noqa: SIM115 - kept open for follow
        self.truth = TruthWriter(self._truth_stream)
        servers_info = []
        archiving: list[dict[str, Any]] = []
        for plan in self.plans:
            sim_rng = FastRandom(f"trackdelivery-generator:{config.seed}:{plan.index}")
            arrival_rng = FastRandom(f"trackdelivery-generator:{config.seed}:{plan.index}:arrivals")
            side_rng = FastRandom(f"trackdelivery-generator:{config.seed}:{plan.index}:side")
            server = build_server(plan.index, sim_rng, self.versions[plan.index], self._taken_domains)
            log_dir = self.out / server.name
            log_dir.mkdir(exist_ok=True)
            with open(log_dir / "exim_mainlog", "w", encoding="utf-8", newline="") as log:
                sim = ServerSim(server, self.world, sim_rng, log, self.truth, plan.incidents, {}, side_rng)
                streams = [
                    _spread(plan.messages - plan.newsletter - plan.compromised, clock, arrival_rng, None),
                    _spread(int(plan.messages * REJECTIONS_PER_MESSAGE), clock, arrival_rng, "reject"),
                ]
                if plan.newsletter:
                    sim.set_newsletter_account(sim_rng.choice(server.accounts))
                    streams.append(_burst(plan.newsletter, plan.newsletter_start, 1200, arrival_rng, "newsletter"))
                compromised_address = None
                if plan.compromised:
                    box = sim_rng.choice(sim._people)
                    sim.set_compromised(box)
                    sim.send_limits[box.domain] = max(20, plan.compromised)
                    compromised_address = box.address
                    streams.append(_burst(plan.compromised, plan.compromised_start, 4500, arrival_rng, "compromised"))
                if plan.frozen_end:
                    sim.frozen_window = (plan.frozen_start, plan.frozen_end, FROZEN_QUEUE_SHARE)
                sim.start_queue_runs(start + sim_rng.randint(0, 3599))
                sim.tail_start = end - 1800
                done = 0
                for t, kind in heapq.merge(*streams):
                    if t >= end:
                        continue
                    sim.run_until(t)
                    sim.arrive(t, kind)
                    done += 1
                    if progress is not None and done % 2000 == 0:
                        progress(2000)
                if progress is not None:
                    progress(done % 2000)
                sim.run_until(end - 1)
                sim.snapshot_open()
                sim.flush()
            sim.log = _AppendLog(log_dir / "exim_mainlog")
            for kind, count in sim.counts.items():
                self._kind_totals[kind] = self._kind_totals.get(kind, 0) + count
            servers_info.append(
                {
                    "name": server.name,
                    "ip": server.ip,
                    "exim_version": server.exim_version,
                    "id_format": 23 if server.new_ids else 16,
                    "log_pid": server.log_pid,
                    "log_timezone": server.log_timezone,
                    "long_selector": server.long_selector,
                    "arrivals": sim.messages,
                    "lines": sim.lines,
                    "accounts": len(server.accounts),
                    "mailboxes": len(server.mailboxes),
                    "compromised_address": compromised_address,
                }
            )
            archiving.extend(
                {
                    "server": server.name,
                    "account": account.cpanel_user,
                    "domains": list(account.domains),
                    "incoming": incoming,
                    "outgoing": outgoing,
                }
                for account, incoming, outgoing in sim.archiving
            )
            if keep:
                self.sims.append(sim)
        self.truth.flush()
        self.manifest = self._manifest(servers_info, archiving)
        self._write_manifest()
        return self.manifest

    def _manifest(self, servers_info: list[dict[str, Any]], archiving: list[dict[str, Any]]) -> dict[str, Any]:
        config = self.config
        assert self.truth is not None
        return {
            "seed": config.seed,
            "servers": servers_info,
            "messages_requested": config.messages,
            "start": datetime.fromtimestamp(config.start_epoch, UTC).isoformat(),
            "end": datetime.fromtimestamp(config.end_epoch, UTC).isoformat(),
            "days": config.days,
            "exim_version": config.exim_version,
            "lines": sum(info["lines"] for info in servers_info),
            "line_kinds": dict(sorted(self._kind_totals.items())),
            "truth_rows": self.truth.rows,
            "final_states": dict(sorted(self.truth.finals.items())),
            "incidents": [
                {
                    "server": servers_info[plan.index]["name"],
                    "provider": i.provider,
                    "response": i.response.key,
                    "start": datetime.fromtimestamp(i.start, UTC).isoformat(),
                    "end": datetime.fromtimestamp(i.end, UTC).isoformat(),
                }
                for plan in self.plans
                for i in plan.incidents
            ],
            "compromised": [
                {
                    "server": info["name"],
                    "address": info["compromised_address"],
                    "messages": plan.compromised,
                    "start": datetime.fromtimestamp(plan.compromised_start, UTC).isoformat(),
                }
                for plan, info in zip(self.plans, servers_info, strict=True)
                if plan.compromised
            ],
            "frozen_queue": [
                {
                    "server": info["name"],
                    "start": datetime.fromtimestamp(plan.frozen_start, UTC).isoformat(),
                    "end": datetime.fromtimestamp(plan.frozen_end, UTC).isoformat(),
                }
                for plan, info in zip(self.plans, servers_info, strict=True)
                if plan.frozen_end
            ],
            "incidents_enabled": list(config.incidents),
            "newsletter": [
                {
                    "server": info["name"],
                    "messages": plan.newsletter,
                    "start": datetime.fromtimestamp(plan.newsletter_start, UTC).isoformat(),
                }
                for plan, info in zip(self.plans, servers_info, strict=True)
                if plan.newsletter
            ],
            "archiving": archiving,
            "truth_semantics": "last row per (server, msgid, recipient) wins; rejections have msgid null; "
            "final_states counts rows as written",
        }

    def _write_manifest(self) -> None:
        path = self.out / "manifest.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_bytes(orjson.dumps(self.manifest, option=orjson.OPT_INDENT_2) + b"\n")
        os.replace(tmp, path)

    def follow(self, rate: float, should_stop: Callable[[], bool], sleep: Callable[[float], None] = time.sleep) -> int:
        """Appends live traffic at about ``rate`` lines/s in total until ``should_stop()``; returns lines written."""
        assert self.truth is not None and self.sims
        config = self.config
        bulk_lines = sum(sim.lines for sim in self.sims)
        bulk_arrivals = sum(sim.messages for sim in self.sims)
        lines_per_arrival = bulk_lines / bulk_arrivals if bulk_arrivals else 8.0
        fleet_arrivals_per_second = max(rate, 1.0) / lines_per_arrival
        spacing = len(self.sims) / fleet_arrivals_per_second
        live: list[_Live] = []
        queue: list[tuple[float, int]] = []
        for i, sim in enumerate(self.sims):
            rng = FastRandom(f"trackdelivery-generator:{config.seed}:{i}:follow")
            first = config.end_epoch + rng.expovariate(1.0 / spacing)
            live.append(_Live(sim, rng, first, spacing))
            queue.append((first, i))
        heapq.heapify(queue)
        started = time.monotonic()
        written = 0
        while not should_stop():
            due = int((time.monotonic() - started) * rate) - written
            if due <= 0:
                sleep(min(0.05, max(0.001, -due / rate)))
                continue
            touched: set[int] = set()
            while due > 0:
                when, i = heapq.heappop(queue)
                entry = live[i]
                sim = entry.sim
                before = sim.pending_lines()
                t = int(when)
                sim.run_until(t)
                kind = "reject" if entry.rng.random() < REJECTIONS_PER_MESSAGE else _pick_kind(entry.rng)
                sim.arrive(t, kind)
                produced = sim.pending_lines() - before
                due -= produced
                written += produced
                touched.add(i)
                entry.next_time = when + entry.rng.expovariate(1.0 / entry.spacing)
                heapq.heappush(queue, (entry.next_time, i))
            for i in sorted(touched):
                live[i].sim.flush()
            self.truth.flush()
        self.finish_follow()
        return written

    def finish_follow(self) -> None:
        assert self.truth is not None
        for sim in self.sims:
            sim.flush()
            sim.snapshot_open()
        self.truth.flush()
        self._kind_totals = {}
        for sim in self.sims:
            for kind, count in sim.counts.items():
                self._kind_totals[kind] = self._kind_totals.get(kind, 0) + count
        for info, sim in zip(self.manifest["servers"], self.sims, strict=True):
            info["lines"] = sim.lines
            info["arrivals"] = sim.messages
        self.manifest["lines"] = sum(sim.lines for sim in self.sims)
        self.manifest["line_kinds"] = dict(sorted(self._kind_totals.items()))
        self.manifest["truth_rows"] = self.truth.rows
        self.manifest["final_states"] = dict(sorted(self.truth.finals.items()))
        self.manifest["followed"] = True
        self._write_manifest()

    def close(self) -> None:
        if self._truth_stream is not None:
            if self.truth is not None:
                self.truth.flush()
            self._truth_stream.close()
            self._truth_stream = None
