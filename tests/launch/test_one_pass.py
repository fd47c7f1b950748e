"""One pass from check to plan (issue 22): the check's resolved paths are the plan's inputs, each guard
runs once, and one rule builds the server URL.

The counters wrap the real functions (nothing is faked): a launch with the check resolves the base
model and the adapter once (inside the check), refuses a remote host once, and hands the check's
paths to the backend; ``--no-check`` resolves them once in the launch instead. (The model an adapter
records as its base is fingerprinted by `punie.adapters.identity`, a question of its own: not counted.)
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from punie.config import load_profile, load_profiles

pytestmark = pytest.mark.mlx  # the adapter is trained with mlx_lm


def _spy(monkeypatch: pytest.MonkeyPatch, calls: Counter[str], target: str, name: str) -> None:
    import importlib

    path, attr = target.rsplit(".", 1)
    module = importlib.import_module(path)  # the module (punie.launch.prepare is also a function's name)
    real: Callable[..., Any] = getattr(module, attr)

    def counted(*args: Any, **kwargs: Any) -> Any:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        # the adapter's recorded base is fingerprinted by punie.adapters.identity: another question
        if not caller.startswith("punie.adapters.identity"):
            calls[name] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, attr, counted)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    found: Counter[str] = Counter()
    _spy(monkeypatch, found, "punie.adapters.registry.effective_adapter", "adapter")
    _spy(monkeypatch, found, "punie.checks.profile.resolve_model", "model")  # the check's resolver
    _spy(monkeypatch, found, "punie.weights.resolve.resolve_model", "model")  # the launch's (punie.launch.resolve)
    _spy(monkeypatch, found, "punie.launch.prepare.refuse_remote", "guard")
    _spy(monkeypatch, found, "punie.launch.prepare.check_profiles", "check")
    return found


def _profile(tmp_path: Path, model: Path, adapter: Path, backend: str = "") -> Any:
    server = f'server.backend = "{backend}"\nserver.vllm.python = "{tmp_path / "vpython"}"\n' if backend else ""
    (tmp_path / "punie.toml").write_text(f'[profiles.p]\nmodel = "{model}"\nadapter = "{adapter}"\n'
                                         f"server.blas = \"off\"\nserver.dense = \"off\"\n{server}")
    return load_profile("p", config=str(tmp_path / "punie.toml"), env={})


def test_the_checked_paths_are_the_plan_inputs(tmp_path: Path, tiny_model: Path, tiny_adapter: Path,
                                               calls: Counter[str]) -> None:
    from punie.launch.prepare import prepare

    plan = prepare(_profile(tmp_path, tiny_model, tiny_adapter), provision=False)
    assert plan.model == str(tiny_model) and Path(plan.adapter or "") == tiny_adapter.resolve()
    assert calls == Counter(adapter=1, model=1, guard=1, check=1), calls


def test_without_the_check_the_launch_resolves_once(tmp_path: Path, tiny_model: Path, tiny_adapter: Path,
                                                    calls: Counter[str]) -> None:
    from punie.launch.prepare import prepare

    plan = prepare(_profile(tmp_path, tiny_model, tiny_adapter), check=False, provision=False)
    assert plan.model == str(tiny_model) and plan.adapter is not None
    assert calls == Counter(adapter=1, model=1, guard=1), calls


def test_a_vllm_launch_takes_the_checked_paths_too(tmp_path: Path, tiny_model: Path, tiny_adapter: Path,
                                                   calls: Counter[str]) -> None:
    from punie.launch.prepare import prepare

    python = tmp_path / "vpython"
    python.write_text("#!/bin/sh\necho 0.32.0\n")
    python.chmod(0o755)
    resolved = _profile(tmp_path, tiny_model, tiny_adapter, backend="vllm")
    plan = prepare(resolved, check=False, provision=False)
    assert plan.backend.name == "vllm" and set(plan.backend.lora_modules) == {"p"}  # type: ignore[union-attr]
    assert calls == Counter(adapter=1, model=1, guard=1), calls


def test_one_rule_builds_the_server_url(tmp_path: Path) -> None:
    from punie.agent.target import server_base_url
    from punie.launch.prepare import prepare

    (tmp_path / "punie.toml").write_text(
        '[profiles.a]\nmodel = "builtin:smollm2-135m-instruct"\nserver.host = "0.0.0.0"\nserver.port = 8123\n'
        'server.allow_remote = true\n'
        '[profiles.b]\nserver.url = "http://127.0.0.1:9/v1/"\n'
        '[profiles.c]\nserver.url = "http://127.0.0.1:9"\nserver.backend = "vllm"\n')
    for resolved in load_profiles(config=str(tmp_path / "punie.toml"), env={}):
        plan = prepare(resolved, check=False, provision=False)
        assert plan.base_url == server_base_url(resolved.profile.server) == plan.server_url + "/v1"
        assert json.dumps(plan.agent_argv).count(plan.base_url) == 1
    assert plan.server_url == "http://127.0.0.1:9"
