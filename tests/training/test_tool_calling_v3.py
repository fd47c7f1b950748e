"""The shipped tool-calling adapter, tool-calling-v3 (profile `tool-calling`): trained by `punie train` on
`punie data generate --train 3000 --valid 200 --seed 3`, and scored on the whole shipped suite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from punie.adapters.registry import read_meta
from punie.config import load_profile
from punie.training.dataset import dataset_hash
from punie.training.generate import generate_dataset
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "punie.toml"
ADAPTER = REPO / "adapters" / "tool-calling-v3"
MODEL = "builtin:smollm2-135m-instruct"
#: What v3 reaches on the shipped 63-case suite, greedy (0.817 when trained; issue 21's bar for a dependable
#: tool caller is 0.9, not reached yet): a retrained adapter must not fall below it.
FLOOR = 0.8


def test_v3_files_are_small_and_portable() -> None:
    files = {p.name: p.stat().st_size for p in ADAPTER.iterdir()}
    assert set(files) == {"adapter_config.json", "adapters.safetensors", "punie-adapter.json"}
    assert sum(files.values()) < 12 * 1024 * 1024
    config = json.loads((ADAPTER / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["model"] == MODEL and config["mask_prompt"] is True
    assert config["data"] == "punie data generate --train 3000 --valid 200 --seed 3"


@pytest.mark.slow
def test_v3_was_trained_on_the_generated_data_and_the_guard_chose_its_weights(tmp_path: Path) -> None:
    meta = read_meta(ADAPTER)
    assert meta is not None and meta.base_model == MODEL and meta.stamped
    generate_dataset(tmp_path / "data", train=3000, valid=200, seed=3)  # deterministic: same seed, same rows
    assert meta.dataset_hash == dataset_hash(tmp_path / "data")
    training = (meta.model_extra or {})["training"]
    assert training["stopped"] is None
    losses = {int(k): v for k, v in training["val_losses"].items()}
    assert training["chosen_val_loss"] == min(v for k, v in losses.items() if k > 1)


def test_the_tool_calling_profile_serves_v3() -> None:
    resolved = load_profile("tool-calling", config=CONFIG)
    assert resolved.profile.model == MODEL and resolved.profile.adapter == "tool-calling-v3"


@pytest.mark.slow
@pytest.mark.mlx
@pytest.mark.timeout(1800)
def test_v3_scores_at_least_its_floor_on_the_whole_shipped_suite(tmp_path: Path) -> None:
    """The real model with v3, greedy, every case of the shipped suite (two-step cases both steps): the mean
    score is at least FLOOR, and the recorded evaluation (`punie eval --record`) says the same."""
    from punie.training.evaluate import ask_suite, serve
    from punie.training.suite import load_suite
    from punie.weights.builtin import ensure_builtin

    ensure_builtin("smollm2-135m-instruct")
    suite = load_suite("tool-calling")
    assert len(suite.cases) >= 60
    resolved = load_profile("tool-calling", config=CONFIG, overrides=(f"server.port={free_port()}",))
    with serve(resolved, log_dir=tmp_path) as (base_url, adapter):
        assert adapter is not None and Path(adapter) == ADAPTER
        results, _ = ask_suite(base_url, suite, label="v3")
    score = sum(r.score for r in results) / len(results)
    failing = [(r.id, r.score, r.tool_call) for r in results if not r.passed]
    assert score >= FLOOR, (score, failing)
    meta = read_meta(ADAPTER)
    assert meta is not None and meta.eval is not None
    recorded = meta.eval["suites"]["tool-calling"]
    assert recorded["score"] >= FLOOR and abs(recorded["score"] - score) < 0.05, (recorded["score"], score)
