"""`punie up` on the command line: dry run for CI, failures rendered with exit codes."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from punie.cli import main
from tests.support.launch_helpers import FAKE_SERVER, AcpPipe, alive, free_port, pid_in, reap, stderr_collector


def _config(tmp_path: Path, body: str) -> Path:
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "config.json").write_text('{"model_type": "qwen2"}')
    path = tmp_path / "punie.toml"
    path.write_text(body)
    return path


DEMO = """
[profiles.demo]
model = "model"
[profiles.demo.server]
port = 8123
temperature = 0.2
extra_args = ["--log-level", "DEBUG"]
[profiles.demo.agent]
max_turns = 5
"""


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path, DEMO)
    result = CliRunner().invoke(main, ["--config", str(config), "up", "demo", "--dry-run", "--no-check"])
    assert result.exit_code == 0, result.output
    assert f"--model {tmp_path / 'model'}" in result.stdout
    assert "--port 8123 --temp 0.2 --log-level DEBUG" in result.stdout
    assert "punie agent --base-url http://127.0.0.1:8123/v1" in result.stdout
    assert not (tmp_path / ".punie" / "logs").exists()


def test_dry_run_json_is_the_plan(tmp_path: Path) -> None:
    config = _config(tmp_path, DEMO)
    result = CliRunner().invoke(
        main, ["--config", str(config), "up", "demo", "--dry-run", "--no-check", "--format", "json",
               "--set", "server.port=9001"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["port"] == 9001 and plan["external"] is False
    argv = plan["server_argv"]
    assert argv[1:4] == ["-m", "mlx_lm", "server"] and argv[argv.index("--port") + 1] == "9001"
    options = json.loads(plan["agent_argv"][plan["agent_argv"].index("--options") + 1])
    assert options["max_turns"] == 5


def test_unknown_profile_is_a_usage_error(tmp_path: Path) -> None:
    config = _config(tmp_path, DEMO)
    result = CliRunner().invoke(main, ["--config", str(config), "up", "dmeo", "--dry-run"])
    assert result.exit_code == 2
    assert "demo" in result.output  # did you mean


def test_missing_model_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path, '[profiles.x]\nmodel = "nowhere"\n')
    result = CliRunner().invoke(main, ["--config", str(config), "up", "x", "--dry-run", "--no-check"])
    assert result.exit_code != 0
    assert "nowhere" in result.output


@pytest.mark.slow
def test_busy_port_exits_1_naming_the_cause(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = _config(tmp_path, DEMO)
        proc = subprocess.run(
            [sys.executable, "-m", "punie", "--config", str(config), "up", "demo", "--no-check",
             "--set", f"server.port={port}"],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    assert f"punie: error: port {port} on 127.0.0.1 is already in use" in proc.stderr
    assert "hint: stop the other server" in proc.stderr
    assert proc.stdout == ""  # stdout belongs to the agent protocol


@pytest.mark.slow
def test_external_server_with_the_real_agent_answers_over_acp_then_stops_on_sigint(tmp_path: Path) -> None:
    port = free_port()
    requests = tmp_path / "requests.jsonl"
    server = subprocess.Popen([sys.executable, FAKE_SERVER, "--port", str(port), "--requests", str(requests)],
                              stdout=subprocess.DEVNULL)
    try:
        # The seed's manual pattern: a running server, so no model to name and nothing to start.
        config = _config(tmp_path, f'[profiles.ext.server]\n'
                                   f'url = "http://127.0.0.1:{port}"\nready_timeout = 10\n')
        proc = subprocess.Popen(
            [sys.executable, "-m", "punie", "--config", str(config), "up", "ext"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        lines, reader = stderr_collector(proc)
        try:
            acp = AcpPipe(proc)
            assert acp.prompt(str(tmp_path), "What is the capital of France?")["stopReason"] == "end_turn"
            assert "".join(acp.chunks) == "The capital of France is Paris."
            agent_pid = pid_in(lines, "the agent")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=120) == 0, "".join(lines)
        finally:
            reap(proc)
        reader.join(timeout=5)
        assert "using the running server" in "".join(lines)
        assert not alive(agent_pid)
        assert server.poll() is None  # an external server is not ours to stop
        # The probe and every agent request keep the adapter: no model, or "default_model".
        bodies = [json.loads(x) for x in requests.read_text().splitlines()]
        assert len(bodies) >= 2 and "model" not in bodies[0]
        assert all(body.get("model", "default_model") == "default_model" for body in bodies)
    finally:
        server.kill()
        server.wait()


def test_check_errors_refuse_the_launch_and_no_check_skips_them(
    tmp_path: Path, tiny_model_wide: Path, tiny_adapter: Path
) -> None:
    import pytest

    pytest.importorskip("punie.checks", reason="punie check is written by another helper")
    port = free_port()
    config = _config(tmp_path, f'[profiles.bad]\nmodel = {json.dumps(str(tiny_model_wide))}\n'
                               f'adapter = {json.dumps(str(tiny_adapter))}\n[profiles.bad.server]\nport = {port}\n')
    result = CliRunner().invoke(main, ["--config", str(config), "up", "bad"])
    assert result.exit_code == 1, result.output
    assert "not launching" in result.output and "--no-check" in result.output
    assert not (tmp_path / ".punie" / "logs" / "bad-server.log").exists()  # nothing was started
    skipped = CliRunner().invoke(main, ["--config", str(config), "up", "bad", "--dry-run", "--no-check"])
    assert skipped.exit_code == 0, skipped.output
