"""`punie train`: run ``mlx_lm lora`` for a profile's base model and register the adapter.

The command line is built by a pure function (`build_train_plan`) so a dry run
and a real run share it. mlx_lm writes ``adapter_config.json`` before it
trains, so a crashed run would leave a config without weights: training goes
into a hidden staging directory beside the target, which replaces the target
only when mlx_lm succeeded (the old adapter is kept otherwise). Progress lines
of mlx_lm are parsed into `ProgressEvent` values handed to a callback; this
module never prints.

The run is guarded (`punie.training.guard`): too little data is a warning
before mlx_lm starts; a NaN, an exploding or a rising validation loss, or no
drop at all stops mlx_lm with the likely cause and the fix. Checkpoints are
saved every ``save_every`` iterations (and kept under ``checkpoints/``); the
one with the lowest validation loss becomes the adapter, and which one and why
is recorded as ``training`` in punie-adapter.json.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from punie import envvars
from punie.adapters.files import ADAPTERS_DIR, CONFIG_FILE, SPECIAL_SPECS, WEIGHTS_FILE
from punie.adapters.metadata import AdapterMeta, now_iso, write_meta
from punie.config.atomic import replace_dir
from punie.config.models import ResolvedProfile
from punie.errors import ModelError, PunieError, TrainingError, UsageError
from punie.paths import current_umask
from punie.training.dataset import DatasetInfo, validate_dataset
from punie.training.guard import (
    LossGuard,
    Selection,
    TrainingStopped,
    best_checkpoint,
    data_warnings,
    list_checkpoints,
)

logger = logging.getLogger(__name__)

DEFAULT_NUM_LAYERS = 16
DEFAULT_BATCH_SIZE = 4
#: Validation evaluations (and checkpoints) per run by default, besides the first one.
DEFAULT_EVALS = 5
CHECKPOINTS_DIR = "checkpoints"
TAIL_LINES = 40
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# mlx-lm >= 0.30 prints a table ("   10    2.345 ▼    1,234    0.1k" and
# "   10    val 2.345    0.12s"); older versions print "Iter 10: Train loss 2.345, ...".
_TABLE_TRAIN = re.compile(r"^\s*(\d+)\s+(-?[\d.]+(?:e[-+]?\d+)?|nan|inf)\s+[▼▲]")
_TABLE_VAL = re.compile(r"^\s*(\d+)\s+val\s+(-?[\d.]+(?:e[-+]?\d+)?|nan|inf)\b")
_OLD_TRAIN = re.compile(r"Iter\s+(\d+):\s+Train loss\s+(-?[\d.]+|nan|inf)", re.IGNORECASE)
_OLD_VAL = re.compile(r"Iter\s+(\d+):\s+Val loss\s+(-?[\d.]+|nan|inf)", re.IGNORECASE)
_STATUS = ("Loading pretrained model", "Loading datasets", "Training")


class TrainOptions(BaseModel):
    """Knobs of one training run (None: Punie's or mlx_lm's default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    iters: int = Field(100, ge=1)
    batch_size: int | None = Field(None, ge=1)
    learning_rate: float | None = Field(None, gt=0)
    rank: int = Field(8, ge=1)
    scale: float = Field(20.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    num_layers: int | None = Field(None, description="Layers to adapt (-1: all); default min(16, model layers).")
    max_seq_length: int | None = Field(None, ge=8)
    fine_tune_type: Literal["lora", "dora"] = "lora"
    val_batches: int | None = Field(None, description="Validation batches (-1: whole valid split).")
    steps_per_eval: int | None = Field(None, ge=1)
    steps_per_report: int | None = Field(None, ge=1)
    save_every: int | None = Field(None, ge=1, description="Checkpoint interval (default: the evaluation interval).")
    guard: bool = Field(True, description="Stop a run whose loss goes wrong; keep the best checkpoint.")
    seed: int | None = None
    mask_prompt: bool = False


class TrainPlan(BaseModel):
    """What `punie train` runs: pure value, built by `build_train_plan`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    argv: tuple[str, ...]
    env: dict[str, str]
    lora_config: dict[str, object]
    model_dir: str
    base_model: str
    data_dir: str
    output: str
    staging: str
    config_file: str
    iters: int
    num_layers: int
    batch_size: int


class ProgressEvent(BaseModel):
    """One thing mlx_lm reported: a train or validation loss, or a status line."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["train", "val", "status", "warning"]
    iteration: int | None = None
    total: int | None = None
    loss: float | None = None
    message: str | None = None
    eta_seconds: float | None = Field(None, description="Estimated seconds left (train events).")


class TrainResult(BaseModel):
    """A finished run: where the adapter is and what was recorded about it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    adapter_dir: str
    meta: AdapterMeta
    train_loss: float | None = None
    val_loss: float | None = None
    seconds: float
    selection: Selection | None = None
    warnings: list[str] = Field(default_factory=list)


def parse_progress_line(line: str, total: int | None = None) -> ProgressEvent | None:
    """A progress event for one line of mlx_lm lora output, or None for other lines."""
    text = _ANSI.sub("", line).rstrip()
    for pattern, kind in ((_TABLE_VAL, "val"), (_OLD_VAL, "val"), (_TABLE_TRAIN, "train"), (_OLD_TRAIN, "train")):
        found = pattern.search(text) if pattern in (_OLD_TRAIN, _OLD_VAL) else pattern.match(text)
        if found:
            return ProgressEvent(kind=kind, iteration=int(found.group(1)), total=total, loss=float(found.group(2)))
    stripped = text.strip()
    if stripped.startswith(_STATUS):
        return ProgressEvent(kind="status", total=total, message=stripped)
    return None


def model_layer_count(model_dir: str | Path) -> int | None:
    """The model's layer count from its config.json (see `punie.weights.headers.layer_count`), None if unknown."""
    from punie.jsonio import load_json_file
    from punie.weights.headers import layer_count

    try:
        return layer_count(load_json_file(Path(model_dir) / "config.json"))
    except (OSError, PunieError):
        return None


def default_output(resolved: ResolvedProfile, *, stamp: str | None = None) -> Path:
    """Where `punie train PROFILE` writes without --output.

    The profile's adapter path or name; for ``latest``/``best`` or no adapter a
    new ``adapters/<profile>-<time>`` directory (which ``latest`` then picks).
    """
    profile = resolved.profile
    project = Path(resolved.project_dir)
    if profile.adapters:
        raise UsageError(
            f"profile '{resolved.name}' composes several adapters: say which to write with --output"
        )
    spec = profile.adapter
    if spec is None or spec in SPECIAL_SPECS:
        stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
        return project / ADAPTERS_DIR / f"{resolved.name}-{stamp}"
    path = Path(spec).expanduser()
    if path.is_absolute():
        return path
    if len(path.parts) == 1 and not spec.startswith("."):
        return project / ADAPTERS_DIR / spec
    return project / path


def train_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the mlx_lm child: offline, no JIT compile, unbuffered plain output, fast BLAS."""
    from punie.launch.blas import mlx_child_env

    env = mlx_child_env(environ)
    env.setdefault(envvars.MLX_DISABLE_COMPILE, "1")
    env[envvars.HF_HUB_OFFLINE] = "1"
    env[envvars.PYTHONUNBUFFERED] = "1"
    env["NO_COLOR"] = "1"
    env.setdefault(envvars.TOKENIZERS_PARALLELISM, "false")
    if envvars.HF_HUB_CACHE not in env:
        from punie.paths import hf_hub_cache

        env[envvars.HF_HUB_CACHE] = str(hf_hub_cache(env))
    return env


def build_train_plan(
    *,
    model_dir: Path,
    base_model: str,
    model_layers: int | None,
    dataset: DatasetInfo,
    output: Path,
    staging: Path,
    config_file: Path,
    options: TrainOptions,
    python: str = sys.executable,
    environ: Mapping[str, str] | None = None,
) -> TrainPlan:
    """The mlx_lm lora command for one run (pure: reads and starts nothing)."""
    if options.num_layers is not None:
        num_layers = options.num_layers
        if model_layers is not None and num_layers > model_layers:
            raise UsageError(f"--num-layers {num_layers}: the model has only {model_layers} layers")
    else:
        # mlx_lm's default of 16 breaks models with fewer layers (the tiny test model has 2).
        num_layers = min(DEFAULT_NUM_LAYERS, model_layers) if model_layers else DEFAULT_NUM_LAYERS
    smallest = min((dataset.splits[s].rows for s in ("train", "valid") if s in dataset.splits), default=1)
    batch_size = options.batch_size or min(DEFAULT_BATCH_SIZE, smallest)
    if batch_size > smallest:
        raise UsageError(f"--batch-size {batch_size} is larger than the smallest split ({smallest} rows)")
    iters = options.iters
    steps_per_eval = options.steps_per_eval or max(1, iters // DEFAULT_EVALS)
    save_every = options.save_every or steps_per_eval
    argv = [
        python, "-m", "mlx_lm", "lora",
        "--model", str(model_dir),
        "--train",
        "--data", dataset.path,
        "--fine-tune-type", options.fine_tune_type,
        "--iters", str(iters),
        "--batch-size", str(batch_size),
        "--num-layers", str(num_layers),
        "--adapter-path", str(staging),
        "--steps-per-report", str(options.steps_per_report or max(1, iters // 50)),
        "--steps-per-eval", str(steps_per_eval),
        "--save-every", str(save_every),
        "-c", str(config_file),
    ]
    optional = (("--learning-rate", options.learning_rate), ("--max-seq-length", options.max_seq_length),
                ("--val-batches", options.val_batches), ("--seed", options.seed))
    for flag, value in optional:  # mlx_lm's own default where a knob is not set
        if value is not None:
            argv += [flag, repr(value)]  # repr: a float keeps every digit; an int is its digits
    if options.mask_prompt:
        argv += ["--mask-prompt"]
    lora = {"rank": options.rank, "scale": options.scale, "dropout": options.dropout}
    return TrainPlan(
        argv=tuple(argv),
        env=train_env(environ),
        lora_config={"lora_parameters": lora},
        model_dir=str(model_dir),
        base_model=base_model,
        data_dir=dataset.path,
        output=str(output),
        staging=str(staging),
        config_file=str(config_file),
        iters=iters,
        num_layers=num_layers,
        batch_size=batch_size,
    )


def _model_for(resolved: ResolvedProfile) -> tuple[Path, str]:
    """The base model directory of the profile and the spec recorded in the metadata."""
    from punie.launch.prepare import resolve_model_path

    spec = resolved.profile.model
    model_dir = resolve_model_path(resolved, provision=True)
    if not (model_dir / "config.json").is_file():
        raise ModelError("not a model directory (no config.json)", where=str(model_dir))
    local = Path(spec or "").expanduser()
    local = local if local.is_absolute() else Path(resolved.project_dir) / local
    base = str(model_dir) if spec and local.exists() else str(spec)
    return model_dir, base


def _settle_config(path: Path, *, target: Path, base_model: str, dataset: Path, project_dir: Path) -> None:
    """Make mlx_lm's adapter_config.json describe the adapter where it ends up, not the run.

    mlx_lm records its own arguments: the staging directory, a temporary -c file and the
    model directory. Recorded instead: the final directory, the profile's model spec
    (``builtin:NAME`` or hub id stays portable) and paths relative to the project.
    """

    def shown(p: Path) -> str:
        try:
            return str(p.resolve().relative_to(project_dir.resolve()))
        except ValueError:
            return str(p)

    from punie.jsonio import load_json_file

    config = load_json_file(path)
    config.update(adapter_path=shown(target), model=base_model, data=shown(dataset), config=None)
    path.write_text(json.dumps(config, indent=4, sort_keys=True) + "\n", encoding="utf-8")


def _swap_into_place(staging: Path, output: Path) -> None:
    """Replace ``output`` by ``staging``; the adapter gets the usual permissions (mkdtemp's are 0700)."""
    replace_dir(staging, output, mode=0o777 & ~current_umask())


def run_lora(plan: TrainPlan, on_progress: Callable[[ProgressEvent], None] | None = None) -> tuple[int, list[str]]:
    """Run mlx_lm lora (through the launch runner: guarded, own process group), feeding progress
    events; return (exit code, last lines of output). A Ctrl-C stops mlx_lm before it propagates."""
    from punie.launch.runner import run_to_end

    Path(plan.env[envvars.HF_HUB_CACHE]).mkdir(parents=True, exist_ok=True)
    logger.info("running %s", " ".join(plan.argv))

    def on_line(raw: str) -> None:
        line = _ANSI.sub("", raw)
        logger.debug("mlx_lm | %s", line)
        event = parse_progress_line(line, plan.iters)
        if event is not None and on_progress is not None:
            on_progress(event)

    try:
        code, tail = run_to_end("mlx_lm", plan.argv, env=plan.env, on_line=on_line, tail_lines=TAIL_LINES)
    except OSError as exc:
        raise TrainingError(f"cannot start mlx_lm: {exc}") from exc
    except BaseExceptionGroup as group:  # a TrainingStopped raised by on_progress, from the pump task
        stopped = _stopped_in(group)
        if stopped is None:
            raise
        raise stopped from None
    return code, [_ANSI.sub("", line) for line in tail]


def _stopped_in(group: BaseExceptionGroup) -> TrainingStopped | None:
    for exc in group.exceptions:
        if isinstance(exc, TrainingStopped):
            return exc
        if isinstance(exc, BaseExceptionGroup) and (found := _stopped_in(exc)) is not None:
            return found
    return None


class _Watch:
    """The progress callback of a run: feeds the guard, adds an ETA, forwards to the caller."""

    def __init__(self, plan: TrainPlan, guard: LossGuard | None,
                 on_progress: Callable[[ProgressEvent], None] | None):
        self.plan = plan
        self.guard = guard
        self.on_progress = on_progress
        self.losses: dict[str, float | None] = {"train": None, "val": None}
        self.val_losses: dict[int, float] = {}
        self.started: tuple[float, int] | None = None

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind in self.losses:
            self.losses[event.kind] = event.loss
        if event.kind == "val" and event.iteration is not None and event.loss is not None:
            self.val_losses[event.iteration] = event.loss
        if event.kind == "train" and event.iteration is not None:
            now = time.monotonic()
            if self.started is None:
                self.started = (now, event.iteration)
            else:
                t0, it0 = self.started
                if event.iteration > it0:
                    rate = (now - t0) / (event.iteration - it0)
                    event = event.model_copy(update={"eta_seconds": round(rate * (self.plan.iters - event.iteration),
                                                                          1)})
        if self.on_progress is not None:
            self.on_progress(event)
        if self.guard is not None:
            self.guard.feed(event.kind, event.iteration, event.loss)


def _improved_checkpoint(staging: Path, val_losses: dict[int, float]) -> bool:
    """Whether a checkpoint saved before a stop has a lower validation loss than the run started with
    (then it is worth keeping, e.g. the weights before a divergence)."""
    if not val_losses:
        return False
    start = val_losses[min(val_losses)]
    return any(c.val_loss is not None and c.val_loss < start for c in list_checkpoints(staging, val_losses))


def _select(staging: Path, plan: TrainPlan, watch: _Watch, stopped: TrainingStopped | None,
            warnings: list[str]) -> Selection:
    """Make the best checkpoint the adapter's weights; move the checkpoints under ``checkpoints/``."""
    checkpoints = list_checkpoints(staging, watch.val_losses)
    final = None if stopped is not None else plan.iters
    candidates = [c for c in checkpoints if c.iteration != final]  # checkpoint == final weights
    iteration, loss, reason = best_checkpoint(candidates, final_iteration=final,
                                              final_val=watch.val_losses.get(plan.iters) if final else None)
    if iteration != final:
        shutil.copyfile(staging / next(c.file for c in checkpoints if c.iteration == iteration),
                        staging / WEIGHTS_FILE)
    if checkpoints:
        (staging / CHECKPOINTS_DIR).mkdir()
        for c in checkpoints:
            os.rename(staging / c.file, staging / CHECKPOINTS_DIR / c.file)
    return Selection(chosen_iteration=iteration, chosen_val_loss=loss,
                     reason=reason + " (a checkpoint is paired with the validation loss mlx_lm printed at its "
                     "iteration, measured one step before it)",
                     checkpoints=[c.model_copy(update={"file": f"{CHECKPOINTS_DIR}/{c.file}"}) for c in checkpoints],
                     stopped=stopped.render() if stopped is not None else None,
                     val_losses=dict(sorted(watch.val_losses.items())), warnings=warnings)


def _with_canary(adapter_dir: Path, model_dir: Path, meta: AdapterMeta) -> AdapterMeta:
    """Record the adapter's canary (what readiness checks); a failure to compute it is only a warning."""
    from punie.adapters.metadata import read_meta
    from punie.errors import AdapterError
    from punie.launch.stamp import stamp_canary

    try:
        stamp_canary(adapter_dir, model_dir)
    except AdapterError as exc:
        logger.warning("no canary recorded for the adapter: %s", exc.render())
        return meta
    return read_meta(adapter_dir) or meta


def train_adapter(
    resolved: ResolvedProfile,
    data_dir: str | Path,
    *,
    options: TrainOptions | None = None,
    output: str | Path | None = None,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    on_plan: Callable[[TrainPlan], None] | None = None,
    dry_run: bool = False,
) -> TrainResult | TrainPlan:
    """Validate the dataset, train an adapter for the profile's base model, record its metadata.

    Returns the plan for a dry run (nothing is written). Raises TrainingError
    for dataset problems (all of them, with file:line) and mlx_lm failures;
    the previous adapter at the target is kept when training fails.
    """
    options = options or TrainOptions()
    dataset = validate_dataset(data_dir)
    dataset = dataset.model_copy(update={"path": str(Path(dataset.path).resolve())})
    target = Path(output).expanduser() if output is not None else default_output(resolved)
    target = target.resolve()
    model_dir, base_model = _model_for(resolved)
    staging_hint = target.parent / f".{target.name}.staging"
    from punie.launch.dense import dense_for  # mlx_lm trains on the dense copy where faster; identity: the original

    plan_args = dict(
        model_dir=dense_for(resolved, model_dir, provision=not dry_run), base_model=base_model,
        model_layers=model_layer_count(model_dir),
        dataset=dataset, output=target, options=options,
    )
    if dry_run:
        plan = build_train_plan(**plan_args, staging=staging_hint, config_file=staging_hint / "lora.yaml")
        if on_plan:
            on_plan(plan)
        return plan
    probe = build_train_plan(**plan_args, staging=staging_hint, config_file=staging_hint / "lora.yaml")
    warnings = data_warnings(dataset.splits["train"].rows, dataset.splits["valid"].rows if "valid" in
                             dataset.splits else 0, probe.iters, probe.batch_size)
    for warning in warnings:  # before any compute is spent
        logger.warning("%s", warning)
        if on_progress is not None:
            on_progress(ProgressEvent(kind="warning", message=warning))
    if target.exists() and not target.is_dir():
        raise UsageError("output exists and is not a directory", where=str(target))
    from punie.weights.fingerprint import base_identity

    try:
        identity = base_identity(model_dir, spec=base_model)
    except PunieError as exc:  # mlx_lm will say what is wrong with the model; the identity stays unknown
        logger.warning("base model identity not recorded: %s", exc)
        identity = None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    fd, config_name = tempfile.mkstemp(prefix=f".{target.name}.lora-", suffix=".yaml", dir=target.parent)
    os.close(fd)
    config_file = Path(config_name)
    started = time.monotonic()
    try:
        plan = build_train_plan(**plan_args, staging=staging, config_file=config_file)
        if on_plan:
            on_plan(plan)
        # JSON is YAML: mlx_lm reads the -c file with yaml.load.
        config_file.write_text(json.dumps(plan.lora_config), encoding="utf-8")
        guard = LossGuard(iters=plan.iters, train_rows=dataset.splits["train"].rows,
                          learning_rate=options.learning_rate) if options.guard else None
        watch = _Watch(plan, guard, on_progress)
        kept = " (the previous adapter is kept)" if target.exists() else ""
        stopped: TrainingStopped | None = None
        try:
            code, tail = run_lora(plan, watch)
        except TrainingStopped as exc:
            logger.warning("training stopped: %s", exc.render())
            if not (exc.keep_best or _improved_checkpoint(staging, watch.val_losses)):
                raise TrainingStopped(f"training stopped: {exc.message}{kept}", cause=exc.cause,
                                      iteration=exc.iteration, hint=exc.hint) from None
            stopped, code, tail = exc, 0, []
        if code != 0 or (stopped is None and not (staging / WEIGHTS_FILE).is_file()):
            raise TrainingError(
                f"mlx_lm lora failed (exit code {code}){kept}; its last output:\n  " + "\n  ".join(tail[-15:]),
                where=str(target),
            )
        selection = _select(staging, plan, watch, stopped, warnings)
        meta = AdapterMeta(
            base_model=base_model, base_fingerprint=identity.config if identity else None, base=identity,
            dataset_hash=dataset.hash,
            iters=plan.iters, created=now_iso(), score=None, eval=None,
            training=selection.model_dump(mode="json"),
        )
        _settle_config(staging / CONFIG_FILE, target=target, base_model=base_model,
                       dataset=Path(dataset.path), project_dir=Path(resolved.project_dir))
        write_meta(staging, meta)
        meta = _with_canary(staging, model_dir, meta)
        _swap_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        config_file.unlink(missing_ok=True)
    logger.info("adapter written to %s", target)
    return TrainResult(
        adapter_dir=str(target), meta=meta, train_loss=watch.losses["train"], val_loss=watch.losses["val"],
        seconds=round(time.monotonic() - started, 2), selection=selection, warnings=warnings,
    )
