"""One home per fact: the non-profile PUNIE_ variables, the Hugging Face cache, URLs, loopback."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

import punie
from punie import envvars
from punie.config import load_profile
from punie.config.models import Profile
from punie.launch import build_plan
from punie.net import is_loopback_url, openai_base_url, server_root
from punie.paths import current_umask, hf_hub_cache
from punie.weights import resolve
from tests.support.launch_helpers import resolved

SRC = Path(punie.__file__).parent


def test_punie_guard_mode_is_not_warned_about_as_a_profile_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "punie.toml").write_text('[profiles.a]\nmodel = "m"\n')
    monkeypatch.setenv("PUNIE_GUARD_MODE", "watchdog")
    monkeypatch.setenv("PUNIE_MODLE", "x")  # a typo still is
    with caplog.at_level(logging.WARNING):
        load_profile("a", config=tmp_path / "punie.toml")
    assert "PUNIE_GUARD_MODE" not in caplog.text
    assert "ignoring PUNIE_MODLE: not a profile key" in caplog.text


def test_every_punie_variable_in_the_source_is_a_profile_key_or_in_the_one_list() -> None:
    profile_keys = {name.upper() for name in Profile.model_fields}
    seen = set()
    for path in SRC.rglob("*.py"):
        for name in re.findall(r"\bPUNIE_[A-Z][A-Z0-9_]*\b", path.read_text(encoding="utf-8")):
            seen.add(name)
    assert "PUNIE_GUARD_MODE" in seen
    for name in seen:
        head = name.removeprefix("PUNIE_").split("__", 1)[0]
        assert name in envvars.NON_PROFILE or head in profile_keys, f"{name}: add it to punie.envvars"


def test_huggingface_hub_cache_is_seen_by_the_plan_and_the_model_resolver(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy-hub"
    env = {"HUGGINGFACE_HUB_CACHE": str(legacy), "HF_HOME": str(tmp_path / "home")}
    plan = build_plan(resolved(tmp_path), model_path=tmp_path / "model", adapter_path=None, environ=env)
    assert plan.server_env["HF_HUB_CACHE"] == str(legacy) == str(hf_hub_cache(env))
    assert resolve.hf_hub_cache is hf_hub_cache  # one resolver
    both = {**env, "HF_HUB_CACHE": str(tmp_path / "new")}
    plan = build_plan(resolved(tmp_path), model_path=tmp_path / "model", adapter_path=None, environ=both)
    assert plan.server_env["HF_HUB_CACHE"] == str(tmp_path / "new") == str(hf_hub_cache(both))


def test_url_rules() -> None:
    assert server_root("http://h:1/v1/") == "http://h:1" and openai_base_url("http://h:1") == "http://h:1/v1"
    assert is_loopback_url("http://[::1]:8/v1") and is_loopback_url("http://localhost:1")
    assert not is_loopback_url("http://10.0.0.1:1")


def test_umask_is_read_without_changing_it() -> None:
    import os

    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        assert current_umask() == 0o027
    finally:
        os.umask(old)
