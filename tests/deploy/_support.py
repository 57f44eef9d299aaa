"""What the deploy checks compare against: the code's own settings classes, commands and metrics."""

from __future__ import annotations

import importlib
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import click
import pytest
from prometheus_client import CollectorRegistry
from pydantic_settings import BaseSettings

from trackdelivery import settings_doc

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
PACKAGES = settings_doc.PACKAGES

#: the settings classes each long-running subcommand builds from the environment
COMMAND_SETTINGS: dict[str, tuple[str, ...]] = {
    "ship": ("ShipperSettings", "KafkaSettings"),
    "replay": ("ShipperSettings", "KafkaSettings"),
    "topics": ("KafkaSettings", "TopicNames"),
    "process": ("ProcessorSettings", "KafkaSettings", "RedisSettings", "TopicNames", "StoreSettings"),
    "rebuild": ("ProcessorSettings", "KafkaSettings", "RedisSettings", "TopicNames", "StoreSettings"),
    "alerts": ("AlertSettings", "KafkaSettings", "RedisSettings", "TopicNames", "StoreSettings"),
    "serve": ("QueryServiceSettings", "StoreSettings"),
}


@cache
def settings_by_name() -> dict[str, type[BaseSettings]]:
    return {cls.__name__: cls for cls in settings_doc.settings_classes()}


@cache
def all_env_names() -> frozenset[str]:
    names: set[str] = set()
    for cls in settings_by_name().values():
        names |= settings_doc.class_env_names(cls)
    for command in settings_doc.subcommands().values():
        names |= set(settings_doc.option_envvars(command))
    return frozenset(names)


def resolve_command(args: Iterable[str]) -> tuple[list[str], click.Command, list[str]]:
    """``["topics", "create", "--x"]`` -> (["topics", "create"], the click command, remaining args)."""
    args = list(args)
    commands = settings_doc.subcommands()
    if not args or args[0] not in commands:
        raise AssertionError(f"not a trackdelivery subcommand: {args[:1]} (known: {sorted(commands)})")
    path, command, rest = [args[0]], commands[args[0]], args[1:]
    while isinstance(command, click.Group):
        if not rest or rest[0] not in command.commands:
            raise AssertionError(f"trackdelivery {' '.join(path)}: no subcommand {rest[:1]}")
        command = command.commands[rest[0]]
        path.append(rest.pop(0))
    return path, command, rest


def check_flags(path: list[str], command: click.Command, rest: list[str]) -> None:
    """Every ``--flag`` in ``rest`` is an option of ``command`` (``--flag=value`` or ``--flag value``)."""
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for arg in rest:
        if arg.startswith("-"):
            flag = arg.split("=", 1)[0]
            assert flag in known, f"trackdelivery {' '.join(path)} has no option {flag} (has {sorted(known)})"


def allowed_env(command: str) -> set[str]:
    """Variables the settings of ``command`` read, plus those its options read."""
    names: set[str] = set()
    for class_name in COMMAND_SETTINGS[command]:
        names |= settings_doc.class_env_names(settings_by_name()[class_name])
    names |= set(settings_doc.option_envvars(settings_doc.subcommands()[command]))
    return names


def check_env_names(command: str, names: Iterable[str], where: str) -> None:
    unknown = sorted(set(names) - allowed_env(command))
    assert not unknown, f"{where}: `trackdelivery {command}` reads no {unknown}"


def validate_env(command: str, env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Build the settings of ``command`` from exactly ``env`` (the machine's own variables removed)."""
    with monkeypatch.context() as patch:
        for name in all_env_names():
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        for class_name in COMMAND_SETTINGS[command]:
            cls = settings_by_name()[class_name]
            try:
                if class_name == "ShipperSettings":
                    cls.load().kafka_settings()  # type: ignore[attr-defined]
                else:
                    cls()
            except ValueError as error:
                raise AssertionError(f"{command}: {class_name} rejects the environment: {error}") from None


_INTERPOLATION = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?-([^}]*))?\}")


def interpolate_defaults(value: str) -> str:
    """Compose-style ``${NAME:-default}`` replaced by its default (empty when there is none)."""
    return _INTERPOLATION.sub(lambda match: match.group(2) or "", value)


def exec_args(line: str) -> list[str]:
    """A systemd ExecStart= value as words, without its prefix characters."""
    return shlex.split(line.lstrip("-@:+!"))


@dataclass(frozen=True, slots=True)
class ExportedMetric:
    name: str  # the family name
    type: str
    labels: frozenset[str]

    def sample_names(self) -> set[str]:
        suffixes = {
            "counter": ("_total", "_created"),
            "gauge": ("",),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("", "_sum", "_count", "_created"),
            "info": ("_info",),
        }[self.type]
        return {self.name + suffix for suffix in suffixes}


@cache
def exported_metrics() -> dict[str, ExportedMetric]:
    """Sample name -> metric, for every Prometheus metric the code's ``metrics.py`` modules define."""
    found: dict[str, ExportedMetric] = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("metrics.py")):
            module_name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
            module = importlib.import_module(module_name)
            for value in list(vars(module).values()):
                if not (isinstance(value, type) and value.__module__ == module_name):
                    continue
                try:
                    instance: Any = value()
                except TypeError:
                    continue  # not a metrics holder
                if not isinstance(getattr(instance, "registry", None), CollectorRegistry):
                    continue
                for attribute in vars(instance).values():
                    name = getattr(attribute, "_name", None)
                    kind = getattr(attribute, "_type", None)
                    if isinstance(name, str) and isinstance(kind, str):
                        metric = ExportedMetric(name, kind, frozenset(getattr(attribute, "_labelnames", ())))
                        for sample in metric.sample_names():
                            found[sample] = metric
    return found
