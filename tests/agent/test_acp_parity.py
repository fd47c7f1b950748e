"""IDE parity, driven by the official TypeScript SDK client: the client's MCP servers, slash commands,
usage updates, the model's plan and session/resume.

The MCP servers are real processes on the official MCP SDK (tests/support/mcp_server.py), one over
stdio (started by the agent) and one over streamable HTTP (started here); the model is the scripted
fake OpenAI server, so each test sees exactly what the model was offered and sent back.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from punie.agent.acp_commands import COMMANDS
from punie.config.models import AgentOptions, Permissions
from tests.agent.test_acp_ts_client import (
    PROFILES_TOML,
    agent_argv,
    call_story,
    project,
    requests,
    responses,
    run_client,
    ts_client,
    updates,
)
from tests.support.fake_openai import serve, text_reply, tool_call_reply, tool_messages
from tests.support.launch_helpers import alive
from tests.support.ports import free_port

pytestmark = pytest.mark.slow  # every test here takes several seconds (real processes)

__all__ = ["project", "ts_client"]  # fixtures used here

REPO = Path(__file__).resolve().parents[2]


def stdio_server(name: str, log: Path) -> dict[str, Any]:
    return {"name": name, "command": sys.executable, "args": ["-m", "tests.support.mcp_server", name, str(log)],
            "env": [{"name": "PYTHONPATH", "value": str(REPO)}]}


@pytest.fixture
def http_mcp(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A streamable-HTTP MCP server (its URL and call log), up until the test ends."""
    log = tmp_path / "http-calls.jsonl"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.mcp_server", "web", str(log), "http", str(port)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                httpx.get(url, timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the HTTP MCP server did not listen in 60 s"
                time.sleep(0.1)
        yield url, log
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def offered(body: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in body.get("tools") or []]


def message_text(out: dict[str, Any]) -> str:
    return "".join(u["content"]["text"] for u in updates(out) if u["sessionUpdate"] == "agent_message_chunk")


def test_mcp_servers_of_the_client_are_tools_behind_the_permission_policy(
        ts_client: Path, tmp_path: Path, project: Path, http_mcp: tuple[str, Path]) -> None:
    url, http_log = http_mcp
    stdio_log = tmp_path / "stdio-calls.jsonl"
    servers = [stdio_server("tools", stdio_log), {"type": "http", "name": "web", "url": url, "headers": []}]
    script = [tool_call_reply(("mcp__tools__shout", {"text": "hello"})),
              tool_call_reply(("mcp__web__shout", {"text": "over http"})),
              tool_call_reply(("mcp__tools__fail", {"text": "this"})),
              text_reply("Done.")]
    with serve(script) as fake:
        out = run_client(ts_client, tmp_path, agent_argv(fake.url), project,
                         [{"op": "new_session", "mcpServers": servers}, {"op": "prompt", "text": "use them"}],
                         permission="allow")
    init, = responses(out, "initialize")
    assert init["agentCapabilities"]["mcpCapabilities"] == {"http": True, "sse": True}
    tools = offered(fake.requests[0])
    assert {"read_file", "run_command", "mcp__tools__shout", "mcp__tools__fail", "mcp__web__shout"} <= set(tools)
    assert tool_messages(fake.requests[1])[0]["content"] == "HELLO"
    assert tool_messages(fake.requests[2])[-1]["content"] == "OVER HTTP"
    assert "cannot do this" in tool_messages(fake.requests[3])[-1]["content"]  # the server's error, to the model
    assert [(c["tool"], c["args"]) for c in calls(stdio_log)] == [("shout", {"text": "hello"}),
                                                                  ("fail", {"text": "this"})]
    assert [(c["tool"], c["args"]) for c in calls(http_log)] == [("shout", {"text": "over http"})]
    call_ids = [u["toolCallId"] for u in updates(out) if u["sessionUpdate"] == "tool_call"]
    assert call_story(out, call_ids[0]) == ["pending", "permission", "in_progress", "completed"]
    assert call_story(out, call_ids[2]) == ["pending", "permission", "in_progress", "failed"]
    titles = [u["title"] for u in updates(out) if u["sessionUpdate"] == "tool_call"]
    assert titles[:2] == ["tools: shout", "web: shout"]
    # The stdio server the agent started is gone with the agent.
    stdio_pid = calls(stdio_log)[0]["pid"]
    assert not alive(stdio_pid)


