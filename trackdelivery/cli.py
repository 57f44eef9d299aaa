"""The ``trackdelivery`` command. Subcommands live beside the code they drive and load lazily,
so ``trackdelivery parse`` does not pay for importing faust or FastAPI."""

from __future__ import annotations

import importlib
from typing import Any

import click

from trackdelivery.program import exit_without_teardown, run

__all__ = ["SUBCOMMANDS", "LazyGroup", "exit_without_teardown", "main", "run"]

# name -> "module:attribute" of a click command or group
SUBCOMMANDS: dict[str, str] = {
    "alerts": "processors.alerts.cli:alerts",
    "dev": "trackdelivery.devenv.cli:dev",
    "generate": "trackdelivery.generator.cli:generate",
    "parse": "processors.exim.cli:parse",
    "process": "processors.cli:process",
    "rebuild": "processors.cli:rebuild",
    "ship": "producers.cli:ship",
    "replay": "producers.cli:replay",
    "serve": "query_service.cli:serve",
    "search": "query_service.cli:search",
    "show": "query_service.cli:show",
    "tail": "query_service.cli:tail",
    "tokens": "query_service.cli:tokens",
    "topics": "trackdelivery.topics:topics",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(SUBCOMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in SUBCOMMANDS:
            module_name, attribute = SUBCOMMANDS[cmd_name].split(":")
            command: Any = getattr(importlib.import_module(module_name), attribute)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="trackdelivery")
def main() -> None:
    """Fleet-wide Track Delivery for Exim mail servers."""


if __name__ == "__main__":
    run()
