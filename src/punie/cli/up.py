"""CLI: `punie up PROFILE`: check, start mlx_lm.server, wait until it answers, run the agent.

stdout belongs to the agent (ACP passes through); everything punie up says
goes to stderr. ``--dry-run`` prints the launch plan on stdout and starts nothing.
"""

from __future__ import annotations

import json
import sys

import click

from punie.cli._common import (
    complete_profiles,
    echo,
    echo_json,
    format_option,
    print_outcome,
    render_progress,
    set_option,
    state_of,
)
from punie.limits import STOP_GRACE


@click.command("up")
@click.argument("profile", required=False, shell_complete=complete_profiles)
@click.option("--dry-run", is_flag=True, help="Print the launch plan (after resolving and checking) and exit.")
@format_option("Format of the --dry-run plan, and of the session's final status (stderr).")
@click.option("--no-check", is_flag=True, help="Launch without running `punie check` first.")
@click.option(
    "--follow-server/--no-follow-server", default=None,
    help="Show the server's output here (default: yes, unless the agent talks to you in this terminal: then "
    "the server's and the agent's output go to .punie/logs/ only, quoted if they fail).",
)
@click.option(
    "--grace", type=click.FloatRange(min=0), default=None,
    help="Seconds a child gets between SIGTERM and SIGKILL when stopping (default: the profile's "
    f"server.shutdown.grace, {STOP_GRACE:g}).",
)
@click.option(
    "--group", "group", metavar="NAME|A,B",
    help="Run several vLLM profiles that share a base on ONE server (a [groups.NAME] table, or profiles "
    "a,b); each profile's requests pick its adapter by model id.",
)
@set_option()
@click.pass_context
def up_command(
    ctx: click.Context,
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

    \b
    Exit code:
      0    stopped by the user, or the agent exited cleanly
      1    something failed; the message names it: the check found errors
           (a missing or unfitting adapter or model), the server never answered,
           the profile is already running, the server or the agent died
      2    the command line or punie.toml is wrong (unknown profile, invalid
           TOML or value, --set of an unknown key)
      3    an internal error (a bug in Punie; the message says where its traceback is)
      130  a second Ctrl-C forced the stop
    """
    from punie.api.launch import up
    from punie.errors import LaunchFailed

    state = state_of(ctx)
    if follow_server is None:  # the interactive agent shares the terminal: keep it readable
        follow_server = not sys.stdin.isatty()
    names: list[str | None] = [group or profile or ""]
    try:
        outcome = up(profile, state.config, group=group, overrides=state.with_overrides(overrides),
                     check=not no_check, dry_run=dry_run, grace=grace, progress=render_progress,
                     follow_server=follow_server, on_name=names.append)
    except LaunchFailed as exc:
        name = names[-1]
        if fmt == "json" and not dry_run:  # the status of a session that never got ready (e.g. no adapter)
            click.echo(json.dumps({"profile": name, "reason": exc.reason, "exit_code": exc.exit_code,
                                   "message": exc.message, "canaries": exc.canaries}), err=True)
        raise
    if dry_run:
        assert outcome.plan is not None
        if fmt == "json":
            echo_json(outcome.plan.to_json())
        else:
            echo(outcome.plan.render_text())
        return
    print_outcome(outcome.message, outcome.exit_code)
    if fmt == "json":  # the session's status; on stderr, as stdout belongs to the agent
        status = {"profile": names[-1], "reason": outcome.reason, "exit_code": outcome.exit_code,
                  "ready_seconds": outcome.ready_seconds, "agent_ready_seconds": outcome.agent_ready_seconds,
                  "restarts": outcome.restarts, "canary": outcome.canary,
                  "canaries": list(outcome.canaries), "blas": outcome.blas}
        click.echo(json.dumps(status), err=True)
    ctx.exit(outcome.exit_code)


def register(group: click.Group) -> None:
    """Add `punie up` to the top-level group."""
    group.add_command(up_command)
