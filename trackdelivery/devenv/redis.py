"""A real Redis from Debian's ``redis-server``, on a free loopback port, without persistence; and a local
Redis Cluster of such servers (``RedisClusterServers``) for the tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from trackdelivery.devenv.exceptions import DevEnvError
from trackdelivery.devenv.ports import free_port, wait_for
from trackdelivery.devenv.process import ManagedProcess
from trackdelivery.store.types import REDIS_CONFIG

#: where ``make install`` builds the trackdelivery Redis module (redis-module/): the search walk as a command
BUILT_WALK_MODULE = Path(__file__).resolve().parents[2] / "redis-module/target/release/libtrackdelivery_redis.so"


def walk_module_path() -> Path | None:
    """The trackdelivery Redis module to load: ``TRACKDELIVERY_REDIS_MODULE`` (empty: none), else the one
    ``make install`` built, if it did."""
    configured = os.environ.get("TRACKDELIVERY_REDIS_MODULE")
    if configured is not None:
        if not configured:
            return None
        path = Path(configured)
        if not path.is_file():
            raise DevEnvError(f"TRACKDELIVERY_REDIS_MODULE={configured}: no such file")
        return path
    return BUILT_WALK_MODULE if BUILT_WALK_MODULE.is_file() else None


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise DevEnvError("redis-server is not installed: run `make install` (apt-get install redis-server)")
    return binary


class RedisServer(ManagedProcess):
    def __init__(
        self, workdir: Path, port: int | None = None, *, maxmemory: str = "0", extra_args: Sequence[str] = (),
        store_config: bool = True, walk_module: bool = True,
    ) -> None:
        """``store_config``: start with the settings the query store is designed for (``REDIS_CONFIG``);
        ``walk_module``: load the trackdelivery module where one is built (``walk_module_path``)."""
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.maxmemory = maxmemory
        tuned = [arg for name, value in REDIS_CONFIG.items() for arg in (f"--{name}", value)] if store_config else []
        module = walk_module_path() if walk_module else None
        #: the module this server loads, if any
        self.module = module
        modules = ["--loadmodule", str(module)] if module is not None else []
        self.extra_args = (*tuned, *modules, *extra_args)  # more redis-server options, e.g. the cluster ones
        super().__init__()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0, *, detach: bool = False) -> None:
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.workdir), "--save", "", "--appendonly", "no",
            "--maxmemory", self.maxmemory, "--daemonize", "no",
            "--logfile", str(self.workdir / "redis.log"), *self.extra_args,
        ]
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=detach,
        )
        self.pid = self._process.pid
        wait_for(self._ready, timeout, f"Redis on port {self.port}")

    def _ready(self) -> bool:
        if not self.running:
            log = self.workdir / "redis.log"
            raise DevEnvError(f"redis-server exited during start-up: {log.read_text()[-2000:] if log.exists() else ''}")
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False


def redis_cli_binary() -> str:
    binary = shutil.which("redis-cli")
    if binary is None:
        raise DevEnvError("redis-cli is not installed: run `make install` (apt-get install redis-server; "
                          "Debian ships redis-cli in redis-tools)")
    return binary


CLUSTER_SLOTS = 16384


@dataclass(frozen=True, slots=True)
class ClusterNodeInfo:
    """One line of ``CLUSTER NODES``."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: int  # hash slots this node serves

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})


def parse_cluster_nodes(text: str) -> list[ClusterNodeInfo]:
    """``CLUSTER NODES`` output: ``<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot>...``."""
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        address = parts[1].split("@", 1)[0]
        port = int(address.rpartition(":")[2] or 0)
        slots = 0
        for item in parts[8:]:
            if item.startswith("["):  # a slot being migrated or imported
                continue
            first, _, last = item.partition("-")
            slots += int(last or first) - int(first) + 1
        found.append(ClusterNodeInfo(parts[0], port, frozenset(parts[2].split(",")),
                                     None if parts[3] == "-" else parts[3], slots))
    return found


