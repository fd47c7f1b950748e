"""The MCP servers an ACP client hands over in ``session/new``: connected for the session, beside the built-in tools.

Each server (stdio, streamable HTTP or SSE, as ACP describes them) becomes a
pydantic-ai ``MCPToolset`` whose tools are named ``mcp__<server>__<tool>`` (the
convention IDE users know from other agents; names stay within the OpenAI tool
name alphabet). Every call goes through the session's permission policy under
the ``agent.permissions.mcp`` decision (``ask`` by default: an MCP tool can do
anything its server can), and through the same recording and hooks as the
built-in tools, so the IDE sees the same ``tool_call`` story.

A server that cannot be started or reached is left out (the session still
works) and said so in the log and in the returned failures.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from punie.agent.limits import shown_result
from punie.agent.permissions import MCP_TOOL_PREFIX, PermissionRequest
from punie.agent.tools import Status, TurnDeps, invoke_tool

logger = logging.getLogger(__name__)

#: Tool names of MCP servers start with this; their permission key is ``mcp``.
MCP_PREFIX = MCP_TOOL_PREFIX
#: Seconds to start a server and finish MCP's initialize handshake.
CONNECT_TIMEOUT = 30.0
#: Longest tool result text handed to the model.


def tool_prefix(server: str) -> str:
    """``mcp__<server>_`` (PrefixedToolset adds one more ``_``): the server name cut to the tool-name alphabet."""
    clean = re.sub(r"[^A-Za-z0-9_-]+", "_", server).strip("_") or "server"
    return f"{MCP_PREFIX}{clean[:24]}_"


def is_mcp_tool(name: str) -> bool:
    return name.startswith(MCP_PREFIX)


def split_name(name: str) -> tuple[str, str]:
    """(server, tool) of a prefixed MCP tool name."""
    rest = name.removeprefix(MCP_PREFIX)
    server, _, tool = rest.partition("__")
    return server, tool


def _result_text(value: Any) -> str:
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = str(value)
    return shown_result(text)


def _guarded_toolset_class() -> type:
    from pydantic_ai.toolsets import WrapperToolset

    class GuardedToolset(WrapperToolset[TurnDeps]):
        """Every call: recorded and announced like a built-in tool, asked under ``permissions.mcp``."""

        async def call_tool(self, name: str, tool_args: dict[str, Any], ctx: Any, tool: Any) -> Any:
            server, short = split_name(name)

            async def action() -> tuple[Status, str]:
                summary = f"call {short} on MCP server {server} with {json.dumps(tool_args)[:200]}"
                await ctx.deps.policy.check(PermissionRequest(name, ctx.tool_call_id or "", tool_args, summary))
                try:
                    value = await self.wrapped.call_tool(name, tool_args, ctx, tool)
                except Exception as exc:  # the server's error is the model's to read, not the turn's end
                    logger.info("MCP tool %s failed: %s", name, exc)
                    return "error", f"error: {exc}"
                return "ok", _result_text(value)

            return await invoke_tool(ctx, name, tool_args, action)

    return GuardedToolset


@dataclass
class McpConnections:
    """The connected MCP servers of one session: ``toolsets`` for each turn, ``close()`` at the end."""

    toolsets: list[Any]
    failures: list[str]
    _entered: list[Any]

    async def close(self) -> None:
        for toolset in reversed(self._entered):
            try:
                await toolset.__aexit__(None, None, None)
            except Exception as exc:  # a server that died meanwhile: nothing left to close
                logger.debug("closing an MCP server: %s", exc)
        self._entered.clear()
        self.toolsets.clear()


def _transport(server: Any, cwd: str) -> Any:
    from fastmcp.client.transports import SSETransport, StdioTransport, StreamableHttpTransport

    kind = getattr(server, "type", None)
    headers = {h.name: h.value for h in getattr(server, "headers", None) or []}
    if kind == "http":
        return StreamableHttpTransport(url=server.url, headers=headers or None)
    if kind == "sse":
        return SSETransport(url=server.url, headers=headers or None)
    if hasattr(server, "command"):
        env = {v.name: v.value for v in server.env or []}
        return StdioTransport(command=server.command, args=list(server.args or []), env=env or None, cwd=cwd,
                              keep_alive=False)
    raise ValueError(f"MCP server {getattr(server, 'name', '?')!r}: transport {kind!r} is not supported")


async def connect(servers: list[Any] | None, cwd: str) -> McpConnections:
    """Start / reach every server and list its tools; the ones that fail are left out (see ``failures``)."""
    import anyio
    from pydantic_ai.mcp import MCPToolset

    guarded = _guarded_toolset_class()
    toolsets: list[Any] = []
    entered: list[Any] = []
    failures: list[str] = []
    for server in servers or []:
        name = getattr(server, "name", "?")
        try:
            toolset = MCPToolset(_transport(server, cwd), id=f"mcp-{name}", tool_error_behavior="error",
                                 init_timeout=CONNECT_TIMEOUT)
            with anyio.fail_after(CONNECT_TIMEOUT):
                await toolset.__aenter__()
                entered.append(toolset)
                tools = await toolset.list_tools()
        except Exception as exc:
            reason = f"MCP server {name!r} not connected: {type(exc).__name__}: {exc}"
            logger.warning("%s", reason)
            failures.append(reason)
            continue
        logger.info("MCP server %s: %d tools", name, len(tools))
        toolsets.append(guarded(toolset.prefixed(tool_prefix(name))))
    return McpConnections(toolsets=toolsets, failures=failures, _entered=entered)
