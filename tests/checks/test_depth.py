"""`punie check` as deep as mlx_lm's strict load of the base model (issue 25, item 2).

Differential: each mutation of the tiny model (an extra, a missing, a renamed or a
misshapen parameter; a dimension that is NaN, Infinity, 1e400, 2.5, 0, -1, true or "64")
is loaded by mlx_lm itself (tests/support/oracle.py, strict) and checked by Punie; the
verdicts must agree, and Punie's names the file and the key or parameter. Composition
compares bases by their weights, not by how their paths are spelled.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from punie.adapters.compose import CompositionError, plan_composition
from punie.cli import main
from punie.findings import Finding
from punie.weights.headers import read_model_shapes
from punie.weights.safetensors import read_header, write_safetensors
from tests.support.corpus import lora_adapter
from tests.support.oracle import run_oracle

pytestmark = pytest.mark.mlx


def _config_edit(key: str, raw: str) -> Callable[[Path], None]:
    def edit(model: Path) -> None:
        doc = json.loads((model / "config.json").read_text())
        doc[key] = "__RAW__"
        (model / "config.json").write_text(json.dumps(doc).replace('"__RAW__"', raw))
    return edit


def _tensors_edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(model: Path) -> None:
        tensors = {n: (i.dtype, i.shape) for n, i in read_header(model / "model.safetensors").tensors.items()}
        change(tensors)
        write_safetensors(model / "model.safetensors", tensors)
    return edit


def _extra(t: dict) -> None:
    t["model.layers.0.self_attn.gate.weight"] = ("F32", (4, 64))


def _missing(t: dict) -> None:
    del t["model.layers.1.mlp.down_proj.weight"]


def _renamed(t: dict) -> None:
    t["model.layers.0.mlp.upproj.weight"] = t.pop("model.layers.0.mlp.up_proj.weight")


def _norm_shape(t: dict) -> None:
    t["model.norm.weight"] = ("F32", (65,))


def _bias(t: dict) -> None:
    t["model.layers.0.mlp.up_proj.bias"] = ("F32", (128,))  # qwen2's mlp has no bias


MUTATIONS: dict[str, tuple[Callable[[Path], None] | None, str | None, str | None]] = {
    # name: (edit, expected code, where fragment); None code: mlx_lm loads it
    "original": (None, None, None),
    "unknown-config-key": (_config_edit("punie_note", '"hello"'), None, None),
    "extra-param": (_tensors_edit(_extra), "parameter-extra", "self_attn.gate.weight"),
    "missing-param": (_tensors_edit(_missing), "parameter-missing", "mlp.down_proj.weight"),
    "renamed-param": (_tensors_edit(_renamed), "parameter-extra", "mlp.upproj.weight"),
    "norm-shape": (_tensors_edit(_norm_shape), "parameter-shape", "model.norm.weight"),
    "bias-param": (_tensors_edit(_bias), "parameter-extra", "up_proj.bias"),
    **{f"hidden-{label}": (_config_edit("hidden_size", raw), "config-dimension", "config.json: hidden_size")
       for label, raw in (("nan", "NaN"), ("inf", "Infinity"), ("1e400", "1e400"), ("2.5", "2.5"), ("0", "0"),
                          ("-1", "-1"), ("true", "true"), ("str", '"64"'))},
    "heads-2.5": (_config_edit("num_attention_heads", "2.5"), "config-dimension", "num_attention_heads"),
    "vocab-str": (_config_edit("vocab_size", '"300"'), "config-dimension", "vocab_size"),
    "inter-neg": (_config_edit("intermediate_size", "-128"), "config-dimension", "intermediate_size"),
}


def _errors(model: Path) -> list[Finding]:
    shapes = read_model_shapes(model)
    found = [*shapes.problems]
    if not any(f.severity == "error" for f in found):
        found += shapes.strict_load_problems
    return [f for f in found if f.severity == "error"]


@pytest.fixture(scope="module")
def mutated(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> tuple[dict[str, Path], dict[str, dict]]:
    root = tmp_path_factory.mktemp("depth")
    models: dict[str, Path] = {}
    for name, (edit, _, _) in MUTATIONS.items():
        model = root / name
        shutil.copytree(tiny_model, model)
        if edit is not None:
            edit(model)
        models[name] = model
    truth = run_oracle([{"id": name, "model": str(path), "adapter": None} for name, path in models.items()],
                       root / "oracle")
    return models, truth


@pytest.mark.slow
def test_check_refuses_exactly_what_mlx_lms_strict_load_refuses(mutated: tuple[dict[str, Path], dict[str, dict]]
                                                                 ) -> None:
    models, truth = mutated
    for name, (_, code, where) in MUTATIONS.items():
        errors = _errors(models[name])
        assert truth[name]["ok"] == (code is None), (name, truth[name])
        assert (not errors) == truth[name]["ok"], (name, errors, truth[name])
        if code is not None:
            assert any(f.code == code and where in (f.where or "") for f in errors), (name, errors)
            assert all(str(models[name]) in (f.where or "") for f in errors), (name, errors)


@pytest.mark.slow
def test_the_cli_names_the_file_and_the_parameter(mutated: tuple[dict[str, Path], dict[str, dict]],
                                                  tmp_path: Path) -> None:
    models, _ = mutated
    (tmp_path / "punie.toml").write_text(
        f'[profiles.extra]\nmodel = "{models["extra-param"]}"\n\n[profiles.nan]\nmodel = "{models["hidden-nan"]}"\n'
        f'\n[profiles.ok]\nmodel = "{models["original"]}"\n')
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "punie.toml"), "check"])
    assert result.exit_code == 1, result.output
    assert f"{models['extra-param']}/model.safetensors: model.layers.0.self_attn.gate.weight" in result.output
    assert f"{models['hidden-nan']}/config.json: hidden_size: NaN is not a finite number" in result.output
    assert "profile ok: ok" in result.output


def test_composition_compares_bases_by_weights_not_by_path_spelling(tmp_path: Path, tiny_model: Path) -> None:
    from tests.support.tiny import build_tiny_model

    project = tmp_path / "proj"
    project.mkdir()
    shutil.copytree(tiny_model, project / "base")
    (project / "link").symlink_to(project / "base")
    shutil.copytree(tiny_model, tmp_path / "copy")
    other = build_tiny_model(tmp_path / "other", seed=7)  # same shapes, other weights
    parts = []
    for name, model in (("rel", "base"), ("abs", str(project / "base")), ("sym", "link"),
                        ("dots", "./base/../base"), ("copy", str(tmp_path / "copy")), ("other", str(other))):
        adapter = lora_adapter(project / "adapters" / name, modules={"mlp.up_proj": (128, 64)},
                               keys=["mlp.up_proj"])
        doc = json.loads((adapter / "adapter_config.json").read_text())
        (adapter / "adapter_config.json").write_text(json.dumps(doc | {"model": model}))
        parts.append(adapter)
    same = [(p, 1.0) for p in parts[:5]]
    plan_composition(same, project_dir=project)  # five spellings, one base (a copy is the same weights)
    with pytest.raises(CompositionError, match="different base models"):
        plan_composition([*same, (parts[5], 1.0)], project_dir=project)


@pytest.mark.slow
def test_mlx_lms_parameter_rules_are_not_applied_to_vllm_profiles(mutated: tuple[dict[str, Path], dict[str, dict]],
                                                                   tmp_path: Path) -> None:
    from punie.config import load_profile
    from punie.launch.backends import check_profiles  # each profile's backend rules

    models, _ = mutated
    python = tmp_path / "vpython"
    python.write_text("#!/bin/sh\necho 0.32.0\n")
    python.chmod(0o755)
    (tmp_path / "punie.toml").write_text(f'[profiles.m]\nmodel = "{models["extra-param"]}"\n\n[profiles.v]\n'
                                         f'model = "{models["extra-param"]}"\nserver.backend = "vllm"\n'
                                         f'server.vllm.python = "{python}"\n')
    codes = {name: {p.code for p in check_profiles([load_profile(name, config=str(tmp_path / "punie.toml"))]).problems}
             for name in ("m", "v")}
    assert "parameter-extra" in codes["m"] and "parameter-extra" not in codes["v"]
