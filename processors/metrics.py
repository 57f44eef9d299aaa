"""Prometheus metrics of the stream processor (one registry per process, served on the metrics port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from processors.pipeline import BatchResult, count_by_type


class ProcessorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records_in = Counter("trackdelivery_processor_records", "raw-topic records processed", registry=r)
        self.lines_in = Counter("trackdelivery_processor_lines", "log lines received", registry=r)
        self.duplicates = Counter(
            "trackdelivery_processor_duplicate_lines", "lines dropped as already processed (server, file, offset)",
            registry=r,
        )
        self.events_out = Counter(
            "trackdelivery_processor_events", "delivery events written, by type", ["type"], registry=r
        )
        self.parsed = Counter(
            "trackdelivery_processor_parsed_lines", "lines parsed, by kind (unknown ones are dead-lettered)", ["kind"],
            registry=r,
        )
        self.unparsed = Counter(
            "trackdelivery_processor_unparsed_lines", "lines sent to the unparsed (dead letter) topic", registry=r
        )
        self.undecodable = Counter(
            "trackdelivery_processor_undecodable_records", "raw-topic records that could not be decoded", registry=r
        )
        self.correlator_errors = Counter(
            "trackdelivery_processor_correlator_errors", "lines the correlator failed on", registry=r
        )
        self.output_retries = Counter(
            "trackdelivery_processor_output_retries", "failed output writes retried (Redis or Kafka down)", registry=r
        )
        self.stalls = Counter(
            "trackdelivery_processor_stalls", "times the consumer sat idle with unread records and was resumed",
            registry=r,
        )
        self.recommits = Counter(
            "trackdelivery_processor_recommits",
            "raw partitions whose processed records Kafka did not hold as committed, committed again", registry=r
        )
        self.refetched = Counter(
            "trackdelivery_processor_refetched_records", "raw records faust skipped, read directly", registry=r
        )
        self.released = Counter(
            "trackdelivery_processor_released_keys", "state keys dropped after their expiry", registry=r
        )
        self.trimmed_states = Counter(
            "trackdelivery_processor_trimmed_states",
            "message states cut down to fit one changelog record (detail dropped)", registry=r,
        )
        self.table_keys = Gauge(
            "trackdelivery_processor_table_keys", "state keys per partition at the last sweep", ["partition"],
            registry=r,
        )
        self.lag = Gauge(
            "trackdelivery_processor_consumer_lag", "records behind the partition's high watermark", ["partition"],
            registry=r,
        )
        self.redis_write_seconds = Histogram(
            "trackdelivery_processor_redis_write_seconds", "Redis write time of one record's outputs",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=r,
        )

    def observe(self, result: BatchResult) -> None:
        self.records_in.inc()
        self.lines_in.inc(result.lines_in)
        self.duplicates.inc(result.duplicates)
        for kind, count in result.kinds.items():
            self.parsed.labels(kind=kind).inc(count)
        self.unparsed.inc(len(result.unparsed))
        self.undecodable.inc(result.undecodable)
        self.correlator_errors.inc(result.correlator_errors)
        for event_type, count in count_by_type(result.events).items():
            self.events_out.labels(type=event_type).inc(count)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)
