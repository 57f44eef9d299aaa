import dataclasses

import pytest

from tests.trackdelivery.store.factories import make_event, random_events
from trackdelivery.events import EventType, Reason, RetryState
from trackdelivery.store import codec


def roundtrip(event, *, inline: bool):
    blob = codec.encode_event(event, 2048, inline_arrival=inline)
    arrival = None if inline else codec.decode_arrival(codec.encode_arrival_blob(event, 2048))
    return codec.decode_event(blob, arrival)


@pytest.mark.parametrize("inline", [True, False])
def test_every_field_survives_the_round_trip(inline):
    event = make_event(
        type=EventType.BOUNCED, original_recipient="info@shop.example", auth_id="alice", client_host="host",
        protocol="esmtpsa", spam_score=2.5, message_id_header="<x@y>", tls="TLS1.3", smtp_code=550,
        enhanced_code="5.1.1", smtp_phase="rcpt", exim_errno=-44, reason=Reason.RECIPIENT_UNKNOWN,
        hint="check the address", retry=RetryState(3, 1.0, 2.0, 3.0, 4.0), bounce_msgid="1bounce",
        parent_msgid="1parent", delivered_to="/dev/null",
    )
    assert roundtrip(event, inline=inline) == event


def test_domains_are_not_stored_when_derivable_but_explicit_values_are_kept():
    derived = make_event()
    assert b'"rd"' not in codec.encode_event(derived, 2048, inline_arrival=True)
    odd = make_event(recipient_domain="elsewhere.example", sender_domain=None)
    assert roundtrip(odd, inline=True) == odd
    assert roundtrip(odd, inline=False) == odd


def test_a_non_derivable_event_id_is_stored():
    event = dataclasses.replace(make_event(), event_id="custom-id")
    assert roundtrip(event, inline=False).event_id == "custom-id"


def test_events_without_msgid_carry_their_identity():
    event = make_event(type=EventType.REJECTED, msgid=None, arrival_time=None)
    decoded = codec.decode_event(codec.encode_event(event, 2048, inline_arrival=True), {"server": "ignored"})
    assert decoded == event


def test_clean_event_bounds_and_sanitises_strings_only_when_needed():
    event = make_event()
    assert codec.clean_event(event, 2048) is event
    hostile = make_event(subject="\udcff" + "s" * 5000, response="ok")
    cleaned = codec.clean_event(hostile, 100)
    assert len(cleaned.subject) == 100 and "\udcff" not in cleaned.subject
    assert cleaned.event_id == hostile.event_id
    codec.encode_event(cleaned, 100, inline_arrival=True)  # encodable


def test_compression_with_a_trained_dictionary_round_trips_and_shrinks_records():
    raws = [codec.encode_event(event, 2048, inline_arrival=True) for event in random_events(400, seed=3)]
    data = codec.RecordCompression.train(raws, 8192)
    assert data is not None
    compression = codec.RecordCompression()
    dictionary_id = codec.RecordCompression.identify(data)
    compression.install(dictionary_id, data, use=True)
    packed = [compression.compress(raw) for raw in raws]
    assert sum(map(len, packed)) < sum(map(len, raws)) / 2
    reader = codec.RecordCompression()
    assert reader.missing(packed[0]) == dictionary_id
    reader.install(dictionary_id, data, use=False)
    assert reader.missing(packed[0]) is None
    assert [reader.decompress(blob) for blob in packed] == raws
    assert reader.decompress(b'{"y":1}') == b'{"y":1}'  # raw records pass through
