"""KafkaSettings security: the client arguments built for librdkafka, aiokafka and faust, validation,
and the password kept out of every representation."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from tests.trackdelivery.tls import TlsFiles, make_tls_files
from trackdelivery import settings_doc
from trackdelivery.settings import KafkaSettings, RedisSettings, as_kafka_settings, redact_url

PASSWORD = "s3cr3t-Pa55word"  # must never show up in output


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Only what a test sets: the machine's KAFKA_*/REDIS_* variables (e.g. in CI) are removed."""
    for name in settings_doc.class_env_names(KafkaSettings) | settings_doc.class_env_names(RedisSettings):
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def sasl(protocol: str = "SASL_SSL", mechanism: str = "SCRAM-SHA-512", **extra: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers="k1:9093, k2:9093", security_protocol=protocol,  # type: ignore[arg-type]
                         sasl_mechanism=mechanism, sasl_username="td", sasl_password=PASSWORD,  # type: ignore[arg-type]
                         **extra)


def test_plaintext_default_builds_the_arguments_used_before() -> None:
    kafka = KafkaSettings()
    assert kafka.security_protocol == "PLAINTEXT"
    assert kafka.librdkafka_config() == {"bootstrap.servers": "127.0.0.1:9092", "security.protocol": "plaintext"}
    assert kafka.aiokafka_config() == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}
    assert kafka.faust_config() == {}


def test_read_from_the_environment(monkeypatch: pytest.MonkeyPatch, tls: TlsFiles) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "b1:9093,b2:9093")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "scram-sha-256")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "shipper")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("KAFKA_SSL_CAFILE", str(tls.ca))
    kafka = KafkaSettings()
    assert kafka.security_protocol == "SASL_SSL"
    assert (kafka.sasl_mechanism, kafka.sasl_username) == ("SCRAM-SHA-256", "shipper")
    assert kafka.sasl_password is not None and kafka.sasl_password.get_secret_value() == PASSWORD
    assert kafka.ssl_cafile == str(tls.ca)
    assert kafka.bootstrap_list() == ["b1:9093", "b2:9093"]


