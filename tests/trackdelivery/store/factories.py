"""DeliveryEvent builders for the query-store tests: hand-written and seeded random."""

from __future__ import annotations

import random
import time
from typing import Any

import redis

from trackdelivery.events import DeliveryEvent, EventType, Reason, RetryState
from trackdelivery.generator.ids import new_format_id
from trackdelivery.store.types import MessageLine, StoreSettings

NOW = float(int(time.time()))  # the "now" the tests pass to search(); stored data expires from real time


def msgid_at(epoch: float, salt: int = 0) -> str:
    return new_format_id(int(epoch), 1000 + salt, salt % 1_000_000)


def make_event(**overrides: Any) -> DeliveryEvent:
    """A delivered event one hour before NOW; every field can be overridden."""
    time = overrides.pop("time", NOW - 3600)
    fields: dict[str, Any] = {
        "type": EventType.DELIVERED,
        "server": "mx1.example.net",
        "msgid": msgid_at(time - 5),
        "time": time,
        "recipient": "bob@gmail.com",
        "recipient_domain": "gmail.com",
        "arrival_time": time - 5,
        "sender": "alice@shop.example",
        "sender_domain": "shop.example",
        "cpanel_user": "shop",
        "client_ip": "203.0.113.7",
        "subject": "Your order",
        "size": 2048,
        "router": "dkim_lookuphost",
        "transport": "dkim_remote_smtp",
        "remote_host": "gmail-smtp-in.l.google.com",
        "remote_ip": "142.250.1.27",
        "response": "250 2.0.0 OK 1764 - gsmtp",
    }
    fields.update(overrides)
    return DeliveryEvent(**fields)


SERVERS = [f"srv{n}.host.example" for n in range(8)]
USERS = [f"user{n}" for n in range(12)]
DOMAINS = [f"dom{n}.example" for n in range(20)]
REMOTE = ["gmail.com", "yahoo.com", "outlook.com", "example.org", "mail.ru"]
TYPES = list(EventType)


def random_events(count: int, seed: int, *, span: float = 86400.0, end: float = NOW) -> list[DeliveryEvent]:
    rng = random.Random(seed)
    events = []
    for number in range(count):
        time = end - rng.random() * span
        event_type = rng.choice(TYPES)
        user = rng.choice(USERS)
        domain = rng.choice(DOMAINS)
        remote = rng.choice(REMOTE)
        reason = rng.choice(list(Reason)) if event_type not in (EventType.DELIVERED, EventType.IN_PROGRESS) else None
        msgid = None if event_type is EventType.REJECTED else msgid_at(time - 30, number)
        events.append(
            DeliveryEvent(
                type=event_type,
                server=rng.choice(SERVERS),
                msgid=msgid,
                time=time,
                recipient=f"r{rng.randrange(50)}@{remote}",
                recipient_domain=remote,
                arrival_time=time - 30,
                sender=f"s{rng.randrange(30)}@{domain}",
                sender_domain=domain,
                cpanel_user=user,
                client_ip=f"198.51.100.{rng.randrange(16)}",
                remote_ip=f"192.0.2.{rng.randrange(16)}",
                subject=rng.choice(["invoice", "hello", "Meeting notes", "newsletter"]),
                size=rng.randrange(500, 50_000),
                response=rng.choice(["250 OK", "451 4.7.1 greylisted", "550 5.1.1 user unknown"]),
                reason=reason,
                retry=RetryState(attempt=rng.randrange(0, 4)),
            )
        )
    return events


def store_settings(key_prefix: str, **overrides: Any) -> StoreSettings:
    """Settings on the test's own key prefix (the fixture's prefix without its trailing colon)."""
    return StoreSettings(prefix=key_prefix.rstrip(":"), **overrides)


def snapshot(client: redis.Redis | redis.RedisCluster, prefix: str | None = None) -> dict[bytes, tuple[str, Any, bool]]:
    """Every key of the database (or under ``prefix``; on a cluster: on every master) with its content and
    whether it expires, for exact before/after comparisons."""
    state: dict[bytes, tuple[str, Any, bool]] = {}
    match = f"{prefix}:*".encode() if prefix is not None else None
    for key in client.scan_iter(match=match, count=1000):
        reply = client.type(key)
        kind = reply.decode() if isinstance(reply, bytes) else str(reply)
        content: Any
        if kind == "string":
            content = client.get(key)
        elif kind == "hash":
            content = sorted(client.hgetall(key).items())
        elif kind == "zset":
            content = client.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            content = client.lrange(key, 0, -1)
        elif kind == "set":
            content = sorted(client.smembers(key))
        else:
            content = kind
        state[key] = (kind, content, client.ttl(key) > 0)
    return state


def over_the_cap(event: DeliveryEvent, count: int) -> list[MessageLine]:
    """``count`` lines of one message and file, a third of them the same host error (Exim repeats it)."""
    repeated = f"{event.msgid} H=mx.example.com: SMTP timeout"
    return [
        MessageLine(event.server, event.msgid or "", event.time + n // 6,
                    repeated if n % 3 == 0 else f"{event.msgid} -> r{n}@a.example", "inode-9", 90 * n)
        for n in range(count)
    ]
