"""Correlator: hand-written parsed-line sequences to the delivery events they must produce."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any

import orjson

from processors.exim.correlator import Correlator, state_key
from processors.exim.retry import DEFAULT_RETRY_RULES
from processors.exim.types import LineKind, ParsedLine
from trackdelivery.events import DeliveryEvent, EventType, Reason

T0 = 1_741_947_751.0  # 2025-03-14 10:22:31 UTC
MSG = "1tsxAK-0000000Gk9-0aBc"
BOUNCE = "1tsxB0-0000000GkA-1111"
SERVER = "web1"


def line(kind: LineKind, time: float | None = T0, msgid: str | None = MSG, **fields: Any) -> ParsedLine:
    raw = fields.pop("raw", None) or f"{time} {msgid} {kind} {sorted(fields.items())}"
    return ParsedLine(kind=kind, raw=raw, time=time, msgid=msgid, **fields)


def arrival(*recipients: str, time: float = T0, msgid: str = MSG, **fields: Any) -> ParsedLine:
    fields.setdefault("address", "alice@example.com")
    return line(LineKind.ARRIVAL, time, msgid, recipients=list(recipients), **fields)


def delivery(address: str, time: float, kind: LineKind = LineKind.DELIVERY, **fields: Any) -> ParsedLine:
    fields.setdefault("router", "dkim_lookuphost")
    fields.setdefault("transport", "dkim_remote_smtp")
    return line(kind, time, fields.pop("msgid", MSG), address=address, **fields)


def deferral(address: str, time: float, **fields: Any) -> ParsedLine:
    return line(LineKind.DEFERRAL, time, fields.pop("msgid", MSG), address=address, **fields)


def failure(address: str, time: float, **fields: Any) -> ParsedLine:
    return line(LineKind.FAILURE, time, fields.pop("msgid", MSG), address=address, **fields)


def run(lines: Iterable[ParsedLine], correlator: Correlator | None = None) -> list[DeliveryEvent]:
    correlator = correlator or Correlator()
    events = [event for parsed in lines for event in correlator.feed(SERVER, parsed)]
    return events + correlator.flush()


def of_type(events: list[DeliveryEvent], event_type: EventType) -> list[DeliveryEvent]:
    return [event for event in events if event.type is event_type]


def latest_by_id(events: Iterable[DeliveryEvent]) -> dict[str, dict[str, Any]]:
    return {event.event_id: event.to_dict() for event in events}


GREYLIST = (
    "SMTP error from remote mail server after RCPT TO:<bob@example.net>: "
    "451 4.7.1 Greylisting in action, please come back later"
)


def greylisted(time: float) -> ParsedLine:
    return deferral(
        "bob@example.net",
        time,
        router="dkim_lookuphost",
        transport="dkim_remote_smtp",
        errno=-44,
        host="mx.example.net",
        host_ip="192.0.2.25",
        error=GREYLIST,
        smtp_code=451,
        enhanced_code="4.7.1",
        smtp_phase="rcpt",
    )


def test_deferral_then_delivery_counts_attempts_and_estimates_retries() -> None:
    first, second, wait, done = T0 + 5, T0 + 5 + 900, T0 + 1000, T0 + 1900
    events = run(
        [
            arrival("bob@example.net", size=1234, subject="Quarterly report", protocol="esmtpsa"),
            greylisted(first),
            greylisted(second),
            deferral(
                "bob@example.net",
                wait,
                errno=-53,
                error="retry time not reached for any host for 'example.net'",
            ),
            delivery("bob@example.net", done, host="mx.example.net", host_ip="192.0.2.25", confirmation="250 OK"),
            line(LineKind.COMPLETED, done),
        ]
    )
    types = [event.type for event in events]
    assert types == [
        EventType.IN_PROGRESS,
        EventType.DEFERRED,
        EventType.DEFERRED,
        EventType.DEFERRED,
        EventType.DELIVERED,
    ]
    _, defer1, defer2, waiting, delivered = events
    assert defer1.retry.attempt == 1 and defer2.retry.attempt == 2
    assert defer1.reason is Reason.GREYLISTED and defer1.hint
    assert defer1.smtp_code == 451 and defer1.enhanced_code == "4.7.1" and defer1.exim_errno == -44
    assert defer1.retry.first_attempt == first and defer2.retry.last_attempt == second
    assert defer1.retry.next_retry == DEFAULT_RETRY_RULES.next_retry(first, first) == first + 15 * 60
    assert defer2.retry.next_retry == DEFAULT_RETRY_RULES.next_retry(first, second)
    assert defer1.retry.give_up == DEFAULT_RETRY_RULES.give_up(first) == first + 4 * 86400
    # "retry time not reached" is not an attempt
    assert waiting.reason is Reason.RETRY_WAIT and waiting.retry.attempt == 0
    assert waiting.retry.last_attempt == second
    assert delivered.retry.attempt == 3 and delivered.reason is None
    assert delivered.retry.next_retry is None and delivered.retry.give_up is None
    assert delivered.response == "250 OK" and delivered.remote_ip == "192.0.2.25"
    for event in events:  # arrival data on every event
        assert event.arrival_time == T0 and event.sender == "alice@example.com"
        assert event.sender_domain == "example.com" and event.size == 1234
        assert event.subject == "Quarterly report" and event.recipient_domain == "example.net"


def test_expiry_is_final_and_not_an_attempt() -> None:
    events = run(
        [
            arrival("b@known.example"),
            failure("b@known.example", T0 + 4 * 86400, error="retry timeout exceeded"),
            failure(
                "c@known.example",
                T0 + 4 * 86400,
                router="r1",
                transport="t1",
                error="all hosts for 'known.example' have been failing for a long time (and retry time not reached)",
            ),
        ]
    )
    expired = of_type(events, EventType.EXPIRED)
    assert [event.recipient for event in expired] == ["b@known.example", "c@known.example"]
    assert all(event.reason is Reason.EXPIRED and event.retry.next_retry is None for event in expired)
    assert not of_type(events, EventType.BOUNCED)


def test_multi_recipient_delivery_with_arrow_lines_finishes_the_message() -> None:
    store: dict[str, dict[str, Any]] = {}
    correlator = Correlator(store=store)
    events = run(
        [
            arrival("carol@yahoo.com", "dave@yahoo.com"),
            delivery("carol@yahoo.com", T0 + 2, host="mta6.yahoodns.net", host_ip="67.195.204.72", tls="TLS1.3"),
            delivery(
                "dave@yahoo.com", T0 + 2, LineKind.DELIVERY_MORE, host="mta6.yahoodns.net", host_ip="67.195.204.72"
            ),
        ],
        correlator,
    )
    delivered = of_type(events, EventType.DELIVERED)
    assert [event.recipient for event in delivered] == ["carol@yahoo.com", "dave@yahoo.com"]
    assert all(event.retry.attempt == 1 for event in delivered)
    assert delivered[0].tls == "TLS1.3"
    assert len(of_type(events, EventType.IN_PROGRESS)) == 2  # at arrival only, none flushed
    assert store[state_key(SERVER, MSG)]["done"] == T0 + 2


def test_forwarded_recipient_keeps_the_original_address() -> None:
    events = run(
        [
            arrival("info@example.com"),
            delivery("bob@gmail.com", T0 + 1, parents=["<info@example.com>"]),
            delivery(
                "/dev/null",
                T0 + 1,
                parents=["(erice@example.com)", "<techmgr@example.com>"],
                router="virtual_user_filter",
                transport="**bypassed**",
            ),
        ]
    )
    forwarded, filtered = events[1:]
    assert forwarded.type is EventType.DELIVERED
    assert forwarded.recipient == "bob@gmail.com" and forwarded.original_recipient == "info@example.com"
    assert filtered.type is EventType.FILTERED and filtered.delivered_to == "/dev/null"
    assert filtered.recipient == "erice@example.com" and filtered.original_recipient == "techmgr@example.com"
    assert len(of_type(events, EventType.IN_PROGRESS)) == 1  # info@ is covered by its forward


def test_filtered_and_archived_deliveries() -> None:
    events = run(
        [
            arrival("a@example.com", "b@example.com", "c@example.com", "d@example.com"),
            delivery(":blackhole:", T0 + 1, parents=["<a@example.com>"], router="virtual_aliases", transport=None),
            delivery("b@example.com", T0 + 1, LineKind.SUPPRESSED, transport="appendfile"),
            delivery("c@example.com", T0 + 1, router="archiver_outgoing", transport="archiver_outgoing"),
            delivery("d@example.com", T0 + 1, router="virtual_user", transport="dovecot_virtual_delivery"),
        ]
    )
    assert [(event.recipient, event.type) for event in events[4:]] == [
        ("a@example.com", EventType.FILTERED),
        ("b@example.com", EventType.FILTERED),
        ("c@example.com", EventType.ARCHIVED),
        ("d@example.com", EventType.DELIVERED),
    ]
    assert all(event.reason is None for event in events)


def test_an_outgoing_archive_copy_does_not_close_a_recipient_whose_remote_delivery_is_deferred() -> None:
    """cPanel logs the archive copy of outgoing mail before the remote outcome; a deferral after it leaves
    the recipient open, so freezing or removing the message covers it."""
    events = run(
        [
            arrival("a@example.org", "b@example.org"),
            delivery("a@example.org", T0 + 1, router="archiver_outgoing", transport="archiver_outgoing"),
            delivery("b@example.org", T0 + 1, router="archiver_outgoing", transport="archiver_outgoing"),
            deferral("a@example.org", T0 + 1, errno=111, error="Connection refused"),
            delivery("b@example.org", T0 + 1),
            line(LineKind.FROZEN, T0 + 2, detail="delivery error message"),
            line(LineKind.CANCELLED, T0 + 4, detail="removed by root"),
        ]
    )
    assert [(e.recipient, e.type) for e in events if e.type is not EventType.IN_PROGRESS] == [
        ("a@example.org", EventType.ARCHIVED),
        ("b@example.org", EventType.ARCHIVED),
        ("a@example.org", EventType.DEFERRED),
        ("b@example.org", EventType.DELIVERED),
        ("a@example.org", EventType.FROZEN),
        ("a@example.org", EventType.CANCELLED),
    ]
    assert of_type(events, EventType.DEFERRED)[0].retry.attempt == 2  # the copy was a delivery of its own


def test_bounce_is_linked_both_ways() -> None:
    bounced_line = failure(
        "nosuch@gmail.com",
        T0 + 3,
        host="gmail-smtp-in.l.google.com",
        host_ip="142.250.102.27",
        error="SMTP error from remote mail server after RCPT TO:<nosuch@gmail.com>: 550 5.1.1 does not exist",
        smtp_code=550,
        enhanced_code="5.1.1",
        smtp_phase="rcpt",
    )
    bounce_arrival = arrival(
        "alice@example.com",
        time=T0 + 4,
        msgid=BOUNCE,
        address="",
        bounce_parent=MSG,
        user="mailnull",
        subject="Mail delivery failed: returning message to sender",
    )
    events = run([arrival("nosuch@gmail.com"), bounced_line, bounce_arrival])
    original = events[1]
    assert original.type is EventType.BOUNCED and original.reason is Reason.RECIPIENT_UNKNOWN
    assert original.bounce_msgid is None
    relinked = [event for event in events[2:] if event.event_id == original.event_id]
    assert len(relinked) == 1 and relinked[0].bounce_msgid == BOUNCE
    assert relinked[0].to_dict() == {**original.to_dict(), "bounce_msgid": BOUNCE}
    bounce_events = [event for event in events if event.msgid == BOUNCE]
    assert bounce_events and all(event.parent_msgid == MSG and event.sender == "" for event in bounce_events)

    # the other order (bounce arrival logged first): the failure carries the link when it comes
    events = run([arrival("nosuch@gmail.com"), bounce_arrival, bounced_line])
    assert of_type(events, EventType.BOUNCED)[-1].bounce_msgid == BOUNCE


def test_a_replayed_bounce_arrival_does_not_take_the_next_failures_bounce() -> None:
    """After a crash the record with a bounce's arrival is processed again against the parent's saved
    state, which already holds the link: the link must not be made a second time."""
    second_bounce = "1tsxC0-0000000GkB-2222"

    def bounce_arrival(msgid: str, time: float) -> ParsedLine:
        return arrival("alice@example.com", time=time, msgid=msgid, address="", bounce_parent=MSG, user="mailnull",
                       subject="Mail delivery failed: returning message to sender")

    first_failure = failure("one@gmail.com", T0 + 3, error="550 5.1.1 no such user", smtp_code=550)
    later_failure = failure("two@gmail.com", T0 + 600, error="550 5.1.1 no such user", smtp_code=550)
    lines = [arrival("one@gmail.com", "two@gmail.com"), first_failure, bounce_arrival(BOUNCE, T0 + 4),
             later_failure, bounce_arrival(second_bounce, T0 + 601)]
    clean = latest_by_id(run(lines))
    replayed = latest_by_id(run([*lines[:3], lines[2], *lines[3:]]))
    assert replayed == clean
    bounced = {event["recipient"]: event["bounce_msgid"] for event in clean.values() if event["type"] == "bounced"}
    assert bounced == {"one@gmail.com": BOUNCE, "two@gmail.com": second_bounce}


def test_spam_score_before_arrival_and_sender_identification() -> None:
    events = run(
        [
            line(LineKind.SPAM_SCORE, T0, spam_score=3.2, is_spam=False),
            line(LineKind.SENDER_IDENT, T0, user="shopuser", cpanel_domain="example.com", sender="shopuser"),
            arrival("bob@gmail.com", user="nobody", auth="dovecot_login:alice@example.com"),
            delivery("bob@gmail.com", T0 + 2),
        ]
    )
    assert len(events) == 2
    for event in events:
        assert event.spam_score == 3.2
        assert event.cpanel_user == "shopuser"
        assert event.auth_id == "alice@example.com"


def test_arrival_user_is_the_cpanel_user_without_identification() -> None:
    events = run([arrival("bob@gmail.com", user="shopuser", protocol="local"), delivery("bob@gmail.com", T0 + 1)])
    assert {event.cpanel_user for event in events} == {"shopuser"}


def test_frozen_and_cancelled_cover_recipients_without_final_outcome() -> None:
    events = run(
        [
            arrival("a@example.org", "b@example.org"),
            delivery("a@example.org", T0 + 1),
            deferral("b@example.org", T0 + 1, errno=111, error="Connection refused"),
            line(LineKind.FROZEN, T0 + 2, detail="delivery error message"),
            line(LineKind.UNFROZEN, T0 + 3, detail="by auto-thaw"),
            line(LineKind.CANCELLED, T0 + 4, detail="cancelled by timeout_frozen_after"),
        ]
    )
    frozen = of_type(events, EventType.FROZEN)
    cancelled = of_type(events, EventType.CANCELLED)
    assert [event.recipient for event in frozen] == ["b@example.org"]
    assert [event.recipient for event in cancelled] == ["b@example.org"]
    assert not of_type(events[-1:], EventType.IN_PROGRESS)


def test_rejection_is_a_stateless_event() -> None:
    store: dict[str, dict[str, Any]] = {}
    rejection = line(
        LineKind.REJECTION,
        T0,
        None,
        host="ylmf-pc",
        host_ip="185.220.101.7",
        sender="spam@bad.example",
        recipients=["info@example.com"],
        error="JunkMail rejected - (ylmf-pc) [185.220.101.7]:61234 is in an RBL: https://www.spamhaus.org/",
    )
    events = run([rejection], Correlator(store=store))
    assert len(events) == 1
    event = events[0]
    assert event.type is EventType.REJECTED and event.msgid is None
    assert event.recipient == "info@example.com" and event.recipient_domain == "example.com"
    assert event.sender == "spam@bad.example" and event.client_ip == "185.220.101.7"
    assert event.reason is Reason.IP_REPUTATION
    assert store == {}


def test_host_error_is_attached_to_the_attempt() -> None:
    events = run(
        [
            arrival("x@example.org"),
            line(LineKind.HOST_ERROR, T0 + 1, host="mx.example.org", host_ip="192.0.2.5", error="Connection timed out"),
            deferral("x@example.org", T0 + 1, errno=110, error="Connection timed out"),
            line(
                LineKind.HOST_ERROR,
                T0 + 901,
                host="mx2.example.org",
                host_ip="192.0.2.6",
                error="SMTP error from remote mail server after RCPT TO:<x@example.org>: 550 5.1.1 No such user",
                smtp_code=550,
                enhanced_code="5.1.1",
                smtp_phase="rcpt",
            ),
            failure("x@example.org", T0 + 901, error="SMTP error from remote mail server"),
        ]
    )
    deferred = of_type(events, EventType.DEFERRED)[0]
    assert (deferred.remote_host, deferred.remote_ip) == ("mx.example.org", "192.0.2.5")
    assert deferred.reason is Reason.CONNECTION_FAILURE and deferred.exim_errno == 110
    bounced = of_type(events, EventType.BOUNCED)[0]
    assert (bounced.remote_host, bounced.remote_ip, bounced.smtp_code) == ("mx2.example.org", "192.0.2.6", 550)
    assert bounced.enhanced_code == "5.1.1" and "No such user" in (bounced.response or "")
    assert bounced.retry.attempt == 2


def sample_lines() -> list[ParsedLine]:
    return [
        line(LineKind.SPAM_SCORE, T0, spam_score=1.5),
        arrival("a@example.org", "b@example.org", "c@example.org"),
        line(LineKind.HOST_ERROR, T0 + 1, host="mx.example.org", host_ip="192.0.2.5", error="Connection refused"),
        deferral("a@example.org", T0 + 1, errno=111, error="Connection refused"),
        failure("b@example.org", T0 + 1, error="Unrouteable address"),
        delivery("c@example.org", T0 + 1),
        arrival("alice@example.com", time=T0 + 2, msgid=BOUNCE, address="", bounce_parent=MSG),
        delivery("alice@example.com", T0 + 3, msgid=BOUNCE),
        line(LineKind.COMPLETED, T0 + 3, BOUNCE),
        deferral("a@example.org", T0 + 901, errno=111, error="Connection refused"),
        delivery("a@example.org", T0 + 2000),
        line(LineKind.COMPLETED, T0 + 2000),
    ]


def test_same_lines_give_same_events_and_duplicates_are_idempotent() -> None:
    once = run(sample_lines())
    assert [event.to_dict() for event in once] == [event.to_dict() for event in run(sample_lines())]
    twice = run(itertools.chain.from_iterable((parsed, parsed) for parsed in sample_lines()))
    assert latest_by_id(twice) == latest_by_id(once)
    # a whole replay after the fact adds nothing new either
    correlator = Correlator()
    replayed = run(sample_lines(), correlator) + run(sample_lines(), correlator)
    assert latest_by_id(replayed) == latest_by_id(once)


class OrjsonStore(MutableMapping[str, dict[str, Any]]):
    """Keeps values as orjson bytes, like a faust Table with an orjson value serializer."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def __getitem__(self, key: str) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(self.data[key])
        return value

    def __setitem__(self, key: str, value: dict[str, Any]) -> None:
        self.data[key] = orjson.dumps(value)

    def __delitem__(self, key: str) -> None:
        del self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def test_state_round_trips_through_orjson() -> None:
    plain = run(sample_lines())
    serialised = run(sample_lines(), Correlator(store=OrjsonStore()))
    assert [event.to_dict() for event in serialised] == [event.to_dict() for event in plain]


