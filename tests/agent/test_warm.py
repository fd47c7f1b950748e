"""Warm start (punie.agent.warm): the server's prompt cache holds the agent's prefix before the first question.

Against the scripted server: the warm request is the agent's own first request (same system
prompt, tools and model field), with one token; the first turn waits for an unfinished warm-up.
Against a real mlx_lm.server on the tiny model: after the warm-up the first real question's
prompt is served from the cache up to the user turn (``usage.prompt_tokens_details.cached_tokens``).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from punie.agent import warm
from punie.agent.runner import build_agent, run_turn
from punie.config.models import AgentOptions
from tests.support import tiny
from tests.support.fake_openai import serve, text_reply
from tests.support.ports import free_port


def _builder(url: str, tmp_path: Path, **options: object):  # -> a build(http_client) function
    opts = AgentOptions(**options)  # type: ignore[arg-type]
    return lambda client=None: build_agent(opts, url, base_dir=tmp_path, http_client=client)


def test_the_warm_request_is_the_agents_own_first_request(tmp_path: Path) -> None:
    with serve([text_reply("."), text_reply("Paris.")]) as fake:
        build = _builder(fake.url, tmp_path, instructions="Be brief.", tools=["read_file", "search"])
        assert warm.warm(fake.url, build, run_turn) is not None
        asyncio.run(run_turn(build(), "What is the capital of France?"))
    warmed, real = fake.requests
    assert warmed["max_tokens"] == 1 and not warmed.get("stream")
    assert warmed["tools"] == real["tools"] and [t["function"]["name"] for t in real["tools"]] == ["read_file", "search"]
    assert warmed.get("model") == real.get("model")
    assert warmed["messages"][:-1] == real["messages"][:-1]  # system prompt: the same
    assert warmed["messages"][0] == {"role": "system", "content": "Be brief."}
    assert warmed["messages"][-1]["role"] == real["messages"][-1]["role"] == "user"


def test_the_warm_request_is_a_streamed_turns_request_but_for_its_length(tmp_path: Path) -> None:
    """The terminal mode and ACP stream their turns: the warm request is that request, one token, not streamed."""

    async def shown(text: str) -> None:
        pass

    with serve([text_reply("."), text_reply("Paris.")]) as fake:
        build = _builder(fake.url, tmp_path, tools=["read_file"])
        assert warm.warm(fake.url, build, run_turn) is not None
        asyncio.run(run_turn(build(), "What is the capital of France?", on_text=shown))
    warmed, real = fake.requests
    assert real.get("stream") is True
    differ = {"stream", "stream_options", "max_tokens", "messages"}
    assert {k: v for k, v in warmed.items() if k not in differ} == {k: v for k, v in real.items() if k not in differ}
    assert warmed["messages"][:-1] == real["messages"][:-1] and warmed["max_tokens"] == 1


def test_the_first_turn_waits_for_the_warm_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release, order = threading.Event(), []

    def slow(body: dict) -> object:  # the warm request: held until released
        order.append("warm")
        release.wait(30)
        return text_reply(".")

    def answer(body: dict) -> object:
        order.append("turn")
        return text_reply("Paris.")

    monkeypatch.delenv("PUNIE_WARM", raising=False)
    with serve([slow, answer]) as fake:
        build = _builder(fake.url, tmp_path)
        thread = warm.start(fake.url, build, run_turn)
        assert thread is not None
        turn = threading.Thread(target=lambda: asyncio.run(run_turn(build(), "capital of France?")))
        turn.start()
        deadline = time.monotonic() + 30
        while "warm" not in order and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # the turn had time to send, had it not waited
        assert order == ["warm"]
        release.set()
        turn.join(30)
        thread.join(30)
    assert order == ["warm", "turn"]


def test_punie_warm_off_sends_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUNIE_WARM", "off")
    with serve([]) as fake:
        assert warm.start(fake.url, _builder(fake.url, tmp_path), run_turn) is None
    assert fake.requests == []


@pytest.mark.slow
@pytest.mark.mlx
def test_after_the_warm_up_the_first_question_is_served_from_the_cache(tiny_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("mlx_lm")
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlx_lm", "server", "--model", str(tiny_model),
                             "--port", str(port), "--max-tokens", "8"],
                            stdout=log, stderr=subprocess.STDOUT, env=tiny.mlx_env())
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.post(url + "/completions", json={"prompt": "a", "max_tokens": 1}, timeout=30).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.2)
        build = _builder(url, tmp_path)
        body = warm.warm_request(build, run_turn)
        question = "What is the capital of France?"
        real = {**body, "max_tokens": 2, "messages": [*body["messages"][:-1], {"role": "user", "content": question}]}

        def cached_of(request: dict) -> tuple[int, int]:
            usage = httpx.post(url + "/chat/completions", json=request, timeout=120).json()["usage"]
            return usage["prompt_tokens_details"]["cached_tokens"], usage["prompt_tokens"]

        other = {**real, "messages": [{"role": "system", "content": "Another prompt."}, *real["messages"][1:]]}
        cold, total = cached_of(other)  # the control: another system prompt shares (almost) nothing
        assert cold < total // 10, (cold, total)
        assert warm.warm(url, build, run_turn) is not None
        cached, total = cached_of(real)
        # everything up to the user's words (the system prompt, the tools, the user turn's opening)
        assert cached >= total - len(question) - 8, (cached, total)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_punie_up_warms_its_own_server_only(tmp_path: Path, tiny_model: Path) -> None:
    """The agent `punie up` starts warms the server it started; an external server.url is left alone."""
    from punie.config import load_profile
    from punie.launch import prepare

    (tmp_path / "punie.toml").write_text(f'[profiles.t]\nmodel = "{tiny_model}"\n'
                                         '[profiles.x.server]\nurl = "http://127.0.0.1:9"\n')
    own = prepare(load_profile("t", config=tmp_path / "punie.toml"), check=False, provision=False)
    assert own.agent_argv[-1] == "--warm"
    external = prepare(load_profile("x", config=tmp_path / "punie.toml"), check=False, provision=False)
    assert "--warm" not in external.agent_argv
