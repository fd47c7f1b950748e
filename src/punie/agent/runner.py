"""Build the Punie agent and run one turn against an OpenAI-compatible server.

The model is pydantic-ai's ``OpenAIChatModel`` named ``default_model``: that
is the only name (besides none) for which mlx_lm.server uses its
``--adapter-path``; any other name makes it silently serve the base model.

Failures of the turn become :class:`punie.errors.AgentError` with a message
that names the server URL: unreachable server, HTTP errors, a model that keeps
sending malformed tool calls (after a bounded number of retries), a turn that
needs more than ``agent.max_turns`` model requests.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from punie.agent.backends import CommandBackend, FileBackend
from punie.agent.local import DiskFiles, LocalCommands
from punie.agent.permissions import PermissionAsker, PermissionPolicy, deny_asker
from punie.agent.textclean import TagFilter, has_tool_call_text, parse_tool_call_text, scrub
from punie.agent.tools import TOOL_FUNCTIONS, ToolCallRecord, ToolHooks, TurnDeps, make_tools
from punie.agent.transient import ATTEMPTS, RetryTransport, retrying_http_client
from punie.agent.workspace import ToolFailure, Workspace, workspace_for
from punie.config.models import AgentOptions
from punie.errors import AgentError
from punie.net import SERVED_MODEL_NAME as _SERVED_MODEL_NAME
from punie.net import openai_base_url

logger = logging.getLogger(__name__)

#: mlx_lm.server applies its --adapter-path only to this model name (or none).
SERVED_MODEL_NAME = _SERVED_MODEL_NAME  # one home: punie.net
#: How often the model may send a malformed call to one tool before the turn fails.
TOOL_RETRIES = 2

DEFAULT_INSTRUCTIONS = (
    "You are Punie, a coding agent working in the user's project. Use the tools to look at files "
    "before answering questions about them, keep changes minimal, and answer concisely."
)


@dataclass
class PunieAgent:
    """A configured agent: options, server URL, workspace and the pydantic-ai agent."""

    options: AgentOptions
    base_url: str
    workspace: Workspace
    policy: PermissionPolicy
    agent: Any  # pydantic_ai.Agent[TurnDeps, str]
    retries: int = TOOL_RETRIES


@dataclass(frozen=True)
class TurnResult:
    """What one turn produced: the answer and every tool call made (in order)."""

    answer: str
    tool_calls: list[ToolCallRecord]
    messages: list[Any] = field(repr=False, default_factory=list)
    requests: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"answer": self.answer, "tool_calls": [c.to_json() for c in self.tool_calls],
                "requests": self.requests}


def build_agent(
    options: AgentOptions,
    base_url: str,
    *,
    permission_asker: PermissionAsker | None = None,
    base_dir: str | Path | None = None,
    timeout: float = 600.0,
    retries: int = TOOL_RETRIES,
    model_name: str = SERVED_MODEL_NAME,
    http_client: Any = None,
) -> PunieAgent:
    """Build the agent for ``options`` talking to the server at ``base_url`` (OpenAI base URL).

    ``options.workspace`` is resolved against ``base_dir`` (default: the
    current directory). ``permission_asker`` answers the ``ask`` permissions
    (default: refuse, as nobody can be asked). ``model_name`` is the request's ``model``
    (a vLLM server picks the profile's LoRA by it; see punie.config.served). ``http_client``
    (an httpx.AsyncClient) replaces the OpenAI client's own (punie.agent.warm captures requests).
    """
    import pydantic_ai
    from openai import AsyncOpenAI
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.profiles.openai import OpenAIModelProfile
    from pydantic_ai.providers.openai import OpenAIProvider

    # The agent owns its output (stdout may be the protocol): no first-run banner from the library.
    pydantic_ai.BANNER_ENABLED = False
    base_url = openai_base_url(base_url)
    try:
        workspace = workspace_for(options, base_dir)
    except ToolFailure as exc:
        raise AgentError(str(exc), where="agent.workspace") from None
    # No SDK retries (they would repeat requests the server got: timeouts, 5xx); connection failures
    # before any answer (a full listen backlog under many sessions) are retried, bounded (punie.agent.transient).
    client = AsyncOpenAI(base_url=base_url, api_key="local", max_retries=0, timeout=timeout,
                         http_client=http_client if http_client is not None else _http_client(timeout))
    # mlx_lm ignores "strict"; a generic profile keeps the request plain chat completions.
    # max_tokens (not max_completion_tokens): the field every OpenAI-compatible server reads.
    profile = OpenAIModelProfile(openai_supports_strict_tool_definition=False,
                                 openai_chat_supports_max_completion_tokens=False)
    model = OpenAIChatModel(model_name, provider=OpenAIProvider(openai_client=client), profile=profile)
    settings: dict[str, Any] = {}
    if options.temperature is not None:
        settings["temperature"] = options.temperature
    if options.max_tokens is not None:
        settings["max_tokens"] = options.max_tokens
    agent = Agent(
        model,
        deps_type=TurnDeps,
        output_type=str,
        instructions=options.instructions or DEFAULT_INSTRUCTIONS,
        model_settings=settings or None,
        retries=retries,
        tools=_tools(options.tools),
        name=options.name,
    )
    agent.output_validator(_answer_validator(tuple(options.tools)))
    policy = PermissionPolicy(options.permissions, permission_asker or deny_asker)
    return PunieAgent(options=options, base_url=base_url, workspace=workspace, policy=policy, agent=agent,
                      retries=retries)


def _http_client(timeout: float) -> Any:
    """The model client's HTTP client: bounded retries of connection failures (punie.agent.transient),
    and under `punie up` with idle unload a wake of the server before each request (punie.agent.wake)."""
    from punie.agent.wake import current_waker, waking_client

    waker = current_waker()
    if waker is None:
        return retrying_http_client(timeout)
    return waking_client(waker, inner=RetryTransport(), timeout=timeout)


def _tools(names: Sequence[str]) -> list[Any]:
    """The enabled tools: the built-in ones, and the plan tool (punie.agent.plan) when asked for."""
    tools: list[Any] = make_tools([name for name in names if name in TOOL_FUNCTIONS])
    if "update_plan" in names:
        from punie.agent.plan import plan_tool

        tools.append(plan_tool())
    return tools


def _answer_validator(enabled: tuple[str, ...]) -> Any:
    """The final answer without template markup; a tool call written as text is run (or asked again).

    A ``<tool_call>`` the server did not parse is run as the tool it names
    (when that tool is enabled and the JSON reads), and the model is given the
    result to go on; an unreadable one is sent back with what is wrong. Both go
    through pydantic-ai's output retries, so they are bounded by the agent's
    retry budget; on the last retry the cleaned text is the answer.
    """
    from dataclasses import replace
    from uuid import uuid4

    from pydantic_ai import ModelRetry, RunContext

    async def validate(ctx: RunContext[TurnDeps], output: str) -> str:
        if ctx.partial_output or not has_tool_call_text(output) or ctx.retry >= ctx.max_retries:
            return scrub(output)
        calls = parse_tool_call_text(output)
        unknown = [name for name, _ in calls or () if name not in enabled or name not in TOOL_FUNCTIONS]
        if calls is None or unknown or not calls:
            raise ModelRetry(
                "Your answer contains a <tool_call> that could not be used"
                + (f" (unknown tool {unknown[0]!r}; the tools are {', '.join(enabled)})" if unknown else
                   " (it must be a JSON object with \"name\" and \"arguments\")")
                + ". Call the tool with the tool-calling format, or answer in plain text."
            )
        results = []
        for name, args in calls:
            call_ctx = replace(ctx, tool_call_id=f"text-{uuid4().hex[:12]}", tool_name=name)
            try:
                result = await TOOL_FUNCTIONS[name](call_ctx, **args)
            except TypeError as exc:
                raise ModelRetry(f"Your <tool_call> to {name} has wrong arguments: {exc}. "
                                 "Call the tool again with the tool-calling format.") from None
            results.append(f"{name}({json.dumps(args)[:200]}) returned:\n{result}")
        raise ModelRetry("You wrote your tool call as text; it was run for you.\n\n" + "\n\n".join(results)
                         + "\n\nContinue from these results (answer the user, or call another tool).")

    return validate


def _parse_args(args: Any) -> dict[str, Any] | str:
    if isinstance(args, dict):
        return args
    text = args if isinstance(args, str) else str(args)
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    return parsed if isinstance(parsed, dict) else text


def _feedback(part: Any) -> str:
    """The text the model was shown for a retried call."""
    for name in ("model_response_str", "model_response"):
        if callable(getattr(part, name, None)):
            try:
                return str(getattr(part, name)())
            except Exception:  # older/newer part kinds: fall back to the raw content
                break
    return str(getattr(part, "content", ""))


def _ordered_records(messages: Sequence[Any], records: list[ToolCallRecord]) -> list[ToolCallRecord]:
    """Every tool call of the turn in the order the model made it, malformed ones included.

    Calls that ran are the tools' own records; calls pydantic-ai answered with
    a retry (bad JSON arguments, unknown tool, wrong fields) never reached a
    tool and are rebuilt from the history with status ``invalid``.
    """
    from pydantic_ai.messages import ModelRequest, ModelResponse, ToolCallPart

    pending: dict[str, list[ToolCallRecord]] = {}
    for record in records:
        pending.setdefault(record.id, []).append(record)
    ordered: list[ToolCallRecord] = []
    calls: dict[str, ToolCallPart] = {}
    for message in messages:
        if isinstance(message, ModelResponse):
            calls = {p.tool_call_id: p for p in message.parts if isinstance(p, ToolCallPart)}
        elif isinstance(message, ModelRequest):
            for part in message.parts:
                call = calls.pop(getattr(part, "tool_call_id", None) or "", None)
                if call is None:
                    continue
                retried = getattr(part, "outcome", None) == "retried" or getattr(part, "part_kind", "") in (
                    "retry-prompt", "retry-feedback")
                if retried:
                    reason = _feedback(part)
                    ordered.append(ToolCallRecord(id=call.tool_call_id, name=call.tool_name,
                                                  args=_parse_args(call.args), status="invalid", result=reason))
                elif pending.get(call.tool_call_id):
                    ordered.append(pending[call.tool_call_id].pop(0))
    ordered.extend(r for queue in pending.values() for r in queue)  # e.g. a run cut short
    return ordered


def _short(text: object, lines: int = 6) -> str:
    """An error text without pydantic's documentation links, at most a few lines."""
    kept = [line for line in str(text).splitlines() if "errors.pydantic.dev" not in line]
    return "\n".join(kept[:lines]) + ("\n..." if len(kept) > lines else "")


def _agent_error(exc: BaseException, agent: PunieAgent) -> AgentError:
    from pydantic_ai.exceptions import (
        ModelAPIError,
        ModelConnectionError,
        ModelHTTPError,
        UnexpectedModelBehavior,
        UsageLimitExceeded,
    )

    url = agent.base_url
    if isinstance(exc, ModelConnectionError):
        return AgentError(
            f"cannot reach the model server at {url} (tried {ATTEMPTS} times): {exc}",
            hint="is mlx_lm.server running there? start one with `punie up PROFILE` "
            "or `punie serve --model M --port P`",
        )
    if isinstance(exc, ModelHTTPError):
        body = exc.body if isinstance(exc.body, str) else json.dumps(exc.body, default=str)
        hint = None
        if "generation thread died" in (body or ""):
            hint = "mlx_lm.server could not load the model or adapter: see its log (run `punie check`)"
        return AgentError(f"the model server at {url} answered HTTP {exc.status_code}: {body}", hint=hint)
    if isinstance(exc, UsageLimitExceeded):
        return AgentError(
            f"the turn needed more than {agent.options.max_turns} model requests to {url} and was stopped: {exc}",
            hint="raise agent.max_turns in the profile, or ask for a smaller step",
        )
    if isinstance(exc, UnexpectedModelBehavior):
        if "exceeded max retries" in str(exc):
            return AgentError(
                f"the model at {url} kept sending malformed tool calls "
                f"(gave up after {agent.retries} retries): {exc.message}"
            )
        return AgentError(f"unexpected answer from the model at {url}: {_short(exc.message)}")
    if isinstance(exc, ModelAPIError):
        return AgentError(f"the model server at {url} failed: {_short(exc)}")
    return AgentError(f"the turn failed: {type(exc).__name__}: {_short(exc)}")


async def run_turn(
    agent: PunieAgent,
    prompt: str,
    *,
    history: Sequence[Any] | None = None,
    hooks: ToolHooks | None = None,
    workspace: Workspace | None = None,
    policy: PermissionPolicy | None = None,
    files: FileBackend | None = None,
    commands: CommandBackend | None = None,
    on_text: Callable[[str], Awaitable[None]] | None = None,
    on_thought: Callable[[str], Awaitable[None]] | None = None,
    on_answered: Callable[[], Awaitable[None]] | None = None,
    on_status: Callable[[str], Awaitable[None]] | None = None,
    toolsets: Sequence[Any] | None = None,
) -> TurnResult:
    """Run one user turn (model requests and tool calls until the model answers).

    ``history`` is the ``messages`` of earlier turns' results (a conversation);
    ``workspace`` and ``policy`` override the agent's (an ACP session has its own).
    With ``on_text`` the model's answers are streamed and every piece of text
    is handed to it as it arrives (the ACP server forwards them to the IDE);
    ``on_thought`` gets the model's thinking (``<think>`` blocks) the same way.
    ``on_answered`` is called once the streamed answer is whole (an end-of-turn token went by, or a
    response of text without tool calls ended): what remains of the turn is bookkeeping.
    ``on_status`` hears what the user should know while waiting, e.g. that the model is being loaded
    again after an idle unload (default: ``on_thought``, which the ACP server sends to the IDE).
    ``hooks.on_invalid`` hears of calls that never reached a tool, in the model's order.
    ``files``/``commands`` are the backends of :mod:`punie.agent.backends`
    (default: the disk and local processes). ``toolsets`` are more tools for this turn
    (the client's MCP servers: :mod:`punie.agent.mcp_servers`).
    """
    from pydantic_ai.exceptions import AgentRunError
    from pydantic_ai.usage import UsageLimits

    from punie.agent.wake import status_callback

    hooks = hooks or ToolHooks()
    deps = TurnDeps(workspace=workspace or agent.workspace, policy=policy or agent.policy, hooks=hooks,
                    files=files or DiskFiles(), commands=commands or LocalCommands())
    streamed = on_text or on_thought or hooks.on_invalid or on_answered
    handler = _event_handler(on_text, on_thought, hooks.on_invalid, on_answered) if streamed else None
    from punie.agent.warm import settled

    await settled()  # the server's prompt cache holds our prefix once the warm-up is done (agent.warm)
    logger.info("turn against %s (workspace %s)", agent.base_url, deps.workspace.root)
    status_callback.set(on_status or on_thought)  # this task's (and its children's) model requests
    try:
        result = await agent.agent.run(
            prompt,
            deps=deps,
            message_history=list(history) if history else None,
            usage_limits=UsageLimits(request_limit=agent.options.max_turns),
            event_stream_handler=handler,
            toolsets=list(toolsets) if toolsets else None,
        )
    except AgentRunError as exc:
        raise _agent_error(exc, agent) from exc
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # An answer the OpenAI client cannot make sense of (empty body, not chat completions).
        logger.debug("turn failed", exc_info=True)
        raise AgentError(
            f"the server at {agent.base_url} did not answer like an OpenAI chat completions server: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    messages = result.all_messages()
    new = result.new_messages()
    return TurnResult(
        answer=str(result.output),
        tool_calls=_ordered_records(new, deps.records),
        messages=messages,
        requests=_requests(result),
    )


def _event_handler(on_text: Callable[[str], Awaitable[None]] | None,
                   on_thought: Callable[[str], Awaitable[None]] | None = None,
                   on_invalid: Callable[[ToolCallRecord], Awaitable[None]] | None = None,
                   on_answered: Callable[[], Awaitable[None]] | None = None) -> Any:
    """A pydantic-ai event stream handler handing text (and thinking) deltas to the callbacks.

    Text goes through a :class:`TagFilter` per text part, so template markup
    (``<|im_end|>``, ``<tool_response>``, a ``<tool_call>`` written as text)
    never reaches the user, even when a tag is split across two deltas.
    A tool call whose arguments failed validation (or that names no tool) is
    handed to ``on_invalid`` when its retry feedback is known: it never reaches
    a tool, so the tool hooks do not hear of it.
    """
    from pydantic_ai.messages import (
        FunctionToolCallEvent,
        FunctionToolResultEvent,
        PartDeltaEvent,
        PartEndEvent,
        PartStartEvent,
        TextPart,
        TextPartDelta,
        ThinkingPart,
        ThinkingPartDelta,
        ToolCallPart,
    )

    async def handler(ctx: Any, events: Any) -> None:
        filters: dict[int, TagFilter] = {}
        invalid: dict[str, Any] = {}  # tool_call_id -> the call, until its feedback arrives
        texts = calls = 0
        answered = False

        async def answer_whole() -> None:
            nonlocal answered
            if not answered and on_answered:
                answered = True
                await on_answered()

        async def text(index: int, piece: str, end: bool = False) -> None:
            nonlocal texts
            f = filters.setdefault(index, TagFilter())
            shown = f.feed(piece) + (f.flush() if end else "")
            if end:
                filters.pop(index, None)
            texts += bool(shown)
            if shown and on_text:
                await on_text(shown)
            if f.ended and texts and not calls:
                await answer_whole()

        async for event in events:
            piece = part = None
            if isinstance(event, PartStartEvent):
                part = event.part
                piece = getattr(part, "content", None)
                if isinstance(part, TextPart):
                    filters.pop(event.index, None)
                calls += isinstance(part, ToolCallPart)
            elif isinstance(event, PartDeltaEvent):
                part = event.delta
                piece = getattr(part, "content_delta", None)
            elif isinstance(event, PartEndEvent) and isinstance(event.part, TextPart):
                await text(event.index, "", end=True)
                continue
            elif isinstance(event, FunctionToolCallEvent):
                if event.args_valid is False and on_invalid:
                    invalid[event.part.tool_call_id] = event.part
                continue
            elif isinstance(event, FunctionToolResultEvent):
                call = invalid.pop(event.part.tool_call_id, None)
                if call is not None and on_invalid:
                    record = ToolCallRecord(id=call.tool_call_id, name=call.tool_name, args=_parse_args(call.args),
                                            status="invalid", result=_feedback(event.part))
                    try:
                        await on_invalid(record)
                    except Exception:  # a display callback must not fail the turn
                        logger.exception("on_invalid hook failed")
                continue
            if not piece or not isinstance(piece, str):
                continue
            if isinstance(part, (TextPart, TextPartDelta)):
                await text(event.index, piece)
            elif isinstance(part, (ThinkingPart, ThinkingPartDelta)) and on_thought:
                await on_thought(piece)
        for index in list(filters):
            await text(index, "", end=True)
        if texts and not calls:  # a response of text alone: the answer
            await answer_whole()

    return handler


def _requests(result: Any) -> int:
    usage = result.usage
    if inspect.ismethod(usage):  # a method in older pydantic-ai releases
        usage = usage()
    return int(getattr(usage, "requests", 0) or 0)


def run_turn_sync(agent: PunieAgent, prompt: str, **kwargs: Any) -> TurnResult:
    """:func:`run_turn` for callers without an event loop (the terminal CLI)."""
    return anyio.run(lambda: run_turn(agent, prompt, **kwargs))
