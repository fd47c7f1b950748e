"""`punie check` core: one report of every problem of every profile, without mlx."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from punie.checks import Problem, Report, check_adapter, check_profile, check_profiles
from punie.config.models import AdapterRef, Profile, ResolvedProfile
from punie.paths import cache_dir
from tests.adapters.test_fit import write_adapter
from tests.support.ports import free_port


def _profile(tmp_path: Path, name: str = "p", **values: object) -> ResolvedProfile:
    server = values.pop("server", None) or {"port": free_port()}
    return ResolvedProfile(name=name, config_path=str(tmp_path / "punie.toml"),
                           profile=Profile(server=server, **values))


def _codes(problems: list[Problem]) -> set[str]:
    return {p.code for p in problems}


def _errors(problems: list[Problem]) -> set[str]:
    return {p.code for p in problems if p.severity == "error"}


def test_matching_pair_passes(tmp_path: Path, tiny_model: Path, tiny_adapter: Path) -> None:
    report = check_profiles([_profile(tmp_path, model=str(tiny_model), adapter=str(tiny_adapter))])
    assert report.ok and _codes(report.problems) == {"no-canary"}  # tests/launch/test_canary.py stamps one
    prof = report.profiles[0]
    assert prof.model_path == str(tiny_model.resolve()) and prof.adapter_path == str(tiny_adapter)
    assert any(line.startswith("adapter:") and "fits" in line for line in prof.passed)


def test_q4_base_passes_with_a_model_differs_warning(tmp_path: Path, tiny_model_q4: Path, tiny_adapter: Path) -> None:
    problems = check_profile(_profile(tmp_path, model=str(tiny_model_q4), adapter=str(tiny_adapter)))
    assert [(p.severity, p.code) for p in problems if p.code != "no-canary"] == [("warning", "model-differs")]
    assert problems[0].where.endswith("adapter_config.json: model")


def test_wide_and_shallow_models_fail_with_shape_errors(
    tmp_path: Path, tiny_model_wide: Path, tiny_model_shallow: Path, tiny_adapter: Path
) -> None:
    report = check_profiles([
        _profile(tmp_path, "wide", model=str(tiny_model_wide), adapter=str(tiny_adapter)),
        _profile(tmp_path, "shallow", model=str(tiny_model_shallow), adapter=str(tiny_adapter)),
    ])
    assert not report.ok
    wide, shallow = report.profiles
    assert _errors(wide.problems) == {"shape-mismatch", "model-differs"}
    assert _errors(shallow.problems) == {"layer-missing", "model-differs"}
    assert all(p.profile == "wide" for p in wide.problems)
    shape = next(p for p in wide.problems if p.code == "shape-mismatch")
    assert "adapters.safetensors: model.layers." in shape.where


def test_adapter_name_under_project_adapters(tmp_path: Path, tiny_model: Path, tiny_adapter: Path) -> None:
    shutil.copytree(tiny_adapter, tmp_path / "adapters" / "tool-calling-v1")
    shutil.copytree(tiny_model, tmp_path / "models" / "a")
    report = check_profiles([_profile(tmp_path, model="models/a", adapter="tool-calling-v1")])
    assert _errors(report.problems) == set()
    wide = tmp_path / "models" / "wide"
    shutil.copytree(tiny_model, wide)
    write_adapter(tmp_path / "adapters" / "wider", modules={"self_attn.q_proj": (96, 96)})
    problems = check_profile(_profile(tmp_path, model="models/a", adapter="wider"))
    assert any(p.where == "adapters/wider/adapters.safetensors: model.layers.0.self_attn.q_proj.lora_a"
               for p in problems), problems


def test_missing_adapter_and_missing_model(tmp_path: Path) -> None:
    problems = check_profile(_profile(tmp_path, model="./nowhere", adapter="nope"))
    assert _errors(problems) == {"model-not-found", "adapter-not-found"}
    model = next(p for p in problems if p.code == "model-not-found")
    assert model.where == "punie.toml: profiles.p.model"


def test_hub_model_not_in_cache_is_reported(tmp_path: Path) -> None:
    problems = check_profile(_profile(tmp_path, model="mlx-community/Nope-4bit"))
    assert _errors(problems) == {"model-not-available"}


def test_no_model_is_an_error(tmp_path: Path) -> None:
    assert _errors(check_profile(_profile(tmp_path))) == {"no-model"}


def test_unprovisioned_builtin_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUNIE_CACHE_DIR", str(tmp_path / "cache"))
    problems = check_profile(_profile(tmp_path, model="builtin:smollm2-135m-instruct"))
    assert [(p.severity, p.code) for p in problems] == [("warning", "model-not-provisioned")]
    assert str(cache_dir() / "models") in problems[0].message


def test_corrupt_base_model_is_reported_not_raised(tmp_path: Path, tiny_model: Path, tiny_adapter: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[:100])
    problems = check_profile(_profile(tmp_path, model=str(model), adapter=str(tiny_adapter)))
    assert _errors(problems) == {"corrupt-file"}
    (model / "config.json").write_text("{")
    assert _errors(check_profile(_profile(tmp_path, model=str(model)))) == {"corrupt-file"}


def test_corrupt_adapter_is_reported(tmp_path: Path, tiny_model: Path, tiny_adapter: Path) -> None:
    adapter = tmp_path / "ad"
    shutil.copytree(tiny_adapter, adapter)
    (adapter / "adapters.safetensors").write_bytes(b"\xff" * 16)
    problems = check_profile(_profile(tmp_path, model=str(tiny_model), adapter=str(adapter)))
    assert _errors(problems) == {"corrupt-file"}
    assert problems[0].where == "ad/adapters.safetensors"


def test_port_in_use_is_a_warning_naming_the_listener_and_an_error_when_strict(tmp_path: Path,
                                                                              tiny_model: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        resolved = _profile(tmp_path, model=str(tiny_model), server={"port": port})
        problems = check_profile(resolved)
        strict = check_profile(resolved, strict=True)
    assert _errors(problems) == set()
    port_problems = [p for p in problems if p.code == "port"]
    assert len(port_problems) == 1 and port_problems[0].severity == "warning"
    assert port_problems[0].where == "punie.toml: profiles.p.server.port"
    assert "already in use" in port_problems[0].message
    assert f"pid {os.getpid()} listens there" in port_problems[0].message  # this test process holds it
    assert _errors(strict) == {"port"}


def test_remote_host_needs_allow_remote(tmp_path: Path, tiny_model: Path) -> None:
    port = free_port()
    problems = check_profile(_profile(tmp_path, model=str(tiny_model), server={"host": "0.0.0.0", "port": port}))
    assert _errors(problems) == {"remote-host"}
    assert problems[0].where == "punie.toml: profiles.p.server.host"
    allowed = {"host": "0.0.0.0", "port": port, "allow_remote": True}
    assert check_profile(_profile(tmp_path, model=str(tiny_model), server=allowed)) == []


def test_server_url_skips_port_and_checks_host(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        url = f"http://127.0.0.1:{busy.getsockname()[1]}"
        assert check_profile(_profile(tmp_path, server={"url": url})) == []
    remote = check_profile(_profile(tmp_path, server={"url": "http://10.1.2.3:8080"}))
    assert _errors(remote) == {"remote-host"} and remote[0].where == "punie.toml: profiles.p.server.url"
    assert check_profile(_profile(tmp_path, server={"url": "http://10.1.2.3:8080", "allow_remote": True})) == []
    assert _errors(check_profile(_profile(tmp_path, server={"url": "http://127.0.0.1:99999"}))) == {"url"}


def test_override_sources_name_the_place(tmp_path: Path) -> None:
    resolved = ResolvedProfile(name="p", config_path=str(tmp_path / "punie.toml"),
                               profile=Profile(model="./gone", server={"port": free_port()}),
                               sources={"model": "cli"})
    assert check_profile(resolved)[0].where == "--set model"


def test_num_layers_larger_than_model_is_caught(tmp_path: Path, tiny_model: Path, tiny_adapter: Path) -> None:
    adapter = tmp_path / "ad"
    shutil.copytree(tiny_adapter, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["num_layers"] = 16
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    problems = check_profile(_profile(tmp_path, model=str(tiny_model), adapter=str(adapter)))
    assert _errors(problems) == {"num-layers-too-large"}


def test_composition_checks_each_part_and_their_dims(tmp_path: Path, tiny_model: Path, tiny_adapter: Path) -> None:
    write_adapter(tmp_path / "adapters" / "r8", rank=8)
    ok = check_profiles([_profile(tmp_path, model=str(tiny_model),
                                  adapters=[str(tiny_adapter), AdapterRef(path="r8", weight=0.5)])])
    assert ok.ok, ok.problems
    write_adapter(tmp_path / "adapters" / "wide", modules={"self_attn.q_proj": (96, 96)})
    bad = check_profile(_profile(tmp_path, model=str(tiny_model), adapters=["r8", "wide", "missing"]))
    assert _errors(bad) == {"shape-mismatch", "compose-mismatch", "adapter-not-found"}
    compose = next(p for p in bad if p.code == "compose-mismatch")
    assert compose.where == "punie.toml: profiles.p.adapters[1]" and "adapters[0]" in compose.message


def test_report_json_and_text(tmp_path: Path, tiny_model: Path, tiny_model_wide: Path, tiny_adapter: Path) -> None:
    report = check_profiles([
        _profile(tmp_path, "good", model=str(tiny_model), adapter=str(tiny_adapter)),
        _profile(tmp_path, "bad", model=str(tiny_model_wide), adapter=str(tiny_adapter)),
    ])
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["ok"] is False
    assert [(p["name"], p["ok"]) for p in doc["profiles"]] == [("good", True), ("bad", False)]
    bad = doc["profiles"][1]
    assert len([p for p in bad["problems"] if p["code"] == "shape-mismatch"]) == 28
    assert set(bad["problems"][0]) == {"profile", "severity", "code", "where", "message"}
    text = report.render_text()
    assert "profile good: ok" in text and "profile bad: FAILED" in text
    assert "✓ adapter:" in text and "✗ " in text and "more like this" not in text  # 28 < the cap of 50
    assert text.count("does not match") == 28
    assert Report.model_validate(report.model_dump()).to_json() == report.to_json()


_NO_MLX_SCRIPT = """
import json, sys
from punie.checks import check_profiles
from punie.config.models import Profile, ResolvedProfile
config, model, adapter, port = json.loads(sys.argv[1])
profile = Profile(model=model, adapter=adapter, server={"port": port})
report = check_profiles([ResolvedProfile(name="x", config_path=config, profile=profile)])
assert not report.ok
print(sorted(m for m in sys.modules if m == "mlx" or m.startswith(("mlx.", "mlx_lm"))))
"""


def test_check_never_imports_mlx(tmp_path: Path, tiny_model_wide: Path, tiny_adapter: Path) -> None:
    args = json.dumps([str(tmp_path / "punie.toml"), str(tiny_model_wide), str(tiny_adapter), free_port()])
    out = subprocess.run([sys.executable, "-c", _NO_MLX_SCRIPT, args], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_latest_with_no_adapters_is_an_adapter_error(tmp_path: Path, tiny_model: Path) -> None:
    problems = check_profile(_profile(tmp_path, model=str(tiny_model), adapter="latest"))
    assert _errors(problems) == {"adapter-not-found"}
    assert problems[0].where == "punie.toml: profiles.p.adapter"


def test_latest_picks_an_adapter_under_adapters(tmp_path: Path, tiny_model: Path, tiny_adapter: Path) -> None:
    shutil.copytree(tiny_adapter, tmp_path / "adapters" / "v1")
    report = check_profiles([_profile(tmp_path, model=str(tiny_model), adapter="latest")])
    assert report.ok, report.problems
    assert report.profiles[0].adapter_path == str((tmp_path / "adapters" / "v1").resolve())


def test_check_adapter_for_the_registry(tmp_path: Path, tiny_model: Path, tiny_model_wide: Path,
                                        tiny_adapter: Path) -> None:
    assert check_adapter(tiny_adapter, _profile(tmp_path, model=str(tiny_model))) == []
    assert "shape-mismatch" in _errors(check_adapter(tiny_adapter, _profile(tmp_path, model=str(tiny_model_wide))))
