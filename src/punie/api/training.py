"""Training as the ``punie train``, ``punie data`` and ``punie eval`` commands see it.

`punie.api.evaluate` runs the paired A/B; this module trains adapters and makes and measures
training data (from templates, or from the agent's own sessions).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from punie.training.data_stats import dataset_stats as _dataset_stats
from punie.training.generate import generate_dataset as generate_dataset
from punie.training.report import OVERALL as OVERALL
from punie.training.train import TrainOptions as TrainOptions
from punie.training.train import TrainPlan as TrainPlan
from punie.training.train import TrainResult as TrainResult

if TYPE_CHECKING:
    from punie.config.models import ResolvedProfile
    from punie.training.data_stats import DataStats
    from punie.training.sessions_data import DataReport
    from punie.training.train import ProgressEvent

__all__ = ["OVERALL", "TrainOptions", "TrainPlan", "TrainResult", "data_stats", "eval_results_dir",
           "generate_dataset", "sessions_dataset", "train"]


def train(profile: ResolvedProfile, data: str | os.PathLike[str], *, options: TrainOptions | None = None,
          output: str | os.PathLike[str] | None = None, on_progress: Callable[[ProgressEvent], None] | None = None,
          dry_run: bool = False) -> TrainResult | TrainPlan:
    """``punie train``: check the dataset in ``data`` (a directory, relative to here), train a LoRA adapter
    for the profile's base model and record its metadata; a dry run returns the plan and writes nothing."""
    from punie.training.dataset import resolve_data_dir
    from punie.training.train import train_adapter

    return train_adapter(profile, resolve_data_dir(Path(data)), options=options,
                         output=Path(output) if output is not None else None, on_progress=on_progress, dry_run=dry_run)


def data_stats(directory: str | os.PathLike[str], model: str | os.PathLike[str] | None = None) -> DataStats:
    """Rows, tool calls per tool, token lengths (``model``'s tokenizer, else an estimate) and duplicates."""
    from punie.training.data_stats import tokenizer_counter
    from punie.training.dataset import resolve_data_dir

    return _dataset_stats(resolve_data_dir(Path(directory)), tokenizer_counter(Path(model)) if model else None)


def sessions_dataset(project: str | os.PathLike[str], out: str | os.PathLike[str], *,
                     tools: Sequence[str] | None = None, since: str | None = None, profile: str | None = None,
                     valid_fraction: float | None = None) -> DataReport:
    """``punie data from-sessions``: the agent's sessions of ``project`` as chat+tools training data in ``out``.
    ``tools``: the tool names the examples offer (None: every tool); ``since``: an ISO date or date-time."""
    from punie.agent.tools import openai_tool_definitions
    from punie.paths import sessions_dir
    from punie.training.sessions_data import dataset_from_sessions, parse_since

    moment: datetime | None = parse_since(since) if since else None
    extra = {} if valid_fraction is None else {"valid_fraction": valid_fraction}
    return dataset_from_sessions(sessions_dir(Path(project)), out,
                                 openai_tool_definitions(list(tools) if tools is not None else None),
                                 since=moment, profile=profile, **extra)


def eval_results_dir(profile: ResolvedProfile) -> Path:
    """Where ``punie eval`` writes its reports for ``profile`` (``.punie/eval/`` of its project)."""
    from punie.paths import state_dir

    return state_dir(profile.project_dir) / "eval"
