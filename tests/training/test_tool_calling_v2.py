"""The shipped tool-calling-v2 adapter: trained by `punie train` on `punie data generate --seed 0`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from punie.adapters.registry import read_meta
from punie.config import load_profile
from punie.training.dataset import dataset_hash
from punie.training.generate import generate_dataset

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "punie.toml"
ADAPTER = REPO / "adapters" / "tool-calling-v2"
MODEL = "builtin:smollm2-135m-instruct"


def test_v2_files_are_small_and_portable() -> None:
    files = {p.name: p.stat().st_size for p in ADAPTER.iterdir()}
    assert set(files) == {"adapter_config.json", "adapters.safetensors", "punie-adapter.json"}
    assert sum(files.values()) < 5 * 1024 * 1024
    config = json.loads((ADAPTER / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["model"] == MODEL and config["mask_prompt"] is True


@pytest.mark.slow
def test_v2_was_trained_on_the_generated_data(tmp_path: Path) -> None:
    meta = read_meta(ADAPTER)
    assert meta is not None and meta.base_model == MODEL and meta.stamped
    generate_dataset(tmp_path / "data", seed=0)  # the generator is deterministic: same seed, same rows
    assert meta.dataset_hash == dataset_hash(tmp_path / "data")
    training = (meta.model_extra or {})["training"]
    assert training["chosen_iteration"] in {int(k) for k in training["val_losses"]} | {meta.iters}


def test_v2_profile_extends_tool_calling_with_the_adapter() -> None:
    resolved = load_profile("tool-calling-v2", config=CONFIG)
    assert resolved.profile.model == MODEL and resolved.profile.adapter == "tool-calling-v2"
    assert resolved.profile.server.port != load_profile("tool-calling", config=CONFIG).profile.server.port
