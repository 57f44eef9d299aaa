"""Settings shared by every component: where Kafka and Redis are, and the topic names.

Frozen pydantic-settings objects; values come from explicit arguments, then the environment.

Kafka security (TLS, SASL) is set here once and turned into each client library's arguments by
``KafkaSettings.librdkafka_config()`` (confluent-kafka), ``aiokafka_config()`` (aiokafka) and
``faust_config()`` (faust). Redis needs no extra settings: the ACL user, password and TLS options all
travel in ``REDIS_URL`` (``redis://user:password@host:6379/0``, ``rediss://...?ssl_ca_certs=/ca.pem``),
which every component hands to redis-py's ``from_url`` (``trackdelivery.connections``); ``REDIS_CLUSTER``
says it names one node of a Redis Cluster.
"""

from __future__ import annotations

import ssl
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class TopicNames(BaseSettings):
    """Names of the pipeline's Kafka topics."""

    model_config = SettingsConfigDict(env_prefix="TRACKDELIVERY_TOPIC_", frozen=True)

    raw: str = "exim.mainlog.raw"
    events: str = "exim.delivery.events"
    unparsed: str = "exim.mainlog.unparsed"
    alerts: str = "exim.delivery.alerts"
    alert_signals: str = "exim.delivery.alerts.signals"  # internal: events fanned out by rule and scope
    heartbeats: str = "exim.shipper.heartbeats"


