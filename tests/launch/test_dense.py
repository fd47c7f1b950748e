"""Dense weights where faster (punie.launch.dense): a quantized model served from its dense copy.

The copy is made once (locked, atomic, reused), carries its own fingerprint and its original's
as ``origin``, so `punie check`, adapters and canaries treat it as the model it came from; the
canary distance between the quantized model and its dense float32 copy is measured (< 1e-4).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from punie import envvars
from punie.adapters.canary import base_fingerprint
from punie.cli import main
from punie.launch.blas import BlasChoice
from punie.launch.canary import distance, keyed
from punie.launch.dense import dense_dtype, ensure_dense, is_quantized
from punie.weights.fingerprint import DENSE_MARKER, base_identity
from tests.support import tiny
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
FAST = BlasChoice("/usr/lib/libopenblas.so.0", "search")


def test_auto_is_the_builtin_model_with_a_fast_blas_only(tiny_model_q4: Path, tiny_model: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert dense_dtype("auto", "builtin:x", tiny_model_q4, FAST) == "float32"
    assert dense_dtype("auto", "builtin:x", tiny_model_q4, BlasChoice(None, "search", "no OpenBLAS found")) is None
    assert dense_dtype("auto", str(tiny_model_q4), tiny_model_q4, FAST) is None  # other models: on request
    assert dense_dtype("bfloat16", str(tiny_model_q4), tiny_model_q4, None) == "bfloat16"
    assert dense_dtype("float32", str(tiny_model), tiny_model, FAST) is None  # already dense
    assert dense_dtype("off", "builtin:x", tiny_model_q4, FAST) is None
    monkeypatch.setenv(envvars.DENSE, "off")  # the old path, forced (bench/first_answer.py)
    assert dense_dtype("float32", "builtin:x", tiny_model_q4, FAST) is None


@pytest.mark.mlx
@pytest.mark.slow
def test_the_dense_copy_is_made_once_and_stands_for_its_original(tiny_model_q4: Path) -> None:
    pytest.importorskip("mlx_lm")
    copy = ensure_dense(tiny_model_q4, "float32")
    assert copy != tiny_model_q4 and not is_quantized(copy) and is_quantized(tiny_model_q4)
    original, dense = base_identity(tiny_model_q4), base_identity(copy)
    assert dense.weights != original.weights  # its own fingerprint...
    assert dense.origin == original.weights and dense.same_weights(original) and original.same_weights(dense)
    assert base_fingerprint(copy) == base_fingerprint(tiny_model_q4)  # ...and its original's canary tag
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (tiny_model_q4 / name).exists():
            assert (copy / name).read_bytes() == (tiny_model_q4 / name).read_bytes()
    stamp = (copy / "model.safetensors").stat().st_mtime_ns
    assert ensure_dense(tiny_model_q4, "float32") == copy
    assert (copy / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not remade
    marker = json.loads((copy / DENSE_MARKER).read_text())
    (copy / DENSE_MARKER).write_text(json.dumps({**marker, "origin": "stale"}))
    assert ensure_dense(tiny_model_q4, "float32") == copy
    assert json.loads((copy / DENSE_MARKER).read_text())["origin"] == original.weights  # remade
    assert not [p for p in copy.parent.iterdir() if p.name.startswith(f".{copy.name}-")]  # no temp dir left


@pytest.mark.mlx
@pytest.mark.slow
def test_canary_of_the_quantized_model_and_its_dense_copy_agree(tiny_model_q4: Path, tiny_dataset: Path,
                                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An adapter stamped on the quantized base answers the same canary on the dense copy, with and
    without the fast BLAS (every pair within 1e-4 nats)."""
    pytest.importorskip("mlx_lm")
    from punie.launch.stamp import compute_canary

    adapter = tiny.train_tiny_adapter(tiny_model_q4, tmp_path / "adapter", tiny_dataset)
    copy = ensure_dense(tiny_model_q4, "float32")
    runs = {}
    for blas in ("auto", "off"):
        monkeypatch.setenv(envvars.BLAS, blas)
        runs[("q4", blas)], runs[("dense", blas)] = compute_canary(tiny_model_q4, adapter), compute_canary(copy, adapter)
    first = runs[("q4", "off")]  # the old path: the reference
    for key, canary in runs.items():
        assert canary.base_fingerprint == first.base_fingerprint
        for side in ("base", "adapter"):
            a, b = keyed(getattr(first, side), "id"), keyed(getattr(canary, side), "id")
            assert distance(a, b) < 1e-4, (key, side, a, b)


