"""Check a training data directory before mlx_lm sees it.

mlx_lm lora reads ``train.jsonl``, ``valid.jsonl`` and (optionally)
``test.jsonl`` from the ``--data`` directory; each line is one JSON object in
one of its formats, chosen by the FIRST line of a file:

- chat: ``{"messages": [{"role": ..., "content": ...}, ...], "tools": [...]?}``; with tools
  (mlx_lm renders them through the model's chat template), assistant messages may
  carry OpenAI ``tool_calls`` (``{"function": {"name": ..., "arguments": {...}}}``,
  arguments an object or a JSON string of one) and ``tool`` messages the results
- completions: ``{"prompt": str, "completion": str}``
- text: ``{"text": str}``

mlx_lm reports a bad line as a bare JSON traceback after loading the model;
here every problem is collected with ``file:line`` and raised at once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from punie.errors import CorruptFileError, TrainingError, did_you_mean
from punie.jsonio import open_regular, parse_json, read_file_bytes
from punie.limits import CHUNK_BYTES

SPLITS = ("train", "valid", "test")
REQUIRED_SPLITS = ("train", "valid")
ROLES = ("system", "user", "assistant", "tool")
MAX_ERRORS = 20
#: A larger split file is refused (it is read whole, as mlx_lm does).
MAX_DATASET_BYTES = 4 * 1024 * 1024 * 1024


class SplitInfo(BaseModel):
    """One split file that passed validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    path: str
    rows: int
    format: str


class DatasetInfo(BaseModel):
    """A validated data directory: its splits and a content hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    splits: dict[str, SplitInfo]
    hash: str


def _format_of(row: dict[str, Any]) -> str | None:
    if "messages" in row:
        return "chat"
    if "prompt" in row and "completion" in row:
        return "completions"
    if "text" in row:
        return "text"
    return None


def _check_tool_calls(calls: Any, where: str) -> list[str]:
    if not isinstance(calls, list):
        return [f"{where}.tool_calls: must be a list"]
    errors = []
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            errors.append(f"{at}: must be an object")
            continue
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            errors.append(f"{at}: needs a 'name' string")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                errors.append(f"{at}.arguments: not valid JSON")
                continue
        if not isinstance(args, dict):
            errors.append(f"{at}.arguments: must be an object (or a JSON string of one)")
    return errors


def _check_chat(row: dict[str, Any]) -> list[str]:
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        return ["'messages' must be a non-empty list"]
    errors: list[str] = []
    for i, message in enumerate(messages):
        at = f"messages[{i}]"
        if not isinstance(message, dict):
            errors.append(f"{at}: must be an object")
            continue
        role = message.get("role")
        if role not in ROLES:
            errors.append(f"{at}.role: {role!r} is not one of {', '.join(ROLES)}")
            continue
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            errors.append(f"{at}.content: must be a string")
        if "tool_calls" in message:
            if role != "assistant":
                errors.append(f"{at}: only assistant messages may have tool_calls")
            else:
                errors += _check_tool_calls(message["tool_calls"], at)
        elif content is None:
            errors.append(f"{at}: needs 'content'")
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        errors.append("no assistant message: nothing to learn from")
    tools = row.get("tools")
    if tools is not None and not isinstance(tools, list):
        errors.append("'tools' must be a list")
    elif tools:
        names = _tool_names(tools, errors)
        for i, message in enumerate(messages):
            calls = message.get("tool_calls") if isinstance(message, dict) else None
            for j, call in enumerate(calls if isinstance(calls, list) else []):
                fn = call.get("function", call) if isinstance(call, dict) else None
                name = fn.get("name") if isinstance(fn, dict) else None
                if isinstance(name, str) and name and names and name not in names:
                    errors.append(f"messages[{i}].tool_calls[{j}]: tool {name!r} is not in the row's 'tools'")
    return errors


def _tool_names(tools: list[Any], errors: list[str]) -> set[str]:
    """Names of a row's tools (OpenAI format: {"type": "function", "function": {"name": ...}})."""
    names: set[str] = set()
    for k, tool in enumerate(tools):
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not name:
            errors.append(f"tools[{k}]: needs a function 'name' string")
        else:
            names.add(name)
    return names


