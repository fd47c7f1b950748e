"""Exactness of composed adapters as mlx_lm loads and runs them on the tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from punie.adapters.compose import compose
from punie.weights.safetensors import write_safetensors
from tests.adapters.test_compose import deltas, make_part
from tests.support import tiny

mx = pytest.importorskip("mlx.core")
mlx_lm = pytest.importorskip("mlx_lm")

pytestmark = pytest.mark.mlx

ALL_KEYS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def load(model: Path, adapter: Path | None = None):
    m, _ = mlx_lm.load(str(model), adapter_path=str(adapter) if adapter else None)
    return m


def module(model, path: str):
    """The module at ``model.layers.N.self_attn.q_proj`` style path."""
    obj = model
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def module_deltas(base, adapted, paths: list[str], x_by_path: dict[str, mx.array]) -> dict[str, np.ndarray]:
    """adapted_m(x) - base_m(x) for each module path, as mlx_lm runs it."""
    out = {}
    for path in paths:
        x = x_by_path[path]
        out[path] = np.array(module(adapted, path)(x) - module(base, path)(x))
    return out


def check_module_exactness(model: Path, parts: list[tuple[Path, float]], composed: Path, layers: int) -> float:
    """composed_m(x) - W x == sum_i w_i (part_i_m(x) - W x) for every adapted module; returns the delta size.

    The tolerance is relative to the largest delta, so small trained deltas are checked as strictly.
    """
    base = load(model)
    loaded = [load(model, p) for p, _ in parts]
    comp = load(model, composed)
    paths = [f"model.layers.{i}.{k}" for i in range(layers) for k in ALL_KEYS]
    mx.random.seed(7)
    x_by_path = {}
    for path in paths:
        lin = module(base, path)
        fan_in = lin.weight.shape[1] * (32 // lin.bits if hasattr(lin, "bits") else 1)
        x_by_path[path] = mx.random.normal((2, 3, fan_in))
    got = module_deltas(base, comp, paths, x_by_path)
    want = {p: np.zeros_like(v) for p, v in got.items()}
    for (_, weight), adapted in zip(parts, loaded, strict=True):
        for path, delta in module_deltas(base, adapted, paths, x_by_path).items():
            want[path] += weight * delta
    size = max(float(np.abs(v).max()) for v in want.values())
    assert size > 0
    for path in paths:
        np.testing.assert_allclose(got[path], want[path], atol=1e-5 * max(size, 1.0), rtol=0, err_msg=path)
        np.testing.assert_allclose(got[path], want[path], atol=1e-4 * size, rtol=0, err_msg=path)
    return size


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_model_q4"])
def test_composed_modules_equal_weighted_sum_of_part_deltas(
    request: pytest.FixtureRequest, fixture: str, tmp_path: Path
) -> None:
    model = request.getfixturevalue(fixture)
    a = make_part(tmp_path / "a", rank=4, layers=[0, 1], keys=["self_attn.q_proj", "self_attn.v_proj"], seed=1,
                  model=str(model))
    b = make_part(tmp_path / "b", rank=2, layers=[1], keys=["self_attn.q_proj", "mlp.down_proj"], scale=5.0,
                  seed=2, model=str(model))
    parts = [(a, 1.0), (b, 0.5)]
    composed = compose(parts, tmp_path / "ab")
    size = check_module_exactness(model, parts, composed, layers=2)
    assert size > 0.1  # the deltas are far from zero, so equality is not vacuous


def test_composed_model_equals_merged_weights_end_to_end(tiny_model: Path, tmp_path: Path) -> None:
    """Logits with the composed adapter equal logits of W + sum_i w_i dW_i written into the base."""
    from mlx.utils import tree_flatten

    a = make_part(tmp_path / "a", rank=4, layers=[0, 1], keys=ALL_KEYS, seed=1, scale=2.0, model=str(tiny_model))
    b = make_part(tmp_path / "b", rank=3, layers=[1], keys=["mlp.up_proj", "self_attn.o_proj"], seed=2,
                  model=str(tiny_model))
    # A top-level module (the tied embedding) whose key is its full path, as mlx_lm applies it.
    c = make_part(tmp_path / "c", rank=2, layers=[], keys=[], seed=3, model=str(tiny_model))
    rng = np.random.default_rng(3)
    vocab = load(tiny_model).model.embed_tokens.weight.shape[0]
    write_safetensors(c / "adapters.safetensors", {
        "model.embed_tokens.lora_a": rng.normal(0, 0.1, (vocab, 2)).astype(np.float32),
        "model.embed_tokens.lora_b": rng.normal(0, 0.1, (2, 64)).astype(np.float32),
    })
    config = json.loads((c / "adapter_config.json").read_text())
    config["lora_parameters"]["keys"] = ["model.embed_tokens"]
    (c / "adapter_config.json").write_text(json.dumps(config))
    parts = [(a, 0.7), (b, -1.3), (c, 0.5)]
    composed = compose(parts, tmp_path / "ab")

    merged = load(tiny_model)
    params = dict(tree_flatten(merged.parameters()))
    update = {}
    for path, weight in parts:
        for mod, delta in deltas(path).items():
            name = f"{mod}.weight"
            current = update.get(name, np.array(params[name]).astype(np.float64))
            # nn.Linear weight is (out, in); an Embedding's is (vocab, dims) like lora_a @ lora_b.
            update[name] = current + weight * (delta if "embed_tokens" in mod else delta.T)
    merged.load_weights([(k, mx.array(v.astype(np.float32))) for k, v in update.items()], strict=False)

    tokens = mx.array([[1, 5, 9, 42, 7, 3, 11, 2]])
    base_logits = np.array(load(tiny_model)(tokens))
    want = np.array(merged(tokens))
    got = np.array(load(tiny_model, composed)(tokens))
    assert np.abs(want - base_logits).max() > 1e-2  # the adapters change the output
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_trained_adapters_compose_exactly(
    tiny_model: Path, tiny_adapter: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """A pair trained by mlx_lm lora: rank 4 on all layers and rank 2 on the last layer."""
    other = tiny.train_tiny_adapter(tiny_model, tmp_path / "b", tiny_dataset, rank=2, num_layers=1)
    parts = [(tiny_adapter, 1.0), (other, 0.5)]
    composed = compose(parts, tmp_path / "ab")
    size = check_module_exactness(tiny_model, parts, composed, layers=2)
    assert size > 1e-4
