"""`punie eval`: scoring, the suite runner over HTTP, and train -> eval on the tiny model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from punie.adapters.registry import read_meta
from punie.cli import main
from punie.errors import UsageError
from punie.training.suite import EvalCase, Suite, load_suite, run_suite_cases_count, score_case
from tests.support.fake_openai import serve, text_reply, tool_call_reply

READ = EvalCase(id="r", prompt="Show me LICENSE.", expect_tool="read_file", expect_args=["LICENSE"])


def test_score_tool_call_from_the_server() -> None:
    message = {"content": None, "tool_calls": [
        {"type": "function", "function": {"name": "read_file", "arguments": '{"path": "LICENSE"}'}}]}
    assert score_case(READ, message).score == 1.0
    wrong_args = {"tool_calls": [{"function": {"name": "read_file", "arguments": '{"path": "README"}'}}]}
    assert score_case(READ, wrong_args).score == 0.5
    wrong_tool = {"tool_calls": [{"function": {"name": "list_files", "arguments": '{"path": "LICENSE"}'}}]}
    assert score_case(READ, wrong_tool).score == 0.5
    assert score_case(READ, {"content": "I cannot do that."}).score == 0.0


def test_a_tool_call_written_in_text_scores_nothing_but_is_recorded() -> None:
    """The agent only receives the server's parsed tool_calls: a <tool_call> left in the text
    (no tool parser for the model, unterminated, bad JSON) is not a call for it, nor here."""
    text = 'Sure.\n<tool_call>\n{"name": "read_file", "arguments": {"path": "LICENSE"}}\n</tool_call>'
    result = score_case(READ, {"content": text})
    assert result.score == 0.0 and result.tool_call is None
    assert result.text_call is not None and result.text_call.name == "read_file"
    assert json.loads(result.text_call.arguments) == {"path": "LICENSE"}
    cut = '<tool_call>\n{"name": "read_file", "arguments": {"path": "LIC'  # max_tokens ran out
    cut_result = score_case(READ, {"content": cut})
    assert cut_result.score == 0.0 and cut_result.text_call is not None
    parsed = {"content": "", "tool_calls": [{"function": {"name": "read_file", "arguments": '{"path": "LICENSE"}'}}]}
    assert score_case(READ, parsed).text_call is None


def test_score_keywords_and_no_tool() -> None:
    case = EvalCase(id="k", prompt="2+2?", expect_keywords=["4", "four"], no_tool=True)
    assert score_case(case, {"content": "It is 4."}).score == 0.75
    called = {"content": "4 four", "tool_calls": [{"function": {"name": "run_command", "arguments": "{}"}}]}
    assert score_case(case, called).score == 0.5
    with pytest.raises(ValueError, match="needs expect_tool"):
        EvalCase(id="x", prompt="p")


def test_shipped_suite_loads_and_unknown_suite_is_named() -> None:
    suite = load_suite()
    assert suite.name == "tool-calling" and len(suite.cases) >= 8
    assert set(suite.tool_names()) == {"read_file", "list_files", "search", "write_file", "run_command"}
    with pytest.raises(UsageError, match="did you mean 'tool-calling'"):
        load_suite("tool-caling")


def test_shipped_suite_asks_like_the_agent() -> None:
    """Same system prompt and the same tool schemas as the agent's requests (pydantic-ai)."""
    from punie.agent.runner import DEFAULT_INSTRUCTIONS
    from punie.agent.tools import make_tools
    from punie.config.models import ALL_TOOLS

    suite = load_suite()
    assert suite.system == DEFAULT_INSTRUCTIONS
    agent_tools = [{"name": t.tool_def.name, "description": t.tool_def.description,
                    "parameters": t.tool_def.parameters_json_schema} for t in make_tools(list(ALL_TOOLS))]
    assert [t["function"] for t in suite.tools] == agent_tools
    assert all(t["type"] == "function" for t in suite.tools)
    assert "<tool_call>" not in (suite.system or "")  # the chat template describes the format


