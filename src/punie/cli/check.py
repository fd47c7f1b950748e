"""CLI: `punie check [PROFILE...]`: validate profiles and adapters before anything launches."""

from __future__ import annotations

import click

from punie.cli._common import complete_profiles, echo_json, format_option, set_option, state_of


@click.command("check")
@click.argument("profiles", nargs=-1, shell_complete=complete_profiles)
@format_option("Output format (json for CI).")
@set_option()
@click.pass_context
def check_command(ctx: click.Context, profiles: tuple[str, ...], fmt: str,
                  overrides: tuple[str, ...]) -> None:
    """Check PROFILES (all when none are named): server, model, adapter files and shapes.

    Reports every problem at once. Exit code: 0 when all pass (warnings allowed),
    1 when problems are found, 2 for a usage or configuration error.
    """
    from punie.api import check
    from punie.config import load_profiles

    state = state_of(ctx)
    resolved = load_profiles(profiles, config=state.config, overrides=state.with_overrides(overrides))
    report = check(resolved)
    if fmt == "json":
        echo_json(report.to_json())
    else:
        click.echo(report.render_text())
    ctx.exit(0 if report.ok else 1)


def register(group: click.Group) -> None:
    """Add `punie check` to the top-level group."""
    group.add_command(check_command)
