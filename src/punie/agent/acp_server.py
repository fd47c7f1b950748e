"""The Agent Client Protocol side of Punie: what PyCharm and Zed talk to over stdio.

:class:`PunieAcpAgent` implements the ``acp.Agent`` interface of the
agent-client-protocol package: one Punie agent per session (its workspace is
the session's ``cwd`` joined with ``agent.workspace``), the conversation kept
per session, tool calls reported as ``tool_call`` / ``tool_call_update``
notifications, ``ask`` permissions answered through the client's
``session/request_permission``, and ``session/cancel`` stopping the turn.

:func:`serve_stdio` runs it on the process's stdin/stdout. stdout belongs to
the protocol: the real stdout is kept for it and file descriptor 1 is pointed
at stderr, so a stray print (ours or a library's) cannot corrupt the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import sys
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from acp import PROTOCOL_VERSION, RequestError, run_agent
from acp.helpers import (
    start_tool_call,
    text_block,
    tool_content,
    tool_diff_content,
    update_agent_message_text,
    update_agent_thought_text,
    update_tool_call,
)
from acp.schema import (
    AgentCapabilities,
    AuthenticateResponse,
    Implementation,
    InitializeResponse,
    NewSessionResponse,
    PermissionOption,
    PromptCapabilities,
    PromptResponse,
    ToolCallLocation,
    ToolCallUpdate,
)

from punie import __version__
from punie.agent.permissions import Answer, PermissionRequest
from punie.agent.runner import PunieAgent, build_agent, run_turn
from punie.agent.tools import ToolCallRecord, ToolHooks
from punie.config.models import AgentOptions
from punie.errors import AgentError

logger = logging.getLogger(__name__)

STDIO_LIMIT = 50 * 1024 * 1024
MAX_UPDATE_TEXT = 8_000

_KINDS = {"read_file": "read", "write_file": "edit", "list_files": "search", "search": "search",
          "run_command": "execute"}

PERMISSION_OPTIONS = [
    PermissionOption(option_id="allow", name="Allow", kind="allow_once"),
    PermissionOption(option_id="allow_always", name="Allow for this session", kind="allow_always"),
    PermissionOption(option_id="reject", name="Reject", kind="reject_once"),
]


def tool_title(name: str, args: dict[str, Any]) -> str:
    """A short human title for a tool call."""
    if name == "read_file":
        return f"Read {args.get('path')}"
    if name == "write_file":
        return f"Write {args.get('path')}"
    if name == "list_files":
        return f"List {args.get('path', '.')}"
    if name == "search":
        return f"Search {args.get('pattern')!r}"
    if name == "run_command":
        return f"Run `{args.get('command')}`"
    return name


@dataclass
class _Session:
    agent: PunieAgent
    history: list[Any] = field(default_factory=list)
    task: asyncio.Task[Any] | None = None


def _prompt_text(blocks: list[Any]) -> str:
    """The prompt's text: text blocks, embedded text resources (with their URI), resource links."""
    parts: list[str] = []
    for block in blocks:
        kind = getattr(block, "type", None)
        if kind == "text":
            parts.append(block.text)
        elif kind == "resource":
            resource = block.resource
            text = getattr(resource, "text", None)
            if text is not None:
                parts.append(f"<file uri=\"{resource.uri}\">\n{text}\n</file>")
        elif kind == "resource_link":
            parts.append(f"[{block.name}]({block.uri})")
    return "\n\n".join(parts)