def test_release_bounds_the_store() -> None:
    store: dict[str, dict[str, Any]] = {}
    correlator = Correlator(store=store, grace_seconds=3600, stale_seconds=86400)
    for number in range(100):
        msgid = f"1tsxAK-{number:010d}-0aBc"
        start = T0 + number
        correlator.feed(SERVER, arrival("a@example.org", time=start, msgid=msgid))
        if number % 2 == 0:
            correlator.feed(SERVER, delivery("a@example.org", start + 1, msgid=msgid))
    assert len(store) == 100
    assert correlator.release(T0 + 200) == 0
    assert correlator.release(T0 + 200 + 3600) == 50  # finished ones after the grace period
    assert correlator.release(T0 + 200 + 86400) == 50  # unfinished ones once stale
    assert store == {}


def test_odd_sequences_never_raise() -> None:
    kinds = list(LineKind)
    rng = random.Random(7)
    base = sample_lines()
    correlator = Correlator()
    for _ in range(300):
        kind = rng.choice(kinds)
        parsed = rng.choice(base)
        odd = ParsedLine(
            kind=kind,
            raw=f"odd {rng.random()}",
            time=rng.choice([None, T0, T0 + rng.random() * 1e6]),
            msgid=rng.choice([None, MSG, BOUNCE, "x|y\\z"]),
            address=rng.choice([None, "", "a@b", ":blackhole:", "|/bin/pipe"]),
            parents=rng.choice([[], ["<a@b>"], ["()"], ["<>"], [""]]),
            recipients=rng.choice([[], ["a@b", "A@B", ""]]),
            bounce_parent=rng.choice([None, MSG, BOUNCE]),
            errno=rng.choice([None, -53, 110]),
            error=rng.choice([None, "", "retry timeout exceeded", "RCPT TO:<a@b", "550 x"]),
        )
        for item in (odd, parsed):
            for event in correlator.feed("s|1", item):
                assert event.event_id
    correlator.flush()
    correlator.release(T0 + 1e9)


