"""The coding agent as the ``punie agent``, ``punie ask`` and ``punie serve`` commands (and the terminal
mode) see it: where it talks to, building it, running turns, ACP over stdio.

The agent's own modules may change shape; these names are the ones the command line relies on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from punie.agent.permissions import Answer as Answer
from punie.agent.permissions import terminal_asker as terminal_asker
from punie.agent.runner import build_agent as build_agent
from punie.agent.runner import run_turn as run_turn
from punie.agent.runner import run_turn_sync as run_turn_sync
from punie.agent.target import parse_options as parse_options
from punie.agent.tools import ToolHooks as ToolHooks
from punie.config.models import AgentOptions as AgentOptions
from punie.net import openai_base_url as openai_base_url
from punie.paths import history_file as history_file
from punie.paths import terminal_log as terminal_log

if TYPE_CHECKING:
    from punie.agent.target import AgentTarget

__all__ = ["AgentOptions", "Answer", "ToolHooks", "build_agent", "context_window", "gated", "history_file",
           "load_acp", "load_target", "openai_base_url", "parse_options", "run_turn", "run_turn_sync", "serve_stdio",
           "switchable_profiles", "terminal_asker", "terminal_log", "through_gate", "wake_through", "warm_cache"]

logger = logging.getLogger(__name__)


def serve_stdio(*args: Any, **kwargs: Any) -> None:
    """`punie.agent.acp_server.serve_stdio`, imported when called: the terminal mode never loads ACP
    (its generated schema alone is over a second of imports on a CPU)."""
    from punie.agent.acp_server import serve_stdio as serve

    serve(*args, **kwargs)


def load_acp() -> None:
    """Import the ACP server now (`serve_stdio` would): behind `punie up`'s start gate, while the model loads."""
    import punie.agent.acp_server  # noqa: F401


def load_target(profile: str | None, config: str | os.PathLike[str] | None = None, *,
                overrides: Sequence[str] = (), base_url: str | None = None) -> AgentTarget:
    """What the agent of ``profile`` talks to (its server's URL, model id, options, workspace);
    ``base_url`` instead of the profile's server."""
    from punie.agent.target import agent_target
    from punie.api import load_profile

    return agent_target(load_profile(profile, config, overrides=overrides), base_url=base_url)


def wake_through(target: AgentTarget) -> bool:
    """When ``target``'s profile runs under a `punie up` that unloads its idle server, route this
    process's model requests through that session's control socket, so that they wake the server
    first (`punie ask`). True when connected."""
    if not target.control:
        return False
    from punie.agent.wake import use_control

    return use_control(target.control) is not None


def context_window(profile: str | None, config: str | None) -> int | None:
    """The profile's model context window (ACP usage updates), None when it cannot be told."""
    from punie.agent.acp_commands import context_window_of, load_resolved
    from punie.errors import PunieError

    try:
        return context_window_of(load_resolved(profile, config))
    except (PunieError, OSError):
        return None


def switchable_profiles(profile: str, config: str | None) -> dict[str, AgentOptions]:
    """Agent options of the profiles that share ``profile``'s server, which an ACP session may switch to
    (empty when the profiles cannot be read: the session keeps its own)."""
    from punie.agent.target import sharing_profiles
    from punie.api import load_profiles
    from punie.errors import PunieError

    try:
        every = load_profiles(config)
    except PunieError as exc:
        logger.warning("profiles not offered to switch to: %s", exc)
        return {}
    current = next((p for p in every if p.name == profile), None)
    return sharing_profiles(current, every) if current is not None else {}


def through_gate(options: AgentOptions, base_url: str, *, warm: bool, base_dir: str | Path | None = None,
                 model_name: str | None = None) -> bool:
    """Under `punie up` with the start gate (`punie.launch.gate`): wait until the server answers, warm its
    prompt cache (``warm``), say ready. True at once when not gated; False when the session ended first."""
    from punie.launch.gate import AgentGate

    gate = AgentGate.from_env()
    if gate is None:
        return True
    from punie.agent import warm as warming

    named: dict[str, Any] = {"model_name": model_name} if model_name else {}
    return warming.through_gate(gate, base_url, lambda client: build_agent(
        options, base_url, base_dir=base_dir, http_client=client, **named), run_turn, warm_cache=warm)


def gated() -> bool:
    """Whether this process was started behind `punie up`'s start gate."""
    from punie import envvars

    return bool(os.environ.get(envvars.GATE_FD))


def warm_cache(options: AgentOptions, base_url: str, *, base_dir: str | Path | None = None,
               model_name: str | None = None) -> Any:
    """Have the server process the agent's system prompt and tools once, in the background, so its
    prompt cache holds them for the first question (`punie.agent.warm`); the thread or None."""
    from punie.agent import warm

    named: dict[str, Any] = {"model_name": model_name} if model_name else {}
    return warm.start(base_url, lambda client: build_agent(options, base_url, base_dir=base_dir, http_client=client,
                                                           **named), run_turn)
