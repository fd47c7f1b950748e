"""`punie data from-sessions` / `punie data stats`: sessions written by the real agent become training data."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from acp import spawn_agent_process, text_block
from acp.schema import AllowedOutcome, RequestPermissionResponse
from click.testing import CliRunner

from punie.cli import main
from punie.config.models import AgentOptions
from punie.errors import CorruptFileError, TrainingError
from punie.training.dataset import validate_dataset
from punie.training.secrets import scrub_text
from punie.training.sessions_data import (
    build_dataset,
    parse_since,
    read_session_file,
    result_status,
    session_side,
)
from tests.support.fake_openai import serve, text_reply, tool_call_reply

GITHUB_TOKEN = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
ENV_SECRET = "s3cr3t-value-9f8e7d"
DB_PASSWORD = "hunter2pass"


class Client:
    """The IDE side: allows or rejects every permission request, as told."""

    def __init__(self) -> None:
        self.decisions: list[str] = []

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        pass

    async def request_permission(self, session_id: str, tool_call: Any, options: list[Any],
                                 **kwargs: Any) -> RequestPermissionResponse:
        return RequestPermissionResponse(outcome=AllowedOutcome(outcome="selected", option_id=self.decisions.pop(0)))


async def _sessions(url: str, cwd: Path, sessions: list[list[str]], client: Client) -> list[str]:
    """Run the real agent over ACP: one session per list of prompts; return the session ids."""
    options = AgentOptions(permissions={"write_file": "ask", "run_command": "allow"})
    ids = []
    async with spawn_agent_process(lambda _agent: client, sys.executable, "-m", "punie", "agent", "--base-url", url,
                                   "--options", options.model_dump_json(), env=dict(os.environ), cwd=cwd) as (conn, _):
        await conn.initialize(protocol_version=1)
        for prompts in sessions:
            session = await conn.new_session(cwd=str(cwd), mcp_servers=[])
            ids.append(session.session_id)
            for prompt in prompts:
                await conn.prompt(session_id=session.session_id, prompt=[text_block(prompt)])
    return ids


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A project whose .punie/sessions/ the real agent wrote, covering every kind of turn."""
    project = tmp_path_factory.mktemp("project")
    (project / ".env").write_text(f"API_SECRET={ENV_SECRET}\nPLAIN=abcdef\n")
    (project / "src").mkdir()
    (project / "src" / "app.py").write_text("print('hi')\n")
    (project / "db.txt").write_text(f"url = postgres://admin:{DB_PASSWORD}@db.local/app\n")
    script = [
        # session 1: a read of .env (allowed, scrubbed), a list (allowed), a refused write (dropped)
        tool_call_reply(("read_file", {"path": ".env"})), text_reply("It sets API_SECRET and PLAIN."),
        tool_call_reply(("list_files", {"path": "src"})), text_reply("src has app.py."),
        tool_call_reply(("write_file", {"path": "out.txt", "content": "x"})), text_reply("I could not write."),
        # session 2: a failing command (dropped), a plain answer with a token in the prompt, a db URL read
        tool_call_reply(("run_command", {"command": "exit 3"})), text_reply("The command failed."),
        text_reply("Do not paste tokens here."),
        tool_call_reply(("read_file", {"path": "db.txt"})), text_reply("It points at db.local."),
        # session 3: the same list turn as session 1 (a duplicate) and a missing file (failed)
        tool_call_reply(("list_files", {"path": "src"})), text_reply("src has app.py."),
        tool_call_reply(("read_file", {"path": "nope.txt"})), text_reply("There is no nope.txt."),
    ]
    client = Client()
    client.decisions = ["reject"]
    with serve(script) as fake:
        ids = asyncio.run(_sessions(fake.url, project, [
            ["What is in .env?", "What is in src?", "Write out.txt"],
            ["Run exit 3", f"My token is {GITHUB_TOKEN}, is that ok?", "Which database does db.txt use?"],
            ["What is in src?", "Read nope.txt"],
        ], client))
    assert len(list((project / ".punie" / "sessions").glob("*.json"))) == 3
    return project, ids


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _calls(rows: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(c["function"]["name"], c["function"]["arguments"]) for r in rows for m in r["messages"]
            for c in m.get("tool_calls") or []]


