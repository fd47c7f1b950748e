"""Watching a training run's losses: stop a run that cannot end well, and pick the best checkpoint.

`LossGuard` is fed the progress events parsed from mlx_lm's output as they
arrive and raises `TrainingStopped` (with the likely cause and the fix) when:

- a loss is NaN or infinite, the training loss explodes far above where it
  started, or (with a high learning rate) it is stuck at one value, the mark of
  saturated weights: the learning rate is too high;
- the validation loss keeps rising above its best: the adapter is memorising the
  training rows (too few examples) or the learning rate is too high;
- the validation loss has not dropped at all after most of the run: too few
  iterations, or a learning rate too low.

mlx_lm evaluates before the step of an iteration: the validation loss it prints
at iteration ``i`` is that of the weights after ``i - 1`` steps. Checkpoints are
saved after the step, so checkpoint ``i`` is paired with the loss printed at
``i`` (the weights one step earlier); `best_checkpoint` records that pairing.
`data_warnings` says, before any compute is spent, when the data is too small.
A stopped run still gives an adapter when a checkpoint saved before the stop has
a lower validation loss than the run started with (the weights before a
divergence, or before the rise); otherwise the stop is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from punie.errors import TrainingError

#: Fewer training rows than this: a warning before training (LoRA needs examples to generalise).
MIN_TRAIN_ROWS = 32
#: Fewer validation rows than this: the validation loss is noise.
MIN_VALID_ROWS = 4
#: Train loss above this multiple of the first one: diverging.
EXPLODE_FACTOR = 3.0
#: A validation loss this much (relative) above the best counts as a rise.
RISE_TOLERANCE = 0.05
#: Consecutive rising validation losses that stop the run.
RISE_PATIENCE = 2
#: A drop smaller than this (relative to the first validation loss) is no drop.
MIN_DROP = 0.01
#: The no-drop check runs once this share of the iterations is done and enough evaluations were made.
NO_DROP_AFTER = 0.6
MIN_EVALS_FOR_NO_DROP = 3
#: Learning rates from here on are high for LoRA (mlx_lm's default is 1e-5).
HIGH_LEARNING_RATE = 1e-3
#: Equal consecutive train losses (as printed) that mean the weights stopped changing.
STUCK_REPORTS = 5


class TrainingStopped(TrainingError):
    """The guard stopped the run: ``cause`` is a short name (nan, diverging, overfitting, no-drop)."""

    def __init__(self, message: str, *, cause: str, iteration: int | None, hint: str | None = None,
                 keep_best: bool = False):
        super().__init__(message, hint=hint)
        self.cause = cause
        self.iteration = iteration
        self.keep_best = keep_best  # a checkpoint before the stop is still worth keeping


@dataclass
class LossGuard:
    """Fed (kind, iteration, loss) as mlx_lm reports them; raises TrainingStopped when the run goes wrong."""

    iters: int
    train_rows: int
    learning_rate: float | None = None
    first_train: float | None = None
    first_val: float | None = None
    best_val: float | None = None
    best_val_at: int | None = None
    rises: int = 0
    val_losses: dict[int, float] = field(default_factory=dict)
    train_losses: list[tuple[int | None, float]] = field(default_factory=list)

    def _lr_hint(self) -> str:
        if self.learning_rate is None:
            return "lower the learning rate with --learning-rate (LoRA usually trains at 1e-5 to 2e-4)"
        lower = min(self.learning_rate / 10, 1e-4)
        return (f"lower the learning rate (--learning-rate {self.learning_rate:g} -> {lower:g}; LoRA usually "
                "trains at 1e-5 to 2e-4)")

    def _high_lr(self) -> bool:
        return self.learning_rate is not None and self.learning_rate >= HIGH_LEARNING_RATE

    def feed(self, kind: str, iteration: int | None, loss: float | None) -> None:
        """Take one reported loss; raise TrainingStopped when the run should stop."""
        if loss is None or kind not in ("train", "val"):
            return
        at = f" at iteration {iteration}" if iteration is not None else ""
        if not math.isfinite(loss):
            raise TrainingStopped(
                f"the {kind} loss became {loss}{at}: training diverged; the learning rate is too high",
                cause="nan", iteration=iteration, hint=self._lr_hint())
        if kind == "train":
            self.train_losses.append((iteration, loss))
            if self.first_train is None:
                self.first_train = loss
            elif loss > EXPLODE_FACTOR * self.first_train and loss > self.first_train + 2.0:
                raise TrainingStopped(
                    f"the train loss exploded{at} ({self.first_train:.3f} -> {loss:.3f}): the learning rate is "
                    "too high", cause="diverging", iteration=iteration, hint=self._lr_hint())
            recent = self.train_losses[-STUCK_REPORTS:]
            if self._high_lr() and len(recent) == STUCK_REPORTS and len({v for _, v in recent}) == 1:
                raise TrainingStopped(
                    f"the train loss is stuck at {loss:.3f} since iteration {recent[0][0]}: the weights saturated "
                    f"and stopped learning; the learning rate ({self.learning_rate:g}) is too high",
                    cause="diverging", iteration=iteration, hint=self._lr_hint())
            return
        if iteration is not None:
            self.val_losses[iteration] = loss
        if self.first_val is None:
            self.first_val = loss
        if self.best_val is None or loss < self.best_val:
            self.best_val, self.best_val_at, self.rises = loss, iteration, 0
        elif loss > self.best_val * (1 + RISE_TOLERANCE):
            self.rises += 1
            if self.rises >= RISE_PATIENCE:
                raise TrainingStopped(
                    f"the validation loss rose{at} ({self.best_val:.3f} at iteration {self.best_val_at} -> "
                    f"{loss:.3f}): the adapter is memorising its {self.train_rows} training rows",
                    cause="overfitting", iteration=iteration, keep_best=True,
                    hint="add more (and more varied) examples, or " + self._lr_hint()
                    + "; the best checkpoint so far is kept")
        evals = len(self.val_losses)
        if (iteration is not None and iteration >= NO_DROP_AFTER * self.iters and evals > MIN_EVALS_FOR_NO_DROP
                and self.first_val is not None and self.best_val is not None
                and self.best_val > self.first_val * (1 - MIN_DROP)):
            if self._high_lr():
                cause, hint = "the learning rate is probably too high (the weights saturated)", self._lr_hint()
            else:
                cause = "too few iterations, or a learning rate too low"
                hint = "train longer (--iters) or raise the learning rate; with very few examples, add more"
            raise TrainingStopped(
                f"the validation loss has not dropped by iteration {iteration} ({self.first_val:.3f} -> "
                f"{loss:.3f}, best {self.best_val:.3f}): {cause}", cause="no-drop", iteration=iteration, hint=hint)


def data_warnings(train_rows: int, valid_rows: int, iters: int, batch_size: int) -> list[str]:
    """What is wrong with the amount of data for this run, said before training."""
    warnings = []
    if train_rows < MIN_TRAIN_ROWS:
        warnings.append(f"only {train_rows} training examples (at least {MIN_TRAIN_ROWS} are advised): "
                        "the adapter will memorise them rather than learn the task; add more examples")
    if valid_rows < MIN_VALID_ROWS:
        warnings.append(f"only {valid_rows} validation examples: the validation loss (used to pick the best "
                        "checkpoint and to stop early) will be noise")
    if iters * batch_size < train_rows:
        warnings.append(f"{iters} iterations of {batch_size} rows see only {iters * batch_size} of the "
                        f"{train_rows} training rows: raise --iters")
    return warnings


class Checkpoint(BaseModel):
    """One saved checkpoint and the validation loss paired with it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    iteration: int
    val_loss: float | None = None
    file: str