@pytest.fixture(autouse=True)
def one_request_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests script their model's replies in the order the cases are asked: one at a time
    (asking concurrently is tested in test_eval_concurrency.py)."""
    monkeypatch.setenv("PUNIE_EVAL_CONCURRENCY", "1")


def _suite() -> Suite:
    tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
             for n in ("read_file", "list_files")]
    return Suite(name="mini", system="sys", max_tokens=16, tools=tools, cases=[
        READ, EvalCase(id="l", prompt="List src.", tools=["list_files"], expect_tool="list_files",
                       expect_args=["src"])])


def test_run_suite_over_http_sends_default_model_and_tools() -> None:
    from punie.training.evaluate import run_suite

    replies = [tool_call_reply(("read_file", {"path": "LICENSE"})), text_reply("no idea")]
    with serve(replies) as fake:
        score, results = run_suite(fake.url, _suite(), label="x")
    assert score == 0.5 and [r.score for r in results] == [1.0, 0.0]
    assert all(body["model"] == "default_model" and body["temperature"] == 0.0 for body in fake.requests)
    assert fake.requests[0]["messages"][0] == {"role": "system", "content": "sys"}
    assert [t["function"]["name"] for t in fake.requests[1]["tools"]] == ["list_files"]


@contextmanager
def _demo_vs_plain(tmp_path: Path, tiny_adapter: Path) -> Iterator[tuple[Path, Path]]:
    """A project whose `demo` (the tiny adapter, as adapters/tool) is served by a scripted model that
    answers both cases of suite.json right, and `plain` (no adapter) by one that does not; yields
    (punie.toml, suite.json) while both servers run."""
    shutil.copytree(tiny_adapter, tmp_path / "adapters" / "tool")
    suite_file = tmp_path / "suite.json"
    suite_file.write_text(_suite().model_dump_json())
    good = [tool_call_reply(("read_file", {"path": "LICENSE"})), tool_call_reply(("list_files", {"path": "src"}))]
    bad = [text_reply("hello"), tool_call_reply(("read_file", {"path": "src"}))]
    with serve(good) as tuned, serve(bad) as base:
        config = tmp_path / "punie.toml"
        config.write_text(
            f'[profiles.demo]\nmodel = "m"\nadapter = "tool"\nserver.url = "{tuned.url}"\n'
            f'[profiles.plain]\nmodel = "m"\nserver.url = "{base.url}"\n'
        )
        yield config, suite_file


@pytest.mark.slow
def test_eval_cli_compares_profiles_and_stores_score(tmp_path: Path, tiny_adapter: Path) -> None:
    with _demo_vs_plain(tmp_path, tiny_adapter) as (config, suite_file):
        result = CliRunner().invoke(main, ["--config", str(config), "eval", "demo", "--vs", "plain",
                                           "--suite", str(suite_file), "--record"])
    assert result.exit_code == 0, result.output + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["case", "category", "plain", "demo", "outcome"]
    assert lines[2].split() == ["r", "read_file", "0.00", "1.00", "win"]
    assert next(x for x in lines if x.startswith("total")).split() == ["total", "0.25", "1.00"]
    assert "(+0.75)" in result.stdout
    meta = read_meta(tmp_path / "adapters" / "tool")
    assert meta is not None and meta.score == 1.0
    assert meta.eval is not None and meta.eval["suites"]["mini"]["baseline_score"] == 0.25
    assert meta.eval["suites"]["mini"]["cases"]["l"] == {"score": 1.0, "baseline": 0.5}


@pytest.mark.slow
def test_eval_writes_results_under_dot_punie_and_leaves_the_adapter_alone(tmp_path: Path, tiny_adapter: Path) -> None:
    """Without --record, `punie eval` must not rewrite the (tracked) punie-adapter.json."""
    meta_file = tmp_path / "adapters" / "tool" / "punie-adapter.json"
    with _demo_vs_plain(tmp_path, tiny_adapter) as (config, suite_file):
        before = meta_file.read_bytes() if meta_file.exists() else None
        result = CliRunner().invoke(main, ["--config", str(config), "eval", "demo", "--vs", "plain",
                                           "--suite", str(suite_file), "--format", "json"])
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads(result.stdout)
    assert report["stored_in"] is None
    assert (meta_file.read_bytes() if meta_file.exists() else None) == before
    (saved,) = (tmp_path / ".punie" / "eval").glob("*.json")
    assert saved.name.startswith("demo-vs-plain-")
    assert report["saved_to"] == str(saved)
    assert json.loads(saved.read_text())["candidate"]["score"] == report["candidate"]["score"] == 1.0


def test_eval_without_adapter_or_vs_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "punie.toml"
    config.write_text('[profiles.demo]\nmodel = "m"\n')
    result = CliRunner().invoke(main, ["--config", str(config), "eval", "demo"])
    assert result.exit_code == 2 and "has no adapter" in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_train_then_eval_on_tiny_model(tmp_path: Path, tiny_model: Path) -> None:
    """The whole loop: `punie train` on the shipped dataset, then `punie eval` with real mlx_lm.server."""
    config = tmp_path / "punie.toml"
    config.write_text(f'[profiles.demo]\nmodel = "{tiny_model}"\nadapter = "latest"\nserver.ready_timeout = 60\n')
    runner = CliRunner()
    trained = runner.invoke(main, ["--config", str(config), "train", "demo", "--data", "tool-calling",
                                   "--iters", "3", "--rank", "4", "--max-seq-length", "96", "--val-batches", "1",
                                   "--learning-rate", "1e-3", "--batch-size", "2"])
    assert trained.exit_code == 0, trained.output + trained.stderr
    (adapter,) = (tmp_path / "adapters").iterdir()
    assert adapter.name.startswith("demo-")
    evaluated = runner.invoke(main, ["--config", str(config), "eval", "demo", "--record", "--format", "json"])
    assert evaluated.exit_code == 0, evaluated.output + evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["baseline"]["adapter"] is None and report["candidate"]["adapter"] == str(adapter)
    assert len(report["candidate"]["cases"]) == run_suite_cases_count()
    assert all(c["error"] is None for c in report["candidate"]["cases"] + report["baseline"]["cases"])
    meta = read_meta(adapter)
    assert meta is not None and meta.iters == 3
    assert meta.score == report["candidate"]["score"]
    assert meta.eval is not None and meta.eval["suites"]["tool-calling"]["baseline_score"] == report["baseline"]["score"]
    # The 2-layer random tiny model cannot learn tool calling in 3 steps: both sides may score 0;
    # what must hold is that each side was really served (no request failed) and the score was stored.
