"""CLI: `punie ide zed|jetbrains [PROFILE] [--write]`: the IDE's agent-server entry for Punie.

The entry and the settings files it goes in are `punie.api.ide`'s.
"""

from __future__ import annotations

import click

from punie.cli._common import complete_profiles, echo_json, say, state_of


@click.command("ide")
@click.argument("ide", type=click.Choice(["zed", "jetbrains"]))
@click.argument("profile", required=False, shell_complete=complete_profiles)
@click.option("--write", is_flag=True, help="Merge the entry into the IDE's settings file (other keys are kept).")
@click.pass_context
def ide_command(ctx: click.Context, ide: str, profile: str | None, write: bool) -> None:
    """Print the agent-server entry that makes IDE (zed or jetbrains) run `punie up PROFILE`.

    The entry goes under "agent_servers" in Zed's settings.json or in
    ~/.jetbrains/acp.json; --write puts it there for you.
    """
    from punie.api import load_profile
    from punie.api.ide import AGENT_NAME, agent_entry, project_config, settings_path, write_settings

    config = project_config(state_of(ctx).config)
    if profile is not None:
        load_profile(profile, config)  # an unknown name fails here, not in the IDE
    entry = agent_entry(ide, config, profile)
    target = settings_path(ide)
    if not write:
        echo_json({"agent_servers": {AGENT_NAME: entry}})
        say(f"add this to {target} (or run `punie ide {ide}{' ' + profile if profile else ''} --write`)")
        return
    backup = write_settings(target, entry)
    say(f"wrote agent_servers.{AGENT_NAME} to {target}")
    if backup is not None:
        say(f"the file had comments, which JSON cannot keep: the original is in {backup}")


def register(group: click.Group) -> None:
    """Add `punie ide` to the top-level group."""
    group.add_command(ide_command)
