"""The first shipped tool-calling adapter (adapters/tool-calling-v1, profile `tool-calling-v1`) and its dataset.

The adapter is the one trained on the shipped dataset, for the demo model; the dataset does
not contain the eval prompts; `punie check tool-calling` passes against the real SmolLM2; and
the measurement that the adapter raises the demo model's eval score is made by
tests/api/test_readme.py (the README's Python example, checked against `punie eval`); a slow test runs the agent with the adapter and sees it call list_files.
`bench/demo_adapter.py` also retrains the adapter and times it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from punie.adapters.registry import read_meta
from punie.cli import main
from punie.config import load_profile
from punie.training.dataset import dataset_hash, validate_dataset
from punie.training.suite import load_suite
from tests.support.launch_helpers import reap
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "punie.toml"
ADAPTER = REPO / "adapters" / "tool-calling-v1"
DATA = REPO / "src" / "punie" / "data" / "datasets" / "tool-calling"
MODEL = "builtin:smollm2-135m-instruct"


def test_shipped_adapter_files_are_small_and_portable() -> None:
    files = {p.name: p.stat().st_size for p in ADAPTER.iterdir()}
    assert set(files) == {"adapter_config.json", "adapters.safetensors", "punie-adapter.json"}
    assert sum(files.values()) < 5 * 1024 * 1024
    config = json.loads((ADAPTER / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["model"] == MODEL  # not a path of the machine it was trained on
    assert config["fine_tune_type"] == "lora" and config["num_layers"] <= 30


def test_shipped_adapter_was_trained_on_the_shipped_dataset() -> None:
    meta = read_meta(ADAPTER)
    assert meta is not None
    assert meta.base_model == MODEL
    assert meta.dataset_hash == dataset_hash(DATA) == validate_dataset(DATA).hash


def test_recorded_eval_beats_the_baseline() -> None:
    meta = read_meta(ADAPTER)
    assert meta is not None and meta.eval is not None
    suite = meta.eval["suites"]["tool-calling"]
    # v1's recorded eval was made on the first 10 cases; the suite has grown around them since.
    assert set(suite["cases"]) <= {c.id for c in load_suite("tool-calling").cases}
    assert meta.score == suite["score"] > suite["baseline_score"]


def test_dataset_does_not_contain_the_eval_prompts() -> None:
    prompts = {c.prompt.strip().lower() for c in load_suite("tool-calling").cases}
    info = validate_dataset(DATA)
    assert info.splits["train"].rows <= 200
    for split in ("train", "valid"):
        for line in (DATA / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            users = [m["content"].strip().lower() for m in json.loads(line)["messages"] if m["role"] == "user"]
            assert not prompts & set(users), f"{split}.jsonl repeats an eval prompt"


def test_tool_calling_v1_profile_extends_demo_with_the_adapter() -> None:
    resolved = load_profile("tool-calling-v1", config=CONFIG)
    assert resolved.profile.model == MODEL
    assert resolved.profile.adapter == "tool-calling-v1"
    assert resolved.profile.server.port != load_profile("demo", config=CONFIG).profile.server.port


@pytest.mark.slow
@pytest.mark.mlx
def test_punie_check_passes_for_tool_calling_on_the_real_model() -> None:
    """Provisions SmolLM2 once per session (PUNIE_CACHE_DIR is a session temp dir), then checks
    the adapter's tensor shapes against the 4-bit model's headers."""
    from punie.weights.builtin import ensure_builtin

    ensure_builtin("smollm2-135m-instruct")
    port = free_port()  # the check includes "port is free": do not depend on 8083 being unused
    args = ["--config", str(CONFIG), "--set", f"server.port={port}", "check", "tool-calling-v1", "--format", "json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True
    (profile,) = report["profiles"]
    assert Path(profile["adapter_path"]) == ADAPTER
    assert any(line.startswith("adapter:") and "fits the model" in line for line in profile["passed"])


@pytest.mark.slow
@pytest.mark.mlx
def test_the_agent_with_tool_calling_calls_list_files(tmp_path: Path) -> None:
    """End to end, as `punie ask "List the files in the adapters directory." --profile tool-calling`
    runs it: mlx_lm.server serving SmolLM2 with the shipped adapter (the tool-aware chat template
    makes mlx_lm parse the model's <tool_call> into OpenAI tool_calls), the pydantic-ai agent
    calling the real list_files tool in a workspace that has an adapters/ directory."""
    from punie.agent.runner import build_agent, run_turn_sync
    from punie.training.evaluate import serve
    from punie.weights.builtin import ensure_builtin

    ensure_builtin("smollm2-135m-instruct")
    (tmp_path / "adapters" / "tool-calling-v1").mkdir(parents=True)
    (tmp_path / "adapters" / "README.md").write_text("adapters\n")
    resolved = load_profile("tool-calling-v1", config=CONFIG, overrides=(f"server.port={free_port()}",))
    options = resolved.profile.agent.model_copy(update={"max_turns": 3, "max_tokens": 64, "temperature": 0.0})
    (tmp_path / "logs").mkdir()
    with serve(resolved, log_dir=tmp_path / "logs") as (base_url, adapter):
        assert adapter is not None and Path(adapter) == ADAPTER
        agent = build_agent(options, base_url, base_dir=tmp_path)
        result = run_turn_sync(agent, "List the files in the adapters directory.")
    calls = [(c.name, c.args, c.status) for c in result.tool_calls]
    assert calls and calls[0][0] == "list_files", (calls, result.answer)
    _, args, status = calls[0]
    assert status == "ok" and isinstance(args, dict) and "adapters" in str(args.get("path")), calls
    assert "<tool_call>" not in result.answer  # the call was parsed, not printed


def _acp_updates(proc: subprocess.Popen[str], cwd: str, text: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """initialize, session/new and one session/prompt over `punie up`'s stdio, as an IDE sends them;
    returns the prompt's result and every session/update (permission requests are declined)."""
    updates: list[dict[str, Any]] = []
    next_id = 0

    def call(method: str, params: dict[str, Any]) -> dict[str, Any]:
        nonlocal next_id
        next_id += 1
        request_id = next_id
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}) + "\n")
        proc.stdin.flush()
        while line := proc.stdout.readline():
            message = json.loads(line)
            if message.get("id") == request_id and "method" not in message:
                assert "error" not in message, message
                return message["result"]
            if message.get("method") == "session/update":
                updates.append(message["params"]["update"])
            elif "method" in message and "id" in message:
                proc.stdin.write(json.dumps({"jsonrpc": "2.0", "id": message["id"],
                                             "result": {"outcome": {"outcome": "cancelled"}}}) + "\n")
                proc.stdin.flush()
        raise AssertionError(f"punie up closed stdout (exit {proc.poll()}) during {method}")

    call("initialize", {"protocolVersion": 1, "clientCapabilities": {
        "fs": {"readTextFile": False, "writeTextFile": False}, "terminal": False}})
    session = call("session/new", {"cwd": cwd, "mcpServers": []})["sessionId"]
    result = call("session/prompt", {"sessionId": session, "prompt": [{"type": "text", "text": text}]})
    return result, updates


