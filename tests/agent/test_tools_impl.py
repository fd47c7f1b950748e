"""The tool implementations and the permission policy, without a model."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import pytest

from punie.agent import limits
from punie.agent.local import (
    list_files_impl,
    read_file_impl,
    run_command_impl,
    search_impl,
    write_file_impl,
)
from punie.agent.permissions import (
    Answer,
    PermissionDenied,
    PermissionPolicy,
    PermissionRequest,
    terminal_asker,
)
from punie.agent.tools import ToolCallRecord
from punie.agent.workspace import ToolFailure, Workspace
from punie.config.models import Permissions


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "mod.py").write_text("def answer():\n    return 42\n")
    (tmp_path / "README.md").write_text("Punie\nAnswer here\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("answer in git\n")
    return Workspace(tmp_path)


def test_read_file_returns_text_and_reports_missing_and_directories(ws: Workspace) -> None:
    assert read_file_impl(ws, "README.md") == "Punie\nAnswer here\n"
    with pytest.raises(ToolFailure, match="no such file"):
        read_file_impl(ws, "nope.txt")
    with pytest.raises(ToolFailure, match="is a directory"):
        read_file_impl(ws, "src")


def test_read_file_caps_large_files(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_READ_CHARS", 10)
    (ws.root / "big.txt").write_text("x" * 100)
    text = read_file_impl(ws, "big.txt")
    assert text.startswith("x" * 10) and "truncated" in text and "100-byte" in text


def test_write_file_creates_parents_and_replaces(ws: Workspace) -> None:
    assert write_file_impl(ws, "new/dir/f.txt", "héllo") == "wrote 6 bytes to new/dir/f.txt"
    assert (ws.root / "new" / "dir" / "f.txt").read_text() == "héllo"
    write_file_impl(ws, "new/dir/f.txt", "second")
    assert (ws.root / "new" / "dir" / "f.txt").read_text() == "second"
    with pytest.raises(ToolFailure, match="directory"):
        write_file_impl(ws, "src", "x")


def test_list_files_lists_recursively_and_skips_vcs_dirs(ws: Workspace) -> None:
    listing = list_files_impl(ws).splitlines()
    assert listing == ["README.md", "src/", "src/pkg/", "src/pkg/mod.py"]
    assert list_files_impl(ws, "src", recursive=False).splitlines() == ["src/pkg/"]
    with pytest.raises(ToolFailure, match="not a directory"):
        list_files_impl(ws, "README.md")


def test_list_files_stops_at_the_cap(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_LIST_ENTRIES", 2)
    assert "stopped after 2 entries" in list_files_impl(ws)


def test_search_finds_lines_with_file_and_line_numbers(ws: Workspace) -> None:
    assert search_impl(ws, "return 42") == "src/pkg/mod.py:2: return 42"
    hits = search_impl(ws, "answer", ignore_case=True).splitlines()
    assert hits == ["README.md:2: Answer here", "src/pkg/mod.py:1: def answer():"]  # .git is skipped
    assert search_impl(ws, r"ret\w+ \d+", regex=True) == "src/pkg/mod.py:2: return 42"
    assert search_impl(ws, "zzz") == "no matches for 'zzz'"
    assert search_impl(ws, "Punie", path="README.md") == "README.md:1: Punie"


def test_search_rejects_bad_regex_and_empty_pattern(ws: Workspace) -> None:
    with pytest.raises(ToolFailure, match="invalid regular expression"):
        search_impl(ws, "(", regex=True)
    with pytest.raises(ToolFailure, match="empty"):
        search_impl(ws, "")


def test_search_skips_binary_files(ws: Workspace) -> None:
    (ws.root / "blob.bin").write_bytes(b"\x00\x01needle")
    assert search_impl(ws, "needle") == "no matches for 'needle'"


def test_run_command_runs_in_the_workspace_with_exit_code(ws: Workspace) -> None:
    code, out = asyncio.run(run_command_impl(ws, "pwd; echo err >&2; exit 3"))
    assert code == 3
    assert str(ws.root) in out and "err" in out


def test_run_command_has_no_stdin(ws: Workspace) -> None:
    code, out = asyncio.run(run_command_impl(ws, "cat; echo done"))
    assert (code, out.strip()) == (0, "done")


def test_run_command_timeout_kills_the_process_group(ws: Workspace) -> None:
    start = time.monotonic()
    code, out = asyncio.run(run_command_impl(ws, "sleep 300 & sleep 300; echo never", timeout=1))
    assert code is None and "timed out after 1 s" in out
    assert time.monotonic() - start < 60  # not the sleep 300


def test_run_command_caps_output(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_COMMAND_OUTPUT", 100)
    code, out = asyncio.run(run_command_impl(ws, "seq 1 10000"))
    assert code == 0 and "bytes omitted" in out and len(out) < 200
    assert out.startswith("1\n2\n") and out.rstrip().endswith("10000")


def _request(tool: str = "write_file") -> PermissionRequest:
    return PermissionRequest(tool=tool, tool_call_id="c1", args={"path": "a"}, summary="write 1 byte to a")


def test_policy_allow_and_deny_without_asking() -> None:
    asked: list[PermissionRequest] = []

    async def asker(req: PermissionRequest) -> Answer:
        asked.append(req)
        return Answer(True)

    allow = PermissionPolicy(Permissions(write_file="allow", run_command="deny"), asker)
    asyncio.run(allow.check(_request("write_file")))
    with pytest.raises(PermissionDenied, match='agent.permissions.run_command = "deny"'):
        asyncio.run(allow.check(_request("run_command")))
    assert asked == []


def test_policy_ask_uses_the_asker_and_remembers_always() -> None:
    answers = [Answer(False, reason="the user refused"), Answer(True, always=True)]
    asked: list[str] = []

    async def asker(req: PermissionRequest) -> Answer:
        asked.append(req.tool)
        return answers.pop(0)

    policy = PermissionPolicy(Permissions(write_file="ask"), asker)
    with pytest.raises(PermissionDenied, match="the user refused"):
        asyncio.run(policy.check(_request()))
    asyncio.run(policy.check(_request()))
    asyncio.run(policy.check(_request()))  # remembered: not asked again
    assert asked == ["write_file", "write_file"]


def test_terminal_asker_denies_when_stdin_is_not_a_terminal() -> None:
    err = io.StringIO()
    answer = asyncio.run(terminal_asker(io.StringIO("y\n"), err)(_request()))
    assert not answer.allowed and "not a terminal" in (answer.reason or "")
    assert err.getvalue() == ""  # nothing prompted


@pytest.mark.parametrize(("reply", "allowed", "always"), [("y\n", True, False), ("a\n", True, True),
                                                          ("n\n", False, False), ("\n", False, False)])
def test_terminal_asker_prompts_on_stderr(reply: str, allowed: bool, always: bool) -> None:
    err = io.StringIO()
    answer = asyncio.run(terminal_asker(io.StringIO(reply), err, interactive=True)(_request()))
    assert (answer.allowed, answer.always) == (allowed, always)
    assert "allow write_file: write 1 byte to a?" in err.getvalue()


def test_record_summary_is_short() -> None:
    record = ToolCallRecord(id="1", name="read_file", args={}, status="ok", result="x" * 300 + "\nline2\nline3")
    assert record.summary == "x" * 97 + "... (+2 lines)"
    assert record.to_json()["summary"] == record.summary
