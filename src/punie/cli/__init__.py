"""Punie's command line: parse, call one core function, render.

Every command lives in a module of this package that exposes ``register(group)``.
Modules are imported only when one of their commands runs (``COMMANDS`` maps each
command to its module), so `punie up` does not pay for the agent's or training's
imports before the model server starts.
Errors from the core (``PunieError``) become a message on stderr and the exit
code the error carries; nothing else in Punie prints or exits.
"""

from __future__ import annotations

import importlib
import os

from punie import envvars
from punie.cli.fastcomplete import COMPLETE_VAR, complete_and_exit  # stdlib only

if COMPLETE_VAR in os.environ:  # TAB: profile and adapter names without importing the CLI
    complete_and_exit()  # exits when it answered; else click's completion below answers

import click

from punie.cli._common import PunieGroup, State, configure_logging

#: Top-level command -> the module of punie.cli whose ``register`` adds it.
COMMANDS: dict[str, str] = {
    "check": "check",
    "profiles": "profiles",
    "schema": "profiles",
    "up": "up",
    "agent": "agent",
    "ask": "agent",
    "serve": "agent",
    "models": "models",
    "train": "train",
    "eval": "evaluation",
    "data": "data",
    "adapters": "adapters",
    "ide": "ide",
    "completion": "completion",
}
#: Group -> the modules whose ``attach(group)`` add subcommands to it. The group's own module
#: does not import them (and they import only punie.cli._common), so no module imports its sibling.
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "profiles": ("profiles_edit",),
    "adapters": ("adapters_compose", "adapters_peft", "adapters_fuse"),
}
COMMAND_MODULES = tuple(dict.fromkeys(COMMANDS.values()))


class LazyGroup(PunieGroup):
    """The top-level group: imports a command's module the first time it is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(f"punie.cli.{COMMANDS[cmd_name]}").register(self)
            group = self.commands.get(cmd_name)
            for module in EXTENSIONS.get(cmd_name, ()):
                if isinstance(group, click.Group):
                    importlib.import_module(f"punie.cli.{module}").attach(group)
        return self.commands.get(cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config",
    envvar=envvars.CONFIG,
    type=click.Path(dir_okay=False),
    help="Profiles file (default: punie.toml in this directory or a parent). Env: PUNIE_CONFIG.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a profile value, e.g. --set server.port=8081 (repeatable).",
)
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.version_option(package_name="punie")
@click.pass_context
def main(ctx: click.Context, config: str | None, overrides: tuple[str, ...], verbose: int) -> None:
    """Punie: launch a coding agent on a local MLX model with a checked LoRA adapter."""
    configure_logging(verbose)
    ctx.obj = State(config=config, overrides=overrides)