class RedisClusterServers:
    """A Redis Cluster on loopback: ``size`` (default 6) ``redis-server`` processes in cluster mode, each
    in its own workdir without persistence, joined by ``redis-cli --cluster create`` into masters with
    ``replicas`` replicas each (3 + 3 by default).

    ``nodes`` are the ``RedisServer`` processes (pid, port: a test may SIGKILL a master); ``masters()`` asks
    the cluster which of them are masters now; ``wait_healthy()`` waits, after start-up or a failover,
    until every live node reports ``cluster_state:ok`` and every one of the 16384 slots is served by a
    live master that the other nodes do not suspect.
    """

    def __init__(
        self, workdir: Path, size: int = 6, *, replicas: int = 1, node_timeout_ms: int = 2000,
        ports: list[tuple[int, int]] | None = None,
    ) -> None:
        """``ports``: (client port, cluster bus port) per node, to find a cluster that ran before again."""
        if ports is None:
            taken: list[int] = []
            for _ in range(2 * size):  # a client port and a cluster bus port per node
                taken.append(free_port(exclude=taken))
            ports = [(taken[2 * index], taken[2 * index + 1]) for index in range(size)]
        size = len(ports)
        if size < 3 * (replicas + 1):
            raise ValueError(f"a cluster needs at least 3 masters: {size} nodes cannot have {replicas} replicas each")
        self.workdir = Path(workdir)
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.bus_ports = [bus for _, bus in ports]
        self.nodes = [
            RedisServer(
                self.workdir / f"node{index}", port,
                extra_args=(
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(node_timeout_ms), "--cluster-port", str(bus),
                    "--repl-diskless-sync-delay", "0",  # a replica syncs at once, not after 5 s
                ),
            )
            for index, (port, bus) in enumerate(ports)
        ]

    def resume(self, timeout: float = 60.0, *, detach: bool = False) -> None:
        """Start the nodes that do not run of a cluster created before (each node's ``nodes.conf`` keeps
        the cluster's shape; the data is gone: no persistence) and wait until it is healthy."""
        for node in self.nodes:
            if not node.running:
                node.pid = None
                node.start(timeout, detach=detach)
        self.wait_healthy(timeout)

    @property
    def url(self) -> str:
        """``redis://`` URL of the first node that runs (the first master after ``start``): any node is a
        good start-up node for a cluster client, which learns the rest with ``CLUSTER SLOTS``."""
        for node in self.nodes:
            if node.running:
                return node.url
        return self.nodes[0].url

    @property
    def running(self) -> bool:
        return any(node.running for node in self.nodes)

    def start(self, timeout: float = 60.0, *, detach: bool = False) -> None:
        """Start every node, create the cluster and wait until it is healthy; stops what it started on failure."""
        cli = redis_cli_binary()
        redis_server_binary()
        try:
            for node in self.nodes:
                node.start(timeout, detach=detach)
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            result = subprocess.run(
                [cli, "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False,
            )
            if result.returncode != 0:
                raise DevEnvError(
                    f"redis-cli --cluster create failed ({result.returncode}): "
                    f"{(result.stdout + result.stderr)[-2000:]}"
                )
            self.wait_healthy(timeout, expect_nodes=len(self.nodes))
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.stop(timeout)

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def node(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def _client(self, node: RedisServer) -> redis.Redis:
        return redis.Redis(port=node.port, socket_timeout=2, socket_connect_timeout=2)

    def _command(self, node: RedisServer, *command: str) -> Any:
        client = self._client(node)
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def _ask(self, node: RedisServer, *command: str) -> str:
        reply = self._command(node, *command)
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    def cluster_nodes(self) -> list[ClusterNodeInfo]:
        """``CLUSTER NODES`` as the first live node that answers sees it."""
        for node in self.nodes:
            if not node.running:
                continue
            try:
                return parse_cluster_nodes(self._ask(node, "CLUSTER", "NODES"))
            except redis.RedisError:
                continue
        raise DevEnvError("no node of the Redis Cluster answers")

    def masters(self) -> list[RedisServer]:
        """The nodes that are masters serving slots now (not failed), in ``nodes`` order."""
        ports = {info.port for info in self.cluster_nodes() if info.is_master and info.slots and not info.failing}
        return [node for node in self.nodes if node.port in ports]

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        """The nodes replicating ``master`` now."""
        infos = self.cluster_nodes()
        master_id = next((info.node_id for info in infos if info.port == master.port), None)
        ports = {info.port for info in infos if master_id is not None and info.master_id == master_id}
        return [node for node in self.nodes if node.port in ports]

    def wait_replicated(self, timeout: float = 30.0) -> None:
        """Wait until every replica has acknowledged everything its master had received when called.

        Redis replicates asynchronously: a write acknowledged by a master that dies before its replica got
        it is lost in the failover. ``WAIT`` gives that guarantee only for the calling connection's own
        writes, and a cluster client spreads writes over connections per node; this waits instead until
        each replica's acknowledged offset (``INFO replication``) reaches its master's offset.
        """
        targets: list[tuple[RedisServer, int]] = []
        for master in self.masters():
            info = self._replication(master)
            targets.append((master, int(info["master_repl_offset"])))

        def replicated() -> bool:
            for master, offset in targets:
                info = self._replication(master)
                replicas = [value for name, value in info.items() if re.fullmatch(r"slave\d+", name)]
                if len(replicas) < self.replicas:
                    return False
                for replica in replicas:
                    if replica.get("state") != "online" or int(replica.get("offset", -1)) < offset:
                        return False
            return True

        wait_for(replicated, timeout, "the replicas to acknowledge their masters' writes", interval=0.1)

    def _replication(self, node: RedisServer) -> dict[str, Any]:
        client = self._client(node)
        try:
            return client.info("replication")
        finally:
            client.close()

    def wait_healthy(self, timeout: float = 60.0, *, expect_nodes: int | None = None) -> None:
        """Wait until the cluster serves every slot from a live master (e.g. after a failover).

        Healthy means: every live node says ``cluster_state:ok`` with all 16384 slots assigned and ok;
        every replica's link to its master is up; every live node sees every other live node as it sees
        itself (role, master, slots: gossip has settled); and each slot's master is a running node (a dead
        master is only suspected for ``cluster-node-timeout`` before its replica takes over, and the
        surviving nodes say ``ok`` meanwhile). ``expect_nodes``: also wait until every node knows that many
        nodes (start-up).
        """
        deadline = time.monotonic() + timeout
        while True:
            problem = self._health_problem(expect_nodes)
            if problem is None:
                return
            if time.monotonic() >= deadline:
                raise DevEnvError(f"the Redis Cluster did not become healthy within {timeout:.0f}s: {problem}")
            time.sleep(0.2)

    def _health_problem(self, expect_nodes: int | None) -> str | None:
        live = [node for node in self.nodes if node.running]
        if not live:
            return "no node runs"
        views: dict[int, list[ClusterNodeInfo]] = {}
        for node in live:
            try:
                info = dict(
                    line.split(":", 1) for line in self._ask(node, "CLUSTER", "INFO").splitlines() if ":" in line
                )
                views[node.port] = parse_cluster_nodes(self._ask(node, "CLUSTER", "NODES"))
                role = self._command(node, "ROLE")
            except redis.RedisError as error:
                return f"node {node.port}: {error}"
            if info.get("cluster_state") != "ok":
                return f"node {node.port}: cluster_state {info.get('cluster_state')}"
            for counter in ("cluster_slots_assigned", "cluster_slots_ok"):
                if int(info.get(counter, 0)) != CLUSTER_SLOTS:
                    return f"node {node.port}: {counter} {info.get(counter)}"
            if expect_nodes is not None and int(info.get("cluster_known_nodes", 0)) != expect_nodes:
                return f"node {node.port}: knows {info.get('cluster_known_nodes')} of {expect_nodes} nodes"
            if role[0] == b"slave" and role[3] != b"connected":
                return f"replica {node.port}: link to its master {role[2]} is {role[3].decode()}"
        # every live node as it sees itself; every other live node must see it the same way (gossip done)
        selves = {port: next(item for item in view if "myself" in item.flags) for port, view in views.items()}
        for port, view in views.items():
            seen = {item.port: item for item in view}
            for other, itself in selves.items():
                item = seen.get(other)
                if item is None or item.failing or item.is_master != itself.is_master:
                    kind = "master" if itself.is_master else "replica"
                    return f"node {port} does not see node {other} as a live {kind}"
                if item.master_id != itself.master_id or item.slots != itself.slots:
                    return f"node {port} does not agree with node {other} on its master or slots"
            serving = [item for item in view if item.is_master and item.slots]
            if sum(item.slots for item in serving) != CLUSTER_SLOTS:
                return f"node {port}: masters serve {sum(item.slots for item in serving)} slots"
            for item in serving:
                if item.port not in selves:
                    return f"node {port}: master {item.port} serving {item.slots} slots is down"
        return None
