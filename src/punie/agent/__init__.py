"""The Punie coding agent.

* :mod:`punie.agent.runner`: ``build_agent(options, base_url, *, permission_asker=None, base_dir=None)``
  and ``run_turn(agent, prompt, *, history=None, hooks=None, on_text=None) -> TurnResult``
  (``run_turn_sync`` for callers without an event loop). Errors are ``AgentError``.
* :mod:`punie.agent.tools`: read_file, write_file, list_files, search, run_command, thin: they call
  the turn's backends (:mod:`punie.agent.backends`: the protocols; :mod:`punie.agent.local`: the disk
  and local processes; :mod:`punie.agent.acp_backends`: the ACP client's ``fs/*`` and ``terminal/*``),
  whose limits and messages are :mod:`punie.agent.limits`'s, one rule each.
* :mod:`punie.agent.workspace`: confinement of file tools to the workspace (``Workspace.read_text`` /
  ``write_text`` / ``list`` / ``files``, protected paths), on :mod:`punie.agent.fs` (descriptor-relative,
  race-free opens, atomic writes).
* :mod:`punie.agent.procs`: run_command's processes (scrubbed environment; :mod:`punie.agent.reaper`
  kills everything a command started when it ends, times out, is cancelled or the agent dies).
* :mod:`punie.agent.permissions`: the allow / deny / ask policy and the terminal asker.
* :mod:`punie.agent.acp_server`: the Agent Client Protocol server on stdio (``serve_stdio``), with
  :mod:`punie.agent.acp_session` (a session, its backends and tool call updates),
  :mod:`punie.agent.acp_describe` (titles, kinds, client features), :mod:`punie.agent.acp_profiles`
  (the profiles sharing the server) and :mod:`punie.agent.acp_commands` (slash commands).
* Concurrency is anyio's; asyncio only where a third-party API forces it (:mod:`punie.agent.acp_stdio`,
  :mod:`punie.agent.shield`; tests/agent/test_structure.py lists why).
* :mod:`punie.agent.target`: profile -> server URL and agent options; ``serve_profile``.

Names are imported lazily so that ``import punie.agent`` stays cheap.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "AgentTarget": "punie.agent.target",
    "PunieAgent": "punie.agent.runner",
    "TurnResult": "punie.agent.runner",
    "build_agent": "punie.agent.runner",
    "run_turn": "punie.agent.runner",
    "run_turn_sync": "punie.agent.runner",
    "ToolCallRecord": "punie.agent.tools",
    "ToolHooks": "punie.agent.tools",
    "Workspace": "punie.agent.workspace",
    "PermissionPolicy": "punie.agent.permissions",
    "PermissionRequest": "punie.agent.permissions",
    "terminal_asker": "punie.agent.permissions",
    "serve_stdio": "punie.agent.acp_server",
    "agent_target": "punie.agent.target",
    "serve_profile": "punie.agent.target",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'punie.agent' has no attribute {name!r}")
