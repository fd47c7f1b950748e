"""The shipped tool-calling suite: big enough to decide, every tool and kind of case, and two-step scoring."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from punie.agent.tools import TOOL_FUNCTIONS
from punie.training.evaluate import run_suite
from punie.training.suite import EvalCase, FollowUp, Suite, load_suite, request_body, score_case
from tests.support.fake_openai import serve, text_reply, tool_call_reply

TWO = EvalCase(id="t", prompt="Look in docs and read the guide.", expect_tool="list_files", expect_args=["docs"],
               then=FollowUp(result="docs/guide.md\n", expect_tool="read_file", expect_args=["docs/guide.md"]))


def _call(name: str, args: dict[str, object]) -> dict[str, object]:
    return {"content": "", "tool_calls": [{"function": {"name": name, "arguments": json.dumps(args)}}]}


def test_shipped_suite_is_big_enough_and_covers_every_tool_and_kind() -> None:
    suite = load_suite()
    assert len(suite.cases) >= 60
    tools = Counter(c.expect_tool for c in suite.cases if c.expect_tool)
    tools.update(c.then.expect_tool for c in suite.cases if c.then)
    assert set(tools) == set(TOOL_FUNCTIONS)  # every tool the agent has
    assert min(tools.values()) >= 6
    categories = Counter(c.category for c in suite.cases)
    assert {"no-tool", "nested-path", "quoted-args", "two-step"} <= set(categories)
    assert all(n >= 6 for n in categories.values()), categories
    assert all(c.no_tool and not c.expect_tool for c in suite.cases if c.category == "no-tool")
    assert all(c.then is not None for c in suite.cases if c.category == "two-step")
    assert all("/" in a for c in suite.cases if c.category == "nested-path" for a in c.expect_args[-1:])
    assert all(any(q in c.prompt for q in "\"'") for c in suite.cases if c.category == "quoted-args")
    assert len({c.prompt.lower() for c in suite.cases}) == len(suite.cases)


def test_category_defaults_to_the_tool_or_no_tool() -> None:
    assert EvalCase(id="a", prompt="p", expect_tool="search").category == "search"
    assert EvalCase(id="b", prompt="p", no_tool=True).category == "no-tool"
    assert EvalCase(id="c", prompt="p", expect_tool="search", category="mine").category == "mine"
    with pytest.raises(ValueError, match="needs expect_tool for its first step"):
        EvalCase(id="d", prompt="p", no_tool=True, then=TWO.then)


def test_a_result_is_id_category_score_and_passed() -> None:
    right = score_case(EvalCase(id="r", prompt="p", expect_tool="read_file", expect_args=["a.txt"]),
                       _call("read_file", {"path": "a.txt"}))
    assert (right.id, right.category, right.score, right.passed) == ("r", "read_file", 1.0, True)
    half = score_case(EvalCase(id="r", prompt="p", expect_tool="read_file", expect_args=["a.txt"]),
                      _call("read_file", {"path": "b.txt"}))
    assert half.score == 0.5 and not half.passed
    plain = EvalCase(id="n", prompt="Hi", no_tool=True)
    assert score_case(plain, {"content": "Hello!"}).passed
    assert not score_case(plain, _call("list_files", {})).passed


def test_two_step_scoring() -> None:
    first = _call("list_files", {"path": "docs"})
    full = score_case(TWO, first, _call("read_file", {"path": "docs/guide.md"}))
    assert full.score == 1.0 and full.passed and full.second_call is not None
    assert score_case(TWO, first, _call("read_file", {"path": "guide"})).score == 0.75
    assert score_case(TWO, first, {"content": "It has guide.md."}).score == 0.5  # stopped after the listing
    assert score_case(TWO, first, None).score == 0.5
    assert score_case(TWO, {"content": "no"}, None).score == 0.0


def test_second_step_body_carries_the_call_and_its_scripted_result() -> None:
    suite = Suite(name="s", system="sys", tools=[], cases=[TWO])
    first = score_case(TWO, _call("list_files", {"path": "docs"})).tool_call
    assert first is not None
    messages = request_body(suite, TWO, first)["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assert messages[2]["tool_calls"][0]["function"] == {"name": "list_files", "arguments": '{"path": "docs"}'}
    assert messages[3]["content"] == "docs/guide.md\n" and messages[3]["tool_call_id"] == "call_1"


def test_run_suite_asks_the_second_step_only_after_the_expected_first_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUNIE_EVAL_CONCURRENCY", "1")  # the scripted replies come in the order they are asked
    tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
             for n in ("list_files", "read_file")]
    other = TWO.model_copy(update={"id": "u"})
    suite = Suite(name="s", tools=tools, cases=[TWO, other])
    script = [tool_call_reply(("list_files", {"path": "docs"})), tool_call_reply(("read_file", {"path": "docs/guide.md"})),
              text_reply("I would rather not.")]
    with serve(script) as fake:
        score, results = run_suite(fake.url, suite, label="x")
    assert [r.score for r in results] == [1.0, 0.0] and score == 0.5
    assert len(fake.requests) == 3  # no second step for the case whose first step missed
    second = fake.requests[1]["messages"]
    assert second[-1]["role"] == "tool" and second[-1]["content"] == "docs/guide.md\n"
