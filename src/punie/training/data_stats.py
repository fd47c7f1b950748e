"""What a training data directory holds: rows, tool calls per tool, token lengths, duplicates.

Shown by ``punie data stats DIR`` so a person sees what they are about to train
on. Token lengths come from a counter (the model's tokenizer with its chat
template, when one is given) or an estimate of four characters per token.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from punie.training.dataset import SPLITS, validate_dataset
from punie.training.sessions_data import example_key

NO_TOOL = "(no tool)"
CHARS_PER_TOKEN = 4

TokenCounter = Callable[[dict[str, Any]], int]


class Lengths(BaseModel):
    """Token lengths of a split's rows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: int
    median: float
    mean: float
    p95: int
    max: int


class SplitStats(BaseModel):
    """One split's numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rows: int
    tools: dict[str, int] = Field(description="tool -> calls in the split; '(no tool)': rows without a call")
    tokens: Lengths | None
    duplicates: int = Field(description="rows equal to an earlier row of the same split")


class DataStats(BaseModel):
    """A data directory's numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    tokens_by: str = Field(description="'tokenizer' or 'estimate' (characters / 4)")
    splits: dict[str, SplitStats]
    shared: int = Field(description="rows of valid/test that are also in train (they inflate the validation score)")


def estimate_tokens(row: dict[str, Any]) -> int:
    """A rough token count: the row's text and arguments, four characters a token."""
    return max(1, len(json.dumps(row.get("messages", row), ensure_ascii=False)) // CHARS_PER_TOKEN)


def _lengths(values: list[int]) -> Lengths | None:
    if not values:
        return None
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return Lengths(min=ordered[0], median=statistics.median(ordered), mean=round(statistics.fmean(ordered), 1),
                   p95=p95, max=ordered[-1])


def _tool_counts(row: dict[str, Any]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for message in row.get("messages") or []:
        for call in (message.get("tool_calls") or []) if isinstance(message, dict) else []:
            fn = call.get("function", call) if isinstance(call, dict) else {}
            counts[str(fn.get("name"))] += 1
    return counts


def split_stats(rows: list[dict[str, Any]], count: TokenCounter) -> SplitStats:
    """The numbers of one split's rows."""
    tools: Counter[str] = Counter()
    seen: set[str] = set()
    duplicates = 0
    for row in rows:
        calls = _tool_counts(row)
        tools.update(calls or {NO_TOOL: 1})
        key = example_key(row)
        duplicates += key in seen
        seen.add(key)
    return SplitStats(rows=len(rows), tools=dict(sorted(tools.items())),
                      tokens=_lengths([count(row) for row in rows]), duplicates=duplicates)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL split (already checked by `validate_dataset`)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def dataset_stats(data_dir: str | Path, count: TokenCounter | None = None) -> DataStats:
    """Validate ``data_dir`` (raising TrainingError with every problem) and compute its numbers."""
    info = validate_dataset(data_dir)
    counter = count or estimate_tokens
    rows = {name: read_rows(Path(split.path)) for name, split in info.splits.items()}
    train_keys = {example_key(r) for r in rows.get("train", [])}
    shared = sum(example_key(r) in train_keys for name in SPLITS if name != "train" for r in rows.get(name, []))
    return DataStats(path=info.path, tokens_by="estimate" if count is None else "tokenizer",
                     splits={name: split_stats(r, counter) for name, r in rows.items()}, shared=shared)


def tokenizer_counter(model_dir: str | Path) -> TokenCounter:
    """A counter that renders a row with the model's chat template (tools included) and counts its tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

    def count(row: dict[str, Any]) -> int:
        messages = [_template_message(m) for m in row.get("messages", [])]
        text = tokenizer.apply_chat_template(messages, tools=row.get("tools"), tokenize=False)
        return len(tokenizer.encode(text, add_special_tokens=False))

    return count


def _template_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message as chat templates expect it (tool call arguments as objects, as mlx_lm gives them)."""
    out = dict(message)
    if out.get("tool_calls"):
        calls = []
        for call in out["tool_calls"]:
            fn = dict(call.get("function", {}))
            if isinstance(fn.get("arguments"), str):
                try:
                    fn["arguments"] = json.loads(fn["arguments"])
                except ValueError:
                    pass
            calls.append({**call, "function": fn})
        out["tool_calls"] = calls
    return out
