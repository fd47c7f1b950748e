"""CLI: `punie train PROFILE --data DIR` (`punie eval` lives in punie.cli.evaluation)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from punie.cli._common import complete_profiles, echo_json, format_option, say, set_option, state_of

_SET = set_option("adapter=latest")


def _load(ctx: click.Context, name: str | None, overrides: tuple[str, ...]) -> Any:
    from punie.api import load_profile

    state = state_of(ctx)
    return load_profile(name, state.config, overrides=state.with_overrides(overrides))


class _TrainBar:
    """A click progress bar on stderr that shows the latest train and validation loss."""

    def __init__(self, total: int):
        self.total = total
        self.done = 0
        self.losses: dict[str, float | None] = {"train": None, "val": None}
        self.eta: float | None = None
        self.bar: Any = None

    def _label(self) -> str:
        parts = [f"{k} loss {v:.3f}" for k, v in self.losses.items() if v is not None]
        if self.eta is not None:
            minutes, seconds = divmod(int(self.eta), 60)
            parts.append(f"ETA {minutes}:{seconds:02d}")
        return "training" + (f" ({', '.join(parts)})" if parts else "")

    def __call__(self, event: Any) -> None:
        if event.kind == "warning":
            say(f"warning: {event.message}")
            return
        if event.kind == "status":
            if self.bar is None:
                say(event.message)
            return
        if event.eta_seconds is not None:
            self.eta = event.eta_seconds
        self.losses[event.kind] = event.loss
        if self.bar is None:
            self.bar = click.progressbar(length=self.total, label=self._label(), file=sys.stderr, show_pos=True,
                                         show_eta=False)
            self.bar.__enter__()
        self.bar.label = self._label()
        if event.kind == "train" and event.iteration is not None and event.iteration > self.done:
            self.bar.update(event.iteration - self.done)
            self.done = event.iteration
        else:
            self.bar.render_progress()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@click.command("train")
@click.argument("profile", required=False, shell_complete=complete_profiles)
@click.option("--data", "data", required=True, metavar="DIR",
              help="Directory with train.jsonl and valid.jsonl (or a shipped dataset name: tool-calling).")
@click.option("--iters", type=click.IntRange(min=1), default=100, show_default=True, help="Training iterations.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Batch size (default: min(4, rows of a split)).")
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), help="Adam learning rate.")
@click.option("--rank", type=click.IntRange(min=1), default=8, show_default=True, help="LoRA rank.")
@click.option("--scale", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True,
              help="LoRA scale.")
@click.option("--num-layers", type=int, help="Layers to adapt, -1 for all (default: min(16, model layers)).")
@click.option("--max-seq-length", type=click.IntRange(min=8), help="Longest sequence (longer rows are cut).")
@click.option("--fine-tune-type", type=click.Choice(["lora", "dora"]), default="lora", show_default=True)
@click.option("--val-batches", type=int, help="Validation batches (-1: the whole valid split).")
@click.option("--seed", type=int, help="Random seed.")
@click.option("--mask-prompt", is_flag=True, help="Train on the answers only.")
@click.option("--steps-per-eval", type=click.IntRange(min=1),
              help="Validation interval (default: a fifth of --iters).")
@click.option("--save-every", type=click.IntRange(min=1),
              help="Checkpoint interval (default: the validation interval); the best by validation loss is kept.")
@click.option("--guard/--no-guard", default=True, show_default=True,
              help="Stop a run whose loss is NaN, rises or does not drop.")
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Adapter directory to write "
              "(default: the profile's adapter; adapters/PROFILE-TIME for latest/best/none).")
@click.option("--dry-run", is_flag=True, help="Check the dataset and print the mlx_lm command; train nothing.")
@format_option("json: the result (or the --dry-run plan) as JSON.")
@_SET
@click.pass_context
def train_command(ctx: click.Context, profile: str | None, data: str, output: str | None, dry_run: bool,
                  fmt: str, overrides: tuple[str, ...], **knobs: Any) -> None:
    """Train a LoRA adapter for PROFILE's base model with mlx_lm lora.

    The dataset is checked first (every problem is reported with file:line).
    The adapter is written atomically and gets a punie-adapter.json with the
    base model, its config fingerprint, the dataset hash, iterations and date.
    """
    from punie.api.training import TrainOptions, TrainPlan, train

    as_json = fmt == "json"
    resolved = _load(ctx, profile, overrides)
    options = TrainOptions(**knobs)
    bar = _TrainBar(options.iters)
    try:
        result = train(resolved, data, options=options, output=output,
                       on_progress=None if (as_json or dry_run) else bar, dry_run=dry_run)
    finally:
        bar.close()
    if isinstance(result, TrainPlan):
        if as_json:
            echo_json(result.model_dump(mode="json", exclude={"env"}))
        else:
            click.echo(" ".join(result.argv))
            click.echo(f"# lora config: {result.lora_config}; output: {result.output}")
        return
    if as_json:
        echo_json(result.model_dump(mode="json"))
        return
    losses = ", ".join(
        f"{name} loss {value:.3f}" for name, value in (("train", result.train_loss), ("val", result.val_loss))
        if value is not None
    )
    click.echo(f"adapter written to {result.adapter_dir} ({result.meta.iters} iters, {losses or 'no loss reported'},"
               f" {result.seconds:.1f} s)")
    click.echo(f"base model {result.meta.base_model} (config {result.meta.base_fingerprint}), "
               f"dataset {result.meta.dataset_hash}")
    if result.selection is not None:
        chosen = result.selection
        if chosen.stopped:
            say(f"warning: {chosen.stopped}")
        click.echo(f"weights of iteration {chosen.chosen_iteration}: {chosen.reason.split(' (')[0]}")
    adapter_spec = resolved.profile.adapter
    if adapter_spec is None:
        click.echo(f"note: profile '{resolved.name}' uses no adapter; serve this one with "
                   f"--set adapter={Path(result.adapter_dir).name} or adapter = \"latest\"", err=True)


def register(group: click.Group) -> None:
    """Add `train` to the top-level group."""
    group.add_command(train_command)
