"""The Agent Client Protocol side of Punie: what PyCharm and Zed talk to over stdio.

:class:`PunieAcpAgent` implements the ``acp.Agent`` interface of the
agent-client-protocol package, as the protocol intends:

* file tools go through the client's ``fs/read_text_file`` /
  ``fs/write_text_file`` and run_command through ``terminal/*`` when the
  client advertised them in ``initialize`` (else the disk and local
  processes); the workspace path rules are applied first either way
  (:mod:`punie.agent.backends`);
* every tool call goes ``tool_call`` (pending) -> ``session/request_permission``
  when the profile says ``ask`` -> ``tool_call_update`` in_progress ->
  completed / failed, and a call still open when the turn ends (cancelled
  during its permission request, say) gets its final ``failed`` update;
* sessions are stored under ``<cwd>/.punie/sessions/`` after each turn,
  listed by ``session/list`` and replayed by ``session/load``;
* a ``profile`` session config option switches between the profiles that can
  share the running server (same model, adapter and generation options:
  :func:`punie.agent.target.sharing_profiles`).
* one turn per session at a time: a prompt sent during a turn waits for it
  (FIFO, at most :data:`MAX_WAITING`); ``session/cancel`` stops the running turn
  (its run_command children with it) and every prompt waiting behind it;
* the client's MCP servers from ``session/new`` / ``load`` / ``resume`` are
  connected for the session beside the built-in tools, under
  ``agent.permissions.mcp`` (:mod:`punie.agent.mcp_servers`);
* slash commands are advertised (``available_commands_update``) and served
  (:mod:`punie.agent.acp_commands`); a ``usage_update`` follows each turn; the
  model's ``update_plan`` calls become agent ``plan`` updates
  (:mod:`punie.agent.plan`); ``session/resume`` carries a session on without
  replaying it;
* :meth:`PunieAcpAgent.status` tells the client what the agent waits for, and a
  ``before_turn`` hook runs before each turn with it (waking an unloaded server).

:func:`serve_stdio` runs it on the process's stdin/stdout. stdout belongs to
the protocol: the real stdout is kept for it and file descriptor 1 is pointed
at stderr, so a stray print (ours or a library's) cannot corrupt the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from acp import PROTOCOL_VERSION, RequestError, run_agent
from acp.helpers import (
    start_tool_call,
    text_block,
    tool_content,
    tool_diff_content,
    tool_terminal_ref,
    update_agent_message_text,
    update_agent_thought_text,
    update_available_commands,
    update_tool_call,
)
from acp.schema import (
    AgentCapabilities,
    AuthenticateResponse,
    ConfigOptionUpdate,
    Implementation,
    InitializeResponse,
    ListSessionsResponse,
    LoadSessionResponse,
    McpCapabilities,
    NewSessionResponse,
    PermissionOption,
    PromptCapabilities,
    PromptResponse,
    ResumeSessionResponse,
    SessionCapabilities,
    SessionConfigOptionSelect,
    SessionConfigSelectOption,
    SessionInfo,
    SessionListCapabilities,
    SessionResumeCapabilities,
    SetSessionConfigOptionResponse,
    ToolCallLocation,
    ToolCallUpdate,
    UsageUpdate,
)

from punie import __version__
from punie.agent.acp_commands import (
    adapter_report,
    available_commands,
    help_text,
    load_resolved,
    parse_command,
    run_eval,
    served_context_window,
)
from punie.agent.acp_stdio import stdio_transport
from punie.agent.backends import ClientFs, ClientTerminal, Disk
from punie.agent.mcp_servers import McpConnections, connect, is_mcp_tool, split_name
from punie.agent.permissions import Answer, PermissionRequest
from punie.agent.plan import PLAN_TOOL, acp_plan
from punie.agent.runner import PunieAgent, build_agent, run_turn
from punie.agent.sessions import SessionRecord, SessionStore, replay_updates, sessions_dir, title_of
from punie.agent.tools import ToolCallRecord, ToolHooks
from punie.config.models import AgentOptions
from punie.errors import AgentError, error_line

logger = logging.getLogger(__name__)

#: Sends the client one status line of a session (see PunieAcpAgent.status).
StatusSender = Callable[[str], Awaitable[None]]

MAX_UPDATE_TEXT = 8_000
#: Prompts that may wait behind a session's running turn; one more is refused.
MAX_WAITING = 8
PROFILE_OPTION = "profile"

_KINDS = {"read_file": "read", "write_file": "edit", "list_files": "search", "search": "search",
          "run_command": "execute", "update_plan": "think"}

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
    if name == PLAN_TOOL:
        return "Update the plan"
    if is_mcp_tool(name):
        server, tool = split_name(name)
        return f"{server}: {tool}"
    return name


def describe_tool(name: str, args: dict[str, Any]) -> tuple[str, str]:
    """(title, ACP kind) of a tool call."""
    return tool_title(name, args), _KINDS.get(name, "other")


@dataclass(frozen=True)
class ClientFeatures:
    """What the client said it can do in ``initialize``."""

    read_text_file: bool = False
    write_text_file: bool = False
    terminal: bool = False

    @classmethod
    def of(cls, caps: Any) -> ClientFeatures:
        fs = getattr(caps, "fs", None)
        return cls(read_text_file=bool(getattr(fs, "read_text_file", False)),
                   write_text_file=bool(getattr(fs, "write_text_file", False)),
                   terminal=bool(getattr(caps, "terminal", False)))


@dataclass
class _Session:
    record: SessionRecord
    agent: PunieAgent
    task: asyncio.Task[Any] | None = None
    #: One turn at a time (asyncio's lock wakes its waiters in FIFO order).
    turn_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Prompts waiting for the lock, and session/cancel notifications seen so far.
    waiting: int = 0
    cancels: int = 0
    #: Tool calls announced and not yet finished (id -> tool name).
    open_calls: dict[str, str] = field(default_factory=dict)
    terminals: dict[str, str] = field(default_factory=dict)
    #: The client's MCP servers connected for this session (punie.agent.mcp_servers).
    mcp: McpConnections | None = None

    @property
    def history(self) -> list[Any]:
        return self.record.messages


def context_tokens(messages: list[Any]) -> int | None:
    """Tokens in the model's context after the last answer: its request's input plus its output."""
    from pydantic_ai.messages import ModelResponse

    for message in reversed(messages):
        usage = getattr(message, "usage", None) if isinstance(message, ModelResponse) else None
        if usage is not None and (usage.input_tokens or usage.output_tokens):
            return int(usage.input_tokens or 0) + int(usage.output_tokens or 0)
    return None


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
    """Punie as an ``acp.Agent``: sessions, prompts, tool call updates, permissions, history."""

    def __init__(self, options: AgentOptions, base_url: str, *, profile: str | None = None,
                 profiles: dict[str, AgentOptions] | None = None, model_name: str | None = None,
                 models: dict[str, str] | None = None,
                 before_turn: Callable[[StatusSender], Awaitable[None]] | None = None,
                 config: str | None = None, context_window: int | None = None):
        self.options = options
        # punie.toml the profiles come from (slash commands read the profile's adapter, run its eval).
        self.config = config
        # Tokens the model's context holds (usage_update's size); None: asked of the server once.
        self.context_window = context_window
        self._window_known = context_window is not None
        # Awaited before each turn with a function that sends the client a status line: the place to
        # wake a model server that was unloaded while idle ("loading the model...").
        self.before_turn = before_turn
        self.base_url = base_url
        self.profile = profile
        # The profiles a session may switch to (they share the running server); the current one first.
        self.profiles: dict[str, AgentOptions] = dict(profiles or {})
        if profile is not None:
            self.profiles[profile] = options
        # models: profile -> model id on a shared (vLLM group) server; a session picks one with
        # _meta {"punie/profile": NAME} in session/new, else it gets model_name.
        self.model_name = model_name
        self.models = dict(models or {})
        self._conn: Any = None
        self._client = ClientFeatures()
        self._sessions: dict[str, _Session] = {}
        self._background: set[asyncio.Task[Any]] = set()

    def on_connect(self, conn: Any) -> None:
        self._conn = conn

    async def initialize(self, protocol_version: int, client_capabilities: Any = None, client_info: Any = None,
                         **kwargs: Any) -> InitializeResponse:
        self._client = ClientFeatures.of(client_capabilities)
        logger.info("ACP initialize (client protocol %s, %s, %s)", protocol_version, client_info, self._client)
        return InitializeResponse(
            protocol_version=min(protocol_version, PROTOCOL_VERSION),
            agent_capabilities=AgentCapabilities(
                load_session=True,
                prompt_capabilities=PromptCapabilities(embedded_context=True),
                session_capabilities=SessionCapabilities(list=SessionListCapabilities(),
                                                         resume=SessionResumeCapabilities()),
                mcp_capabilities=McpCapabilities(http=True, sse=True),  # stdio: always
            ),
            auth_methods=[],  # a local model needs no login
            agent_info=Implementation(name=self.options.name, title="Punie", version=__version__),
        )

    async def authenticate(self, method_id: str, **kwargs: Any) -> AuthenticateResponse:
        return AuthenticateResponse()

    # -- sessions ------------------------------------------------------------

    def _build(self, session_id: str, cwd: str, profile: str | None) -> PunieAgent:
        options = self.profiles.get(profile, self.options) if profile else self.options
        try:
            return build_agent(options, self.base_url, base_dir=cwd, permission_asker=self._asker(session_id),
                               **self._model_of(profile))
        except AgentError as exc:
            raise RequestError.invalid_params({"message": exc.render()}) from None

    def _config_options(self, session: _Session) -> list[Any] | None:
        if not self.profiles:
            return None
        current = session.record.profile or self.profile or next(iter(self.profiles))
        return [SessionConfigOptionSelect(
            type="select", id=PROFILE_OPTION, name="Profile", category="mode", current_value=current,
            description="Punie profiles that run on this model server (same model and adapter)",
            options=[SessionConfigSelectOption(value=name, name=name, description=opts.instructions and
                                               opts.instructions[:80]) for name, opts in self.profiles.items()],
        )]

    async def new_session(self, cwd: str, mcp_servers: Any = None, **kwargs: Any) -> NewSessionResponse:
        session_id = uuid.uuid4().hex
        profile = self._meta_profile(kwargs) or self.profile
        agent = self._build(session_id, cwd, profile)
        record = SessionRecord(session_id=session_id, cwd=cwd, profile=profile)
        session = await self._open(_Session(record=record, agent=agent), mcp_servers)
        logger.info("ACP session %s in %s", session_id, agent.workspace.root)
        return NewSessionResponse(session_id=session_id, config_options=self._config_options(session))

    async def _open(self, session: _Session, mcp_servers: Any) -> _Session:
        """Make ``session`` the live one of its id: the client's MCP servers connected (a session it
        replaces closes its own), the slash commands advertised once the client has the answer."""
        session_id = session.record.session_id
        session.mcp = await connect(mcp_servers, session.record.cwd)
        old = self._sessions.get(session_id)
        self._sessions[session_id] = session
        if old is not None and old is not session and old.mcp is not None:
            await old.mcp.close()

        async def announce() -> None:
            await asyncio.sleep(0)  # after the session/new (load, resume) answer is on its way
            await self._send(session_id, update_available_commands(available_commands()))
            for failure in session.mcp.failures if session.mcp else []:
                await self.status(session_id, failure)

        task = asyncio.create_task(announce())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return session

    async def close(self) -> None:
        """Disconnect every session's MCP servers (the client has gone)."""
        for session in list(self._sessions.values()):
            if session.mcp is not None:
                await session.mcp.close()

    async def load_session(self, cwd: str, session_id: str, mcp_servers: Any = None, **kwargs: Any
                           ) -> LoadSessionResponse:
        self._not_busy(session_id)
        record = await self._stored(cwd, session_id)
        profile = record.profile if record.profile in self.profiles else self.profile
        record.profile = profile
        record.cwd = cwd
        agent = self._build(session_id, cwd, profile)
        for update in replay_updates(record.messages, describe_tool):
            await self._send(session_id, update)
        session = await self._open(_Session(record=record, agent=agent), mcp_servers)
        logger.info("ACP session %s loaded (%d messages)", session_id, len(record.messages))
        return LoadSessionResponse(config_options=self._config_options(session))

    async def resume_session(self, cwd: str, session_id: str, mcp_servers: Any = None, **kwargs: Any
                             ) -> ResumeSessionResponse:
        """``session/resume``: carry on a session without replaying it (the client still shows it):
        the live one of this process, else the stored one."""
        self._not_busy(session_id)
        live = self._sessions.get(session_id)
        if live is not None and live.record.cwd == cwd:
            record, agent = live.record, live.agent
        else:
            record = await self._stored(cwd, session_id)
            record.profile = record.profile if record.profile in self.profiles else self.profile
            record.cwd = cwd
            agent = self._build(session_id, cwd, record.profile)
        session = await self._open(_Session(record=record, agent=agent), mcp_servers)
        logger.info("ACP session %s resumed (%d messages)", session_id, len(record.messages))
        return ResumeSessionResponse(config_options=self._config_options(session))

    async def _stored(self, cwd: str, session_id: str) -> SessionRecord:
        try:
            record = await SessionStore(sessions_dir(cwd)).aload(session_id)
        except ValueError:
            record = None
        if record is None:
            raise RequestError.resource_not_found(f"session {session_id!r} under {sessions_dir(cwd)}")
        return record

    async def list_sessions(self, cwd: str | None = None, cursor: str | None = None, **kwargs: Any
                            ) -> ListSessionsResponse:
        where = cwd or os.getcwd()
        found = [SessionInfo(session_id=r.session_id, cwd=r.cwd, title=r.title, updated_at=r.updated_at or None)
                 for r in await SessionStore(sessions_dir(where)).alist() if cwd is None or r.cwd == cwd]
        return ListSessionsResponse(sessions=found)

    async def set_config_option(self, config_id: str, session_id: str, value: str | bool, **kwargs: Any
                                ) -> SetSessionConfigOptionResponse:
        session = self._session(session_id)
        if config_id != PROFILE_OPTION or not isinstance(value, str) or value not in self.profiles:
            known = ", ".join(self.profiles) or "none"
            raise RequestError.invalid_params(
                {"message": f"unknown config option {config_id}={value!r} (profiles on this server: {known})"})
        if session.turn_lock.locked():
            raise RequestError.invalid_params({"message": "cannot switch profile during a turn"})
        self._switch_profile(session, value)
        return SetSessionConfigOptionResponse(config_options=self._config_options(session) or [])

    def _switch_profile(self, session: _Session, profile: str) -> None:
        session.agent = self._build(session.record.session_id, session.record.cwd, profile)
        session.record.profile = profile
        logger.info("ACP session %s: profile %s", session.record.session_id, profile)

    def _model_of(self, profile: str | None) -> dict[str, str]:
        """The request model id of ``profile``'s sessions (a vLLM group's LoRA id), if any."""
        if profile is not None and profile in self.models:
            return {"model_name": self.models[profile]}
        return {"model_name": self.model_name} if self.model_name else {}

    def _meta_profile(self, kwargs: dict[str, Any]) -> str | None:
        """``_meta {"punie/profile": NAME}`` of session/new: a profile served by this (group) server."""
        meta = kwargs.get("field_meta") or kwargs.get("_meta") or {}
        profile = meta.get("punie/profile") if isinstance(meta, dict) else None
        if profile is not None and profile not in self.models:
            known = ", ".join(sorted(self.models)) or "none"
            raise RequestError.invalid_params(
                {"message": f"_meta punie/profile {profile!r} is not served here (profiles: {known})"})
        return profile

    def _not_busy(self, session_id: str) -> None:
        """Refuse to replace a live session whose turn is running (its turn would be lost, uncancellable)."""
        live = self._sessions.get(session_id)
        if live is not None and live.turn_lock.locked():
            raise RequestError.invalid_request({"message": f"session {session_id} has a turn running"})

    def _session(self, session_id: str) -> _Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise RequestError.invalid_params({"message": f"unknown session {session_id!r}"}) from None

    # -- turns ---------------------------------------------------------------

    def _backends(self, session_id: str, session: _Session) -> tuple[Any, Any]:
        files = commands = None
        if self._client.read_text_file or self._client.write_text_file:
            files = ClientFs(self._conn, session_id, read=self._client.read_text_file,
                             write=self._client.write_text_file)
        if self._client.terminal:
            async def on_terminal(call_id: str, terminal_id: str) -> None:
                session.terminals[call_id] = terminal_id
                await self._send(session_id, update_tool_call(call_id, content=[tool_terminal_ref(terminal_id)]))

            commands = ClientTerminal(self._conn, session_id, on_terminal=on_terminal)
        return files, commands

    async def prompt(self, session_id: str, prompt: list[Any], **kwargs: Any) -> PromptResponse:
        """One turn per session at a time: a prompt sent while a turn runs waits for it (FIFO, at
        most :data:`MAX_WAITING`), then runs with the history that turn left. ``session/cancel``
        stops the running turn and every prompt waiting behind it."""
        session = self._session(session_id)
        if session.waiting >= MAX_WAITING:
            raise RequestError.invalid_request(
                {"message": f"session {session_id} already has {MAX_WAITING} prompts waiting for its turn"})
        generation = session.cancels
        session.waiting += 1
        try:
            await session.turn_lock.acquire()
        finally:
            session.waiting -= 1
        try:
            if session.cancels != generation:  # cancelled while it waited: it never starts
                return PromptResponse(stop_reason="cancelled")
            return await self._turn(session_id, session, prompt)
        finally:
            session.turn_lock.release()

    async def _turn(self, session_id: str, session: _Session, prompt: list[Any]) -> PromptResponse:
        text = _prompt_text(prompt)
        command = parse_command(text)
        if command is not None:
            return await self._slash(session_id, session, *command)
        hooks = ToolHooks(on_start=lambda cid, name, args: self._tool_started(session_id, session, cid, name, args),
                          on_end=lambda record: self._tool_ended(session_id, session, record))
        files, commands = self._backends(session_id, session)
        streamed: list[str] = []

        async def on_text(piece: str) -> None:
            streamed.append(piece)
            await self._send(session_id, update_agent_message_text(piece))

        async def on_thought(piece: str) -> None:
            await self._send(session_id, update_agent_thought_text(piece))

        async def turn() -> Any:
            if self.before_turn is not None:  # e.g. wake an unloaded model server, telling the client
                await self.before_turn(lambda message: self.status(session_id, message))
            return await run_turn(session.agent, text, history=session.history, hooks=hooks, files=files,
                                  commands=commands, on_text=on_text, on_thought=on_thought,
                                  toolsets=session.mcp.toolsets if session.mcp else None)

        task = asyncio.create_task(turn())
        session.task = task
        try:
            await asyncio.wait({task})
        finally:
            session.task = None
            await self._close_open_calls(session_id, session)
        if task.cancelled():
            return PromptResponse(stop_reason="cancelled")
        exc = task.exception()
        if isinstance(exc, AgentError):
            logger.error("%s", exc.render())
            await self._send(session_id, update_agent_message_text(error_line(exc)))
            from pydantic_ai.exceptions import UsageLimitExceeded

            stop = "max_turn_requests" if isinstance(exc.__cause__, UsageLimitExceeded) else "end_turn"
            return PromptResponse(stop_reason=stop)
        if exc is not None:
            logger.error("turn failed", exc_info=exc)
            raise RequestError.internal_error({"message": f"{type(exc).__name__}: {exc}"})
        result = task.result()
        session.record.messages = result.messages
        session.record.title = session.record.title or title_of(text)
        self._save(session)
        if result.answer and not streamed:
            await self._send(session_id, update_agent_message_text(result.answer))
        await self._usage(session_id, result.messages)
        return PromptResponse(stop_reason="end_turn")

    async def _slash(self, session_id: str, session: _Session, name: str, arg: str) -> PromptResponse:
        """Serve a slash command (punie.agent.acp_commands); never part of the conversation history."""
        task = asyncio.create_task(self._slash_reply(session, name, arg))
        session.task = task  # cancellable like a turn (an /eval can run for minutes)
        try:
            await asyncio.wait({task})
        finally:
            session.task = None
        if task.cancelled():
            return PromptResponse(stop_reason="cancelled")
        exc = task.exception()
        reply = f"punie: /{name} failed: {exc}" if exc is not None else task.result()
        if exc is not None:
            logger.error("/%s failed", name, exc_info=exc)
        await self._send(session_id, update_agent_message_text(reply))
        return PromptResponse(stop_reason="end_turn")

    async def _slash_reply(self, session: _Session, name: str, arg: str) -> str:
        profile = session.record.profile or self.profile
        if name == "help":
            return help_text()
        if name == "clear":
            session.record.messages = []
            self._save(session)
            return "Conversation cleared: the model starts from nothing on the next prompt."
        if name == "profile":
            if not arg:
                listed = "\n".join(f"{'* ' if p == profile else '  '}{p}" for p in self.profiles) or "  (none)"
                return f"Profiles on this server (* active):\n{listed}"
            if arg not in self.profiles:
                known = ", ".join(self.profiles) or "none"
                return f"No profile {arg!r} on this server (profiles: {known}); another adapter or model needs " \
                       f"`punie up {arg}`."
            self._switch_profile(session, arg)
            if options := self._config_options(session):
                await self._send(session.record.session_id,
                                 ConfigOptionUpdate(session_update="config_option_update", config_options=options))
            return f"Switched to profile {arg}."
        resolved = await asyncio.to_thread(load_resolved, profile, self.config)
        if name == "adapter":
            return await asyncio.to_thread(adapter_report, resolved)
        return await run_eval(profile, self.config, arg or None, session.record.cwd)  # /eval

    async def _usage(self, session_id: str, messages: list[Any]) -> None:
        """``usage_update``: the tokens in the model's context after this turn, of its window."""
        used = context_tokens(messages)
        if used is None:
            return
        if not self._window_known:
            self.context_window = await served_context_window(self.base_url)
            self._window_known = True
        if self.context_window is None:
            logger.debug("usage_update not sent: the model's context window is not known")
            return
        await self._send(session_id, UsageUpdate(session_update="usage_update", used=used, size=self.context_window))

    async def status(self, session_id: str, message: str) -> None:
        """Tell the client what the agent is waiting for (\"loading the model...\"), as a thought
        chunk: IDEs show it in the turn without it becoming part of the answer or the history."""
        await self._send(session_id, update_agent_thought_text(message.rstrip("\n") + "\n"))

    def _save(self, session: _Session) -> None:
        try:
            SessionStore(sessions_dir(session.record.cwd)).save(session.record)
        except OSError as exc:  # history is a convenience: a read-only project must not fail the turn
            logger.warning("session %s not saved: %s", session.record.session_id, exc)

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        session = self._sessions.get(session_id)
        if session is None:
            return
        session.cancels += 1  # the prompts waiting behind the running turn see it and never start
        if session.task and not session.task.done():
            logger.info("ACP session %s: turn cancelled", session_id)
            session.task.cancel()

    async def _send(self, session_id: str, update: Any) -> None:
        if self._conn is not None:
            await self._conn.session_update(session_id=session_id, update=update)

    async def _close_open_calls(self, session_id: str, session: _Session) -> None:
        """A final ``failed`` update for every call the turn left open (cancelled, or the turn failed)."""
        for call_id in list(session.open_calls):
            session.open_calls.pop(call_id, None)
            session.terminals.pop(call_id, None)
            with contextlib.suppress(Exception):
                await self._send(session_id, update_tool_call(
                    call_id, status="failed", content=[tool_content(text_block("cancelled"))]))

    # -- tool calls ----------------------------------------------------------

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
        session.open_calls[call_id] = name
        title, kind = describe_tool(name, args)
        await self._send(session_id, start_tool_call(
            call_id, title, kind=kind, status="pending", raw_input=args, locations=self._locations(session, args),
        ))
        policy = session.agent.policy
        if policy.decision(name) == "allow" or name in policy.always_allowed:
            await self._send(session_id, update_tool_call(call_id, status="in_progress"))
        # "ask": in_progress follows the client's allow (see _asker); "deny": straight to failed.

    async def _tool_ended(self, session_id: str, session: _Session, record: ToolCallRecord) -> None:
        if session.open_calls.pop(record.id, None) is None:
            return
        text = record.result if len(record.result) <= MAX_UPDATE_TEXT else record.result[:MAX_UPDATE_TEXT] + "\n[...]"
        content: list[Any] = [tool_content(text_block(text))]
        if terminal_id := session.terminals.pop(record.id, None):
            content.insert(0, tool_terminal_ref(terminal_id))
        await self._send(session_id, update_tool_call(
            record.id, status="completed" if record.status == "ok" else "failed",
            content=content, raw_output=record.result,
        ))
        if record.name == PLAN_TOOL and record.status == "ok" and (plan := acp_plan(record.args)) is not None:
            await self._send(session_id, plan)

    async def _diff(self, session: _Session, args: dict[str, Any]) -> list[Any] | None:
        try:
            real = session.agent.workspace.resolve(args["path"])
            if self._client.read_text_file:
                files = ClientFs(self._conn, session.record.session_id, read=True, write=False)
                old = await files.old_text(session.agent.workspace, args["path"])
            else:  # through the workspace's descriptors, never by name (no symlink, FIFO or mount crossing)
                old = await Disk().old_text(session.agent.workspace, args["path"])
            return [tool_diff_content(str(real), args.get("content", ""), old)]
        except Exception:
            return None

    def _asker(self, session_id: str) -> Any:
        async def ask(request: PermissionRequest) -> Answer:
            if self._conn is None:
                return Answer(False, reason="no client connected")
            session = self._sessions.get(session_id)
            content = None
            if request.tool == "write_file" and session is not None:
                content = await self._diff(session, request.args)
            title, kind = describe_tool(request.tool, request.args)
            # The call was announced (pending); the request names it and shows what it would do.
            tool_call = ToolCallUpdate(tool_call_id=request.tool_call_id, title=title, kind=kind,
                                       raw_input=request.args, content=content)
            response = await self._conn.request_permission(
                session_id=session_id, tool_call=tool_call, options=PERMISSION_OPTIONS
            )
            outcome = response.outcome
            if getattr(outcome, "outcome", None) != "selected":
                return Answer(False, reason="the request was cancelled")
            if outcome.option_id not in ("allow", "allow_always"):
                return Answer(False, reason="the user rejected it")
            await self._send(session_id, update_tool_call(request.tool_call_id, status="in_progress"))
            return Answer(True, always=outcome.option_id == "allow_always")

        return ask


async def serve_stdio_async(options: AgentOptions, base_url: str, **kwargs: Any) -> None:
    """Serve ACP on stdin/stdout until the client closes stdin.

    ``kwargs`` go to `PunieAcpAgent`: ``profile`` names the profile ``options`` come from,
    ``profiles`` the others a session may switch to (the ``profile`` config option);
    ``model_name`` / ``models`` the model ids on a shared (vLLM group) server.
    """
    from punie.agent.procs import adopt_orphans

    adopt_orphans()  # run_command's processes never outlive their reaper (see punie.agent.procs)
    transport = await stdio_transport()
    logger.info("punie agent: ACP on stdio, model server %s", base_url)
    agent = PunieAcpAgent(options, base_url, **kwargs)
    try:
        # session/resume is stable in the protocol's schema; the Python SDK still files it as unstable.
        await run_agent(agent, transport, use_unstable_protocol=True)
    finally:
        await agent.close()


def serve_stdio(options: AgentOptions, base_url: str, **kwargs: Any) -> None:
    """Blocking :func:`serve_stdio_async`."""
    asyncio.run(serve_stdio_async(options, base_url, **kwargs))
