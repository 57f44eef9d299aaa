"""Current and recent alerts in Redis, for the query service (``GET /api/v1/alerts``).

Two keys share the ``{alerts}`` hash tag so they live on one Redis Cluster slot:

* ``<prefix>:{alerts}:records`` — hash, alert id → the newest record of that alert (JSON);
* ``<prefix>:{alerts}:seen`` — sorted set, alert id scored by its last-seen time.

Resolved alerts are dropped ``retention`` seconds after they were last seen; firing ones stay.
An older version never overwrites a newer one (a replayed alerts topic is harmless).
"""

from __future__ import annotations

from typing import Any, cast

import orjson
from redis.asyncio import Redis, RedisCluster

DEFAULT_RETENTION = 7 * 86400.0

_PUT = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local ok, old = pcall(cjson.decode, current)
  if ok and tonumber(old['version']) and tonumber(old['version']) > tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return 1
"""


class AlertStore:
    def __init__(self, client: Redis | RedisCluster, prefix: str = "td", retention: float = DEFAULT_RETENTION) -> None:
        self.client = client
        self.records_key = f"{prefix}:{{alerts}}:records"
        self.seen_key = f"{prefix}:{{alerts}}:seen"
        self.retention = retention
        self._put = client.register_script(_PUT)

    async def put(self, record: dict[str, Any]) -> bool:
        """Stores the record unless a newer version of the same alert is already there."""
        payload = orjson.dumps(record)
        stored = await self._put(
            keys=[self.records_key, self.seen_key],
            args=[record["id"], payload, int(record["version"]), float(record["last_seen"])],
        )
        await self._expire_resolved(float(record["last_seen"]))
        return bool(stored)

    async def _expire_resolved(self, now: float) -> None:
        old = cast(list[bytes], await self.client.zrangebyscore(
            self.seen_key, "-inf", now - self.retention, start=0, num=500))
        if not old:
            return
        raw = await self.client.hmget(self.records_key, old)
        gone = [alert for alert, value in zip(old, raw, strict=True)
                if value is None or orjson.loads(value).get("state") == "resolved"]
        if gone:
            await self.client.hdel(self.records_key, *gone)
            await self.client.zrem(self.seen_key, *gone)

    async def list(self, *, state: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
        """Newest first (by last seen); ``state`` = firing or resolved filters."""
        ids = cast(list[bytes], await self.client.zrevrange(self.seen_key, 0, -1))
        out: list[dict[str, Any]] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for value in await self.client.hmget(self.records_key, chunk):
                if value is None:
                    continue
                record = orjson.loads(value)
                if state is None or record.get("state") == state:
                    out.append(record)
                    if len(out) >= limit:
                        return out
        return out
