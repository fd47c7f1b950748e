"""The agent's tools: read_file, write_file, list_files, search, run_command.

The ``*_impl`` functions do the work on a :class:`Workspace` and are plain
functions (tested directly). :func:`make_tools` wraps the enabled ones as
pydantic-ai tools that go through the permission policy, record every call
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
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio.to_thread
from pydantic_ai import RunContext, Tool

from punie.agent.permissions import PermissionPolicy, PermissionRequest
from punie.agent.procs import CappedOutput, command_env, run_reaped
from punie.agent.workspace import Workspace
from punie.errors import PermissionDenied, ToolFailure
from punie.paths import STATE_DIR_NAME

logger = logging.getLogger(__name__)

MAX_READ_CHARS = 100_000
MAX_LIST_ENTRIES = 500
MAX_SEARCH_MATCHES = 200
MAX_SEARCH_FILE_BYTES = 2_000_000
MAX_COMMAND_OUTPUT = 20_000
DEFAULT_COMMAND_TIMEOUT = 60.0
MAX_COMMAND_TIMEOUT = 600.0
SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".venv", "venv", "node_modules", ".mypy_cache",
                       ".pytest_cache", ".ruff_cache", STATE_DIR_NAME, ".tox"})

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
    #: Where read_file/write_file and run_command go (punie.agent.backends); None: the disk, locally.
    files: Any = None
    commands: Any = None


# -- implementations ---------------------------------------------------------
# Blocking (file I/O through the workspace's descriptors); the tools below run them in a thread.


def read_file_impl(ws: Workspace, path: str) -> str:
    """The text of a regular file (UTF-8, undecodable bytes replaced), capped at ``ws.max_read_bytes``
    read and :data:`MAX_READ_CHARS` shown."""
    data, size = ws.read_bytes(path)
    text = data.decode("utf-8", errors="replace")
    if len(text) > MAX_READ_CHARS:
        return text[:MAX_READ_CHARS] + f"\n[... truncated: showing {MAX_READ_CHARS} characters of a {size}-byte file]"
    if size > len(data):
        text += f"\n[... truncated: read {len(data)} bytes of a {size}-byte file (agent.max_read_bytes)]"
    return text


def write_file_impl(ws: Workspace, path: str, content: str, *, allow_protected: bool = False) -> str:
    """Write ``content`` to a file (parents created), replacing it atomically.

    A protected path is refused unless ``allow_protected`` (a person approved this write).
    """
    data = content.encode("utf-8")
    rel = ws.write_bytes(path, data, allow_protected=allow_protected)
    return f"wrote {len(data)} bytes to {rel}"


def list_files_impl(ws: Workspace, path: str = ".", recursive: bool = True) -> str:
    """Files under a directory (relative to the root; directories end with '/')."""
    entries, truncated = ws.list(path, recursive=recursive, skip=SKIP_DIRS, limit=MAX_LIST_ENTRIES)
    entries.sort()
    if not entries:
        return f"{ws.canonical(path)}: empty directory"
    if truncated:
        entries.append(f"[... stopped after {MAX_LIST_ENTRIES} entries]")
    return "\n".join(entries)


def search_impl(ws: Workspace, pattern: str, path: str = ".", regex: bool = False, ignore_case: bool = False) -> str:
    """Lines matching ``pattern`` as ``file:line: text`` (regular files only; symlinks are not followed)."""
    if not pattern:
        raise ToolFailure("pattern must not be empty")
    flags = re.IGNORECASE if ignore_case else 0
    try:
        compiled = re.compile(pattern if regex else re.escape(pattern), flags)
    except re.error as exc:
        raise ToolFailure(f"invalid regular expression {pattern!r}: {exc}") from None
    matches: list[str] = []
    for rel, data in ws.files(path, skip=SKIP_DIRS, max_bytes=MAX_SEARCH_FILE_BYTES):
        if b"\x00" in data[:8192]:
            continue
        for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if compiled.search(line):
                matches.append(f"{rel}:{lineno}: {line.strip()[:200]}")
                if len(matches) >= MAX_SEARCH_MATCHES:
                    matches.append(f"[... stopped after {MAX_SEARCH_MATCHES} matches]")
                    return "\n".join(matches)
    return "\n".join(matches) if matches else f"no matches for {pattern!r}"


#: Kept importable from here; the implementation lives with the process handling.
_CappedOutput = CappedOutput


async def run_command_impl(ws: Workspace, command: str, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> tuple[int | None, str]:
    """Run ``bash -c command`` in the workspace root; (exit code or None on timeout, capped output).

    stdin is /dev/null (in ACP mode our stdin is the protocol), stdout and
    stderr are merged, the environment is the allow-list plus ``agent.env``
    (:func:`punie.agent.procs.command_env`), and every process the command
    starts is killed when it ends, times out or is cancelled, or when the
    agent dies (:mod:`punie.agent.procs`).
    """
    if not command.strip():
        raise ToolFailure("command must not be empty")
    timeout = min(max(float(timeout), 1.0), MAX_COMMAND_TIMEOUT)
    cwd = str(ws.root)
    return await run_reaped(["bash", "-c", command], cwd=cwd, env=command_env(ws.env, cwd=cwd), timeout=timeout,
                            output_limit=MAX_COMMAND_OUTPUT)


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


def _ok(fn: Callable[[], str]) -> Callable[[], Awaitable[tuple[Status, str]]]:
    """An action running the blocking ``fn`` in a worker thread (the event loop keeps serving)."""
    async def run() -> tuple[Status, str]:
        return "ok", await anyio.to_thread.run_sync(fn)
    return run


async def read_file(ctx: RunContext[TurnDeps], path: str) -> str:
    """Read a text file of the workspace.

    Args:
        path: File path relative to the workspace root.
    """
    if ctx.deps.files is not None:
        async def via_backend() -> tuple[Status, str]:
            return "ok", await ctx.deps.files.read_text(ctx.deps.workspace, path)

        return await _invoke(ctx, "read_file", {"path": path}, via_backend)
    return await _invoke(ctx, "read_file", {"path": path}, _ok(lambda: read_file_impl(ctx.deps.workspace, path)))


async def write_file(ctx: RunContext[TurnDeps], path: str, content: str) -> str:
    """Create or replace a text file in the workspace with the given content.

    Args:
        path: File path relative to the workspace root.
        content: The complete new content of the file.
    """
    args = {"path": path, "content": content}

    async def action() -> tuple[Status, str]:
        ws = ctx.deps.workspace
        protected = await anyio.to_thread.run_sync(ws.is_protected, path)  # refuses outside paths before asking
        summary = f"write {len(content.encode())} bytes to {path}"
        if protected:
            summary += " (a protected path: always asked)"
        await ctx.deps.policy.check(PermissionRequest("write_file", ctx.tool_call_id or "", args, summary,
                                                      protected=protected))
        if ctx.deps.files is not None:  # the IDE's buffers (fs/write_text_file), same path rules
            return "ok", await ctx.deps.files.write_text(ws, path, content, allow_protected=protected)
        return "ok", await anyio.to_thread.run_sync(
            lambda: write_file_impl(ws, path, content, allow_protected=protected))

    return await _invoke(ctx, "write_file", args, action)


async def list_files(ctx: RunContext[TurnDeps], path: str = ".", recursive: bool = True) -> str:
    """List the files and directories of the workspace (directories end with '/').

    Args:
        path: Directory relative to the workspace root.
        recursive: Also list subdirectories' contents.
    """
    args = {"path": path, "recursive": recursive}
    return await _invoke(ctx, "list_files", args,
                         _ok(lambda: list_files_impl(ctx.deps.workspace, path, recursive)))


async def search(ctx: RunContext[TurnDeps], pattern: str, path: str = ".", regex: bool = False,
                 ignore_case: bool = False) -> str:
    """Search text in the workspace files; returns matching lines as file:line: text.

    Args:
        pattern: Text to look for (a regular expression when regex is true).
        path: File or directory to search, relative to the workspace root.
        regex: Treat pattern as a Python regular expression.
        ignore_case: Match without regard to case.
    """
    args = {"pattern": pattern, "path": path, "regex": regex, "ignore_case": ignore_case}
    return await _invoke(ctx, "search", args,
                         _ok(lambda: search_impl(ctx.deps.workspace, pattern, path, regex, ignore_case)))


async def run_command(ctx: RunContext[TurnDeps], command: str, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> str:
    """Run a shell command (bash) in the workspace root; returns its exit code and output.

    Args:
        command: The command line, e.g. "pytest -q" or "ls -la".
        timeout: Seconds before the command is killed (at most 600).
    """
    args = {"command": command, "timeout": timeout}

    async def action() -> tuple[Status, str]:
        await ctx.deps.policy.check(PermissionRequest("run_command", ctx.tool_call_id or "", args, f"run `{command}`"))
        if ctx.deps.commands is not None:
            code, output = await ctx.deps.commands.run(ctx.deps.workspace, command, timeout,
                                                       call_id=ctx.tool_call_id or "")
        else:
            code, output = await run_command_impl(ctx.deps.workspace, command, timeout)
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