def test_mcp_tools_denied_by_the_profile_never_reach_the_server(ts_client: Path, tmp_path: Path,
                                                                project: Path) -> None:
    log = tmp_path / "calls.jsonl"
    options = AgentOptions(permissions=Permissions(mcp="deny"))
    script = [tool_call_reply(("mcp__tools__shout", {"text": "no"})), text_reply("ok")]
    broken = {"name": "broken", "command": "/nonexistent/mcp-server", "args": [], "env": []}
    with serve(script) as fake:
        out = run_client(ts_client, tmp_path, agent_argv(fake.url, options), project,
                         [{"op": "new_session", "mcpServers": [stdio_server("tools", log), broken]},
                          {"op": "prompt", "text": "shout"}], permission="allow")
    assert calls(log) == []
    assert requests(out, "session/request_permission") == []
    assert 'agent.permissions.mcp = "deny"' in tool_messages(fake.requests[1])[0]["content"]
    # A server that cannot start is left out, and the client is told.
    thoughts = "".join(u["content"]["text"] for u in updates(out) if u["sessionUpdate"] == "agent_thought_chunk")
    assert "MCP server 'broken' not connected" in thoughts
    assert not any(name.startswith("mcp__broken") for name in offered(fake.requests[0]))


def test_slash_commands_are_advertised_and_served(ts_client: Path, tmp_path: Path, project: Path) -> None:
    def answer(body: dict[str, Any]) -> Any:
        users = [m["content"] for m in body["messages"] if m["role"] == "user"]
        system = body["messages"][0]["content"]
        return text_reply(f"{len(users)} user messages; system: {system}")

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    with serve([answer] * 10) as fake:
        config = project / "punie.toml"
        config.write_text(PROFILES_TOML.format(model=tmp_path / "model", url=fake.url[:-3], adapter=adapter))
        argv = [*agent_argv(fake.url), "--profile", "coder", "--config", str(config)]
        out = run_client(ts_client, tmp_path, argv, project, [
            {"op": "new_session"},
            {"op": "prompt", "text": "/help"},
            {"op": "prompt", "text": "first"},
            {"op": "prompt", "text": "second"},
            {"op": "prompt", "text": "/clear"},
            {"op": "prompt", "text": "third"},
            {"op": "prompt", "text": "/profile"},
            {"op": "prompt", "text": "/profile coder-strict"},
            {"op": "prompt", "text": "fourth"},
            {"op": "prompt", "text": "/adapter"},
            {"op": "prompt", "text": "/eval no-such-suite"},
        ], timeout=300)
    advertised, = [u for u in updates(out) if u["sessionUpdate"] == "available_commands_update"]
    assert [c["name"] for c in advertised["availableCommands"]] == [c.name for c in COMMANDS]
    assert responses(out, "prompt") == [{"stopReason": "end_turn"}] * 10
    text = message_text(out)
    assert "/clear: Start the conversation over" in text  # /help
    # The model never saw a slash command; /clear emptied the history: "third" came alone.
    sent = [[m["content"] for m in body["messages"] if m["role"] == "user"] for body in fake.requests]
    assert sent[:3] == [["first"], ["first", "second"], ["third"]]
    assert "Profiles on this server (* active):\n* coder\n  coder-strict" in text
    assert "Switched to profile coder-strict." in text
    assert "system: You are the strict reviewer." in text
    switched = [u for u in updates(out) if u["sessionUpdate"] == "config_option_update"]
    assert switched and switched[0]["configOptions"][0]["currentValue"] == "coder-strict"
    assert "Profile coder-strict: no adapter" in text
    assert "punie eval coder-strict --suite no-such-suite: exit code 2" in text  # a real `punie eval` ran
    assert "no eval suite 'no-such-suite'" in text


