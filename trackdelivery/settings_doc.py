"""The configuration reference, generated from the code: ``python -m trackdelivery.settings_doc``.

Every pydantic-settings class defined in a ``settings.py`` module of the four packages (plus the query
store's settings) becomes a table of its environment variables with type, default and description;
options of the ``trackdelivery`` subcommands that read a variable, and the few variables read directly
from ``os.environ``, follow. ``--check`` exits 1 when ``docs/configuration.md`` differs from what the code
says (a test runs it). The same discovery gives the deploy checks the set of names each component reads.
"""

from __future__ import annotations

import argparse
import enum
import importlib
import inspect
import re
import socket
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from pydantic import AliasChoices, AliasPath, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, NoDecode

REPO_ROOT = Path(__file__).resolve().parents[1]
OUTPUT = REPO_ROOT / "docs" / "configuration.md"
PACKAGES = ("trackdelivery", "producers", "processors", "query_service")
#: settings classes that live outside a ``settings.py`` module
EXTRA_MODULES = ("trackdelivery.store.types",)
#: descriptions of fields whose class gives none (by "Class.field", then by field name)
FALLBACK_DESCRIPTIONS = {
    "TopicNames.raw": "raw log lines from the shippers (key: server name)",
    "TopicNames.events": "delivery events, one per record, from the processors",
    "TopicNames.unparsed": "lines the processors could not parse, with the reason (dead letters)",
    "TopicNames.alerts": "alerts (firing and resolved) from the alert worker",
    "TopicNames.heartbeats": "shipper liveness heartbeats, read by the alert worker",
    "StoreSettings.max_lines_per_message": "raw log lines kept per message (the message view's transcript)",
    "StoreSettings.max_line_bytes": "bytes kept of each raw log line",
    "StoreSettings.dense_partitions": "partitions of one bucket of the server index",
    "StoreSettings.address_partitions": "value-hash partitions of one bucket of the address indexes",
    "StoreSettings.dictionary_samples": "records and raw lines sampled to train the zstd dictionary",
    "StoreSettings.dictionary_bytes": "size of the trained zstd dictionary, bytes",
    "StoreSettings.server_stats_bucket_seconds": "width of one per-server stats counter bucket",
    "QueryServiceSettings.redis_url": "Redis of the query store (user, password and TLS options in the URL)",
    "QueryServiceSettings.host": "listen address of `trackdelivery serve`",
    "QueryServiceSettings.port": "listen port of `trackdelivery serve`",
    "QueryServiceSettings.redis_timeout_seconds": "Redis socket and connect timeout, seconds",
    "StoreSettings.prefix": "prefix of every Redis key of the store",
    "StoreSettings.retention_days": "days an event stays queryable",
    "metrics_host": "address of the Prometheus endpoint",
    "metrics_port": "Prometheus port",
    "log_level": "log level",
    "session_timeout": "consumer group session timeout, seconds",
    "commit_interval": "seconds between source offset commits",
    "webhook_max_attempts": "attempts per webhook delivery before it goes to the dead-letter file",
    "webhook_timeout": "seconds one webhook request may take",
    "dead_letter_path": "JSON-lines file of webhook deliveries that failed every attempt",
}


@dataclass(frozen=True, slots=True)
class Variable:
    names: tuple[str, ...]  # environment variable names, the canonical one first
    field: str
    type: str
    default: str
    description: str


@dataclass(frozen=True, slots=True)
class SettingsDoc:
    cls: type[BaseSettings]
    module: str
    path: str  # repository-relative source file
    summary: str
    variables: tuple[Variable, ...]


# -- discovery --------------------------------------------------------------------------------------


def settings_modules() -> list[str]:
    """Module names of every ``settings.py`` in the packages, then ``EXTRA_MODULES``; shared package first."""
    found: list[str] = []
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("settings.py")):
            relative = path.relative_to(REPO_ROOT).with_suffix("")
            found.append(".".join(relative.parts))
    for module in EXTRA_MODULES:
        if module not in found:
            package = module.split(".")[0]
            index = max(i for i, name in enumerate(found) if name.split(".")[0] == package)
            found.insert(index + 1, module)
    return found