@pytest.mark.slow
def test_sessions_become_a_dataset_without_secrets_or_refused_calls(recorded: tuple[Path, list[str]],
                                                                     tmp_path: Path) -> None:
    project, ids = recorded
    out = tmp_path / "data"
    result = CliRunner().invoke(main, ["data", "from-sessions", "--project", str(project), "--out", str(out),
                                       "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["sessions_read"] == 3 and report["turns"] == 8
    assert report["dropped_turns"] == {"denied": 1, "failed": 2}
    assert report["duplicates"] == 1
    assert report["scrubbed"] == {"env-file": 2, "github-token": 1, "url-password": 1}
    assert report["examples"] == 4 == report["train"] + report["valid"]
    assert set(report["train_sessions"]).isdisjoint(report["valid_sessions"])  # split by session
    # the session whose only kept turn is a duplicate may give nothing
    assert len(ids) - 1 <= len(set(report["train_sessions"]) | set(report["valid_sessions"])) <= len(ids)
    assert set(report["train_sessions"]) | set(report["valid_sessions"]) <= set(ids)
    info = validate_dataset(out)  # what `punie train` checks
    assert info.splits["train"].format == "chat"
    rows = _rows(out / "train.jsonl") + _rows(out / "valid.jsonl")
    text = (out / "train.jsonl").read_text() + (out / "valid.jsonl").read_text()
    for secret in (GITHUB_TOKEN, ENV_SECRET, DB_PASSWORD, "abcdef"):
        assert secret not in text
    assert "[REDACTED:github-token]" in text and "[REDACTED:env-file]" in text
    assert sorted(_calls(rows), key=str) == sorted([
        ("read_file", {"path": ".env"}), ("list_files", {"path": "src"}),  # as the model sent them
        ("read_file", {"path": "db.txt"})], key=str)
    # refused, failed and invalid calls are absent, and so are their prompts
    said = json.dumps([r["messages"] for r in rows])
    assert "write_file" not in said and "exit 3" not in said and "nope.txt" not in said
    by_prompt = {r["messages"][1]["content"]: r for r in rows}
    env_row = by_prompt["What is in .env?"]
    assert [m["role"] for m in env_row["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert env_row["messages"][-1]["content"] == "It sets API_SECRET and PLAIN."
    assert [t["function"]["name"] for t in env_row["tools"]] == ["read_file", "write_file", "list_files", "search",
                                                                 "run_command"]
    report_file = json.loads((out / "sessions-report.json").read_text())
    assert report_file["scrubbed"] == report["scrubbed"]


@pytest.mark.slow
def test_filters_since_and_profile(recorded: tuple[Path, list[str]], tmp_path: Path) -> None:
    project, _ = recorded
    late = CliRunner().invoke(main, ["data", "from-sessions", "--project", str(project), "--out",
                                     str(tmp_path / "a"), "--since", "2999-01-01"])
    assert late.exit_code == 1 and "0 session(s) with usable turns" in late.stderr and "3 filtered out" in late.stderr
    other = CliRunner().invoke(main, ["data", "from-sessions", "--project", str(project), "--out",
                                      str(tmp_path / "b"), "--profile", "nosuch"])
    assert other.exit_code == 1 and "3 filtered out" in other.stderr
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
@pytest.mark.mlx
def test_punie_train_accepts_the_sessions_dataset(recorded: tuple[Path, list[str]], tmp_path: Path,
                                                  tiny_model: Path) -> None:
    project, _ = recorded
    out = tmp_path / "data"
    assert CliRunner().invoke(main, ["data", "from-sessions", "--project", str(project), "--out", str(out)]
                              ).exit_code == 0
    stats = CliRunner().invoke(main, ["data", "stats", str(out), "--model", str(tiny_model), "--format", "json"])
    assert stats.exit_code == 0, stats.output
    numbers = json.loads(stats.stdout)
    assert numbers["tokens_by"] == "tokenizer" and numbers["shared"] == 0
    tools = Counter()
    for split in numbers["splits"].values():
        tools.update(split["tools"])
        assert split["duplicates"] == 0 and split["tokens"]["min"] > 50  # the tool definitions alone are long
    assert tools == {"read_file": 2, "list_files": 1, "(no tool)": 1}
    config = tmp_path / "punie.toml"
    config.write_text(f'[profiles.demo]\nmodel = "{tiny_model}"\nadapter = "from-sessions"\n')
    result = CliRunner().invoke(main, ["--config", str(config), "train", "demo", "--data", str(out), "--iters", "2",
                                       "--rank", "2", "--batch-size", "1", "--max-seq-length", "2048"])
    assert result.exit_code == 0, result.output + result.stderr
    assert (tmp_path / "adapters" / "from-sessions" / "adapters.safetensors").is_file()


def test_result_status_follows_the_tools_formats() -> None:
    assert result_status("read_file", "alpha\n") == "ok"
    assert result_status("write_file", "permission denied for write_file: refused") == "denied"
    assert result_status("read_file", "error: no such file: x") == "failed"
    assert result_status("run_command", "exit code 0\nok") == "ok"
    assert result_status("run_command", "exit code 2\nboom") == "failed"
    assert result_status("read_file", "exit code 2 is what the doc says") == "ok"


@pytest.mark.parametrize(("text", "kind"), [
    ("key AKIAIOSFODNN7EXAMPLE here", "aws-access-key"),
    ("OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrstuvwx", "api-key"),
    ("Authorization: Bearer abcdefghijklmnop1234", "bearer-token"),
    ('{"password": "correct horse battery"}', "env-secret"),
    ("db_password: tr0ub4dor", "env-secret"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n-----END OPENSSH PRIVATE KEY-----", "private-key"),
    ("xoxb-123456789012-abcdefghij", "slack-token"),
    ("https://bob:pa55w0rd@example.com/x", "url-password"),
    ("tok eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "jwt"),
])
def test_each_kind_of_secret_is_replaced(text: str, kind: str) -> None:
    found: Counter[str] = Counter()
    out = scrub_text(text, found)
    assert found[kind] >= 1 and f"[REDACTED:{kind}]" in out
    assert scrub_text(out, Counter()) == out  # scrubbing twice changes nothing more


def test_ordinary_code_is_left_alone() -> None:
    found: Counter[str] = Counter()
    text = "def read(path):\n    return open(path).read()  # see https://example.com/docs\nmax_tokens = 96\n"
    assert scrub_text(text, found) == text and not found


def test_unreadable_and_odd_session_files_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "fifo.json").symlink_to("/dev/null")
    with pytest.raises(CorruptFileError, match="not a regular file"):
        read_session_file(tmp_path / "fifo.json")
    (tmp_path / "deep.json").write_text('{"session_id": "x", "messages": ' + "[" * 200 + "]" * 200 + "}")
    with pytest.raises(CorruptFileError, match="nested"):
        read_session_file(tmp_path / "deep.json")
    (tmp_path / "other.json").write_text('{"name": 1}')
    with pytest.raises(CorruptFileError, match="not a Punie session"):
        read_session_file(tmp_path / "other.json")


def _doc(session_id: str, prompt: str) -> dict[str, Any]:
    return {"session_id": session_id, "updated_at": "2026-12-01T00:00:00+00:00", "messages": [
        {"kind": "request", "parts": [{"part_kind": "user-prompt", "content": prompt}]},
        {"kind": "response", "parts": [{"part_kind": "text", "content": "answer " + prompt}]}]}


def test_split_is_by_session_and_both_sides_are_filled() -> None:
    docs = [(f"s{i}", _doc(f"s{i}", f"q{i}")) for i in range(12)]
    train, valid, report = build_dataset(docs, [])
    assert train and valid and report.examples == 12
    assert {session_side(s, 0.2) for s in report.valid_sessions} <= {"valid"} or len(report.valid_sessions) == 1
    with pytest.raises(TrainingError, match="at least two"):
        build_dataset(docs[:1], [])
    _, _, report = build_dataset(docs[:2] + [("bad.json", CorruptFileError("x", where="bad.json"))], [])
    assert report.sessions_unreadable == {"bad.json": "bad.json: x"} and report.train == report.valid == 1


def test_since_and_profile_keep_the_matching_sessions() -> None:
    docs = []
    for i in range(6):
        doc = _doc(f"s{i}", f"q{i}") | {"profile": "a" if i % 2 else "b", "updated_at": f"2026-12-0{i + 1}T10:00:00Z"}
        docs.append((f"s{i}", doc))
    train, valid, report = build_dataset(docs, [], profile="a")
    assert report.sessions_filtered == 3 and sorted(report.train_sessions + report.valid_sessions) == ["s1", "s3", "s5"]
    _, _, report = build_dataset(docs, [], since=parse_since("2026-12-04"))
    assert sorted(report.train_sessions + report.valid_sessions) == ["s3", "s4", "s5"]
    with pytest.raises(TrainingError, match="not an ISO date"):
        parse_since("last week")
