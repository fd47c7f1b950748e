"""CLI: `punie check [PROFILE...]`: validate profiles and adapters before anything launches."""

from __future__ import annotations

from typing import Any

import click

from punie.cli._common import (
    State,
    complete_profiles,
    echo,
    echo_json,
    format_option,
    printable,
    set_option,
    state_of,
)
from punie.errors import ExitCode


@click.command("check")
@click.argument("profiles", nargs=-1, shell_complete=complete_profiles)
@format_option("Output format (json for CI).")
@click.option("--strict", is_flag=True,
              help="An adapter trained on a different base model is an error, even when its shapes fit; "
              "so is a port something already listens on (a warning otherwise).")
@set_option()
@click.pass_context
def check_command(ctx: click.Context, profiles: tuple[str, ...], fmt: str, strict: bool,
                  overrides: tuple[str, ...]) -> None:
    """Check PROFILES (all when none are named): server, model, adapter files and shapes.

    Reports every problem at once. Exit code: 0 when all pass (warnings allowed),
    1 when problems are found, 2 for a usage or configuration error (also a
    profiles file with no profiles), 3 for an internal error.
    """
    report = _run(state_of(ctx), profiles, overrides, strict)  # a crash: exit 3 (PunieGroup), never a verdict
    if fmt == "json":
        echo_json(report.to_json())
    else:
        echo(_one_line_values(report).render_text())
    ctx.exit(ExitCode.OK if report.ok else ExitCode.PROBLEMS)


def _one_line_values(report: Any) -> Any:
    """The report with every value that goes on one line escaped (`printable` one_line): a newline in a
    path from punie.toml cannot start a line of its own (a forged ``✓``)."""
    def line(text: str | None) -> str | None:
        return None if text is None else printable(text, one_line=True)

    def escaped(prof: Any) -> Any:
        texts = [prof.name, *prof.passed, *(t for p in prof.problems for t in (p.message, p.where))]
        if all(line(text) == text for text in texts):
            return prof  # nothing to escape (the usual case): no copy of 5,000 reports
        return prof.model_copy(update={
            "name": line(prof.name),
            "passed": [line(text) for text in prof.passed],
            "problems": [p.model_copy(update={"message": line(p.message), "where": line(p.where)})
                         for p in prof.problems],
        })

    return report.model_copy(update={"profiles": [escaped(prof) for prof in report.profiles]})


def _run(state: State, profiles: tuple[str, ...], overrides: tuple[str, ...], strict: bool):
    from punie.api import check, load_profiles
    from punie.errors import ConfigError

    resolved = load_profiles(state.config, profiles, overrides=state.with_overrides(overrides))
    if not resolved:
        from punie.api.profiles import CONFIG_NAME  # here only: punie.api.profiles imports the editor (tomlkit)

        where = state.config or CONFIG_NAME
        raise ConfigError("defines no profiles: nothing to check", where=where,
                          hint="add a [profiles.NAME] table with at least `model = ...`")
    return check(resolved, strict=strict)


def register(group: click.Group) -> None:
    """Add `punie check` to the top-level group."""
    group.add_command(check_command)