def settings_classes() -> list[type[BaseSettings]]:
    """The settings classes, in module order and in source order within a module."""
    classes: list[type[BaseSettings]] = []
    for module_name in settings_modules():
        module = importlib.import_module(module_name)
        defined = [
            value for value in vars(module).values()
            if isinstance(value, type) and issubclass(value, BaseSettings) and value is not BaseSettings
            and value.__module__ == module_name
        ]
        classes.extend(sorted(defined, key=lambda cls: inspect.getsourcelines(cls)[1]))
    return classes


def env_names(cls: type[BaseSettings], name: str, field: FieldInfo) -> tuple[str, ...]:
    """The environment variables that set ``field`` (pydantic-settings: an alias replaces the prefix).

    A lower-case alias equal to the field name exists for keyword arguments and is left out.
    """
    alias = field.validation_alias if field.validation_alias is not None else field.alias
    if alias is None:
        prefix = str(cls.model_config.get("env_prefix", ""))
        return ((prefix + name).upper(),)
    choices: list[Any] = list(alias.choices) if isinstance(alias, AliasChoices) else [alias]
    names = [choice.upper() for choice in choices if isinstance(choice, str) and choice != name]
    if any(isinstance(choice, AliasPath) for choice in choices):
        raise TypeError(f"{cls.__name__}.{name}: AliasPath aliases are not documented")
    return tuple(dict.fromkeys(names))


def class_env_names(cls: type[BaseSettings]) -> set[str]:
    return {env for name, field in cls.model_fields.items() for env in env_names(cls, name, field)}


def iter_commands(
    command: click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            yield from iter_commands(command.commands[name], (*path, name))


def subcommands() -> dict[str, click.Command]:
    """Every ``trackdelivery`` subcommand (lazily registered ones imported)."""
    from trackdelivery.cli import SUBCOMMANDS, main

    context = click.Context(main)
    found: dict[str, click.Command] = {}
    for name in sorted(SUBCOMMANDS):
        command = main.get_command(context, name)
        if command is None:
            raise LookupError(f"trackdelivery {name}: not found")
        found[name] = command
    return found


def option_envvars(command: click.Command) -> dict[str, list[str]]:
    """Environment variable -> the options (``--flag`` of ``sub command``) of ``command`` that read it."""
    found: dict[str, list[str]] = {}
    for path, sub in iter_commands(command):
        for param in sub.params:
            envvar = param.envvar
            if not envvar:
                continue
            for name in [envvar] if isinstance(envvar, str) else list(envvar):
                flag = max(param.opts, key=len) if param.opts else param.name or ""
                found.setdefault(name, []).append(" ".join((*path, flag)).strip())
    return found


_ENVIRON_READ = re.compile(
    r"""os\.(?:environ\.get|getenv)\(\s*["']([A-Z][A-Z0-9_]*)["']"""
    r"""|os\.environ\[\s*["']([A-Z][A-Z0-9_]*)["']\s*\]"""
)


def direct_env_reads() -> dict[str, list[str]]:
    """``TRACKDELIVERY_*``/``KAFKA_*``/``REDIS_*`` variables read with ``os.environ`` -> modules reading them."""
    found: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            for match in _ENVIRON_READ.finditer(path.read_text(encoding="utf-8")):
                name = match.group(1) or match.group(2)
                if name.startswith(("TRACKDELIVERY_", "KAFKA_", "REDIS_")):
                    found.setdefault(name, []).append(str(path.relative_to(REPO_ROOT)))
    return found


# -- rendering --------------------------------------------------------------------------------------


def _is_no_decode(meta: Any) -> bool:
    return meta is NoDecode or isinstance(meta, NoDecode)


def _type_name(annotation: Any, metadata: list[Any] | None = None) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0], list(args[1:]))
    if metadata and any(_is_no_decode(meta) for meta in metadata) and origin in (list, tuple, set, frozenset):
        return "comma-separated list"
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in args if arg is not type(None)]
        rendered = " or ".join(_type_name(arg) for arg in options)
        return f"{rendered}, optional" if len(options) < len(args) else rendered
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{arg}`" for arg in args)
    if origin in (list, tuple, set, frozenset):
        return f"list of {_type_name(args[0])}" if args else "list"
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return "one of " + ", ".join(f"`{member.value}`" for member in annotation)
        if issubclass(annotation, SecretStr):
            return "secret string"
        if issubclass(annotation, Path):
            return "path"
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation)


def _value(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "`\"\"`" if not value.get_secret_value() else "(secret)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, enum.Enum):
        return f"`{value.value}`"
    if isinstance(value, list | tuple):
        return f"`{','.join(str(item) for item in value)}`" if value else "empty"
    if value == "":
        return "`\"\"`"
    return f"`{value}`"


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        if field.default_factory is socket.gethostname:
            return "the host name"
        factory: Any = field.default_factory
        return _value(factory())
    if field.default is PydanticUndefined:
        return "required"
    return _value(field.default)


