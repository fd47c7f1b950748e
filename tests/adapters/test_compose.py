"""Adapter composition without mlx: math, union of modules, refusals, cache, CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from punie.adapters.compose import (
    COMPOSED_SCALE,
    compose,
    composition_hash,
    ensure_composed,
    plan_composition,
)
from punie.adapters.tensors import load_tensor, tensor_index
from punie.api.adapters import parse_part
from punie.cli.adapters_compose import attach
from punie.config.models import AdapterRef
from punie.errors import AdapterError, CorruptFileError
from punie.weights.safetensors import write_safetensors

# Shapes of the conftest tiny model (hidden 64, 4 heads, 2 kv heads -> k/v out 32, intermediate 128).
TINY_SHAPES = {
    "self_attn.q_proj": (64, 64),
    "self_attn.k_proj": (64, 32),
    "self_attn.v_proj": (64, 32),
    "self_attn.o_proj": (64, 64),
    "mlp.gate_proj": (64, 128),
    "mlp.up_proj": (64, 128),
    "mlp.down_proj": (128, 64),
}


def make_part(
    out: Path,
    *,
    rank: int,
    layers: list[int],
    keys: list[str],
    scale: float = 10.0,
    num_layers: int | None = None,
    seed: int = 0,
    model: str = "tiny-a",
    shapes: dict[str, tuple[int, int]] | None = None,
    dtype: str = "float32",
    fine_tune_type: str = "lora",
) -> Path:
    """A synthetic mlx_lm-format LoRA adapter with random non-zero lora_a and lora_b."""
    shapes = shapes or TINY_SHAPES
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for i in layers:
        for key in keys:
            fan_in, fan_out = shapes[key]
            tensors[f"model.layers.{i}.{key}.lora_a"] = rng.normal(0, 0.1, (fan_in, rank)).astype(dtype)
            tensors[f"model.layers.{i}.{key}.lora_b"] = rng.normal(0, 0.1, (rank, fan_out)).astype(dtype)
    write_safetensors(out / "adapters.safetensors", tensors)
    config = {
        "fine_tune_type": fine_tune_type,
        "model": model,
        "num_layers": num_layers if num_layers is not None else len(layers),
        "lora_parameters": {"rank": rank, "scale": scale, "dropout": 0.0},
    }
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def read_adapter(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    config = json.loads((path / "adapter_config.json").read_text())
    file = path / "adapters.safetensors"
    return config, {name: load_tensor(file, info) for name, info in tensor_index(file).items()}


def deltas(path: Path) -> dict[str, np.ndarray]:
    """Effective weight update per module, in x @ delta form: scale * lora_a @ lora_b (in, out)."""
    config, tensors = read_adapter(path)
    scale = config["lora_parameters"]["scale"]
    out = {}
    for name in tensors:
        if name.endswith(".lora_a"):
            module = name[: -len(".lora_a")]
            out[module] = scale * tensors[name].astype(np.float64) @ tensors[f"{module}.lora_b"].astype(np.float64)
    return out


def assert_exact(composed: Path, parts: list[tuple[Path, float]]) -> None:
    got = deltas(composed)
    want: dict[str, np.ndarray] = {}
    for path, weight in parts:
        for module, delta in deltas(path).items():
            want[module] = want.get(module, 0) + weight * delta
    assert set(want) <= set(got)
    for module, delta in got.items():
        np.testing.assert_allclose(delta, want.get(module, np.zeros_like(delta)), atol=1e-5, err_msg=module)


def test_compose_is_weighted_sum_of_deltas_with_union_of_modules(tmp_path: Path) -> None:
    a = make_part(tmp_path / "a", rank=4, layers=[0, 1], keys=["self_attn.q_proj", "self_attn.v_proj"], seed=1)
    b = make_part(tmp_path / "b", rank=2, layers=[1], keys=["self_attn.q_proj", "mlp.down_proj"], scale=5.0, seed=2)
    out = compose([(a, 1.0), (b, 0.5)], tmp_path / "ab")

    config, tensors = read_adapter(out)
    assert config["fine_tune_type"] == "lora"
    assert config["num_layers"] == 2
    assert config["model"] == "tiny-a"
    assert config["lora_parameters"] == {
        "rank": 6, "scale": COMPOSED_SCALE, "dropout": 0.0,
        "keys": ["mlp.down_proj", "self_attn.q_proj", "self_attn.v_proj"],
    }
    # Layer 0 has no down_proj in either part: a zero block of the right shape.
    assert tensors["model.layers.0.mlp.down_proj.lora_a"].shape == (128, 6)
    assert not tensors["model.layers.0.mlp.down_proj.lora_b"].any()
    assert tensors["model.layers.1.self_attn.v_proj.lora_b"].shape == (6, 32)
    assert_exact(out, [(a, 1.0), (b, 0.5)])
    meta = json.loads((out / "punie-adapter.json").read_text())
    assert [p["weight"] for p in meta["composed_from"]] == [1.0, 0.5]
    assert meta["base_model"] == "tiny-a"
    # Coverage differences are explained, not silently papered over.
    notes = plan_composition([(a, 1.0), (b, 0.5)]).notes
    assert meta["composition_notes"] == list(notes)
    assert notes == (
        f"{a} does not adapt 2 of 6 modules (layers 0-1): mlp.down_proj; its rank-4 block is zero there (exact)",
        f"{b} does not adapt 4 of 6 modules (layers 0-1): mlp.down_proj, self_attn.q_proj, self_attn.v_proj; "
        "its rank-2 block is zero there (exact)",
    )


def test_switch_linear_parts_concatenate_on_their_rank_axes(tmp_path: Path) -> None:
    """MoE experts (mlx_lm LoRASwitchLinear): lora_a (E, r, in), lora_b (E, out, r)."""
    rng = np.random.default_rng(5)
    parts = []
    for name, rank, scale, weight in (("a", 3, 2.0, 1.0), ("b", 2, 4.0, -0.5)):
        d = tmp_path / name
        d.mkdir()
        write_safetensors(d / "adapters.safetensors", {
            "model.layers.0.mlp.switch_mlp.up_proj.lora_a": rng.normal(size=(4, rank, 16)).astype(np.float32),
            "model.layers.0.mlp.switch_mlp.up_proj.lora_b": rng.normal(size=(4, 24, rank)).astype(np.float32),
        })
        (d / "adapter_config.json").write_text(json.dumps(
            {"num_layers": 1, "lora_parameters": {"rank": rank, "scale": scale, "dropout": 0.0}}))
        parts.append((d, weight))
    out = compose(parts, tmp_path / "ab")
    module = "model.layers.0.mlp.switch_mlp.up_proj"

    def expert_delta(path: Path) -> np.ndarray:
        config, tensors = read_adapter(path)
        return config["lora_parameters"]["scale"] * tensors[f"{module}.lora_b"] @ tensors[f"{module}.lora_a"]

    _, tensors = read_adapter(out)
    assert tensors[f"{module}.lora_a"].shape == (4, 5, 16)
    assert tensors[f"{module}.lora_b"].shape == (4, 24, 5)
    want = sum(w * expert_delta(p) for p, w in parts)
    np.testing.assert_allclose(expert_delta(out), want, atol=1e-5)


def test_bf16_and_f16_parts_compose_exactly(tmp_path: Path) -> None:
    a = make_part(tmp_path / "a", rank=3, layers=[0], keys=["mlp.up_proj"], dtype="float16", seed=3)
    # bf16 written by hand: the upper 16 bits of float32 values that bf16 represents exactly.
    b = make_part(tmp_path / "b", rank=2, layers=[0], keys=["mlp.up_proj"], seed=4)
    _, tensors = read_adapter(b)
    raw = {}
    for name, arr in tensors.items():
        bits = (arr.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        raw[name] = (bits, (bits.astype(np.uint32) << 16).view(np.float32))
    header = {n: {"dtype": "BF16", "shape": list(v[0].shape), "data_offsets": [0, 0]} for n, v in raw.items()}
    blob, offset = b"", 0
    for name in sorted(raw):
        data = raw[name][0].astype("<u2").tobytes()
        header[name]["data_offsets"] = [offset, offset + len(data)]
        blob += data
        offset += len(data)
    text = json.dumps(header).encode()
    (b / "adapters.safetensors").write_bytes(len(text).to_bytes(8, "little") + text + blob)
    _, back = read_adapter(b)
    for name, (_, exact) in raw.items():
        np.testing.assert_array_equal(back[name], exact)

    out = compose([(a, 2.0), (b, -1.0)], tmp_path / "ab")
    assert_exact(out, [(a, 2.0), (b, -1.0)])


@settings(max_examples=15, deadline=None)
@given(
    ranks=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    weights=st.lists(st.floats(-3, 3, allow_nan=False, width=32), min_size=3, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_composition_is_exact_for_any_ranks_and_weights(
    tmp_path_factory: pytest.TempPathFactory, ranks: list[int], weights: list[float], seed: int
) -> None:
    root = tmp_path_factory.mktemp("prop")
    keys = ["self_attn.k_proj", "mlp.gate_proj"]
    parts = [
        (make_part(root / f"p{i}", rank=r, layers=[i % 2], keys=keys[: 1 + i % 2], num_layers=2 - i % 2,
                   scale=1.0 + i, seed=seed + i), weights[i])
        for i, r in enumerate(ranks)
    ]
    out = compose(parts, root / "out")
    assert read_adapter(out)[0]["lora_parameters"]["rank"] == sum(ranks)
    assert_exact(out, parts)


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.dictionaries(
        st.from_regex(r"[a-z]{1,6}\.lora_[ab]", fullmatch=True),
        st.lists(st.integers(1, 4), min_size=1, max_size=3),
        min_size=1, max_size=4,
    ),
    half=st.booleans(),
)
def test_safetensors_write_read_round_trip(tmp_path_factory: pytest.TempPathFactory, shapes: dict, half: bool) -> None:
    rng = np.random.default_rng(0)
    dtype = np.float16 if half else np.float32
    tensors = {name: rng.normal(size=shape).astype(dtype) for name, shape in shapes.items()}
    file = tmp_path_factory.mktemp("st") / "x.safetensors"
    write_safetensors(file, tensors)
    assert int.from_bytes(file.read_bytes()[:8], "little") % 8 == 0
    index = tensor_index(file)
    assert set(index) == set(tensors)
    for name, arr in tensors.items():
        assert index[name].dtype == ("F16" if half else "F32")
        np.testing.assert_array_equal(load_tensor(file, index[name]), arr.astype(np.float32))


def test_refuses_dora_with_an_explanation(tmp_path: Path) -> None:
    a = make_part(tmp_path / "a", rank=2, layers=[0], keys=["mlp.up_proj"])
    d = make_part(tmp_path / "d", rank=2, layers=[0], keys=["mlp.up_proj"], fine_tune_type="dora")
    with pytest.raises(AdapterError, match="DoRA adapters cannot be composed exactly") as err:
        plan_composition([(a, 1.0), (d, 1.0)])
    assert err.value.where == str(d)
    # A .m tensor under a config that says lora is refused too.
    _, tensors = read_adapter(a)
    tensors["model.layers.0.mlp.up_proj.m"] = np.ones(128, dtype=np.float32)
    write_safetensors(a / "adapters.safetensors", tensors)
    with pytest.raises(AdapterError, match="DoRA magnitude vector"):
        plan_composition([(a, 1.0)])


def test_refuses_non_finite_weight(tmp_path: Path) -> None:
    a = make_part(tmp_path / "a", rank=2, layers=[0], keys=["mlp.up_proj"])
    with pytest.raises(AdapterError, match="finite"):
        plan_composition([(a, float("nan"))])


def test_refuses_full_fine_tune(tmp_path: Path) -> None:
    f = make_part(tmp_path / "f", rank=2, layers=[0], keys=["mlp.up_proj"], fine_tune_type="full")
    with pytest.raises(AdapterError, match="only 'lora'"):
        plan_composition([(f, 1.0)])


def test_refuses_other_base_model(tmp_path: Path) -> None:
    a = make_part(tmp_path / "a", rank=2, layers=[0], keys=["mlp.up_proj"], model="org/base-one")
    b = make_part(tmp_path / "b", rank=2, layers=[0], keys=["mlp.up_proj"], model="org/base-two")
    with pytest.raises(AdapterError, match="different base models") as err:
        plan_composition([(a, 1.0), (b, 1.0)])
    assert "org/base-two" in str(err.value) and "org/base-one" in str(err.value)
    # Same fingerprint recorded by punie wins over differently spelt model strings.
    for part in (a, b):
        (part / "punie-adapter.json").write_text(json.dumps({"base_model": "x", "base_fingerprint": "f00d"}))
    assert plan_composition([(a, 1.0), (b, 1.0)]).fingerprint == "f00d"


def test_refuses_disagreeing_shapes_naming_the_module(tmp_path: Path) -> None:
    a = make_part(tmp_path / "a", rank=2, layers=[0], keys=["mlp.up_proj"])
    wide = dict(TINY_SHAPES, **{"mlp.up_proj": (96, 192)})
    b = make_part(tmp_path / "b", rank=2, layers=[0], keys=["mlp.up_proj"], shapes=wide)
    with pytest.raises(AdapterError, match=r"module 'model\.layers\.0\.mlp\.up_proj' has lora_a \[96, 2\]"):
        plan_composition([(a, 1.0), (b, 1.0)])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "adapters.safetensors").unlink(), "no adapters.safetensors"),
        (lambda d: (d / "adapter_config.json").write_text("{nope"), "not valid JSON"),
        (lambda d: (d / "adapters.safetensors").write_bytes(b"\x10\x00"), "shorter than the 8-byte header length"),
        (lambda d: (d / "adapters.safetensors").write_bytes((10**9).to_bytes(8, "little") + b"{}"), "exceeds"),
        (lambda d: (d / "adapter_config.json").write_text(
            json.dumps({"num_layers": 1, "lora_parameters": {"rank": 2, "alpha": 16}})), "scale is missing"),
        (lambda d: (d / "adapter_config.json").write_text(
            json.dumps({"num_layers": 1, "lora_parameters": {"rank": 3, "scale": 1}})), "rank is 3 but"),
    ],
)
def test_broken_parts_are_explained(tmp_path: Path, damage, message: str) -> None:
    a = make_part(tmp_path / "a", rank=2, layers=[0], keys=["mlp.up_proj"])
    damage(a)
    with pytest.raises(AdapterError, match=message) as err:
        plan_composition([(a, 1.0)])
    assert str(a) in (err.value.where or "")


def test_truncated_tensor_data_is_corrupt(tmp_path: Path) -> None:
    a = make_part(tmp_path / "a", rank=2, layers=[0], keys=["mlp.up_proj"])
    data = (a / "adapters.safetensors").read_bytes()
    (a / "adapters.safetensors").write_bytes(data[:-16])
    with pytest.raises(CorruptFileError, match="outside the .*data section"):
        plan_composition([(a, 1.0)])


def test_ensure_composed_caches_by_content(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    make_part(project / "adapters" / "general-v1", rank=4, layers=[0, 1], keys=["self_attn.q_proj"], seed=1)
    make_part(tmp_path / "proj" / "tools", rank=2, layers=[1], keys=["mlp.up_proj"], seed=2)
    refs = [AdapterRef(path="general-v1"), AdapterRef(path="tools", weight=0.5)]

    first = ensure_composed(refs, project)
    assert first.parent == project / ".punie" / "composed" and len(first.name) == 16
    assert_exact(first, [(project / "adapters" / "general-v1", 1.0), (project / "tools", 0.5)])
    stamp = (first / "adapters.safetensors").stat().st_mtime_ns
    assert ensure_composed(refs, project) == first
    assert (first / "adapters.safetensors").stat().st_mtime_ns == stamp

    other = ensure_composed([refs[0], AdapterRef(path="tools", weight=0.25)], project)
    assert other != first
    # Retraining a part (new bytes) composes anew.
    make_part(project / "tools", rank=2, layers=[1], keys=["mlp.up_proj"], seed=3)
    assert ensure_composed(refs, project) not in (first, other)
    assert sorted(p.name for p in (project / ".punie" / "composed").iterdir() if p.name.startswith(".")) == []


def test_hash_depends_on_order_weight_and_bytes(tmp_path: Path) -> None:
    a = make_part(tmp_path / "a", rank=2, layers=[0], keys=["mlp.up_proj"], seed=1)
    b = make_part(tmp_path / "b", rank=2, layers=[0], keys=["mlp.up_proj"], seed=2)
    h = composition_hash([(a, 1.0), (b, 1.0)])
    assert h == composition_hash([(a, 1.0), (b, 1.0)])
    assert h != composition_hash([(b, 1.0), (a, 1.0)])
    assert h != composition_hash([(a, 1.0), (b, 1.5)])


def test_ensure_composed_explains_missing_part(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="nope"):
        ensure_composed([AdapterRef(path="nope")], tmp_path)
    assert not (tmp_path / ".punie" / "composed").exists() or not any((tmp_path / ".punie" / "composed").iterdir())


def test_compose_refuses_non_empty_out_unless_forced(tmp_path: Path) -> None:
    a = make_part(tmp_path / "a", rank=2, layers=[0], keys=["mlp.up_proj"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(AdapterError, match="not empty"):
        compose([(a, 1.0)], out)
    compose([(a, 1.0)], out, force=True)
    assert not (out / "keep").exists() and (out / "adapters.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a", ("a", 1.0)), ("a:0.5", ("a", 0.5)), ("dir/x:y", ("dir/x:y", 1.0)),
        ("a:-2", ("a", -2.0)), (":3", (":3", 1.0)),
    ],
)
def test_parse_part(text: str, expected: tuple[str, float]) -> None:
    assert parse_part(text) == expected


def _adapters_group() -> click.Group:
    @click.group("adapters")
    def adapters() -> None:
        """Adapters."""

    attach(adapters)
    return adapters


def test_cli_compose_writes_and_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_part(tmp_path / "adapters" / "general-v1", rank=4, layers=[0, 1], keys=["self_attn.q_proj"], seed=1)
    make_part(tmp_path / "b", rank=2, layers=[1], keys=["mlp.up_proj"], seed=2)
    result = CliRunner().invoke(_adapters_group(), ["compose", "general-v1", "b:0.5", "--out", "ab", "--format", "json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["adapter_config"]["lora_parameters"]["rank"] == 6
    assert len(shown["punie_adapter"]["composition_notes"]) == 2
    assert_exact(tmp_path / "ab", [(tmp_path / "adapters" / "general-v1", 1.0), (tmp_path / "b", 0.5)])

    again = CliRunner().invoke(_adapters_group(), ["compose", "general-v1", "--out", "ab"])
    assert again.exit_code != 0 and isinstance(again.exception, AdapterError)
    text = CliRunner().invoke(_adapters_group(), ["compose", "general-v1", "b", "--out", "ab", "--force"])
    assert text.exit_code == 0, text.output
    assert text.output.startswith("composed 2 adapters into ab: rank 6, num_layers 2")
    assert "  note: " in text.output


def test_cli_compose_through_punie_main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from punie.cli import main

    monkeypatch.chdir(tmp_path)
    make_part(tmp_path / "a", rank=2, layers=[0], keys=["mlp.up_proj"], model="m1")
    make_part(tmp_path / "b", rank=2, layers=[0], keys=["mlp.up_proj"], model="m2")
    result = CliRunner().invoke(main, ["adapters", "compose", "a", "b", "--out", "ab"])
    assert result.exit_code == 1
    assert "punie: error:" in result.output and "different base models" in result.output
    assert not os.path.exists(tmp_path / "ab")
