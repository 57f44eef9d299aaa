"""Schemathesis over the OpenAPI document, in-process: no input makes the service answer 5xx."""

from __future__ import annotations

import asyncio

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from redis.asyncio import Redis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from processors.alerts.types import AlertState, RuleKind, Severity
from query_service.app import create_app
from query_service.tokens import TokenStore
from tests.query_service.alert_data import alert, example, put_alerts
from tests.query_service.conftest import FilledStore


async def _operator_token(store: FilledStore) -> str:
    client = Redis.from_url(store.redis_url)
    try:
        token, _ = await TokenStore(client, store.prefix + ":").create(operator=True, name="fuzz")
    finally:
        await client.aclose()
    return token


def _alerts(now: float) -> list[dict[str, object]]:
    """A few alerts, so /alerts answers records (firing and resolved) rather than an empty list."""
    return [
        alert(
            rule="provider_throttling",
            kind=RuleKind.PROVIDER_BLOCK,
            severity=Severity.CRITICAL,
            scope={"server": "srv005.example-hosting.net", "provider": "gmail"},
            last_seen=now - 60,
            examples=[example(time=now - 70)],
        ),
        alert(
            rule="outbound_spam",
            kind=RuleKind.OUTBOUND_SPAM,
            scope={"server": "cp1.example-hosting.net", "user": "x"},
            state=AlertState.RESOLVED,
            last_seen=now - 600,
            count=0.5,
        ),
    ]


@pytest.fixture(scope="module")
def fuzz_target(filled_store: FilledStore) -> tuple[object, str]:
    asyncio.run(put_alerts(filled_store.redis_url, filled_store.prefix, _alerts(filled_store.now)))
    app = create_app(filled_store.settings(stream_poll_seconds=0.05, stream_max_seconds=0.1))
    return app, asyncio.run(_operator_token(filled_store))


@pytest.fixture(scope="module")
def api_schema(fuzz_target: tuple[object, str]) -> schemathesis.schemas.BaseSchema:
    app, _ = fuzz_target
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _operations(api_schema: schemathesis.schemas.BaseSchema) -> list[object]:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 4
    return operations


@pytest.mark.parametrize("mode", list(GenerationMode))
def test_no_input_makes_a_server_error(api_schema, fuzz_target: tuple[object, str], mode: GenerationMode) -> None:
    _, token = fuzz_target
    for operation in _operations(api_schema):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def check(case: schemathesis.Case) -> None:
            response = case.call(headers={"Authorization": f"Bearer {token}"})
            case.validate_response(response, checks=[not_a_server_error])
            # negative cases may mangle the Authorization header too: then 401 is right
            allowed = (200, 404, 422) if mode is GenerationMode.POSITIVE else (200, 401, 404, 422)
            assert response.status_code in allowed, (response.status_code, response.text[:300])

        check()


def test_without_a_token_every_operation_is_401(api_schema) -> None:
    for operation in _operations(api_schema):

        @given(case=operation.as_strategy())
        @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def check(case: schemathesis.Case) -> None:
            assert case.call().status_code == 401

        check()