def test_a_host_error_is_not_attached_to_unrelated_outcomes() -> None:
    events = run(
        [
            arrival("x@example.org", "y@example.net"),
            line(LineKind.HOST_ERROR, T0 + 1, host="mx.example.org", host_ip="192.0.2.5", error="Connection timed out"),
            deferral("x@example.org", T0 + 1, errno=110, error="Connection timed out"),
            failure("y@example.net", T0 + 1, error="Unrouteable address"),
            deferral(
                "x@example.org", T0 + 600, errno=-54, error="retry time not reached for any host for 'example.org'"
            ),
        ]
    )
    deferred, bounced, waiting = events[2:]
    assert deferred.remote_ip == "192.0.2.5"
    assert bounced.remote_ip is None and bounced.smtp_phase is None
    assert waiting.reason is Reason.RETRY_WAIT and waiting.remote_ip is None and waiting.exim_errno == -54


def test_cutthrough_delivery_logged_before_arrival_gets_the_arrival_data() -> None:
    events = run(
        [
            delivery("userx@example.com", T0, LineKind.CUTTHROUGH, transport="smtp", confirmation="250 OK"),
            arrival("userx@example.com", size=999, subject="hello"),
            line(LineKind.COMPLETED, T0 + 1),
        ]
    )
    first, again = events
    assert first.type is again.type is EventType.DELIVERED
    assert first.event_id == again.event_id
    assert first.arrival_time is None and first.size is None
    assert again.arrival_time == T0 and again.size == 999 and again.subject == "hello"
    assert again.sender == "alice@example.com" and again.response == "250 OK"