def _check_row(row: Any, expected: str | None) -> tuple[str | None, list[str]]:
    if not isinstance(row, dict):
        return None, [f"must be a JSON object, not {type(row).__name__}"]
    fmt = _format_of(row)
    if fmt is None:
        return None, ["needs 'messages', 'prompt' and 'completion', or 'text'"]
    if expected is not None and fmt != expected:
        return fmt, [f"is in {fmt} format but the file's first row is {expected} (mlx_lm takes one format per file)"]
    if fmt == "chat":
        return fmt, _check_chat(row)
    if fmt == "completions":
        bad = [k for k in ("prompt", "completion") if not isinstance(row[k], str)]
        return fmt, [f"'{k}' must be a string" for k in bad]
    return fmt, ([] if isinstance(row["text"], str) else ["'text' must be a string"])


def check_split(path: Path, errors: list[str]) -> SplitInfo | None:
    """Check one JSONL file, appending ``file:line: message`` problems to ``errors``."""
    rows = 0
    fmt: str | None = None
    try:
        raw = read_file_bytes(path, max_bytes=MAX_DATASET_BYTES)
    except FileNotFoundError as exc:
        errors.append(f"{path}: cannot read: {exc.strerror or exc}")
        return None
    except CorruptFileError as exc:
        errors.append(exc.render())
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        errors.append(f"{path}:{line}: not UTF-8 text")
        return None
    # mlx_lm iterates the file in universal-newline mode and json-parses every
    # line (str.splitlines would also split on U+2028 etc., which files do not).
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            errors.append(f"{path}:{number}: empty line (mlx_lm cannot parse it)")
            continue
        try:
            row = parse_json(line, where=f"{path}:{number}")
        except CorruptFileError as exc:
            errors.append(exc.render())
            continue
        row_format, problems = _check_row(row, fmt)
        errors.extend(f"{path}:{number}: {p}" for p in problems)
        if fmt is None and row_format is not None:
            fmt = row_format
        rows += 1
    if not lines:
        errors.append(f"{path}: no rows")
        return None
    if rows == 0:
        return None
    return SplitInfo(name=path.stem, path=str(path), rows=rows, format=fmt or "unknown")


def dataset_hash(data_dir: str | Path) -> str:
    """sha256 (16 hex digits) over the split files present, in split order."""
    digest = hashlib.sha256()
    for split in SPLITS:
        path = Path(data_dir) / f"{split}.jsonl"
        if path.is_file():
            digest.update(f"{split}:".encode())
            inner = hashlib.sha256()
            with open_regular(path) as (fh, _):
                while chunk := fh.read(CHUNK_BYTES):
                    inner.update(chunk)
            digest.update(inner.digest())
    return digest.hexdigest()[:16]


def validate_dataset(data_dir: str | Path) -> DatasetInfo:
    """Check ``data_dir`` for mlx_lm lora; raise TrainingError listing every problem (file:line)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise TrainingError("data directory does not exist", where=str(root))
    errors: list[str] = []
    splits: dict[str, SplitInfo] = {}
    for split in SPLITS:
        path = root / f"{split}.jsonl"
        if not path.is_file():
            if split in REQUIRED_SPLITS:
                why = "training data" if split == "train" else "mlx_lm lora needs a validation split"
                errors.append(f"{path}: missing ({why})")
            continue
        info = check_split(path, errors)
        if info is not None:
            splits[split] = info
    if errors:
        shown = errors[:MAX_ERRORS]
        more = f"\n  ... and {len(errors) - MAX_ERRORS} more" if len(errors) > MAX_ERRORS else ""
        raise TrainingError(
            f"dataset has {len(errors)} problem(s):\n  " + "\n  ".join(shown) + more, where=str(root)
        )
    return DatasetInfo(path=str(root), splits=splits, hash=dataset_hash(root))


def shipped_datasets() -> list[str]:
    """Names of the datasets that ship with Punie (``punie/data/datasets/NAME``)."""
    from importlib import resources

    folder = resources.files("punie.data").joinpath("datasets")
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def resolve_data_dir(spec: str | Path, cwd: Path | None = None) -> Path:
    """A data directory: a path (relative to ``cwd``), else the name of a shipped dataset."""
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = (cwd or Path.cwd()) / path
    if path.exists():
        return path
    if str(spec) in shipped_datasets():
        from importlib import resources

        return Path(str(resources.files("punie.data").joinpath("datasets", str(spec))))
    names = shipped_datasets()
    raise TrainingError(
        f"data directory does not exist (and '{spec}' is not a shipped dataset: {', '.join(names) or 'none'})",
        where=str(path),
        hint=did_you_mean(str(spec), names),
    )
