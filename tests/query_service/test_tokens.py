from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from query_service.tokens import TokenError, TokenStore


@pytest.fixture
async def store(redis_db_url: str, key_prefix: str) -> AsyncIterator[TokenStore]:
    client = Redis.from_url(redis_db_url)
    yield TokenStore(client, key_prefix)
    await client.aclose()


async def test_created_token_verifies_with_its_scope(store: TokenStore) -> None:
    token, record = await store.create(operator=False, users=["acct01"], domains=["Shop.Example."], name="portal")
    verified = await store.verify(token)
    assert verified == record
    assert verified is not None
    assert not verified.operator
    assert verified.users == {"acct01"}
    assert verified.domains == {"shop.example"}  # normalised: lower case, no trailing dot


async def test_the_secret_is_not_stored(store: TokenStore, redis_db_url: str, key_prefix: str) -> None:
    token, _ = await store.create(operator=True)
    secret = token.rsplit("_", 1)[1]
    client = Redis.from_url(redis_db_url)
    try:
        values: list[bytes] = []
        for key in await client.keys(f"{key_prefix}*"):  # only the store's keys: the database may be shared
            kind = await client.type(key)
            if kind == b"hash":
                values += (await client.hgetall(key)).values()
            elif kind == b"set":
                values += await client.smembers(key)
            else:
                values.append(await client.dump(key) or b"")
        dump = b"\n".join(values)
    finally:
        await client.aclose()
    assert len(values) > 3  # the record was read back, so the check below looked at it
    assert secret.encode() not in dump


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # wrong secret
        lambda t: t.replace("td_", "xx_", 1),
        lambda t: "",
        lambda t: t + "\x00",
        lambda t: "td_000000000000_" + t.rsplit("_", 1)[1],  # right secret, unknown id
        lambda t: "td_" + "a" * 12 + "_" + "b" * 500,
    ],
)
async def test_anything_but_the_exact_token_is_refused(store: TokenStore, mangle) -> None:
    token, _ = await store.create(operator=True)
    assert await store.verify(mangle(token)) is None


async def test_revoked_token_stops_working_and_leaves_the_list(store: TokenStore) -> None:
    keep, kept = await store.create(operator=True, name="keep")
    drop, dropped = await store.create(operator=False, users=["acct02"], name="drop")
    assert [r.token_id for r in await store.list()] == [kept.token_id, dropped.token_id]
    assert await store.revoke(dropped.token_id)
    assert await store.verify(drop) is None
    assert await store.verify(keep) == kept
    assert [r.token_id for r in await store.list()] == [kept.token_id]
    assert not await store.revoke(dropped.token_id)


@pytest.mark.parametrize(
    ("operator", "users", "domains"),
    [(True, ["acct01"], []), (False, [], []), (False, ["bad user"], []), (False, [], ["a" * 300])],
)
async def test_inconsistent_scopes_are_refused(store: TokenStore, operator: bool, users, domains) -> None:
    with pytest.raises(TokenError):
        await store.create(operator=operator, users=users, domains=domains)
