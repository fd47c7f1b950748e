"""The real agent process over ACP: a FIFO does not hang it, protected paths are asked for, and
run_command's processes die with the agent (SIGKILL), with a cancelled turn, and with a SIGKILLed `punie up`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from acp import spawn_agent_process, text_block

from punie.agent.permissions import Answer, PermissionRequest
from punie.agent.runner import build_agent, run_turn_sync
from punie.config.models import AgentOptions, Permissions
from tests.agent.test_acp_stdio import RecordingClient, _agent_args
from tests.agent.test_procs import ESCAPES, _kill_leftovers, marked
from tests.support.fake_openai import serve, text_reply, tool_call_reply, tool_messages
from tests.support.launch_helpers import wait_for

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds processes through /proc")


class TimedClient(RecordingClient):
    """Also records when each update arrived."""

    def __init__(self, decision: str = "allow"):
        super().__init__(decision)
        self.times: list[float] = []

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        self.times.append(time.monotonic())
        await super().session_update(session_id, update, **kwargs)


@pytest.mark.slow
def test_read_file_on_a_fifo_answers_at_once_and_the_agent_keeps_serving(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    script = [tool_call_reply(("read_file", {"path": "pipe"})), text_reply("That is a FIFO."),
              text_reply("Still here."), text_reply("New session.")]
    client = TimedClient()

    async def run(url: str) -> list[str]:
        async with spawn_agent_process(lambda _a: client, sys.executable, *_agent_args(url),
                                       env=dict(os.environ), cwd=tmp_path) as (conn, _proc):
            await conn.initialize(protocol_version=1)
            first = await conn.new_session(cwd=str(tmp_path), mcp_servers=[])
            answers = [await asyncio.wait_for(conn.prompt(session_id=first.session_id,
                                                          prompt=[text_block("read pipe")]), 30)]
            answers.append(await asyncio.wait_for(conn.prompt(session_id=first.session_id,
                                                              prompt=[text_block("again")]), 30))
            second = await asyncio.wait_for(conn.new_session(cwd=str(tmp_path), mcp_servers=[]), 30)
            answers.append(await asyncio.wait_for(conn.prompt(session_id=second.session_id,
                                                              prompt=[text_block("hi")]), 30))
            return [a.stop_reason for a in answers]

    with serve(script) as fake:
        stops = asyncio.run(run(fake.url))
    assert stops == ["end_turn", "end_turn", "end_turn"]
    kinds = client.kinds()
    start = kinds.index("tool_call")
    # The call's final update (pending -> in_progress -> failed): the FIFO was refused, at once.
    end = next(i for i, k in enumerate(kinds) if k == "tool_call_update" and client.updates[i].status == "failed")
    assert all(client.updates[i].status == "in_progress" for i in range(start + 1, end) if kinds[i] == "tool_call_update")
    assert client.times[end] - client.times[start] < 1.0
    assert "is a FIFO, not a regular file" in tool_messages(fake.requests[1])[0]["content"]
    assert "Still here." in client.message_text() and "New session." in client.message_text()


@pytest.mark.slow
def test_protected_paths_are_asked_for_even_under_allow(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]\n")
    (tmp_path / "punie.toml").write_text('[profiles.p.agent.permissions]\nrun_command = "deny"\n')
    options = AgentOptions(permissions=Permissions(write_file="allow", run_command="allow"))
    script = [tool_call_reply(("write_file", {"path": ".git/config",
                                              "content": "[core]\n\tfsmonitor = touch pwned\n"})),
              tool_call_reply(("write_file", {"path": "punie.toml",
                                              "content": '[profiles.p.agent.permissions]\nrun_command = "allow"\n'})),
              tool_call_reply(("write_file", {"path": "notes.txt", "content": "fine\n"})),
              text_reply("done")]
    client = RecordingClient("reject")

    async def run(url: str) -> None:
        async with spawn_agent_process(lambda _a: client, sys.executable, *_agent_args(url, options),
                                       env=dict(os.environ), cwd=tmp_path) as (conn, _proc):
            await conn.initialize(protocol_version=1)
            session = await conn.new_session(cwd=str(tmp_path), mcp_servers=[])
            await conn.prompt(session_id=session.session_id, prompt=[text_block("go")])

    with serve(script) as fake:
        asyncio.run(run(fake.url))
    # Asked twice (the two protected paths), refused, nothing written; the ordinary file was not asked for.
    assert [call.raw_input["path"] for call, _ in client.permission_requests] == [".git/config", "punie.toml"]
    assert (tmp_path / ".git" / "config").read_text() == "[core]\n"
    assert "run_command = \"deny\"" in (tmp_path / "punie.toml").read_text()
    assert (tmp_path / "notes.txt").read_text() == "fine\n"
    assert not (tmp_path / "pwned").exists()
    results = [m["content"] for body in fake.requests[1:] for m in tool_messages(body)[-1:]]
    assert "permission denied for write_file of a protected path" in results[0]


@pytest.mark.slow
def test_protected_paths_are_denied_under_deny_and_not_covered_by_always(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]\n")
    asked: list[PermissionRequest] = []

    async def always(request: PermissionRequest) -> Answer:
        asked.append(request)
        return Answer(request.tool_call_id != "protected-refused", always=True,
                      reason="refused")

    script = [tool_call_reply(("write_file", {"path": ".git/config", "content": "x"})), text_reply("no")]
    with serve(script) as fake:
        agent = build_agent(AgentOptions(permissions=Permissions(write_file="deny")), fake.url, base_dir=tmp_path,
                            permission_asker=always)
        result = run_turn_sync(agent, "write")
    assert result.tool_calls[0].status == "denied" and asked == []
    assert (tmp_path / ".git" / "config").read_text() == "[core]\n"

    script = [tool_call_reply(("write_file", {"path": "a.txt", "content": "a"})),
              tool_call_reply(("write_file", {"path": ".git/config", "content": "[core]\n\tbare = false\n"})),
              tool_call_reply(("write_file", {"path": ".git/config", "content": "[core]\n\tbare = true\n"})),
              text_reply("ok")]
    with serve(script) as fake:
        agent = build_agent(AgentOptions(permissions=Permissions(write_file="ask")), fake.url, base_dir=tmp_path,
                            permission_asker=always)
        result = run_turn_sync(agent, "write")
    # "always" for a.txt does not cover .git/config; a yes for .git/config is not remembered either.
    assert [(r.args["path"], r.protected) for r in asked] == [("a.txt", False), (".git/config", True),
                                                              (".git/config", True)]
    assert [c.status for c in result.tool_calls] == ["ok", "ok", "ok"]
    assert (tmp_path / ".git" / "config").read_text() == "[core]\n\tbare = true\n"


# -- run_command processes and the agent's death -------------------------------------------------


def _run_command_options(marker: str) -> AgentOptions:
    return AgentOptions(permissions=Permissions(run_command="allow"), env={"PUNIE_TEST_MARK": marker})


COMMAND = "trap '' TERM; " + ESCAPES + "touch started; sleep 1000"


@pytest.mark.slow
@linux
def test_run_command_children_die_with_a_cancelled_turn_and_with_the_sigkilled_agent(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    call = ("run_command", {"command": COMMAND, "timeout": 600})
    script = [tool_call_reply(call), tool_call_reply(call), text_reply("never")]
    client = RecordingClient()
    stops: list[str] = []

    async def started() -> None:
        while not (tmp_path / "started").exists() or len(marked(marker)) < 7:
            await asyncio.sleep(0.05)
        (tmp_path / "started").unlink()

    async def run(url: str) -> None:
        async with spawn_agent_process(lambda _a: client, sys.executable,
                                       *_agent_args(url, _run_command_options(marker)),
                                       env=dict(os.environ), cwd=tmp_path) as (conn, proc):
            await conn.initialize(protocol_version=1)
            session = await conn.new_session(cwd=str(tmp_path), mcp_servers=[])
            # 1. session/cancel while the command runs: the turn answers "cancelled" with nothing left.
            turn = asyncio.ensure_future(conn.prompt(session_id=session.session_id, prompt=[text_block("go")]))
            await started()
            await conn.cancel(session_id=session.session_id)
            stops.append((await asyncio.wait_for(turn, 30)).stop_reason)
            assert not marked(marker), "left behind by a cancelled turn"
            # 2. The agent is SIGKILLed while the command runs.
            turn = asyncio.ensure_future(conn.prompt(session_id=session.session_id, prompt=[text_block("again")]))
            await started()
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            turn.cancel()

    try:
        with serve(script) as fake:
            try:
                asyncio.run(asyncio.wait_for(run(fake.url), 90))
            except (ConnectionError, BrokenPipeError, asyncio.CancelledError):
                pass
        assert stops == ["cancelled"]
        assert wait_for(lambda: not marked(marker), timeout=60), marked(marker)
    finally:
        _kill_leftovers(marker)


@pytest.mark.slow
@linux
def test_run_command_children_die_when_punie_up_is_sigkilled(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    script = [text_reply("ready"), tool_call_reply(("run_command", {"command": COMMAND, "timeout": 600})),
              text_reply("never")]
    client = RecordingClient()

    async def run(url: str) -> None:
        profile = {"server": {"url": url.removesuffix("/v1")}, "agent": _run_command_options(marker).model_dump()}
        (tmp_path / "punie.toml").write_text(f"[profiles.t]\nserver = {_toml(profile['server'])}\n"
                                             f"agent = {_toml(profile['agent'])}\n")
        async with spawn_agent_process(lambda _a: client, sys.executable, "-m", "punie", "up", "t", "--no-check",
                                       env=dict(os.environ), cwd=tmp_path) as (conn, proc):
            await asyncio.wait_for(conn.initialize(protocol_version=1), 60)
            session = await conn.new_session(cwd=str(tmp_path), mcp_servers=[])
            turn = asyncio.ensure_future(conn.prompt(session_id=session.session_id, prompt=[text_block("go")]))
            while not (tmp_path / "started").exists() or len(marked(marker)) < 7:
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGKILL)  # the supervisor, not the agent
            await proc.wait()
            turn.cancel()

    try:
        with serve(script) as fake:
            try:
                asyncio.run(asyncio.wait_for(run(fake.url), 90))
            except (ConnectionError, BrokenPipeError, asyncio.CancelledError):
                pass
            assert wait_for(lambda: not marked(marker), timeout=60), marked(marker)
    finally:
        _kill_leftovers(marker)


def _toml(value: Any) -> str:
    """An inline TOML table (JSON scalars are valid TOML for what these tests write)."""
    if isinstance(value, dict):
        items = [f"{k} = {_toml(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)
