"""The terminal mode as a person uses it: real `punie` processes in a real terminal (tmux).

Keys go in with send-keys and the screen is read back with capture-pane, polled
until a deadline (never a fixed sleep). The model server is the scripted fake
OpenAI server of tests/support, whose replies wait for the test's go-ahead, so
the spinner is on screen for as long as the test looks at it.

Without tmux these tests skip; with PUNIE_REQUIRE_TMUX=1 (.ci/run) they fail.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_openai import Reply, serve, text_reply, tool_call_reply
from tests.support.tmux import Tmux, private_tmux, wait_gone

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

PROMPT_LINE = r"^punie>\s*$"  # capture-pane drops trailing spaces
SPINNER = re.compile(r"working (\d+\.\d)s \(Ctrl-C to stop\)")
#: Words of the pydantic-ai / Logfire first-run banner (none may reach the terminal).
BANNER_WORDS = ("observability", "logfire", "PYDANTIC_AI_NO_BANNER", "opentelemetry")


@pytest.fixture
def term(tmp_path: Path) -> Iterator[Tmux]:
    with private_tmux(tmp_path) as tmux:
        yield tmux


def _env(tmp_path: Path) -> dict[str, str]:
    """What the programs get: no CI / PYTEST_VERSION (they hide the library banner), a private HOME."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TERM": "screen",
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PUNIE_CACHE_DIR": str(tmp_path / "cache"),
            "HF_HUB_OFFLINE": "1"}


def _punie(*args: str) -> list[str]:
    return [sys.executable, "-m", "punie", *args]


def _gated(gate: threading.Event, reply: Reply) -> Any:
    """A reply sent only once ``gate`` is set (the model "thinks" until the test says so)."""
    def source(body: dict[str, Any]) -> Reply:
        gate.wait(timeout=60)
        return reply
    return source


