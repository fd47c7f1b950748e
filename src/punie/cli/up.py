"""CLI: `punie up PROFILE`: check, start mlx_lm.server, wait until it answers, run the agent.

stdout belongs to the agent (ACP passes through); everything punie up says
goes to stderr. ``--dry-run`` prints the launch plan on stdout and starts nothing.
"""

from __future__ import annotations

import json
import sys

import click

from punie.cli._common import State, format_option, pass_state, render_progress, set_option


@click.command("up")
@click.argument("profile", required=False)
@click.option("--dry-run", is_flag=True, help="Print the launch plan (after resolving and checking) and exit.")
@format_option("Format of the --dry-run plan.")
@click.option("--no-check", is_flag=True, help="Launch without running `punie check` first.")
@click.option(
    "--follow-server/--no-follow-server", default=None,
    help="Keep showing the server's output after it is ready (default: yes, unless the agent talks to "
    "you in this terminal; the output always goes to .punie/logs/).",
)
@click.option(
    "--grace", type=click.FloatRange(min=0), default=5.0, show_default=True,
    help="Seconds a child gets between SIGTERM and SIGKILL when stopping.",
)
@click.option(
    "--group", "group", metavar="NAME|A,B",
    help="Run several vLLM profiles that share a base on ONE server (a [groups.NAME] table, or profiles "
    "a,b); each profile's requests pick its adapter by model id.",
)
@set_option()
@pass_state
@click.pass_context
def up_command(
    ctx: click.Context,
    state: State,
    profile: str | None,
    dry_run: bool,
    fmt: str,
    no_check: bool,
    follow_server: bool | None,
    grace: float,
    overrides: tuple[str, ...],
    group: str | None = None,
) -> None:
    """Start mlx_lm.server for PROFILE and the agent wired to it; stop both on Ctrl-C.

    Exit code: 0 when stopped by the user or when the agent exited cleanly,
    1 when something failed (the message names the cause), 2 for a bad profile,
    130 when a second Ctrl-C forced the stop.
    """
    from punie.config import load_profile
    from punie.launch import run_up

    if follow_server is None:  # the interactive agent shares the terminal: keep it readable
        follow_server = not sys.stdin.isatty()
    if group is not None:
        from punie.config import load_profiles
        from punie.errors import UsageError
        from punie.launch.vllm import group_members, run_up_group

        if profile is not None:
            raise UsageError("give either PROFILE or --group, not both")
        name, names = group_members(group, config=state.config)
        members = load_profiles(names, config=state.config, overrides=state.with_overrides(overrides))
        outcome = run_up_group(members, group=name, check=not no_check, dry_run=dry_run, grace=grace,
                               progress=render_progress, follow_server=follow_server, subreaper=True)
    else:
        resolved = load_profile(profile, config=state.config, overrides=state.with_overrides(overrides))
        outcome = run_up(resolved, check=not no_check, dry_run=dry_run, grace=grace, progress=render_progress,
                         follow_server=follow_server, subreaper=True)
    if dry_run:
        assert outcome.plan is not None
        if fmt == "json":
            click.echo(json.dumps(outcome.plan.to_json(), indent=2))
        else:
            click.echo(outcome.plan.render_text())
        return
    if outcome.message:
        prefix = "punie: error: " if outcome.exit_code else "punie: "
        click.echo(prefix + outcome.message, err=True)
    ctx.exit(outcome.exit_code)


def register(group: click.Group) -> None:
    """Add `punie up` to the top-level group."""
    group.add_command(up_command)