class PunieAcpAgent:
    """Punie as an ``acp.Agent``: sessions, prompts, tool call updates, permissions."""

    def __init__(self, options: AgentOptions, base_url: str, *, model_name: str | None = None,
                 models: dict[str, str] | None = None):
        self.options = options
        self.base_url = base_url
        # models: profile -> model id on a shared (vLLM group) server; a session picks one with
        # _meta {"punie/profile": NAME} in session/new, else it gets model_name.
        self.model_name = model_name
        self.models = dict(models or {})
        self._conn: Any = None
        self._sessions: dict[str, _Session] = {}

    def on_connect(self, conn: Any) -> None:
        self._conn = conn

    async def initialize(self, protocol_version: int, client_capabilities: Any = None, client_info: Any = None,
                         **kwargs: Any) -> InitializeResponse:
        logger.info("ACP initialize (client protocol %s, %s)", protocol_version, client_info)
        return InitializeResponse(
            protocol_version=min(protocol_version, PROTOCOL_VERSION),
            agent_capabilities=AgentCapabilities(
                load_session=False, prompt_capabilities=PromptCapabilities(embedded_context=True)
            ),
            agent_info=Implementation(name=self.options.name, title="Punie", version=__version__),
        )

    async def authenticate(self, method_id: str, **kwargs: Any) -> AuthenticateResponse:
        return AuthenticateResponse()

    async def new_session(self, cwd: str, mcp_servers: Any = None, **kwargs: Any) -> NewSessionResponse:
        session_id = uuid.uuid4().hex
        try:
            model = self._session_model(kwargs)
            agent = build_agent(self.options, self.base_url, base_dir=cwd,
                                permission_asker=self._asker(session_id), **model)
        except AgentError as exc:
            raise RequestError.invalid_params({"message": exc.render()}) from None
        self._sessions[session_id] = _Session(agent=agent)
        logger.info("ACP session %s in %s", session_id, agent.workspace.root)
        return NewSessionResponse(session_id=session_id)

    def _session_model(self, kwargs: dict[str, Any]) -> dict[str, str]:
        meta = kwargs.get("field_meta") or kwargs.get("_meta") or {}
        profile = meta.get("punie/profile") if isinstance(meta, dict) else None
        if profile is not None:
            if profile not in self.models:
                known = ", ".join(sorted(self.models)) or "none"
                raise AgentError(f"_meta punie/profile {profile!r} is not served here (profiles: {known})")
            return {"model_name": self.models[profile]}
        return {"model_name": self.model_name} if self.model_name else {}

    def _session(self, session_id: str) -> _Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise RequestError.invalid_params({"message": f"unknown session {session_id!r}"}) from None

    async def prompt(self, session_id: str, prompt: list[Any], **kwargs: Any) -> PromptResponse:
        session = self._session(session_id)
        text = _prompt_text(prompt)
        hooks = ToolHooks(on_start=lambda cid, name, args: self._tool_started(session_id, session, cid, name, args),
                          on_end=lambda record: self._tool_ended(session_id, record))
        streamed: list[str] = []

        async def on_text(piece: str) -> None:
            streamed.append(piece)
            await self._send(session_id, update_agent_message_text(piece))

        async def on_thought(piece: str) -> None:
            await self._send(session_id, update_agent_thought_text(piece))

        task = asyncio.create_task(run_turn(session.agent, text, history=session.history, hooks=hooks,
                                            on_text=on_text, on_thought=on_thought))
        session.task = task
        try:
            await asyncio.wait({task})
        finally:
            session.task = None
        if task.cancelled():
            return PromptResponse(stop_reason="cancelled")
        exc = task.exception()
        if isinstance(exc, AgentError):
            logger.error("%s", exc.render())
            await self._send(session_id, update_agent_message_text(f"punie: error: {exc.render()}"))
            from pydantic_ai.exceptions import UsageLimitExceeded

            stop = "max_turn_requests" if isinstance(exc.__cause__, UsageLimitExceeded) else "end_turn"
            return PromptResponse(stop_reason=stop)
        if exc is not None:
            logger.error("turn failed", exc_info=exc)
            raise RequestError.internal_error({"message": f"{type(exc).__name__}: {exc}"})
        result = task.result()
        session.history = result.messages
        if result.answer and not streamed:
            await self._send(session_id, update_agent_message_text(result.answer))
        return PromptResponse(stop_reason="end_turn")

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        session = self._sessions.get(session_id)
        if session and session.task and not session.task.done():
            logger.info("ACP session %s: turn cancelled", session_id)
            session.task.cancel()

    async def _send(self, session_id: str, update: Any) -> None:
        if self._conn is not None:
            await self._conn.session_update(session_id=session_id, update=update)

    def _locations(self, session: _Session, args: dict[str, Any]) -> list[ToolCallLocation] | None:
        path = args.get("path")
        if not isinstance(path, str):
            return None
        try:
            return [ToolCallLocation(path=str(session.agent.workspace.resolve(path)))]
        except Exception:
            return None

    async def _tool_started(self, session_id: str, session: _Session, call_id: str, name: str,
                            args: dict[str, Any]) -> None:
        await self._send(session_id, start_tool_call(
            call_id, tool_title(name, args), kind=_KINDS.get(name, "other"), status="in_progress",
            raw_input=args, locations=self._locations(session, args),
        ))

    async def _tool_ended(self, session_id: str, record: ToolCallRecord) -> None:
        text = record.result if len(record.result) <= MAX_UPDATE_TEXT else record.result[:MAX_UPDATE_TEXT] + "\n[...]"
        await self._send(session_id, update_tool_call(
            record.id, status="completed" if record.status == "ok" else "failed",
            content=[tool_content(text_block(text))], raw_output=record.result,
        ))

    def _asker(self, session_id: str) -> Any:
        async def ask(request: PermissionRequest) -> Answer:
            if self._conn is None:
                return Answer(False, reason="no client connected")
            session = self._sessions.get(session_id)
            content = None
            if request.tool == "write_file" and session is not None:
                try:
                    ws = session.agent.workspace
                    real = ws.resolve(request.args["path"])
                    old = await asyncio.to_thread(ws.existing_text, request.args["path"])  # never on the loop
                    content = [tool_diff_content(str(real), request.args.get("content", ""), old)]
                except Exception:
                    content = None
            tool_call = ToolCallUpdate(
                tool_call_id=request.tool_call_id, title=tool_title(request.tool, request.args),
                kind=_KINDS.get(request.tool, "other"), status="pending", raw_input=request.args, content=content,
            )
            response = await self._conn.request_permission(
                session_id=session_id, tool_call=tool_call, options=PERMISSION_OPTIONS
            )
            outcome = response.outcome
            if getattr(outcome, "outcome", None) != "selected":
                return Answer(False, reason="the request was cancelled")
            if outcome.option_id == "allow_always":
                return Answer(True, always=True)
            if outcome.option_id == "allow":
                return Answer(True)
            return Answer(False, reason="the user rejected it")

        return ask


