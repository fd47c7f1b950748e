"""The agent driven by a client nobody here wrote: the official TypeScript ACP SDK from npm, run by node.

tests/acp_client/ holds the client (client.mjs) and its package-lock.json; the
session fixture runs ``npm ci`` there once. The model is the scripted fake
OpenAI server, so each test sees exactly what the model was sent.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from punie.config.models import AgentOptions, Permissions
from tests.support.fake_openai import Reply, serve, text_reply, tool_call_reply, tool_messages

pytestmark = pytest.mark.slow  # every test here takes several seconds (real processes)

CLIENT_DIR = Path(__file__).parents[1] / "acp_client"
FS = {"fs": {"readTextFile": True, "writeTextFile": True}}


@pytest.fixture(scope="session")
def ts_client() -> Path:
    """client.mjs with its node_modules installed by `npm ci` (skipped when node is not installed)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node/npm not installed: the TypeScript ACP client tests need Node.js >= 20")
    # Two pytest-xdist workers (each its own session) must not run `npm ci` into one node_modules at
    # once (a half-written package fails the other's import): the first installs under a lock, and the
    # marker is written only once the install is whole.
    done = CLIENT_DIR / "node_modules" / ".punie-installed"
    with open(CLIENT_DIR / ".npm-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=CLIENT_DIR, capture_output=True,
                                  text=True, timeout=300)
            assert proc.returncode == 0, f"npm ci failed in {CLIENT_DIR}:\n{proc.stdout}\n{proc.stderr}"
            done.touch()
    return CLIENT_DIR / "client.mjs"


