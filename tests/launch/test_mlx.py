"""`punie up` on a real mlx_lm.server with the tiny offline model and a real LoRA adapter."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from punie.config.models import Profile, ResolvedProfile, ServerOptions
from punie.launch import LaunchFailed, run_up
from tests.support.launch_helpers import AcpPipe, alive, free_port, pid_in, port_free, reap, stderr_collector

pytestmark = [pytest.mark.slow, pytest.mark.mlx]
pytest.importorskip("mlx_lm")


def _write_config(tmp_path: Path, model: Path, adapter: Path, port: int) -> Path:
    config = tmp_path / "punie.toml"
    config.write_text(
        "[profiles.tiny]\n"
        f"model = {json.dumps(str(model))}\nadapter = {json.dumps(str(adapter))}\n"
        "[profiles.tiny.server]\n"
        f"port = {port}\nready_timeout = 60\nmax_tokens = 8\n"
        "[profiles.tiny.agent]\nmax_tokens = 8\nmax_turns = 2\n"
    )
    return config


def test_mismatched_adapter_fails_fast_on_the_real_server(
    tmp_path: Path, tiny_model_wide: Path, tiny_adapter: Path
) -> None:
    resolved = ResolvedProfile(
        name="bad", config_path=str(tmp_path / "punie.toml"),
        profile=Profile(model=str(tiny_model_wide), adapter=str(tiny_adapter),
                        server=ServerOptions(port=free_port(), ready_timeout=200)),
    )
    lines: list[str] = []
    start = time.monotonic()
    with pytest.raises(LaunchFailed) as info:
        run_up(resolved, check=False, sink=lines.append, agent_argv=[sys.executable, "-c", "pass"])
    assert time.monotonic() - start < 100  # not the 200 s ready_timeout
    assert info.value.reason == "adapter-failed"
    assert "does not match model parameter shape" in info.value.message
    assert port_free(resolved.profile.server.port)
    pid = int(re.search(r"mlx_lm.server \(pid (\d+)\)", "\n".join(lines)).group(1))
    assert not alive(pid)


def test_punie_up_serves_an_acp_client_then_stops_on_sigint(
    tmp_path: Path, tiny_model: Path, tiny_adapter: Path
) -> None:
    port = free_port()
    config = _write_config(tmp_path, tiny_model, tiny_adapter, port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "punie", "--config", str(config), "up", "tiny"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    lines, reader = stderr_collector(proc)
    try:
        acp = AcpPipe(proc)
        result = acp.prompt(str(tmp_path), "What is the capital of France?")
        assert result["stopReason"] in {"end_turn", "max_tokens", "max_turn_requests"}
        assert acp.chunks  # the tiny model's (random) answer came back through the agent
        server_pid, agent_pid = pid_in(lines, "mlx_lm.server"), pid_in(lines, "the agent")
        assert alive(server_pid) and alive(agent_pid)
        assert "--adapter-path " + str(tiny_adapter) in (tmp_path / ".punie" / "logs" / "tiny-server.log").read_text()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0, "".join(lines)
    finally:
        reap(proc)
    reader.join(timeout=5)
    assert "stopped by SIGINT" in "".join(lines)
    assert not alive(server_pid) and not alive(agent_pid)
    assert port_free(port)
