"""Guarded training: the loss is watched as mlx_lm runs, and the best checkpoint becomes the adapter."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from punie.adapters.registry import read_meta
from punie.cli import main
from punie.training.guard import (
    MIN_TRAIN_ROWS,
    Checkpoint,
    LossGuard,
    TrainingStopped,
    best_checkpoint,
    data_warnings,
)


def _feed(guard: LossGuard, events: list[tuple[str, int, float]]) -> None:
    for kind, it, loss in events:
        guard.feed(kind, it, loss)


def test_nan_stops_with_the_learning_rate_as_cause() -> None:
    guard = LossGuard(iters=100, train_rows=50, learning_rate=0.5)
    with pytest.raises(TrainingStopped, match="became nan at iteration 7") as caught:
        _feed(guard, [("val", 1, 2.0), ("train", 5, 1.9), ("train", 7, math.nan)])
    assert caught.value.cause == "nan" and "--learning-rate 0.5 -> 0.0001" in (caught.value.hint or "")


def test_exploding_train_loss_stops() -> None:
    guard = LossGuard(iters=100, train_rows=50)
    with pytest.raises(TrainingStopped, match="exploded") as caught:
        _feed(guard, [("train", 1, 1.5), ("train", 2, 1.4), ("train", 3, 9.0)])
    assert caught.value.cause == "diverging"


def test_stuck_loss_with_a_high_learning_rate_stops() -> None:
    _feed(LossGuard(iters=100, train_rows=50, learning_rate=1e-5), [("train", i, 5.7) for i in range(1, 20)])
    guard = LossGuard(iters=100, train_rows=50, learning_rate=1.0)
    with pytest.raises(TrainingStopped, match=r"stuck at 5.700 since iteration 2.*\(1\) is too high"):
        _feed(guard, [("train", 1, 5.9)] + [("train", i, 5.7) for i in range(2, 20)])


def test_rising_validation_loss_stops_and_keeps_the_best() -> None:
    guard = LossGuard(iters=100, train_rows=10)
    _feed(guard, [("val", 1, 3.0), ("val", 10, 2.0), ("val", 20, 2.05), ("val", 30, 2.2)])  # one rise: patience
    with pytest.raises(TrainingStopped, match=r"rose at iteration 40 \(2.000 at iteration 10 -> 2.300\)") as caught:
        guard.feed("val", 40, 2.3)
    assert caught.value.cause == "overfitting" and caught.value.keep_best
    assert "10 training rows" in caught.value.message and "more" in (caught.value.hint or "")


def test_no_drop_stops_late_in_the_run_with_the_right_advice() -> None:
    guard = LossGuard(iters=100, train_rows=50)
    _feed(guard, [("val", 1, 2.0), ("val", 20, 2.0), ("val", 40, 1.999)])  # too early to judge
    with pytest.raises(TrainingStopped, match="has not dropped by iteration 60.*too few iterations") as caught:
        guard.feed("val", 60, 2.0)
    assert caught.value.cause == "no-drop" and "--iters" in (caught.value.hint or "")
    dropping = LossGuard(iters=100, train_rows=50)
    _feed(dropping, [("val", 1, 2.0), ("val", 20, 1.8), ("val", 40, 1.7), ("val", 60, 1.65), ("val", 80, 1.6)])


def test_data_warnings() -> None:
    assert data_warnings(500, 50, 200, 4) == []
    few = data_warnings(8, 2, 100, 4)
    assert len(few) == 2 and f"only 8 training examples (at least {MIN_TRAIN_ROWS}" in few[0]
    assert "raise --iters" in data_warnings(1000, 50, 10, 4)[0]


def test_best_checkpoint_is_the_lowest_validation_loss() -> None:
    cps = [Checkpoint(iteration=i, val_loss=v, file=f"{i:07d}_adapters.safetensors")
           for i, v in ((5, 2.0), (10, 1.5), (15, 1.7))]
    assert best_checkpoint(cps, final_iteration=20, final_val=1.8)[:2] == (10, 1.5)
    assert best_checkpoint(cps, final_iteration=20, final_val=1.2)[:2] == (20, 1.2)
    assert best_checkpoint(cps, final_iteration=None, final_val=None)[0] == 10  # stopped early
    assert best_checkpoint([], final_iteration=20, final_val=None)[0] == 20


def _config(tmp_path: Path, model: Path) -> Path:
    path = tmp_path / "punie.toml"
    path.write_text(f'[profiles.demo]\nmodel = "{model}"\nadapter = "guarded"\n')
    return path


def _chat(word: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": "Say the word."},
                                    {"role": "assistant", "content": " ".join([word] * 8)}]}) + "\n"


@pytest.mark.slow
@pytest.mark.mlx
def test_a_huge_learning_rate_stops_early_with_the_cause(tmp_path: Path, tiny_model: Path,
                                                        tiny_dataset: Path) -> None:
    old = tmp_path / "adapters" / "guarded"
    old.mkdir(parents=True)
    (old / "adapters.safetensors").write_bytes(b"old")
    result = CliRunner().invoke(main, [
        "--config", str(_config(tmp_path, tiny_model)), "train", "demo", "--data", str(tiny_dataset),
        "--iters", "200", "--learning-rate", "1000", "--rank", "4",
        "--max-seq-length", "64", "--val-batches", "1", "--seed", "0"])
    assert result.exit_code == 1, result.output
    err = result.stderr
    assert "learning rate (1000) is too high" in err and "hint: lower the learning rate" in err
    assert "the previous adapter is kept" in err and (old / "adapters.safetensors").read_bytes() == b"old"
    stopped_at = int(re.search(r"since iteration (\d+)", err).group(1))
    assert stopped_at < 50  # of 200: stopped early, not after the whole run
    # too little data is said before any compute is spent
    assert err.index("warning: only 8 training examples") < err.index("Loading pretrained model")


@pytest.mark.slow
@pytest.mark.mlx
def test_the_best_checkpoint_becomes_the_adapter(tmp_path: Path, tiny_model: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # mlx's bundled single-threaded BLAS: the loss curve is then the same every run (a threaded
    # OpenBLAS sums in another order, and this tiny run's last two validation losses come close).
    monkeypatch.setenv("PUNIE_BLAS", "off")
    data = tmp_path / "data"
    data.mkdir()
    # Validation asks for another word than training: its loss first drops (the chat format is
    # learnt) and then rises (the training word wins), so the best weights are in the middle.
    (data / "train.jsonl").write_text(_chat("alpha") * 8)
    (data / "valid.jsonl").write_text(_chat("beta") * 8)
    result = CliRunner().invoke(main, [
        "--config", str(_config(tmp_path, tiny_model)), "train", "demo", "--data", str(data), "--iters", "40",
        "--learning-rate", "0.05", "--rank", "4", "--batch-size", "2", "--steps-per-eval", "5",
        "--save-every", "5", "--max-seq-length", "64", "--val-batches", "-1", "--seed", "0"])
    assert result.exit_code == 0, result.output + result.stderr
    adapter = tmp_path / "adapters" / "guarded"
    meta = read_meta(adapter)
    assert meta is not None
    training = meta.model_extra["training"]
    losses = {int(k): v for k, v in training["val_losses"].items()}
    assert sorted(losses) == [1, 5, 10, 15, 20, 25, 30, 35, 40]
    files = sorted(p.name for p in (adapter / "checkpoints").iterdir())
    assert files == [f"{i:07d}_adapters.safetensors" for i in range(5, 41, 5)]
    best = min(range(5, 41, 5), key=lambda i: (losses[i], -i))
    assert training["chosen_iteration"] == best and training["chosen_val_loss"] == losses[best]
    assert best < 40  # this data's validation loss rises at the end
    assert f"checkpoint {best} has the lowest validation loss" in training["reason"]
    assert (adapter / "adapters.safetensors").read_bytes() == \
        (adapter / "checkpoints" / f"{best:07d}_adapters.safetensors").read_bytes()
    assert f"weights of iteration {best}" in result.stdout
    assert "ETA" in result.stderr


def test_a_stopped_run_keeps_a_checkpoint_only_when_it_beat_the_start(tmp_path: Path) -> None:
    from punie.training.train import _improved_checkpoint

    for it in (8, 16):
        (tmp_path / f"{it:07d}_adapters.safetensors").write_bytes(b"w")
    # a run that improved (val 2.05 -> 1.77 at checkpoint 8) and then diverged: checkpoint 8 is kept
    assert _improved_checkpoint(tmp_path, {1: 2.048, 8: 1.765, 16: 9.973})
    # a run that never beat its start: the stop is an error
    assert not _improved_checkpoint(tmp_path, {1: 2.0, 8: 2.1, 16: 9.9})
    assert not _improved_checkpoint(tmp_path / "none", {})
