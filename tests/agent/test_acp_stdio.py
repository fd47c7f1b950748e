"""The agent as an ACP server: a real client talks to `python -m punie agent` over stdio pipes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from acp import spawn_agent_process, text_block
from acp.schema import AllowedOutcome, DeniedOutcome, RequestPermissionResponse

from punie.config.models import AgentOptions, Permissions
from tests.support.fake_openai import Reply, serve, text_reply, tool_call_reply, tool_messages
from tests.support.launch_helpers import reap
from tests.support.ports import free_port


class RecordingClient:
    """An ACP client (the IDE side) that records updates and answers permission requests."""

    def __init__(self, decision: str = "allow"):
        self.decision = decision
        self.updates: list[Any] = []  # a turn's updates (the session-level ones are in `session_updates`)
        self.session_updates: list[Any] = []
        self.permission_requests: list[Any] = []

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        if update.session_update in ("available_commands_update", "usage_update"):
            self.session_updates.append(update)
        else:
            self.updates.append(update)

    async def request_permission(self, session_id: str, tool_call: Any, options: list[Any],
                                 **kwargs: Any) -> RequestPermissionResponse:
        self.permission_requests.append((tool_call, [o.option_id for o in options]))
        if self.decision == "cancel":
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        return RequestPermissionResponse(outcome=AllowedOutcome(outcome="selected", option_id=self.decision))

    def kinds(self) -> list[str]:
        return [u.session_update for u in self.updates]

    def message_text(self) -> str:
        return "".join(u.content.text for u in self.updates if u.session_update == "agent_message_chunk")


def _agent_args(url: str, options: AgentOptions | None = None) -> list[str]:
    return ["-m", "punie", "agent", "--base-url", url, "--options", (options or AgentOptions()).model_dump_json()]


async def _session(client: RecordingClient, url: str, cwd: Path, prompts: list[str],
                   options: AgentOptions | None = None) -> tuple[list[Any], bytes]:
    env = dict(os.environ)
    responses = []
    async with spawn_agent_process(lambda _agent: client, sys.executable, *_agent_args(url, options),
                                   env=env, cwd=cwd) as (conn, proc):
        init = await conn.initialize(protocol_version=1)
        assert init.agent_info is not None and init.agent_info.name == "punie"
        session = await conn.new_session(cwd=str(cwd), mcp_servers=[])
        for prompt in prompts:
            responses.append(await conn.prompt(session_id=session.session_id, prompt=[text_block(prompt)]))
        stderr = proc.stderr
    assert stderr is not None
    return responses, await stderr.read()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "project"
    ws.mkdir()
    (ws / "a.txt").write_text("alpha\n")
    return ws


@pytest.mark.slow
def test_acp_turn_with_tool_calls_and_permission(workspace: Path) -> None:
    script = [tool_call_reply(("read_file", {"path": "a.txt"}), content="Let me look. "),
              tool_call_reply(("write_file", {"path": "b.txt", "content": "beta\n"})),
              text_reply("Copied and changed.")]
    client = RecordingClient("allow")
    with serve(script) as fake:
        (response,), _ = asyncio.run(_session(client, fake.url, workspace, ["copy a.txt to b.txt"]))
    assert response.stop_reason == "end_turn"
    assert (workspace / "b.txt").read_text() == "beta\n"
    assert client.kinds() == ["agent_message_chunk", "tool_call", "tool_call_update", "tool_call_update", "tool_call",
                              "tool_call_update", "tool_call_update", "agent_message_chunk"]
    _, read_start, read_run, read_end, write_start, write_run, write_end, _ = client.updates
    assert [u.status for u in client.updates[1:-1]] == ["pending", "in_progress", "completed"] * 2
    assert (read_start.title, read_start.kind, read_start.raw_input) == ("Read a.txt", "read", {"path": "a.txt"})
    assert read_start.locations[0].path == str(workspace.resolve() / "a.txt")
    assert read_end.status == "completed" and read_end.content[0].content.text == "alpha\n"
    assert write_start.kind == "edit" and write_end.status == "completed"
    assert client.message_text() == "Let me look. Copied and changed."  # streamed as it came
    assert all(body["stream"] is True for body in fake.requests)
    (tool_call, options), = client.permission_requests
    assert tool_call.tool_call_id == write_start.tool_call_id
    assert tool_call.content[0].type == "diff" and tool_call.content[0].new_text == "beta\n"
    assert options == ["allow", "allow_always", "reject"]
    assert all(body.get("model", "default_model") == "default_model" for body in fake.requests)
    assert tool_messages(fake.requests[1])[0]["content"] == "alpha\n"


@pytest.mark.slow
@pytest.mark.parametrize("decision", ["reject", "cancel"])
def test_acp_permission_refused_by_the_client(workspace: Path, decision: str) -> None:
    script = [tool_call_reply(("write_file", {"path": "b.txt", "content": "x"})), text_reply("I could not write.")]
    client = RecordingClient(decision)
    with serve(script) as fake:
        (response,), _ = asyncio.run(_session(client, fake.url, workspace, ["write"]))
    assert response.stop_reason == "end_turn"
    assert not (workspace / "b.txt").exists()
    assert [u.status for u in client.updates if u.session_update.startswith("tool_call")] == ["pending", "failed"]
    assert "permission denied" in tool_messages(fake.requests[1])[0]["content"]


@pytest.mark.slow
def test_acp_allow_always_is_remembered_for_the_session(workspace: Path) -> None:
    script = [tool_call_reply(("write_file", {"path": "1.txt", "content": "1"})),
              tool_call_reply(("write_file", {"path": "2.txt", "content": "2"})), text_reply("both")]
    client = RecordingClient("allow_always")
    with serve(script) as fake:
        asyncio.run(_session(client, fake.url, workspace, ["write two"]))
    assert (workspace / "1.txt").exists() and (workspace / "2.txt").exists()
    assert len(client.permission_requests) == 1


@pytest.mark.slow
def test_acp_options_and_conversation_across_prompts(workspace: Path) -> None:
    options = AgentOptions(instructions="Answer in French.", tools=["read_file"],
                           permissions=Permissions(write_file="deny"))
    client = RecordingClient()
    with serve([text_reply("Bonjour"), text_reply("Encore")]) as fake:
        responses, _ = asyncio.run(_session(client, fake.url, workspace, ["hello", "again"], options))
    assert [r.stop_reason for r in responses] == ["end_turn", "end_turn"]
    assert client.message_text() == "BonjourEncore"
    first, second = fake.requests
    assert first["messages"][0] == {"role": "system", "content": "Answer in French."}
    assert [t["function"]["name"] for t in first["tools"]] == ["read_file"]
    assert [m.get("content") for m in second["messages"]][-3:] == ["hello", "Bonjour", "again"]


@pytest.mark.slow
def test_acp_unreachable_server_is_reported_in_the_session(workspace: Path) -> None:
    port = free_port()
    client = RecordingClient()
    url = f"http://127.0.0.1:{port}/v1"
    (response,), stderr = asyncio.run(_session(client, url, workspace, ["hi"]))
    assert response.stop_reason == "end_turn"
    assert client.message_text().startswith(f"punie: error: cannot reach the model server at {url}")
    assert b"cannot reach the model server" in stderr  # logged on stderr, never on stdout


@pytest.mark.slow
def test_acp_cancel_stops_the_turn(workspace: Path) -> None:
    released = threading.Event()

    def slow(body: dict[str, Any]) -> Reply:
        released.wait(120)  # an answer only after the test: however slow the cancel, it comes first
        return text_reply("too late")

    async def run(url: str) -> Any:
        client = RecordingClient()
        async with spawn_agent_process(lambda _a: client, sys.executable, *_agent_args(url),
                                       env=dict(os.environ), cwd=workspace) as (conn, _proc):
            await conn.initialize(protocol_version=1)
            session = await conn.new_session(cwd=str(workspace), mcp_servers=[])
            prompt = asyncio.create_task(conn.prompt(session_id=session.session_id, prompt=[text_block("hi")]))
            while not fake.requests:
                await asyncio.sleep(0.05)
            await conn.cancel(session_id=session.session_id)
            # Bounded from the cancel, not from the agent's start (which a loaded machine makes slow).
            return await asyncio.wait_for(prompt, 60)

    with serve([slow]) as fake:
        try:
            response = asyncio.run(run(fake.url))
        finally:
            released.set()
    assert response.stop_reason == "cancelled"


def test_agent_command_rejects_bad_options() -> None:
    proc = subprocess.run([sys.executable, "-m", "punie", "agent", "--base-url", "http://127.0.0.1:1/v1",
                           "--options", json.dumps({"tools": ["read_file", "rm_rf"]})],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=240)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "punie: error: --options: agent.tools.1:" in proc.stderr


@pytest.mark.slow
def test_agent_repl_mode_answers_on_stdout(workspace: Path) -> None:
    script = [tool_call_reply(("read_file", {"path": "a.txt"})), text_reply("It says alpha."), text_reply("Bye.")]
    with serve(script) as fake:
        proc = subprocess.run([sys.executable, *_agent_args(fake.url), "--mode", "repl"], input="what?\n\nbye\n",
                              capture_output=True, text=True, cwd=workspace, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "It says alpha.\nBye.\n"
    assert "tool read_file(path='a.txt') -> ok: alpha" in proc.stderr
    assert "punie> " in proc.stderr


@pytest.mark.slow
def test_agent_on_a_terminal_is_interactive(workspace: Path) -> None:
    """`punie agent` with a terminal on stdin (a person running `punie up`) talks instead of speaking ACP."""
    import pty

    master, slave = pty.openpty()
    with serve([text_reply("Hello from the model.")]) as fake:
        proc = subprocess.Popen([sys.executable, *_agent_args(fake.url)], stdin=slave, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=workspace)
        os.close(slave)
        try:
            os.write(master, b"hello\n")
            time.sleep(0.2)
            deadline = time.monotonic() + 30
            while not fake.requests and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            os.write(master, b"\x04")  # Ctrl-D on an empty line: end of input
            out, err = proc.communicate(timeout=240)
        finally:
            reap(proc)
            os.close(master)
    assert proc.returncode == 0, err
    assert out == b"Hello from the model.\n"
    assert b"punie> " in err


STRAY_PRINT_AGENT = """
import sys
from punie.agent import acp_server
from punie.config.models import AgentOptions