def test_flush_recovers_odd_server_names_from_the_store_key() -> None:
    correlator = Correlator()
    odd_server = "web|1\\eu"
    correlator.feed(odd_server, arrival("a@example.org", "b@example.org"))
    correlator.feed(odd_server, delivery("a@example.org", T0 + 1))
    flushed = correlator.flush()
    assert [(event.server, event.msgid, event.recipient, event.type) for event in flushed] == [
        (odd_server, MSG, "b@example.org", EventType.IN_PROGRESS)
    ]
    assert state_key(odd_server, MSG) != state_key("web", "1\\eu|" + MSG)


def test_rejections_of_one_address_in_the_same_second_are_distinct_events() -> None:
    def rejection(client_ip: str) -> ParsedLine:
        return line(
            LineKind.REJECTION,
            T0,
            None,
            raw=f"2025-03-14 10:22:31 H=[{client_ip}] F=<x@bad.example> rejected RCPT <info@example.com>: blocked",
            host_ip=client_ip,
            recipients=["info@example.com"],
            error="blocked",
        )

    first, second = run([rejection("192.0.2.1"), rejection("192.0.2.2")])
    assert first.event_id != second.event_id
    assert run([rejection("192.0.2.1")])[0].event_id == first.event_id  # and still deterministic


def test_arrival_data_logged_after_the_arrival_reaches_the_in_progress_events() -> None:
    # cPanel logs "Sender identification" and the SpamAssassin verdict around the <= line
    lines = [
        arrival("bob@gmail.com", "carol@yahoo.com", user="mailnull"),
        line(LineKind.SENDER_IDENT, T0, user="shopuser", cpanel_domain="example.com"),
        line(LineKind.SPAM_SCORE, T0 + 1, spam_score=2.5, is_spam=False),
    ]
    correlator = Correlator()
    events = [event for parsed in lines for event in correlator.feed(SERVER, parsed)]  # live: no flush
    waiting = latest_by_id(of_type(events, EventType.IN_PROGRESS))
    assert len(waiting) == 2
    assert {(e["cpanel_user"], e["spam_score"]) for e in waiting.values()} == {("shopuser", 2.5)}


def test_replaying_the_arrival_after_its_enrichment_ends_in_the_same_events() -> None:
    # a worker crash after its state was saved but before its offsets were: the record is fed again
    first = [arrival("bob@gmail.com"), line(LineKind.SENDER_IDENT, T0, user="shopuser")]
    correlator = Correlator()
    once = [event for parsed in first for event in correlator.feed(SERVER, parsed)]
    replayed = once + [event for parsed in first for event in correlator.feed(SERVER, parsed)]
    assert latest_by_id(replayed) == latest_by_id(once)
