"""`punie check` on vLLM profiles as deep as vLLM's own start (issue 25, item 8).

An mlx-quantized base and a ``max_model_len`` above what vLLM derives from config.json are
refused; a PEFT adapter directory named directly is accepted and served as it is (no mlx_lm
export), with vLLM's own PEFT rules (rank, DoRA, bias, modules_to_save, missing keys) and the
shape checks. One differential test asks vLLM's own ModelConfig for the context rule.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from punie.adapters.peft import export_peft, is_peft_adapter, plan_peft
from punie.checks.vllm import derived_max_len
from punie.config import load_profile
from punie.errors import AdapterError
from punie.launch.backends import check_profiles
from tests.support.corpus import lora_adapter

TOML = """
[defaults.server]
backend = "vllm"

[defaults.server.vllm]
python = "{python}"

[profiles.v]
model = "{model}"
"""


def _fake_python(path: Path) -> Path:
    path.write_text("#!/bin/sh\necho 0.32.0\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def _project(tmp_path: Path, model: Path) -> Path:
    (tmp_path / "punie.toml").write_text(TOML.format(python=_fake_python(tmp_path / "vpython"), model=model))
    return tmp_path / "punie.toml"


def _errors(config: Path, overrides: list[str] = ()) -> dict[str, str]:
    resolved = load_profile("v", config=str(config), overrides=list(overrides))
    return {p.code: p.message for p in check_profiles([resolved]).problems if p.severity == "error"}


def _model(tmp_path: Path, tiny_model: Path, name: str, **config: object) -> Path:
    model = tmp_path / name
    shutil.copytree(tiny_model, model)
    doc = json.loads((model / "config.json").read_text())
    for key, value in config.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    (model / "config.json").write_text(json.dumps(doc))
    return model


@pytest.mark.mlx
def test_an_mlx_quantized_base_is_refused_for_vllm_not_for_mlx(tmp_path: Path, tiny_model: Path,
                                                                tiny_model_q4: Path) -> None:
    config = _project(tmp_path, tiny_model_q4)
    assert "mlx-quantized (4-bit" in _errors(config)["vllm-mlx-quantized"]
    assert "vllm-mlx-quantized" not in _errors(config, ["server.backend=mlx"])
    assert "vllm-mlx-quantized" not in _errors(config, [f"model={tiny_model}"])
    # a quantization vLLM knows (a quant_method) is not mlx's
    doc = json.loads((tiny_model_q4 / "config.json").read_text())
    gptq = _model(tmp_path, tiny_model, "gptq", quantization_config={"quant_method": "gptq", "bits": 4})
    assert "vllm-mlx-quantized" not in _errors(config, [f"model={gptq}"])
    # the block alone (weights not packed) is enough: vLLM finds no quant_method in it
    declared = _model(tmp_path, tiny_model, "declared", quantization=doc["quantization"])
    assert "vllm-mlx-quantized" in _errors(config, [f"model={declared}"])


def test_max_model_len_above_the_derived_length_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    config = _project(tmp_path, tiny_model)  # max_position_embeddings 4096
    assert "vllm-max-model-len" not in _errors(config, ["server.vllm.max_model_len=4096"])
    message = _errors(config, ["server.vllm.max_model_len=4097"])["vllm-max-model-len"]
    assert "4097" in message and "max_position_embeddings = 4096" in message
    assert "vllm-max-model-len" in _errors(config, ['server.vllm.extra_args=["--max-model-len", "5000"]'])
    assert "vllm-max-model-len" in _errors(config, ['server.vllm.extra_args=["--max-model-len=5000"]'])
    allowed = ["server.vllm.max_model_len=8192", "server.vllm.env.VLLM_ALLOW_LONG_MAX_MODEL_LEN=\"1\""]
    assert "vllm-max-model-len" not in _errors(config, allowed)


@pytest.mark.parametrize("config,tokenizer,expected", [
    ({"max_position_embeddings": 4096}, None, (4096, "max_position_embeddings")),
    # the tokenizer's model_max_length counts only for pooling models (the differential test below)
    ({"max_position_embeddings": 4096}, {"model_max_length": 512}, (4096, "max_position_embeddings")),
    ({"max_position_embeddings": 4096, "n_positions": 1024}, None, (1024, "n_positions")),
    ({"max_position_embeddings": 4096, "model_max_length": 8192}, None, (8192, "model_max_length")),
    ({"max_position_embeddings": 4096, "rope_scaling": {"type": "linear", "factor": 2.0}}, None,
     (8192, "max_position_embeddings")),
    ({"max_position_embeddings": 4096, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, None,
     (4096, "max_position_embeddings")),  # llama3 / yarn: already scaled
    ({"max_position_embeddings": 4096, "rope_parameters": {"rope_type": "dynamic", "factor": 4}}, None,
     (16384, "max_position_embeddings")),
    ({"model_type": "gemma3", "max_position_embeddings": 4096, "rope_scaling": {"type": "linear", "factor": 8}},
     None, (4096, "max_position_embeddings")),
    ({"text_config": {"max_position_embeddings": 2048}, "max_position_embeddings": 9999}, None,
     (2048, "max_position_embeddings")),
    ({}, None, (float("inf"), None)),
])
def test_derived_max_len_follows_vllms_rule(config: dict, tokenizer: dict | None, expected: tuple) -> None:
    assert derived_max_len(config) == expected  # ``tokenizer``: what tokenizer_config.json would say


def _peft(tmp_path: Path, name: str = "peft", **changes: object) -> Path:
    mlx = lora_adapter(tmp_path / f"{name}-mlx", rank=4)
    out = tmp_path / "adapters" / name
    export_peft(mlx, out)
    doc = json.loads((out / "adapter_config.json").read_text())
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    (out / "adapter_config.json").write_text(json.dumps(doc))
    return out


def test_a_peft_directory_named_in_a_vllm_profile_is_checked_and_served_as_it_is(tmp_path: Path,
                                                                                  tiny_model: Path) -> None:
    config = _project(tmp_path, tiny_model)
    peft = _peft(tmp_path)
    assert is_peft_adapter(peft) and not is_peft_adapter(tmp_path / "peft-mlx")
    resolved = load_profile("v", config=str(config), overrides=[f"adapter={peft}"])
    report = check_profiles([resolved])
    assert report.ok, report.problems
    assert any("PEFT adapter, served as it is" in line for line in report.profiles[0].passed)
    # the plan serves the directory itself: nothing exported under .punie/peft
    from punie.launch.prepare import prepare

    plan = prepare(resolved, provision=False)
    argv = list(plan.server_argv or ())
    assert f"v={peft}" in argv[argv.index("--lora-modules") + 1:]
    assert not (tmp_path / ".punie" / "peft").exists()
    # mlx_lm cannot load it: the same directory in an mlx profile is refused, with the import hint
    assert "peft-adapter" in _errors(config, [f"adapter={peft}", "server.backend=mlx"])


@pytest.mark.parametrize("changes,code,fragment", [
    ({"r": 32}, "vllm-lora-rank", "rank 32 is above max_lora_rank 16"),
    ({"rank_pattern": {"q_proj": 64}}, "vllm-lora-rank", "rank 64"),
    ({"use_dora": True}, "vllm-adapter", "DoRA"),
    ({"lora_bias": True}, "vllm-adapter", "LoRA bias"),
    ({"bias": "all"}, "vllm-adapter", "bias"),
    ({"modules_to_save": ["lm_head"]}, "vllm-adapter", "modules_to_save"),
    ({"lora_alpha": None}, "vllm-adapter", "lacks lora_alpha"),
    ({"target_modules": None}, "vllm-adapter", "lacks target_modules"),
    ({"r": 0}, "vllm-adapter", "not a positive integer"),
    ({"init_lora_weights": "pissa"}, "vllm-adapter", "init_lora_weights"),
])
def test_vllms_peft_rules_refuse_what_vllm_refuses(tmp_path: Path, tiny_model: Path, changes: dict, code: str,
                                                   fragment: str) -> None:
    config = _project(tmp_path, tiny_model)
    peft = _peft(tmp_path, **changes)
    assert fragment in _errors(config, [f"adapter={peft}"])[code]


def test_peft_modules_must_exist_in_the_base_with_its_shapes(tmp_path: Path, tiny_model: Path,
                                                              tiny_model_shallow: Path,
                                                              tiny_model_wide: Path) -> None:
    config = _project(tmp_path, tiny_model)
    peft = _peft(tmp_path)
    assert "model.layers.1" in _errors(config, [f"adapter={peft}", f"model={tiny_model_shallow}"])[
        "vllm-target-missing"]
    assert "vllm-target-shape" in _errors(config, [f"adapter={peft}", f"model={tiny_model_wide}"])
    # a tensor that is not a LoRA pair
    from punie.weights.safetensors import write_safetensors

    odd = _peft(tmp_path, "odd")
    write_safetensors(odd / "adapter_model.safetensors",
                      {"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": ("F32", (4, 64))})
    with pytest.raises(AdapterError, match="has only"):
        plan_peft(odd)


VLLM_PYTHON = os.environ.get("PUNIE_VLLM_PYTHON", "")
ORACLE = """
import json, sys
from vllm.config import ModelConfig
out = []
for model, n in json.loads(sys.argv[1]):
    try:
        ModelConfig(model=model, max_model_len=n, dtype="float32")
        out.append(None)
    except Exception as exc:
        out.append(str(exc)[:300])