original = acp_server.PunieAcpAgent.initialize

async def noisy_initialize(self, *args, **kwargs):
    print("stray print from a library")  # must not corrupt the protocol stream
    return await original(self, *args, **kwargs)

acp_server.PunieAcpAgent.initialize = noisy_initialize
acp_server.serve_stdio(AgentOptions(), sys.argv[1])
"""


@pytest.mark.slow
def test_stray_prints_go_to_stderr_not_into_the_protocol(tmp_path: Path) -> None:
    script = tmp_path / "noisy_agent.py"
    script.write_text(STRAY_PRINT_AGENT)

    async def run() -> tuple[str, bytes]:
        async with spawn_agent_process(lambda _a: RecordingClient(), sys.executable, str(script),
                                       "http://127.0.0.1:1/v1", env=dict(os.environ), cwd=tmp_path) as (conn, proc):
            init = await conn.initialize(protocol_version=1)
            session = await conn.new_session(cwd=str(tmp_path), mcp_servers=[])
            assert session.session_id
            stderr = proc.stderr
            name = init.agent_info.name if init.agent_info else ""
        assert stderr is not None
        return name, await stderr.read()

    name, stderr = asyncio.run(run())
    assert name == "punie"
    assert b"stray print from a library" in stderr


@pytest.mark.slow
def test_acp_with_stdin_and_stdout_redirected_to_files(tmp_path: Path) -> None:
    # An event loop cannot watch regular files: the agent must still speak ACP, then exit on EOF.
    requests = tmp_path / "in.jsonl"
    requests.write_text(json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                                    "params": {"protocolVersion": 1}}) + "\n")
    replies = tmp_path / "out.jsonl"
    with requests.open("rb") as stdin, replies.open("wb") as stdout:
        proc = subprocess.run([sys.executable, *_agent_args("http://127.0.0.1:1/v1"), "--mode", "acp"],
                              stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    (reply,) = [json.loads(line) for line in replies.read_text().splitlines()]
    assert reply["id"] == 0 and reply["result"]["agentInfo"]["name"] == "punie"


@pytest.mark.slow
def test_acp_with_stdin_from_dev_null_exits_cleanly() -> None:
    # A hang at end of input is the failure: the timeout catches it (generous: the agent's start alone took
    # 30-90 s on a loaded 2-core machine).
    proc = subprocess.run([sys.executable, *_agent_args("http://127.0.0.1:1/v1"), "--mode", "acp"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
