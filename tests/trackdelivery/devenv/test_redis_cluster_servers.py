"""The dev tooling's local Redis Cluster: clear errors when it cannot be had, and no process left behind.

The healthy path (start, masters, replicas, a failover) is exercised by tests/trackdelivery/test_redis_cluster.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trackdelivery.devenv import redis as devenv_redis
from trackdelivery.devenv.exceptions import DevEnvError
from trackdelivery.devenv.process import pid_alive
from trackdelivery.devenv.redis import RedisClusterServers, parse_cluster_nodes

pytestmark = pytest.mark.redis


def test_a_missing_redis_cli_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = devenv_redis.shutil.which
    monkeypatch.setattr(devenv_redis.shutil, "which", lambda name: None if name == "redis-cli" else real_which(name))
    cluster = RedisClusterServers(tmp_path)
    with pytest.raises(DevEnvError, match="redis-cli is not installed"):
        cluster.start()
    assert not cluster.running


def test_a_cluster_that_does_not_form_is_an_error_and_its_nodes_are_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devenv_redis, "redis_cli_binary", lambda: "/bin/false")
    cluster = RedisClusterServers(tmp_path)
    pids: list[int] = []
    real_start = devenv_redis.RedisServer.start

    def start(node: devenv_redis.RedisServer, *args: object, **kwargs: object) -> None:
        real_start(node, *args, **kwargs)  # type: ignore[arg-type]
        assert node.pid is not None
        pids.append(node.pid)

    monkeypatch.setattr(devenv_redis.RedisServer, "start", start)
    with pytest.raises(DevEnvError, match="cluster create failed"):
        cluster.start()
    assert len(pids) == 6 and not any(pid_alive(pid) for pid in pids)


def test_a_dead_master_without_a_replica_never_becomes_healthy(tmp_path: Path) -> None:
    cluster = RedisClusterServers(tmp_path, size=3, replicas=0)
    cluster.start()
    try:
        assert [node.port for node in cluster.masters()] == [node.port for node in cluster.nodes]
        cluster.nodes[1].kill()
        with pytest.raises(DevEnvError, match="did not become healthy within 5s"):
            cluster.wait_healthy(5)
    finally:
        cluster.stop()
    assert not cluster.running


def test_sizes_without_three_masters_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 3 masters"):
        RedisClusterServers(tmp_path, size=4, replicas=1)


def test_cluster_nodes_lines_are_parsed() -> None:
    text = (
        "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [5461->-b2]\n"
        "b2 127.0.0.1:7001@17001 master,fail - 0 0 2 disconnected 5461 5462-10922\n"
        "c3 127.0.0.1:7002@17002 slave a1 0 0 1 connected\n"
    )
    first, second, third = parse_cluster_nodes(text)
    assert (first.port, first.slots, first.is_master, first.failing) == (7000, 5461, True, False)
    assert (second.slots, second.failing) == (5462, True)
    assert (third.is_master, third.master_id, third.slots) == (False, "a1", 0)
