"""The terminal mode's pieces without a terminal: the screen and its spinner, tool lines, the history file.

The whole loop in a real terminal is tests/cli/test_terminal_tmux.py.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from punie.agent.tools import ToolCallRecord
from punie.cli.terminal import ASCII_FRAMES, ERASE_LINE, Screen, _history, elapsed_text, is_terminal, tool_line
from punie.paths import history_file, state_dir


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _screen(encoding: str = "utf-8") -> tuple[Screen, io.TextIOWrapper, Clock]:
    stream = io.TextIOWrapper(io.BytesIO(), encoding=encoding, write_through=True)
    clock = Clock()
    return Screen(stream, clock=clock), stream, clock


@pytest.fixture(autouse=True)
def _a_real_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")


def _text(stream: io.TextIOWrapper) -> str:
    return stream.buffer.getvalue().decode(stream.encoding)  # type: ignore[attr-defined]


def test_the_spinner_counts_the_time_and_is_erased_by_output() -> None:
    screen, stream, clock = _screen()
    screen.tick()
    assert _text(stream) == ""  # not busy: no spinner
    screen.busy()
    clock.now += 2.5
    screen.tick()
    assert _text(stream).endswith("working 2.5s (Ctrl-C to stop)")
    screen.write("Hello")
    assert _text(stream).endswith(ERASE_LINE + "Hello")
    screen.tick()  # mid-line: the spinner would land in the answer
    assert _text(stream).endswith(ERASE_LINE + "Hello")
    screen.line("  tool x() -> ok: y")  # a tool line ends the answer's line first
    assert _text(stream).endswith("Hello\n  tool x() -> ok: y\n")
    clock.now += 1
    screen.tick()  # at a line's start again: waiting for the model after a tool
    assert _text(stream).endswith("working 3.5s (Ctrl-C to stop)")
    screen.idle()
    assert _text(stream).endswith(ERASE_LINE)
    screen.tick()
    assert _text(stream).endswith(ERASE_LINE)


def test_no_spinner_while_paused_or_when_disabled() -> None:
    screen, stream, _ = _screen()
    screen.busy()
    with screen.pause():
        screen.tick()
        assert "working" not in _text(stream)
    screen.tick()
    assert "working" in _text(stream)
    quiet, stream, _ = _screen()
    quiet.spinner = False
    quiet.busy()
    quiet.tick()
    assert _text(stream) == ""


def test_no_spinner_on_a_dumb_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "dumb")
    screen, stream, _ = _screen()
    screen.busy()
    screen.tick()
    assert _text(stream) == ""


def test_ascii_frames_when_the_terminal_is_not_utf8() -> None:
    screen, stream, _ = _screen("ascii")
    screen.busy()
    screen.tick()
    drawn = _text(stream).removeprefix(ERASE_LINE)
    assert drawn[0] in ASCII_FRAMES and drawn[1:] == " working 0.0s (Ctrl-C to stop)"


def test_elapsed_text() -> None:
    assert elapsed_text(0) == "0.0s"
    assert elapsed_text(42.26) == "42.3s"
    assert elapsed_text(65) == "1m05s"


def test_tool_line_shortens_long_arguments() -> None:
    record = ToolCallRecord(id="1", name="write_file", args={"path": "a.py", "content": "x" * 200}, status="ok",
                            result="wrote 200 bytes to a.py")
    line = tool_line(record)
    assert line.startswith("  tool write_file(path='a.py', content='xxx")
    assert line.endswith("...') -> ok: wrote 200 bytes to a.py")
    assert len(line) < 140


def test_tool_line_says_the_status_once() -> None:
    record = ToolCallRecord(id="2", name="read_file", args={"path": "t.py"}, status="error",
                            result="error: no such file: 't.py'")
    assert tool_line(record) == "  tool read_file(path='t.py') -> error: no such file: 't.py'"


def test_not_a_terminal_without_ttys(tmp_path: Path) -> None:
    with open(tmp_path / "f", "w+") as fh:
        assert not is_terminal(fh, fh)
    assert not is_terminal(io.StringIO(), io.StringIO())


def test_history_lives_in_the_workspace_state_folder(tmp_path: Path) -> None:
    assert history_file(tmp_path) == state_dir(tmp_path) / "history" == tmp_path / ".punie" / "history"
    history = _history(history_file(tmp_path))
    history.store_string("first")
    assert "first" in history_file(tmp_path).read_text()
    assert list(type(history)(str(history_file(tmp_path))).load_history_strings()) == ["first"]


def test_history_in_memory_when_the_state_folder_cannot_be_made(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / ".punie").write_text("a file, not a folder")
    history = _history(history_file(tmp_path))
    history.store_string("kept in memory")
    assert type(history).__name__ == "InMemoryHistory"
    assert "prompt history not kept" in caplog.text


def test_the_cli_start_up_does_not_import_prompt_toolkit() -> None:
    # Only the terminal loop needs it: `punie check`, `punie up` and `punie ask` start without it.
    code = ("import sys; from punie.cli import main\n"
            "for name in ('check', 'up', 'agent', 'ask', 'serve'): main.get_command(None, name)\n"
            "print('prompt_toolkit' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