def run_client(client: Path, tmp_path: Path, agent: list[str], cwd: Path, steps: list[dict[str, Any]],
               timeout: float = 180, **scenario: Any) -> dict[str, Any]:
    path = tmp_path / f"scenario-{len(list(tmp_path.glob('scenario-*')))}.json"
    path.write_text(json.dumps({"agent": agent, "cwd": str(cwd), "steps": steps, **scenario}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUNIE_")}
    proc = subprocess.run(["node", str(client), str(path)], capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["failure"] is None, out["failure"] + "\nagent stderr:\n" + out["stderr"]
    return out


def agent_argv(url: str, options: AgentOptions | None = None) -> list[str]:
    return [sys.executable, "-m", "punie", "agent", "--base-url", url, "--options",
            (options or AgentOptions()).model_dump_json()]


def updates(out: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["update"] for e in out["events"] if e["type"] == "update"]


def requests(out: dict[str, Any], method: str) -> list[dict[str, Any]]:
    return [e["params"] for e in out["events"] if e["type"] == "request" and e["method"] == method]


def call_story(out: dict[str, Any], call_id: str) -> list[str]:
    """What happened to one tool call, in order: its statuses and the permission request."""
    story = []
    for event in out["events"]:
        if event["type"] == "update" and event["update"].get("toolCallId") == call_id:
            update = event["update"]
            if update.get("status"):
                story.append(update["status"])
        elif event["type"] == "request" and event["method"] == "session/request_permission" \
                and event["params"]["toolCall"]["toolCallId"] == call_id:
            story.append("permission")
    return story


def responses(out: dict[str, Any], op: str) -> list[Any]:
    return [e["result"] for e in out["events"] if e["type"] == "response" and e["op"] == op]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    ws = tmp_path / "project"
    ws.mkdir()
    (ws / "notes.txt").write_text("what is on disk\n")
    return ws.resolve()


def test_fs_methods_serve_reads_and_take_writes_in_order(ts_client: Path, tmp_path: Path, project: Path) -> None:
    script = [tool_call_reply(("read_file", {"path": "notes.txt"})),
              tool_call_reply(("write_file", {"path": "out.txt", "content": "written by the agent\n"})),
              text_reply("Done <|im_end|>")]
    buffer = str(project / "notes.txt")
    with serve(script) as fake:
        out = run_client(ts_client, tmp_path, agent_argv(fake.url), project,
                         [{"op": "new_session"}, {"op": "prompt", "text": "copy the notes"}],
                         capabilities=FS, buffers={buffer: "UNSAVED EDITOR BUFFER\n"}, permission="allow")
    init, = responses(out, "initialize")
    assert init["authMethods"] == []
    assert init["agentCapabilities"]["loadSession"] is True
    # The model read the editor's unsaved buffer, not the file on disk.
    assert requests(out, "fs/read_text_file")[0]["path"] == buffer
    assert tool_messages(fake.requests[1])[0]["content"] == "UNSAVED EDITOR BUFFER\n"
    # The write went to the editor, not to the disk.
    write, = requests(out, "fs/write_text_file")
    assert (write["path"], write["content"]) == (str(project / "out.txt"), "written by the agent\n")
    assert not (project / "out.txt").exists()
    calls = [u["toolCallId"] for u in updates(out) if u["sessionUpdate"] == "tool_call"]
    assert call_story(out, calls[0]) == ["pending", "in_progress", "completed"]
    assert call_story(out, calls[1]) == ["pending", "permission", "in_progress", "completed"]
    text = "".join(u["content"]["text"] for u in updates(out) if u["sessionUpdate"] == "agent_message_chunk")
    assert text.strip() == "Done"  # the template tag never reached the client
    assert responses(out, "prompt") == [{"stopReason": "end_turn"}]
    assert all(body.get("max_tokens") == 2048 for body in fake.requests)  # the cap is on every request


def test_paths_outside_the_workspace_never_reach_the_client(ts_client: Path, tmp_path: Path, project: Path) -> None:
    script = [tool_call_reply(("read_file", {"path": "../secret.txt"})), text_reply("no")]
    (project.parent / "secret.txt").write_text("secret")
    with serve(script) as fake:
        out = run_client(ts_client, tmp_path, agent_argv(fake.url), project,
                         [{"op": "new_session"}, {"op": "prompt", "text": "read it"}],
                         capabilities=FS, buffers={str(project.parent / "secret.txt"): "secret"})
    assert requests(out, "fs/read_text_file") == []
    assert "outside the workspace" in tool_messages(fake.requests[1])[0]["content"]


def test_run_command_goes_through_the_client_terminal(ts_client: Path, tmp_path: Path, project: Path) -> None:
    script = [tool_call_reply(("run_command", {"command": "echo hi-from-terminal; exit 3"})), text_reply("ran")]
    with serve(script) as fake:
        out = run_client(ts_client, tmp_path, agent_argv(fake.url), project,
                         [{"op": "new_session"}, {"op": "prompt", "text": "run it"}],
                         capabilities={"terminal": True}, permission="allow")
    create, = requests(out, "terminal/create")
    assert (create["command"], create["args"], create["cwd"]) == ("bash", ["-c", "echo hi-from-terminal; exit 3"],
                                                                  str(project))
    methods = [e["method"] for e in out["events"] if e["type"] == "request" and e["method"].startswith("terminal/")]
    assert methods == ["terminal/create", "terminal/wait_for_exit", "terminal/output", "terminal/release"]
    result = tool_messages(fake.requests[1])[0]["content"]
    assert result.startswith("exit code 3") and "hi-from-terminal" in result
    call_id = next(u["toolCallId"] for u in updates(out) if u["sessionUpdate"] == "tool_call")
    assert call_story(out, call_id) == ["pending", "permission", "in_progress", "failed"]  # exit 3 is a failure
    embedded = [c for u in updates(out) if u.get("toolCallId") == call_id for c in u.get("content") or []
                if c["type"] == "terminal"]
    assert embedded and embedded[0]["terminalId"] == "term-1"


def test_cancel_during_the_permission_request(ts_client: Path, tmp_path: Path, project: Path) -> None:
    def must_not_be_asked(body: dict[str, Any]) -> Reply:
        raise AssertionError("the model was asked again after the turn was cancelled")

    script = [tool_call_reply(("write_file", {"path": "out.txt", "content": "x"})), text_reply("late")]
    with serve(script) as fake:
        out = run_client(ts_client, tmp_path, agent_argv(fake.url), project,
                         [{"op": "new_session"}, {"op": "prompt", "text": "write"}],
                         capabilities=FS, permission="cancel_turn")
    assert responses(out, "prompt") == [{"stopReason": "cancelled"}]
    call_id = next(u["toolCallId"] for u in updates(out) if u["sessionUpdate"] == "tool_call")
    assert call_story(out, call_id) == ["pending", "permission", "failed"]  # a final update, never in_progress
    assert requests(out, "fs/write_text_file") == [] and not (project / "out.txt").exists()
    assert len(fake.requests) <= 2


def test_session_load_restores_history_after_a_restart(ts_client: Path, tmp_path: Path, project: Path) -> None:
    script = [text_reply("I will remember avocado."), text_reply("The word was avocado.")]
    with serve(script) as fake:
        first = run_client(ts_client, tmp_path, agent_argv(fake.url), project,
                           [{"op": "new_session"}, {"op": "prompt", "text": "Remember the word avocado."}])
        session_id = responses(first, "new_session")[0]["sessionId"]
        assert (project / ".punie" / "sessions" / f"{session_id}.json").is_file()
        # A new agent process: only the history on disk connects the two.
        second = run_client(ts_client, tmp_path, agent_argv(fake.url), project,
                            [{"op": "list_sessions"}, {"op": "load_session", "sessionId": session_id},
                             {"op": "prompt", "text": "Which word?"}])
    listed, = responses(second, "list_sessions")
    assert [(s["sessionId"], s["title"], s["cwd"]) for s in listed["sessions"]] == [
        (session_id, "Remember the word avocado.", str(project))]
    assert responses(second, "initialize")[0]["agentCapabilities"]["sessionCapabilities"]["list"] == {}
    replay = [(u["sessionUpdate"], u["content"]["text"]) for u in updates(second)
              if u["sessionUpdate"] in ("user_message_chunk", "agent_message_chunk")]
    assert replay[:2] == [("user_message_chunk", "Remember the word avocado."),
                          ("agent_message_chunk", "I will remember avocado.")]
    load_index = next(i for i, e in enumerate(second["events"]) if e["type"] == "response" and e["op"] == "load_session")
    assert all(e["type"] != "update" or e["update"]["sessionUpdate"] != "user_message_chunk"
               for e in second["events"][load_index:])  # replayed before session/load answered
    contents = [m.get("content") for m in fake.requests[1]["messages"]]
    assert contents[-3:] == ["Remember the word avocado.", "I will remember avocado.", "Which word?"]


PROFILES_TOML = """
default_profile = "coder"

[profiles.coder]
model = "{model}"
[profiles.coder.server]
url = "{url}"
[profiles.coder.agent]
instructions = "You are the coder."

[profiles.coder-strict]
extends = "coder"
[profiles.coder-strict.agent]
instructions = "You are the strict reviewer."
permissions = {{ write_file = "deny", run_command = "deny" }}

[profiles.other-adapter]
extends = "coder"
adapter = "{adapter}"
"""


def test_punie_up_offers_and_switches_profiles_sharing_the_server(ts_client: Path, tmp_path: Path,
                                                                  project: Path) -> None:
    def answer(body: dict[str, Any]) -> Reply:
        if body.get("max_tokens") == 1 and not body.get("tools"):  # the supervisor's readiness probe
            return text_reply("ok")
        system = body["messages"][0]["content"]
        return text_reply(f"system said: {system}")

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    with serve([answer] * 10) as fake:
        (project / "punie.toml").write_text(PROFILES_TOML.format(model=tmp_path / "model", url=fake.url[:-3],
                                                                 adapter=adapter))
        up = [sys.executable, "-m", "punie", "up", "coder", "--no-check"]
        out = run_client(ts_client, tmp_path, up, project,
                         [{"op": "new_session"}, {"op": "prompt", "text": "who are you?"},
                          {"op": "set_config_option", "configId": "profile", "value": "coder-strict"},
                          {"op": "prompt", "text": "and now?"}])
    option, = responses(out, "new_session")[0]["configOptions"]
    assert option["id"] == "profile" and option["currentValue"] == "coder"
    assert [o["value"] for o in option["options"]] == ["coder", "coder-strict"]  # other-adapter needs a reload
    switched, = responses(out, "set_config_option")
    assert switched["configOptions"][0]["currentValue"] == "coder-strict"
    text = "".join(u["content"]["text"] for u in updates(out) if u["sessionUpdate"] == "agent_message_chunk")
    assert "system said: You are the coder." in text and "system said: You are the strict reviewer." in text


def test_refused_client_permission_options_unchanged(ts_client: Path, tmp_path: Path, project: Path) -> None:
    options = AgentOptions(permissions=Permissions(write_file="ask"))
    script = [tool_call_reply(("write_file", {"path": "out.txt", "content": "x"})), text_reply("refused")]
    with serve(script) as fake:
        out = run_client(ts_client, tmp_path, agent_argv(fake.url, options), project,
                         [{"op": "new_session"}, {"op": "prompt", "text": "write"}], permission="reject")
    request, = requests(out, "session/request_permission")
    assert [o["optionId"] for o in request["options"]] == ["allow", "allow_always", "reject"]
    assert request["toolCall"]["content"][0]["type"] == "diff"
    call_id = request["toolCall"]["toolCallId"]
    assert call_story(out, call_id) == ["pending", "permission", "failed"]
    assert "permission denied" in tool_messages(fake.requests[1])[0]["content"]
    assert not (project / "out.txt").exists()
