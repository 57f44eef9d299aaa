"""The simulated fleet: servers, their cPanel accounts, hosted domains and mailboxes, and the outside world
(remote providers, their MX hosts and the senders that write to us). Everything is drawn from a seeded rng."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

HOSTING_DOMAIN = "example-hosting.net"
EXIM_VERSIONS = ("4.96", "4.98", "4.99")


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_WORDS = _words(
    "acme blue bright cedar coastal copper crest delta eagle ember falcon fern forest fox garden "
    "golden granite green harbor hill iron ivy jade juniper lake lantern lemon lunar maple meadow "
    "metro north oak ocean olive orchid pearl pine prairie quartz rapid raven red river rock rose "
    "sage silver sky solar spruce star stone summit sun tiger timber true urban valley velvet vista "
    "willow wolf zen"
)
_TRADES = _words(
    "bakery dental plumbing law studio design media consulting realty travel fitness florist garage "
    "labs tech print cafe clinic farm tools homes auto events photo shop wines books hardware roofing "
    "salon pets marine"
)
_TLDS = ("com", "com", "com", "net", "org", "co.uk", "de", "io", "com.au", "ca", "nl", "fr", "es", "info")
_FIRST = _words(
    "alice bob carol dave erin frank grace heidi ivan judy karl laura mike nina oscar peggy quinn "
    "rachel steve trent ursula victor wendy xavier yvonne zoe maria jose wei li anna omar fatima "
    "lucas emma noah olivia liam sofia"
)
_LAST = _words(
    "smith jones brown taylor wilson davies evans thomas johnson roberts walker wright garcia martin "
    "lopez muller schmidt rossi dubois novak silva tanaka kim nguyen patel singh"
)
_ROLES = ("info", "sales", "support", "admin", "office", "contact", "billing", "hello", "orders", "jobs")
_SITE_SENDERS = ("noreply", "wordpress", "no-reply", "shop", "orders", "notifications")
_DOCUMENTATION_NETS = ("198.51.100", "203.0.113", "192.0.2")


@dataclass(slots=True)
class Mailbox:
    address: str
    local_part: str
    domain: str
    cpanel_user: str
    forward_to: str | None = None  # cPanel forwarder: mail to this address goes here instead
    filtered: str | None = None  # "devnull" (user filter to /dev/null) or "blackhole" (:blackhole:)
    spam_box: bool = False  # cPanel "spam box" enabled: spam goes to virtual_user_spam
    quota_full: bool = False  # local deliveries fail on quota
    home_ip: str = ""  # where its owner usually submits from


@dataclass(slots=True)
class Account:
    cpanel_user: str
    uid: int
    domains: list[str]
    mailboxes: list[Mailbox]
    dmarc_broken: bool = False  # its mail to Gmail/Microsoft fails DMARC now and then


@dataclass(slots=True)
class RemoteDomain:
    name: str
    provider: str  # gmail, yahoo, microsoft, other
    mx_hosts: tuple[tuple[str, str], ...]  # (host name, ip)
    greylists: bool = False
    dead: bool = False  # MX never answers: deliveries retry until they expire
    long_dead: bool = False  # has been dead for longer than the retry timeout already
    relay_denied: bool = False


@dataclass(slots=True)
class Server:
    index: int
    name: str
    ip: str
    exim_version: str
    log_pid: bool
    log_timezone: bool
    long_selector: bool  # admin replaced cPanel's log_selector with the long list (I=, F= ...)
    accounts: list[Account] = field(default_factory=list)
    mailboxes: list[Mailbox] = field(default_factory=list)
    by_address: dict[str, Mailbox] = field(default_factory=dict)

    @property
    def new_ids(self) -> bool:
        return self.exim_version != "4.96"

    @property
    def spaced_separator(self) -> bool:
        return self.exim_version == "4.99"


def server_name(index: int) -> str:
    return f"srv{index + 1:03d}.{HOSTING_DOMAIN}"


def server_ip(index: int) -> str:
    net, host = divmod(index, 250)
    if net < len(_DOCUMENTATION_NETS):
        return f"{_DOCUMENTATION_NETS[net]}.{host + 3}"
    net -= len(_DOCUMENTATION_NETS)
    return f"100.{64 + (net // 250) % 64}.{net % 250}.{host + 3}"


def _word_domain(rng: random.Random) -> str:
    style = rng.random()
    if style < 0.5:
        name = f"{rng.choice(_WORDS)}{rng.choice(_TRADES)}"
    elif style < 0.8:
        name = f"{rng.choice(_WORDS)}-{rng.choice(_TRADES)}"
    else:
        name = f"{rng.choice(_LAST)}{rng.choice(_TRADES)}{rng.randint(1, 99)}"
    return f"{name}.{rng.choice(_TLDS)}"


def _person_local(rng: random.Random) -> str:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    style = rng.random()
    if style < 0.4:
        return first
    if style < 0.7:
        return f"{first}.{last}"
    return f"{first[0]}{last}"


def _public_ip(rng: random.Random) -> str:
    first = rng.choice((5, 31, 37, 45, 62, 77, 81, 86, 89, 91, 94, 109, 151, 176, 178, 185, 188, 212, 217))
    return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


class World:
    """The outside world shared by every server of a fleet (remote domains, MX hosts, senders)."""

    def __init__(self, rng: random.Random) -> None:
        self.gmail = RemoteDomain(
            "gmail.com",
            "gmail",
            tuple(
                (host, f"142.250.{rng.randint(0, 255)}.{rng.choice((26, 27, 108, 109))}")
                for host in (
                    "gmail-smtp-in.l.google.com",
                    "alt1.gmail-smtp-in.l.google.com",
                    "alt2.gmail-smtp-in.l.google.com",
                )
            ),
        )
        yahoo_mx = tuple(
            (f"mta{n}.am0.yahoodns.net", f"{rng.choice(('67.195.204', '98.136.96', '67.195.228'))}.{n * 8 + 2}")
            for n in (5, 6, 7)
        )
        self.yahoo = RemoteDomain("yahoo.com", "yahoo", yahoo_mx)
        self.big: list[tuple[RemoteDomain, float]] = [
            (self.gmail, 0.36),
            (RemoteDomain("googlemail.com", "gmail", self.gmail.mx_hosts), 0.01),
            (self.yahoo, 0.09),
            (RemoteDomain("aol.com", "yahoo", yahoo_mx), 0.02),
            (RemoteDomain("ymail.com", "yahoo", yahoo_mx), 0.01),
        ]
        for name, weight in (("outlook.com", 0.07), ("hotmail.com", 0.07), ("live.com", 0.02), ("msn.com", 0.01)):
            host = f"{name.replace('.', '-')}.olc.protection.outlook.com"
            mx: tuple[tuple[str, str], ...] = tuple(
                (host, f"52.101.{rng.randint(0, 255)}.{rng.randint(1, 40)}") for _ in range(2)
            )
            self.big.append((RemoteDomain(name, "microsoft", mx), weight))
        for name, weight in (("icloud.com", 0.03), ("me.com", 0.005)):
            mx = ((f"mx0{rng.randint(1, 2)}.mail.icloud.com", f"17.57.{rng.randint(152, 156)}.{rng.randint(1, 40)}"),)
            self.big.append((RemoteDomain(name, "other", mx), weight))
        self.others: list[RemoteDomain] = []
        seen: set[str] = {d.name for d, _ in self.big}
        while len(self.others) < 1500:
            name = _word_domain(rng)
            if name in seen:
                continue
            seen.add(name)
            kind = rng.random()
            if kind < 0.2:  # Google Workspace
                mx = (
                    ("aspmx.l.google.com", f"142.251.{rng.randint(0, 255)}.27"),
                    ("alt1.aspmx.l.google.com", f"142.250.{rng.randint(0, 255)}.27"),
                )
                provider = "gmail"
            elif kind < 0.45:  # Microsoft 365
                host = f"{name.replace('.', '-')}.mail.protection.outlook.com"
                mx = ((host, f"52.101.{rng.randint(0, 255)}.{rng.randint(1, 40)}"),)
                provider = "microsoft"
            else:
                ip_base = f"{rng.choice(_DOCUMENTATION_NETS)}.{rng.randint(1, 250)}"
                mx = ((f"mail.{name}", ip_base),)
                if rng.random() < 0.3:
                    mx = (*mx, (f"mx2.{name}", f"{rng.choice(_DOCUMENTATION_NETS)}.{rng.randint(1, 250)}"))
                provider = "other"
            domain = RemoteDomain(name, provider, mx)
            if provider == "other":
                roll = rng.random()
                domain.greylists = roll < 0.12
                domain.dead = 0.12 <= roll < 0.135
                domain.long_dead = 0.135 <= roll < 0.14
                domain.relay_denied = 0.14 <= roll < 0.143
            self.others.append(domain)
        self._big_domains = [d for d, _ in self.big]
        self._big_cum: list[float] = []
        total = 0.0
        for _, weight in self.big:
            total += weight
            self._big_cum.append(total)
        self._big_total = total
        self.typo_domains = ("gmial.com", "gmail.con", "yaho.com", "hotmial.com", "outlok.com")
        self.sender_hosts = {
            "gmail": [
                (f"mail-{p}-f{n}.google.com", f"209.85.{rng.randint(128, 255)}.{n}")
                for p, n in (("wr1", 54), ("ej1", 41), ("lf1", 48), ("pl1", 175), ("yw1", 196))
            ],
            "yahoo": [
                (f"sonic{n}-{m}.consmr.mail.ne1.yahoo.com", f"66.163.{rng.randint(184, 191)}.{n % 250}")
                for n, m in ((301, 20), (307, 14), (313, 9))
            ],
            "microsoft": [
                (f"mail-{z}.outbound.protection.outlook.com", f"40.107.{rng.randint(0, 255)}.{rng.randint(1, 250)}")
                for z in ("db8eur05on2070", "am0pr02cu008", "he1eur04on2113", "vi1pr03cu001")
            ],
        }

    def pick_remote_domain(self, rng: random.Random) -> RemoteDomain:
        """Recipient domain of outbound mail: big providers most of the time."""
        if rng.random() < 0.72:
            x = rng.random() * self._big_total
            for domain, edge in zip(self._big_domains, self._big_cum, strict=True):
                if x < edge:
                    return domain
            return self._big_domains[-1]
        return rng.choice(self.others)

    def remote_address(self, rng: random.Random, domain: RemoteDomain | None = None) -> str:
        target = domain or self.pick_remote_domain(rng)
        if target.provider in ("gmail", "yahoo", "microsoft") and target in self._big_domains:
            local = _person_local(rng).replace(".", rng.choice((".", "", "_")))
            if rng.random() < 0.4:
                local += str(rng.randint(1, 1999))
            return f"{local}@{target.name}"
        if rng.random() < 0.5:
            return f"{rng.choice(_ROLES)}@{target.name}"
        return f"{_person_local(rng)}@{target.name}"

    def remote_sender(self, rng: random.Random) -> tuple[str, str, str, str]:
        """(envelope sender, client host name, client ip, helo) of a message coming in from outside."""
        roll = rng.random()
        if roll < 0.35:
            host, ip = rng.choice(self.sender_hosts["gmail"])
            return f"{_person_local(rng)}{rng.randint(1, 99)}@gmail.com", host, ip, host
        if roll < 0.45:
            host, ip = rng.choice(self.sender_hosts["yahoo"])
            return f"{_person_local(rng)}@yahoo.com", host, ip, host
        if roll < 0.6:
            host, ip = rng.choice(self.sender_hosts["microsoft"])
            mail_domain = rng.choice(("outlook.com", "hotmail.com", rng.choice(self.others).name))
            return f"{_person_local(rng)}@{mail_domain}", host, ip, host
        domain = rng.choice(self.others)
        if rng.random() < 0.3:
            news = f"bounce-{rng.randint(10000, 99999)}@mail.{domain.name}"
            return news, f"mail{rng.randint(1, 9)}.{domain.name}", _public_ip(rng), f"mail.{domain.name}"
        host = f"mail.{domain.name}"
        return f"{_person_local(rng)}@{domain.name}", host, _public_ip(rng), host

    @staticmethod
    def client_ip(rng: random.Random) -> str:
        return _public_ip(rng)


def _cpanel_user(rng: random.Random, domain: str, taken: set[str]) -> str:
    base = "".join(c for c in domain.split(".")[0] if c.isalnum())[:8] or "user"
    name = base
    while name in taken:
        name = f"{base[:6]}{rng.randint(10, 99)}"
    taken.add(name)
    return name


def build_server(index: int, rng: random.Random, exim_version: str, taken_domains: set[str]) -> Server:
    server = Server(
        index=index,
        name=server_name(index),
        ip=server_ip(index),
        exim_version=exim_version,
        log_pid=rng.random() < 0.25,
        log_timezone=rng.random() < 0.15,
        long_selector=rng.random() < 0.2,
    )
    taken_users: set[str] = set()
    for _ in range(rng.randint(25, 60)):
        domains = []
        for _ in range(1 if rng.random() < 0.7 else rng.randint(2, 3)):
            domain = _word_domain(rng)
            while domain in taken_domains:
                domain = _word_domain(rng)
            taken_domains.add(domain)
            domains.append(domain)
        account = Account(
            cpanel_user=_cpanel_user(rng, domains[0], taken_users),
            uid=rng.randint(1001, 9999),
            domains=domains,
            mailboxes=[],
            dmarc_broken=rng.random() < 0.08,
        )
        for domain in domains:
            locals_ = {_person_local(rng) for _ in range(rng.randint(1, 6))}
            locals_.update(rng.sample(_ROLES, rng.randint(1, 3)))
            for local in sorted(locals_):
                box = Mailbox(
                    address=f"{local}@{domain}",
                    local_part=local,
                    domain=domain,
                    cpanel_user=account.cpanel_user,
                    spam_box=rng.random() < 0.3,
                    quota_full=rng.random() < 0.01,
                    home_ip=_public_ip(rng),
                )
                roll = rng.random()
                if roll < 0.08:
                    provider = rng.choice(("gmail.com", "gmail.com", "yahoo.com", "outlook.com"))
                    box.forward_to = f"{_person_local(rng)}{rng.randint(1, 99)}@{provider}"
                elif roll < 0.1:
                    box.filtered = "devnull"
                account.mailboxes.append(box)
            if rng.random() < 0.15:
                account.mailboxes.append(
                    Mailbox(f"blackhole@{domain}", "blackhole", domain, account.cpanel_user, filtered="blackhole")
                )
        server.accounts.append(account)
        server.mailboxes.extend(account.mailboxes)
    server.by_address = {box.address: box for box in server.mailboxes}
    return server


def site_sender(rng: random.Random, account: Account) -> tuple[str, str]:
    """(envelope sender, domain) of a PHP script's mail."""
    domain = rng.choice(account.domains)
    return f"{rng.choice(_SITE_SENDERS)}@{domain}", domain


def person_name(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST).title()} {rng.choice(_LAST).title()}"
