"""`punie ask`, `punie serve` and the pure helpers behind them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from punie.agent.target import agent_target, options_json, parse_options, serve_profile, server_base_url
from punie.cli import main
from punie.config.models import ALL_TOOLS, AgentOptions, Permissions, Profile, ResolvedProfile, ServerOptions
from punie.errors import UsageError
from tests.support.fake_openai import serve, text_reply, tool_call_reply, tool_messages
from tests.support.ports import free_port


def _project(tmp_path: Path, url: str, agent: str = "") -> Path:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "app.py").write_text("VERSION = '1.2.3'\n")
    config = tmp_path / "punie.toml"
    config.write_text(f"""
default_profile = "dev"

[profiles.dev]
model = "some/model"

[profiles.dev.server]
url = "{url.removesuffix('/v1')}"

[profiles.dev.agent]
instructions = "You are a test agent."
{agent}
""")
    return config


def _invoke(args: list[str], stdin: str | None = None) -> Any:
    return CliRunner().invoke(main, args, input=stdin, catch_exceptions=False)


def test_ask_prints_tool_calls_on_stderr_and_answer_on_stdout(tmp_path: Path) -> None:
    script = [tool_call_reply(("read_file", {"path": "src/app.py"})), text_reply("Version 1.2.3.")]
    with serve(script) as fake:
        config = _project(tmp_path, fake.url)
        result = _invoke(["--config", str(config), "ask", "Which version?"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "Version 1.2.3.\n"
    assert "tool read_file(path='src/app.py') -> ok: VERSION = '1.2.3'" in result.stderr
    # the workspace is the project directory (the config's folder), not the test's cwd
    assert tool_messages(fake.requests[1])[0]["content"] == "VERSION = '1.2.3'\n"
    assert fake.requests[0]["messages"][0]["content"] == "You are a test agent."
    assert fake.requests[0]["model"] == "default_model"


def test_ask_json_and_set_overrides(tmp_path: Path) -> None:
    with serve([tool_call_reply(("list_files", {})), text_reply("Two files.")]) as fake:
        config = _project(tmp_path, fake.url)
        result = _invoke(["--config", str(config), "ask", "--set", "agent.temperature=0.5", "--format", "json", "List"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["answer"] == "Two files."
    assert [(c["name"], c["status"]) for c in data["tool_calls"]] == [("list_files", "ok")]
    assert fake.requests[0]["temperature"] == 0.5


def test_ask_base_url_overrides_the_profile_server(tmp_path: Path) -> None:
    with serve([text_reply("from the override")]) as fake:
        config = _project(tmp_path, "http://127.0.0.1:1")
        result = _invoke(["--config", str(config), "ask", "--base-url", fake.url, "hi"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "from the override\n"


def test_ask_write_with_ask_permission_is_refused_without_a_terminal(tmp_path: Path) -> None:
    script = [tool_call_reply(("write_file", {"path": "new.txt", "content": "x"})), text_reply("Not written.")]
    with serve(script) as fake:
        config = _project(tmp_path, fake.url)
        result = _invoke(["-v", "--config", str(config), "ask", "write it"])
    assert result.exit_code == 0, result.stderr
    assert not (tmp_path / "new.txt").exists()
    assert "-> denied: permission denied for write_file: stdin is not a terminal" in result.stderr


def test_ask_write_allowed_by_the_profile(tmp_path: Path) -> None:
    script = [tool_call_reply(("write_file", {"path": "new.txt", "content": "x"})), text_reply("Written.")]
    with serve(script) as fake:
        config = _project(tmp_path, fake.url, agent='permissions = { write_file = "allow" }')
        result = _invoke(["--config", str(config), "ask", "write it"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "new.txt").read_text() == "x"


@pytest.mark.slow
def test_ask_unreachable_server_exits_1_with_a_clear_message(tmp_path: Path) -> None:
    port = free_port()
    config = _project(tmp_path, f"http://127.0.0.1:{port}")
    result = _invoke(["--config", str(config), "ask", "hi"])
    assert result.exit_code == 1
    assert f"punie: error: cannot reach the model server at http://127.0.0.1:{port}/v1" in result.stderr
    assert result.stdout == ""


def test_ask_unknown_profile_is_a_config_error(tmp_path: Path) -> None:
    config = _project(tmp_path, "http://127.0.0.1:1")
    result = _invoke(["--config", str(config), "ask", "--profile", "dve", "hi"])
    assert result.exit_code == 2
    assert "dev" in result.stderr  # did you mean


def test_serve_local_url_runs_the_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.txt").write_text("content\n")
    with serve([tool_call_reply(("read_file", {"path": "f.txt"})), text_reply("It holds content.")]) as fake:
        result = _invoke(["serve", "--model", f"local:{fake.url}", "--mode", "repl"], stdin="what is in f.txt?\n")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "It holds content.\n"
    assert fake.requests[0]["model"] == "default_model"
    # Not a terminal: the plain loop (tool lines on stderr, no spinner, no escape sequences).
    assert "tool read_file(path='f.txt') -> ok: content" in result.stderr
    assert "working" not in result.stderr and "\x1b" not in result.stderr + result.stdout


#: Words of the pydantic-ai / Logfire first-run banner.
BANNER_WORDS = ("observability", "logfire", "PYDANTIC_AI_NO_BANNER", "opentelemetry")


def _run_with_stderr_on_a_terminal(args: list[str], cwd: Path, stdin: str = "") -> tuple[int, str, str]:
    """Run punie with stderr on a pseudo-terminal (where a first-run banner is shown) and without the
    variables that hide it (CI, PYTEST_VERSION): exit code, stdout, what reached the terminal."""
    master, slave = os.openpty()
    hiding = ("CI", "PYTEST_VERSION", "PYDANTIC_AI_NO_BANNER")
    env = {k: v for k, v in os.environ.items() if k not in hiding}
    seen: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the last writer closed the terminal
                return
            if not data:
                return
            seen.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc = subprocess.run([sys.executable, "-m", "punie", *args], input=stdin, stdout=subprocess.PIPE,
                              stderr=slave, text=True, env=env, cwd=cwd, timeout=180)
    finally:
        os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    return proc.returncode, proc.stdout, b"".join(seen).decode(errors="replace")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["ask", "serve"])
def test_no_third_party_banner_on_a_terminal(tmp_path: Path, command: str) -> None:
    with serve([text_reply("Plain answer.")]) as fake:
        config = _project(tmp_path, fake.url)
        args = (["--config", str(config), "ask", "hi"] if command == "ask" else
                ["serve", "--model", f"local:{fake.url}", "--mode", "repl"])
        code, out, terminal = _run_with_stderr_on_a_terminal(args, tmp_path, stdin="hi\n")
    assert code == 0, terminal
    assert out == "Plain answer.\n"
    assert fake.requests, "no turn ran: the banner would not have had a chance to show"
    lowered = (out + terminal).lower()
    assert not [w for w in BANNER_WORDS if w.lower() in lowered], terminal


@pytest.mark.parametrize("extra", [["--port", "8081"], ["--adapter", "a"], ["--host", "127.0.0.1"]])
def test_serve_local_url_refuses_server_options(extra: list[str]) -> None:
    result = _invoke(["serve", "--model", "local:http://127.0.0.1:8080/v1", *extra])
    assert result.exit_code == 2
    assert "already running" in result.stderr


def test_serve_local_requires_an_http_url() -> None:
    result = _invoke(["serve", "--model", "local:8080"])
    assert result.exit_code == 2 and "local:http://HOST:PORT" in result.stderr


def test_server_base_url() -> None:
    assert server_base_url(ServerOptions(url="http://10.0.0.2:9000")) == "http://10.0.0.2:9000/v1"
    assert server_base_url(ServerOptions(url="http://h:1/v1")) == "http://h:1/v1"
    assert server_base_url(ServerOptions(host="0.0.0.0", port=8123)) == "http://127.0.0.1:8123/v1"
    assert server_base_url(ServerOptions(host="::1", port=8123)) == "http://[::1]:8123/v1"


def test_agent_target_uses_the_project_dir(tmp_path: Path) -> None:
    resolved = ResolvedProfile(name="p", config_path=str(tmp_path / "punie.toml"),
                               profile=Profile(server=ServerOptions(port=9001), agent=AgentOptions(max_turns=3)))
    target = agent_target(resolved)
    assert (target.base_url, target.base_dir, target.options.max_turns) == (
        "http://127.0.0.1:9001/v1", str(tmp_path), 3)
    assert agent_target(resolved, base_url="http://x:1").base_url == "http://x:1/v1"


def test_parse_options_errors_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="not valid JSON"):
        parse_options("{")
    with pytest.raises(UsageError, match="JSON object"):
        parse_options("[]")
    with pytest.raises(UsageError, match=r"agent\.max_turns"):
        parse_options('{"max_turns": 0}')
    with pytest.raises(UsageError, match=r"agent\.colour"):
        parse_options('{"colour": "red"}')
    assert parse_options(None) == AgentOptions()


@settings(max_examples=50, deadline=None)
@given(
    instructions=st.none() | st.text(max_size=40),
    temperature=st.none() | st.floats(0, 5, allow_nan=False),
    max_tokens=st.none() | st.integers(1, 10_000),
    tools=st.lists(st.sampled_from(ALL_TOOLS), unique=True),
    write=st.sampled_from(["ask", "allow", "deny"]),
    max_turns=st.integers(1, 100),
)
def test_options_json_round_trips(instructions: str | None, temperature: float | None, max_tokens: int | None,
                                  tools: list[str], write: str, max_turns: int) -> None:
    options = AgentOptions(instructions=instructions, temperature=temperature, max_tokens=max_tokens, tools=tools,
                           permissions=Permissions(write_file=write), max_turns=max_turns)
    assert parse_options(options_json(options)) == options


def test_serve_profile_builds_the_launch_profile(tmp_path: Path) -> None:
    resolved = serve_profile("models/tiny", adapter="adapters/a", port=8099)
    assert resolved.profile.model == "models/tiny"
    assert resolved.profile.adapter == "adapters/a"
    assert resolved.profile.server.port == 8099 and resolved.profile.server.url is None
    assert resolved.config_path is None and resolved.name == "serve"

    base = ResolvedProfile(
        name="dev", config_path=str(tmp_path / "punie.toml"),
        profile=Profile(model="old", adapters=["x", "y"], server=ServerOptions(url="http://elsewhere:1", port=7000),
                        agent=AgentOptions(instructions="keep me")),
    )
    served = serve_profile("new", base=base)
    assert served.profile.model == "new" and served.profile.adapter is None and served.profile.adapters == []
    assert served.profile.server.url is None and served.profile.server.port == 7000
    assert served.profile.agent.instructions == "keep me"
    assert served.project_dir == str(tmp_path)


def test_serve_local_url_takes_agent_options_from_a_profile(tmp_path: Path) -> None:
    with serve([text_reply("ok")]) as fake:
        config = _project(tmp_path, "http://127.0.0.1:1", agent='tools = ["search"]')
        result = _invoke(["--config", str(config), "serve", "--profile", "dev", "--model", f"local:{fake.url}",
                          "--mode", "repl"], stdin="hi\n")
    assert result.exit_code == 0, result.stderr
    assert fake.requests[0]["messages"][0]["content"] == "You are a test agent."
    assert [t["function"]["name"] for t in fake.requests[0]["tools"]] == ["search"]


def test_serve_model_dry_run_plans_server_with_adapter(tiny_model: Path, tiny_adapter: Path,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = _invoke(["serve", "--model", str(tiny_model), "--adapter", str(tiny_adapter), "--port", "8199",
                      "--dry-run"])
    assert result.exit_code == 0, result.stderr
    assert "--adapter-path" in result.stdout and str(tiny_adapter) in result.stdout
    assert "--port 8199" in result.stdout
    assert "-m punie agent --base-url http://127.0.0.1:8199/v1" in result.stdout