print("RESULT " + json.dumps(out))
"""


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(not (VLLM_PYTHON and Path(VLLM_PYTHON).exists()), reason="needs PUNIE_VLLM_PYTHON")
def test_max_model_len_rule_agrees_with_vllms_model_config(tmp_path: Path, tiny_model: Path) -> None:
    from punie.checks.vllm import max_len_problem
    from punie.weights.headers import read_model_shapes

    models = {
        "plain": _model(tmp_path, tiny_model, "plain"),
        "linear2": _model(tmp_path, tiny_model, "linear2", rope_scaling={"type": "linear", "factor": 2.0}),
        "npos": _model(tmp_path, tiny_model, "npos", n_positions=1024),
    }
    tok = models["plain"] / "tokenizer_config.json"
    doc = json.loads(tok.read_text()) if tok.exists() else {}
    capped = _model(tmp_path, tiny_model, "capped")
    (capped / "tokenizer_config.json").write_text(json.dumps({**doc, "model_max_length": 600}))
    models["capped"] = capped
    cases = [(name, n) for name in models for n in (512, 700, 1500, 4096, 4097, 8192, 8193)]
    proc = subprocess.run([VLLM_PYTHON, "-c", ORACLE, json.dumps([(str(models[m]), n) for m, n in cases])],
                          capture_output=True, text=True, timeout=1800, cwd=tmp_path,
                          env={**os.environ, "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"})
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    vllm = json.loads(line[len("RESULT "):])
    config = _project(tmp_path, tiny_model)
    for (name, n), theirs in zip(cases, vllm, strict=True):
        resolved = load_profile("v", config=str(config), overrides=[f"model={models[name]}",
                                                                    f"server.vllm.max_model_len={n}"])
        ours = max_len_problem(read_model_shapes(models[name]), resolved)
        assert (ours is None) == (theirs is None), (name, n, ours, theirs)
