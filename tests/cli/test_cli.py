"""The top-level CLI: lazily loaded commands, all reachable, error edge."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from punie.cli import COMMAND_MODULES, COMMANDS, main


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_lazy_command_table_matches_what_each_module_registers(module: str) -> None:
    group = click.Group()
    importlib.import_module(f"punie.cli.{module}").register(group)
    assert set(group.commands) == {name for name, owner in COMMANDS.items() if owner == module}


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == set(COMMANDS)


def test_unknown_command_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["upp"])
    assert result.exit_code == 2
    assert "No such command 'upp'" in result.output


def test_up_does_not_import_the_agent_or_training_stack() -> None:
    # The CLI's own start-up adds to `punie up`'s time to ready: keep heavy imports out of it.
    code = (
        "import sys; from punie.cli import main; main.get_command(None, 'up'); "
        "print(sorted(m for m in ('pydantic_ai', 'acp', 'mlx', 'mlx_lm', 'numpy', 'tomlkit') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