def _user_text(body: dict[str, Any]) -> str:
    content = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def _wait(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _spinner_seconds(screen: str) -> float | None:
    found = SPINNER.findall(screen)
    return float(found[-1]) if found else None


def _clean(screen: str) -> None:
    """No traceback, no raw escape sequence echoed, no third-party banner."""
    assert "Traceback" not in screen and "KeyboardInterrupt" not in screen, screen
    assert "^[" not in screen, screen  # an arrow key shown as ^[[A: no line editing
    lowered = screen.lower()
    assert not [w for w in BANNER_WORDS if w.lower() in lowered], screen


def _index(lines: list[str], pattern: str, start: int = 0) -> int:
    regex = re.compile(pattern)
    for i in range(start, len(lines)):
        if regex.search(lines[i]):
            return i
    raise AssertionError(f"/{pattern}/ not on the screen after line {start}:\n" + "\n".join(lines))


def test_editing_history_spinner_cancel_and_quit(tmp_path: Path, term: Tmux) -> None:
    first_answer, second_answer = threading.Event(), threading.Event()
    script = [_gated(first_answer, tool_call_reply(("list_files", {}))), text_reply("The answer is 42."),
              _gated(second_answer, text_reply("never shown: this turn is cancelled"))]
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "notes.txt").write_text("hello\n")
    with serve(script) as fake:
        try:
            pane = term.start(_punie("serve", "--model", f"local:{fake.url}"), env=_env(tmp_path), cwd=workspace)
            term.wait_text(pane, PROMPT_LINE, timeout=90)

            # Line editing: a typo fixed with the arrow keys before Enter.
            term.type(pane, "wht is here")
            term.send(pane, *["Left"] * 9)
            term.type(pane, "a")
            term.wait_text(pane, r"^punie> what is here\s*$")
            term.send(pane, "Enter")
            _wait(lambda: len(fake.requests) >= 1, "the first model request")
            assert _user_text(fake.requests[0]) == "what is here"

            # The spinner shows while the model works, and its time goes on.
            screen = term.wait_for(pane, _spinner_seconds, "the spinner")
            first = _spinner_seconds(screen)
            assert first is not None
            term.wait_for(pane, lambda s: (_spinner_seconds(s) or 0) >= first + 0.3, "the spinner's time to advance")

            # The model answers: the tool line comes before the answer, and the spinner is gone.
            first_answer.set()
            term.wait_text(pane, r"^The answer is 42\.$")
            screen = term.wait_for(pane, lambda s: re.search(r"^The answer is 42\.\npunie>\s*$", s, re.M),
                                   "the prompt after the answer")
            lines = screen.splitlines()
            asked = _index(lines, r"^punie> what is here$")
            tool = _index(lines, r"^  tool list_files\(path='\.', recursive=True\) -> ok: notes\.txt$", asked)
            answer = _index(lines, r"^The answer is 42\.$", tool)
            assert asked < tool < answer
            assert "working" not in screen  # erased once output arrived
            _clean(screen)

            # History: Up recalls the previous entry.
            term.send(pane, "Up")
            term.wait_for(pane, lambda s: len(re.findall(r"^punie> what is here\s*$", s, re.M)) == 2,
                          "the recalled entry")
            term.send(pane, "Enter")
            _wait(lambda: len(fake.requests) >= 3, "the second turn's request")
            assert _user_text(fake.requests[2]) == "what is here"
            term.wait_for(pane, lambda s: SPINNER.search(s.split("The answer is 42.")[-1]), "the second spinner")

            # Ctrl-C during the turn cancels it and returns to the prompt; the process lives on.
            term.send(pane, "C-c")
            term.wait_text(pane, r"^punie: turn cancelled\npunie>\s*$")
            assert not term.exited(pane)
            assert "working" not in term.screen(pane).split("The answer is 42.")[-1]

            # Ctrl-C on an empty line quits: exit status 0, no traceback, nothing left running.
            term.send(pane, "C-c")
            assert term.exit_status(pane) == 0, term.screen(pane)
            _clean(term.screen(pane))
            assert wait_gone(term.token) == []
        finally:
            second_answer.set()
            first_answer.set()

    # The history is the workspace's .punie/history, and a new session recalls it.
    assert "what is here" in (workspace / ".punie" / "history").read_text()
    pane = term.start(_punie("agent", "--base-url", "http://127.0.0.1:9/v1", "--mode", "repl"),
                      env=_env(tmp_path), cwd=workspace)
    term.wait_text(pane, PROMPT_LINE, timeout=90)
    term.send(pane, "Up")
    term.wait_text(pane, r"^punie> what is here\s*$")
    term.send(pane, "C-c")  # a line with text is cleared...
    term.wait_text(pane, r"^punie> what is here\npunie>\s*$|^punie>\s*$")
    term.wait_for(pane, lambda s: s.rstrip().splitlines()[-1].rstrip() == "punie>", "the cleared line")
    assert not term.exited(pane)
    # A failed turn says why on the screen and the loop goes on.
    term.type(pane, "hello")
    term.send(pane, "Enter")
    term.wait_text(pane, r"^punie: error: cannot reach the model server at http://127\.0\.0\.1:9/v1.*\n"
                         r"(\s+hint: .*\n)?punie>\s*$")
    term.send(pane, "C-d")  # ...and Ctrl-D on an empty line quits
    assert term.exit_status(pane) == 0, term.screen(pane)
    _clean(term.screen(pane))
    assert wait_gone(term.token) == []


def _model(hold: threading.Event) -> Any:
    """Readiness probe -> ok; a question -> a list_files call (the second one only once ``hold`` is set);
    the tool's result -> the answer."""
    questions = []

    def reply(body: dict[str, Any]) -> Reply:
        if not body.get("tools"):
            return text_reply("ok")
        if body["messages"][-1]["role"] == "tool":
            return text_reply("Files: notes.txt.")
        questions.append(body)
        if len(questions) > 1:
            hold.wait(timeout=60)
        return tool_call_reply(("list_files", {}), content="Let me look.")

    return reply


