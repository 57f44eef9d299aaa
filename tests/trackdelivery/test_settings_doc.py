"""docs/configuration.md is generated from the settings classes and must match the code."""

from __future__ import annotations

from trackdelivery import settings_doc


def test_configuration_reference_is_up_to_date() -> None:
    expected = settings_doc.render()
    current = settings_doc.OUTPUT.read_text(encoding="utf-8") if settings_doc.OUTPUT.exists() else ""
    assert current == expected, "docs/configuration.md is out of date: run python -m trackdelivery.settings_doc"


def test_every_setting_is_described() -> None:
    missing = [
        f"{doc.cls.__name__}.{variable.field}"
        for doc in map(settings_doc.describe, settings_doc.settings_classes())
        for variable in doc.variables if not variable.description
    ]
    assert not missing, f"give these settings a Field(description=...): {missing}"


def test_discovery_finds_every_component() -> None:
    names = {cls.__name__ for cls in settings_doc.settings_classes()}
    assert {"TopicNames", "KafkaSettings", "RedisSettings", "StoreSettings", "ShipperSettings", "ProcessorSettings",
            "QueryServiceSettings"} <= names


def test_environment_names_follow_prefix_and_aliases() -> None:
    from producers.settings import ShipperSettings
    from query_service.settings import QueryServiceSettings
    from trackdelivery.settings import KafkaSettings

    assert "KAFKA_SASL_PASSWORD" in settings_doc.class_env_names(KafkaSettings)
    shipper = settings_doc.class_env_names(ShipperSettings)
    assert {"KAFKA_BOOTSTRAP_SERVERS", "TRACKDELIVERY_BOOTSTRAP_SERVERS", "TRACKDELIVERY_CHECKPOINT_DIR"} <= shipper
    assert "TRACKDELIVERY_BOOTSTRAP_SERVERS" in shipper and "BOOTSTRAP_SERVERS" not in shipper
    assert {"REDIS_URL", "TRACKDELIVERY_STORE_PREFIX"} <= settings_doc.class_env_names(QueryServiceSettings)


def test_check_mode_reports_a_stale_file(tmp_path) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("old\n")
    assert settings_doc.main(["--check", "--output", str(stale)]) == 1
    assert settings_doc.main(["--output", str(stale)]) == 0
    assert settings_doc.main(["--check", "--output", str(stale)]) == 0
