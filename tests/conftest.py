"""Shared fixtures: an isolated environment and tiny real models/adapters built offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import tiny


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No PUNIE_* or HF_* variable of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith(("PUNIE_", "HF_")):
            monkeypatch.delenv(name, raising=False)
    hf = tmp_path_factory.getbasetemp() / "hf-home"
    (hf / "hub").mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HF_HOME", str(hf))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MLX_DISABLE_COMPILE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("PUNIE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "punie-cache"))


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(models_dir: Path) -> Path:
    """Model A: qwen2, hidden 64, 2 layers."""
    return tiny.build_tiny_model(models_dir / "tiny-a")


@pytest.fixture(scope="session")
def tiny_model_wide(models_dir: Path) -> Path:
    """Model B: other dims (hidden 96)."""
    return tiny.build_tiny_model(models_dir / "tiny-b-wide", hidden=96, intermediate=192)


@pytest.fixture(scope="session")
def tiny_model_shallow(models_dir: Path) -> Path:
    """Model C: same dims as A, one layer only."""
    return tiny.build_tiny_model(models_dir / "tiny-c-shallow", layers=1)


@pytest.fixture(scope="session")
def tiny_model_q4(models_dir: Path) -> Path:
    """Model A's shapes, 4-bit quantized."""
    return tiny.build_tiny_model(models_dir / "tiny-a-q4", quantize_bits=4)


@pytest.fixture(scope="session")
def tiny_dataset(models_dir: Path) -> Path:
    return tiny.write_chat_dataset(models_dir / "data")


@pytest.fixture(scope="session")
def tiny_adapter(models_dir: Path, tiny_model: Path, tiny_dataset: Path) -> Path:
    """A real LoRA adapter trained with mlx_lm lora on model A (rank 4, all layers)."""
    return tiny.train_tiny_adapter(tiny_model, models_dir / "adapter-a", tiny_dataset)
