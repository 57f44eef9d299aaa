"""``trackdelivery search|show|tail`` against the API served over HTTP, and ``trackdelivery tokens``."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator

import orjson
import pytest
from click.testing import CliRunner
from redis.asyncio import Redis

from processors.sinks.redis import RedisWriter
from query_service.app import create_app
from query_service.tokens import TokenStore
from tests.query_service.conftest import FilledStore, serve_in_thread
from tests.query_service.fleet_data import matches, newest_first
from trackdelivery.cli import main
from trackdelivery.events import EventType
from trackdelivery.store import StoreSettings


async def _token(store: FilledStore, **scope: object) -> str:
    client = Redis.from_url(store.redis_url)
    try:
        token, _ = await TokenStore(client, store.prefix + ":").create(**scope)  # type: ignore[arg-type]
    finally:
        await client.aclose()
    return token


@pytest.fixture(scope="module")
def service(filled_store: FilledStore) -> Iterator[tuple[str, str]]:
    app = create_app(filled_store.settings(stream_poll_seconds=0.1, stream_max_seconds=1.5))
    with serve_in_thread(app) as url:
        yield url, asyncio.run(_token(filled_store, operator=True))


@pytest.fixture
def cli(service: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    url, token = service
    monkeypatch.setenv("TRACKDELIVERY_URL", url)
    monkeypatch.setenv("TRACKDELIVERY_TOKEN", token)
    return CliRunner()


def test_search_json_is_the_api_answer(cli: CliRunner, filled_store: FilledStore) -> None:
    bounced = next(e for e in filled_store.fleet.events if e.type is EventType.BOUNCED)
    since = filled_store.now - 3 * 86400
    result = cli.invoke(
        main, ["search", "--user", bounced.cpanel_user, "--blocked-and-failed", "--since", str(since), "--json"]
    )
    assert result.exit_code == 0, result.output
    answer = orjson.loads(result.stdout)
    oracle = {
        "user": bounced.cpanel_user,
        "since": since,
        "types": {EventType.BOUNCED, EventType.EXPIRED, EventType.REJECTED},
    }
    expected = [e.event_id for e in newest_first(e for e in filled_store.fleet.events if matches(e, oracle))]
    assert [e["event_id"] for e in answer["events"]] == expected


def test_search_table_shows_log_strings_literally(cli: CliRunner, filled_store: FilledStore) -> None:
    bounced = next(e for e in filled_store.fleet.events if e.type is EventType.BOUNCED)
    result = cli.invoke(main, ["search", "--recipient", bounced.recipient, "--period", "last_week"])
    assert result.exit_code == 0, result.output
    assert bounced.recipient in result.stdout
    assert "bounced" in result.stdout
    assert "shown of" in result.stdout


def test_show_tells_the_story_and_404_is_an_error(cli: CliRunner, filled_store: FilledStore) -> None:
    bounced = next(e for e in filled_store.fleet.events if e.type is EventType.BOUNCED and e.reason is not None)
    result = cli.invoke(main, ["show", bounced.server, bounced.msgid])
    assert result.exit_code == 0, result.output
    assert bounced.recipient in result.stdout
    assert "fix: " in result.stdout
    assert "route: " in result.stdout
    missing = cli.invoke(main, ["show", bounced.server, "1zzzzz-000000000Kg-0000"])
    assert missing.exit_code == 1
    assert "no message" in missing.stderr


def test_bad_input_and_bad_tokens_are_reported(cli: CliRunner) -> None:
    bad = cli.invoke(main, ["search", "--type", "nonsense"])
    assert bad.exit_code == 1
    assert "unknown event type" in bad.stderr
    refused = cli.invoke(main, ["search", "--token", "td_0123456789ab_" + "x" * 43])
    assert refused.exit_code == 1
    assert "401" in refused.stderr
    unreachable = cli.invoke(main, ["search", "--url", "http://127.0.0.1:1"])
    assert unreachable.exit_code == 1
    assert "cannot reach" in unreachable.stderr


def test_tail_prints_new_events_until_the_server_closes(cli: CliRunner, filled_store: FilledStore) -> None:
    template = next(e for e in filled_store.fleet.events if e.type is EventType.DEFERRED)
    now = time.time()
    new = [
        dataclasses.replace(
            template, time=now + n / 1000, event_id="", retry=dataclasses.replace(template.retry, attempt=10 + n)
        )
        for n in range(3)
    ]

    async def write() -> None:
        client = Redis.from_url(filled_store.redis_url)
        try:
            await RedisWriter(client, StoreSettings(prefix=filled_store.prefix)).write(new)
        finally:
            await client.aclose()

    asyncio.run(write())
    result = cli.invoke(main, ["tail", "--json", "--server", template.server])
    assert result.exit_code == 0, result.output
    got = [orjson.loads(line)["event_id"] for line in result.stdout.splitlines()]
    assert {e.event_id for e in new} <= set(got)


def test_tokens_create_list_revoke(filled_store: FilledStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", filled_store.redis_url)
    monkeypatch.setenv("TRACKDELIVERY_STORE_PREFIX", filled_store.prefix)
    runner = CliRunner()
    created = runner.invoke(
        main, ["tokens", "create", "--user", "acct01", "--domain", "acct01.example", "--name", "portal", "--json"]
    )
    assert created.exit_code == 0, created.output
    record = orjson.loads(created.stdout)
    assert record["token"].startswith("td_")
    assert (record["kind"], record["users"], record["domains"]) == ("account", ["acct01"], ["acct01.example"])
    listed = runner.invoke(main, ["tokens", "list"])
    assert record["id"] in listed.stdout
    assert record["token"] not in listed.stdout
    assert runner.invoke(main, ["tokens", "revoke", record["id"]]).exit_code == 0
    assert record["id"] not in runner.invoke(main, ["tokens", "list"]).stdout
    assert runner.invoke(main, ["tokens", "revoke", record["id"]]).exit_code == 1
    wrong = runner.invoke(main, ["tokens", "create", "--operator", "--user", "acct01"])
    assert wrong.exit_code == 2
    assert "operator token sees everything" in wrong.stderr
