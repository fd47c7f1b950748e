"""ACP sessions under concurrency, driven by the official TypeScript SDK client.

One turn per session at a time: a ``session/prompt`` sent while a turn runs waits
for it and then runs with the history that turn left; ``session/cancel`` stops the
running turn (its run_command child at once) and every prompt waiting behind it.

Ordering without sleeps: the client's requests are read and dispatched in order,
so once the answer to a request sent *after* a prompt has arrived, that prompt is
already waiting for its turn in the agent.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from punie.agent.acp_server import MAX_WAITING
from punie.config.models import AgentOptions, Permissions
from tests.agent.test_acp_ts_client import agent_argv, project, responses, run_client, ts_client
from tests.agent.test_mlx import mlx_server
from tests.support.fake_openai import serve, text_reply, tool_call_reply, tool_messages
from tests.support.launch_helpers import alive

__all__ = ["mlx_server", "project", "ts_client"]  # fixtures used here

pytestmark = pytest.mark.slow

ALLOW = AgentOptions(permissions=Permissions(run_command="allow"))


def prompt_answers(out: dict[str, Any]) -> dict[str, Any]:
    """tag -> the answer (or error) of each prompt sent without waiting."""
    return {e["tag"]: e.get("result") or {"error": e["error"]} for e in out["events"]
            if e.get("op") == "prompt" and e["type"] in ("response", "error") and e.get("tag")}


def test_a_second_prompt_waits_for_the_running_turn_and_history_keeps_both(
        ts_client: Path, tmp_path: Path, project: Path) -> None:
    started, go = project / "started", project / "go"
    wait_for_go = f"echo up > {started}; while [ ! -e {go} ]; do sleep 0.05; done; echo released"
    script = [tool_call_reply(("run_command", {"command": wait_for_go})), text_reply("first done"),
              text_reply("second done")]
    with serve(script) as fake:
        out = run_client(ts_client, tmp_path, agent_argv(fake.url, ALLOW), project, [
            {"op": "new_session"},
            {"op": "prompt", "text": "First question.", "wait": False, "tag": "first"},
            {"op": "wait_file", "path": str(started)},
            {"op": "prompt", "text": "Second question.", "wait": False, "tag": "second"},
            {"op": "list_sessions"},  # answered after the second prompt was taken in
            {"op": "write_file", "path": str(go), "content": "go"},
            {"op": "join"},
        ])
    answers = prompt_answers(out)
    assert answers == {"first": {"stopReason": "end_turn"}, "second": {"stopReason": "end_turn"}}
    assert len(fake.requests) == 3  # the second turn asked the model only after the first ended
    assert "released" in tool_messages(fake.requests[1])[0]["content"]
    contents = [m.get("content") for m in fake.requests[2]["messages"] if m["role"] in ("user", "assistant")]
    assert contents[0] == "First question." and contents[-2:] == ["first done", "Second question."]
    session_id = responses(out, "new_session")[0]["sessionId"]
    stored = json.loads((project / ".punie" / "sessions" / f"{session_id}.json").read_text())
    prompts = [p["content"] for m in stored["messages"] for p in m["parts"] if p["part_kind"] == "user-prompt"]
    assert prompts == ["First question.", "Second question."]  # every turn kept


def test_cancel_stops_the_running_command_at_once_and_the_waiting_prompts(
        ts_client: Path, tmp_path: Path, project: Path) -> None:
    pid_file = project / "pid"
    script = [tool_call_reply(("run_command", {"command": f"echo $$ > {pid_file}; exec sleep 600"})),
              text_reply("never"), text_reply("third answered")]
    began = time.monotonic()
    with serve(script) as fake:
        out = run_client(ts_client, tmp_path, agent_argv(fake.url, ALLOW), project, [
            {"op": "new_session"},
            {"op": "prompt", "text": "Run it.", "wait": False, "tag": "running"},
            {"op": "wait_file", "path": str(pid_file)},
            {"op": "prompt", "text": "And then this.", "wait": False, "tag": "waiting"},
            {"op": "list_sessions"},
            {"op": "cancel"},
            {"op": "join"},
            {"op": "prompt", "text": "Still there?"},
        ])
        requests_after = len(fake.requests)
    elapsed = time.monotonic() - began
    pid = int(pid_file.read_text())
    assert not alive(pid), f"the command's process {pid} outlived the cancelled turn"
    assert elapsed < 120  # far from run_command's 600 s timeout
    assert prompt_answers(out) == {"running": {"stopReason": "cancelled"}, "waiting": {"stopReason": "cancelled"}}
    waited = [e["result"] for e in out["events"] if e.get("op") == "prompt" and e["type"] == "response"
              and not e.get("tag")]
    assert waited == [{"stopReason": "end_turn"}]  # the session goes on after a cancel
    # The model saw the first turn's request and the third prompt, never the cancelled waiting one.
    assert requests_after == 2
    users = [m["content"] for m in fake.requests[1]["messages"] if m["role"] == "user"]
    assert "And then this." not in users and users[-1] == "Still there?"


def test_prompts_beyond_the_waiting_limit_are_refused(ts_client: Path, tmp_path: Path, project: Path) -> None:
    started = project / "started"
    script = [tool_call_reply(("run_command", {"command": f"echo up > {started}; exec sleep 600"}))]
    extra = [{"op": "prompt", "text": f"more {i}", "wait": False, "tag": f"w{i}"} for i in range(MAX_WAITING + 1)]
    with serve(script) as fake:
        out = run_client(ts_client, tmp_path, agent_argv(fake.url, ALLOW), project, [
            {"op": "new_session"},
            {"op": "prompt", "text": "Run it.", "wait": False, "tag": "running"},
            {"op": "wait_file", "path": str(started)},
            *extra,
            {"op": "list_sessions"},
            {"op": "cancel"},
            {"op": "join"},
        ])
    answers = prompt_answers(out)
    refused = [tag for tag, answer in answers.items() if "error" in answer]
    assert refused == [f"w{MAX_WAITING}"]
    assert answers[refused[0]]["error"]["code"] == -32600
    assert all(a == {"stopReason": "cancelled"} for tag, a in answers.items() if tag not in refused)
    assert len(fake.requests) == 1


@pytest.mark.mlx
def test_fifty_sessions_at_once_against_a_real_mlx_server(ts_client: Path, tmp_path: Path, project: Path,
                                                          mlx_server: str) -> None:
    """mlx_lm.server listens with a backlog of 5: a burst of 50 sessions gets connections refused or
    reset, which the agent retries (bounded, with backoff) instead of ending turns with
    "cannot reach the model server"."""
    sessions = 50
    options = AgentOptions(max_tokens=4, temperature=0.0, max_turns=2, tools=[])
    prompts = [{"op": "prompt", "text": f"Say {i}.", "wait": False, "tag": f"p{i}", "session": f"s{i}"}
               for i in range(sessions)]
    out = run_client(ts_client, tmp_path, agent_argv(mlx_server, options), project,
                     [{"op": "new_sessions", "count": sessions, "prefix": "s"}, *prompts, {"op": "join"}],
                     timeout=540)
    answers = prompt_answers(out)
    assert len(answers) == sessions
    messages = "".join(e["update"]["content"].get("text", "") for e in out["events"] if e["type"] == "update"
                       and e["update"]["sessionUpdate"] == "agent_message_chunk")
    assert "cannot reach the model server" not in messages, out["stderr"][-3000:]
    assert all(a in ({"stopReason": "end_turn"}, {"stopReason": "max_turn_requests"}) for a in answers.values()), answers
