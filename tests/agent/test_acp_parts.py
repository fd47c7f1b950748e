"""The pure parts of ACP parity: slash command parsing, the context window, MCP tool names and permissions,
plan conversion, usage counting."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from punie.agent.acp_commands import COMMANDS, context_window_of_model, parse_command
from punie.agent.acp_describe import context_tokens
from punie.agent.mcp_servers import is_mcp_tool, split_name, tool_prefix
from punie.agent.permissions import PermissionPolicy, PermissionRequest, permission_key
from punie.agent.plan import acp_plan
from punie.config.models import Permissions
from punie.errors import PermissionDenied


def test_slash_commands_are_recognised_only_as_the_whole_first_word() -> None:
    assert parse_command("/profile coder-strict") == ("profile", "coder-strict")
    assert parse_command("  /clear  ") == ("clear", "")
    assert parse_command("/eval  tool-calling ") == ("eval", "tool-calling")
    assert parse_command("/profiles") is None  # not a command: goes to the model
    assert parse_command("please /clear") is None
    assert parse_command("/usr/bin/env is a path") is None


@given(st.text())
def test_parse_command_never_fails_and_names_only_known_commands(text: str) -> None:
    parsed = parse_command(text)
    assert parsed is None or parsed[0] in {c.name for c in COMMANDS}


@pytest.mark.parametrize(("config", "window"), [
    ({"max_position_embeddings": 8192}, 8192),
    ({"max_seq_len": 2048}, 2048),
    ({"text_config": {"max_position_embeddings": 32768}}, 32768),
    ({"max_position_embeddings": 0}, None),
    ({"max_position_embeddings": True}, None),
    ({"max_position_embeddings": 2.5}, None),
    ({"max_position_embeddings": "4096"}, None),
    ([], None),
])
def test_context_window_from_config_json(tmp_path: Path, config: object, window: int | None) -> None:
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert context_window_of_model(tmp_path) == window


def test_context_window_of_unreadable_configs(tmp_path: Path) -> None:
    assert context_window_of_model(tmp_path) is None  # no config.json
    (tmp_path / "config.json").write_text("[" * 100_000)  # deeper than the JSON parser goes
    assert context_window_of_model(tmp_path) is None
    (tmp_path / "config.json").unlink()
    (tmp_path / "config.json").mkdir()
    assert context_window_of_model(tmp_path) is None


def test_mcp_tool_names() -> None:
    prefix = tool_prefix("my server/v2!")
    name = prefix + "_shout"
    assert name == "mcp__my_server_v2__shout" and is_mcp_tool(name)
    assert split_name(name) == ("my_server_v2", "shout")
    assert not is_mcp_tool("run_command")
    assert len(tool_prefix("x" * 200)) <= 30


def test_mcp_tools_fall_under_permissions_mcp_and_always_is_per_tool() -> None:
    asked: list[str] = []

    async def ask(request: PermissionRequest):  # type: ignore[no-untyped-def]
        from punie.agent.permissions import Answer

        asked.append(request.tool)
        return Answer(True, always=True)

    assert permission_key("mcp__web__shout") == "mcp" and permission_key("write_file") == "write_file"
    policy = PermissionPolicy(Permissions(mcp="ask"), ask)
    assert policy.decision("mcp__web__shout") == "ask"

    async def run() -> None:
        for tool in ("mcp__web__shout", "mcp__web__shout", "mcp__web__other"):
            await policy.check(PermissionRequest(tool, "id", {}, "call"))

    asyncio.run(run())
    assert asked == ["mcp__web__shout", "mcp__web__other"]  # the first "always" covers that tool only
    denying = PermissionPolicy(Permissions(mcp="deny"))
    with pytest.raises(PermissionDenied, match=r'agent\.permissions\.mcp = "deny"'):
        asyncio.run(denying.check(PermissionRequest("mcp__web__shout", "id", {}, "call")))


def test_plan_updates_from_tool_arguments() -> None:
    plan = acp_plan({"steps": [{"content": "a", "status": "completed"}, {"content": "b", "priority": "high"},
                               {"status": "pending"}, "junk"]})
    assert plan is not None and plan.session_update == "plan"
    assert [(e.content, e.status, e.priority) for e in plan.entries] == [("a", "completed", "medium"),
                                                                         ("b", "pending", "high")]
    assert acp_plan({"steps": []}) is None
    assert acp_plan("not a dict") is None


def test_context_tokens_are_the_last_answers_request_and_output() -> None:
    from pydantic_ai.messages import ModelRequest, ModelResponse, TextPart, UserPromptPart
    from pydantic_ai.usage import RequestUsage

    messages = [ModelRequest(parts=[UserPromptPart("hi")]),
                ModelResponse(parts=[TextPart("a")], usage=RequestUsage(input_tokens=100, output_tokens=7)),
                ModelRequest(parts=[UserPromptPart("more")]),
                ModelResponse(parts=[TextPart("b")], usage=RequestUsage(input_tokens=130, output_tokens=9))]
    assert context_tokens(messages) == 139
    assert context_tokens(messages[:1]) is None
