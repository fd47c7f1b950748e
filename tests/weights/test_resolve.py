"""Model specs resolve offline: local dirs, the Hugging Face cache, builtin:NAME."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from punie.errors import ModelError, ModelNotProvisioned
from punie.paths import cache_dir
from punie.weights.builtin import BUILTIN_FORMAT, MARKER
from punie.weights.headers import layer_count
from punie.weights.resolve import ModelNotAvailable, find_in_hf_cache, hf_hub_cache, resolve_model


def _fake_model(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    return path


def _hf_snapshot(hub: Path, repo_id: str, commit: str = "abc123", *, ref: bool = True) -> Path:
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snap = _fake_model(repo / "snapshots" / commit)
    if ref:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit + "\n")
    return snap


def test_local_directory_relative_to_project(tmp_path: Path) -> None:
    model = _fake_model(tmp_path / "models" / "m")
    assert resolve_model("models/m", tmp_path) == model.resolve()
    assert resolve_model(str(model), "/") == model.resolve()


def test_local_directory_problems(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model("./nope", tmp_path)
    (tmp_path / "noconf").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model("noconf", tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelError, match="not a directory"):
        resolve_model("file", tmp_path)


def test_hub_id_from_hf_home(tmp_path: Path) -> None:
    hub = Path(os.environ["HF_HOME"]) / "hub"
    snap = _hf_snapshot(hub, "org/tiny-model")
    assert resolve_model("org/tiny-model", tmp_path) == snap


def test_hub_id_from_hf_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = tmp_path / "hub-cache"
    snap = _hf_snapshot(hub, "org/m2", commit="deadbeef")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    assert hf_hub_cache() == hub
    assert resolve_model("org/m2", tmp_path) == snap


def test_hub_cache_default_location() -> None:
    assert hf_hub_cache({}) == Path(os.path.expanduser("~")) / ".cache" / "huggingface" / "hub"
    assert hf_hub_cache({"HF_HOME": "/x"}) == Path("/x/hub")
    assert hf_hub_cache({"HF_HOME": "/x", "HF_HUB_CACHE": "/y"}) == Path("/y")


def test_snapshot_without_ref_is_accepted_when_unique(tmp_path: Path) -> None:
    snap = _hf_snapshot(tmp_path, "org/m", ref=False)
    assert find_in_hf_cache("org/m", env={"HF_HUB_CACHE": str(tmp_path)}) == snap


def test_hub_id_not_in_cache_is_not_available(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match="not available locally") as info:
        resolve_model("mlx-community/Qwen2.5-0.5B-Instruct-4bit", tmp_path)
    assert "hf download" in info.value.render()


def test_builtin_not_provisioned_then_provisioned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUNIE_CACHE_DIR", str(tmp_path / "cache"))  # the shared cache stays unprovisioned
    with pytest.raises(ModelNotProvisioned):
        resolve_model("builtin:smollm2-135m-instruct", "/")
    target = _fake_model(cache_dir() / "models" / "smollm2-135m-instruct")
    with pytest.raises(ModelNotProvisioned, match="older format"):  # converted, but not by this Punie
        resolve_model("builtin:smollm2-135m-instruct", "/")
    (target / MARKER).write_text(json.dumps({"format": BUILTIN_FORMAT, "name": "smollm2-135m-instruct"}))
    assert resolve_model("builtin:smollm2-135m-instruct", "/") == target


def test_unknown_builtin_has_did_you_mean() -> None:
    with pytest.raises(ModelError, match="unknown builtin") as info:
        resolve_model("builtin:smollm2-135m-instruc", "/")
    assert not isinstance(info.value, ModelNotProvisioned)
    assert "did you mean 'builtin:smollm2-135m-instruct'" in info.value.render()


def test_layer_count_variants() -> None:
    assert layer_count({"num_hidden_layers": 3}) == 3
    assert layer_count({"n_layer": 4}) == 4
    assert layer_count({"text_config": {"num_hidden_layers": 5}}) == 5
    assert layer_count({"num_hidden_layers": True}) is None
    assert layer_count({}) is None


def test_provision_model_rejects_non_builtin_and_unknown_names() -> None:
    from punie.weights.resolve import provision_model

    with pytest.raises(ModelError, match="only builtin"):
        provision_model("org/model")
    with pytest.raises(ModelError, match="unknown builtin"):
        provision_model("builtin:nope")
