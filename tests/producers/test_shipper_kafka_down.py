"""Kafka stopped for a while mid-stream, then started again: the shipper waits and loses nothing."""

from __future__ import annotations

import threading
import time

import pytest

from tests.producers.shipper_helpers import ShipperProcess, Writer, assert_in_order_per_file, wait_for_lines
from trackdelivery.topics import create_topics

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_kafka_outage_mid_stream_loses_nothing(tmp_path, kafka_broker_factory):
    broker = kafka_broker_factory()
    topic = "exim.mainlog.raw"
    create_topics(broker.bootstrap, {topic: 2})
    log = tmp_path / "exim_mainlog"
    log.touch()
    # a short delivery timeout, so the outage also exercises "rebuild the producer and send again"
    shipper = ShipperProcess(broker.bootstrap, topic, [log], tmp_path, extra=["--batch-bytes", str(128 << 10)],
                             env={"TRACKDELIVERY_DELIVERY_TIMEOUT_MS": "3000"})
    rotated = threading.Event()

    def rotate(path, generation):
        path.rename(path.with_name(path.name + ".1"))
        rotated.set()

    shipper.start()
    try:
        shipper.wait_started()
        writer = Writer(log, 40_000, 25_000, rotate, burst=50, pause=0.01)
        writer.start()
        time.sleep(2)
        broker.stop()
        assert writer.is_alive(), "the outage must start while lines are still being written"
        time.sleep(8)  # longer than the delivery timeout: sends fail and are retried
        assert shipper.process is not None and shipper.process.poll() is None, shipper.tail_log()
        broker.start()
        writer.join(timeout=240)
        writer.check()
        lines = wait_for_lines(broker.bootstrap, topic, writer.all_lines(), timeout=180)
    finally:
        exit_code = shipper.stop()
    assert exit_code == 0, shipper.tail_log()
    assert rotated.is_set()
    assert {line.data for line in lines} == writer.all_lines()
    taken, highest = [], {}
    for line in lines:  # a consumer's de-duplication by (file, offset)
        if line.offset > highest.get(line.file, -1):
            taken.append(line)
            highest[line.file] = line.offset
    assert len(taken) == len(writer.all_lines())
    assert_in_order_per_file(taken, writer.written)
    assert b"Kafka unavailable, reading paused" in shipper.log_path.read_bytes()
