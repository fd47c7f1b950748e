"""The agent's tools: read_file, write_file, list_files, search, run_command.

Each tool is thin: it asks the permission policy where its kind needs it and
calls the turn's backends (:attr:`TurnDeps.files`, :attr:`TurnDeps.commands`,
:mod:`punie.agent.backends`), never asking which backend it has; the limits
and their messages are :mod:`punie.agent.limits`'s. :func:`make_tools` wraps
the enabled ones as pydantic-ai tools that record every call
(:class:`ToolCallRecord`) and report start/end to optional hooks (the ACP
server turns those into ``session/update`` notifications).

A tool that fails (missing file, path outside the workspace, refused
permission, command exit code) does not fail the turn: the model gets the
reason as the tool result and can try something else. Malformed calls (bad
JSON arguments, unknown tool) never reach these functions: pydantic-ai answers
them with a retry prompt, bounded by the agent's retry budget.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio.to_thread
from pydantic_ai import RunContext, Tool

from punie.agent.backends import CommandBackend, FileBackend
from punie.agent.limits import DEFAULT_COMMAND_TIMEOUT, CommandLine
from punie.agent.local import DiskFiles, LocalCommands
from punie.agent.permissions import PermissionPolicy, PermissionRequest
from punie.agent.workspace import Workspace
from punie.errors import PermissionDenied, ToolFailure

logger = logging.getLogger(__name__)

Status = Literal["ok", "error", "denied", "invalid"]


@dataclass(frozen=True)
class ToolCallRecord:
    """One tool call of a turn: what the model asked and how it went."""

    id: str
    name: str
    args: dict[str, Any] | str
    status: Status
    result: str

    @property
    def summary(self) -> str:
        """The result's first line, shortened (what a terminal shows)."""
        lines = self.result.strip().splitlines() or [""]
        first = lines[0] if len(lines[0]) <= 100 else lines[0][:97] + "..."
        return first + (f" (+{len(lines) - 1} lines)" if len(lines) > 1 else "")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "args": self.args, "status": self.status,
                "summary": self.summary}


@dataclass
class ToolHooks:
    """Callbacks around each tool call (errors in them are logged, never fatal)."""

    on_start: Callable[[str, str, dict[str, Any]], Awaitable[None]] | None = None
    on_end: Callable[[ToolCallRecord], Awaitable[None]] | None = None
    #: A call that never reached its tool (malformed arguments, unknown tool): its record has status
    #: ``invalid`` and the feedback the model was given. Called in the model's order among the others.
    on_invalid: Callable[[ToolCallRecord], Awaitable[None]] | None = None


@dataclass
class TurnDeps:
    """What the tools of one turn work with (pydantic-ai ``deps``)."""

    workspace: Workspace
    policy: PermissionPolicy
    hooks: ToolHooks = field(default_factory=ToolHooks)
    records: list[ToolCallRecord] = field(default_factory=list)
    #: Where the file tools and run_command do their work (punie.agent.backends), chosen once per turn.
    files: FileBackend = field(default_factory=DiskFiles)
    commands: CommandBackend = field(default_factory=LocalCommands)


# -- pydantic-ai tools -------------------------------------------------------


async def _invoke(ctx: RunContext[TurnDeps], name: str, args: dict[str, Any],
                  action: Callable[[], Awaitable[tuple[Status, str]]]) -> str:
    deps = ctx.deps
    call_id = ctx.tool_call_id or f"{name}-{len(deps.records) + 1}"
    if deps.hooks.on_start:
        try:
            await deps.hooks.on_start(call_id, name, args)
        except Exception:
            logger.exception("tool start hook failed")
    status: Status
    try:
        status, result = await action()
    except PermissionDenied as exc:
        status, result = "denied", str(exc)
    except ToolFailure as exc:
        status, result = "error", f"error: {exc}"
    except OSError as exc:
        status, result = "error", f"error: {exc.strerror or exc}" + (f": {args.get('path')}" if "path" in args else "")
    record = ToolCallRecord(id=call_id, name=name, args=args, status=status, result=result)
    deps.records.append(record)
    logger.info("tool %s(%s) -> %s: %s", name, args, status, record.summary)
    if deps.hooks.on_end:
        try:
            await deps.hooks.on_end(record)
        except Exception:
            logger.exception("tool end hook failed")
    return result


#: Public: tools from elsewhere (the client's MCP servers) go through the same recording and hooks.
invoke_tool = _invoke


