"""The Agent Client Protocol side of Punie: what PyCharm and Zed talk to over stdio.

:class:`PunieAcpAgent` implements the ``acp.Agent`` interface of the
agent-client-protocol package, as the protocol intends:

* file tools go through the client's ``fs/read_text_file`` /
  ``fs/write_text_file`` and run_command through ``terminal/*`` when the
  client advertised them in ``initialize`` (else the disk and local
  processes), chosen once per session (:func:`punie.agent.acp_session.client_backends`);
  the workspace path rules are applied first either way (:mod:`punie.agent.acp_backends`);
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

import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
from acp import PROTOCOL_VERSION, RequestError, run_agent
from acp.helpers import update_agent_message_text, update_agent_thought_text, update_available_commands
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
    PromptCapabilities,
    PromptResponse,
    ResumeSessionResponse,
    SessionCapabilities,
    SessionInfo,
    SessionListCapabilities,
    SessionResumeCapabilities,
    SetSessionConfigOptionResponse,
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
from punie.agent.acp_describe import ClientFeatures, context_tokens, describe_tool, prompt_text
from punie.agent.acp_profiles import ServedProfiles
from punie.agent.acp_session import (
    Send,
    Session,
    ask_permission,
    call_ended,
    call_started,
    client_backends,
    close_open_calls,
)
from punie.agent.acp_stdio import stdio_transport
from punie.agent.mcp_servers import connect
from punie.agent.permissions import Answer, PermissionAsker, PermissionRequest
from punie.agent.runner import PunieAgent, TurnResult, build_agent, run_turn
from punie.agent.sessions import SessionRecord, SessionStore, replay_updates, sessions_dir, title_of
from punie.agent.tools import ToolHooks
from punie.config.models import AgentOptions
from punie.errors import AgentError, error_line

logger = logging.getLogger(__name__)

#: Sends the client one status line of a session (see PunieAcpAgent.status).
StatusSender = Callable[[str], Awaitable[None]]

#: Prompts that may wait behind a session's running turn; one more is refused.
MAX_WAITING = 8

__all__ = ["MAX_WAITING", "PunieAcpAgent", "context_tokens", "describe_tool", "serve_stdio", "serve_stdio_async"]


class PunieAcpAgent:
    """Punie as an ``acp.Agent``: sessions, prompts, tool call updates, permissions, history."""

    def __init__(self, options: AgentOptions, base_url: str, *, profile: str | None = None,
                 profiles: dict[str, AgentOptions] | None = None, model_name: str | None = None,
                 models: dict[str, str] | None = None,
                 before_turn: Callable[[StatusSender], Awaitable[None]] | None = None,
                 config: str | None = None, context_window: int | None = None,
                 tasks: anyio.abc.TaskGroup | None = None):
        self.options = options
        # Where work that outlives a request runs (announcing a session's commands after its answer).
        self._tasks = tasks
        # punie.toml the profiles come from (slash commands read the profile's adapter, run its eval).
        self.config = config
        # Tokens the model's context holds (usage_update's size); None: asked of the server once.
        self.context_window = context_window
        self._window_known = context_window is not None
        # Awaited before each turn with a function that sends the client a status line: the place to
        # wake a model server that was unloaded while idle ("loading the model...").
        self.before_turn = before_turn
        self.base_url = base_url
        # A session picks its profile with _meta {"punie/profile": NAME} in session/new (a vLLM
        # group's), switches with the profile config option or /profile, else gets ``profile``.
        self.served = ServedProfiles(options, profile, profiles or {}, model_name, models or {})
        self._conn: Any = None
        self._client = ClientFeatures()
        self._sessions: dict[str, Session] = {}

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
        try:
            return build_agent(self.served.options_of(profile), self.base_url, base_dir=cwd,
                               permission_asker=self._asker(session_id), **self.served.model_of(profile))
        except AgentError as exc:
            raise RequestError.invalid_params({"message": exc.render()}) from None

    def _config_options(self, session: Session) -> list[Any] | None:
        return self.served.config_options(session.record.profile)

    async def new_session(self, cwd: str, mcp_servers: Any = None, **kwargs: Any) -> NewSessionResponse:
        session_id = uuid.uuid4().hex
        profile = self.served.meta_profile(kwargs) or self.served.current
        agent = self._build(session_id, cwd, profile)
        record = SessionRecord(session_id=session_id, cwd=cwd, profile=profile)
        session = await self._open(self._session_of(record, agent), mcp_servers)
        logger.info("ACP session %s in %s", session_id, agent.workspace.root)
        return NewSessionResponse(session_id=session_id, config_options=self._config_options(session))

    async def _open(self, session: Session, mcp_servers: Any) -> Session:
        """Make ``session`` the live one of its id: the client's MCP servers connected (a session it
        replaces closes its own), the slash commands advertised once the client has the answer."""
        session_id = session.record.session_id
        session.mcp = await connect(mcp_servers, session.record.cwd)
        old = self._sessions.get(session_id)
        self._sessions[session_id] = session
        if old is not None and old is not session and old.mcp is not None:
            await old.mcp.close()

        async def announce() -> None:
            await anyio.sleep(0)  # after the session/new (load, resume) answer is on its way
            await self._send(session_id, update_available_commands(available_commands()))
            for failure in session.mcp.failures if session.mcp else []:
                await self.status(session_id, failure)

        if self._tasks is not None:
            self._tasks.start_soon(announce)
        return session

    def _session_of(self, record: SessionRecord, agent: PunieAgent) -> Session:
        """A live session of ``record``, its tools' backends chosen from what the client advertised."""
        session_id = record.session_id
        terminals: dict[str, str] = {}
        files, commands = client_backends(self._conn, self._client, session_id, self._sender(session_id), terminals)
        return Session(record=record, agent=agent, files=files, commands=commands, terminals=terminals)

    def _sender(self, session_id: str) -> Send:
        async def send(update: Any) -> None:
            await self._send(session_id, update)
        return send

    async def close(self) -> None:
        """Disconnect every session's MCP servers (the client has gone)."""
        for session in list(self._sessions.values()):
            if session.mcp is not None:
                await session.mcp.close()

    async def load_session(self, cwd: str, session_id: str, mcp_servers: Any = None, **kwargs: Any
                           ) -> LoadSessionResponse:
        self._not_busy(session_id)
        record = await self._stored(cwd, session_id)
        profile = record.profile = self.served.stored(record.profile)
        record.cwd = cwd
        agent = self._build(session_id, cwd, profile)
        for update in replay_updates(record.messages, describe_tool):
            await self._send(session_id, update)
        session = await self._open(self._session_of(record, agent), mcp_servers)
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
            record.profile = self.served.stored(record.profile)
            record.cwd = cwd
            agent = self._build(session_id, cwd, record.profile)
        session = await self._open(self._session_of(record, agent), mcp_servers)
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
        profile = self.served.check_option(config_id, value)
        if session.turn_lock.locked():
            raise RequestError.invalid_params({"message": "cannot switch profile during a turn"})
        self._switch_profile(session, profile)
        return SetSessionConfigOptionResponse(config_options=self._config_options(session) or [])

    def _switch_profile(self, session: Session, profile: str) -> None:
        session.agent = self._build(session.record.session_id, session.record.cwd, profile)
        session.record.profile = profile
        logger.info("ACP session %s: profile %s", session.record.session_id, profile)

    def _not_busy(self, session_id: str) -> None:
        """Refuse to replace a live session whose turn is running (its turn would be lost, uncancellable)."""
        live = self._sessions.get(session_id)
        if live is not None and live.turn_lock.locked():
            raise RequestError.invalid_request({"message": f"session {session_id} has a turn running"})

    def _session(self, session_id: str) -> Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise RequestError.invalid_params({"message": f"unknown session {session_id!r}"}) from None

    # -- turns ---------------------------------------------------------------

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

    async def _turn(self, session_id: str, session: Session, prompt: list[Any]) -> PromptResponse:
        text = prompt_text(prompt)
        command = parse_command(text)
        if command is not None:
            return await self._slash(session_id, session, *command)
        send = self._sender(session_id)
        hooks = ToolHooks(on_start=lambda cid, name, args: call_started(send, session, cid, name, args),
                          on_end=lambda record: call_ended(send, session, record))
        streamed: list[str] = []

        async def on_text(piece: str) -> None:
            streamed.append(piece)
            await send(update_agent_message_text(piece))

        async def on_thought(piece: str) -> None:
            await send(update_agent_thought_text(piece))

        async def turn() -> TurnResult:
            if self.before_turn is not None:  # e.g. wake an unloaded model server, telling the client
                await self.before_turn(lambda message: self.status(session_id, message))
            return await run_turn(session.agent, text, history=session.history, hooks=hooks, files=session.files,
                                  commands=session.commands, on_text=on_text, on_thought=on_thought,
                                  toolsets=session.mcp.toolsets if session.mcp else None)

        try:
            result = await self._cancellable(session, turn)
        except AgentError as exc:
            logger.error("%s", exc.render())
            await send(update_agent_message_text(error_line(exc)))
            from pydantic_ai.exceptions import UsageLimitExceeded

            stop = "max_turn_requests" if isinstance(exc.__cause__, UsageLimitExceeded) else "end_turn"
            return PromptResponse(stop_reason=stop)
        except Exception as exc:
            logger.error("turn failed", exc_info=exc)
            raise RequestError.internal_error({"message": f"{type(exc).__name__}: {exc}"}) from None
        finally:
            await close_open_calls(send, session)
        if result is None:
            return PromptResponse(stop_reason="cancelled")
        session.record.messages = result.messages
        session.record.title = session.record.title or title_of(text)
        self._save(session)
        if result.answer and not streamed:
            await send(update_agent_message_text(result.answer))
        await self._usage(session_id, result.messages)
        return PromptResponse(stop_reason="end_turn")

    @staticmethod
    async def _cancellable(session: Session, work: Callable[[], Awaitable[Any]]) -> Any:
        """``work()`` in a cancel scope that ``session/cancel`` cancels; None when it was."""
        with anyio.CancelScope() as scope:
            session.scope = scope
            try:
                return await work()
            finally:
                session.scope = None
        return None

    async def _slash(self, session_id: str, session: Session, name: str, arg: str) -> PromptResponse:
        """Serve a slash command (punie.agent.acp_commands); never part of the conversation history."""
        try:  # cancellable like a turn (an /eval can run for minutes)
            reply = await self._cancellable(session, lambda: self._slash_reply(session, name, arg))
        except Exception as exc:
            logger.error("/%s failed", name, exc_info=exc)
            reply = f"punie: /{name} failed: {exc}"
        if reply is None:
            return PromptResponse(stop_reason="cancelled")
        await self._send(session_id, update_agent_message_text(reply))
        return PromptResponse(stop_reason="end_turn")

    async def _slash_reply(self, session: Session, name: str, arg: str) -> str:
        profile = session.record.profile or self.served.current
        if name == "help":
            return help_text()
        if name == "clear":
            session.record.messages = []
            self._save(session)
            return "Conversation cleared: the model starts from nothing on the next prompt."
        if name == "profile":
            if not arg:
                return self.served.listing(profile)
            if arg not in self.served.profiles:
                return self.served.not_served(arg)
            self._switch_profile(session, arg)
            if options := self._config_options(session):
                await self._send(session.record.session_id,
                                 ConfigOptionUpdate(session_update="config_option_update", config_options=options))
            return f"Switched to profile {arg}."
        resolved = await anyio.to_thread.run_sync(load_resolved, profile, self.config)
        if name == "adapter":
            return await anyio.to_thread.run_sync(adapter_report, resolved)
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

    def _save(self, session: Session) -> None:
        try:
            SessionStore(sessions_dir(session.record.cwd)).save(session.record)
        except OSError as exc:  # history is a convenience: a read-only project must not fail the turn
            logger.warning("session %s not saved: %s", session.record.session_id, exc)

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        session = self._sessions.get(session_id)
        if session is None:
            return
        session.cancels += 1  # the prompts waiting behind the running turn see it and never start
        if session.scope is not None:
            logger.info("ACP session %s: turn cancelled", session_id)
            session.scope.cancel()

    async def _send(self, session_id: str, update: Any) -> None:
        if self._conn is not None:
            await self._conn.session_update(session_id=session_id, update=update)

    def _asker(self, session_id: str) -> PermissionAsker:
        async def ask(request: PermissionRequest) -> Answer:
            # The session as it is when the question comes (a load or resume may have replaced it).
            return await ask_permission(self._conn, session_id, self._sender(session_id),
                                        self._sessions.get(session_id), request)

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
    async with anyio.create_task_group() as tasks:
        agent = PunieAcpAgent(options, base_url, tasks=tasks, **kwargs)
        try:
            # session/resume is stable in the protocol's schema; the Python SDK still files it as unstable.
            await run_agent(agent, transport, use_unstable_protocol=True)
        finally:
            tasks.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await agent.close()


def serve_stdio(options: AgentOptions, base_url: str, **kwargs: Any) -> None:
    """Blocking :func:`serve_stdio_async`."""
    anyio.run(lambda: serve_stdio_async(options, base_url, **kwargs))