def _builtin() -> Path:
    from punie.weights.builtin import ensure_builtin

    return ensure_builtin("smollm2-135m-instruct")  # once per session (PUNIE_CACHE_DIR is a session temp dir)


@pytest.mark.mlx
@pytest.mark.slow
def test_the_dense_builtin_passes_check_with_the_shipped_adapter(tmp_path: Path) -> None:
    pytest.importorskip("mlx_lm")
    copy = ensure_dense(_builtin(), "float32")
    adapter = tmp_path / "adapters" / "tool-calling-v3"
    shutil.copytree(REPO / "adapters" / "tool-calling-v3", adapter)
    (tmp_path / "punie.toml").write_text(f"[profiles.dense]\nmodel = {json.dumps(str(copy))}\n"
                                         'adapter = "tool-calling-v3"\n')
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "punie.toml"), "check", "--strict",
                                       "--format", "json"])
    assert result.exit_code == 0, result.output
    (profile,) = json.loads(result.output)["profiles"]
    assert "the weights the adapter was trained on" in json.dumps(profile), profile


@pytest.mark.mlx
@pytest.mark.slow
def test_tool_calling_canary_matches_through_punie_up_on_the_dense_copy() -> None:
    """`punie up tool-calling` serves the dense copy (with OpenBLAS) and its canary still matches."""
    pytest.importorskip("mlx_lm")
    from punie.config import load_profile
    from punie.launch import run_up
    from punie.launch.blas import search

    if sys.platform != "linux" or search() is None:
        pytest.skip("the dense copy is served by default only with a fast BLAS (Linux, OpenBLAS installed)")
    builtin = _builtin()
    resolved = load_profile("tool-calling", config=REPO / "punie.toml", overrides=(f"server.port={free_port()}",))
    lines: list[str] = []
    outcome = run_up(resolved, check=True, sink=lines.append, agent_argv=[sys.executable, "-c", "pass"])
    assert outcome.plan is not None and outcome.plan.backend.dense_of == str(builtin), outcome.plan
    assert outcome.plan.model is not None and Path(outcome.plan.model).name.endswith(".dense-float32")
    assert outcome.canary is not None and outcome.canary["verdict"] == "adapter-active", "\n".join(lines)
    assert outcome.canary["distance_to_adapter"] < 1e-4, outcome.canary  # as recorded on the 4-bit model
    assert outcome.blas is not None and outcome.blas["active"] is True


@pytest.mark.mlx
@pytest.mark.slow
def test_a_rounded_copy_is_another_model_and_gets_its_own_canary(tiny_model_q4: Path, tiny_dataset: Path,
                                                                 tmp_path: Path) -> None:
    """A bfloat16 copy rounds the weights: not its original's identity, and readiness compares the canary
    computed on what is served, not the one recorded on the quantized model."""
    pytest.importorskip("mlx_lm")
    from punie.config import load_profile
    from punie.launch import prepare
    from punie.launch.dense import is_exact_copy
    from punie.launch.stamp import stamp_canary

    adapter = tiny.train_tiny_adapter(tiny_model_q4, tmp_path / "adapters" / "a", tiny_dataset)
    recorded = stamp_canary(adapter, tiny_model_q4)
    (tmp_path / "punie.toml").write_text(f"[profiles.t]\nmodel = {json.dumps(str(tiny_model_q4))}\n"
                                         'adapter = "a"\n[profiles.t.server]\ndense = "bfloat16"\n')
    plan = prepare(load_profile("t", config=tmp_path / "punie.toml"), check=False)
    served = Path(plan.model or "")
    assert plan.backend.dense_of == str(tiny_model_q4) and served.name.endswith("-bfloat16") and not is_exact_copy(served)
    assert base_identity(served).origin is None and not base_identity(served).same_weights(base_identity(tiny_model_q4))
    assert plan.canary is not None and plan.canary.canary.base_fingerprint == base_identity(served).weights
    assert recorded.base_fingerprint == base_identity(tiny_model_q4).weights  # the adapter's record is unchanged
