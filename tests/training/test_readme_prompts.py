"""The README's two prompts, each in a fresh session, with the real builtin model and the shipped
tool-calling adapter (profile `tool-calling`, adapters/tool-calling-v3), greedy: the right tool called with the
path copied from the prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from punie.config import load_profile
from punie.training.generate import README_PROMPTS
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "punie.toml"


@pytest.mark.slow
@pytest.mark.mlx
@pytest.mark.timeout(1200)
def test_the_readme_prompts_call_the_right_tool_with_the_right_path(tmp_path: Path) -> None:
    from punie.agent.runner import build_agent, run_turn_sync
    from punie.agent.tools import ToolCallRecord, ToolHooks
    from punie.errors import AgentError
    from punie.training.evaluate import serve
    from punie.weights.builtin import ensure_builtin

    ensure_builtin("smollm2-135m-instruct")
    (tmp_path / "adapters" / "tool-calling-v3").mkdir(parents=True)
    (tmp_path / "adapters" / "README.md").write_text("adapters\n")
    (tmp_path / "punie.toml").write_text('default_profile = "demo"\n\n[profiles.demo]\nmodel = "builtin:x"\n')
    resolved = load_profile("tool-calling", config=CONFIG, overrides=(f"server.port={free_port()}",))
    options = resolved.profile.agent.model_copy(update={"max_turns": 3, "max_tokens": 128, "temperature": 0.0})
    (tmp_path / "logs").mkdir()
    expected = {README_PROMPTS[0]: ("list_files", "adapters"), README_PROMPTS[1]: ("read_file", "punie.toml")}
    seen = {}
    with serve(resolved, log_dir=tmp_path / "logs") as (base_url, adapter):
        assert adapter is not None
        for prompt in README_PROMPTS:  # a fresh agent and no history: a fresh session each
            agent = build_agent(options, base_url, base_dir=tmp_path)
            records: list[ToolCallRecord] = []

            async def ended(record: ToolCallRecord, records: list[ToolCallRecord] = records) -> None:
                records.append(record)

            try:  # what is judged is the call; the tiny model's answer after it may run out of tokens
                answer = run_turn_sync(agent, prompt, hooks=ToolHooks(on_end=ended)).answer
            except AgentError as exc:
                answer = exc.render()
            seen[prompt] = ([(c.name, c.args, c.status) for c in records], answer)
    for prompt, (tool, path) in expected.items():
        calls, answer = seen[prompt]
        assert calls, (prompt, answer)
        name, args, status = calls[0]
        assert (name, status) == (tool, "ok"), seen
        assert isinstance(args, dict) and str(args.get("path")).strip("./") == path, seen
