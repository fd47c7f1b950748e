"""The two tool backends behave the same: one behaviour table, run through the real agent
(``python -m punie agent`` over stdio) once against the disk and local processes, once against
an ACP client that serves ``fs/*`` and ``terminal/*`` itself; the model is the scripted fake
OpenAI server, so each row's tool result is exactly what the model was told.

The client here is deliberately lax (it ignores ``output_byte_limit`` and sends whole files):
the limits are the agent's to apply (:mod:`punie.agent.limits`), whoever does the work.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from acp import spawn_agent_process, text_block
from acp.schema import (
    AllowedOutcome,
    ClientCapabilities,
    CreateTerminalResponse,
    FileSystemCapabilities,
    KillTerminalResponse,
    ReadTextFileResponse,
    ReleaseTerminalResponse,
    RequestPermissionResponse,
    TerminalExitStatus,
    TerminalOutputResponse,
    WaitForTerminalExitResponse,
    WriteTextFileResponse,
)

from punie.agent import limits
from punie.config.models import AgentOptions, Permissions
from tests.support.fake_openai import serve, text_reply, tool_call_reply, tool_messages

pytestmark = pytest.mark.slow

MAX_READ_BYTES = 1000

#: (name, tool, arguments, what the result must contain): the same for both backends.
TABLE: list[tuple[str, str, dict[str, Any], str]] = [
    ("read within the cap", "read_file", {"path": "a.txt"}, "alpha\n"),
    ("read over the byte cap", "read_file", {"path": "big.txt"},
     f"[... truncated: read {MAX_READ_BYTES} bytes of a 5000-byte file (agent.max_read_bytes)]"),
    ("read a missing file", "read_file", {"path": "missing.txt"}, "no such file"),
    ("read outside the workspace", "read_file", {"path": "../outside.txt"}, "outside the workspace"),
    ("read through a symlink out", "read_file", {"path": "out/outside.txt"}, "outside the workspace"),
    ("read a FIFO", "read_file", {"path": "pipe"}, "FIFO"),
    ("write outside the workspace", "write_file", {"path": "../evil.txt", "content": "x"}, "outside the workspace"),
    ("write a new file", "write_file", {"path": "new/made.txt", "content": "héllo"}, "wrote 6 bytes to new/made.txt"),
    ("list", "list_files", {"path": "."}, "big.txt"),
    ("search", "search", {"pattern": "alpha"}, "a.txt:1: alpha"),
    ("empty command", "run_command", {"command": "   "}, "error: command must not be empty"),
    ("command with a NUL", "run_command", {"command": "echo a\x00b"}, "error: command must not contain a NUL"),
    ("timeout below the clamp", "run_command", {"command": "sleep 30", "timeout": 0},
     "error: timed out after 1 s (process killed)"),
    ("timeout above the clamp", "run_command", {"command": "echo ok", "timeout": 1e9}, "exit code 0\nok"),
    ("exit code", "run_command", {"command": "echo out; exit 3"}, "exit code 3\nout"),
    ("killed by a signal", "run_command", {"command": "kill -9 $$"}, "exit code 137\n"),
    ("output over the cap", "run_command", {"command": "seq 1 20000"}, "bytes omitted ...]\n"),
]


class Ide:
    """The IDE side: answers permission requests with allow; with ``serves`` also reads and
    writes files and runs commands in its own terminals (by name, as an editor does)."""

    def __init__(self, serves: bool):
        self.serves = serves
        self.calls: list[str] = []
        self._terminals: dict[str, asyncio.subprocess.Process] = {}
        self._output: dict[str, bytes] = {}
        self._pumps: dict[str, asyncio.Future[None]] = {}
        self._ids = itertools.count(1)

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        pass

    async def request_permission(self, session_id: str, tool_call: Any, options: list[Any],
                                 **kwargs: Any) -> RequestPermissionResponse:
        return RequestPermissionResponse(outcome=AllowedOutcome(outcome="selected", option_id="allow"))

    async def read_text_file(self, session_id: str, path: str, **kwargs: Any) -> ReadTextFileResponse:
        self.calls.append("read")
        return ReadTextFileResponse(content=Path(path).read_text())  # the whole file: no limit honoured

    async def write_text_file(self, session_id: str, path: str, content: str, **kwargs: Any) -> WriteTextFileResponse:
        self.calls.append("write")
        Path(path).write_text(content)
        return WriteTextFileResponse()

    async def create_terminal(self, session_id: str, command: str, args: list[str] | None = None,
                              env: Any = None, cwd: str | None = None, output_byte_limit: int | None = None,
                              **kwargs: Any) -> CreateTerminalResponse:
        self.calls.append("terminal")
        terminal_id = f"t{next(self._ids)}"
        proc = await asyncio.create_subprocess_exec(command, *(args or []), cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                    start_new_session=True)
        self._terminals[terminal_id] = proc
        self._output[terminal_id] = b""

        async def pump() -> None:
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(65536):
                self._output[terminal_id] += chunk  # output_byte_limit ignored: the agent must cap

        self._pumps[terminal_id] = asyncio.ensure_future(pump())
        return CreateTerminalResponse(terminal_id=terminal_id)

    async def wait_for_terminal_exit(self, session_id: str, terminal_id: str,
                                     **kwargs: Any) -> WaitForTerminalExitResponse:
        code = await self._terminals[terminal_id].wait()
        return WaitForTerminalExitResponse(exit_code=code if code >= 0 else None,
                                           signal=signal.Signals(-code).name if code < 0 else None)

    async def terminal_output(self, session_id: str, terminal_id: str, **kwargs: Any) -> TerminalOutputResponse:
        proc = self._terminals[terminal_id]
        if proc.returncode is not None:
            await asyncio.wait_for(self._pumps[terminal_id], 30)  # the last of the pipe
        status = None if proc.returncode is None else TerminalExitStatus(exit_code=proc.returncode)
        return TerminalOutputResponse(output=self._output[terminal_id].decode(), truncated=False, exit_status=status)

    async def kill_terminal(self, session_id: str, terminal_id: str, **kwargs: Any) -> KillTerminalResponse:
        proc = self._terminals[terminal_id]
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        return KillTerminalResponse()

    async def release_terminal(self, session_id: str, terminal_id: str, **kwargs: Any) -> ReleaseTerminalResponse:
        await self.kill_terminal(session_id, terminal_id)
        self._terminals.pop(terminal_id)
        return ReleaseTerminalResponse()


def _workspace(base: Path) -> Path:
    root = base / "project"
    root.mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "big.txt").write_text("x" * 5000)
    (base / "outside.txt").write_text("outside secret\n")
    (root / "out").symlink_to(base)
    os.mkfifo(root / "pipe")
    return root


def _run_table(base: Path, ide: Ide) -> list[str]:
    """Each row's tool result, as the model saw it (the workspace written ``<root>``, its parent ``<base>``)."""
    root = _workspace(base)
    options = AgentOptions(max_read_bytes=MAX_READ_BYTES,
                           permissions=Permissions(write_file="allow", run_command="allow"))
    script = [tool_call_reply((tool, args)) for _, tool, args, _ in TABLE] + [text_reply("done")]
    caps = ClientCapabilities(fs=FileSystemCapabilities(read_text_file=True, write_text_file=True), terminal=True)

    async def run(url: str) -> str:
        argv = ["-m", "punie", "agent", "--base-url", url, "--options", options.model_dump_json()]
        async with spawn_agent_process(lambda _a: ide, sys.executable, *argv, env=dict(os.environ),
                                       cwd=root) as (conn, _proc):
            await conn.initialize(protocol_version=1, client_capabilities=caps if ide.serves else None)
            session = await conn.new_session(cwd=str(root), mcp_servers=[])
            answer = await asyncio.wait_for(conn.prompt(session_id=session.session_id,
                                                        prompt=[text_block("go")]), 300)
            return answer.stop_reason

    with serve(script) as fake:
        assert asyncio.run(run(fake.url)) == "end_turn"
    assert (root / "new" / "made.txt").read_text() == "héllo"
    results = [m["content"] for m in tool_messages(fake.requests[-1])]
    assert len(results) == len(TABLE)
    return [r.replace(str(root), "<root>").replace(str(base), "<base>") for r in results]


def test_the_disk_and_the_client_backends_give_the_same_results(tmp_path: Path) -> None:
    disk = _run_table(tmp_path / "disk", Ide(serves=False))
    ide = Ide(serves=True)
    client = _run_table(tmp_path / "client", ide)
    assert ide.calls.count("read") == 2 and ide.calls.count("write") == 1  # the rest was refused before
    assert ide.calls.count("terminal") == 5  # only checked commands reach the client's terminal
    for (name, _tool, _args, expected), on_disk, on_client in zip(TABLE, disk, client, strict=True):
        assert expected in on_disk, (name, on_disk)
        assert on_client == on_disk, name
    capped = disk[[row[0] for row in TABLE].index("output over the cap")]
    assert len(capped.encode()) < limits.MAX_COMMAND_OUTPUT + 200 and capped.rstrip().endswith("20000")