def test_usage_updates_after_each_turn(ts_client: Path, tmp_path: Path, project: Path) -> None:
    script = [tool_call_reply(("list_files", {"path": "."})), text_reply("two files"), text_reply("again")]
    with serve(script) as fake:
        fake.max_model_len = 2048
        out = run_client(ts_client, tmp_path, agent_argv(fake.url), project,
                         [{"op": "new_session"}, {"op": "prompt", "text": "list"}, {"op": "prompt", "text": "more"}])
    usage = [u for u in updates(out) if u["sessionUpdate"] == "usage_update"]
    # The fake server says 10 prompt + 5 completion tokens per request; its /v1/models says 2048.
    assert [(u["used"], u["size"]) for u in usage] == [(15, 2048), (15, 2048)]
    last_update = max(i for i, e in enumerate(out["events"]) if e["type"] == "update"
                      and e["update"]["sessionUpdate"] == "usage_update")
    answered = max(i for i, e in enumerate(out["events"]) if e["type"] == "response" and e["op"] == "prompt")
    assert last_update < answered  # sent before the turn's answer


def test_the_models_plan_is_sent_as_an_agent_plan(ts_client: Path, tmp_path: Path, project: Path) -> None:
    options = AgentOptions(tools=["read_file", "update_plan"])
    steps = [{"content": "Read the notes", "status": "in_progress"}, {"content": "Answer", "priority": "high"}]
    done = [{"content": "Read the notes", "status": "completed"}, {"content": "Answer", "status": "in_progress"}]
    script = [tool_call_reply(("update_plan", {"steps": steps})), tool_call_reply(("read_file", {"path": "notes.txt"})),
              tool_call_reply(("update_plan", {"steps": done})), text_reply("Done.")]
    with serve(script) as fake:
        out = run_client(ts_client, tmp_path, agent_argv(fake.url, options), project,
                         [{"op": "new_session"}, {"op": "prompt", "text": "plan it"}])
    assert "update_plan" in offered(fake.requests[0])
    plans = [u["entries"] for u in updates(out) if u["sessionUpdate"] == "plan"]
    assert plans == [
        [{"content": "Read the notes", "priority": "medium", "status": "in_progress"},
         {"content": "Answer", "priority": "high", "status": "pending"}],
        [{"content": "Read the notes", "priority": "medium", "status": "completed"},
         {"content": "Answer", "priority": "medium", "status": "in_progress"}],
    ]
    assert tool_messages(fake.requests[1])[0]["content"] == "plan updated: 2 steps, 0 completed"


def test_session_resume_continues_without_replaying(ts_client: Path, tmp_path: Path, project: Path) -> None:
    script = [text_reply("I will remember mango."), text_reply("It was mango.")]
    with serve(script) as fake:
        first = run_client(ts_client, tmp_path, agent_argv(fake.url), project,
                           [{"op": "new_session"}, {"op": "prompt", "text": "Remember mango."}])
        session_id = responses(first, "new_session")[0]["sessionId"]
        second = run_client(ts_client, tmp_path, agent_argv(fake.url), project,
                            [{"op": "resume_session", "sessionId": session_id}, {"op": "prompt", "text": "Which?"}])
    assert responses(second, "initialize")[0]["agentCapabilities"]["sessionCapabilities"]["resume"] == {}
    assert not [u for u in updates(second) if u["sessionUpdate"] == "user_message_chunk"]  # nothing replayed
    contents = [m.get("content") for m in fake.requests[1]["messages"]]
    assert contents[-3:] == ["Remember mango.", "I will remember mango.", "Which?"]
    assert responses(second, "prompt") == [{"stopReason": "end_turn"}]


def test_resume_of_an_unknown_session_is_an_error(ts_client: Path, tmp_path: Path, project: Path) -> None:
    scenario = {"agent": agent_argv("http://127.0.0.1:9/v1"), "cwd": str(project),
                "steps": [{"op": "resume_session", "sessionId": "nosuchsession"}]}
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(scenario))
    proc = subprocess.run(["node", str(ts_client), str(path)], capture_output=True, text=True, timeout=180)
    out = json.loads(proc.stdout)
    assert out["failure"] is not None and "nosuchsession" in out["failure"]
