"""The IDE entries of Punie (`punie ide`): the ACP agent-server entry and the settings files it goes in.

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

from punie.config.atomic import write_atomic
from punie.config.loader import find_config
from punie.errors import ConfigError, CorruptFileError, UsageError
from punie.jsonio import read_text_file

__all__ = ["AGENT_NAME", "agent_entry", "merge_entry", "project_config", "punie_command", "settings_path",
           "strip_jsonc", "write_settings"]

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


def project_config(config: str | os.PathLike[str] | None) -> Path:
    """The absolute profiles file an IDE entry names: ``config``, else the one found from here (UsageError
    when there is none: an IDE starts elsewhere, so the entry cannot rely on the lookup)."""
    found = find_config(config)
    if found is None:
        raise UsageError(
            f"no punie.toml found in {Path.cwd()} or its parents: the IDE entry needs one",
            hint="run this in the project, or name the file with --config FILE or PUNIE_CONFIG",
        )
    return found.absolute()
