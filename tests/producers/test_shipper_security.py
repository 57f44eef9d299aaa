"""The shipper's producer (librdkafka) over TLS and SASL, configured only through the ``KAFKA_*`` variables.

``tests/test_kafka_security.py`` runs ``replay`` over SASL_PLAINTEXT inside the whole pipeline; this adds
the TLS listeners: SASL_SSL with SCRAM and a private CA, and SSL with a client certificate.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.producers.shipper_helpers import line_text, read_topic
from tests.test_kafka_security import SecureKafka, secure_kafka  # noqa: F401 - the fixture
from trackdelivery.topics import create_topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.mark.parametrize("listener", ["sasl_ssl", "mutual_tls"])
def test_replay_over_tls(secure_kafka: SecureKafka, tmp_path: Path, listener: str) -> None:  # noqa: F811
    topic = f"tls.{listener}.{uuid.uuid4().hex[:8]}"
    create_topics(secure_kafka.broker.bootstrap, {topic: 1})
    lines = [line_text(7, n) for n in range(500)]
    log = tmp_path / "exim_mainlog"
    log.write_bytes(b"".join(line + b"\n" for line in lines))
    security = secure_kafka.sasl_ssl() if listener == "sasl_ssl" else secure_kafka.mutual_tls()
    environment = {key: value for key, value in os.environ.items() if not key.startswith("KAFKA_")}
    shipped = subprocess.run(
        [sys.executable, "-m", "trackdelivery", "replay", "--server", "mx-tls", "--topic", topic, "--no-progress",
         str(log)],
        env={**environment, **security}, capture_output=True, text=True, timeout=120, check=False,
    )
    assert shipped.returncode == 0, shipped.stderr[-3000:]
    assert "lines=500" in shipped.stdout and "failed=0" in shipped.stdout
    assert [line.data for line in read_topic(secure_kafka.broker.bootstrap, topic)] == lines


def test_replay_with_a_refused_password_fails_at_once(secure_kafka: SecureKafka, tmp_path: Path) -> None:  # noqa: F811
    log = tmp_path / "exim_mainlog"
    log.write_bytes(line_text(7, 1) + b"\n")
    environment = {key: value for key, value in os.environ.items() if not key.startswith("KAFKA_")}
    started = time.monotonic()
    shipped = subprocess.run(
        [sys.executable, "-m", "trackdelivery", "replay", "--topic", "any", "--no-progress", str(log)],
        env={**environment, **secure_kafka.sasl_ssl(password="not-the-password")}, capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert shipped.returncode == 1 and "failed=1" in shipped.stdout
    assert "Authentication failed" in shipped.stderr or "SASL_AUTHENTICATION_FAILED" in shipped.stderr, shipped.stderr
    assert time.monotonic() - started < 20