class KafkaSettings(BaseSettings):
    """Where Kafka is, how to authenticate to it, and the partitioning of the pipeline's topics."""

    # An empty variable counts as unset, so env-file templates may leave optional values blank; validation
    # errors never echo the input (it holds the SASL password).
    model_config = SettingsConfigDict(env_prefix="KAFKA_", frozen=True, env_ignore_empty=True,
                                      hide_input_in_errors=True)

    bootstrap_servers: str = Field(default="127.0.0.1:9092", min_length=1,
                                   description="comma-separated host:port list of brokers")
    partitions: int = Field(
        default=8, ge=1, description="partitions of the keyed topics `topics create` makes (all but the alerts topic)"
    )
    replication_factor: int = Field(default=1, ge=1, description="replication factor of the topics created")
    security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL (SASL over TLS)"
    )
    sasl_mechanism: SaslMechanism = Field(
        default="PLAIN", description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with a SASL_* protocol)"
    )
    sasl_username: str | None = Field(default=None, description="SASL user (with a SASL_* protocol)")
    sasl_password: SecretStr | None = Field(default=None, description="SASL password (with a SASL_* protocol)")
    ssl_cafile: str | None = Field(
        default=None, description="PEM file of the CAs that signed the brokers' certificates; default: system CAs"
    )
    ssl_certfile: str | None = Field(default=None, description="PEM client certificate (mutual TLS)")
    ssl_keyfile: str | None = Field(default=None, description="PEM private key of ssl_certfile, if not in it")

    @field_validator("security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        if self.uses_sasl:
            if not self.sasl_username or self.sasl_password is None or not self.sasl_password.get_secret_value():
                raise ValueError(f"security_protocol {self.security_protocol} needs sasl_username and sasl_password")
        elif self.sasl_username or self.sasl_password is not None:
            raise ValueError("sasl_username/sasl_password need security_protocol SASL_PLAINTEXT or SASL_SSL")
        if not self.uses_ssl and (self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile):
            raise ValueError("ssl_cafile/ssl_certfile/ssl_keyfile need security_protocol SSL or SASL_SSL")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("ssl_keyfile needs ssl_certfile")
        return self

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def bootstrap_list(self) -> list[str]:
        return [server.strip() for server in self.bootstrap_servers.split(",") if server.strip()]

    def _sasl_credentials(self) -> tuple[str, str]:
        assert self.sasl_username is not None and self.sasl_password is not None  # checked by _consistent
        return self.sasl_username, self.sasl_password.get_secret_value()

    def librdkafka_config(self) -> dict[str, Any]:
        """Connection settings of a librdkafka client (confluent-kafka ``Producer``, ``Consumer``, ``AdminClient``)."""
        config: dict[str, Any] = {"bootstrap.servers": ",".join(self.bootstrap_list()),
                                  "security.protocol": self.security_protocol.lower()}
        if self.uses_sasl:
            username, password = self._sasl_credentials()
            config.update({"sasl.mechanism": self.sasl_mechanism, "sasl.username": username,
                           "sasl.password": password})
        if self.uses_ssl:
            # No CA file: the system's CAs, like aiokafka (librdkafka probes the usual paths).
            config["ssl.ca.location"] = self.ssl_cafile or "probe"
            if self.ssl_certfile:
                config["ssl.certificate.location"] = self.ssl_certfile
                config["ssl.key.location"] = self.ssl_keyfile or self.ssl_certfile  # the key may be in the cert
        return config

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context aiokafka and faust need (hostname checked; system CAs unless ``ssl_cafile``)."""
        from aiokafka.helpers import create_ssl_context

        return create_ssl_context(cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile)

    def aiokafka_config(self) -> dict[str, Any]:
        """Connection arguments of an aiokafka client (``AIOKafkaConsumer``, ``AIOKafkaProducer``)."""
        config: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers,
                                  "security_protocol": self.security_protocol}
        if self.uses_sasl:
            username, password = self._sasl_credentials()
            config.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=username,
                          sasl_plain_password=password)
        if self.uses_ssl:
            config["ssl_context"] = self.ssl_context()
        return config

    def faust_config(self) -> dict[str, Any]:
        """Keyword arguments for ``faust.App``: ``broker_credentials`` unless the connection is PLAINTEXT."""
        if self.security_protocol == "PLAINTEXT":
            return {}
        import faust

        context = self.ssl_context() if self.uses_ssl else None
        credentials: Any
        if self.uses_sasl:
            username, password = self._sasl_credentials()
            credentials = faust.SASLCredentials(username=username, password=password, ssl_context=context,
                                                mechanism=self.sasl_mechanism)
        else:
            credentials = faust.SSLCredentials(context)
        return {"broker_credentials": credentials}


def as_kafka_settings(kafka: str | KafkaSettings) -> KafkaSettings:
    """``kafka`` itself, or for a bare ``host:port[,...]`` string a PLAINTEXT connection to it.

    The string form (tests, the local dev broker) never reads the environment; production paths pass the
    ``KafkaSettings`` they loaded so their security settings apply.
    """
    if isinstance(kafka, KafkaSettings):
        return kafka
    return KafkaSettings.model_construct(bootstrap_servers=kafka)


class RedisSettings(BaseSettings):
    """Where the Redis query store is. ACL user, password and TLS go in the URL (redis-py ``from_url``)."""

    model_config = SettingsConfigDict(env_prefix="REDIS_", frozen=True)

    url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="redis://[user:password@]host:port/db; rediss:// for TLS, with ssl_ca_certs=, ssl_certfile=, "
        "ssl_keyfile=, ssl_cert_reqs= query parameters",
    )
    cluster: bool = Field(default=False, description="REDIS_URL is one node of a Redis Cluster")
    wait_replicas: int = Field(
        default=0, ge=0,
        description="writers wait until this many connected replicas of every master have acknowledged a write "
        "before the source offset may be committed (1 with replicated Redis: a failover loses nothing committed)",
    )
    wait_replicas_timeout: float = Field(
        default=10.0, gt=0, description="seconds to wait for the replicas before the write counts as failed (retried)"
    )

    @classmethod
    def from_dsn(cls, dsn: str) -> RedisSettings:
        return cls(url=dsn)


def redact_url(url: str) -> str:
    """``url`` with the password (if any) replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def topic_partitions(kafka: KafkaSettings, topics: TopicNames) -> dict[str, int]:
    """Every topic the pipeline uses, with its partition count (raw and events share the key space)."""
    return {
        topics.raw: kafka.partitions,
        topics.events: kafka.partitions,
        topics.unparsed: kafka.partitions,
        topics.alerts: 1,
        topics.alert_signals: kafka.partitions,
        topics.heartbeats: kafka.partitions,
    }
