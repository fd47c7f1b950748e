"""Full agent turns against a scripted OpenAI-compatible HTTP server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from punie.agent.permissions import Answer, PermissionRequest
from punie.agent.runner import SERVED_MODEL_NAME, TOOL_RETRIES, build_agent, openai_base_url, run_turn, run_turn_sync
from punie.agent.tools import ToolCallRecord
from punie.config.models import AgentOptions, Permissions
from punie.errors import AgentError
from tests.support.fake_openai import error_reply, raw_reply, serve, text_reply, tool_call_reply, tool_messages
from tests.support.ports import free_port


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("the secret word is pineapple\n")
    return ws


def _options(**kw: Any) -> AgentOptions:
    return AgentOptions(**kw)


@pytest.mark.slow
def test_full_tool_calling_turn(workspace: Path) -> None:
    script = [tool_call_reply(("read_file", {"path": "notes.txt"})), text_reply("The word is pineapple.")]
    with serve(script) as fake:
        agent = build_agent(_options(instructions="Be terse.", temperature=0.3, max_tokens=64), fake.url,
                            base_dir=workspace)
        result = run_turn_sync(agent, "What is the secret word?")
    assert result.answer == "The word is pineapple."
    assert [(c.name, c.args, c.status) for c in result.tool_calls] == [("read_file", {"path": "notes.txt"}, "ok")]
    assert result.tool_calls[0].result == "the secret word is pineapple\n"
    assert result.requests == 2
    first, second = fake.requests
    # the adapter rule: mlx_lm.server only applies --adapter-path for "default_model" (or no model)
    assert all(body.get("model", SERVED_MODEL_NAME) == SERVED_MODEL_NAME for body in fake.requests)
    assert first["messages"][0] == {"role": "system", "content": "Be terse."}
    assert first["messages"][-1] == {"role": "user", "content": "What is the secret word?"}
    assert first["temperature"] == 0.3
    assert 64 in (first.get("max_tokens"), first.get("max_completion_tokens"))
    assert sorted(t["function"]["name"] for t in first["tools"]) == [
        "list_files", "read_file", "run_command", "search", "write_file"]
    assert [m["content"] for m in tool_messages(second)] == ["the secret word is pineapple\n"]
    assert fake.paths == ["/v1/chat/completions", "/v1/chat/completions"]


def test_only_enabled_tools_are_offered(workspace: Path) -> None:
    with serve([text_reply("ok")]) as fake:
        run_turn_sync(build_agent(_options(tools=["read_file", "search"]), fake.url, base_dir=workspace), "hi")
    assert sorted(t["function"]["name"] for t in fake.requests[0]["tools"]) == ["read_file", "search"]


@pytest.mark.slow
def test_history_carries_the_conversation(workspace: Path) -> None:
    with serve([text_reply("first answer"), text_reply("second answer")]) as fake:
        agent = build_agent(_options(), fake.url, base_dir=workspace)
        one = run_turn_sync(agent, "one")
        two = run_turn_sync(agent, "two", history=one.messages)
    assert two.answer == "second answer"
    contents = [m.get("content") for m in fake.requests[1]["messages"]]
    assert contents[-3:] == ["one", "first answer", "two"]


@pytest.mark.slow
def test_tool_failures_go_back_to_the_model(workspace: Path) -> None:
    script = [tool_call_reply(("read_file", {"path": "missing.txt"}), ("read_file", {"path": "../etc/passwd"})),
              text_reply("Could not read them.")]
    with serve(script) as fake:
        result = run_turn_sync(build_agent(_options(), fake.url, base_dir=workspace), "read")
    assert [c.status for c in result.tool_calls] == ["error", "error"]
    results = [m["content"] for m in tool_messages(fake.requests[1])]
    assert results[0] == "error: no such file: 'missing.txt'"
    assert "outside the workspace" in results[1]
    assert result.answer == "Could not read them."


def test_malformed_tool_calls_are_retried_then_succeed(workspace: Path) -> None:
    script = [tool_call_reply(("read_file", "{not json")), tool_call_reply(("no_such_tool", {})),
              tool_call_reply(("read_file", {"path": "notes.txt"})), text_reply("pineapple")]
    with serve(script) as fake:
        result = run_turn_sync(build_agent(_options(), fake.url, base_dir=workspace), "go")
    assert result.answer == "pineapple"
    assert [(c.name, c.status) for c in result.tool_calls] == [
        ("read_file", "invalid"), ("no_such_tool", "invalid"), ("read_file", "ok")]
    retry_texts = [tool_messages(body)[-1]["content"] for body in fake.requests[1:3]]
    assert "Invalid JSON" in retry_texts[0]
    assert "Unknown tool name: 'no_such_tool'" in retry_texts[1]


def test_malformed_tool_calls_are_bounded(workspace: Path) -> None:
    script = [tool_call_reply(("read_file", "{bad"))] * (TOOL_RETRIES + 1) + [text_reply("never reached")]
    with serve(script) as fake:
        with pytest.raises(AgentError, match="malformed tool calls") as info:
            run_turn_sync(build_agent(_options(), fake.url, base_dir=workspace), "go")
    assert len(fake.requests) == TOOL_RETRIES + 1
    assert fake.url in str(info.value)


def test_max_turns_stops_a_looping_model(workspace: Path) -> None:
    script = [tool_call_reply(("list_files", {}))] * 5
    with serve(script) as fake:
        with pytest.raises(AgentError, match="more than 3 model requests") as info:
            run_turn_sync(build_agent(_options(max_turns=3), fake.url, base_dir=workspace), "loop")
    assert len(fake.requests) == 3
    assert "agent.max_turns" in str(info.value)


@pytest.mark.slow
def test_unreachable_server_is_a_clear_agent_error(workspace: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(AgentError, match="cannot reach the model server at " + url) as info:
        run_turn_sync(build_agent(_options(), url, base_dir=workspace), "hi")
    assert "punie up" in str(info.value)


def test_server_error_is_a_clear_agent_error(workspace: Path) -> None:
    with serve([error_reply(500, {"error": "boom"})]) as fake:
        with pytest.raises(AgentError, match=r"answered HTTP 500.*boom") as info:
            run_turn_sync(build_agent(_options(), fake.url, base_dir=workspace), "hi")
    assert fake.url in str(info.value)


def test_dead_generation_thread_gets_a_hint(workspace: Path) -> None:
    with serve([error_reply(404, {"error": "generation thread died"})]) as fake:
        with pytest.raises(AgentError, match="HTTP 404") as info:
            run_turn_sync(build_agent(_options(), fake.url, base_dir=workspace), "hi")
    assert "could not load the model or adapter" in str(info.value)


def test_missing_workspace_is_an_agent_error(tmp_path: Path) -> None:
    with pytest.raises(AgentError, match="agent.workspace"):
        build_agent(_options(workspace="nope"), "http://127.0.0.1:1/v1", base_dir=tmp_path)


def test_openai_base_url() -> None:
    assert openai_base_url("http://h:1") == "http://h:1/v1"
    assert openai_base_url("http://h:1/v1/") == "http://h:1/v1"


def _write_script() -> list[Any]:
    return [tool_call_reply(("write_file", {"path": "out.txt", "content": "data"})), text_reply("done")]


def test_write_denied_by_policy_is_reported_to_the_model(workspace: Path) -> None:
    with serve(_write_script()) as fake:
        agent = build_agent(_options(permissions=Permissions(write_file="deny")), fake.url, base_dir=workspace)
        result = run_turn_sync(agent, "write")
    assert not (workspace / "out.txt").exists()
    assert result.tool_calls[0].status == "denied"
    assert "permission denied" in tool_messages(fake.requests[1])[0]["content"]


def test_write_allowed_by_policy_writes(workspace: Path) -> None:
    with serve(_write_script()) as fake:
        agent = build_agent(_options(permissions=Permissions(write_file="allow")), fake.url, base_dir=workspace)
        result = run_turn_sync(agent, "write")
    assert (workspace / "out.txt").read_text() == "data"
    assert result.tool_calls[0].status == "ok"


@pytest.mark.parametrize("allowed", [True, False])
def test_write_ask_goes_through_the_asker(workspace: Path, allowed: bool) -> None:
    asked: list[PermissionRequest] = []

    async def asker(request: PermissionRequest) -> Answer:
        asked.append(request)
        return Answer(allowed, reason=None if allowed else "the user refused")

    with serve(_write_script()) as fake:
        agent = build_agent(_options(), fake.url, base_dir=workspace, permission_asker=asker)
        result = run_turn_sync(agent, "write")
    assert [(r.tool, r.args["path"], r.summary) for r in asked] == [("write_file", "out.txt", "write 4 bytes to out.txt")]
    assert (workspace / "out.txt").exists() is allowed
    assert result.tool_calls[0].status == ("ok" if allowed else "denied")


def test_write_ask_without_asker_is_refused(workspace: Path) -> None:
    with serve(_write_script()) as fake:
        result = run_turn_sync(build_agent(_options(), fake.url, base_dir=workspace), "write")
    assert result.tool_calls[0].status == "denied"
    assert not (workspace / "out.txt").exists()


def test_run_command_turn(workspace: Path) -> None:
    script = [tool_call_reply(("run_command", {"command": "cat notes.txt | wc -w"})), text_reply("6 words")]
    with serve(script) as fake:
        agent = build_agent(_options(permissions=Permissions(run_command="allow")), fake.url, base_dir=workspace)
        result = run_turn_sync(agent, "count")
    assert tool_messages(fake.requests[1])[0]["content"] == "exit code 0\n5\n"
    assert result.tool_calls[0].summary == "exit code 0 (+1 lines)"


def test_hooks_see_every_tool_call(workspace: Path) -> None:
    from punie.agent.tools import ToolHooks

    events: list[tuple[str, str]] = []

    async def on_start(call_id: str, name: str, args: dict[str, Any]) -> None:
        events.append(("start", name))

    async def on_end(record: ToolCallRecord) -> None:
        events.append(("end", record.status))

    script = [tool_call_reply(("list_files", {}), ("read_file", {"path": "notes.txt"})), text_reply("ok")]
    with serve(script) as fake:
        agent = build_agent(_options(), fake.url, base_dir=workspace)
        asyncio.run(run_turn(agent, "x", hooks=ToolHooks(on_start=on_start, on_end=on_end)))
    assert sorted(events) == sorted([("start", "list_files"), ("end", "ok"), ("start", "read_file"), ("end", "ok")])


def test_calls_that_never_reach_a_tool_are_heard_in_order_with_the_text(workspace: Path) -> None:
    """What the terminal shows as it happens: text, then each call (malformed ones too), then the answer."""
    from punie.agent.tools import ToolHooks

    seen: list[tuple[str, str]] = []

    async def on_text(piece: str) -> None:
        seen.append(("text", piece))

    async def on_end(record: ToolCallRecord) -> None:
        seen.append((record.status, record.name))

    script = [tool_call_reply(("read_file", '{"path": '), ("nosuch", {}), ("list_files", {}), content="Let me look."),
              text_reply("Done.")]
    with serve(script) as fake:
        agent = build_agent(_options(), fake.url, base_dir=workspace)
        result = asyncio.run(run_turn(agent, "x", on_text=on_text,
                                      hooks=ToolHooks(on_end=on_end, on_invalid=on_end)))
    assert seen == [("text", "Let me look."), ("invalid", "read_file"), ("invalid", "nosuch"), ("ok", "list_files"),
                    ("text", "Done.")]
    invalid = [c for c in result.tool_calls if c.status == "invalid"]
    assert [c.name for c in invalid] == ["read_file", "nosuch"]
    assert "Unknown tool name: 'nosuch'" in invalid[1].result


def test_turn_result_json_round_trips(workspace: Path) -> None:
    with serve([tool_call_reply(("read_file", {"path": "notes.txt"})), text_reply("fine")]) as fake:
        result = run_turn_sync(build_agent(_options(), fake.url, base_dir=workspace), "x")
    data = json.loads(json.dumps(result.to_json()))
    assert data["answer"] == "fine"
    assert data["tool_calls"][0]["name"] == "read_file" and data["tool_calls"][0]["status"] == "ok"


@pytest.mark.parametrize("body", [b"", b"not json", b"{}", b'{"choices": []}'])
def test_broken_server_answers_are_agent_errors(workspace: Path, body: bytes) -> None:
    with serve([raw_reply(body)]) as fake:
        with pytest.raises(AgentError) as info:
            run_turn_sync(build_agent(_options(), fake.url, base_dir=workspace), "hi")
    assert fake.url in str(info.value)
    assert "errors.pydantic.dev" not in str(info.value)
