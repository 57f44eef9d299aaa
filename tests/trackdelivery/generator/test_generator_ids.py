from __future__ import annotations

import re

from trackdelivery.generator.fastrandom import FastRandom
from trackdelivery.generator.ids import MessageIdFactory, base62_value, id_epoch, new_format_id, old_format_id


def test_new_format_matches_a_real_exim_id() -> None:
    # 1sDcIh-000000004YY-3wAT from a real 4.97+ log: time 1717300471, pid 17518, 938585 us
    assert new_format_id(1717300471, 17518, 938585) == "1sDcIh-000000004YY-3wAT"
    assert base62_value("000000004YY") == 17518


def test_old_format_has_16_chars_and_encodes_the_time() -> None:
    msgid = old_format_id(1284354014, 3000, 1999)
    assert re.fullmatch(r"[0-9A-Za-z]{6}-[0-9A-Za-z]{6}-[0-9A-Za-z]{2}", msgid)
    assert id_epoch(msgid) == 1284354014


def test_ids_are_unique_per_server_even_within_one_second() -> None:
    for new_format in (True, False):
        factory = MessageIdFactory(FastRandom("ids"), new_format)
        ids = [factory.arrival(1_741_600_000 + i // 50)[0] for i in range(20_000)]
        ids += [factory.bounce(1_741_600_000 + i // 50)[0] for i in range(5_000)]
        assert len(set(ids)) == len(ids)
        assert {len(i) for i in ids} == {23 if new_format else 16}
        assert id_epoch(ids[-1]) == 1_741_600_000 + 4_999 // 50
