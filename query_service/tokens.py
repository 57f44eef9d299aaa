"""Bearer tokens for the query service, kept hashed in Redis.

A token reads ``td_<id>_<secret>``: the id names the Redis hash that holds the token's record, the secret
(256 random bits) is never stored, only its sha256, compared in constant time. Operator tokens see the
whole fleet; account tokens are confined to cPanel users and/or domains.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis, RedisCluster
from redis.typing import EncodableT, FieldT

TOKEN_PREFIX = "td_"  # noqa: S105 - a visible marker, not a secret
_TOKEN_SHAPE = re.compile(r"^td_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")
_SCOPE_NAME = re.compile(r"^[A-Za-z0-9._@+-]{1,255}$")


class TokenError(ValueError):
    """A token could not be created as asked (bad scope)."""


@dataclass(frozen=True, slots=True)
class TokenRecord:
    token_id: str
    operator: bool
    users: frozenset[str] = field(default_factory=frozenset)
    domains: frozenset[str] = field(default_factory=frozenset)
    name: str = ""
    created: float = 0.0

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.token_id,
            "kind": "operator" if self.operator else "account",
            "users": sorted(self.users),
            "domains": sorted(self.domains),
            "name": self.name,
            "created": self.created,
        }


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def normalise_scope(
    users: list[str] | tuple[str, ...], domains: list[str] | tuple[str, ...]
) -> tuple[frozenset[str], frozenset[str]]:
    clean_users = frozenset(u.strip() for u in users if u.strip())
    clean_domains = frozenset(d.strip().lower().rstrip(".") for d in domains if d.strip())
    for value in clean_users | clean_domains:
        if not _SCOPE_NAME.match(value):
            raise TokenError(f"not a valid user or domain name: {value!r}")
    return clean_users, clean_domains


class TokenStore:
    """Create, list, revoke and verify tokens under ``{prefix}token:{id}`` plus the set ``{prefix}tokens``."""

    def __init__(self, client: Redis | RedisCluster, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    def _key(self, token_id: str) -> str:
        return f"{self._prefix}token:{token_id}"

    @property
    def _index_key(self) -> str:
        return f"{self._prefix}tokens"

    async def create(
        self,
        *,
        operator: bool,
        users: list[str] | tuple[str, ...] = (),
        domains: list[str] | tuple[str, ...] = (),
        name: str = "",
    ) -> tuple[str, TokenRecord]:
        """Return the token (shown once, never stored) and its record."""
        clean_users, clean_domains = normalise_scope(users, domains)
        if operator and (clean_users or clean_domains):
            raise TokenError("an operator token sees everything: give no --user or --domain")
        if not operator and not (clean_users or clean_domains):
            raise TokenError("an account token needs at least one --user or --domain")
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        record = TokenRecord(token_id, operator, clean_users, clean_domains, name[:200], time.time())
        mapping: dict[FieldT, EncodableT] = {
            "digest": _digest(secret),
            "operator": "1" if operator else "0",
            "users": orjson.dumps(sorted(clean_users)),
            "domains": orjson.dumps(sorted(clean_domains)),
            "name": record.name,
            "created": repr(record.created),
        }
        # no MULTI: the record and the index may live on different Redis Cluster nodes
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.hset(self._key(token_id), mapping=mapping)
            pipe.sadd(self._index_key, token_id)
            await pipe.execute()
        return f"{TOKEN_PREFIX}{token_id}_{secret}", record

    async def verify(self, token: str) -> TokenRecord | None:
        """The record of a valid token, or None for anything else (malformed, unknown, revoked, wrong secret)."""
        match = _TOKEN_SHAPE.match(token)
        if match is None:
            return None
        token_id, secret = match.groups()
        raw = _text_mapping(await self._client.hgetall(self._key(token_id)))
        if not raw:
            return None
        stored = raw.get("digest", "")
        if not hmac.compare_digest(stored, _digest(secret)):
            return None
        return self._record(token_id, raw)

    async def list(self) -> list[TokenRecord]:
        ids = sorted(_text(i) for i in await self._client.smembers(self._index_key))
        async with self._client.pipeline(transaction=False) as pipe:
            for token_id in ids:
                pipe.hgetall(self._key(token_id))
            rows = await pipe.execute()
        records = [self._record(token_id, _text_mapping(raw)) for token_id, raw in zip(ids, rows, strict=True) if raw]
        return sorted(records, key=lambda r: r.created)

    async def revoke(self, token_id: str) -> bool:
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.delete(self._key(token_id))
            pipe.srem(self._index_key, token_id)
            deleted, _ = await pipe.execute()
        return bool(deleted)

    @staticmethod
    def _record(token_id: str, raw: dict[str, str]) -> TokenRecord:
        return TokenRecord(
            token_id=token_id,
            operator=raw.get("operator") == "1",
            users=frozenset(orjson.loads(raw.get("users", "[]"))),
            domains=frozenset(orjson.loads(raw.get("domains", "[]"))),
            name=raw.get("name", ""),
            created=float(raw.get("created", "0")),
        )


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _text_mapping(raw: dict[Any, Any]) -> dict[str, str]:
    """Clients may or may not decode responses: accept both."""
    return {_text(k): _text(v) for k, v in raw.items()}