def _pollable(fd: int) -> bool:
    """Whether the event loop can watch ``fd`` (epoll refuses regular files and /dev/null)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


async def _stdio_streams() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Protocol streams on stdin and the *original* stdout; fd 1 then points at stderr.

    Pipes, sockets and terminals are watched by the event loop; anything else
    (stdin from a file or /dev/null, stdout to a file) is served by a thread, so
    the agent never crashes on how it was started.
    """
    loop = asyncio.get_running_loop()
    sys.stdout.flush()
    out_fd = os.dup(1)
    os.dup2(2, 1)
    reader = asyncio.StreamReader(limit=STDIO_LIMIT)
    in_fd = sys.stdin.fileno()
    if _pollable(in_fd):
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    else:
        _feed_from_thread(loop, reader, in_fd)
    # FlowControlMixin is what StreamWriter.drain() waits on.
    protocol = asyncio.streams.FlowControlMixin(loop)
    transport: asyncio.BaseTransport
    if _pollable(out_fd):
        transport, _ = await loop.connect_write_pipe(lambda: protocol, os.fdopen(out_fd, "wb", buffering=0))
    else:
        transport = _BlockingWriteTransport(out_fd)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)  # type: ignore[arg-type]
    return reader, writer


def _feed_from_thread(loop: asyncio.AbstractEventLoop, reader: asyncio.StreamReader, fd: int) -> None:
    def pump() -> None:
        try:
            while chunk := os.read(fd, 65536):
                loop.call_soon_threadsafe(reader.feed_data, chunk)
        except OSError as exc:
            logger.debug("stdin read failed: %s", exc)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop may already be closed
                loop.call_soon_threadsafe(reader.feed_eof)

    threading.Thread(target=pump, name="punie-acp-stdin", daemon=True).start()


class _BlockingWriteTransport(asyncio.WriteTransport):
    """Writes straight to a file descriptor that the event loop cannot watch (a regular file)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view and not self._closing:
            view = view[os.write(self._fd, view) :]

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def abort(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return 0


async def serve_stdio_async(options: AgentOptions, base_url: str, **models: Any) -> None:
    """Serve ACP on stdin/stdout until the client closes stdin."""
    from punie.agent.procs import adopt_orphans

    adopt_orphans()  # run_command's processes never outlive their reaper (see punie.agent.procs)
    reader, writer = await _stdio_streams()
    logger.info("punie agent: ACP on stdio, model server %s", base_url)
    await run_agent(PunieAcpAgent(options, base_url, **models), writer, reader)


def serve_stdio(options: AgentOptions, base_url: str, **models: Any) -> None:
    """Blocking :func:`serve_stdio_async`."""
    asyncio.run(serve_stdio_async(options, base_url, **models))
