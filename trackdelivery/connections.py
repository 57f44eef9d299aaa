"""The Redis clients of every component, built from ``RedisSettings``: a single Redis, or with
``REDIS_CLUSTER=true`` a Redis Cluster that ``REDIS_URL`` names one node of.

Every component that talks to the query store gets its client here, so the choice is made once. Responses
are never decoded (``decode_responses=False``): keys and records of the store are binary. The store's code
works with either client; on a cluster it sends no command that names keys of two slots (see
docs/redis-model.md, "Redis Cluster"). redis-py's cluster client follows ``MOVED``/``ASK`` redirections
and refreshes its slot map after a failover.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis

from trackdelivery.settings import RedisSettings

AsyncRedisClient = aioredis.Redis | aioredis.RedisCluster
SyncRedisClient = redis.Redis | redis.RedisCluster


def _options(timeout: float | None, health_check_interval: int) -> dict[str, Any]:
    options: dict[str, Any] = {"decode_responses": False}
    if timeout is not None:
        options.update(socket_timeout=timeout, socket_connect_timeout=timeout)
    if health_check_interval:
        options["health_check_interval"] = health_check_interval
    return options


def redis_client(
    settings: RedisSettings, *, timeout: float | None = None, health_check_interval: int = 0
) -> AsyncRedisClient:
    """The asyncio client for ``settings``: ``RedisCluster`` when ``settings.cluster``, else ``Redis``.

    ``timeout``: socket and connect timeout in seconds (default: none); ``health_check_interval``: seconds
    after which an idle connection is checked with ``PING`` before use (0: never). The caller closes it
    (``await client.aclose()``).
    """
    options = _options(timeout, health_check_interval)
    if settings.cluster:
        return aioredis.RedisCluster.from_url(settings.url, **options)
    return aioredis.Redis.from_url(settings.url, **options)


def sync_redis_client(
    settings: RedisSettings, *, timeout: float | None = None, health_check_interval: int = 0
) -> SyncRedisClient:
    """The blocking client for ``settings`` (same choice and options as ``redis_client``)."""
    options = _options(timeout, health_check_interval)
    if settings.cluster:
        return redis.RedisCluster.from_url(settings.url, **options)
    return redis.Redis.from_url(settings.url, **options)


async def count_keys(client: AsyncRedisClient) -> int:
    """Keys in the database; on a cluster, summed over every master (``DBSIZE`` alone asks one node)."""
    if isinstance(client, aioredis.RedisCluster):
        return int(await client.dbsize(target_nodes=aioredis.RedisCluster.PRIMARIES))
    return int(await client.dbsize())
