from __future__ import annotations

import re

from trackdelivery.events import Reason
from trackdelivery.generator.responses import BY_KEY, RESPONSES, Response


def test_rows_are_frozen_and_complete() -> None:
    assert len(RESPONSES) >= 30
    for row in RESPONSES:
        assert isinstance(row, Response)
        assert isinstance(row.reason, Reason)
        assert row.text and "{" not in row.text.replace("{{", ""), row.key
        if row.smtp_code is not None and row.kind in ("smtp", "lmtp"):
            assert row.text.startswith(str(row.smtp_code)), row.key
            assert row.permanent == (row.smtp_code >= 500), row.key
        if row.enhanced_code is not None:
            assert re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", row.enhanced_code), row.key
            assert row.enhanced_code[0] == str(row.smtp_code)[0], row.key
        if not row.permanent:
            assert row.errno is not None, row.key


def test_the_provider_anchors_are_there() -> None:
    expectations = {
        "gmail_rate_limited": (421, "4.7.28", Reason.RATE_LIMITED, False),
        "gmail_dmarc": (550, "5.7.26", Reason.AUTH_FAILURE, True),
        "gmail_unknown_user": (550, "5.1.1", Reason.RECIPIENT_UNKNOWN, True),
        "yahoo_tss04": (421, "4.7.0", Reason.RATE_LIMITED, False),
        "microsoft_s3150": (550, "5.7.1", Reason.IP_REPUTATION, True),
        "greylist_4_7_1": (451, "4.7.1", Reason.GREYLISTED, False),
    }
    for key, (code, enhanced, reason, permanent) in expectations.items():
        row = BY_KEY[key]
        assert (row.smtp_code, row.enhanced_code, row.reason, row.permanent) == (code, enhanced, reason, permanent)
    assert "[TSS04]" in BY_KEY["yahoo_tss04"].text
    assert "(S3150)" in BY_KEY["microsoft_s3150"].text
    assert BY_KEY["gmail_rate_limited"].text.endswith("- gsmtp")
    assert "\\n421 4.7.28" in BY_KEY["gmail_rate_limited"].text  # multi-line replies as Exim logs them