def test_punie_up_in_a_terminal_shows_tool_lines_in_order_and_ctrl_c_stops_a_turn(tmp_path: Path, term: Tmux) -> None:
    """Under `punie up` the agent's stderr is relayed by the supervisor, and the agent is in a session of its
    own (the terminal's SIGINT goes to the supervisor): the terminal mode writes nothing to stderr and reads
    Ctrl-C as a key."""
    project = tmp_path / "proj"
    project.mkdir()
    (project / "notes.txt").write_text("hello\n")
    hold = threading.Event()
    with serve([_model(hold)] * 20) as fake:
        try:
            (project / "punie.toml").write_text(
                f'[profiles.ext.server]\nurl = "{fake.url.removesuffix("/v1")}"\nready_timeout = 10\n')
            pane = term.start(_punie("up", "ext"), env=_env(tmp_path), cwd=project)
            term.wait_text(pane, PROMPT_LINE, timeout=90)
            term.type(pane, "list the files")
            term.send(pane, "Enter")
            screen = term.wait_for(pane, lambda s: re.search(r"^Files: notes\.txt\.\npunie>\s*$", s, re.M),
                                   "the answer and the next prompt")
            lines = screen.splitlines()
            asked = _index(lines, r"^punie> list the files$")  # the agent's prompt, not relayed as "agent | ..."
            text = _index(lines, r"^Let me look\.$", asked)
            tool = _index(lines, r"^  tool list_files\(path='\.', recursive=True\) -> ok: notes\.txt \(\+1 lines\)$",
                          text)
            answer = _index(lines, r"^Files: notes\.txt\.$", tool)
            assert asked < text < tool < answer
            _clean(screen)

            term.type(pane, "again")
            term.send(pane, "Enter")
            term.wait_for(pane, lambda s: SPINNER.search(s.split("Files: notes.txt.")[-1]), "the spinner")
            term.send(pane, "C-c")  # stops the turn, not punie up
            term.wait_text(pane, r"^punie: turn cancelled\npunie>\s*$")
            assert not term.exited(pane)
            term.send(pane, "C-c")  # the agent quits on an empty line; punie up stops with it
            assert term.exit_status(pane, timeout=90) == 0, term.screen(pane)
            _clean(term.screen(pane))
            assert wait_gone(term.token) == []
        finally:
            hold.set()


def test_a_permission_is_asked_on_the_terminal_and_ctrl_c_there_cancels_the_turn(tmp_path: Path, term: Tmux) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    script = [tool_call_reply(("write_file", {"path": "yes.txt", "content": "y\n"})), text_reply("Written."),
              tool_call_reply(("write_file", {"path": "no.txt", "content": "n\n"})), text_reply("never shown")]
    question = r"^punie: allow write_file: .*\? \[y/N/a\(lways\)\]"
    with serve(script) as fake:
        pane = term.start(_punie("serve", "--model", f"local:{fake.url}"), env=_env(tmp_path), cwd=workspace)
        term.wait_text(pane, PROMPT_LINE, timeout=90)
        term.type(pane, "write yes")
        term.send(pane, "Enter")
        term.wait_text(pane, question)
        term.type(pane, "y")
        term.send(pane, "Enter")
        term.wait_text(pane, r"^Written\.\npunie>\s*$")
        assert (workspace / "yes.txt").read_text() == "y\n"
        screen = term.screen(pane)
        assert re.search(question + r" y\n  tool write_file\(.*\) -> ok: wrote 2 bytes to yes\.txt\nWritten\.$",
                         screen, re.M), screen

        term.type(pane, "write no")
        term.send(pane, "Enter")
        term.wait_for(pane, lambda s: len(re.findall(question, s, re.M)) == 2, "the second question")
        term.send(pane, "C-c")
        term.wait_text(pane, r"^punie: turn cancelled\npunie>\s*$")
        assert not (workspace / "no.txt").exists()
        assert len(fake.requests) == 3  # the cancelled turn asked the model nothing more
        term.send(pane, "C-d")
        assert term.exit_status(pane) == 0, term.screen(pane)
        _clean(term.screen(pane))
        assert wait_gone(term.token) == []


def test_ask_on_a_terminal_shows_the_spinner_and_ctrl_c_stops_it(tmp_path: Path, term: Tmux) -> None:
    go = threading.Event()
    script = [_gated(go, tool_call_reply(("list_files", {}))), text_reply("Two files."),
              _gated(threading.Event(), text_reply("never shown"))]
    project = tmp_path / "proj"
    project.mkdir()
    (project / "notes.txt").write_text("hello\n")
    with serve(script) as fake:
        try:
            (project / "punie.toml").write_text(f'[profiles.ext.server]\nurl = "{fake.url.removesuffix("/v1")}"\n')
            pane = term.start(_punie("ask", "what is here?"), env=_env(tmp_path), cwd=project)
            term.wait_for(pane, _spinner_seconds, "the spinner", timeout=90)
            go.set()
            assert term.exit_status(pane) == 0, term.screen(pane)
            screen = term.screen(pane)
            assert re.search(r"^  tool list_files\(.*\) -> ok: notes\.txt.*\nTwo files\.$", screen, re.M), screen
            assert "working" not in screen
            _clean(screen)

            pane = term.start(_punie("ask", "again?"), env=_env(tmp_path), cwd=project)
            term.wait_for(pane, _spinner_seconds, "the spinner", timeout=90)
            term.send(pane, "C-c")
            assert term.exit_status(pane) == 130, term.screen(pane)
            screen = term.screen(pane)
            assert "punie: turn cancelled" in screen and "working" not in screen, screen
            _clean(screen)
            assert wait_gone(term.token) == []
        finally:
            go.set()


