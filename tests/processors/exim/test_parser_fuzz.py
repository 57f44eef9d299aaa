"""Property tests: whatever bytes arrive, the parser returns a bounded ParsedLine and never raises."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.exim.parser import MAX_FIELD, MAX_ITEMS, MAX_RAW, parse_line
from processors.exim.types import LineKind, ParsedLine

SEEDS = [
    b"2025-03-14 10:22:40 1sDcIh-000000004YY-3wAT <= alice@example.com H=(laptop) [203.0.113.7]:51234 "
    b'P=esmtpsa X=TLS1.3:TLS_AES_256_GCM_SHA384:256 CV=no A=dovecot_login:alice S=18234 T="Re: \\"x\\" \\316\\261" '
    b"for carol@yahoo.com dave@outlook.com",
    b'2021-05-04 13:37:00 +0100 1gtTXl-009NOy-Ft ->  foo@bar.tld <" foo.bar"@baz.tld> R=dkim_lookuphost '
    b'T=dkim_remote_smtp H=mail.host.tld [123.123.123.123]* X=TLSv1.2:E:256 CV=yes K C="250- 4359466\\n250 OK"',
    b"2025-03-14 10:22:42 1sDcIh-000000004YY-3wAT == carol@yahoo.com R=dkim_lookuphost T=dkim_remote_smtp "
    b"defer (-45) H=mta7.am0.yahoodns.net [98.136.96.74]: SMTP error from remote mail server after MAIL "
    b"FROM:<alice@example.com> SIZE=18234: 421 4.7.0 [TSS04] deferred",
    b"1999-03-02 09:44:33 10HmaX-0005vi-00 ** d@test.ex R=all T=smtp H=127.0.0.1 [127.0.0.1]* : SMTP error "
    b"from remote mail server after RCPT TO:<d@test.ex>: 550 Recipient not OK DT=1s",
    b"2022-06-29 16:04:05 H=([]) [1.2.3.4]:1337 F=<a@b.example> temporarily rejected RCPT <c@d.example>: no",
    b"Feb 14 18:12:33 host exim[46483]: [1\\2] 2025-02-14 18:12:33.470 [46483] 1tixMn-00000000C5j-1wRa <= <> R=x",
    b'2014-09-10 13:06:56 1XRlM6-003yMv-KG H=mail.example[10.5.40.204]:46793 Warning: "SpamAssassin as '
    b'cpaneleximscanner detected OUTGOING smtp message as NOT spam (-0.1)"',
    b"2025-03-14 10:22:40 SMTP connection identification H=(laptop) [203.0.113.7]:51234 A=203.0.113.7 P=1 "
    b"M=1sDcIh-000000004YY-3wAT U=alice ID=1001 S=alice@example.com B=authenticated_local_user",
    b'1999-03-02 09:44:33 10HmaX-0005vi-00 => |/bin/sh -c "cat >x" (p@x, q@y) <pipe@test.ex> R=alias T=pipe',
    b"1999-03-02 09:44:33 10HmaX-0005vi-00 b@known.ex: error ignored",
]

STRING_FIELDS = [f.name for f in dataclasses.fields(ParsedLine) if f.name not in ("kind", "extra", "raw")]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check(parsed: ParsedLine) -> None:
    assert isinstance(parsed.kind, LineKind)
    assert len(parsed.raw) <= MAX_RAW
    for name in STRING_FIELDS:
        value = getattr(parsed, name)
        if isinstance(value, str):
            assert len(value) <= MAX_FIELD, name
        elif isinstance(value, list):
            assert len(value) <= MAX_ITEMS, name
            assert all(isinstance(item, str) and len(item) <= MAX_FIELD for item in value), name
    assert all(isinstance(v, str) and len(v) <= MAX_FIELD for v in parsed.extra.values())


@FAST
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    check(parse_line(data))


@FAST
@given(st.text(max_size=400))
def test_random_text(text: str) -> None:
    check(parse_line(text))


@FAST
@given(st.sampled_from(SEEDS), st.integers(min_value=0, max_value=400))
def test_truncated_corpus_lines(seed: bytes, cut: int) -> None:
    check(parse_line(seed[:cut]))


@FAST
@given(
    st.sampled_from(SEEDS),
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=399), st.binary(min_size=0, max_size=8)), min_size=1, max_size=6
    ),
)
def test_mutated_corpus_lines(seed: bytes, edits: list[tuple[int, bytes]]) -> None:
    data = bytearray(seed)
    for position, insert in edits:
        position %= len(data) + 1
        data[position : position + len(insert) // 2] = insert  # replace some bytes, insert others
    check(parse_line(bytes(data)))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SEEDS),
    st.sampled_from([b"A", b" ", b'"', b"\\", b"(", b"<", b"[", b"=", b":", b"\x00", b"( ", b"H=( ", b"< "]),
)
def test_100kb_lines(seed: bytes, filler: bytes) -> None:
    check(parse_line(seed + filler * 100_000))
    check(parse_line(seed[:60] + filler * 100_000 + seed[60:]))


@FAST
@given(st.sampled_from(SEEDS), st.integers(min_value=0, max_value=300))
def test_nul_bytes(seed: bytes, position: int) -> None:
    check(parse_line(seed[:position] + b"\x00" * 3 + seed[position:]))
