"""vLLM profiles without a server: options, plans (dry run), groups, checks, per-request model ids."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from punie.config import load_profile, load_profiles
from punie.errors import ConfigError

pytestmark = pytest.mark.mlx  # the project's adapters are trained with mlx_lm

TOML = """
[defaults.server]
backend = "vllm"
port = {port}

[defaults.server.vllm]
python = "{python}"
dtype = "float32"
env = {{ VLLM_CPU_KVCACHE_SPACE = "1" }}

[profiles.one]
model = "{model}"
adapter = "{adapter}"

[profiles.two]
extends = "one"
adapter = "{adapter2}"
server.vllm.max_lora_rank = 8

[profiles.plain]
model = "{model}"

[profiles.local]
model = "{model}"
adapter = "{adapter}"
server.backend = "mlx"

[groups.team]
profiles = ["one", "two", "plain"]
"""


def _fake_python(path: Path, *, ok: bool = True) -> Path:
    """A stand-in interpreter that answers `import vllm` (and counts how often it is asked)."""
    body = 'echo 0.32.0' if ok else 'echo "ModuleNotFoundError: No module named vllm" >&2; exit 1'
    path.write_text(f'#!/bin/sh\necho x >> "{path}.calls"\n{body}\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.fixture
def project(tmp_path: Path, tiny_model: Path, tiny_adapter: Path) -> Path:
    import shutil

    second = tmp_path / "adapters" / "second"
    shutil.copytree(tiny_adapter, second)
    cfg = json.loads((second / "adapter_config.json").read_text())
    cfg["lora_parameters"]["scale"] = 3.0
    (second / "adapter_config.json").write_text(json.dumps(cfg))
    python = _fake_python(tmp_path / "vpython")
    (tmp_path / "punie.toml").write_text(TOML.format(port=18123, python=python, model=tiny_model,
                                                     adapter=tiny_adapter, adapter2=second))
    return tmp_path


def test_vllm_options_inherit_and_take_env_and_set(project: Path) -> None:
    cfg = str(project / "punie.toml")
    two = load_profile("two", config=cfg, env={**os.environ, "PUNIE_SERVER__VLLM__TENSOR_PARALLEL_SIZE": "2"},
                       overrides=["server.vllm.extra_args=[\"--enforce-eager\"]"])
    v = two.profile.server.vllm
    assert two.profile.server.backend == "vllm" and v.dtype == "float32" and v.max_lora_rank == 8
    assert v.tensor_parallel_size == 2 and v.extra_args == ["--enforce-eager"]
    assert v.env == {"VLLM_CPU_KVCACHE_SPACE": "1"}
    assert two.sources["server.vllm.tensor_parallel_size"] == "env"
    with pytest.raises(ConfigError, match="vLLM accepts only"):
        load_profile("two", config=cfg, overrides=["server.vllm.max_lora_rank=12"])
    with pytest.raises(ConfigError, match="distributed_executor_backend"):
        load_profile("two", config=cfg, overrides=["server.vllm.distributed_executor_backend=mpi"])


def test_schema_and_profiles_show_cover_vllm(project: Path) -> None:
    from punie.cli import main
    from punie.config.schema import schema_dict

    text = json.dumps(schema_dict())
    assert "tensor_parallel_size" in text and "distributed_executor_backend" in text and "groups" in text
    res = CliRunner().invoke(main, ["--config", str(project / "punie.toml"), "profiles", "show", "two"])
    assert res.exit_code == 0, res.output
    assert "max_lora_rank" in res.output and "vllm" in res.output


def test_dry_run_plan_shows_argv_env_and_export_dirs_without_writing(project: Path) -> None:
    from punie.launch import run_up

    one = load_profile("one", config=str(project / "punie.toml"))
    plan = run_up(one, dry_run=True).plan
    argv = plan.server_argv
    assert argv[:3] == (str(project / "vpython"), "-m", "vllm.entrypoints.openai.api_server")
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    lora = plan.backend.lora_modules["one"]
    assert argv[argv.index("--tool-call-parser") + 1] == "hermes" and "--enable-auto-tool-choice" in argv
    assert f"one={lora}" in argv and "--enable-lora" in argv and argv[argv.index("--dtype") + 1] == "float32"
    assert Path(lora).parent == project / ".punie" / "peft" and not Path(lora).exists()
    assert plan.server_env["VLLM_CPU_KVCACHE_SPACE"] == "1" and plan.server_env["HF_HUB_OFFLINE"] == "1"
    assert plan.model_id == "one" and plan.agent_argv[-2:] == ("--model-name", "one")
    text = plan.render_text()
    assert f"lora:    one = {lora}" in text and "(model one)" in text
    from punie.launch.vllm import model_ids

    assert model_ids(plan) == ("one", "base")


def test_real_prepare_exports_once_to_the_content_hash_dir(project: Path) -> None:
    from punie.launch.prepare import prepare_members

    one = load_profile("one", config=str(project / "punie.toml"))
    plan = prepare_members([one], check=False)
    lora = Path(plan.backend.lora_modules["one"])
    assert (lora / "adapter_model.safetensors").is_file()
    assert json.loads((lora / "adapter_config.json").read_text())["r"] == 4
    assert prepare_members([one], check=False).backend.lora_modules == plan.backend.lora_modules


def test_group_is_one_server_with_every_adapter(project: Path) -> None:
    from punie.cli import main

    res = CliRunner().invoke(main, ["--config", str(project / "punie.toml"), "up", "--group", "team", "--dry-run",
                                    "--format", "json"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    assert set(plan["backend"]["lora_modules"]) == {"one", "two"}
    argv = plan["server_argv"]
    assert argv.count("--model") == 1 and argv[argv.index("--max-loras") + 1] == "2"
    assert plan["backend"]["models"] == {"one": "one", "two": "two", "plain": "base"}
    assert json.loads(plan["agent_argv"][plan["agent_argv"].index("--models") + 1]) == plan["backend"]["models"]
    assert argv[argv.index("--max-lora-rank") + 1] == "16"  # the first profile's server options


def test_the_plan_probes_each_recorded_canary_on_its_own_lora_id(project: Path, tiny_model: Path) -> None:
    """The canaries come from the mlx_lm adapters (where they are recorded), not from the PEFT exports,
    each aimed at its profile's LoRA id: the lead's is the readiness probe, the others follow."""
    from punie.adapters.canary import base_fingerprint
    from punie.adapters.metadata import update_meta
    from punie.cli import main
    from punie.launch import run_up

    top = [{"id": i, "token": "t", "text": f"t{i}", "logprob": -1.0 - i} for i in range(5)]
    second = project / "adapters" / "second"  # profile two's (one's is the session's shared tiny adapter)
    update_meta(second, canary={"prompt": "hi", "base_fingerprint": base_fingerprint(tiny_model), "base": top,
                                "adapter": [dict(t, logprob=t["logprob"] - 2) for t in top]})
    plan = run_up(load_profile("two", config=str(project / "punie.toml")), dry_run=True).plan
    assert plan.canary is not None and plan.canary.model == "two" and plan.canary.other_base is None
    assert plan.canary.adapter == str(second) and Path(plan.backend.lora_modules["two"]).parent.name == "peft"
    assert "ready:     canary of" in plan.render_text() and "(model two)" in plan.render_text()
    res = CliRunner().invoke(main, ["--config", str(project / "punie.toml"), "up", "--group", "team", "--dry-run",
                                    "--format", "json", "--no-check"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["canary"] is None  # one's adapter has no canary: not verified (a warning), two's still is
    assert [(c["model"], c["adapter"]) for c in data["member_canaries"]] == [("two", str(second))]


def test_group_on_mlx_is_refused_with_the_reason(project: Path) -> None:
    from punie.cli import main

    res = CliRunner().invoke(main, ["--config", str(project / "punie.toml"), "up", "--group", "one,local",
                                    "--dry-run"])
    assert res.exit_code == 2
    assert "mlx backend" in res.output and "reloads the whole model" in res.output and "one server per" in res.output


def test_request_model_ids_for_ask_and_acp_sessions(project: Path) -> None:
    from punie.agent.acp_server import PunieAcpAgent
    from punie.agent.target import agent_target

    profiles = {r.name: r for r in load_profiles(config=str(project / "punie.toml"))}
    assert agent_target(profiles["two"]).model_name == "two"
    assert agent_target(profiles["plain"]).model_name == "base"
    assert agent_target(profiles["local"]).model_name == "default_model"
    acp = PunieAcpAgent(profiles["one"].profile.agent, "http://127.0.0.1:1/v1", model_name="one",
                        models={"one": "one", "two": "two"})
    assert acp.served.model_of(acp.served.meta_profile({})) == {"model_name": "one"}
    assert acp.served.model_of(acp.served.meta_profile({"field_meta": {"punie/profile": "two"}})) == {"model_name": "two"}
    from acp import RequestError

    with pytest.raises(RequestError) as info:
        acp.served.meta_profile({"field_meta": {"punie/profile": "three"}})
    assert "not served here" in info.value.data["message"]


def _codes(name: str, project: Path, overrides: list[str] = ()) -> dict[str, str]:
    from punie.launch.backends import check_profiles

    resolved = load_profile(name, config=str(project / "punie.toml"), overrides=list(overrides))
    return {p.code: p.message for p in check_profiles([resolved]).problems if p.severity == "error"}


@pytest.mark.slow
def test_check_applies_vllms_rules(project: Path, tiny_model: Path, tiny_dataset: Path) -> None:
    assert _codes("one", project) == {}
    # rank 4 fits 16, not 1
    assert "above max_lora_rank 1" in _codes("one", project, ["server.vllm.max_lora_rank=1"])["vllm-lora-rank"]
    # 4 heads, 2 KV heads: TP 4 replicates KV heads evenly (as vLLM does), TP 3 splits nothing
    assert _codes("one", project, ["server.vllm.tensor_parallel_size=4"]) == {}
    assert "4 attention heads" in _codes("one", project, ["server.vllm.tensor_parallel_size=3"])[
        "vllm-tensor-parallel"]
    assert "more than the 2 layers" in _codes("one", project, ["server.vllm.pipeline_parallel_size=3"])[
        "vllm-pipeline-parallel"]
    from tests.support import tiny

    dora = tiny.train_tiny_adapter(tiny_model, project / "adapters" / "dora", tiny_dataset, iters=1, dora=True)
    assert "DoRA" in _codes("one", project, [f"adapter={dora}"])["vllm-adapter"]


def test_check_heads_rule_matches_vllm() -> None:
    from punie.checks.vllm import heads_problem

    assert heads_problem({"num_attention_heads": 2, "num_key_value_heads": 1}, 2) is None  # measured: TP=2 runs
    assert heads_problem({"num_attention_heads": 12, "num_key_value_heads": 3}, 2) is not None
    assert heads_problem({"num_attention_heads": 8, "num_key_value_heads": 8}, 4) is None
    assert heads_problem({"num_attention_heads": 8, "num_key_value_heads": 2}, 8) is None


def test_target_module_missing_from_the_base(project: Path, tiny_model_shallow: Path) -> None:
    codes = _codes("one", project, [f"model={tiny_model_shallow}"])
    assert "model.layers.1" in codes["vllm-target-missing"]


def test_vllm_python_answer_is_cached_by_path_and_mtime(project: Path, tmp_path: Path) -> None:
    from punie.checks.vllm import vllm_python_status

    py = _fake_python(tmp_path / "py2")
    calls = Path(f"{py}.calls")
    assert vllm_python_status(str(py)) == {"ok": True, "version": "0.32.0"}
    assert vllm_python_status(str(py))["ok"] and len(calls.read_text().split()) == 1
    os.utime(py, ns=(py.stat().st_atime_ns, py.stat().st_mtime_ns + 10**9))
    vllm_python_status(str(py))
    assert len(calls.read_text().split()) == 2
    bad = _fake_python(tmp_path / "bad", ok=False)
    assert "No module named vllm" in vllm_python_status(str(bad))["error"]
    assert not vllm_python_status(str(tmp_path / "none"))["ok"]
    assert "does not exist" in _codes("one", project, [f"server.vllm.python={tmp_path / 'none'}"])["vllm-python"]


def test_group_members_adapters_must_fit_the_shared_servers_rank(project: Path) -> None:
    from punie.launch.prepare import prepare_members

    members = load_profiles(["one", "two"], config=str(project / "punie.toml"),
                            overrides=["server.vllm.max_lora_rank=1"])
    members = [members[0], load_profile("two", config=str(project / "punie.toml"))]  # two keeps rank 8
    with pytest.raises(ConfigError, match="rank 4, above the server's max_lora_rank 1"):
        prepare_members(members, group="g", check=False, provision=False)
