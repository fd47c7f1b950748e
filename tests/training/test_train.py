"""`punie train`: plan building, mlx_lm output parsing, and real training on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from punie.adapters.metadata import read_canary
from punie.adapters.registry import config_fingerprint, read_meta
from punie.cli import main
from punie.config.models import Profile, ResolvedProfile
from punie.errors import TrainingError, UsageError
from punie.training.dataset import validate_dataset
from punie.training.train import (
    TrainOptions,
    build_train_plan,
    default_output,
    parse_progress_line,
    train_adapter,
)


def _resolved(tmp_path: Path, **profile: object) -> ResolvedProfile:
    return ResolvedProfile(name="demo", config_path=str(tmp_path / "punie.toml"), profile=Profile(**profile))


def test_parse_table_lines_of_current_mlx_lm() -> None:
    train = parse_progress_line("  \x1b[38;5;244m  10\x1b[0m    \x1b[1;32m2.345 ▼\x1b[0m    5,636      0.1k", 100)
    assert train is not None and (train.kind, train.iteration, train.loss, train.total) == ("train", 10, 2.345, 100)
    val = parse_progress_line("     1    val 5.719    0.01s")
    assert val is not None and (val.kind, val.iteration, val.loss) == ("val", 1, 5.719)


def test_parse_old_iter_lines() -> None:
    event = parse_progress_line("Iter 20: Train loss 1.234, Learning Rate 1.000e-05, It/sec 3.1")
    assert event is not None and (event.kind, event.iteration, event.loss) == ("train", 20, 1.234)
    event = parse_progress_line("Iter 1: Val loss 2.500, Val took 0.1s")
    assert event is not None and (event.kind, event.loss) == ("val", 2.5)


def test_other_lines_are_not_progress() -> None:
    assert parse_progress_line("Trainable parameters: 8.761% (0.008M/0.094M)") is None
    assert parse_progress_line("[WARNING] Some sequences are longer than 64 tokens.") is None
    status = parse_progress_line("Loading pretrained model")
    assert status is not None and status.kind == "status"


@given(st.text(max_size=80))
def test_parser_never_raises(line: str) -> None:
    event = parse_progress_line(line)
    assert event is None or event.kind in ("train", "val", "status")


def _plan(tmp_path: Path, data: Path, *, layers: int | None, **options: object):
    return build_train_plan(
        model_dir=tmp_path / "m", base_model="m", model_layers=layers, dataset=validate_dataset(data),
        output=tmp_path / "adapters" / "x", staging=tmp_path / "adapters" / ".x.staging",
        config_file=tmp_path / "c.yaml", options=TrainOptions(**options),
    )


def test_plan_defaults_fit_a_small_model(tmp_path: Path, tiny_dataset: Path) -> None:
    plan = _plan(tmp_path, tiny_dataset, layers=2, iters=7, rank=4)
    argv = list(plan.argv)
    assert argv[argv.index("--num-layers") + 1] == "2"  # not mlx_lm's 16
    assert argv[argv.index("--adapter-path") + 1].endswith(".x.staging")
    assert argv[argv.index("--batch-size") + 1] == "4"
    assert argv[argv.index("--iters") + 1] == "7"
    assert plan.lora_config == {"lora_parameters": {"rank": 4, "scale": 20.0, "dropout": 0.0}}
    assert plan.env["HF_HUB_OFFLINE"] == "1" and plan.env["MLX_DISABLE_COMPILE"] == "1"
    assert _plan(tmp_path, tiny_dataset, layers=40).num_layers == 16


def test_plan_refuses_impossible_options(tmp_path: Path, tiny_dataset: Path) -> None:
    with pytest.raises(UsageError, match="only 2 layers"):
        _plan(tmp_path, tiny_dataset, layers=2, num_layers=3)
    with pytest.raises(UsageError, match="larger than the smallest split"):
        _plan(tmp_path, tiny_dataset, layers=2, batch_size=64)


def test_default_output(tmp_path: Path) -> None:
    assert default_output(_resolved(tmp_path, adapter="tool-v1")) == tmp_path / "adapters" / "tool-v1"
    assert default_output(_resolved(tmp_path, adapter="./out/a")) == tmp_path / "out" / "a"
    assert default_output(_resolved(tmp_path, adapter="latest"), stamp="T") == tmp_path / "adapters" / "demo-T"
    assert default_output(_resolved(tmp_path), stamp="T") == tmp_path / "adapters" / "demo-T"
    with pytest.raises(UsageError, match="--output"):
        default_output(_resolved(tmp_path, adapters=["a", "b"]))


def _toml(tmp_path: Path, model: Path, adapter: str = "tool-v1") -> Path:
    path = tmp_path / "punie.toml"
    path.write_text(f'[profiles.demo]\nmodel = "{model}"\nadapter = "{adapter}"\n')
    return path


@pytest.mark.slow
def test_punie_train_writes_adapter_and_metadata(tmp_path: Path, tiny_model: Path, tiny_dataset: Path) -> None:
    config = _toml(tmp_path, tiny_model)
    result = CliRunner().invoke(main, [
        "--config", str(config), "train", "demo", "--data", str(tiny_dataset), "--iters", "3", "--rank", "4",
        "--max-seq-length", "64", "--val-batches", "1",
    ])
    assert result.exit_code == 0, result.output + result.stderr
    adapter = tmp_path / "adapters" / "tool-v1"
    assert f"adapter written to {adapter}" in result.stdout
    assert "training (train loss" in result.stderr  # the progress bar shows the loss
    assert (adapter / "adapters.safetensors").is_file()
    config_json = json.loads((adapter / "adapter_config.json").read_text())
    assert config_json["num_layers"] == 2 and config_json["lora_parameters"]["rank"] == 4
    # It describes the adapter where it ended up, not the staging run.
    assert config_json["adapter_path"] == "adapters/tool-v1" and config_json["config"] is None
    assert config_json["model"] == str(tiny_model) and config_json["data"] == str(tiny_dataset)
    meta = read_meta(adapter)
    assert meta is not None
    assert meta.base_model == str(tiny_model) and meta.iters == 3 and meta.score is None
    assert meta.base_fingerprint == config_fingerprint(tiny_model)
    from punie.weights.fingerprint import base_identity

    assert meta.base is not None and meta.base.weights == base_identity(tiny_model).weights  # the weights' identity
    assert meta.dataset_hash == validate_dataset(tiny_dataset).hash
    canary = read_canary(adapter)  # what readiness checks (tests/launch/test_canary_mlx.py)
    assert canary is not None and meta.base is not None and canary.base_fingerprint == meta.base.weights
    assert len(canary.base) == len(canary.adapter) == canary.top_k
    assert [p.name for p in (tmp_path / "adapters").iterdir()] == ["tool-v1"]  # no staging left


@pytest.mark.slow
def test_failed_training_keeps_previous_adapter(tmp_path: Path, tiny_model: Path, tiny_dataset: Path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_model / "config.json").read_text())  # no weights, no tokenizer
    old = tmp_path / "adapters" / "tool-v1"
    old.mkdir(parents=True)
    (old / "adapter_config.json").write_text("{}")
    (old / "adapters.safetensors").write_bytes(b"old weights")
    with pytest.raises(TrainingError) as caught:
        train_adapter(_resolved(tmp_path, model=str(broken), adapter="tool-v1"), tiny_dataset,
                      options=TrainOptions(iters=1, val_batches=1))
    assert "mlx_lm lora failed" in str(caught.value) and "previous adapter is kept" in str(caught.value)
    assert (old / "adapters.safetensors").read_bytes() == b"old weights"
    assert [p.name for p in (tmp_path / "adapters").iterdir()] == ["tool-v1"]


def test_bad_dataset_is_reported_before_training(tmp_path: Path, tiny_model: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "x"}]}\n{oops\n')
    config = _toml(tmp_path, tiny_model)
    result = CliRunner().invoke(main, ["--config", str(config), "train", "demo", "--data", str(data)])
    assert result.exit_code == 1
    assert f"{data / 'train.jsonl'}:1: no assistant message" in result.stderr
    assert f"{data / 'train.jsonl'}:2: not valid JSON" in result.stderr
    assert "valid.jsonl: missing" in result.stderr
    assert not (tmp_path / "adapters").exists()


def test_dry_run_prints_the_command(tmp_path: Path, tiny_model: Path, tiny_dataset: Path) -> None:
    config = _toml(tmp_path, tiny_model)
    result = CliRunner().invoke(main, ["--config", str(config), "train", "demo", "--data", str(tiny_dataset),
                                       "--dry-run", "--iters", "9"])
    assert result.exit_code == 0, result.output + result.stderr
    assert "-m mlx_lm lora --model" in result.stdout and "--iters 9" in result.stdout
    assert not (tmp_path / "adapters").exists()