def _ok(work: Callable[[], Awaitable[str]]) -> Callable[[], Awaitable[tuple[Status, str]]]:
    """An action whose result, when it does not raise, is an ``ok`` one."""
    async def run() -> tuple[Status, str]:
        return "ok", await work()
    return run


async def read_file(ctx: RunContext[TurnDeps], path: str) -> str:
    """Read a text file of the workspace.

    Args:
        path: File path relative to the workspace root.
    """
    deps = ctx.deps
    return await _invoke(ctx, "read_file", {"path": path}, _ok(lambda: deps.files.read_text(deps.workspace, path)))


async def write_file(ctx: RunContext[TurnDeps], path: str, content: str) -> str:
    """Create or replace a text file in the workspace with the given content.

    Args:
        path: File path relative to the workspace root.
        content: The complete new content of the file.
    """
    args = {"path": path, "content": content}
    deps = ctx.deps

    async def action() -> tuple[Status, str]:
        protected = await anyio.to_thread.run_sync(deps.workspace.is_protected, path)  # refuses outside paths first
        summary = f"write {len(content.encode())} bytes to {path}"
        if protected:
            summary += " (a protected path: always asked)"
        await deps.policy.check(PermissionRequest("write_file", ctx.tool_call_id or "", args, summary,
                                                  protected=protected))
        return "ok", await deps.files.write_text(deps.workspace, path, content, allow_protected=protected)

    return await _invoke(ctx, "write_file", args, action)


async def list_files(ctx: RunContext[TurnDeps], path: str = ".", recursive: bool = True) -> str:
    """List the files and directories of the workspace (directories end with '/').

    Args:
        path: Directory relative to the workspace root.
        recursive: Also list subdirectories' contents.
    """
    deps = ctx.deps
    return await _invoke(ctx, "list_files", {"path": path, "recursive": recursive},
                         _ok(lambda: deps.files.list_files(deps.workspace, path, recursive)))


async def search(ctx: RunContext[TurnDeps], pattern: str, path: str = ".", regex: bool = False,
                 ignore_case: bool = False) -> str:
    """Search text in the workspace files; returns matching lines as file:line: text.

    Args:
        pattern: Text to look for (a regular expression when regex is true).
        path: File or directory to search, relative to the workspace root.
        regex: Treat pattern as a Python regular expression.
        ignore_case: Match without regard to case.
    """
    deps = ctx.deps
    args = {"pattern": pattern, "path": path, "regex": regex, "ignore_case": ignore_case}
    return await _invoke(ctx, "search", args,
                         _ok(lambda: deps.files.search(deps.workspace, pattern, path, regex, ignore_case)))


async def run_command(ctx: RunContext[TurnDeps], command: str, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> str:
    """Run a shell command (bash) in the workspace root; returns its exit code and output.

    Args:
        command: The command line, e.g. "pytest -q" or "ls -la".
        timeout: Seconds before the command is killed (at most 600).
    """
    args = {"command": command, "timeout": timeout}
    deps = ctx.deps

    async def action() -> tuple[Status, str]:
        checked = CommandLine.of(command, timeout)  # before asking anyone about it
        await deps.policy.check(PermissionRequest("run_command", ctx.tool_call_id or "", args, f"run `{command}`"))
        code, output = await deps.commands.run(deps.workspace, checked, call_id=ctx.tool_call_id or "")
        if code is None:
            return "error", f"error: {output}"
        return ("ok" if code == 0 else "error"), f"exit code {code}\n{output}"

    return await _invoke(ctx, "run_command", args, action)


TOOL_FUNCTIONS: dict[str, Callable[..., Awaitable[str]]] = {
    "read_file": read_file,
    "write_file": write_file,
    "list_files": list_files,
    "search": search,
    "run_command": run_command,
}


def make_tools(names: list[str] | tuple[str, ...]) -> list[Tool[TurnDeps]]:
    """pydantic-ai tools for the enabled tool names (in the order given)."""
    return [Tool(TOOL_FUNCTIONS[name], takes_ctx=True, name=name) for name in names]


def openai_tool_definitions(names: list[str] | tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """The enabled tools as the model sees them (OpenAI ``{"type": "function", "function": ...}``),
    for training data that must offer the same tools as the agent."""
    out = []
    for tool in make_tools(list(names) if names is not None else list(TOOL_FUNCTIONS)):
        spec = tool.tool_def
        out.append({"type": "function", "function": {"name": spec.name, "description": spec.description,
                                                     "parameters": spec.parameters_json_schema}})
    return out
