"""The permission policy for writes and commands: allow, deny or ask.

The decision for a tool comes from the profile (``agent.permissions``), except
for protected paths (``.git/``, ``.punie/``, ``punie.toml``, ``agent.protected``):
writing one is always asked, even under ``allow`` or after "always", and
denied under ``deny``. With
``ask`` the policy hands a :class:`PermissionRequest` to an *asker*: in an IDE
that is the ACP client's ``session/request_permission``; in a terminal it is a
prompt on stderr (:func:`terminal_asker`), which refuses (and says why) when
stdin is not a terminal. A refusal is never an error of the turn: the tool
answers the model with the reason, and the model carries on.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

import anyio.to_thread

from punie.config.models import Permissions
from punie.errors import PermissionDenied

__all__ = ["MCP_TOOL_PREFIX", "Answer", "PermissionAsker", "PermissionDenied", "PermissionPolicy", "PermissionRequest",
           "deny_asker", "permission_key", "terminal_asker"]

logger = logging.getLogger(__name__)

Verdict = Literal["allow", "deny"]
#: Names of tools from the client's MCP servers (punie.agent.mcp_servers) start with this.
MCP_TOOL_PREFIX = "mcp__"


@dataclass(frozen=True)
class PermissionRequest:
    """What the agent wants to do, as shown to the person asked."""

    tool: str
    tool_call_id: str
    args: dict[str, Any]
    summary: str
    #: A protected path (.git/, punie.toml, agent.protected...): asked even under "allow", never remembered.
    protected: bool = False


@dataclass(frozen=True)
class Answer:
    """An asker's answer; ``always`` remembers an allow for the rest of the session."""

    allowed: bool
    always: bool = False
    reason: str | None = None


PermissionAsker = Callable[[PermissionRequest], Awaitable[Answer]]


def permission_key(tool: str) -> str:
    """The ``agent.permissions`` key deciding ``tool``: its name, or ``mcp`` for any MCP server's tool."""
    return "mcp" if tool.startswith(MCP_TOOL_PREFIX) else tool


async def deny_asker(request: PermissionRequest) -> Answer:
    """An asker for places where nobody can be asked."""
    return Answer(False, reason="nobody is available to approve it")


def terminal_asker(
    stdin: TextIO | None = None, stderr: TextIO | None = None, *, interactive: bool | None = None
) -> PermissionAsker:
    """Ask on stderr and read y/N from stdin; refuse when stdin is not a terminal."""

    async def ask(request: PermissionRequest) -> Answer:
        inp = stdin or sys.stdin
        err = stderr or sys.stderr
        tty = interactive if interactive is not None else bool(getattr(inp, "isatty", lambda: False)())
        if not tty:
            logger.warning(
                "%s needs permission (%s) but stdin is not a terminal: refused "
                "(set agent.permissions.%s = \"allow\" to allow it without asking)",
                request.tool, request.summary, permission_key(request.tool),
            )
            return Answer(
                False,
                reason=f"stdin is not a terminal, so nobody could be asked "
                f"(agent.permissions.{permission_key(request.tool)} = \"ask\")",
            )

        def prompt() -> str:
            err.write(f"punie: allow {request.tool}: {request.summary}? [y/N/a(lways)] ")
            err.flush()
            return inp.readline()

        reply = (await anyio.to_thread.run_sync(prompt, abandon_on_cancel=True)).strip().lower()
        if reply in ("a", "always"):
            return Answer(True, always=True)
        if reply in ("y", "yes"):
            return Answer(True)
        return Answer(False, reason="the user refused")

    return ask


@dataclass
class PermissionPolicy:
    """Decides, per tool call, whether a write or a command may run."""

    permissions: Permissions = field(default_factory=Permissions)
    asker: PermissionAsker = deny_asker
    always_allowed: set[str] = field(default_factory=set)

    def decision(self, tool: str) -> str:
        """The configured decision for ``tool`` (tools without a setting are allowed: reads).

        Every tool of an MCP server (``mcp__server__tool``) falls under ``permissions.mcp``;
        "allow always" is remembered per tool.
        """
        return getattr(self.permissions, permission_key(tool), "allow")

    async def check(self, request: PermissionRequest) -> None:
        """Return when allowed; raise :class:`PermissionDenied` with the reason otherwise."""
        decision = self.decision(request.tool)
        if not request.protected and (decision == "allow" or request.tool in self.always_allowed):
            return
        if decision == "deny":
            raise PermissionDenied(
                f"permission denied: {request.tool} is not allowed by the profile "
                f"(agent.permissions.{permission_key(request.tool)} = \"deny\")"
            )
        answer = await self.asker(request)
        if not answer.allowed:
            what = f"{request.tool} of a protected path" if request.protected else request.tool
            raise PermissionDenied(f"permission denied for {what}: {answer.reason or 'refused'}")
        if answer.always and not request.protected:
            self.always_allowed.add(request.tool)
