"""Eval suites: prompts with the tool call and keywords a good answer has, and their scoring.

A suite is a JSON file (shipped ones live in ``punie/data/eval/``)::

    {"name": "tool-calling", "max_tokens": 96, "system": "...",
     "tools": [{"type": "function", "function": {"name": "read_file", ...}}, ...],
     "cases": [{"id": "read-readme", "prompt": "Show me README.md",
                "expect_tool": "read_file", "expect_args": ["README.md"]}, ...]}

Each case scores 0..1: the mean of its parts, which are (when the case asks
for them) the right tool name, the fraction of argument keywords found in the
call's arguments, and the fraction of answer keywords found in the text. A
case with ``expect_tool: null`` and ``no_tool: true`` wants a plain answer.
A two-step case has ``then``: when the first answer calls the expected tool,
the call and a scripted result (``then.result``) go back to the model, whose
second answer is scored against ``then``; the case scores the mean of both
steps (a missed first step scores the second 0). A case passes when it scores
1 (every part right). Each case has a category (default: its tool, or
``no-tool``), for per-category reports.

Only real tool calls count: the OpenAI ``tool_calls`` of the server's answer,
which is all the agent (pydantic-ai over OpenAI tool calling) ever receives.
mlx_lm.server makes them from the model's output with the tool parser it
infers from the chat template. A ``<tool_call>`` the model merely wrote in its
text (no parser, unterminated, invalid JSON) scores nothing; it is kept in the
result as ``text_call`` to tell "wrong format" from "no call at all".
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from punie.errors import CorruptFileError, TrainingError, UsageError, did_you_mean
from punie.jsonio import read_text_file, validation_text
from punie.net import SERVED_MODEL_NAME

SUITE_PACKAGE = "punie.data"
SUITE_DIR = "eval"
DEFAULT_SUITE = "tool-calling"
#: A larger suite file is refused.
MAX_SUITE_BYTES = 64 * 1024 * 1024
_TOOL_CALL_TAG = re.compile(r"<tool_call>\s*(\{.*?)\s*(?:</tool_call>|\Z)", re.DOTALL)


#: A case passes at this score (every part of it right).
PASS_SCORE = 1.0


class FollowUp(BaseModel):
    """The second step of a two-step case: the first call's scripted result and the call expected next."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    result: str = Field(description="What the first tool call returns to the model.")
    expect_tool: str
    expect_args: list[str] = Field(default_factory=list)


class EvalCase(BaseModel):
    """One prompt and what a good answer contains."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    category: str = Field("", description="Group of the case in reports (default: expect_tool, or no-tool).")
    prompt: str
    tools: list[str] | None = Field(None, description="Names of the suite's tools offered (default: all).")
    expect_tool: str | None = None
    expect_args: list[str] = Field(default_factory=list, description="Keywords expected in the arguments.")
    expect_keywords: list[str] = Field(default_factory=list, description="Keywords expected in the answer text.")
    no_tool: bool = Field(False, description="The answer must not call a tool.")
    then: FollowUp | None = Field(None, description="A second step (two-step cases): needs expect_tool.")

    @model_validator(mode="before")
    @classmethod
    def _default_category(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("category"):
            data = dict(data)
            data["category"] = "no-tool" if data.get("no_tool") else (data.get("expect_tool") or "answer")
        return data

    @model_validator(mode="after")
    def _something_to_score(self) -> EvalCase:
        if not (self.expect_tool or self.expect_keywords or self.no_tool):
            raise ValueError("a case needs expect_tool, expect_keywords or no_tool")
        if self.then is not None and not self.expect_tool:
            raise ValueError("a two-step case ('then') needs expect_tool for its first step")
        return self


class Suite(BaseModel):
    """A named list of cases with the tools they may use."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str | None = None
    system: str | None = None
    max_tokens: int = Field(96, ge=1)
    tools: list[dict[str, Any]] = Field(default_factory=list)
    cases: list[EvalCase] = Field(min_length=1)

    def tool_names(self) -> list[str]:
        return [t.get("function", {}).get("name", "") for t in self.tools]

    @model_validator(mode="after")
    def _known_tools(self) -> Suite:
        names = set(self.tool_names())
        for case in self.cases:
            for name in case.tools or []:
                if name not in names:
                    raise ValueError(f"case {case.id!r}: tool {name!r} is not defined in the suite's tools")
        ids = [c.id for c in self.cases]
        if len(set(ids)) != len(ids):
            raise ValueError(f"case ids repeat: {sorted({i for i in ids if ids.count(i) > 1})}")
        return self

    def tools_for(self, case: EvalCase) -> list[dict[str, Any]]:
        if case.tools is None:
            return list(self.tools)
        return [t for t in self.tools if t.get("function", {}).get("name") in case.tools]


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    arguments: str


