from trackdelivery.events import EventType
from trackdelivery.generator.ids import new_format_id, old_format_id
from trackdelivery.store.keys import (
    DIGEST_BYTES,
    MEMBER_BYTES,
    REF_BYTES,
    KeySpace,
    Kind,
    clean_text,
    event_ref,
    member,
    member_offset,
    member_ref,
    member_type,
    message_ref,
    msgid_epoch,
    normalize,
    value_digest,
)
from trackdelivery.store.types import StoreSettings


def test_normalize_folds_case_of_addresses_and_canonicalises_ips():
    assert normalize(Kind.SENDER, "Alice@Example.COM", 100) == "alice@example.com"
    assert normalize(Kind.IP, "2001:DB8:0:0::1", 100) == "2001:db8::1"
    assert normalize(Kind.IP, "[192.0.2.1]", 100) == "192.0.2.1"
    assert normalize(Kind.IP, "not an ip", 100) == "not an ip"
    assert normalize(Kind.MSGID, "1AbC", 100) == "1AbC"  # message ids are case-sensitive


def test_clean_text_bounds_length_and_replaces_lone_surrogates():
    assert clean_text("x" * 10_000, 64) == "x" * 64
    cleaned = clean_text("a\udcff b", 64)
    cleaned.encode("utf-8")  # encodable now
    assert cleaned.startswith("a") and cleaned.endswith(" b")


def test_msgid_epoch_reads_both_exim_formats_and_nothing_else():
    assert msgid_epoch(new_format_id(1_764_000_000, 12345, 678)) == 1_764_000_000
    assert msgid_epoch(old_format_id(1_700_000_000, 4321, 99)) == 1_700_000_000
    assert msgid_epoch("{hostile}*id") is None
    assert msgid_epoch("") is None


def test_keys_never_contain_the_values_they_index():
    keys = KeySpace(StoreSettings(prefix="td"))
    hostile = "{evil}*\n" + "x" * 10_000
    digest = value_digest(Kind.SENDER, normalize(Kind.SENDER, hostile, 2048))
    key = keys.index(Kind.SENDER, 123, 7)
    ref = event_ref(hostile, hostile, hostile, 0.0)
    assert len(ref) == REF_BYTES and len(digest) == 8
    for name in (key, keys.message(ref[:8]), keys.lines(message_ref(hostile, hostile))):
        assert b"evil" not in name and len(name) < 40


def test_event_refs_of_one_message_share_the_message_ref():
    first = event_ref("mx1", "1abc", "event-1", 10.0)
    second = event_ref("mx1", "1abc", "event-2", 99_999.0)
    other_server = event_ref("mx2", "1abc", "event-1", 10.0)
    assert first[:8] == second[:8] == message_ref("mx1", "1abc")
    assert first != second and first[:8] != other_server[:8]


def test_rejections_without_msgid_are_grouped_per_server_and_minute():
    assert event_ref("mx1", None, "a", 60.0)[:8] == event_ref("mx1", None, "b", 119.0)[:8]
    assert event_ref("mx1", None, "a", 60.0)[:8] != event_ref("mx1", None, "a", 120.0)[:8]


def test_member_layout_sorts_by_value_then_time_then_type():
    digest = value_digest(Kind.SERVER, "mx1")
    other = value_digest(Kind.SERVER, "mx2")
    ref = b"r" * REF_BYTES
    early = member(digest, 2, 5, ref)
    same_time_other_type = member(digest, 3, 5, ref)
    late = member(digest, 1, 500_000, ref)
    assert len(early) == MEMBER_BYTES
    assert early[:DIGEST_BYTES] == digest[:DIGEST_BYTES]
    assert early < same_time_other_type < late
    assert (member(other, 1, 0, ref) < early) == (other[:DIGEST_BYTES] < digest[:DIGEST_BYTES])
    assert member_offset(late) == 500_000 and member_ref(late) == ref and member_type(late) == 1


def test_type_codes_cover_every_event_type():
    from trackdelivery.store.keys import TYPE_CODES, TYPES_BY_CODE

    assert set(TYPE_CODES) == set(EventType)
    assert len(TYPES_BY_CODE) == len(EventType)
