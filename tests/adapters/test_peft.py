"""mlx_lm <-> PEFT adapter conversion: exact both ways, and PEFT's math equals mlx_lm's own fuse."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from punie.adapters.peft import (
    NotConvertible,
    ensure_exported,
    export_peft,
    import_peft,
    plan_export,
)
from punie.adapters.tensors import load_tensor, tensor_index
from punie.weights.safetensors import write_safetensors
from tests.support import tiny

pytestmark = pytest.mark.mlx


def _tensors(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    return {n: (i.dtype, load_tensor(path, i)) for n, i in tensor_index(path).items()}


def _meaning(config: dict) -> dict:
    """What decides how mlx_lm applies an adapter."""
    params = config["lora_parameters"]
    return {"fine_tune_type": config.get("fine_tune_type", "lora"), "num_layers": config["num_layers"],
            "rank": params["rank"], "scale": params["scale"], "dropout": params.get("dropout", 0.0),
            "keys": params.get("keys")}


def test_mlx_to_peft_to_mlx_is_exact(tiny_adapter: Path, tmp_path: Path) -> None:
    (tiny_adapter / "punie-adapter.json").write_text(json.dumps(
        {"base_model": "tiny-a", "created": "2026-01-01T00:00:00+00:00", "score": 0.5}))
    peft = tmp_path / "peft"
    plan = export_peft(tiny_adapter, peft)
    config = json.loads((peft / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 40.0 and config["use_rslora"] is False
    assert config["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert len(plan.modules) == 14  # 7 Linear x 2 layers
    src = _tensors(tiny_adapter / "adapters.safetensors")
    exported = _tensors(peft / "adapter_model.safetensors")
    for name, (_, a) in src.items():
        module, part = name.rsplit(".", 1)
        peft_name = f"base_model.model.{module}.{'lora_A' if part == 'lora_a' else 'lora_B'}.weight"
        assert np.array_equal(exported[peft_name][1], a.T)
    assert json.loads((peft / "punie-adapter.json").read_text())["score"] == 0.5

    back = tmp_path / "back"
    import_peft(peft, back)
    again = _tensors(back / "adapters.safetensors")
    assert again.keys() == src.keys()
    for name, (dtype, a) in src.items():
        assert again[name][0] == dtype and np.array_equal(again[name][1], a), name
    original = json.loads((tiny_adapter / "adapter_config.json").read_text())
    assert _meaning(json.loads((back / "adapter_config.json").read_text())) == _meaning(original)
    meta = json.loads((back / "punie-adapter.json").read_text())
    assert meta["score"] == 0.5 and meta["base_model"] == "tiny-a" and "mlx_lm" not in meta


@pytest.mark.slow
def test_peft_math_equals_mlx_lm_fuse(tiny_model: Path, tiny_adapter: Path, tmp_path: Path) -> None:
    """W + lora_alpha / r * B @ A, in numpy from the PEFT files, is what `mlx_lm fuse` writes."""
    peft = tmp_path / "peft"
    export_peft(tiny_adapter, peft)
    fused = tmp_path / "fused"
    proc = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "fuse", "--model", str(tiny_model), "--adapter-path", str(tiny_adapter),
         "--save-path", str(fused)],
        capture_output=True, text=True, env=tiny.mlx_env(), timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    config = json.loads((peft / "adapter_config.json").read_text())
    scaling = config["lora_alpha"] / config["r"]
    base = _tensors(tiny_model / "model.safetensors")
    fused_t = {}
    for f in fused.glob("*.safetensors"):
        fused_t |= _tensors(f)
    lora = _tensors(peft / "adapter_model.safetensors")
    checked = 0
    for name, (_, a) in lora.items():
        if ".lora_A." not in name:
            continue
        module = name.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        b = lora[name.replace("lora_A", "lora_B")][1]
        w = base[f"{module}.weight"][1]
        ours = w + scaling * (b.astype(np.float64) @ a.astype(np.float64))
        theirs = fused_t[f"{module}.weight"][1]
        assert not np.allclose(w, theirs, atol=1e-6), f"{module}: the adapter changed nothing"
        np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-6, err_msg=module)
        checked += 1
    assert checked == 14


@pytest.mark.slow
def test_dora_is_refused_with_the_reason(tiny_model: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    dora = tiny.train_tiny_adapter(tiny_model, tmp_path / "dora", tiny_dataset, iters=1, dora=True)
    with pytest.raises(NotConvertible, match="DoRA"):
        export_peft(dora, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _fake_mlx(path: Path, tensors: dict[str, np.ndarray], rank: int = 2) -> Path:
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps(
        {"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": {"rank": rank, "scale": 2.0}}))
    write_safetensors(path / "adapters.safetensors", tensors)
    return path


@pytest.mark.parametrize(("tensors", "reason"), [
    ({"model.embed_tokens.lora_a": np.zeros((300, 2), np.float32),
      "model.embed_tokens.lora_b": np.zeros((2, 64), np.float32)}, "not a Linear layer"),
    ({"model.layers.0.mlp.switch_mlp.up_proj.lora_a": np.zeros((4, 2, 64), np.float32),
      "model.layers.0.mlp.switch_mlp.up_proj.lora_b": np.zeros((4, 128, 2), np.float32)}, "SwitchLinear"),
    ({"model.layers.0.self_attn.q_proj.lora_a": np.zeros((64, 2), np.float32),
      "model.layers.0.self_attn.q_proj.lora_b": np.zeros((2, 64), np.float32),
      "model.layers.0.self_attn.q_proj.m": np.zeros((64,), np.float32)}, "DoRA magnitude"),
    ({"model.layers.0.self_attn.q_proj.lora_a": np.zeros((64, 3), np.float32),
      "model.layers.0.self_attn.q_proj.lora_b": np.zeros((3, 64), np.float32)}, "one rank per adapter"),
])
def test_what_peft_cannot_express_is_refused(tmp_path: Path, tensors: dict, reason: str) -> None:
    with pytest.raises(NotConvertible, match=reason):
        plan_export(_fake_mlx(tmp_path / "a", tensors))


def _fake_peft(path: Path, config: dict, tensors: dict[str, np.ndarray]) -> Path:
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps(config))
    write_safetensors(path / "adapter_model.safetensors", tensors, metadata={"format": "pt"})
    return path


def test_hugging_face_peft_adapter_imports_with_rslora_scale(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 64)).astype(np.float16), rng.normal(size=(96, 4)).astype(np.float16)
    peft = _fake_peft(tmp_path / "hf", {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": True,
                                        "target_modules": ["k_proj"]},
                      {"base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight": a,
                       "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight": b})
    config = import_peft(peft, tmp_path / "mlx")
    assert config["lora_parameters"] == {"rank": 4, "scale": 4.0, "dropout": 0.0, "keys": ["self_attn.k_proj"]}
    assert config["num_layers"] == 2
    out = _tensors(tmp_path / "mlx" / "adapters.safetensors")
    assert out["model.layers.1.self_attn.k_proj.lora_a"][0] == "F16"
    assert np.array_equal(out["model.layers.1.self_attn.k_proj.lora_a"][1], a.T.astype(np.float32))


@pytest.mark.parametrize(("extra", "reason"), [
    ({"use_dora": True}, "DoRA"), ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"bias": "all"}, "bias"), ({"rank_pattern": {"q_proj": 8}}, "rank_pattern"),
])
def test_peft_features_mlx_cannot_express_are_refused(tmp_path: Path, extra: dict, reason: str) -> None:
    peft = _fake_peft(tmp_path / "hf", {"peft_type": "LORA", "r": 2, "lora_alpha": 4, **extra},
                      {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((2, 8), np.float32),
                       "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": np.zeros((8, 2), np.float32)})
    with pytest.raises(NotConvertible, match=reason):
        import_peft(peft, tmp_path / "mlx")


def test_launch_export_is_cached_by_content(tiny_adapter: Path, tmp_path: Path) -> None:
    first = ensure_exported(tiny_adapter, tmp_path / "cache")
    mtime = (first / "adapter_model.safetensors").stat().st_mtime_ns
    assert ensure_exported(tiny_adapter, tmp_path / "cache") == first
    assert (first / "adapter_model.safetensors").stat().st_mtime_ns == mtime
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in tiny_adapter.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((copy / "adapter_config.json").read_text())
    cfg["lora_parameters"]["scale"] = 5.0
    (copy / "adapter_config.json").write_text(json.dumps(cfg))
    other = ensure_exported(copy, tmp_path / "cache")
    assert other != first and json.loads((other / "adapter_config.json").read_text())["lora_alpha"] == 20.0
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")] == []


def test_cli_export_and_import(tiny_adapter: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from punie.cli import main

    (tmp_path / "punie.toml").write_text("")
    runner = CliRunner()
    res = runner.invoke(main, ["--config", str(tmp_path / "punie.toml"), "adapters", "export", str(tiny_adapter),
                               "--format", "peft", "--out", str(tmp_path / "peft")])
    assert res.exit_code == 0, res.output
    assert "lora_alpha 40" in res.output
    res = runner.invoke(main, ["--config", str(tmp_path / "punie.toml"), "adapters", "import", str(tmp_path / "peft"),
                               "--name", "from-hf"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "adapters" / "from-hf" / "adapters.safetensors").is_file()
    res = runner.invoke(main, ["--config", str(tmp_path / "punie.toml"), "adapters", "export", str(tiny_adapter),
                               "--out", str(tmp_path / "peft")])
    assert res.exit_code != 0 and "--force" in res.output
