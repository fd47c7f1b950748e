"""Every JSON reader of `punie check` facing random JSON: only Punie errors, only exit codes 1 or 2.

Also: capped output on a huge adapter header, and the base model identity
(same base, another base of the same shapes, unknown, corrupt metadata, stamp,
compositions naming one base by a relative and an absolute path).
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from punie.adapters.compose import plan_composition
from punie.adapters.inspect import inspect_adapter
from punie.adapters.metadata import read_meta
from punie.cli import main
from punie.errors import PunieError
from punie.jsonio import load_json_file, parse_json
from punie.weights.headers import read_model_shapes
from punie.weights.safetensors import write_safetensors
from tests.support.corpus import lora_adapter

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25,
)
#: Keys the readers look at, so random documents reach deep into them.
KNOWN = ["model_type", "num_hidden_layers", "hidden_size", "quantization", "bits", "group_size", "weight_map",
         "tie_word_embeddings", "num_layers", "fine_tune_type", "lora_parameters", "rank", "scale", "dropout",
         "keys", "model", "base_model", "base", "created", "score", "weights", "shapes", "canary"]
documents = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(KNOWN), json_values, max_size=8),
    st.builds(lambda d, inner: d | {"lora_parameters": inner, "quantization": inner},
              st.dictionaries(st.sampled_from(KNOWN), json_values, max_size=6),
              st.dictionaries(st.sampled_from(KNOWN), json_values, max_size=6)),
)


def _dump(value: object) -> str:
    return json.dumps(value, allow_nan=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_adapter: Path) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(tiny_model, root / "model")
    shutil.copytree(tiny_adapter, root / "adapter")
    (root / "punie.toml").write_text('[profiles.p]\nmodel = "model"\nadapter = "adapter"\n')
    return root


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=documents, target=st.sampled_from(["model/config.json", "adapter/adapter_config.json",
                                              "adapter/punie-adapter.json", "model/model.safetensors.index.json"]))
@pytest.mark.slow
def test_random_json_in_every_reader_gives_a_verdict_or_a_punie_error(project: Path, doc: object,
                                                                        target: str) -> None:
    path = project / target
    original = path.read_text() if path.exists() else None
    path.write_text(_dump(doc))
    try:
        result = CliRunner().invoke(main, ["--config", str(project / "punie.toml"), "check", "--format", "json"])
        assert result.exit_code in (0, 1, 2), (result.exit_code, result.output, result.exception)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        if result.exit_code in (0, 1):
            json.loads(result.stdout)
        # the readers alone raise only Punie errors
        for reader in (lambda: read_model_shapes(project / "model"), lambda: read_meta(project / "adapter"),
                       lambda: inspect_adapter(project / "adapter")):
            try:
                reader()
            except PunieError:
                pass
    finally:
        if original is None:
            path.unlink()
        else:
            path.write_text(original)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(doc=json_values)
def test_bounded_parser_round_trips_or_refuses(doc: object) -> None:
    try:
        assert _dump(parse_json(_dump(doc), where="x")) == _dump(doc)
    except PunieError:
        pass


def test_deep_and_huge_json_are_punie_errors(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(PunieError, match="nested"):
        load_json_file(deep, expect=None)
    wrong = tmp_path / "list.json"
    wrong.write_text("[1]")
    with pytest.raises(PunieError, match="must be a JSON object"):
        load_json_file(wrong)


def test_empty_profiles_file_is_exit_2(tmp_path: Path) -> None:
    for text in ("", "[defaults]\nmodel = 'x'\n"):
        (tmp_path / "punie.toml").write_text(text)
        result = CliRunner().invoke(main, ["--config", str(tmp_path / "punie.toml"), "check"])
        assert result.exit_code == 2 and "no profiles" in result.output


def test_internal_error_is_exit_3_one_line(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "punie.toml").write_text(f'[profiles.p]\nmodel = "{tiny_model}"\n')

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("punie.checks.check_profiles", boom)
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "punie.toml"), "check"])
    assert result.exit_code == 3
    assert result.output.strip().count("\n") == 0 and "internal error: RuntimeError: a bug" in result.output


@pytest.mark.slow
def test_100k_unknown_tensors_answer_fast_and_capped(tmp_path: Path, tiny_model: Path) -> None:
    adapter = lora_adapter(tmp_path / "big", modules={})
    write_safetensors(adapter / "adapters.safetensors",
                      {f"model.layers.0.junk.t{i}.lora_a": ("F32", (1,)) for i in range(100_000)})
    assert (adapter / "adapters.safetensors").stat().st_size > 5_000_000
    (tmp_path / "punie.toml").write_text(f'[profiles.p]\nmodel = "{tiny_model}"\nadapter = "{adapter}"\n')
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "punie", "--config", str(tmp_path / "punie.toml"), "check"],
                          capture_output=True, text=True, timeout=180)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 1
    lines = [line for line in proc.stdout.splitlines() if "junk" in line]
    assert len(lines) == 50 and "... and 99950 more like this" in proc.stdout
    # CPU seconds of the whole CLI process (interpreter start included), not wall time: the CI machine's
    # other worker shares the cores
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 5, cpu


def _stamp_project(tmp_path: Path, model: Path, adapter: Path, name: str = "p") -> Path:
    (tmp_path / "punie.toml").write_text(f'[profiles.{name}]\nmodel = "{model}"\nadapter = "{adapter}"\n')
    return tmp_path / "punie.toml"


@pytest.mark.slow
def test_base_identity_same_other_unknown_corrupt_and_stamp(tmp_path: Path, tiny_model: Path,
                                                          tiny_model_q4: Path, tiny_adapter: Path) -> None:
    copy = shutil.copytree(tiny_model, tmp_path / "copy")  # same weights, other path
    other = shutil.copytree(tiny_model, tmp_path / "other")  # same shapes, other weights
    data = bytearray((other / "model.safetensors").read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start:start + 4096] = bytes(4096)  # the first sampled block of the data section
    (other / "model.safetensors").write_bytes(bytes(data))
    adapter = shutil.copytree(tiny_adapter, tmp_path / "adapter")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(cfg | {"model": "gone/elsewhere"}))
    config = _stamp_project(tmp_path, copy, adapter)

    def check(*extra: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, ["--config", str(config), "check", *extra])
        return result.exit_code, result.output

    code, out = check()
    assert code == 0 and "base identity: unknown" in out  # nothing recorded, model not available
    stamped = CliRunner().invoke(main, ["--config", str(config), "adapters", "stamp", str(adapter), "--base", "p"])
    assert stamped.exit_code == 0, stamped.output
    meta = read_meta(adapter)
    assert meta is not None and meta.base is not None and meta.stamped
    code, out = check()
    assert code == 0 and "the weights the adapter was trained on" in out and "warning: " not in out
    config = _stamp_project(tmp_path, other, adapter)
    code, out = check()
    assert code == 0 and "warning: " in out and "same shapes, different weights" in out
    code, out = check("--strict")
    assert code == 1 and "--strict" in out
    config = _stamp_project(tmp_path, tiny_model_q4, adapter)
    code, out = check()
    assert code == 0 and "differently quantized" in out
    (adapter / "punie-adapter.json").write_text('{"base_model": ' + "[" * 200 + "]" * 200 + "}")
    code, out = check()
    assert code == 0 and "warning: " in out and "punie-adapter.json" in out


def test_composition_parts_naming_one_base_relatively_and_absolutely(tmp_path: Path, tiny_model: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    shutil.copytree(tiny_model, project / "base")
    a = lora_adapter(project / "adapters" / "a", modules={"mlp.up_proj": (128, 64)}, keys=["mlp.up_proj"],
                     config=None)
    b = lora_adapter(project / "adapters" / "b", modules={"mlp.up_proj": (128, 64)}, keys=["mlp.up_proj"])
    for part, model in ((a, "base"), (b, str(project / "base"))):
        doc = json.loads((part / "adapter_config.json").read_text())
        (part / "adapter_config.json").write_text(json.dumps(doc | {"model": model}))
    plan_composition([(a, 1.0), (b, 1.0)], project_dir=project)  # one base: no error
    (project / "punie.toml").write_text('[profiles.p]\nmodel = "base"\nadapters = ["a", "b"]\n')
    check = CliRunner().invoke(main, ["--config", str(project / "punie.toml"), "check"])
    dry = CliRunner().invoke(main, ["--config", str(project / "punie.toml"), "up", "--dry-run"])
    assert check.exit_code == 0, check.output
    assert dry.exit_code == 0, dry.output


def test_peft_and_checkpoint_messages(tmp_path: Path) -> None:
    peft = tmp_path / "peft"
    peft.mkdir()
    write_safetensors(peft / "adapter_model.safetensors", {"x.lora_A.weight": ("F32", (2, 2))})
    (peft / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    finding = inspect_adapter(peft).findings[0]
    assert finding.code == "peft-adapter" and "punie adapters import DIR" in finding.message
    ckpt = lora_adapter(tmp_path / "ckpt")
    for n in (100, 200):
        shutil.copy(ckpt / "adapters.safetensors", ckpt / f"{n:07d}_adapters.safetensors")
    (ckpt / "adapters.safetensors").unlink()
    message = inspect_adapter(ckpt).findings[0].message
    assert "0000100_adapters.safetensors" in message and "0000200_adapters.safetensors" in message


def test_mixed_precision_is_shown_as_such(tmp_path: Path, tiny_model: Path) -> None:
    from tests.support.corpus import _quantize_mixed

    shapes = read_model_shapes(_quantize_mixed(tiny_model, tmp_path / "mixed"))
    assert shapes.bits_summary() == "mixed 3/6-bit"
