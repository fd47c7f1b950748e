"""Training data from the agent's own sessions (``.punie/sessions/*.json``).

A session file (written by the ACP server, see ``punie.agent.sessions``) holds
pydantic-ai messages in their JSON form. Each user turn becomes at most one
mlx_lm chat example (system, user, the assistant's tool calls and their results,
the final answer) with the agent's tool definitions as ``tools``:

- a turn is kept only when every tool call in it ran and was allowed; a call that
  was refused (permission denied), failed (tool error, non-zero exit code),
  malformed (answered with a retry) or left without a result (cancelled) drops the
  turn, and the drop is counted by kind;
- secret-looking strings are replaced (`punie.training.secrets`), ``.env`` file
  contents entirely, and counted by kind;
- identical examples are kept once (call ids are renumbered so that equal turns
  from different sessions compare equal);
- the split is by session: all examples of a session land in train or in valid.

Everything here is pure except `read_session_file` (the one place a session file
is read) and `write_dataset`.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from punie.config.atomic import write_atomic
from punie.errors import CorruptFileError, TrainingError
from punie.training.secrets import REDACTED, scrub_text, scrub_value

#: Session files larger than this are skipped (a real one is far smaller).
MAX_SESSION_BYTES = 32 * 1024 * 1024
#: A tool result longer than this is cut in the example (long outputs teach little and cost memory).
MAX_TOOL_RESULT_CHARS = 4000
DEFAULT_VALID_FRACTION = 0.2

DropKind = Literal["denied", "failed", "cancelled", "invalid"]


class SessionTurns(BaseModel):
    """What one session file gave."""

    model_config = ConfigDict(extra="forbid")

    session_id: str
    profile: str | None = None
    updated_at: str | None = None
    examples: list[dict[str, Any]] = Field(default_factory=list)


class DataReport(BaseModel):
    """What `build_dataset` did: counts only (never a secret)."""

    model_config = ConfigDict(extra="forbid")

    sessions_read: int = 0
    sessions_unreadable: dict[str, str] = Field(default_factory=dict, description="file -> why it was skipped")
    sessions_filtered: int = 0
    turns: int = 0
    examples: int = 0
    dropped_turns: dict[str, int] = Field(default_factory=dict, description="kind of bad call -> turns dropped")
    duplicates: int = 0
    scrubbed: dict[str, int] = Field(default_factory=dict, description="kind of secret -> strings replaced")
    train: int = 0
    valid: int = 0
    train_sessions: list[str] = Field(default_factory=list)
    valid_sessions: list[str] = Field(default_factory=list)


def read_session_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """One session file's JSON: a regular file (no symlink, FIFO or device) within the size and depth caps.

    Raises CorruptFileError naming the file for anything else.
    """
    from punie.jsonio import load_json_file

    path = Path(path)
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise CorruptFileError(f"cannot read: {exc.strerror or exc}", where=str(path)) from None
    if not stat.S_ISREG(info.st_mode):
        raise CorruptFileError("not a regular file", where=str(path))
    doc = load_json_file(path, max_bytes=MAX_SESSION_BYTES)
    if not isinstance(doc.get("messages"), list) or not isinstance(doc.get("session_id"), str):
        raise CorruptFileError("not a Punie session (needs 'session_id' and 'messages')", where=str(path))
    return doc


def _args_dict(args: Any) -> dict[str, Any] | None:
    if isinstance(args, dict):
        return args
    if isinstance(args, str):
        try:
            parsed = json.loads(args or "{}")
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None
    return None if args is not None else {}


def result_status(tool: str, content: str) -> Literal["ok", "denied", "failed"]:
    """How a tool call went, from the result the tool gave the model (the formats of ``punie.agent.tools``)."""
    head = content.lstrip()[:200].lower()
    if head.startswith("permission denied"):
        return "denied"
    if head.startswith("error:"):
        return "failed"
    if tool == "run_command" and head.startswith("exit code") and not head.startswith("exit code 0\n") \
            and head.strip() != "exit code 0":
        return "failed"
    return "ok"


def _is_env_file(args: dict[str, Any]) -> bool:
    name = Path(str(args.get("path", ""))).name
    return name == ".env" or name.startswith(".env.") or name.endswith(".env")


def _scrub_env_file(text: str, found: Counter[str]) -> str:
    """Every value of a ``.env`` file (``KEY=value`` lines), whatever its name."""
    out = []
    for line in text.splitlines(keepends=True):
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.lstrip().startswith("#") and value.strip() \
                and not value.strip().startswith("[REDACTED:"):
            found["env-file"] += 1
            newline = "\n" if line.endswith("\n") else ""
            line = f"{key}={REDACTED.format(kind='env-file')}{newline}"
        out.append(line)
    return "".join(out)


def _user_text(part: dict[str, Any]) -> str:
    content = part.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(c for c in content if isinstance(c, str))
    return ""


def _split_turns(messages: Sequence[Any]) -> list[list[dict[str, Any]]]:
    """The messages grouped by user turn (a request carrying a user prompt starts one)."""
    turns: list[list[dict[str, Any]]] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        parts = message.get("parts") if isinstance(message.get("parts"), list) else []
        if message.get("kind") == "request" and any(
                isinstance(p, dict) and p.get("part_kind") == "user-prompt" for p in parts):
            turns.append([])
        if turns:
            turns[-1].append(message)
    return turns


def turn_example(turn: list[dict[str, Any]], tools: list[dict[str, Any]], found: Counter[str],
                 system: str | None = None) -> tuple[dict[str, Any] | None, DropKind | None]:
    """One turn as a chat example, or (None, why) when a call in it must not be learnt from.

    ``found`` gets the counts of scrubbed secrets (only for kept turns).
    """
    local: Counter[str] = Counter()
    out: list[dict[str, Any]] = []
    pending: dict[str, tuple[str, dict[str, Any], str]] = {}  # call id -> (tool, args, new id)
    calls = 0
    for message in turn:
        parts = [p for p in message.get("parts") or [] if isinstance(p, dict)]
        if message.get("kind") == "request":
            if system is None and isinstance(message.get("instructions"), str) and message["instructions"]:
                system = message["instructions"]
            for part in parts:
                kind = part.get("part_kind")
                if kind == "system-prompt" and isinstance(part.get("content"), str):
                    system = part["content"]
                elif kind == "user-prompt":
                    out.append({"role": "user", "content": scrub_text(_user_text(part), local)})
                elif kind == "retry-prompt" and part.get("tool_call_id"):
                    return None, "invalid"
                elif kind == "tool-return":
                    entry = pending.pop(str(part.get("tool_call_id")), None)
                    if entry is None:
                        continue
                    name, args, new_id = entry
                    content = part.get("content")
                    text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
                    status = result_status(name, text)
                    if status != "ok":
                        return None, status
                    if len(text) > MAX_TOOL_RESULT_CHARS:
                        text = text[:MAX_TOOL_RESULT_CHARS] + "\n... (cut)"
                    if name == "read_file" and _is_env_file(args):
                        text = _scrub_env_file(text, local)
                    out.append({"role": "tool", "tool_call_id": new_id, "name": name,
                                "content": scrub_text(text, local)})
        elif message.get("kind") == "response":
            if pending:  # the model went on without the results: the run was cut
                return None, "cancelled"
            text = "".join(p.get("content") or "" for p in parts if p.get("part_kind") == "text").strip()
            tool_calls = []
            for part in parts:
                if part.get("part_kind") != "tool-call":
                    continue
                args = _args_dict(part.get("args"))
                if args is None:
                    return None, "invalid"
                calls += 1
                new_id = f"call_{calls}"
                pending[str(part.get("tool_call_id"))] = (str(part.get("tool_name")), args, new_id)
                tool_calls.append({"id": new_id, "type": "function",
                                   "function": {"name": str(part.get("tool_name")),
                                                "arguments": scrub_value(args, local)}})
            if tool_calls:
                out.append({"role": "assistant", "content": scrub_text(text, local), "tool_calls": tool_calls})
            elif text:
                out.append({"role": "assistant", "content": scrub_text(text, local)})
    if pending:
        return None, "cancelled"
    if not out or out[-1]["role"] != "assistant" or "tool_calls" in out[-1]:
        return None, "cancelled"  # no final answer: the turn never finished
    if system:
        out.insert(0, {"role": "system", "content": scrub_text(system, local)})
    found.update(local)
    row: dict[str, Any] = {"messages": out}
    if tools:
        row["tools"] = tools
    return row, None


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def parse_since(text: str) -> datetime:
    """A ``--since`` value: an ISO date or date-time (UTC when no zone is given)."""
    stamp = _parse_time(text.strip())
    if stamp is None:
        raise TrainingError(f"--since {text!r}: not an ISO date or date-time (e.g. 2026-12-01 or 2026-12-01T09:00)")
    return stamp


def example_key(row: dict[str, Any]) -> str:
    """What makes two examples the same (their canonical JSON, tools included)."""
    return hashlib.sha256(json.dumps(row, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def session_side(session_id: str, valid_fraction: float) -> Literal["train", "valid"]:
    """Which split a session goes to: a stable hash of its id, so a rebuild keeps the sides."""
    bucket = int(hashlib.sha256(session_id.encode()).hexdigest()[:8], 16) / 0x1_0000_0000
    return "valid" if bucket < valid_fraction else "train"


def session_examples(doc: dict[str, Any], tools: list[dict[str, Any]], report: DataReport,
                     found: Counter[str], dropped: Counter[str]) -> SessionTurns:
    """The examples of one session document (counts go into ``report``, ``found`` and ``dropped``)."""
    result = SessionTurns(session_id=doc["session_id"], profile=doc.get("profile"), updated_at=doc.get("updated_at"))
    for turn in _split_turns(doc["messages"]):
        report.turns += 1
        row, why = turn_example(turn, tools, found)
        if row is None:
            dropped[why or "cancelled"] += 1
        else:
            result.examples.append(row)
    return result


def build_dataset(
    docs: Iterable[tuple[str, dict[str, Any] | Exception]],
    tools: list[dict[str, Any]],
    *,
    since: datetime | None = None,
    profile: str | None = None,
    valid_fraction: float = DEFAULT_VALID_FRACTION,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], DataReport]:
    """(train rows, valid rows, report) from session documents (``(name, doc or the error reading it)``).

    Raises TrainingError when nothing usable is left or the examples come from a
    single session (a split by session needs two).
    """
    report = DataReport()
    found: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    sessions: list[SessionTurns] = []
    for name, doc in docs:
        if isinstance(doc, Exception):
            report.sessions_unreadable[name] = str(doc)
            continue
        report.sessions_read += 1
        stamp = _parse_time(doc.get("updated_at") or doc.get("created_at"))
        if (profile is not None and doc.get("profile") != profile) or (
                since is not None and (stamp is None or stamp < since)):
            report.sessions_filtered += 1
            continue
        sessions.append(session_examples(doc, tools, report, found, dropped))
    seen: set[str] = set()
    sides: dict[str, list[SessionTurns]] = {"train": [], "valid": []}
    for session in sorted(sessions, key=lambda s: s.session_id):
        unique = []
        for row in session.examples:
            key = example_key(row)
            if key in seen:
                report.duplicates += 1
                continue
            seen.add(key)
            unique.append(row)
        if unique:
            session.examples = unique
            sides[session_side(session.session_id, valid_fraction)].append(session)
    report.dropped_turns = dict(sorted(dropped.items()))
    report.scrubbed = dict(sorted(found.items()))
    used = sides["train"] + sides["valid"]
    if len(used) < 2:
        raise TrainingError(
            f"{len(used)} session(s) with usable turns ({report.sessions_read} read, {report.sessions_filtered} "
            f"filtered out, {sum(dropped.values())} turns dropped): a split by session needs at least two",
            hint="work with the agent some more, or loosen --since/--profile",
        )
    # Both sides must be non-empty: move the session closest to the border.
    for empty, full in (("valid", "train"), ("train", "valid")):
        if not sides[empty]:
            moved = min(sides[full], key=lambda s: len(s.examples))
            sides[full].remove(moved)
            sides[empty].append(moved)
    train = [row for s in sides["train"] for row in s.examples]
    valid = [row for s in sides["valid"] for row in s.examples]
    report.train, report.valid = len(train), len(valid)
    report.examples = len(train) + len(valid)
    report.train_sessions = [s.session_id for s in sides["train"]]
    report.valid_sessions = [s.session_id for s in sides["valid"]]
    return train, valid, report


def read_sessions(folder: str | os.PathLike[str]) -> list[tuple[str, dict[str, Any] | Exception]]:
    """Every ``*.json`` of a sessions folder, read through `read_session_file` (errors kept, not raised)."""
    root = Path(folder)
    if not root.is_dir():
        raise TrainingError("no sessions here (the agent writes them when it runs in this project)", where=str(root))
    out: list[tuple[str, dict[str, Any] | Exception]] = []
    for path in sorted(root.glob("*.json")):
        try:
            out.append((path.name, read_session_file(path)))
        except CorruptFileError as exc:
            out.append((path.name, exc))
    return out


def write_dataset(out_dir: str | os.PathLike[str], train: list[dict[str, Any]], valid: list[dict[str, Any]],
                  report: DataReport) -> Path:
    """Write ``train.jsonl``, ``valid.jsonl`` and ``sessions-report.json`` into ``out_dir``."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("valid", valid)):
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        write_atomic(root / f"{name}.jsonl", text)
    (root / "sessions-report.json").write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return root


def dataset_from_sessions(folder: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                          tools: list[dict[str, Any]], *, since: datetime | None = None,
                          profile: str | None = None,
                          valid_fraction: float = DEFAULT_VALID_FRACTION) -> DataReport:
    """Read a sessions folder, build the dataset and write it (`build_dataset` + `write_dataset`)."""
    train, valid, report = build_dataset(read_sessions(folder), tools, since=since, profile=profile,
                                         valid_fraction=valid_fraction)
    write_dataset(out_dir, train, valid, report)
    return report

