"""How the ACP server describes things to the client: tool call titles and kinds, the permission
options, what the client said it can do, the prompt's text and the context's size.

Pure functions and values (no connection, no session): :mod:`punie.agent.acp_server` and
:mod:`punie.agent.acp_calls` use them, and so do session replays (:mod:`punie.agent.sessions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from acp.schema import PermissionOption

from punie.agent.mcp_servers import is_mcp_tool, split_name
from punie.agent.plan import PLAN_TOOL

#: Characters of a tool's result sent in its final update (the whole result is its raw output).
MAX_UPDATE_TEXT = 8_000

_KINDS = {"read_file": "read", "write_file": "edit", "list_files": "search", "search": "search",
          "run_command": "execute", PLAN_TOOL: "think"}

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


def context_tokens(messages: list[Any]) -> int | None:
    """Tokens in the model's context after the last answer: its request's input plus its output."""
    from pydantic_ai.messages import ModelResponse

    for message in reversed(messages):
        usage = getattr(message, "usage", None) if isinstance(message, ModelResponse) else None
        if usage is not None and (usage.input_tokens or usage.output_tokens):
            return int(usage.input_tokens or 0) + int(usage.output_tokens or 0)
    return None


def prompt_text(blocks: list[Any]) -> str:
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