def test_empty_variables_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Env-file templates leave optional values blank."""
    for name in ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "KAFKA_SSL_CAFILE", "KAFKA_SECURITY_PROTOCOL"):
        monkeypatch.setenv(name, "")
    kafka = KafkaSettings()
    assert kafka.security_protocol == "PLAINTEXT" and kafka.sasl_username is None and kafka.ssl_cafile is None


def test_sasl_plaintext() -> None:
    kafka = sasl("SASL_PLAINTEXT", "PLAIN")
    assert kafka.librdkafka_config() == {
        "bootstrap.servers": "k1:9093,k2:9093", "security.protocol": "sasl_plaintext",
        "sasl.mechanism": "PLAIN", "sasl.username": "td", "sasl.password": PASSWORD,
    }
    assert kafka.aiokafka_config() == {
        "bootstrap_servers": "k1:9093, k2:9093", "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN", "sasl_plain_username": "td", "sasl_plain_password": PASSWORD,
    }


def test_sasl_ssl_with_a_private_ca(tls: TlsFiles) -> None:
    kafka = sasl(ssl_cafile=str(tls.ca))
    librdkafka = kafka.librdkafka_config()
    assert librdkafka["security.protocol"] == "sasl_ssl" and librdkafka["sasl.mechanism"] == "SCRAM-SHA-512"
    assert librdkafka["ssl.ca.location"] == str(tls.ca) and "ssl.certificate.location" not in librdkafka
    aio = kafka.aiokafka_config()
    context = aio.pop("ssl_context")
    assert aio == {"bootstrap_servers": "k1:9093, k2:9093", "security_protocol": "SASL_SSL",
                   "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "td", "sasl_plain_password": PASSWORD}
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert any(cert["subject"] == ((("commonName", "trackdelivery test CA"),),) for cert in context.get_ca_certs())


def test_ssl_with_a_client_certificate(tls: TlsFiles) -> None:
    kafka = KafkaSettings(security_protocol="SSL", ssl_cafile=str(tls.ca), ssl_certfile=str(tls.client_cert),
                          ssl_keyfile=str(tls.client_key))
    assert kafka.librdkafka_config() == {
        "bootstrap.servers": "127.0.0.1:9092", "security.protocol": "ssl", "ssl.ca.location": str(tls.ca),
        "ssl.certificate.location": str(tls.client_cert), "ssl.key.location": str(tls.client_key),
    }
    assert "sasl_mechanism" not in kafka.aiokafka_config()
    assert isinstance(kafka.ssl_context(), ssl.SSLContext)  # loads the certificate and its key


def test_ssl_without_a_ca_file_trusts_the_system_cas() -> None:
    context = KafkaSettings(security_protocol="SSL").ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_faust_credentials_map_to_the_same_aiokafka_arguments(tls: TlsFiles) -> None:
    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    for kafka, kind, protocol in (
        (sasl(ssl_cafile=str(tls.ca)), faust.SASLCredentials, "SASL_SSL"),
        (sasl("SASL_PLAINTEXT", "SCRAM-SHA-256"), faust.SASLCredentials, "SASL_PLAINTEXT"),
        (KafkaSettings(security_protocol="SSL", ssl_cafile=str(tls.ca)), faust.SSLCredentials, "SSL"),
    ):
        credentials = kafka.faust_config()["broker_credentials"]
        assert isinstance(credentials, kind)
        faust_auth = dict(credentials_to_aiokafka_auth(credentials))
        ours = kafka.aiokafka_config()
        assert faust_auth["security_protocol"] == ours["security_protocol"] == protocol
        assert isinstance(faust_auth.get("ssl_context"), ssl.SSLContext) == (protocol != "SASL_PLAINTEXT")
        for key in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password"):
            assert faust_auth.get(key) == ours.get(key), key
        assert PASSWORD not in repr(credentials)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"security_protocol": "SASL_SSL", "sasl_username": "td"}, "needs sasl_username and sasl_password"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_password": PASSWORD}, "needs sasl_username and sasl_password"),
        ({"sasl_username": "td", "sasl_password": PASSWORD}, "need security_protocol SASL_PLAINTEXT or SASL_SSL"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_username": "td", "sasl_password": PASSWORD,
          "ssl_cafile": "/ca.pem"}, "need security_protocol SSL or SASL_SSL"),
        ({"security_protocol": "SSL", "ssl_keyfile": "/key.pem"}, "ssl_keyfile needs ssl_certfile"),
        ({"security_protocol": "TLS"}, "security_protocol"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI", "sasl_username": "td",
          "sasl_password": PASSWORD}, "sasl_mechanism"),
        ({"bootstrap_servers": ""}, "bootstrap_servers"),
    ],
)
def test_inconsistent_settings_are_refused(arguments: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        KafkaSettings(**arguments)  # type: ignore[arg-type]
    assert message in str(caught.value)
    assert PASSWORD not in str(caught.value) and PASSWORD not in repr(caught.value)


def test_the_password_never_shows(tls: TlsFiles) -> None:
    kafka = sasl(ssl_cafile=str(tls.ca))
    for text in (repr(kafka), str(kafka), kafka.model_dump_json(), repr(kafka.model_dump()), f"{kafka}",
                 repr(kafka.faust_config())):
        assert PASSWORD not in text
    assert "**********" in repr(kafka)


def test_a_bare_address_means_plaintext_whatever_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    kafka = as_kafka_settings("127.0.0.1:1234")
    assert kafka.security_protocol == "PLAINTEXT" and kafka.bootstrap_servers == "127.0.0.1:1234"
    loaded = sasl()
    assert as_kafka_settings(loaded) is loaded


def test_the_shipper_takes_security_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from producers.settings import ShipperSettings

    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "shipper")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", PASSWORD)
    settings = ShipperSettings.load(None, bootstrap_servers="k1:9092", partitions=3)
    kafka = settings.kafka_settings()
    assert (kafka.bootstrap_servers, kafka.partitions, kafka.security_protocol) == ("k1:9092", 3, "SASL_PLAINTEXT")
    assert kafka.librdkafka_config()["sasl.username"] == "shipper"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        (f"redis://td:{PASSWORD}@redis.example:6379/0", "redis://td:***@redis.example:6379/0"),
        (f"rediss://:{PASSWORD}@[::1]:6380/1?ssl_ca_certs=/ca.pem", "rediss://:***@[::1]:6380/1?ssl_ca_certs=/ca.pem"),
        ("redis://td@redis.example/0", "redis://td@redis.example/0"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redis_tls_and_acl_options_travel_in_the_url(tls: TlsFiles) -> None:
    import redis.asyncio

    url = f"rediss://td:{PASSWORD}@redis.example:6380/2?ssl_ca_certs={tls.ca}&ssl_cert_reqs=required"
    client = redis.asyncio.Redis.from_url(RedisSettings(url=url).url)
    options = client.connection_pool.connection_kwargs
    assert options["username"] == "td" and options["password"] == PASSWORD and options["db"] == 2
    assert options["ssl_ca_certs"] == str(tls.ca)
    assert client.connection_pool.connection_class is redis.asyncio.SSLConnection
