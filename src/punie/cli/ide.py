"""CLI: `punie ide zed|jetbrains [PROFILE] [--write]`: the IDE's agent-server entry for Punie.

Both editors start an ACP agent from a JSON entry ``{"command", "args", "env"}`` under
``agent_servers``: Zed in its settings.json, JetBrains IDEs in ~/.jetbrains/acp.json. An
IDE starts the agent in its own working directory, so the entry names everything
absolutely: the punie executable and the profiles file (``--config``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from punie.cli._common import complete_profiles, echo_json, say, state_of
from punie.config.atomic import write_atomic
from punie.errors import ConfigError, UsageError

#: The name the agent is listed under in the IDE.
AGENT_NAME = "Punie"


def settings_path(ide: str, env: dict[str, str] | None = None) -> Path:
    """The file the IDE reads its agent servers from (Zed: settings.json; JetBrains: acp.json)."""
    environ = os.environ if env is None else env
    home = Path(environ.get("HOME") or Path.home())
    if ide == "zed":
        return Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "zed" / "settings.json"
    return home / ".jetbrains" / "acp.json"


def punie_command() -> list[str]:
    """The absolute command that runs this Punie: its console script, else this Python with -m punie."""
    script = Path(sys.executable).with_name("punie")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [str(Path(sys.executable).absolute()), "-m", "punie"]


def agent_entry(ide: str, config: Path, profile: str | None) -> dict[str, Any]:
    """The ``agent_servers`` entry: `punie --config FILE up [PROFILE]` with absolute paths."""
    command, *pre = punie_command()
    args = [*pre, "--config", str(config.absolute()), "up", *([profile] if profile else [])]
    entry: dict[str, Any] = {"command": command, "args": args, "env": {}}
    if ide == "zed":
        entry = {"type": "custom", **entry}
    return entry


def strip_jsonc(text: str) -> str:
    """JSON with comments and trailing commas (Zed's settings.json) as plain JSON text."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif ch in "}]":
            # A trailing comma before a closing bracket: drop it (and keep what followed it).
            k = len(out) - 1
            while k >= 0 and out[k].isspace():
                k -= 1
            if k >= 0 and out[k] == ",":
                del out[k]
            out.append(ch)
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def merge_entry(text: str | None, entry: dict[str, Any], *, name: str = AGENT_NAME) -> dict[str, Any]:
    """The settings document ``text`` (None: no file yet) with ``agent_servers[name]`` set to
    ``entry``; every other key is kept as it was."""
    data: Any = {}
    if text is not None and text.strip():
        try:
            data = json.loads(strip_jsonc(text))
        except ValueError as exc:
            raise ConfigError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("the settings are not a JSON object")
    servers = data.get("agent_servers")
    if servers is None:
        servers = {}
    if not isinstance(servers, dict):
        raise ConfigError("agent_servers is not a JSON object")
    return {**data, "agent_servers": {**servers, name: entry}}


def write_settings(path: Path, entry: dict[str, Any]) -> Path | None:
    """Merge ``entry`` into the settings file at ``path`` (atomically); returns the backup made
    when the file had comments (JSON cannot keep them), else None."""
    from punie.errors import CorruptFileError
    from punie.jsonio import read_text_file

    try:
        text = read_text_file(path, max_bytes=16 << 20) if path.exists() else None
    except CorruptFileError as exc:
        raise ConfigError(exc.message, where=str(path)) from None
    try:
        merged = merge_entry(text, entry)
    except ConfigError as exc:
        raise ConfigError(exc.message, where=str(path), hint="fix the file, or add the entry by hand "
                          "(`punie ide` without --write prints it)") from None
    backup = None
    if text is not None and strip_jsonc(text) != text:
        backup = path.with_name(path.name + ".punie-backup")
        backup.write_text(text, encoding="utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(merged, indent=2, ensure_ascii=False) + "\n")
    return backup


def _project_config(ctx: click.Context) -> Path:
    from punie.config import find_config

    found = find_config(state_of(ctx).config)
    if found is None:
        raise UsageError(
            f"no punie.toml found in {Path.cwd()} or its parents: the IDE entry needs one",
            hint="run this in the project, or name the file with --config FILE or PUNIE_CONFIG",
        )
    return found.absolute()


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
    from punie.config import load_profile

    config = _project_config(ctx)
    if profile is not None:
        load_profile(profile, config=config)  # an unknown name fails here, not in the IDE
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
