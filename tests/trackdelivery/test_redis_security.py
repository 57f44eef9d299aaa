"""Redis with TLS and an ACL user, given to every component as a ``rediss://user:password@...`` URL.

A private redis-server (Debian's, built with TLS) listens only on a TLS port, has the default user
switched off and one user confined to the store's keys without the dangerous commands: the processor's
writer, the query service's search and the ``tokens`` command all work through the URL alone.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import redis.asyncio
from click.testing import CliRunner

from tests.trackdelivery.store.factories import NOW, make_event
from tests.trackdelivery.tls import TlsFiles, make_tls_files
from trackdelivery.devenv.ports import free_port, wait_for
from trackdelivery.devenv.redis import redis_server_binary

pytestmark = pytest.mark.redis

PASSWORD = "tls-acl-Pa55word"


@dataclass(frozen=True, slots=True)
class SecureRedis:
    port: int
    tls: TlsFiles

    def url(self, password: str = PASSWORD, ca: Path | None = None) -> str:
        return (f"rediss://td:{password}@localhost:{self.port}/0"
                f"?ssl_ca_certs={ca or self.tls.ca}&ssl_cert_reqs=required")


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRedis]:
    workdir = tmp_path_factory.mktemp("secure-redis")
    tls = make_tls_files(workdir / "tls")
    port = free_port()
    process = subprocess.Popen(
        [redis_server_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(tls.server_cert), "--tls-key-file", str(tls.server_key),
         "--tls-ca-cert-file", str(tls.ca), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(workdir), "--logfile", str(workdir / "redis.log"),
         "--user", "default", "off",
         "--user", "td", "on", f">{PASSWORD}", "~td:*", "+@all", "-@dangerous"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    server = SecureRedis(port, tls)

    def ready() -> bool:
        if process.poll() is not None:
            log = workdir / "redis.log"
            raise RuntimeError(f"redis-server exited: {log.read_text()[-2000:] if log.exists() else ''}")
        try:
            return bool(redis.Redis.from_url(server.url(), socket_timeout=1).ping())
        except (redis.RedisError, OSError):
            return False

    try:
        wait_for(ready, 30, f"TLS Redis on port {port}")
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_processor_writes_and_query_service_reads_over_tls_with_acl(secure_redis: SecureRedis) -> None:
    from processors.app import default_writer
    from query_service.app import redis_client, store_settings
    from query_service.search import DeliverySearch
    from query_service.settings import QueryServiceSettings
    from trackdelivery.store.types import Query

    writer = default_writer(secure_redis.url())
    event = make_event(time=NOW - 60, server="tls.example.net")
    try:
        await writer.write([event])
    finally:
        await writer.client.aclose()

    settings = QueryServiceSettings(redis_url=secure_redis.url())
    client = redis_client(settings)
    try:
        result = await DeliverySearch(client, store_settings(settings)).search(Query(server="tls.example.net"), now=NOW)
    finally:
        await client.aclose()
    assert [found.event_id for found in result.events] == [event.event_id]


def test_tokens_command_over_tls_with_acl(secure_redis: SecureRedis) -> None:
    from trackdelivery.cli import main

    runner = CliRunner()
    created = runner.invoke(main, ["tokens", "--redis-url", secure_redis.url(), "create", "--operator"])
    assert created.exit_code == 0, created.output
    listed = runner.invoke(main, ["tokens", "--redis-url", secure_redis.url(), "list"])
    assert listed.exit_code == 0 and "operator" in listed.output


def test_wrong_password_and_untrusted_certificate_are_refused(secure_redis: SecureRedis, tmp_path: Path) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(secure_redis.url(password="wrong"), socket_timeout=5).ping()
    other_ca = make_tls_files(tmp_path / "other").ca
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        redis.Redis.from_url(secure_redis.url(ca=other_ca), socket_timeout=5).ping()
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host="127.0.0.1", port=secure_redis.port, socket_timeout=5).ping()  # plain TCP to a TLS port