@pytest.mark.slow
@pytest.mark.mlx
def test_punie_up_tool_calling_answers_with_a_real_tool_call(tmp_path: Path) -> None:
    """The README's headline, `punie up tool-calling`, in a copy of the project as a fresh clone has
    it (punie.toml and the shipped adapters, nothing else): check passes offline, the server
    serves the builtin model with the shipped adapter and the agent, driven over ACP as an IDE
    drives it, really runs list_files on the workspace (its output is the real listing)."""
    from punie.weights.builtin import ensure_builtin

    ensure_builtin("smollm2-135m-instruct")
    project = tmp_path / "project"
    for shipped in ("tool-calling-v1", "tool-calling-v2", "tool-calling-v3"):  # every adapter punie.toml's profiles name
        shutil.copytree(REPO / "adapters" / shipped, project / "adapters" / shipped)
    shutil.copy(CONFIG, project / "punie.toml")
    (project / "adapters" / "README.md").write_text("adapters\n")
    check = subprocess.run([sys.executable, "-m", "punie", "check"], cwd=project, capture_output=True, text=True,
                           timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    args = [sys.executable, "-m", "punie", "up", "tool-calling", "--set", f"server.port={free_port()}",
            "--set", "agent.max_turns=3", "--set", "agent.max_tokens=64", "--set", "agent.temperature=0.0"]
    proc = subprocess.Popen(args, cwd=project, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    errors: list[str] = []
    reader = threading.Thread(target=lambda: errors.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        result, updates = _acp_updates(proc, str(project), "List the files in the adapters directory.")
        assert result["stopReason"] == "end_turn"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=180) == 0, "".join(errors)
    finally:
        reap(proc)
    reader.join(timeout=5)
    calls = [u for u in updates if u.get("sessionUpdate") == "tool_call"]
    assert calls, (updates, "".join(errors))
    first = calls[0]
    assert first["kind"] == "search" and "adapters" in str(first["rawInput"].get("path")), first
    ends = [u for u in updates if u.get("sessionUpdate") == "tool_call_update"
            and u.get("toolCallId") == first["toolCallId"] and u.get("status") in ("completed", "failed")]
    assert ends and ends[-1]["status"] == "completed", updates
    assert "README.md" in json.dumps(ends[-1].get("rawOutput")), ends  # the real listing of the workspace
    text = "".join(u["content"].get("text", "") for u in updates if u.get("sessionUpdate") == "agent_message_chunk")
    assert "<tool_call>" not in text  # the call was parsed by mlx_lm, not printed