class CaseResult(BaseModel):
    """What the model answered to one case and its score."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    category: str = ""
    score: float
    passed: bool = Field(False, description=f"score >= {PASS_SCORE}")
    tool_call: ToolCall | None = Field(None, description="The first real tool call (OpenAI tool_calls).")
    second_call: ToolCall | None = Field(None, description="Two-step cases: the call of the second answer.")
    text_call: ToolCall | None = Field(
        None, description="A <tool_call> written in the text that the server did not parse (scores nothing)."
    )
    text: str = ""
    error: str | None = None


def shipped_suites() -> list[str]:
    """Names of the suites that ship with Punie."""
    folder = resources.files(SUITE_PACKAGE).joinpath(SUITE_DIR)
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_suite(spec: str | Path | None = None) -> Suite:
    """A suite by shipped name (default ``tool-calling``) or JSON file path."""
    spec = DEFAULT_SUITE if spec is None else spec
    path = Path(spec).expanduser()
    if path.suffix == ".json" or path.exists():
        try:
            text = read_text_file(path, max_bytes=MAX_SUITE_BYTES)
        except FileNotFoundError as exc:
            raise UsageError(f"cannot read eval suite: {exc.strerror or exc}", where=str(path)) from exc
        except CorruptFileError as exc:
            raise UsageError(f"cannot read eval suite: {exc.message}", where=str(path)) from None
        where = str(path)
    else:
        names = shipped_suites()
        if str(spec) not in names:
            raise UsageError(
                f"no eval suite '{spec}' (shipped: {', '.join(names)})", hint=did_you_mean(str(spec), names)
            )
        text = resources.files(SUITE_PACKAGE).joinpath(SUITE_DIR, f"{spec}.json").read_text(encoding="utf-8")
        where = f"punie/data/{SUITE_DIR}/{spec}.json"
    try:
        return Suite.model_validate_json(text)
    except ValidationError as exc:
        raise TrainingError(validation_text(exc), where=where) from exc


def request_body(suite: Suite, case: EvalCase, first: ToolCall | None = None) -> dict[str, Any]:
    """The /v1/chat/completions body of a case (model "default_model": the served adapter).

    With ``first`` (a two-step case's first call), the body of the second step: the
    call and the case's scripted result follow the prompt.
    """
    messages: list[dict[str, Any]] = []
    if suite.system:
        messages.append({"role": "system", "content": suite.system})
    messages.append({"role": "user", "content": case.prompt})
    if first is not None and case.then is not None:
        messages.append({"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": first.name, "arguments": first.arguments}}]})
        messages.append({"role": "tool", "tool_call_id": "call_1", "name": first.name, "content": case.then.result})
    body: dict[str, Any] = {
        "model": SERVED_MODEL_NAME,
        "messages": messages,
        "max_tokens": suite.max_tokens,
        "temperature": 0.0,
    }
    tools = suite.tools_for(case)
    if tools:
        body["tools"] = tools
    return body


def extract_tool_call(message: dict[str, Any]) -> ToolCall | None:
    """The first tool call of an assistant message, as the server parsed it (``tool_calls``)."""
    for call in message.get("tool_calls") or []:
        fn = call.get("function", call) if isinstance(call, dict) else {}
        if isinstance(fn, dict) and fn.get("name"):
            args = fn.get("arguments", "")
            return ToolCall(name=str(fn["name"]), arguments=args if isinstance(args, str) else json.dumps(args))
    return None


def extract_text_tool_call(message: dict[str, Any]) -> ToolCall | None:
    """A ``<tool_call>{"name": ..., "arguments": ...}`` written in the text of a message.

    The server leaves it in the text when it has no tool parser for the model or
    cannot parse it (unterminated, invalid JSON): the agent then sees no call.
    """
    text = message.get("content") or ""
    for found in _TOOL_CALL_TAG.finditer(text):
        try:
            data = json.loads(found.group(1))
        except ValueError:
            name = re.search(r'"name"\s*:\s*"([^"]+)"', found.group(1))
            if name:
                return ToolCall(name=name.group(1), arguments=found.group(1))
            continue
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            args = data.get("arguments", {})
            return ToolCall(name=data["name"], arguments=args if isinstance(args, str) else json.dumps(args))
    return None


def _fraction(keywords: list[str], text: str) -> float:
    low = text.lower()
    return sum(1 for k in keywords if k.lower() in low) / len(keywords)


def _call_parts(expect_tool: str, expect_args: list[str], call: ToolCall | None) -> list[float]:
    parts = [1.0 if call is not None and call.name == expect_tool else 0.0]
    if expect_args:
        parts.append(_fraction(expect_args, call.arguments) if call is not None else 0.0)
    return parts


def wants_second_step(case: EvalCase, message: dict[str, Any]) -> ToolCall | None:
    """The first call to send back for a two-step case's second step (None: no second step to ask)."""
    call = extract_tool_call(message)
    if case.then is None or case.expect_tool is None or call is None or call.name != case.expect_tool:
        return None
    return call


def score_case(case: EvalCase, message: dict[str, Any], second: dict[str, Any] | None = None) -> CaseResult:
    """Score an assistant message (OpenAI format) against the case; ``second`` is a two-step case's second answer."""
    call = extract_tool_call(message)
    text = message.get("content") or ""
    parts: list[float] = []
    if case.expect_tool:
        parts += _call_parts(case.expect_tool, case.expect_args, call)
    if case.no_tool:
        parts.append(0.0 if call is not None else 1.0)
    if case.expect_keywords:
        parts.append(_fraction(case.expect_keywords, text))
    score = sum(parts) / len(parts)
    second_call = None
    if case.then is not None:
        second_call = extract_tool_call(second) if second is not None else None
        then = _call_parts(case.then.expect_tool, case.then.expect_args, second_call)
        score = (score + (sum(then) / len(then) if second is not None else 0.0)) / 2
    text_call = extract_text_tool_call(message) if call is None else None
    score = round(score, 4)
    return CaseResult(id=case.id, category=case.category, score=score, passed=score >= PASS_SCORE, tool_call=call,
                      second_call=second_call, text_call=text_call, text=text[:300])


def run_suite_cases_count(spec: str | Path | None = None) -> int:
    """Number of cases of a suite (default: the shipped one)."""
    return len(load_suite(spec).cases)
