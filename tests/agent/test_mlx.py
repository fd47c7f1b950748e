"""Integration: the agent against a real mlx_lm.server on a tiny offline model."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from punie.agent.runner import build_agent, run_turn_sync
from punie.config.models import AgentOptions
from tests.support.ports import free_port
from tests.support.tiny import mlx_env

pytestmark = [pytest.mark.slow, pytest.mark.mlx]


@pytest.fixture(scope="module")
def mlx_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real mlx_lm.server on the tiny model; yields its OpenAI base URL once a completion works."""
    tmp_path = tmp_path_factory.mktemp("mlx-server")
    port = free_port()
    hub = tmp_path / "hub"
    hub.mkdir()
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlx_lm", "server", "--model", str(tiny_model), "--host", "127.0.0.1",
         "--port", str(port)],
        env=mlx_env({"HF_HUB_CACHE": str(hub)}), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                r = httpx.post(f"{url}/chat/completions", timeout=10, json={
                    "model": "default_model", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]})
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlx_lm.server did not answer a 1-token completion in 60 s"
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()  # SIGTERM: mlx_lm.server exits at once
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_agent_turn_against_real_mlx_server(mlx_server: str, tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("print('hello world')\n")
    agent = build_agent(AgentOptions(max_tokens=16, temperature=0.0, max_turns=4), mlx_server, base_dir=tmp_path)
    result = run_turn_sync(agent, "What is the capital of France?")
    # The tiny model's weights are random: assert the shape of the turn, not the words. Its answer
    # may be nothing but chat-template tags, which the agent removes (so it can be empty).
    assert isinstance(result.answer, str) and "<|im_" not in result.answer
    assert 1 <= result.requests <= 4
    assert all(call.status in ("ok", "error", "denied", "invalid") for call in result.tool_calls)

    proc = subprocess.run(
        [sys.executable, "-m", "punie", "ask", "--base-url", mlx_server, "--format", "json", "Say hello."],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert isinstance(data["answer"], str) and "<|im_" not in data["answer"]
    assert isinstance(data["tool_calls"], list) and data["requests"] >= 1


def test_acp_turn_streams_from_real_mlx_server(mlx_server: str, tmp_path: Path) -> None:
    import asyncio
    import os

    from acp import spawn_agent_process, text_block

    updates: list[object] = []

    class Client:
        async def session_update(self, session_id: str, update: object, **kwargs: object) -> None:
            updates.append(update)

    options = AgentOptions(max_tokens=16, temperature=0.0, max_turns=4).model_dump_json()

    async def run() -> str:
        async with spawn_agent_process(lambda _a: Client(), sys.executable, "-m", "punie", "agent", "--base-url",
                                       mlx_server, "--options", options, env=dict(os.environ), cwd=tmp_path) as (
                conn, _proc):
            await conn.initialize(protocol_version=1)
            session = await conn.new_session(cwd=str(tmp_path), mcp_servers=[])
            response = await conn.prompt(session_id=session.session_id, prompt=[text_block("Hello?")])
            return response.stop_reason

    assert asyncio.run(run()) == "end_turn"
    kinds = {getattr(u, "session_update", None) for u in updates}
    assert "agent_message_chunk" in kinds
    errors = [u for u in updates if "punie: error" in str(getattr(getattr(u, "content", None), "text", ""))]
    assert errors == []


def test_serve_starts_mlx_server_with_adapter_and_speaks_acp(tiny_model: Path, tiny_adapter: Path,
                                                             tmp_path: Path) -> None:
    """`punie serve --model M --adapter A --port P`: supervisor starts mlx_lm.server, then the ACP agent."""
    import asyncio

    from acp import spawn_agent_process, text_block

    updates: list[object] = []

    class Client:
        async def session_update(self, session_id: str, update: object, **kwargs: object) -> None:
            updates.append(update)

    hub = tmp_path / "hub"
    hub.mkdir()
    env = mlx_env({"HF_HUB_CACHE": str(hub)})
    port = free_port()

    async def run() -> str:
        async with spawn_agent_process(
            lambda _a: Client(), sys.executable, "-m", "punie", "serve", "--model", str(tiny_model),
            "--adapter", str(tiny_adapter), "--port", str(port), env=env, cwd=tmp_path,
        ) as (conn, _proc):
            await asyncio.wait_for(conn.initialize(protocol_version=1), 120)
            session = await conn.new_session(cwd=str(tmp_path), mcp_servers=[])
            response = await asyncio.wait_for(
                conn.prompt(session_id=session.session_id, prompt=[text_block("Hello?")]), 120)
            return response.stop_reason

    assert asyncio.run(run()) == "end_turn"
    texts = [getattr(getattr(u, "content", None), "text", "") for u in updates]
    assert not any("punie: error" in t for t in texts)
    assert any(t for t in texts)
