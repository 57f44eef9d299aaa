"""Redis memory per stored event, indexes included (target: <= 600 bytes).

Stores N realistic random events (a fleet of servers, cPanel users, sender and recipient domains, mixed
types, in-progress + outcome events per recipient, SMTP-time rejections) through the real writer and
reports the ``used_memory`` delta / N. By default the events span N / 333,333 days, the design point's
rate (10M events in 30 days), so buckets fill as they would in production.

    .venv/bin/python bench/redis_memory.py [--events 1000000] [--lines] [--default-config]

Starts its own redis-server unless REDIS_URL is set (then it uses a prefix of its own and, with
``--flush``, flushes that database first). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import redis
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from processors.sinks.redis import RedisWriter
from trackdelivery.devenv.redis import RedisServer
from trackdelivery.events import DeliveryEvent, EventType, Reason, RetryState
from trackdelivery.generator.ids import new_format_id
from trackdelivery.store.types import REDIS_CONFIG, REDIS_DEFAULT_CONFIG, MessageLine, StoreSettings

DESIGN_RATE_PER_DAY = 10_000_000 / 30
RECOMMENDED_CONFIG = REDIS_CONFIG  # listpack limits recommended in docs/redis-model.md

REMOTE_DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "icloud.com", "aol.com", "gmx.de", "mail.ru"]
REMOTE_MX = {
    "gmail.com": ("gmail-smtp-in.l.google.com", "142.250.{}.27"),
    "yahoo.com": ("mta7.am0.yahoodns.net", "67.195.{}.73"),
    "outlook.com": ("outlook-com.olc.protection.outlook.com", "52.101.{}.1"),
}
SUBJECTS = [
    "Your order #{} has shipped", "Invoice {} from Example Hosting", "Re: meeting on Thursday",
    "Password reset request", "Weekly newsletter - issue {}", "[Ticket #{}] Support request received",
    "Fwd: contract draft v{}", "Welcome to our service!",
]
DEFER_RESPONSES = [
    ("450 4.2.0 <{rcpt}>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/{d}.html",
     Reason.GREYLISTED),
    ("421 4.7.0 [TSS04] Messages from 203.0.113.9 temporarily deferred due to unexpected volume or user complaints",
     Reason.RATE_LIMITED),
    ("retry timeout exceeded", Reason.RETRY_WAIT),
    ("452 4.2.2 The email account that you tried to reach is over quota.", Reason.MAILBOX_FULL),
]
FAIL_RESPONSES = [
    ("550 5.1.1 The email account that you tried to reach does not exist. Please try double-checking the "
     "recipient's email address for typos", Reason.RECIPIENT_UNKNOWN),
    ("554 5.7.1 Service unavailable; Client host [203.0.113.9] blocked using zen.spamhaus.org",
     Reason.IP_REPUTATION),
    ("550 5.7.26 Unauthenticated email from example.com is not accepted due to domain's DMARC policy",
     Reason.AUTH_FAILURE),
]
HINTS = {
    Reason.GREYLISTED: "The receiving server asked to retry later; Exim retries automatically.",
    Reason.RATE_LIMITED: "The remote server throttles this sender; slow down or spread the sending.",
    Reason.RETRY_WAIT: "Exim is waiting for the next retry time of this host or address.",
    Reason.MAILBOX_FULL: "The recipient's mailbox is full; they must free space.",
    Reason.RECIPIENT_UNKNOWN: "The address does not exist at the recipient's domain; check for typos.",
    Reason.IP_REPUTATION: "The sending IP is on a blocklist; check the listing and request removal.",
    Reason.AUTH_FAILURE: "SPF/DKIM/DMARC failed; fix the sender domain's DNS records.",
}


class Fleet:
    """Deterministic random fleet: servers, users with domains and mailboxes, remote recipients."""

    def __init__(self, seed: int, servers: int = 300, users_per_server: int = 40) -> None:
        self.rng = random.Random(seed)
        rng = self.rng
        self.servers = [f"cp{n:04d}.hosting-{n % 7}.example.net" for n in range(servers)]
        self.users: list[tuple[str, str, str, list[str]]] = []  # server, user, domain, mailboxes
        for server in self.servers:
            for number in range(users_per_server):
                user = f"{rng.choice(['shop', 'acme', 'blog', 'ltd', 'mail', 'web'])}{rng.randrange(10**6)}"
                domain = f"{user}.{rng.choice(['com', 'net', 'org', 'co.uk', 'de'])}"
                mailboxes = [f"{name}@{domain}" for name in ("info", "sales", "noreply", "john", "anna")[
                    : 1 + number % 5]]
                self.users.append((server, user, domain, mailboxes))
        self.tail_domains = [f"company{n}.example" for n in range(20_000)]
        self.weights = [1.0 / (rank + 1) ** 1.1 for rank in range(len(self.users))]
        self.cumulative = list(_accumulate(self.weights))

    def sender(self) -> tuple[str, str, str, str]:
        index = _pick(self.rng, self.cumulative)
        server, user, domain, mailboxes = self.users[index]
        return server, user, domain, self.rng.choice(mailboxes)

    def recipient(self) -> str:
        rng = self.rng
        if rng.random() < 0.55:
            domain = rng.choice(REMOTE_DOMAINS)
        else:
            domain = self.tail_domains[int(rng.paretovariate(1.2)) % len(self.tail_domains)]
        return f"{rng.choice(['j', 'm', 'a', 'k', 's'])}{rng.randrange(3_000_000)}@{domain}"


def _accumulate(values: list[float]) -> Iterator[float]:
    total = 0.0
    for value in values:
        total += value
        yield total


def _pick(rng: random.Random, cumulative: list[float]) -> int:
    import bisect

    return min(bisect.bisect_left(cumulative, rng.random() * cumulative[-1]), len(cumulative) - 1)


def fleet_events(
    count: int, seed: int, end: float, span: float, *, with_lines: bool = False, fleet_seed: int = 1
) -> Iterator[tuple[list[DeliveryEvent], list[MessageLine]]]:
    """Yields (events, lines) per message until ``count`` events were produced (same fleet for any seed)."""
    fleet = Fleet(fleet_seed)
    fleet.rng = rng = random.Random(seed)
    produced = 0
    while produced < count:
        arrival = end - rng.random() * span
        server, user, domain, sender = fleet.sender()
        if rng.random() < 0.08:  # SMTP-time rejection: no message id
            client_ip = f"185.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
            response, reason = rng.choice(FAIL_RESPONSES)
            recipient = rng.choice(fleet.users)[3][0]
            yield [DeliveryEvent(
                type=EventType.REJECTED, server=server, msgid=None, time=arrival, recipient=recipient,
                recipient_domain=recipient.rpartition("@")[2], sender=fleet.recipient(),
                client_host=f"host-{client_ip.replace('.', '-')}.dynamic.example", client_ip=client_ip,
                response=response, smtp_code=int(response[:3]), smtp_phase="rcpt", reason=reason,
                hint=HINTS.get(reason),
            )], []
            produced += 1
            continue
        msgid = new_format_id(int(arrival), rng.randrange(4_000_000), rng.randrange(1_000_000))
        arrival_fields = {
            "arrival_time": arrival, "sender": sender, "sender_domain": domain, "cpanel_user": user,
            "auth_id": sender, "client_host": "localhost" if rng.random() < 0.3 else "[10.1.2.3]",
            "client_ip": "127.0.0.1" if rng.random() < 0.3 else f"10.{rng.randrange(256)}.{rng.randrange(256)}.3",
            "protocol": "esmtpsa", "spam_score": round(rng.random() * 5, 1), "size": int(rng.lognormvariate(9, 1.2)),
            "subject": rng.choice(SUBJECTS).format(rng.randrange(100_000)),
            "message_id_header": f"{rng.getrandbits(64):x}@{domain}",
        }
        recipients = [fleet.recipient() for _ in range(1 if rng.random() < 0.8 else rng.randrange(2, 5))]
        events: list[DeliveryEvent] = []
        for recipient in recipients:
            rdomain = recipient.rpartition("@")[2]
            mx_host, mx_ip = REMOTE_MX.get(rdomain, (f"mx.{rdomain}", "198.18.{}.25"))
            remote_ip = mx_ip.format(rng.randrange(256))
            common = dict(server=server, msgid=msgid, recipient=recipient, recipient_domain=rdomain, **arrival_fields)
            events.append(DeliveryEvent(type=EventType.IN_PROGRESS, time=arrival, **common))
            when = arrival + rng.random() * 5
            roll = rng.random()
            route = dict(router="dkim_lookuphost", transport="dkim_remote_smtp", remote_host=mx_host,
                         remote_ip=remote_ip, tls="TLS1.3:TLS_AES_256_GCM_SHA384:256")
            if roll < 0.1:  # deferred a few times, then delivered or expired
                attempts = rng.randrange(1, 4)
                response, reason = rng.choice(DEFER_RESPONSES)
                for attempt in range(1, attempts + 1):
                    events.append(DeliveryEvent(
                        type=EventType.DEFERRED, time=when, response=response.format(rcpt=recipient, d=rdomain),
                        smtp_code=int(response[:3]) if response[0].isdigit() else None, reason=reason,
                        hint=HINTS.get(reason),
                        retry=RetryState(attempt, arrival, when, when + 900, arrival + 4 * 86400),
                        **route, **common,
                    ))
                    when += 900 * attempt
                final = EventType.EXPIRED if rng.random() < 0.2 else EventType.DELIVERED
            elif roll < 0.16:
                final = EventType.BOUNCED
            else:
                final = EventType.DELIVERED
            if final is EventType.DELIVERED:
                events.append(DeliveryEvent(
                    type=final, time=when,
                    response=f"250 2.0.0 OK  {int(when)} {rng.getrandbits(48):x}.{rng.randrange(999)} - gsmtp",
                    smtp_code=250, **route, **common,
                ))
            else:
                response, reason = rng.choice(FAIL_RESPONSES)
                events.append(DeliveryEvent(
                    type=final, time=when, response=response, smtp_code=int(response[:3]), enhanced_code=response[4:9],
                    smtp_phase="rcpt", reason=reason, hint=HINTS.get(reason),
                    bounce_msgid=new_format_id(int(when), rng.randrange(4_000_000), rng.randrange(1_000_000)),
                    **route, **common,
                ))
        lines: list[MessageLine] = []
        if with_lines:
            for event in events:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event.time))
                lines.append(MessageLine(server, msgid, event.time, (
                    f"{stamp} {msgid} {'<=' if event.type is EventType.IN_PROGRESS else '=>'} {event.recipient} "
                    f"R={event.router} T={event.transport} H={event.remote_host} [{event.remote_ip}] "
                    f"X={event.tls} C=\"{event.response}\"")))
        produced += len(events)
        yield events, lines


async def fill(client: aioredis.Redis, settings: StoreSettings, count: int, *, seed: int = 1, span_days: float,
               with_lines: bool = False, batch: int = 2000, progress: bool = True,
               now: float | None = None) -> tuple[int, float]:
    """Writes ``count`` fleet events ending at ``now``; returns (events written, seconds)."""
    writer = RedisWriter(client, settings)
    now = time.time() if now is None else now
    pending: list[DeliveryEvent] = []
    pending_lines: list[MessageLine] = []
    written = 0
    started = time.perf_counter()
    for events, lines in fleet_events(count, seed + 1000, now - 60, span_days * 86400, with_lines=with_lines):
        pending += events
        pending_lines += lines
        if len(pending) >= batch:
            await writer.write(pending, pending_lines)
            written += len(pending)
            pending, pending_lines = [], []
            if progress and written % (batch * 50) < batch:
                rate = written / (time.perf_counter() - started)
                print(f"  {written:,} events, {rate:,.0f}/s", file=sys.stderr, flush=True)
    if pending:
        await writer.write(pending, pending_lines)
        written += len(pending)
    return written, time.perf_counter() - started


def start_redis(workdir: Path) -> RedisServer:
    server = RedisServer(workdir)
    server.start()
    return server


async def measure(url: str, args: argparse.Namespace) -> dict[str, object]:
    sync = redis.Redis.from_url(url)
    for name, value in (REDIS_DEFAULT_CONFIG if args.default_config else RECOMMENDED_CONFIG).items():
        sync.config_set(name, value)
    client = aioredis.Redis.from_url(url)
    prefix = args.prefix or "tdbench"
    settings = StoreSettings(prefix=prefix)
    before = int(sync.info("memory")["used_memory"])
    span_days = args.days or max(args.events / DESIGN_RATE_PER_DAY, 0.05)
    written, seconds = await fill(client, settings, args.events, span_days=span_days, with_lines=args.lines)
    after = int(sync.info("memory")["used_memory"])
    keys = int(sync.dbsize())
    await client.aclose()
    encodings: dict[str, int] = {}
    for key in sync.scan_iter(match=f"{prefix}:x:*".encode(), count=5000):
        encoding = sync.object("encoding", key)
        encodings[encoding.decode() if isinstance(encoding, bytes) else str(encoding)] = (
            encodings.get(encoding.decode() if isinstance(encoding, bytes) else str(encoding), 0) + 1
        )
    sync.close()
    return {
        "bench": "redis_memory",
        "events": written,
        "bytes_per_event": round((after - before) / written, 1),
        "target": 600,
        "used_memory_bytes": after - before,
        "keys": keys,
        "index_key_encodings": encodings,
        "span_days": round(span_days, 2),
        "with_lines": args.lines,
        "config": "default" if args.default_config else RECOMMENDED_CONFIG,
        "write_events_per_s": round(written / seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=None, help="time span of the events (default: design rate)")
    parser.add_argument("--lines", action="store_true", help="also store one raw log line per event")
    parser.add_argument("--default-config", action="store_true", help="keep Redis' default listpack limits")
    parser.add_argument("--prefix", default=None)
    args = parser.parse_args()
    url = os.environ.get("REDIS_URL")
    server = None
    workdir = tempfile.TemporaryDirectory(prefix="redis-memory-")
    if url is None:
        server = start_redis(Path(workdir.name))
        url = server.url
    try:
        result = asyncio.run(measure(url, args))
    finally:
        if server is not None:
            server.stop()
        workdir.cleanup()
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
