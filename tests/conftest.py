"""Shared fixtures: an isolated environment and tiny real models/adapters built offline; the ``mlx``
marker put on every test that uses mlx (tests/support/markers.py says how that is decided).

Where tests go: ``tests/<package>/test_<thing>.py``, the folder named after the ``src/punie`` package
the test is about (config, adapters, checks, launch, agent, training, weights, cli, api; ``core`` for
the top-level modules and whole-project checks such as the README's). Shared helpers live in
tests/support (ports, tiny models, process helpers): import them rather than writing them again.
See tests/README.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.support import tiny
from tests.support.markers import uses_mlx

# No hypothesis test fails for time alone: a loaded machine (two xdist workers on two cores, CI beside
# other jobs) makes an example slower than the 200 ms default deadline, or generation "too slow", without
# anything being wrong. Tests that set their own settings start from this profile.
settings.register_profile("punie", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("punie")

#: Modules that use state shared by the whole machine: the repository's own punie.toml (its fixed
#: ports, its .punie/) and the builtin model in ~/.cache/punie (served on the real SmolLM2: CPU and memory
#: heavy). With pytest-xdist (`-n 2`, tests/README.md) they run one after the other on one worker.
SHARED_STATE = "builtin-model-and-repo-profiles"
SHARED_STATE_MODULES = frozenset({
    "tests/api/test_readme.py", "tests/core/test_readme.py", "tests/core/test_readme_commands.py",
    "tests/launch/test_dense.py",
    "tests/training/test_readme_prompts.py", "tests/training/test_tool_calling_adapter.py",
    "tests/training/test_tool_calling_v2.py", "tests/training/test_tool_calling_v3.py",
    "tests/weights/test_builtin.py",
})


def xdist_group(item: pytest.Item) -> str:
    """The group of tests one pytest-xdist worker runs in order (`--dist loadgroup`): a module's tests
    stay together (its module-scoped servers start once); vLLM servers (GBs of memory, every core) one at
    a time; the modules of SHARED_STATE_MODULES one at a time."""
    module = item.nodeid.split("::", 1)[0]
    if item.get_closest_marker("vllm") is not None:
        return "vllm"
    return SHARED_STATE if module in SHARED_STATE_MODULES else module


@pytest.hookimpl(tryfirst=True)  # before `-m` selects and xdist groups: both see the marks put here
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``mlx`` every test that uses mlx (tests/support/markers.py), so no test has to remember to;
    put every test in its xdist group."""
    for item in items:
        if item.get_closest_marker("mlx") is None and uses_mlx(item):
            item.add_marker(pytest.mark.mlx)
        item.add_marker(pytest.mark.xdist_group(xdist_group(item)))


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
