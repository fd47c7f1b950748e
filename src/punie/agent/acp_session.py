"""One ACP session's state and its tool calls as the client sees them.

:class:`Session` is a live session: its stored record, its agent, the backends
its tools use (chosen once, by :func:`client_backends`, from what the client
advertised), its turn lock and the tool calls it has announced. The functions
below turn tool calls into ``session/update`` notifications: ``tool_call``
(pending) -> ``session/request_permission`` when the profile says ``ask``
(:func:`ask_permission`, with a diff for a write) -> ``tool_call_update``
in_progress -> completed / failed, and a final ``failed`` for every call a turn
left open (:func:`close_open_calls`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from acp.helpers import (
    start_tool_call,
    text_block,
    tool_content,
    tool_diff_content,
    tool_terminal_ref,
    update_tool_call,
)
from acp.schema import ToolCallLocation, ToolCallUpdate

from punie.agent.acp_backends import ClientCommands, ClientFiles
from punie.agent.acp_describe import MAX_UPDATE_TEXT, PERMISSION_OPTIONS, ClientFeatures, describe_tool
from punie.agent.backends import CommandBackend, FileBackend
from punie.agent.local import DiskFiles, LocalCommands
from punie.agent.mcp_servers import McpConnections
from punie.agent.permissions import Answer, PermissionRequest
from punie.agent.plan import PLAN_TOOL, acp_plan
from punie.agent.runner import PunieAgent
from punie.agent.sessions import SessionRecord
from punie.agent.tools import ToolCallRecord

#: Sends one update of this session to the client.
Send = Callable[[Any], Awaitable[None]]


@dataclass
class Session:
    """A live session: what a turn needs and what the client has been told of it."""

    record: SessionRecord
    agent: PunieAgent
    files: FileBackend
    commands: CommandBackend
    #: The running turn's (or slash command's) scope: ``session/cancel`` cancels it.
    scope: anyio.CancelScope | None = None
    #: One turn at a time (anyio's lock wakes its waiters in FIFO order).
    turn_lock: anyio.Lock = field(default_factory=anyio.Lock)
    #: Prompts waiting for the lock, and session/cancel notifications seen so far.
    waiting: int = 0
    cancels: int = 0
    #: Tool calls announced and not yet finished (id -> tool name), and their client terminals.
    open_calls: dict[str, str] = field(default_factory=dict)
    terminals: dict[str, str] = field(default_factory=dict)
    #: The client's MCP servers connected for this session (punie.agent.mcp_servers).
    mcp: McpConnections | None = None

    @property
    def session_id(self) -> str:
        return self.record.session_id

    @property
    def history(self) -> list[Any]:
        return self.record.messages


def client_backends(conn: Any, features: ClientFeatures, session_id: str, send: Send,
                    terminals: dict[str, str]) -> tuple[FileBackend, CommandBackend]:
    """The backends of a session's tools: the client's ``fs/*`` and ``terminal/*`` where it
    advertised them, else the disk and local processes. The one place the choice is made."""
    files: FileBackend = DiskFiles()
    commands: CommandBackend = LocalCommands()
    if features.read_text_file or features.write_text_file:
        files = ClientFiles(conn, session_id, read=features.read_text_file, write=features.write_text_file)
    if features.terminal:
        async def on_terminal(call_id: str, terminal_id: str) -> None:
            terminals[call_id] = terminal_id  # shown in the call's final update too
            await send(update_tool_call(call_id, content=[tool_terminal_ref(terminal_id)]))

        commands = ClientCommands(conn, session_id, on_terminal=on_terminal)
    return files, commands


def _locations(session: Session, args: dict[str, Any]) -> list[ToolCallLocation] | None:
    path = args.get("path")
    if not isinstance(path, str):
        return None
    try:
        return [ToolCallLocation(path=str(session.agent.workspace.resolve(path)))]
    except Exception:
        return None


async def call_started(send: Send, session: Session, call_id: str, name: str, args: dict[str, Any]) -> None:
    """Announce a tool call (pending); in_progress at once unless a person is asked first."""
    session.open_calls[call_id] = name
    title, kind = describe_tool(name, args)
    await send(start_tool_call(call_id, title, kind=kind, status="pending", raw_input=args,
                               locations=_locations(session, args)))
    policy = session.agent.policy
    if policy.decision(name) == "allow" or name in policy.always_allowed:
        await send(update_tool_call(call_id, status="in_progress"))
    # "ask": in_progress follows the client's allow (ask_permission); "deny": straight to failed.


async def call_ended(send: Send, session: Session, record: ToolCallRecord) -> None:
    """The call's final update (completed or failed, its result, its terminal), and the plan it set."""
    if session.open_calls.pop(record.id, None) is None:
        return
    text = record.result if len(record.result) <= MAX_UPDATE_TEXT else record.result[:MAX_UPDATE_TEXT] + "\n[...]"
    content: list[Any] = [tool_content(text_block(text))]
    if terminal_id := session.terminals.pop(record.id, None):
        content.insert(0, tool_terminal_ref(terminal_id))
    await send(update_tool_call(record.id, status="completed" if record.status == "ok" else "failed",
                                content=content, raw_output=record.result))
    if record.name == PLAN_TOOL and record.status == "ok" and (plan := acp_plan(record.args)) is not None:
        await send(plan)


async def close_open_calls(send: Send, session: Session) -> None:
    """A final ``failed`` update for every call the turn left open (cancelled, or the turn failed)."""
    for call_id in list(session.open_calls):
        session.open_calls.pop(call_id, None)
        session.terminals.pop(call_id, None)
        with contextlib.suppress(Exception):
            await send(update_tool_call(call_id, status="failed", content=[tool_content(text_block("cancelled"))]))


async def _diff(session: Session, args: dict[str, Any]) -> list[Any] | None:
    """The write's diff: the old text as the session's file backend sees it (the client's buffer,
    or the disk through the workspace's descriptors, never by name)."""
    try:
        real = session.agent.workspace.resolve(args["path"])
        old = await session.files.old_text(session.agent.workspace, args["path"])
        return [tool_diff_content(str(real), args.get("content", ""), old)]
    except Exception:
        return None


async def ask_permission(conn: Any, session_id: str, send: Send, session: Session | None,
                         request: PermissionRequest) -> Answer:
    """``session/request_permission`` for an announced call (with a diff for a write); in_progress
    follows an allow."""
    if conn is None:
        return Answer(False, reason="no client connected")
    content = None
    if request.tool == "write_file" and session is not None:
        content = await _diff(session, request.args)
    title, kind = describe_tool(request.tool, request.args)
    tool_call = ToolCallUpdate(tool_call_id=request.tool_call_id, title=title, kind=kind,
                               raw_input=request.args, content=content)
    response = await conn.request_permission(session_id=session_id,
                                             tool_call=tool_call, options=PERMISSION_OPTIONS)
    outcome = response.outcome
    if getattr(outcome, "outcome", None) != "selected":
        return Answer(False, reason="the request was cancelled")
    if outcome.option_id not in ("allow", "allow_always"):
        return Answer(False, reason="the user rejected it")
    await send(update_tool_call(request.tool_call_id, status="in_progress"))
    return Answer(True, always=outcome.option_id == "allow_always")
