"""Slash commands of an ACP session, and what the agent knows about its profile (adapter, context window).

Advertised with ``available_commands_update`` when a session starts; a prompt
that starts with ``/NAME`` is served here instead of going to the model, and
never enters the conversation history:

* ``/profile [NAME]``: switch the session to another profile that runs on this
  server (the same switch as the ``profile`` config option); no name: list them.
* ``/adapter``: the active profile's adapter and its recorded canary.
* ``/eval [SUITE]``: run ``punie eval`` on the active profile (a child process
  under the reaper: cancelling the turn stops it).
* ``/clear``: start the conversation over (the stored history is emptied).
* ``/help``: the commands.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Longest config.json read for the context window (they are a few KB).
MAX_CONFIG_BYTES = 1_000_000
#: An eval's output shown to the client, at most.
MAX_EVAL_OUTPUT = 20_000
#: An eval run through /eval is stopped after this long.
EVAL_TIMEOUT = 3600.0
#: config.json keys that give a model's context length, in order of trust.
_CONTEXT_KEYS = ("max_position_embeddings", "max_seq_len", "n_positions", "seq_length", "max_sequence_length")


@dataclass(frozen=True)
class SlashCommand:
    name: str
    description: str
    hint: str | None = None


COMMANDS: tuple[SlashCommand, ...] = (
    SlashCommand("profile", "Switch this session to another profile on this server (no name: list them)",
                 "profile name"),
    SlashCommand("adapter", "Show the active profile's adapter and its canary"),
    SlashCommand("eval", "Run `punie eval` on the active profile", "suite name or file (optional)"),
    SlashCommand("clear", "Start the conversation over (clears this session's history)"),
    SlashCommand("help", "List Punie's slash commands"),
)
_NAMES = {c.name for c in COMMANDS}


def parse_command(text: str) -> tuple[str, str] | None:
    """``(name, argument)`` of a prompt that is one of the slash commands, else None."""
    stripped = text.strip()
    if not stripped.startswith("/"):
        return None
    name, _, rest = stripped[1:].partition(" ")
    return (name, rest.strip()) if name in _NAMES else None


def available_commands() -> list[Any]:
    """The commands as ACP ``AvailableCommand`` values."""
    from acp.schema import AvailableCommand, AvailableCommandInput, UnstructuredCommandInput

    def arg(hint: str | None) -> Any:
        return AvailableCommandInput(root=UnstructuredCommandInput(hint=hint)) if hint else None

    return [AvailableCommand(name=c.name, description=c.description, input=arg(c.hint)) for c in COMMANDS]


def help_text() -> str:
    return "\n".join(f"/{c.name}" + (f" <{c.hint}>" if c.hint else "") + f": {c.description}" for c in COMMANDS)


# -- what the profile says -----------------------------------------------------


def load_resolved(profile: str | None, config: str | None) -> Any:
    """The resolved profile ``profile`` of ``config`` (None when the agent runs without one)."""
    if profile is None:
        return None
    from punie.config import load_profile

    return load_profile(profile, config=config)


def context_window_of_model(model_dir: str | Path) -> int | None:
    """The context length a model's ``config.json`` declares (a positive integer), else None."""
    path = Path(model_dir) / "config.json"
    try:
        with open(path, "rb") as fh:
            if not os.path.isfile(path) or os.fstat(fh.fileno()).st_size > MAX_CONFIG_BYTES:
                return None
            data = json.loads(fh.read(MAX_CONFIG_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    configs = [data, data.get("text_config")] if isinstance(data, dict) else []
    for config in configs:
        if not isinstance(config, dict):
            continue
        for key in _CONTEXT_KEYS:
            value = config.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def context_window_of(resolved: Any) -> int | None:
    """The context window of a resolved profile: vLLM's ``max_model_len`` when set, else the model's own."""
    if resolved is None:
        return None
    server = resolved.profile.server
    vllm = getattr(server, "vllm", None)
    limit = getattr(vllm, "max_model_len", None)
    if isinstance(limit, int) and limit > 0:
        return limit
    spec = resolved.profile.model
    if not spec:
        return None
    from punie.errors import PunieError
    from punie.weights.resolve import resolve_model

    try:
        return context_window_of_model(resolve_model(spec, resolved.project_dir))
    except (PunieError, OSError):
        return None


async def served_context_window(base_url: str) -> int | None:
    """The ``max_model_len`` a server reports in ``/v1/models`` (vLLM does; mlx_lm.server does not)."""
    import httpx2

    try:
        async with httpx2.AsyncClient(timeout=5.0) as client:
            response = await client.get(base_url.rstrip("/") + "/models")
        data = response.json().get("data") or []
    except Exception as exc:  # any failure: the window is just unknown
        logger.debug("no context window from %s/models: %s", base_url, exc)
        return None
    for entry in data if isinstance(data, list) else []:
        value = entry.get("max_model_len") if isinstance(entry, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def adapter_report(resolved: Any) -> str:
    """What ``/adapter`` says: the profile's adapter and its recorded canary."""
    if resolved is None:
        return "No profile: this agent was started on a server URL only, so its adapter is not known here."
    from punie.adapters.metadata import read_canary
    from punie.adapters.registry import effective_adapter
    from punie.errors import PunieError

    name = resolved.name
    try:
        adapter = effective_adapter(resolved)
    except (PunieError, OSError) as exc:
        return f"Profile {name}: its adapter cannot be read: {exc}"
    if adapter is None:
        return f"Profile {name}: no adapter (the base model {resolved.profile.model} alone)."
    lines = [f"Profile {name}: adapter {adapter.name} ({adapter})"]
    try:
        canary = read_canary(adapter)
    except (PunieError, OSError, ValueError) as exc:
        canary = None
        lines.append(f"canary: unreadable ({exc})")
    if canary is None:
        if len(lines) == 1:
            lines.append("canary: none recorded (`punie adapters stamp` records one)")
        return "\n".join(lines)
    lines.append(f"canary: recorded by {canary.engine}" + (f" on {canary.created}" if canary.created else "")
                 + (f", base fingerprint {canary.base_fingerprint[:12]}" if canary.base_fingerprint else ""))
    for label, tokens in (("base alone", canary.base), ("with the adapter", canary.adapter)):
        shown = ", ".join(f"{t.text!r} {t.logprob:.2f}" for t in tokens[:canary.top_k])
        lines.append(f"  first tokens, {label}: {shown}")
    return "\n".join(lines)


def eval_argv(profile: str, config: str | None, suite: str | None) -> list[str]:
    """``punie eval`` of ``profile`` as this interpreter runs it."""
    argv = [sys.executable, "-m", "punie"]
    if config:
        argv += ["--config", config]
    argv += ["eval", profile]
    if suite:
        argv += ["--suite", suite]
    return argv


async def run_eval(profile: str | None, config: str | None, suite: str | None, cwd: str) -> str:
    """Run ``punie eval`` under the reaper (cancelling the turn stops it and its children); its output."""
    if profile is None:
        return "No profile: /eval needs the agent to run a profile (`punie up PROFILE`)."
    from punie.agent.procs import run_reaped

    code, output = await run_reaped(eval_argv(profile, config, suite), cwd=cwd, env=dict(os.environ),
                                    timeout=EVAL_TIMEOUT, output_limit=MAX_EVAL_OUTPUT)
    status = "timed out" if code is None else f"exit code {code}"
    return f"punie eval {profile}" + (f" --suite {suite}" if suite else "") + f": {status}\n{output}"
