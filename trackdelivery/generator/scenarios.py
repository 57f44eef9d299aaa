"""One server's mail traffic, simulated in time order and written as Exim main-log lines.

Every message is a small state machine: its reception is written when it arrives and its delivery
attempts are scheduled on a heap of future steps (so lines of concurrent messages interleave in time
order, and a deferred recipient retries on Exim's default retry schedule). A message's truth rows are
written when it has no recipient left to deliver.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from trackdelivery.events import EventType, Reason
from trackdelivery.generator import content
from trackdelivery.generator.fastrandom import FastRandom
from trackdelivery.generator.fleet import Account, Mailbox, RemoteDomain, Server, World, site_sender
from trackdelivery.generator.ids import MessageIdFactory, new_format_id, old_format_id
from trackdelivery.generator.responses import BY_KEY, Response
from trackdelivery.generator.timefmt import format_time
from trackdelivery.generator.truth import TruthWriter

# Exim's default retry rule: F,2h,15m; G,16h,1h,1.5; F,4d,6h (times from the first failure).
RETRY_FIXED_UNTIL = 2 * 3600
RETRY_FIXED_GAP = 15 * 60
RETRY_GEOMETRIC_UNTIL = 16 * 3600
RETRY_GEOMETRIC_FIRST = 3600
RETRY_LATE_GAP = 6 * 3600
RETRY_GIVE_UP = 4 * 86400
#: a queue runner picks a due message up this late at most (the test allows the same slack)
RETRY_PICKUP_MAX = 240


def next_retry_gap(elapsed: int, last_gap: int) -> int:
    """Seconds to the next retry after a failure ``elapsed`` seconds after the first one."""
    if elapsed < RETRY_FIXED_UNTIL:
        return RETRY_FIXED_GAP
    if elapsed < RETRY_GEOMETRIC_UNTIL:
        return max(RETRY_GEOMETRIC_FIRST, last_gap * 3 // 2)
    return RETRY_LATE_GAP


# Line kinds counted in the manifest (same names as processors.exim.types.LineKind values).
ARRIVAL = "arrival"
DELIVERY = "delivery"
DELIVERY_MORE = "delivery_more"
DEFERRAL = "deferral"
FAILURE = "failure"
COMPLETED = "completed"
FROZEN = "frozen"
HOST_ERROR = "host_error"
REJECTION = "rejection"
SPAM_SCORE = "spam_score"
SENDER_IDENT = "sender_identification"
CONNECTION_OUTBOUND = "connection_outbound"
CONNECTION = "connection"
QUEUE_RUN = "queue_run"
ARGUMENTS = "arguments"
MESSAGE_INFO = "message_info"
CANCELLED = "cancelled"

# Recipient fates, drawn when the message arrives.
OK, BOUNCE, DEFER_THEN_OK, DEFER_FOREVER, EXPIRE_NOW = range(5)
# Outcomes of one attempt.
DELIVER, DEFER, FAIL, EXPIRE = range(4)

REMOTE_ROUTE = "R=dkim_lookuphost T=dkim_remote_smtp"
LOCAL_ROUTE = "R=virtual_user T=dovecot_virtual_delivery"
SPAM_ROUTE = "R=virtual_user_spam T=virtual_userdelivery_spam"
_PHASE_AFTER = {
    "rcpt": "RCPT TO:<{rcpt}>",
    "end_of_data": "end of data",
    "data": "DATA",
    "connect": "initial connection",
}

# cPanel email archiving (WHM/cPanel "Archive"): an ``unseen`` router per direction hands every message to an
# appendfile transport that files it under ~/mail/archive/<domain>/.<direction>.<date>/; the transport names
# are the ones cPanel's Cpanel::Email::Message::Retrieve knows. Like every unseen-router copy (Exim test
# suite 0225/0252), the copy is logged as ``local_part <address>``, and the copy made through a local
# transport is logged after the address's own local delivery but before its remote one (Exim does local
# deliveries first).
ARCHIVE_IN_ROUTE = "R=archiver_incoming_domain_method T=archiver_incoming_domain_method"
ARCHIVE_OUT_ROUTE = "R=archiver_outgoing T=archiver_outgoing"
#: share of accounts with archiving on (each of its domains, one or both directions)
ARCHIVE_ACCOUNT_SHARE = 0.05
# An administrator removes (exim -Mrm) some messages from the queue: this share of the messages frozen as
# spam by the system filter, of the frozen bounces, and of the messages still deferred a day after arrival.
REMOVE_FROZEN_SPAM_SHARE = 0.4
REMOVE_FROZEN_BOUNCE_SHARE = 0.3
REMOVE_LONG_DEFERRED_SHARE = 0.2
REMOVE_AFTER_DEFERRED = 86400
CLEAR_FROZEN_WINDOW_SHARE = 0.25  # of the messages a frozen-queue incident held, removed after it

_R = BY_KEY
_FILTER_TARGET_TYPES = {"devnull": EventType.FILTERED, "blackhole": EventType.FILTERED}


class LogSink(Protocol):
    def write(self, text: str, /) -> Any: ...

    def flush(self) -> Any: ...


@dataclass(slots=True)
class Incident:
    start: int
    end: int
    provider: str  # gmail, yahoo, microsoft, other
    response: Response


class Recipient:
    __slots__ = (
        "address",
        "attempts",
        "bounce_msgid",
        "cause",
        "defers",
        "fate",
        "fate_n",
        "fate_response",
        "field",
        "first_fail",
        "last_gap",
        "last_response",
        "listed",
        "local",
        "mailbox",
        "original",
        "reason",
        "remote",
        "state",
        "time",
    )

    def __init__(self, listed: str) -> None:
        self.listed = listed
        self.address = listed
        self.original: str | None = None
        self.field = listed  # the address part of its delivery lines
        self.local = False
        self.mailbox: Mailbox | None = None
        self.remote: RemoteDomain | None = None
        self.fate = OK
        self.fate_response: Response | None = None
        self.fate_n = 0
        self.defers = 0
        self.attempts = 0
        self.first_fail: int | None = None
        self.last_gap = 0
        self.last_response: Response | None = None
        self.state: EventType | None = None
        self.reason: Reason | None = None
        self.cause: Reason | None = None
        self.bounce_msgid: str | None = None
        self.time = 0


class Message:
    __slots__ = (
        "archive_out",
        "arrival",
        "cpanel_user",
        "delay_warned",
        "frozen",
        "msgid",
        "open",
        "parent",
        "pid",
        "rcpts",
        "removal_drawn",
        "removed",
        "sender",
        "sender_domain",
        "size",
        "spammy",
    )

    def __init__(self, msgid: str, pid: int, arrival: int, sender: str, cpanel_user: str | None) -> None:
        self.msgid = msgid
        self.pid = pid
        self.arrival = arrival
        self.sender = sender
        self.sender_domain = sender.rpartition("@")[2] if sender else ""
        self.cpanel_user = cpanel_user
        self.rcpts: list[Recipient] = []
        self.open = 0
        self.parent: str | None = None
        self.size = 0
        self.frozen = False
        self.delay_warned = False
        self.spammy = False
        self.archive_out = False  # its sender's domain archives outgoing mail and it has had no delivery run yet
        self.removed = False  # removed from the queue by an administrator
        self.removal_drawn = False


class ServerSim:
    """Writes one server's log lines and truth rows, in time order."""

    def __init__(
        self,
        server: Server,
        world: World,
        rng: random.Random,
        log: LogSink,
        truth: TruthWriter,
        incidents: list[Incident],
        send_limits: dict[str, int],
        side_rng: random.Random | None = None,
    ) -> None:
        self.server = server
        self.world = world
        self.rng = rng
        self.log = log
        self.truth = truth
        self.incidents = incidents
        self.send_limits = send_limits
        self.ids = MessageIdFactory(rng, server.new_ids)
        self.heap: list[tuple[int, int, Callable[[int, Any], None], Any]] = []
        self.seq = itertools.count()
        self.open_messages: dict[str, Message] = {}
        self.counts: dict[str, int] = {}
        self.lines = 0
        self.messages = 0
        self.rejections = 0
        self.now = 0
        self._out: list[str] = []
        self._ts_time = -1
        self._ts_text = ""
        self._tz = " +0000" if server.log_timezone else ""
        self._log_pid = server.log_pid
        self._hour_counts: dict[str, tuple[int, int]] = {}
        self._conn_count = 0
        self._queue_pid = rng.randrange(2000, 400000)
        self._accounts = server.accounts
        self._mailboxes = server.mailboxes
        self._people = [box for box in server.mailboxes if box.filtered is None and box.forward_to is None]
        if not self._people:
            self._people = list(server.mailboxes)
        self._ip = server.ip
        self._sep = " : " if server.spaced_separator else ": "
        self._long = server.long_selector
        #: (start, end, share): arrivals in the window are frozen by the system filter with that probability
        self.frozen_window: tuple[int, int, float] | None = None
        self._frozen_by_window: list[Message] = []  # frozen by the window, oldest first, until it is cleared
        self.tail_start = 1 << 62  # arrivals after this are often queued, so the log ends with some in progress
        self._dmarc_broken = {d for account in server.accounts if account.dmarc_broken for d in account.domains}
        # Archiving and administrators draw from an rng of their own, so the rest of the traffic is the same
        # line for line whether they are there or not.
        self.side_rng = side_rng if side_rng is not None else FastRandom(f"{server.name}:side")
        self.archive_in: set[str] = set()
        self.archive_out: set[str] = set()
        #: (account, incoming, outgoing) of the accounts with archiving on
        self.archiving: list[tuple[Account, bool, bool]] = []
        for account in server.accounts:
            if self.side_rng.random() < ARCHIVE_ACCOUNT_SHARE:
                roll = self.side_rng.random()
                incoming, outgoing = roll < 0.8, roll >= 0.3
                self.archiving.append((account, incoming, outgoing))
                if incoming:
                    self.archive_in.update(account.domains)
                if outgoing:
                    self.archive_out.update(account.domains)

    # ---- output -------------------------------------------------------------------------------

    def emit(self, t: int, pid: int, kind: str, body: str) -> None:
        if t != self._ts_time:
            self._ts_time = t
            self._ts_text = format_time(t) + self._tz
        if self._log_pid:
            self._out.append(f"{self._ts_text} [{pid}] {body}\n")
        else:
            self._out.append(f"{self._ts_text} {body}\n")
        counts = self.counts
        counts[kind] = counts.get(kind, 0) + 1
        if len(self._out) >= 4096:
            self.flush()

    def flush(self) -> None:
        if self._out:
            self.lines += len(self._out)
            self.log.write("".join(self._out))
            self._out.clear()
        self.log.flush()

    def pending_lines(self) -> int:
        return self.lines + len(self._out)

    # ---- scheduling ---------------------------------------------------------------------------

    def at(self, t: int, step: Callable[[int, Any], None], arg: Any = None) -> None:
        heapq.heappush(self.heap, (t, next(self.seq), step, arg))

    def run_until(self, t: int) -> None:
        heap = self.heap
        while heap and heap[0][0] <= t:
            when, _, step, arg = heapq.heappop(heap)
            self.now = when
            step(when, arg)
        self.now = max(self.now, t)

    def start_queue_runs(self, first: int) -> None:
        self.at(first, self._queue_run)

    def _queue_run(self, t: int, _: Any) -> None:
        self._queue_pid = self.rng.randrange(2000, 4_000_000)
        pid = self._queue_pid
        self.emit(t, pid, QUEUE_RUN, f"Start queue run: pid={pid}")
        self.at(t + self.rng.randint(1, 40), self._queue_run_end, pid)
        self.at(t + 3600, self._queue_run)

    def _queue_run_end(self, t: int, pid: int) -> None:
        self.emit(t, pid, QUEUE_RUN, f"End queue run: pid={pid}")

    # ---- arrivals -----------------------------------------------------------------------------

    def arrive(self, t: int, kind: str) -> None:
        """Start one message (or rejected connection) whose SMTP connection / invocation begins at ``t``."""
        self.messages += 1
        if kind == "inbound":
            self._inbound(t)
        elif kind == "auth":
            self._auth_submission(t, self.rng.choice(self._people), spam=False)
        elif kind == "local":
            self._local_submission(t)
        elif kind == "reject":
            self._rejected_connection(t)
        elif kind == "compromised":
            self._auth_submission(t, self._compromised_box, spam=True)
        elif kind == "newsletter":
            self._newsletter(t)
        else:  # pragma: no cover - kinds come from the fleet's mix
            raise ValueError(kind)

    _compromised_box: Mailbox

    def set_compromised(self, box: Mailbox) -> None:
        self._compromised_box = box

    def _port(self) -> int:
        return self.rng.randint(1024, 65535)

    def _connection_open(self, t: int, ip: str, port: int) -> int:
        self._conn_count = self._conn_count % 17 + 1
        pid = self.rng.randrange(2000, 4_000_000)
        self.emit(
            t, pid, CONNECTION, f"SMTP connection from [{ip}]:{port} (TCP/IP connection count = {self._conn_count})"
        )
        return pid

    def _remote_recipient(self, msg: Message, address: str, domain: RemoteDomain, spam: bool) -> Recipient:
        r = Recipient(address)
        r.remote = domain
        self._assign_remote_fate(r, msg, domain, spam)
        return r

    def _local_recipient(self, box: Mailbox) -> Recipient:
        r = Recipient(box.address)
        r.mailbox = box
        if box.forward_to is not None:
            domain = self._domain_of(box.forward_to)
            r.address = box.forward_to
            r.original = box.address
            r.field = f"{box.forward_to} <{box.address}>"
            r.remote = domain
        elif box.filtered == "devnull":
            r.local = True
            r.field = f"/dev/null ({box.address}) <{box.address}>"
        elif box.filtered == "blackhole":
            r.local = True
            r.field = f":blackhole: <{box.address}>"
        else:
            r.local = True
            r.field = f"{box.local_part} <{box.address}>"
            if box.quota_full:
                r.fate = BOUNCE
                r.fate_response = _R["local_quota"]
        return r

    def _domain_of(self, address: str) -> RemoteDomain:
        name = address.rpartition("@")[2]
        for domain, _ in self.world.big:
            if domain.name == name:
                return domain
        return self.world.gmail

    def _pick_recipients(self, msg: Message, count: int, local_share: float, spam: bool) -> None:
        rng = self.rng
        seen: set[str] = set()
        last_domain: RemoteDomain | None = None
        for _ in range(count):
            if rng.random() < local_share:
                box = rng.choice(self._mailboxes)
                if box.address in seen:
                    continue
                seen.add(box.address)
                r = self._local_recipient(box)
                if r.remote is not None:
                    self._assign_remote_fate(r, msg, r.remote, spam)
            else:
                if rng.random() < 0.004:
                    typo = rng.choice(self.world.typo_domains)
                    address = f"{rng.choice(('info', 'john', 'sales'))}{rng.randint(1, 99)}@{typo}"
                    if address in seen:
                        continue
                    seen.add(address)
                    r = Recipient(address)
                    r.remote = RemoteDomain(typo, "other", ())
                    r.fate = BOUNCE
                    r.fate_response = _R["unrouteable"]
                else:
                    domain = last_domain if last_domain is not None and rng.random() < 0.35 else None
                    domain = domain or self.world.pick_remote_domain(rng)
                    last_domain = domain
                    address = self.world.remote_address(rng, domain)
                    if address in seen:
                        continue
                    seen.add(address)
                    r = self._remote_recipient(msg, address, domain, spam)
            msg.rcpts.append(r)
        if not msg.rcpts:
            box = rng.choice(self._people)
            msg.rcpts.append(self._local_recipient(box))

    def _assign_remote_fate(self, r: Recipient, msg: Message, domain: RemoteDomain, spam: bool) -> None:
        rng = self.rng
        roll = rng.random()
        provider = domain.provider
        if spam:
            # a compromised account mails harvested and made-up addresses
            if roll < 0.35:
                r.fate = BOUNCE
                r.fate_response = _R[
                    {
                        "gmail": "gmail_unknown_user",
                        "yahoo": "yahoo_unknown_user",
                        "microsoft": "microsoft_unknown_user",
                    }.get(provider, "postfix_unknown_user")
                ]
                return
            if roll < 0.5 and provider == "gmail":
                r.fate = BOUNCE
                r.fate_response = _R["gmail_spam_content"]
                return
            if roll < 0.55 and provider == "other":
                r.fate = BOUNCE
                r.fate_response = _R["remote_spam_content"]
                return
            roll = rng.random()
        if domain.long_dead:
            r.fate = EXPIRE_NOW
            return
        if domain.dead:
            r.fate = DEFER_FOREVER
            r.fate_response = _R[
                rng.choice(("connection_timed_out", "connection_timed_out", "connection_refused", "no_route_to_host"))
            ]
            return
        if domain.relay_denied:
            r.fate = BOUNCE
            r.fate_response = _R["remote_relay_denied"]
            return
        if domain.greylists and roll < 0.6:
            r.fate = DEFER_THEN_OK
            r.fate_n = 1
            r.fate_response = _R[rng.choice(("greylist_4_7_1", "greylist_postgrey"))]
            return
        if roll < 0.02:
            r.fate = BOUNCE
            r.fate_response = _R[
                {
                    "gmail": "gmail_unknown_user",
                    "yahoo": "yahoo_unknown_user",
                    "microsoft": "microsoft_unknown_user",
                }.get(provider, rng.choice(("postfix_unknown_user", "cpanel_remote_no_such_user")))
            ]
            return
        if msg.cpanel_user is not None and msg.sender_domain in self._dmarc_broken:
            if provider == "gmail" and roll < 0.3:
                r.fate = BOUNCE
                r.fate_response = _R[rng.choice(("gmail_dmarc", "gmail_unauthenticated"))]
                return
            if provider == "microsoft" and roll < 0.2:
                r.fate = BOUNCE
                r.fate_response = _R["microsoft_auth_level"]
                return
        if roll > 0.975:
            self._rare_fate(r, provider, rng.random())

    def _rare_fate(self, r: Recipient, provider: str, roll: float) -> None:
        rng = self.rng
        if provider == "gmail":
            if roll < 0.4:
                r.fate = DEFER_THEN_OK if rng.random() < 0.7 else DEFER_FOREVER
                r.fate_n = rng.randint(1, 6)
                r.fate_response = _R["gmail_mailbox_full"]
            elif roll < 0.6:
                r.fate, r.fate_n, r.fate_response = DEFER_THEN_OK, rng.randint(1, 3), _R["gmail_receiving_rate"]
            elif roll < 0.8:
                r.fate, r.fate_n, r.fate_response = DEFER_THEN_OK, rng.randint(1, 4), _R["gmail_low_domain_reputation"]
            else:
                r.fate, r.fate_response = BOUNCE, _R["gmail_too_large"]
        elif provider == "yahoo":
            if roll < 0.6:
                r.fate, r.fate_n, r.fate_response = DEFER_THEN_OK, rng.randint(1, 3), _R["yahoo_tss04"]
            else:
                r.fate, r.fate_response = BOUNCE, _R["yahoo_disabled"]
        elif provider == "microsoft":
            if roll < 0.7:
                r.fate, r.fate_n, r.fate_response = DEFER_THEN_OK, rng.randint(1, 3), _R["microsoft_rate_limited"]
            else:
                r.fate, r.fate_response = BOUNCE, _R["microsoft_s3150"]
        else:
            key = rng.choice(
                (
                    "remote_mailbox_full_perm",
                    "remote_mailbox_full_temp",
                    "remote_busy",
                    "remote_queue_error",
                    "remote_too_many_connections",
                    "connection_refused",
                    "dns_defer",
                    "remote_too_large",
                    "remote_virus",
                    "remote_spam_content",
                )
            )
            response = _R[key]
            r.fate_response = response
            if response.permanent:
                r.fate = BOUNCE
            elif key == "remote_mailbox_full_temp" and rng.random() < 0.4:
                r.fate = DEFER_FOREVER
            else:
                r.fate, r.fate_n = DEFER_THEN_OK, rng.randint(1, 4)

    def _size(self) -> int:
        return min(int(self.rng.lognormvariate(8.6, 1.1)) + 600, 40_000_000)

    def _new_message(self, t: int, sender: str, cpanel_user: str | None) -> Message:
        msgid, pid = self.ids.arrival(t)
        msg = Message(msgid, pid, t, sender, cpanel_user)
        msg.size = self._size()
        return msg

    def _for_list(self, msg: Message) -> str:
        return " ".join(r.listed for r in msg.rcpts)

    def _auth_submission(self, t: int, box: Mailbox, spam: bool) -> None:
        rng = self.rng
        if spam:
            ip = self.world.client_ip(rng)
            helo = rng.choice(content.SPAMMER_HELOS)
        else:
            ip = box.home_ip if rng.random() < 0.7 else self.world.client_ip(rng)
            helo = rng.choice(content.CLIENT_HELOS)
        port = self._port()
        self._connection_open(t, ip, port)
        self.at(t + rng.randint(0, 2), self._auth_reception, (box, ip, port, helo, spam))

    def _auth_reception(self, t: int, arg: tuple[Mailbox, str, int, str, bool]) -> None:
        box, ip, port, helo, spam = arg
        rng = self.rng
        msg = self._new_message(t, box.address, box.cpanel_user)
        msg.spammy = spam
        roll = rng.random()
        count = 1 if roll < 0.75 else rng.randint(2, 4) if roll < 0.95 else rng.randint(5, 10)
        if spam:
            count = rng.randint(1, 3)
        self._pick_recipients(msg, count, 0.0 if spam else 0.12, spam)
        subject = content.subject(rng, content.SPAM_SUBJECTS if spam else content.PERSONAL_SUBJECTS)
        host = f"({helo}) [{ip}]:{port}"
        mid = msg.msgid
        score = round(rng.uniform(-1.5, 2.5) if not spam else rng.uniform(3.0, 9.0), 1)
        verdict = "spam" if score >= 5.0 else "NOT spam"
        sa_line = (
            f'{mid} H={host} Warning: "SpamAssassin as cpaneleximscanner detected OUTGOING smtp message '
            f'as {verdict} ({score})"'
        )
        sa_first = rng.random() < 0.85
        if sa_first:
            self.emit(t, msg.pid, SPAM_SCORE, sa_line)
        auth = rng.choice(content.AUTHENTICATORS)
        tls = rng.choice(content.TLS_INBOUND)
        msg_id_header = f"{rng.getrandbits(64):016x}@{box.domain}"
        self.emit(
            t,
            msg.pid,
            ARRIVAL,
            f"{mid} <= {box.address} H={host} P=esmtpsa X={tls} CV=no A={auth}:{box.address} S={msg.size} "
            f'id={msg_id_header} T="{subject}" for {self._for_list(msg)}',
        )
        if not sa_first:
            self.emit(t, msg.pid, SPAM_SCORE, sa_line)
        self._count_outbound(t, msg)
        self.at(t + rng.randint(1, 3), self._connection_closed, (ip, port, helo, msg.pid, rng.randint(1, 9)))
        self._accept(t, msg)

    def _connection_closed(self, t: int, arg: tuple[str, int, str, int, int]) -> None:
        ip, port, helo, pid, duration = arg
        self.emit(t, pid, CONNECTION, f"SMTP connection from ({helo}) [{ip}]:{port} D={duration}s closed by QUIT")

    def _count_outbound(self, t: int, msg: Message) -> None:
        """cPanel's per-recipient send-limit accounting line."""
        for r in msg.rcpts:
            if r.remote is not None:
                self.emit(
                    t,
                    msg.pid,
                    CONNECTION_OUTBOUND,
                    f"{msg.msgid} SMTP connection outbound {t} {msg.msgid} {msg.sender_domain} {r.address}",
                )

    def _local_submission(self, t: int) -> None:
        rng = self.rng
        account = rng.choice(self._accounts)
        sender, domain = site_sender(rng, account)
        msg = self._new_message(t, sender, account.cpanel_user)
        roll = rng.random()
        if roll < 0.45:
            # contact form to the site owner
            owners = [box for box in account.mailboxes if box.filtered is None] or account.mailboxes
            msg.rcpts.append(self._local_recipient(rng.choice(owners)))
            r = msg.rcpts[0]
            if r.remote is not None:
                self._assign_remote_fate(r, msg, r.remote, False)
        else:
            self._pick_recipients(msg, 1 if roll < 0.95 else rng.randint(2, 3), 0.05, False)
        self._write_local_arrival(t, msg, account, domain, content.SITE_SUBJECTS, rng.choice(content.SITE_CWDS))
        self._accept(t, msg)

    def _write_local_arrival(
        self, t: int, msg: Message, account: Account, domain: str, subjects: tuple[str, ...], cwd: str
    ) -> None:
        rng = self.rng
        user = account.cpanel_user
        home = f"/home/{user}/{cwd}".rstrip("/")
        if rng.random() < 0.7:
            args = "3 args: /usr/sbin/sendmail -t -i"
        else:
            args = f"4 args: /usr/sbin/sendmail -t -i -f{msg.sender}"
        self.emit(t, msg.pid, ARGUMENTS, f"cwd={home} {args}")
        subject = content.subject(rng, subjects)
        self.emit(
            t,
            msg.pid,
            ARRIVAL,
            f"{msg.msgid} <= {msg.sender} U={user} P=local S={msg.size} id={rng.getrandbits(80):020x}@{domain} "
            f'T="{subject}" for {self._for_list(msg)}',
        )
        self.emit(t, msg.pid, SENDER_IDENT, f"{msg.msgid} Sender identification U={user} D={domain} S={user}")
        self._count_outbound(t, msg)

    def _newsletter(self, t: int) -> None:
        rng = self.rng
        account = self._newsletter_account
        domain = account.domains[0]
        msg = self._new_message(t, f"news@{domain}", account.cpanel_user)
        count = rng.randint(10, 30)
        seen: set[str] = set()
        for _ in range(count):
            target = self.world.gmail if rng.random() < 0.55 else self.world.pick_remote_domain(rng)
            address = self.world.remote_address(rng, target)
            if address not in seen:
                seen.add(address)
                msg.rcpts.append(self._remote_recipient(msg, address, target, False))
        self._write_local_arrival(t, msg, account, domain, content.NEWSLETTER_SUBJECTS, "public_html/newsletter")
        self._accept(t, msg)

    _newsletter_account: Account

    def set_newsletter_account(self, account: Account) -> None:
        self._newsletter_account = account

    def _inbound(self, t: int) -> None:
        rng = self.rng
        sender, host, ip, helo = self.world.remote_sender(rng)
        port = self._port()
        pid = self._connection_open(t, ip, port)
        self.at(t + rng.randint(0, 3), self._inbound_reception, (sender, host, ip, helo, port, pid))

    def _inbound_reception(self, t: int, arg: tuple[str, str, str, str, int, int]) -> None:
        sender, host, ip, helo, port, conn_pid = arg
        rng = self.rng
        client = f"{host} [{ip}]:{port}" if helo == host else f"{host} ({helo}) [{ip}]:{port}"
        if rng.random() < 0.06:
            box = rng.choice(self._mailboxes)
            ghost = (
                f"{rng.choice(('admin', 'test', 'webmaster', 'postmaster1', 'mail'))}{rng.randint(1, 9)}@{box.domain}"
            )
            self.rejections += 1
            self.emit(t, conn_pid, REJECTION, f"H={client} F=<{sender}> rejected RCPT <{ghost}>: No Such User Here")
            self._rejection_truth(t, ghost, sender, _R["reject_no_such_user"])
        msg = self._new_message(t, sender, None)
        count = 1 if rng.random() < 0.85 else rng.randint(2, 3)
        seen: set[str] = set()
        for _ in range(count):
            box = rng.choice(self._mailboxes)
            if box.address not in seen:
                seen.add(box.address)
                r = self._local_recipient(box)
                if r.remote is not None:
                    self._assign_remote_fate(r, msg, r.remote, False)
                msg.rcpts.append(r)
        first = msg.rcpts[0].mailbox
        cpuser = first.cpanel_user if first is not None else "cpaneleximscanner"
        score = round(rng.uniform(-2.0, 4.5) if rng.random() < 0.85 else rng.uniform(5.0, 25.0), 1)
        msg.spammy = score >= 5.0
        verdict = "spam" if msg.spammy else "NOT spam"
        sa_line = f'{msg.msgid} H={client} Warning: "SpamAssassin as {cpuser} detected message as {verdict} ({score})"'
        sa_first = rng.random() < 0.85
        if sa_first:
            self.emit(t, msg.pid, SPAM_SCORE, sa_line)
        tls_part = f" X={rng.choice(content.TLS_INBOUND)} CV=no" if rng.random() < 0.85 else ""
        proto = "esmtps" if tls_part else "esmtp"
        interface = f" I=[{self._ip}]:25" if self._long else ""
        sender_domain = sender.rpartition("@")[2]
        dkim = f" DKIM={sender_domain}" if rng.random() < 0.7 else ""
        subject = content.subject(rng, content.SPAM_SUBJECTS if msg.spammy else content.INBOUND_SUBJECTS)
        self.emit(
            t,
            msg.pid,
            ARRIVAL,
            f"{msg.msgid} <= {sender} H={client}{interface} P={proto}{tls_part} S={msg.size}{dkim} "
            f'id={rng.getrandbits(64):x}.{rng.getrandbits(32):x}@{sender_domain} T="{subject}" '
            f"for {self._for_list(msg)}",
        )
        if not sa_first:
            self.emit(t, msg.pid, SPAM_SCORE, sa_line)
        self.at(t + rng.randint(0, 2), self._connection_closed_named, (client, conn_pid, rng.randint(1, 12)))
        self._accept(t, msg)

    def _connection_closed_named(self, t: int, arg: tuple[str, int, int]) -> None:
        client, pid, duration = arg
        self.emit(t, pid, CONNECTION, f"SMTP connection from {client} D={duration}s closed by QUIT")

    def _rejected_connection(self, t: int) -> None:
        rng = self.rng
        ip = self.world.client_ip(rng)
        port = self._port()
        pid = self._connection_open(t, ip, port)
        self.at(t + rng.randint(0, 4), self._rejection_step, (ip, port, pid))

    def _rejection_step(self, t: int, arg: tuple[str, int, int]) -> None:
        ip, port, pid = arg
        rng = self.rng
        helo = rng.choice(content.SPAMMER_HELOS)
        client = f"({helo}) [{ip}]:{port}"
        roll = rng.random()
        local = rng.choice(("info", "admin", "noreply", "support"))
        sender = f"{local}{rng.randint(1, 999)}@{rng.choice(self.world.others).name}"
        for _ in range(1 if rng.random() < 0.8 else rng.randint(2, 4)):
            if roll < 0.55:
                box = rng.choice(self._mailboxes)
                rcpt = box.address
                response = _R[rng.choice(("reject_rbl_spamhaus", "reject_rbl_spamhaus", "reject_rbl_spamcop"))]
            elif roll < 0.75:
                rcpt = self.world.remote_address(rng)
                response = _R["reject_relay"]
            elif roll < 0.9:
                box = rng.choice(self._mailboxes)
                rcpt = f"{rng.choice(('sales', 'hr', 'ceo', 'accounts'))}{rng.randint(1, 99)}@{box.domain}"
                response = _R["reject_no_such_user"]
            else:
                box = rng.choice(self._mailboxes)
                rcpt = box.address
                response = _R["reject_sender_verify"]
            text = response.render({"client": client, "client_ip": ip})
            self.rejections += 1
            self.emit(t, pid, REJECTION, f"H={client} F=<{sender}> rejected RCPT <{rcpt}>: {text}")
            self._rejection_truth(t, rcpt, sender, response)
        how = "closed by QUIT" if rng.random() < 0.5 else "lost"
        self.emit(t + 0, pid, CONNECTION, f"SMTP connection from {client} D={rng.randint(0, 5)}s {how}")

    def _rejection_truth(self, t: int, rcpt: str, sender: str, response: Response) -> None:
        self.truth.write(
            {
                "server": self.server.name,
                "msgid": None,
                "recipient": rcpt,
                "original_recipient": None,
                "final": "rejected",
                "reason": response.reason.value,
                "cause": None,
                "attempts": 0,
                "sender": sender,
                "cpanel_user": None,
                "bounce_msgid": None,
                "parent_msgid": None,
                "time": t,
            }
        )

    # ---- delivery -----------------------------------------------------------------------------

    def _accept(self, t: int, msg: Message) -> None:
        msg.open = len(msg.rcpts)
        for r in msg.rcpts:
            r.time = t
        self.open_messages[msg.msgid] = msg
        msg.archive_out = msg.cpanel_user is not None and msg.sender_domain in self.archive_out
        rng = self.rng
        spam_frozen = False
        if not msg.spammy and (rng.random() < 0.012 or (t >= self.tail_start and rng.random() < 0.3)):
            # held back by load: delivered by a later queue run
            self.emit(
                t, msg.pid, MESSAGE_INFO, f"{msg.msgid} no immediate delivery: load average {rng.uniform(8, 30):.2f}"
            )
            self.at(t + rng.randint(600, 3600), self._delivery_run, (msg, msg.rcpts))
        elif (spam_frozen := msg.spammy and rng.random() < 0.03) or self._frozen_queue(t):
            self.emit(t, msg.pid, FROZEN, f"{msg.msgid} Frozen by the system filter: message looks like spam")
            self._freeze(t, msg)
            if spam_frozen and self.side_rng.random() < REMOVE_FROZEN_SPAM_SHARE:
                # the admin clears the spam out of the frozen queue later that day
                self.at(t + self.side_rng.randint(600, 18 * 3600), self._admin_remove, msg)
            elif not spam_frozen and self.frozen_window is not None:
                if not self._frozen_by_window:
                    self.at(self.frozen_window[1] + self.side_rng.randint(600, 3600), self._clear_frozen_window)
                self._frozen_by_window.append(msg)
        else:
            self.at(t + (0 if rng.random() < 0.6 else rng.randint(1, 2)), self._delivery_run, (msg, msg.rcpts))

    def _clear_frozen_window(self, t: int, _: Any = None) -> None:
        """After a frozen-queue incident the administrator deletes the oldest share of what the filter held."""
        held, self._frozen_by_window = self._frozen_by_window, []
        for msg in held[: max(1, math.ceil(len(held) * CLEAR_FROZEN_WINDOW_SHARE))]:
            self.at(t, self._admin_remove, msg)
            t += self.side_rng.randint(1, 20)

    def _frozen_queue(self, t: int) -> bool:
        window = self.frozen_window
        return window is not None and window[0] <= t < window[1] and self.rng.random() < window[2]

    def _attempt(self, t: int, msg: Message, r: Recipient) -> tuple[int, Response | None]:
        if r.local:
            if r.fate == BOUNCE:
                return FAIL, r.fate_response
            return DELIVER, None
        if r.fate == EXPIRE_NOW:
            return EXPIRE, _R["all_hosts_failing"]
        limit = self.send_limits.get(msg.sender_domain) if msg.cpanel_user is not None else None
        if limit is not None:
            hour = t // 3600
            counted_hour, count = self._hour_counts.get(msg.sender_domain, (hour, 0))
            if counted_hour != hour:
                count = 0
            if count >= limit:
                return DEFER, _R["cpanel_max_emails_per_hour"]
            self._hour_counts[msg.sender_domain] = (hour, count + 1)
        domain = r.remote
        if domain is not None and self.incidents:
            provider = domain.provider
            for incident in self.incidents:
                if incident.start <= t < incident.end and incident.provider == provider:
                    response = incident.response
                    return (FAIL if response.permanent else DEFER), response
        fate = r.fate
        if fate == OK:
            return DELIVER, None
        if fate == BOUNCE:
            return FAIL, r.fate_response
        if fate == DEFER_THEN_OK and r.defers >= r.fate_n:
            return DELIVER, None
        return DEFER, r.fate_response

    def _delivery_run(self, t: int, arg: tuple[Message, list[Recipient]]) -> None:
        msg, rcpts = arg
        if msg.frozen or msg.removed:
            return
        pid = msg.pid + 1 if t - msg.arrival < 10 else self._queue_pid
        delivered_groups: dict[str, list[Recipient]] = {}
        deferred: list[tuple[Recipient, Response]] = []
        failed: list[Recipient] = []
        sender_values: dict[str, str] | None = None
        outcomes = []
        for r in rcpts:
            outcome, response = self._attempt(t, msg, r)
            if outcome == DEFER and r.first_fail is not None and t - r.first_fail >= RETRY_GIVE_UP:
                outcome, response = EXPIRE, _R["retry_timeout_exceeded"]
            outcomes.append((r, outcome, response))
        if msg.archive_out:
            msg.archive_out = False
            self._archive_outgoing(t, pid, msg, outcomes)
        for r, outcome, response in outcomes:
            if outcome == DELIVER:
                key = "local" if r.local else (r.remote.name if r.remote is not None else "")
                delivered_groups.setdefault(key, []).append(r)
                continue
            assert response is not None
            if sender_values is None:
                sender_values = self._values(msg)
            if outcome == DEFER:
                self._write_deferral(t, pid, msg, r, response, sender_values)
                deferred.append((r, response))
            elif outcome == FAIL:
                self._write_failure(t, pid, msg, r, response, sender_values)
                failed.append(r)
            else:
                self._write_expiry(t, pid, msg, r, response)
                failed.append(r)
        for key, group in delivered_groups.items():
            if key == "local":
                for r in group:
                    self._write_local_delivery(t, pid, msg, r)
                if self.archive_in:
                    self._archive_incoming(t, pid, msg, group)
            else:
                self._write_remote_delivery(t, pid, msg, group)
        if deferred:
            self._schedule_retries(t, msg, deferred)
        if failed and msg.sender:
            self._bounce(t, msg, failed)
        elif failed and msg.parent is not None and not msg.frozen:
            self.emit(t, pid, FROZEN, f"{msg.msgid} Frozen (delivery error message)")
            self._freeze(t, msg)
            if self.side_rng.random() < REMOVE_FROZEN_BOUNCE_SHARE:
                self.at(t + self.side_rng.randint(600, 2 * 86400), self._admin_remove, msg)
        if msg.open == 0 and not msg.frozen:
            self.emit(t, pid, COMPLETED, f"{msg.msgid} Completed")
            self._finish(msg)

    def _values(self, msg: Message) -> dict[str, str]:
        rng = self.rng
        return {
            "ip": self._ip,
            "sender": msg.sender,
            "sdomain": msg.sender_domain or self.server.name,
            "gid": f"{rng.getrandbits(48):012x}-{rng.getrandbits(40):010x}si{rng.randint(1000000, 9999999)}ad."
            f"{rng.randint(1, 999)}",
            "mxid": f"{rng.choice(('AM4PEPF', 'DB5PEPF', 'SN1PEPF', 'BN8NAM'))}{rng.getrandbits(36):09X}."
            f"{rng.choice(('eurprd04', 'namprd02', 'eurprd03', 'namprd11'))}.prod.outlook.com "
            f"{format_time(msg.arrival).replace(' ', 'T')}.{rng.randint(100, 999)}Z "
            f"{rng.getrandbits(64):016X}",
            "n": "0",
            "limit": "0",
            "pct": "0",
            "when": "",
            "rcpt": "",
            "domain": "",
        }

    # ---- archiving and administrators --------------------------------------------------------

    def _write_archive_copy(self, t: int, pid: int, msg: Message, r: Recipient, address: str, route: str) -> None:
        field = f"{address.partition('@')[0]} <{address}>"
        if self._long:
            field += f" F=<{msg.sender}>"
        self.emit(t, pid, DELIVERY, f"{msg.msgid} => {field} {route}")
        r.attempts += 1
        r.time = t

    def _archive_incoming(self, t: int, pid: int, msg: Message, delivered: list[Recipient]) -> None:
        """The archive copies of mail just delivered (or filtered) into mailboxes of archiving domains.

        The copy is logged after the mailbox delivery, so it is the recipient's last line: its final state."""
        for r in delivered:
            box = r.mailbox
            if box is not None and box.domain in self.archive_in:
                self._write_archive_copy(t, pid, msg, r, box.address, ARCHIVE_IN_ROUTE)
                r.state = EventType.ARCHIVED
                r.reason = None

    def _archive_outgoing(
        self, t: int, pid: int, msg: Message, outcomes: list[tuple[Recipient, int, Response | None]]
    ) -> None:
        """The archive copies of mail an archiving domain sends out, logged before the remote outcomes.

        Exim records the copy as delivered, so it is made once, on the first delivery run, whatever the
        remote outcome of that run: a deferred recipient goes on being retried after its copy."""
        for r, outcome, _ in outcomes:
            if r.mailbox is None and r.remote is not None and outcome in (DELIVER, FAIL, DEFER):
                self._write_archive_copy(t, pid, msg, r, r.address, ARCHIVE_OUT_ROUTE)

    def _maybe_schedule_removal(self, t: int, msg: Message) -> None:
        """A message still deferred a day after its arrival: now and then an administrator deletes it."""
        if msg.removal_drawn or t - msg.arrival < REMOVE_AFTER_DEFERRED:
            return
        msg.removal_drawn = True
        side = self.side_rng
        if side.random() < REMOVE_LONG_DEFERRED_SHARE:
            self.at(t + side.randint(600, 86400), self._admin_remove, msg)

    def _admin_remove(self, t: int, msg: Message) -> None:
        """``exim -Mrm``: Exim logs "removed by <user>" and "Completed"; recipients without an outcome are
        cancelled."""
        if msg.removed or (not msg.frozen and msg.msgid not in self.open_messages):
            return  # it was delivered or given up meanwhile
        side = self.side_rng
        pid = side.randrange(2000, 4_000_000)
        cwd = "/root" if side.random() < 0.6 else "/usr/local/cpanel/whostmgr/docroot"
        self.emit(t, pid, ARGUMENTS, f"cwd={cwd} 3 args: /usr/sbin/exim -Mrm {msg.msgid}")
        self.emit(t, pid, CANCELLED, f"{msg.msgid} removed by root")
        self.emit(t, pid, COMPLETED, f"{msg.msgid} Completed")
        msg.removed = True
        cancelled = []
        for r in msg.rcpts:
            if r.state in (None, EventType.DEFERRED, EventType.FROZEN):
                r.state = EventType.CANCELLED
                r.reason = None
                r.time = t
                cancelled.append(r)
        if msg.frozen:
            self._truth_rows(msg, cancelled)  # its other rows were written when it froze
        else:
            msg.open = 0
            self._finish(msg)

    def _mx(self, r: Recipient) -> tuple[str, str]:
        domain = r.remote
        if domain is None or not domain.mx_hosts:
            return "localhost", "127.0.0.1"
        hosts = domain.mx_hosts
        return hosts[0] if len(hosts) == 1 or self.rng.random() < 0.85 else hosts[1]

    def _fields_before_route(self, msg: Message, r: Recipient) -> str:
        return f"{r.field} F=<{msg.sender}>" if self._long else r.field

    def _write_remote_delivery(self, t: int, pid: int, msg: Message, group: list[Recipient]) -> None:
        rng = self.rng
        host, ip = self._mx(group[0])
        domain = group[0].remote
        provider = domain.provider if domain is not None else "other"
        star = "*" if rng.random() < 0.08 else ""
        tls = content.TLS_OUTBOUND.get(provider, content.TLS_OUTBOUND["other"])
        confirmation = self._confirmation(t, msg, provider, host)
        flag = "=>"
        kind = DELIVERY
        for r in group:
            self.emit(
                t,
                pid,
                kind,
                f"{msg.msgid} {flag} {self._fields_before_route(msg, r)} {REMOTE_ROUTE} H={host} [{ip}]{star} "
                f'X={tls} CV=yes C="{confirmation}"',
            )
            self._settle(t, msg, r, EventType.DELIVERED, None)
            flag, kind, star = "->", DELIVERY_MORE, star

    def _confirmation(self, t: int, msg: Message, provider: str, host: str) -> str:
        rng = self.rng
        if provider == "gmail":
            return (
                f"250 2.0.0 OK  {t} {rng.getrandbits(48):012x}-{rng.getrandbits(40):010x}si"
                f"{rng.randint(1000000, 9999999)}ad.{rng.randint(1, 999)} - gsmtp"
            )
        if provider == "yahoo":
            return "250 ok dirdel"
        if provider == "microsoft":
            return (
                f"250 2.6.0 <{rng.getrandbits(64):x}@{msg.sender_domain or self.server.name}> "
                f"[InternalId={rng.randint(10**12, 10**13)}, "
                f"Hostname={rng.choice(('AM7PR02MB', 'DB9PR03MB', 'SJ0PR11MB'))}"
                f"{rng.randint(1000, 9999)}.{rng.choice(('eurprd02', 'namprd11'))}.prod.outlook.com] "
                f"{msg.size + rng.randint(1500, 4000)} bytes in 0.{rng.randint(10, 999):03d}, "
                f"{rng.uniform(10, 900):.3f} KB/sec Queued mail for delivery"
            )
        if rng.random() < 0.5:
            return f"250 2.0.0 Ok: queued as {rng.getrandbits(44):011X}"
        return f"250 OK id={self._remote_exim_id(t)}"

    def _remote_exim_id(self, t: int) -> str:
        rng = self.rng
        if rng.random() < 0.5:
            return new_format_id(t, rng.randrange(1000, 4_000_000), rng.randrange(1_000_000))
        return old_format_id(t, rng.randrange(1000, 4_000_000), rng.randrange(2000))

    def _write_local_delivery(self, t: int, pid: int, msg: Message, r: Recipient) -> None:
        box = r.mailbox
        assert box is not None
        field = self._fields_before_route(msg, r)
        if box.filtered == "devnull":
            self.emit(t, pid, DELIVERY, f"{msg.msgid} => {field} R=virtual_user_filter T=**bypassed**")
            self._settle(t, msg, r, EventType.FILTERED, None)
        elif box.filtered == "blackhole":
            self.emit(t, pid, DELIVERY, f"{msg.msgid} => {field} R=virtual_aliases")
            self._settle(t, msg, r, EventType.FILTERED, None)
        elif msg.spammy and box.spam_box:
            self.emit(t, pid, DELIVERY, f"{msg.msgid} => {field} {SPAM_ROUTE}")
            self._settle(t, msg, r, EventType.DELIVERED, None)
        else:
            token = base64.b64encode(self.rng.getrandbits(128).to_bytes(16, "big"), b"+/")[:22].decode()
            self.emit(
                t, pid, DELIVERY, f'{msg.msgid} => {field} {LOCAL_ROUTE} C="250 2.0.0 <{box.address}> {token} Saved"'
            )
            self._settle(t, msg, r, EventType.DELIVERED, None)

    def _error_text(self, msg: Message, r: Recipient, response: Response, values: dict[str, str]) -> str:
        values["rcpt"] = r.address
        values["domain"] = r.address.rpartition("@")[2]
        if response.key == "cpanel_max_emails_per_hour":
            limit = self.send_limits.get(msg.sender_domain, 1) or 1
            count = self._hour_counts.get(msg.sender_domain, (0, limit))[1] + 1
            values["n"], values["limit"], values["pct"] = str(count), str(limit), str(count * 100 // limit)
        text = response.render(values)
        if response.kind == "smtp":
            phase = response.phase or "rcpt"
            after = (
                f"MAIL FROM:<{msg.sender}> SIZE={msg.size}"
                if phase == "mail"
                else _PHASE_AFTER[phase].format(rcpt=r.address)
            )
            return f"SMTP error from remote mail server after {after}: {text}"
        if response.kind == "lmtp":
            return f"LMTP error after RCPT TO:<{r.address}>: {text}"
        return text

    def _write_deferral(
        self, t: int, pid: int, msg: Message, r: Recipient, response: Response, values: dict[str, str]
    ) -> None:
        text = self._error_text(msg, r, response, values)
        mid = msg.msgid
        field = r.field
        if response.kind == "local_limit":
            self.emit(t, pid, DEFERRAL, f"{mid} == {field} R=check_mail_permissions defer (-1): {text}")
        elif response.kind == "dns":
            self.emit(t, pid, DEFERRAL, f"{mid} == {field} R=dkim_lookuphost defer (-1): {text}")
        elif response.kind == "connection":
            domain = r.remote
            for host, ip in domain.mx_hosts if domain is not None else ():
                self.emit(t, pid, HOST_ERROR, f"{mid} H={host} [{ip}] {text}")
            self.emit(t, pid, DEFERRAL, f"{mid} == {field} {REMOTE_ROUTE} defer ({response.errno}): {text}")
        else:
            host, ip = self._mx(r)
            domain = r.remote
            if domain is not None and len(domain.mx_hosts) > 1 and self.rng.random() < 0.5:
                first_host, first_ip = domain.mx_hosts[0] if host != domain.mx_hosts[0][0] else domain.mx_hosts[1]
                self.emit(t, pid, HOST_ERROR, f"{mid} H={first_host} [{first_ip}]: {text}")
            self.emit(
                t, pid, DEFERRAL, f"{mid} == {field} {REMOTE_ROUTE} defer ({response.errno}) H={host} [{ip}]: {text}"
            )
        r.attempts += 1
        r.defers += 1
        r.state = EventType.DEFERRED
        r.reason = response.reason
        r.last_response = response
        r.time = t

    def _write_failure(
        self, t: int, pid: int, msg: Message, r: Recipient, response: Response, values: dict[str, str]
    ) -> None:
        text = self._error_text(msg, r, response, values)
        mid = msg.msgid
        sep = self._sep
        field = self._fields_before_route(msg, r)
        if response.key == "unrouteable":
            self.emit(t, pid, FAILURE, f"{mid} ** {r.field}{sep}{text}")
        elif response.key == "local_no_such_user":
            self.emit(t, pid, FAILURE, f"{mid} ** {r.field} R=virtual_aliases{sep}{text}")
        elif response.kind == "lmtp":
            self.emit(t, pid, FAILURE, f"{mid} ** {field} {LOCAL_ROUTE}{sep}{text}")
        else:
            host, ip = self._mx(r)
            domain = r.remote
            if domain is not None and len(domain.mx_hosts) > 1 and response.phase == "mail" and self.rng.random() < 0.4:
                other = domain.mx_hosts[1] if host == domain.mx_hosts[0][0] else domain.mx_hosts[0]
                self.emit(t, pid, HOST_ERROR, f"{mid} H={other[0]} [{other[1]}]: {text}")
            tls = content.TLS_OUTBOUND.get(domain.provider if domain is not None else "other", "")
            x_field = f" X={tls} CV=yes" if self.rng.random() < 0.5 else ""
            self.emit(t, pid, FAILURE, f"{mid} ** {field} {REMOTE_ROUTE} H={host} [{ip}]{x_field}{sep}{text}")
        self._settle(t, msg, r, EventType.BOUNCED, response.reason)

    def _write_expiry(self, t: int, pid: int, msg: Message, r: Recipient, response: Response) -> None:
        mid = msg.msgid
        if response.key == "all_hosts_failing":
            text = response.render({"domain": r.address.rpartition("@")[2]})
            self.emit(t, pid, FAILURE, f"{mid} ** {self._fields_before_route(msg, r)} {REMOTE_ROUTE}{self._sep}{text}")
            r.reason = Reason.CONNECTION_FAILURE
        else:
            self.emit(t, pid, FAILURE, f"{mid} ** {r.field}: {response.text}")
        r.cause = r.reason
        self._settle(t, msg, r, EventType.EXPIRED, Reason.EXPIRED)

    def _settle(self, t: int, msg: Message, r: Recipient, state: EventType, reason: Reason | None) -> None:
        r.attempts += 1
        r.state = state
        r.reason = reason
        r.time = t
        msg.open -= 1

    def _schedule_retries(self, t: int, msg: Message, deferred: list[tuple[Recipient, Response]]) -> None:
        rng = self.rng
        groups: dict[int, list[Recipient]] = {}
        for r, _ in deferred:
            if r.first_fail is None:
                r.first_fail = t
                r.last_gap = 0
            gap = next_retry_gap(t - r.first_fail, r.last_gap)
            r.last_gap = gap
            groups.setdefault(t + gap, []).append(r)
        for due, group in groups.items():
            when = due + rng.randint(5, RETRY_PICKUP_MAX)
            self.at(when, self._delivery_run, (msg, group))
            gap = due - t
            if gap >= 2 * 3600:
                # queue runs in between log that the host's retry time has not come yet
                wait = t + 3600 + rng.randint(60, 600)
                while wait < due - 600:
                    if rng.random() < 0.5:
                        self.at(wait, self._retry_wait, (msg, group))
                    wait += 3600
        if not msg.delay_warned and msg.sender and t - msg.arrival >= 86400:
            msg.delay_warned = True
            self._warning_message(t, msg)
        self._maybe_schedule_removal(t, msg)

    def _retry_wait(self, t: int, arg: tuple[Message, list[Recipient]]) -> None:
        msg, group = arg
        if msg.frozen or msg.removed:
            return
        pid = self._queue_pid
        for r in group:
            last = r.last_response
            if r.state == EventType.DEFERRED and last is not None and last.kind in ("smtp", "connection"):
                domain = r.address.rpartition("@")[2]
                self.emit(
                    t,
                    pid,
                    DEFERRAL,
                    f"{msg.msgid} == {r.field} {REMOTE_ROUTE} defer (-54): retry time not reached for any host "
                    f"for '{domain}'",
                )
                r.time = t

    # ---- messages Exim makes itself -----------------------------------------------------------

    def _bounce(self, t: int, parent: Message, failed: list[Recipient]) -> None:
        subject = "Mail delivery failed: returning message to sender"
        bounce = self._system_message(t, parent, subject)
        for r in failed:
            r.bounce_msgid = bounce.msgid

    def _warning_message(self, t: int, parent: Message) -> None:
        self._system_message(t, parent, f"Warning: message {parent.msgid} delayed 24 hours")

    def _system_message(self, t: int, parent: Message, subject: str) -> Message:
        rng = self.rng
        msgid, pid = self.ids.bounce(t)
        bounce = Message(msgid, pid, t, "", None)
        bounce.parent = parent.msgid
        bounce.size = rng.randint(1800, 9000) + min(parent.size, 60_000)
        to = parent.sender
        box = self.server.by_address.get(to)
        r = Recipient(to)
        if box is not None:
            r = self._local_recipient(box)
            if r.remote is not None:
                r.fate = BOUNCE if rng.random() < 0.1 else OK
                r.fate_response = _R["gmail_unknown_user"]
        elif parent.cpanel_user is not None:
            # a website's made-up sender address: nobody there
            r.local = True
            r.fate = BOUNCE
            r.fate_response = _R["local_no_such_user"]
        else:
            domain = self._sender_domain(to)
            r.remote = domain
            if rng.random() < 0.25 or parent.spammy:
                r.fate = BOUNCE
                r.fate_response = _R[
                    {
                        "gmail": "gmail_unknown_user",
                        "yahoo": "yahoo_unknown_user",
                        "microsoft": "microsoft_unknown_user",
                    }.get(domain.provider, "postfix_unknown_user")
                ]
        bounce.rcpts.append(r)
        self.emit(
            t, pid, ARRIVAL, f'{msgid} <= <> R={parent.msgid} U=mailnull P=local S={bounce.size} T="{subject}" for {to}'
        )
        if rng.random() < 0.3:
            self.emit(t, pid, ARGUMENTS, f"cwd=/var/spool/exim 3 args: /usr/sbin/exim -Mc {msgid}")
        bounce.open = 1
        r.time = t
        self.open_messages[msgid] = bounce
        self.at(t + (0 if rng.random() < 0.7 else 1), self._delivery_run, (bounce, bounce.rcpts))
        return bounce

    def _sender_domain(self, address: str) -> RemoteDomain:
        name = address.rpartition("@")[2]
        for domain, _ in self.world.big:
            if domain.name == name:
                return domain
        return RemoteDomain(name, "other", ((f"mail.{name}", f"192.0.2.{len(name) % 250 + 1}"),))

    # ---- finishing ----------------------------------------------------------------------------

    def _freeze(self, t: int, msg: Message) -> None:
        msg.frozen = True
        for r in msg.rcpts:
            if r.state is None or r.state == EventType.DEFERRED:
                r.state = EventType.FROZEN
                r.reason = None
                r.time = t
        self._finish(msg)

    def _finish(self, msg: Message) -> None:
        self.open_messages.pop(msg.msgid, None)
        self._truth_rows(msg)

    def _truth_rows(self, msg: Message, rcpts: list[Recipient] | None = None) -> None:
        name = self.server.name
        write = self.truth.write
        for r in msg.rcpts if rcpts is None else rcpts:
            state = r.state
            final = state.value if state is not None else "in_progress"
            routed = r.attempts > 0  # before its first line, a recipient is known by the address it was sent to
            write(
                {
                    "server": name,
                    "msgid": msg.msgid,
                    "recipient": r.address if routed else r.listed,
                    "original_recipient": r.original if routed else None,
                    "final": final,
                    "reason": r.reason.value
                    if r.reason is not None and state not in (None, EventType.FROZEN)
                    else None,
                    "cause": r.cause.value if r.cause is not None else None,
                    "attempts": r.attempts,
                    "sender": msg.sender,
                    "cpanel_user": msg.cpanel_user,
                    "bounce_msgid": r.bounce_msgid,
                    "parent_msgid": msg.parent,
                    "time": r.time,
                }
            )

    def snapshot_open(self) -> None:
        """Truth rows for every message still in flight (deferred or not yet tried)."""
        for msg in list(self.open_messages.values()):
            self._truth_rows(msg)


def merge_arrivals(*streams: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    return heapq.merge(*streams)
