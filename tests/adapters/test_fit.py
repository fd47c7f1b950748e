"""Adapter vs base model: real mlx_lm adapters on real tiny models, and synthetic edge cases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from punie.adapters.fit import fit_adapter, layer_index
from punie.adapters.inspect import inspect_adapter, read_adapter
from punie.errors import AdapterError, CorruptFileError
from punie.weights.headers import read_model_shapes
from punie.weights.safetensors import write_safetensors

H, I = 64, 128  # tiny_model dims: hidden, intermediate; 4 heads, 2 kv heads -> kv out 32
MODULES = {  # module path within a layer -> (out, in) of tiny_model
    "self_attn.q_proj": (H, H), "self_attn.k_proj": (32, H), "self_attn.v_proj": (32, H),
    "self_attn.o_proj": (H, H), "mlp.gate_proj": (I, H), "mlp.up_proj": (I, H), "mlp.down_proj": (H, I),
}


def _codes(findings: list) -> set[str]:
    return {f.code for f in findings}


def write_adapter(
    out: Path, *, rank: int = 4, layers: tuple[int, ...] = (0, 1), num_layers: int = -1,
    fine_tune_type: str = "lora", modules: dict[str, tuple[int, int]] | None = None,
    dora: bool = False, rank_in_config: int | None = None, model: str | None = None,
    extra: dict[str, tuple[str, tuple[int, ...]]] | None = None,
) -> Path:
    """A synthetic adapter (zero weights) shaped for ``modules`` (default: tiny_model's)."""
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for i in layers:
        for module, (o, n) in (MODULES if modules is None else modules).items():
            name = f"model.layers.{i}.{module}"
            tensors[f"{name}.lora_a"] = ("F32", (n, rank))
            tensors[f"{name}.lora_b"] = ("F32", (rank, o))
            if dora:
                tensors[f"{name}.m"] = ("F32", (o,))
    tensors |= extra or {}
    write_safetensors(out / "adapters.safetensors", tensors)
    config = {
        "fine_tune_type": "dora" if dora else fine_tune_type,
        "num_layers": num_layers,
        "lora_parameters": {"rank": rank_in_config or rank, "scale": 10.0, "dropout": 0.0},
        "model": model,
    }
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def fit(adapter: Path, model: Path) -> list:
    inspection = inspect_adapter(adapter)
    assert inspection.ok, inspection.findings
    return fit_adapter(inspection, read_model_shapes(model))


def test_real_adapter_fits_its_own_model(tiny_adapter: Path, tiny_model: Path) -> None:
    assert fit(tiny_adapter, tiny_model) == []


def test_real_adapter_fits_the_4bit_copy_after_unpacking(tiny_adapter: Path, tiny_model_q4: Path) -> None:
    shapes = read_model_shapes(tiny_model_q4)
    q = shapes.module("model.layers.0.mlp.down_proj")
    assert q is not None and (q.out_features, q.in_features, q.bits) == (H, I, 4)
    assert shapes.tensors["model.layers.0.mlp.down_proj.weight"].shape == (H, I * 4 // 32)
    assert fit(tiny_adapter, tiny_model_q4) == []


def test_real_adapter_on_wider_model_has_shape_errors(tiny_adapter: Path, tiny_model_wide: Path) -> None:
    findings = fit(tiny_adapter, tiny_model_wide)
    assert _codes(findings) == {"shape-mismatch"}
    assert len(findings) == 28  # every lora_a and lora_b of 7 modules x 2 layers
    q_a = next(f for f in findings if f.where.endswith("model.layers.0.self_attn.q_proj.lora_a"))
    assert "(64, 4)" in q_a.message and "(96, 4)" in q_a.message
    assert q_a.where.startswith(str(tiny_adapter))


def test_real_adapter_on_shallower_model_has_missing_layers(tiny_adapter: Path, tiny_model_shallow: Path) -> None:
    findings = fit(tiny_adapter, tiny_model_shallow)
    assert _codes(findings) == {"layer-missing"}
    assert all(layer_index(f.where.split(": ")[1]) == 1 for f in findings)
    assert "the model has 1 layers" in findings[0].message


def test_adapter_from_shallow_model_on_deeper_model_is_caught(tmp_path: Path, tiny_model: Path) -> None:
    # mlx_lm loads this silently: layer 1 would get an untrained LoRA
    adapter = write_adapter(tmp_path / "ad", layers=(0,), num_layers=-1)
    findings = fit(adapter, tiny_model)
    assert _codes(findings) == {"layers-uncovered"}
    assert findings[0].where.endswith("adapter_config.json: num_layers")


def test_num_layers_larger_than_model(tmp_path: Path, tiny_model: Path) -> None:
    adapter = write_adapter(tmp_path / "ad", num_layers=16)
    findings = fit(adapter, tiny_model)
    assert _codes(findings) == {"num-layers-too-large"}
    assert "16" in findings[0].message and "2 layers" in findings[0].message


def test_layers_must_be_the_last_num_layers(tmp_path: Path, tiny_model: Path) -> None:
    adapter = write_adapter(tmp_path / "ad", layers=(0,), num_layers=1)
    findings = fit(adapter, tiny_model)
    assert _codes(findings) == {"layers-not-last"}
    assert write_adapter(tmp_path / "ok", layers=(1,), num_layers=1) and fit(tmp_path / "ok", tiny_model) == []


def test_rank_differs_from_config(tmp_path: Path, tiny_model: Path) -> None:
    adapter = write_adapter(tmp_path / "ad", rank=8, rank_in_config=4)
    findings = fit(adapter, tiny_model)
    assert _codes(findings) == {"rank-mismatch"}
    assert "rank 8" in findings[0].message and "is 4" in findings[0].message


def test_dora_magnitude_shapes(tmp_path: Path, tiny_model: Path, tiny_model_q4: Path) -> None:
    good = write_adapter(tmp_path / "good", dora=True)
    assert fit(good, tiny_model) == [] and fit(good, tiny_model_q4) == []
    bad = write_adapter(tmp_path / "bad", dora=True,
                        extra={"model.layers.0.self_attn.q_proj.m": ("F32", (63,))})
    findings = fit(bad, tiny_model)
    assert [(f.code, f.where.rsplit(": ", 1)[1]) for f in findings] == [
        ("shape-mismatch", "model.layers.0.self_attn.q_proj.m")
    ]


def test_dora_magnitude_in_a_lora_adapter_is_rejected(tmp_path: Path, tiny_model: Path) -> None:
    adapter = write_adapter(tmp_path / "ad", extra={"model.layers.0.self_attn.q_proj.m": ("F32", (64,))})
    assert _codes(fit(adapter, tiny_model)) == {"not-adapter-tensor"}


def test_unknown_module_and_leaf(tmp_path: Path, tiny_model: Path) -> None:
    adapter = write_adapter(tmp_path / "ad", extra={
        "model.layers.0.self_attn.x_proj.lora_a": ("F32", (64, 4)),
        "model.layers.0.self_attn.q_proj.weight": ("F32", (64, 64)),
    })
    findings = fit(adapter, tiny_model)
    assert _codes(findings) == {"module-missing", "not-adapter-tensor"}


def _moe_model(out: Path, *, experts: int, hidden: int = 32, inter: int = 64, bits: int | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {"model.embed_tokens.weight": ("F32", (100, hidden))}
    for i in range(2):
        p = f"model.layers.{i}.mlp.switch_mlp"
        for proj, (o, n) in {"gate_proj": (inter, hidden), "down_proj": (hidden, inter)}.items():
            if bits:
                tensors[f"{p}.{proj}.weight"] = ("U32", (experts, o, n * bits // 32))
                tensors[f"{p}.{proj}.scales"] = ("F32", (experts, o, n // 32))
                tensors[f"{p}.{proj}.biases"] = ("F32", (experts, o, n // 32))
            else:
                tensors[f"{p}.{proj}.weight"] = ("F32", (experts, o, n))
    write_safetensors(out / "model.safetensors", tensors)
    config: dict = {"model_type": "qwen2_moe", "num_hidden_layers": 2}
    if bits:
        config["quantization"] = {"bits": bits, "group_size": 32}
    (out / "config.json").write_text(json.dumps(config))
    return out


def _moe_adapter(out: Path, *, experts: int, hidden: int = 32, inter: int = 64, rank: int = 2) -> Path:
    tensors = {}
    for i in range(2):
        p = f"model.layers.{i}.mlp.switch_mlp"
        for proj, (o, n) in {"gate_proj": (inter, hidden), "down_proj": (hidden, inter)}.items():
            tensors[f"{p}.{proj}.lora_a"] = ("F32", (experts, rank, n))
            tensors[f"{p}.{proj}.lora_b"] = ("F32", (experts, o, rank))
    return write_adapter(out, rank=rank, modules={}, extra=tensors)


def test_moe_switch_linear_shapes(tmp_path: Path) -> None:
    adapter = _moe_adapter(tmp_path / "ad", experts=4)
    assert fit(adapter, _moe_model(tmp_path / "m4", experts=4)) == []
    assert fit(adapter, _moe_model(tmp_path / "m4q", experts=4, bits=8)) == []
    findings = fit(adapter, _moe_model(tmp_path / "m8", experts=8))
    assert _codes(findings) == {"shape-mismatch"} and len(findings) == 8
    assert "8 experts" in findings[0].message


def test_sharded_model_headers_are_all_read(tmp_path: Path, tiny_model: Path, tiny_adapter: Path) -> None:
    from punie.weights.safetensors import read_header

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(tiny_model / "config.json", sharded / "config.json")
    tensors = read_header(tiny_model / "model.safetensors").tensors
    names = sorted(tensors)
    halves = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for n, part in enumerate(halves, 1):
        file = f"model-0000{n}-of-00002.safetensors"
        write_safetensors(sharded / file, {k: (tensors[k].dtype, tensors[k].shape) for k in part})
        weight_map |= {k: file for k in part}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert len(read_model_shapes(sharded).tensors) == len(tensors)
    assert fit(tiny_adapter, sharded) == []


def test_per_module_quantization_override(tmp_path: Path) -> None:
    model = tmp_path / "m"
    model.mkdir()
    write_safetensors(model / "model.safetensors", {
        "model.layers.0.self_attn.q_proj.weight": ("U32", (64, 64 * 8 // 32)),
        "model.layers.0.self_attn.q_proj.scales": ("F32", (64, 2)),
        "model.layers.0.self_attn.k_proj.weight": ("U32", (32, 64 * 4 // 32)),
        "model.layers.0.self_attn.k_proj.scales": ("F32", (32, 2)),
    })
    (model / "config.json").write_text(json.dumps({"num_hidden_layers": 1, "quantization": {
        "bits": 4, "group_size": 32, "model.layers.0.self_attn.q_proj": {"bits": 8, "group_size": 32}}}))
    shapes = read_model_shapes(model)
    assert shapes.module("model.layers.0.self_attn.q_proj").in_features == 64
    assert shapes.module("model.layers.0.self_attn.k_proj").in_features == 64


def test_lora_parameters_read_only_when_a_module_is_wrapped(tmp_path: Path, tiny_model: Path) -> None:
    # mlx_lm reads rank and dropout only in to_lora: they matter once a module is wrapped.
    adapter = write_adapter(tmp_path / "ad")
    for params, fragment in [({"rank": 0, "scale": 1, "dropout": 0}, "lora_parameters.rank"),
                             ({"rank": 4, "scale": 1}, "lora_parameters.dropout"),
                             ({"rank": 4, "scale": 1, "dropout": 1.5}, "lora_parameters.dropout")]:
        (adapter / "adapter_config.json").write_text(json.dumps({"num_layers": 2, "lora_parameters": params}))
        findings = fit_adapter(inspect_adapter(adapter), read_model_shapes(tiny_model))
        assert any(fragment in f.where for f in findings), findings
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"num_layers": 2, "fine_tune_type": "qlora", "lora_parameters": {"rank": 4, "scale": 10.0, "dropout": 0}}))
    inspection = inspect_adapter(adapter)
    assert inspection.ok and [f.severity for f in inspection.findings] == ["warning"]  # applied as lora


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"fine_tune_type": "lora", "lora_parameters": {"rank": 4, "scale": 1, "dropout": 0}}, "num_layers"),
        ({"num_layers": "2", "lora_parameters": {"rank": 4, "scale": 1, "dropout": 0}}, "num_layers"),
        ({"num_layers": 2, "lora_parameters": {"rank": 4, "alpha": 16, "dropout": 0}}, "not 'alpha'"),
        ({"num_layers": 2}, "lora_parameters"),
        ([1, 2], "JSON object"),
    ],
)
def test_invalid_adapter_config(tmp_path: Path, config: object, fragment: str) -> None:
    adapter = write_adapter(tmp_path / "ad")
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    inspection = inspect_adapter(adapter)
    assert inspection.config is None and not inspection.ok
    assert any(fragment in f"{f.where} {f.message}" for f in inspection.findings), inspection.findings
    with pytest.raises(AdapterError):
        read_adapter(adapter)


def test_adapter_directory_problems(tmp_path: Path) -> None:
    assert _codes(inspect_adapter(tmp_path / "nope").findings) == {"adapter-missing"}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _codes(inspect_adapter(empty).findings) == {"adapter-config-missing", "adapter-weights-missing"}
    crashed = write_adapter(tmp_path / "crashed")
    (crashed / "adapters.safetensors").unlink()
    missing = inspect_adapter(crashed).findings
    assert _codes(missing) == {"adapter-weights-missing"} and "crashed" in missing[0].message
    bad_json = write_adapter(tmp_path / "badjson")
    (bad_json / "adapter_config.json").write_text("{nope")
    assert _codes(inspect_adapter(bad_json).findings) == {"corrupt-file"}
    corrupt = write_adapter(tmp_path / "corrupt")
    (corrupt / "adapters.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    findings = inspect_adapter(corrupt).findings
    assert _codes(findings) == {"corrupt-file"} and findings[0].where.endswith("adapters.safetensors")
    with pytest.raises(CorruptFileError):
        read_adapter(corrupt)


def test_full_fine_tune_compares_parameters(tmp_path: Path, tiny_model: Path, tiny_model_wide: Path) -> None:
    adapter = write_adapter(tmp_path / "full", fine_tune_type="full", modules={}, extra={
        "model.layers.0.self_attn.q_proj.weight": ("F32", (64, 64)),
    })
    assert fit(adapter, tiny_model) == []
    assert _codes(fit(adapter, tiny_model_wide)) == {"shape-mismatch"}
