"""The adapter registry: latest / best / names / paths, metadata, listing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from punie.adapters.registry import (
    AdapterMeta,
    adapter_info,
    config_fingerprint,
    effective_adapter,
    list_adapters,
    read_meta,
    resolve_adapter,
    update_meta,
    write_meta,
)
from punie.cli import main
from punie.config.models import Profile, ResolvedProfile
from punie.errors import AdapterError, CorruptFileError


def _adapter(project: Path, name: str, *, created: str | None = None, score: float | None = None,
             rank: int = 4, weights: bool = True, mtime: float | None = None) -> Path:
    folder = project / "adapters" / name
    folder.mkdir(parents=True)
    config = {"model": "m", "fine_tune_type": "lora", "num_layers": 2,
              "lora_parameters": {"rank": rank, "scale": 10.0, "dropout": 0.0}}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    if weights:
        (folder / "adapters.safetensors").write_bytes(b"x" * 100)
        if mtime is not None:
            os.utime(folder / "adapters.safetensors", (mtime, mtime))
    if created is not None:
        write_meta(folder, AdapterMeta(base_model="m", created=created, score=score))
    return folder


def test_latest_is_newest_created(tmp_path: Path) -> None:
    _adapter(tmp_path, "old", created="2026-01-01T00:00:00+00:00")
    new = _adapter(tmp_path, "new", created="2026-03-01T00:00:00+00:00")
    _adapter(tmp_path, "zzz-mid", created="2026-02-01T00:00:00+00:00")
    assert resolve_adapter("latest", tmp_path) == new.resolve()


def test_latest_falls_back_to_weights_mtime(tmp_path: Path) -> None:
    _adapter(tmp_path, "a", mtime=1_000_000)
    b = _adapter(tmp_path, "b", mtime=2_000_000)
    assert resolve_adapter("latest", tmp_path) == b.resolve()


def test_latest_skips_unfinished_adapters(tmp_path: Path) -> None:
    done = _adapter(tmp_path, "done", created="2026-01-01T00:00:00+00:00")
    _adapter(tmp_path, "crashed", created="2026-05-01T00:00:00+00:00", weights=False)
    assert resolve_adapter("latest", tmp_path) == done.resolve()


def test_best_is_highest_score(tmp_path: Path) -> None:
    _adapter(tmp_path, "a", created="2026-01-01T00:00:00+00:00", score=0.4)
    b = _adapter(tmp_path, "b", created="2026-01-01T00:00:00+00:00", score=0.9)
    _adapter(tmp_path, "c", created="2026-04-01T00:00:00+00:00")
    assert resolve_adapter("best", tmp_path) == b.resolve()


def test_best_ranks_by_the_lower_bound_and_mean_only_records_below(tmp_path: Path) -> None:
    """An interval's lower bound decides, not the mean; a record with a mean only (written before
    intervals) ranks below every adapter with an interval, whatever its mean."""
    def scored(name: str, score: float, interval: tuple[float, float] | None) -> Path:
        folder = _adapter(tmp_path, name, created="2026-01-01T00:00:00+00:00", score=score)
        update_meta(folder, score_interval=interval)
        return folder

    scored("old", 0.99, None)
    scored("lucky", 0.9, (0.5, 1.0))
    sure = scored("sure", 0.8, (0.7, 0.9))
    assert resolve_adapter("best", tmp_path) == sure.resolve()
    info = adapter_info(sure)
    assert info.score == 0.8 and info.score_interval == (0.7, 0.9)
    for name in ("sure", "lucky"):
        update_meta(tmp_path / "adapters" / name, score_interval=None)
    assert resolve_adapter("best", tmp_path) == (tmp_path / "adapters" / "old").resolve()  # all by the mean now
    meta_file = sure / "punie-adapter.json"
    for bad in ([0.1], [0.9, 0.2]):  # an interval is two numbers, low first
        meta_file.write_text(json.dumps({"base_model": "m", "created": "2026-01-01T00:00:00+00:00", "score": 0.5,
                                         "score_interval": bad}))
        with pytest.raises(CorruptFileError, match="score_interval"):
            read_meta(sure)


def test_best_without_scores_is_an_error(tmp_path: Path) -> None:
    _adapter(tmp_path, "a", created="2026-01-01T00:00:00+00:00")
    with pytest.raises(AdapterError, match="none of the 1 adapters .* has a score") as caught:
        resolve_adapter("best", tmp_path)
    assert "punie eval" in str(caught.value)


def test_latest_with_no_adapters(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="no trained adapter"):
        resolve_adapter("latest", tmp_path)


def test_name_and_relative_path(tmp_path: Path) -> None:
    folder = _adapter(tmp_path, "tool-calling-v1")
    assert resolve_adapter("tool-calling-v1", tmp_path) == folder.resolve()
    assert resolve_adapter("adapters/tool-calling-v1", tmp_path) == folder.resolve()
    assert resolve_adapter(str(folder), tmp_path / "elsewhere") == folder.resolve()


def test_missing_name_suggests_close_one(tmp_path: Path) -> None:
    _adapter(tmp_path, "tool-calling-v1")
    with pytest.raises(AdapterError, match="did you mean 'tool-calling-v1'") as caught:
        resolve_adapter("tool-caling-v1", tmp_path, where="profiles.demo.adapter")
    assert str(caught.value).startswith("profiles.demo.adapter: adapter 'tool-caling-v1' not found")
    # A path is looked up as written (not again under adapters/), and still gets the hint.
    with pytest.raises(AdapterError, match="did you mean 'tool-calling-v1'") as caught:
        resolve_adapter("adapters/tool-calling-v2", tmp_path)
    assert caught.value.message == f"adapter 'adapters/tool-calling-v2' not found (no directory " \
                                   f"{tmp_path / 'adapters' / 'tool-calling-v2'})"


def test_effective_adapter_single_none_and_located_error(tmp_path: Path) -> None:
    folder = _adapter(tmp_path, "one", created="2026-01-01T00:00:00+00:00")
    config = str(tmp_path / "punie.toml")
    resolved = ResolvedProfile(name="demo", config_path=config, profile=Profile(model="m", adapter="latest"))
    assert effective_adapter(resolved) == folder.resolve()
    bare = ResolvedProfile(name="demo", config_path=config, profile=Profile(model="m"))
    assert effective_adapter(bare) is None
    wrong = ResolvedProfile(name="demo", config_path=config, profile=Profile(model="m", adapter="onne"))
    with pytest.raises(AdapterError, match=r"(?s)^profiles\.demo\.adapter: .*did you mean 'one'"):
        effective_adapter(wrong)


def test_effective_adapter_composes_several(tmp_path: Path, tiny_adapter: Path) -> None:
    import shutil

    for name in ("a", "b"):
        shutil.copytree(tiny_adapter, tmp_path / "adapters" / name)
    resolved = ResolvedProfile(
        name="mix", config_path=str(tmp_path / "punie.toml"),
        profile=Profile(model="m", adapters=["a", {"path": "b", "weight": 0.5}]),
    )
    composed = effective_adapter(resolved)
    assert composed is not None and composed.parent == tmp_path / ".punie" / "composed"
    assert json.loads((composed / "adapter_config.json").read_text())["lora_parameters"]["rank"] == 8


def test_meta_round_trip_and_update_keeps_extra_keys(tmp_path: Path) -> None:
    folder = _adapter(tmp_path, "a")
    assert read_meta(folder) is None
    meta = update_meta(folder, score=0.5)  # created from adapter_config when absent
    assert meta.base_model == "m" and meta.score == 0.5
    raw = json.loads((folder / "punie-adapter.json").read_text())
    raw["composed_from"] = [{"path": "x"}]
    (folder / "punie-adapter.json").write_text(json.dumps(raw))
    update_meta(folder, iters=3)
    again = json.loads((folder / "punie-adapter.json").read_text())
    assert again["composed_from"] == [{"path": "x"}] and again["iters"] == 3 and again["score"] == 0.5


def test_corrupt_meta_is_reported(tmp_path: Path) -> None:
    folder = _adapter(tmp_path, "a")
    (folder / "punie-adapter.json").write_text("{\"base_model\": 3")
    with pytest.raises(CorruptFileError, match="punie-adapter.json"):
        read_meta(folder)
    info = adapter_info(folder)
    assert info.problem is not None and "punie-adapter.json" in info.problem


@settings(max_examples=40, deadline=None)
@given(score=st.none() | st.floats(0, 1), iters=st.none() | st.integers(0, 10**6),
       eval_=st.none() | st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
def test_meta_json_round_trip(tmp_path_factory: pytest.TempPathFactory, score: float | None, iters: int | None,
                              eval_: dict | None) -> None:
    folder = tmp_path_factory.mktemp("meta")
    meta = AdapterMeta(base_model="builtin:x", base_fingerprint="ab", dataset_hash=None, iters=iters,
                       created="2026-01-01T00:00:00+00:00", score=score, eval=eval_)
    write_meta(folder, meta)
    assert read_meta(folder) == meta


def test_config_fingerprint_ignores_key_order(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "config.json").write_text('{"x": 1, "y": [1, 2]}')
    (tmp_path / "b" / "config.json").write_text('{\n  "y": [1, 2],\n  "x": 1\n}')
    assert config_fingerprint(tmp_path / "a") == config_fingerprint(tmp_path / "b")
    (tmp_path / "b" / "config.json").write_text('{"y": [1, 2], "x": 2}')
    assert config_fingerprint(tmp_path / "a") != config_fingerprint(tmp_path / "b")


def test_list_adapters_reads_config_and_meta(tmp_path: Path) -> None:
    _adapter(tmp_path, "a", created="2026-01-01T00:00:00+00:00", score=0.25, rank=8)
    _adapter(tmp_path, "b", weights=False)
    (tmp_path / "adapters" / ".a.staging-1").mkdir()
    infos = {i.name: i for i in list_adapters(tmp_path)}
    assert set(infos) == {"a", "b"}
    assert infos["a"].rank == 8 and infos["a"].num_layers == 2 and infos["a"].score == 0.25
    assert infos["a"].size_bytes > 100 and infos["a"].problem is None
    assert infos["b"].problem is not None and "adapters.safetensors" in infos["b"].problem


def test_adapters_list_cli(tmp_path: Path, tiny_model: Path, tiny_model_wide: Path, tiny_adapter: Path) -> None:
    import shutil

    shutil.copytree(tiny_adapter, tmp_path / "adapters" / "tiny")
    write_meta(tmp_path / "adapters" / "tiny", AdapterMeta(
        base_model=str(tiny_model), base_fingerprint=config_fingerprint(tiny_model),
        created="2026-01-02T03:04:05+00:00", score=0.75))
    (tmp_path / "punie.toml").write_text(
        f'[profiles.demo]\nmodel = "{tiny_model}"\nadapter = "best"\n[profiles.wide]\nmodel = "{tiny_model_wide}"\n'
    )
    runner = CliRunner()
    result = runner.invoke(main, ["--config", str(tmp_path / "punie.toml"), "adapters", "list"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.startswith("tiny"))
    assert "0.75" in line and "2026-01-02 03:04" in line and "demo:yes" in line and " 4 " in line
    assert "wide:no" in line
    as_json = runner.invoke(main, ["--config", str(tmp_path / "punie.toml"), "adapters", "list", "--format", "json"])
    data = json.loads(as_json.stdout)
    assert data[0]["name"] == "tiny" and data[0]["fits"]["demo"]["fits"] == "yes"
    assert data[0]["fits"]["wide"]["fits"] == "no" and data[0]["fits"]["wide"]["reason"]
    assert "compose" in runner.invoke(main, ["adapters", "--help"]).output