def _comment_descriptions(cls: type[BaseSettings]) -> dict[str, str]:
    """Field descriptions from comments: ``#:`` lines just above a field, or a comment after it on its line."""
    found: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = re.match(r"([a-z_][a-z0-9_]*)\s*:[^#]*(?:#\s*(.*))?$", stripped)
        if match and match.group(1) in cls.model_fields:
            trailing = (match.group(2) or "").strip()
            if pending:
                found[match.group(1)] = " ".join(pending)
            elif trailing and not trailing.startswith(("noqa", "type:")):
                found[match.group(1)] = trailing
        pending = []
    return found


def _summary(cls: type[BaseSettings]) -> str:
    text = inspect.getdoc(cls) if cls.__doc__ else None
    if not text:
        text = inspect.getdoc(sys.modules[cls.__module__]) or ""
    return " ".join(text.split("\n\n")[0].split())


def describe(cls: type[BaseSettings]) -> SettingsDoc:
    comments = _comment_descriptions(cls)
    variables = []
    for name, field in cls.model_fields.items():
        description = (field.description or comments.get(name) or FALLBACK_DESCRIPTIONS.get(f"{cls.__name__}.{name}")
                       or FALLBACK_DESCRIPTIONS.get(name, ""))
        variables.append(Variable(env_names(cls, name, field), name, _type_name(field.annotation, field.metadata),
                                  _default(field), description))
    path = str(Path(inspect.getfile(cls)).resolve().relative_to(REPO_ROOT))
    return SettingsDoc(cls, cls.__module__, path, _summary(cls), tuple(variables))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    docs = [describe(cls) for cls in settings_classes()]
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m trackdelivery.settings_doc` from the settings classes; do not edit by hand. -->",
        "",
        "Every component reads frozen pydantic-settings objects: explicit command-line flags first, then the",
        "environment (names are case-insensitive). The shipper also reads a TOML file (`--config`, field names as",
        "keys, at the top level or under `[shipper]`). Where a setting lists several variables, any of them works;",
        "the first is the usual one. `KAFKA_*`, `REDIS_URL` and `TRACKDELIVERY_TOPIC_*` are shared: set them the",
        "same way for every component. Security (Kafka TLS/SASL, Redis ACL/TLS) is described in",
        "[operations.md](operations.md#security).",
        "",
    ]
    for doc in docs:
        lines += [f"## `{doc.cls.__name__}`", "", f"{doc.summary} Source: `{doc.path}`.", "",
                  "| variable | type | default | description |", "|---|---|---|---|"]
        for var in doc.variables:
            names = "<br>".join(f"`{name}`" for name in var.names)
            lines.append(f"| {names} | {_cell(var.type)} | {_cell(var.default)} | {_cell(var.description)} |")
        lines.append("")
    options: dict[str, list[str]] = {}
    for name, command in subcommands().items():
        for envvar, flags in option_envvars(command).items():
            options.setdefault(envvar, []).extend(f"`trackdelivery {name} {flag}`" for flag in flags)
    lines += ["## Command-line options read from the environment", "",
              "Options of the `trackdelivery` subcommands that take their value from a variable when not given.", "",
              "| variable | options |", "|---|---|"]
    for envvar in sorted(options):
        lines.append(f"| `{envvar}` | {', '.join(sorted(options[envvar]))} |")
    lines.append("")
    direct = direct_env_reads()
    if direct:
        lines += ["## Other variables", "", "Read directly by the development tooling.", "",
                  "| variable | read in |", "|---|---|"]
        for envvar in sorted(direct):
            lines.append(f"| `{envvar}` | {', '.join(f'`{path}`' for path in sorted(set(direct[envvar])))} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trackdelivery.settings_doc", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is not up to date")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run python -m trackdelivery.settings_doc", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