class Selection(BaseModel):
    """Which weights became the adapter and why (recorded in punie-adapter.json as ``training``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chosen_iteration: int
    chosen_val_loss: float | None = None
    reason: str
    checkpoints: list[Checkpoint] = Field(default_factory=list)
    stopped: str | None = Field(None, description="Why the run was stopped early, if it was.")
    val_losses: dict[int, float] = Field(default_factory=dict, description="iteration -> validation loss")
    warnings: list[str] = Field(default_factory=list)


def list_checkpoints(folder: Path, val_losses: dict[int, float]) -> list[Checkpoint]:
    """The ``NNNNNNN_adapters.safetensors`` files of a run, each with the validation loss printed at its iteration."""
    from punie.adapters.files import CHECKPOINT, checkpoints

    found = []
    for path in checkpoints(folder):
        match = CHECKPOINT.match(path.name)
        if match:
            it = int(match.group(1))
            found.append(Checkpoint(iteration=it, val_loss=val_losses.get(it), file=path.name))
    return found


def best_checkpoint(checkpoints: list[Checkpoint], *, final_iteration: int | None,
                    final_val: float | None) -> tuple[int, float | None, str]:
    """(iteration, val loss, reason) of the weights to keep: the lowest validation loss.

    ``final_iteration`` is the run's end (None when it was stopped): the final
    weights compete with the loss printed at the last iteration.
    """
    scored = [(c.val_loss, c.iteration) for c in checkpoints if c.val_loss is not None]
    if final_iteration is not None and final_val is not None:
        scored.append((final_val, final_iteration))
    if not scored:
        if final_iteration is None:
            raise TrainingError("the run was stopped before any checkpoint with a validation loss was saved")
        return final_iteration, None, "the final weights (no validation loss to compare checkpoints by)"
    loss, iteration = min(scored, key=lambda s: (s[0], -s[1]))
    if iteration == final_iteration:
        return iteration, loss, f"the final weights have the lowest validation loss ({loss:.4f})"
    return iteration, loss, (f"checkpoint {iteration} has the lowest validation loss ({loss:.4f}) of "
                             f"{len(scored)} candidates")