def test_ctrl_c_once_the_answer_is_whole_keeps_it_and_says_no_turn_cancelled(tmp_path: Path, term: Tmux) -> None:
    """The model sends its answer and its end-of-turn token, then goes on (the stream stays open): the user
    sees a whole answer, and a Ctrl-C then cuts the stream without "turn cancelled"; the answer stays in
    the conversation (the next request carries it)."""
    import dataclasses

    tail = threading.Event()
    workspace = tmp_path / "ws"
    workspace.mkdir()
    whole = dataclasses.replace(text_reply("The answer is 42.<|im_end|>"), hold=tail)
    script = [whole, text_reply("Second answer.")]
    with serve(script) as fake:
        try:
            pane = term.start(_punie("serve", "--model", f"local:{fake.url}"), env=_env(tmp_path), cwd=workspace)
            term.wait_text(pane, PROMPT_LINE, timeout=90)
            term.type(pane, "question one")
            term.send(pane, "Enter")
            term.wait_text(pane, r"^The answer is 42\.$")
            term.send(pane, "C-c")
            term.wait_text(pane, r"^The answer is 42\.\npunie>\s*$")
            assert "turn cancelled" not in term.screen(pane)
            term.type(pane, "question two")
            term.send(pane, "Enter")
            term.wait_text(pane, r"^Second answer\.\npunie>\s*$")
            second = fake.requests[1]["messages"]
            assert [m["content"] for m in second if m["role"] == "assistant"] == ["The answer is 42."], second
            term.send(pane, "C-d")
            assert term.exit_status(pane) == 0, term.screen(pane)
            _clean(term.screen(pane))
            assert "turn cancelled" not in term.screen(pane)
        finally:
            tail.set()
    assert wait_gone(term.token) == []


#: What must not reach the screen before the first prompt of an interactive `punie up`: the server's
#: warnings and log lines (mlx_lm's "not recommended for production", "Prompt Cache"), Python warnings,
#: and the relayed output of the children.
NOISE = re.compile(r"not recommended|Prompt Cache|Warning|WARNING|INFO|^server \||^agent \||Traceback", re.M)


@pytest.mark.slow
@pytest.mark.mlx
def test_punie_up_starts_calm_and_a_second_up_says_it_is_already_running(tmp_path: Path, term: Tmux) -> None:
    pytest.importorskip("mlx_lm")
    from tests.support.ports import free_port
    from tests.support.tiny import build_tiny_model

    project = tmp_path / "proj"
    project.mkdir()
    model = build_tiny_model(tmp_path / "models" / "tiny")
    port = free_port()
    (project / "punie.toml").write_text(
        f'[profiles.tiny]\nmodel = "{model}"\n[profiles.tiny.server]\nport = {port}\nready_timeout = 120\n')
    env = {**_env(tmp_path), "MLX_DISABLE_COMPILE": "1", "TOKENIZERS_PARALLELISM": "false"}
    pane = term.start(_punie("up", "tiny"), env=env, cwd=project)
    screen = term.wait_for(pane, lambda s: re.search(PROMPT_LINE, s, re.M), "the first prompt", timeout=150)
    before = screen[: re.search(PROMPT_LINE, screen, re.M).start()]
    assert not NOISE.search(before), before
    assert re.search(r"^punie \| server ready on ", before, re.M), before
    log = (project / ".punie" / "logs" / "tiny-server.log").read_text()
    assert "Starting httpd" in log or "127.0.0.1" in log, log  # the server's lines went to its log

    second = term.start(_punie("up", "tiny"), env=env, cwd=project)
    assert term.exit_status(second, timeout=60) == 1, term.screen(second)
    said = term.screen(second)
    pid = json.loads((project / ".punie" / "run" / "tiny.json").read_text())["pid"]
    assert re.search(rf"profile tiny is already running on port {port} \(pid {pid}, since \d{{4}}-\d\d-\d\d "
                     r"\d\d:\d\d:\d\d\)", said), said
    assert "already in use" not in said

    term.send(pane, "C-d")
    assert term.exit_status(pane, timeout=60) == 0, term.screen(pane)
    assert not (project / ".punie" / "run" / "tiny.json").exists()
    assert wait_gone(term.token, timeout=60) == []
