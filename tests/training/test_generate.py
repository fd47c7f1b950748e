"""The tool-calling data generator: valid rows for every tool, reproducible, and never an eval prompt."""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from punie.cli import main
from punie.training.dataset import validate_dataset
from punie.training.generate import NEAR, README_PROMPTS, generate_rows, is_held_out, user_prompts
from punie.training.suite import load_suite


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w/. -]", "", text.lower()).split()).strip(" .")


def _held() -> list[str]:
    return [c.prompt for c in load_suite().cases] + list(README_PROMPTS)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_generated_prompt_is_an_eval_prompt_or_nearly(seed: int) -> None:
    suite = load_suite()
    rows = generate_rows(600, seed=seed, system=suite.system, tools=suite.tools, held_out=_held())
    held = {_norm(p): p for p in _held()}
    for prompt in set(user_prompts(rows)):
        mine = _norm(prompt)
        assert mine not in held, prompt
        closest = max(held, key=lambda h: difflib.SequenceMatcher(None, mine, h).ratio())
        assert difflib.SequenceMatcher(None, mine, closest).ratio() < NEAR, (prompt, held[closest])


@pytest.mark.slow
def test_without_held_out_prompts_the_templates_would_come_close() -> None:
    """The filter is not idle: unfiltered, the templates do produce prompts near the held-out ones."""
    rows = generate_rows(3000, seed=0)
    assert any(is_held_out(p, _held()) for p in user_prompts(rows))
    assert is_held_out("list the files in the adapters directory", README_PROMPTS)
    assert is_held_out("Read the file punie.toml and tell me the default profile.", README_PROMPTS)
    assert not is_held_out("Show me the src folder.", README_PROMPTS)


@pytest.mark.slow
def test_rows_teach_every_tool_and_plain_answers(tmp_path: Path) -> None:
    out = tmp_path / "data"
    result = CliRunner().invoke(main, ["data", "generate", "--out", str(out), "--train", "400", "--valid", "40"])
    assert result.exit_code == 0, result.output
    info = validate_dataset(out)
    assert info.splits["train"].rows >= 400 and info.splits["valid"].rows >= 30
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    taught: Counter[str] = Counter()
    for row in rows:
        last = row["messages"][-1]
        assert last["role"] == "assistant"  # each row ends with the message it teaches (--mask-prompt)
        taught[last["tool_calls"][0]["function"]["name"] if last.get("tool_calls") else "answer"] += 1
        assert row["messages"][0] == {"role": "system", "content": load_suite().system}
        for message in row["messages"]:
            for call in message.get("tool_calls") or []:
                args = call["function"]["arguments"]
                prompt = row["messages"][1]["content"]
                path = args.get("path")
                copied = call["function"]["name"] != "read_file" or len(row["messages"]) <= 3
                if copied and path not in (None, "."):
                    assert path in prompt or path.rsplit("/", 1)[0] in prompt  # copied, not invented
    assert set(taught) == {"read_file", "list_files", "search", "write_file", "run_command", "answer"}
    assert min(taught.values()) >= 12
    plain = [r for r in rows if len(r["messages"]) == 3 and not r["messages"][-1].get("tool_calls")]
    assert len(plain) >= 20  # questions answered without a tool
    nested = [r for r in rows if r["messages"][-1].get("tool_calls")
              and "/" in str(r["messages"][-1]["tool_calls"][0]["function"]["arguments"].get("path", ""))]
    assert len(nested) >= 40
    two_step = [r for r in rows if sum(bool(m.get("tool_calls")) for m in r["messages"]) == 2]
    assert two_step


def test_same_seed_same_data(tmp_path: Path) -> None:
    a = generate_rows(200, seed=7)
    assert a == generate_rows(200, seed=7) and a != generate_rows(200, seed=8)
