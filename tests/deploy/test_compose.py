"""deploy/docker-compose.yml: structure, health, ordering, volumes, and that every trackdelivery container
runs a real subcommand with variables its settings actually read (and accept)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.deploy._support import (
    DEPLOY,
    REPO_ROOT,
    check_env_names,
    check_flags,
    interpolate_defaults,
    resolve_command,
    validate_env,
)

COMPOSE = DEPLOY / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


def ours(service: dict[str, Any]) -> bool:
    """A service that runs the trackdelivery image."""
    return "build" in service or "trackdelivery" in str(service.get("image", ""))


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(name): interpolate_defaults(str(value)) for name, value in env.items()}


def test_every_service_has_an_image_or_a_build(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert "image" in service or "build" in service, f"service {name} has neither image nor build"
    builds = [service["build"] for service in compose["services"].values() if "build" in service]
    for build in builds:
        context = (COMPOSE.parent / build["context"]).resolve()
        assert (context / build["dockerfile"]).is_file(), build
        assert context == REPO_ROOT


def test_third_party_images_are_pinned(compose: dict[str, Any]) -> None:
    images = {name: service["image"] for name, service in compose["services"].items() if not ours(service)}
    assert images == {"kafka": "apache/kafka:4.1.1", "redis": "redis:7"}
    for service in compose["services"].values():
        assert not str(service.get("image", "")).endswith(":latest")


def test_the_pipeline_is_complete(compose: dict[str, Any]) -> None:
    commands = {
        tuple(service["command"][:2] if service["command"][0] == "topics" else service["command"][:1])
        for service in compose["services"].values() if ours(service)
    }
    assert {("topics", "create"), ("process",), ("serve",), ("alerts",)} <= commands


@pytest.mark.parametrize("name", ["kafka", "redis", "query"])
def test_healthchecks(compose: dict[str, Any], name: str) -> None:
    check = compose["services"][name]["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1
    assert {"interval", "timeout", "retries"} <= set(check)


def test_query_healthcheck_asks_healthz_on_the_served_port(compose: dict[str, Any]) -> None:
    query = compose["services"]["query"]
    port = environment(query)["TRACKDELIVERY_PORT"]
    assert f"127.0.0.1:{port}/healthz" in " ".join(query["healthcheck"]["test"])
    assert any(str(mapping).endswith(f":{port}:{port}") for mapping in query["ports"])


def test_depends_on_waits_for_health_or_completion(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on must use the long form with a condition"
        for target, rule in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = rule["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} to be healthy: no healthcheck"
            elif condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} is a one-shot: restart must be 'no'"
            else:
                pytest.fail(f"{name} -> {target}: condition {condition!r} does not wait for readiness")
    for name, service in services.items():
        if ours(service) and name != "topics":
            uses_kafka = any(key.startswith("KAFKA_") for key in environment(service))
            if uses_kafka:
                assert "kafka" in service["depends_on"], name
            if "REDIS_URL" in environment(service):
                assert service["depends_on"]["redis"]["condition"] == "service_healthy", name


def test_named_volumes_are_declared_and_used(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if not source.startswith(("/", ".", "$")):
                assert source in declared, f"{name} mounts undeclared volume {source}"
                used.add(source)
    assert declared == used, f"declared but unused: {sorted(declared - used)}"
    for name in ("kafka", "redis", "processor", "alerts"):
        assert compose["services"][name].get("volumes"), f"{name} keeps state: it needs a volume"


def test_trackdelivery_services_run_real_subcommands(compose: dict[str, Any]) -> None:
    for service in compose["services"].values():
        if ours(service):
            path, command, rest = resolve_command(service["command"])
            check_flags(path, command, rest)


def test_environment_names_are_what_each_command_reads(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if ours(service):
            check_env_names(service["command"][0], environment(service), f"compose service {name}")


def test_environment_values_are_accepted(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    for service in compose["services"].values():
        if ours(service):
            env = environment(service)
            if service["command"][0] == "ship":
                env["TRACKDELIVERY_SERVER"] = env.get("TRACKDELIVERY_SERVER") or "mail1.example.net"  # set by the host
            validate_env(service["command"][0], env, monkeypatch)


def test_metrics_endpoints_listen_beyond_loopback(compose: dict[str, Any]) -> None:
    """Processor and alert worker default to 127.0.0.1; their healthchecks and scrapers need more."""
    for name in ("processor", "alerts"):
        env = environment(compose["services"][name])
        hosts = [value for key, value in env.items() if key.endswith("_METRICS_HOST")]
        ports = [value for key, value in env.items() if key.endswith("_METRICS_PORT")]
        assert hosts == ["0.0.0.0"], name
        assert f":{ports[0]}/metrics" in " ".join(compose["services"][name]["healthcheck"]["test"])


def test_data_directories_are_on_volumes(compose: dict[str, Any]) -> None:
    for name, key in (("processor", "TRACKDELIVERY_PROCESSOR_DATADIR"), ("alerts", "TRACKDELIVERY_ALERTS_DATADIR"),
                      ("shipper", "TRACKDELIVERY_CHECKPOINT_DIR")):
        service = compose["services"][name]
        targets = [volume.split(":")[1] for volume in service["volumes"]]
        assert environment(service)[key] in targets, name
