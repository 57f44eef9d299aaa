"""Create the pipeline's Kafka topics explicitly: auto-creation is never assumed (dev brokers turn it off)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from trackdelivery.devenv.exceptions import DevEnvError


def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    replication: int = 1,
    configs: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> None:
    """Create each topic with its partition count; topics that already exist are left as they are."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="trackdelivery-admin",
                                     request_timeout_ms=30000)
        except KafkaError as error:  # broker not reachable yet
            last_error = error
            time.sleep(0.5)
            continue
        try:
            existing = set(admin.list_topics())
            missing = [
                NewTopic(name, partitions, replication, topic_configs=dict(configs or {}))
                for name, partitions in topics.items() if name not in existing
            ]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics(missing)
            if set(topics) <= set(admin.list_topics()):
                return
        except KafkaError as error:
            last_error = error
        finally:
            admin.close()
        time.sleep(0.5)
    raise DevEnvError(f"could not create topics {sorted(topics)} on {bootstrap}: {last_error}")
