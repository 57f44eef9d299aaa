"""The components' Redis clients: commands packed by hiredis, byte for byte what redis-py would send."""

import pytest
import redis.asyncio as aioredis
from redis.exceptions import DataError

from trackdelivery.connections import redis_client
from trackdelivery.settings import RedisSettings

ARGUMENT_SHAPES = [
    ("SET", b"key", b"\x00\x01\xff binary"),
    ("EVALSHA", "0" * 40, 2, b"k1", b"k2", 1_700_000_000, -3, 0.1, 1e-05, 1e20, float("inf"), "\u00e9\u4e2d"),
    (b"ZADD", b"z", 0, b"m" * 10_000),  # over redis-py's buffer cutoff
    ("CONFIG GET", "maxmemory"),  # a command name with two words
    (b"CLIENT SETNAME", b"x"),
]


def settings(url: str) -> RedisSettings:
    return RedisSettings.model_construct(url=url, cluster=False)


@pytest.mark.parametrize("arguments", ARGUMENT_SHAPES)
def test_commands_are_packed_exactly_as_redis_py_packs_them(arguments):
    client = redis_client(settings("redis://localhost:1/0"))
    packed = client.connection_pool.connection_class().pack_command(*arguments)
    assert b"".join(packed) == b"".join(aioredis.Connection().pack_command(*arguments))
    assert client.connection_pool.connection_class is not aioredis.Connection


def test_tls_and_unix_socket_urls_keep_their_connection_kind():
    assert issubclass(redis_client(settings("rediss://localhost:1/0")).connection_pool.connection_class,
                      aioredis.SSLConnection)
    assert issubclass(redis_client(settings("unix:///tmp/none.sock")).connection_pool.connection_class,
                      aioredis.UnixDomainSocketConnection)


async def test_a_real_server_understands_the_packed_commands(redis_db_url):
    client = redis_client(settings(redis_db_url))
    try:
        await client.set(b"k", b"\x00\xff" * 5000)
        assert await client.get(b"k") == b"\x00\xff" * 5000
        assert await client.zadd(b"z", {b"a": 1.5, "\u00e9": 2}) == 2
        assert await client.zrange(b"z", 0, -1, withscores=True) == [(b"a", 1.5), ("\u00e9".encode(), 2.0)]
        assert await client.eval("return ARGV[1] .. ARGV[2]", 0, 7, 0.25) == b"70.25"
        assert "maxmemory" in await client.config_get("maxmemory")
        pipe = client.pipeline(transaction=False)
        for number in range(500):
            pipe.hset(b"h", str(number), number)
        await pipe.execute()
        assert await client.hlen(b"h") == 500
        with pytest.raises(DataError):  # still refused before it reaches the server
            await client.set(b"k", True)  # type: ignore[arg-type]
    finally:
        await client.aclose()
