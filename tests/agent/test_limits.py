"""The tools' limits (punie.agent.limits): each one rule, checked on its edges."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from punie.agent import limits
from punie.agent.limits import CappedOutput, CommandLine, capped_output, command_timeout, shown_text
from punie.errors import ToolFailure


@pytest.mark.parametrize(("given_", "expected"), [
    (0, limits.MIN_COMMAND_TIMEOUT), (-5, limits.MIN_COMMAND_TIMEOUT), (0.001, limits.MIN_COMMAND_TIMEOUT),
    (30, 30.0), ("45", 45.0), (1e9, limits.MAX_COMMAND_TIMEOUT), (math.inf, limits.MAX_COMMAND_TIMEOUT),
    (-math.inf, limits.MIN_COMMAND_TIMEOUT), (math.nan, limits.DEFAULT_COMMAND_TIMEOUT),
    ("soon", limits.DEFAULT_COMMAND_TIMEOUT), (None, limits.DEFAULT_COMMAND_TIMEOUT),
])
def test_the_timeout_is_clamped_and_never_nan(given_: object, expected: float) -> None:
    assert command_timeout(given_) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("line", ["", "   ", "\n\t"])
def test_a_blank_command_is_refused_with_one_message(line: str) -> None:
    with pytest.raises(ToolFailure, match="^command must not be empty$"):
        CommandLine.of(line)


def test_a_command_with_a_nul_is_refused_before_it_reaches_exec() -> None:
    with pytest.raises(ToolFailure, match="NUL"):
        CommandLine.of("echo a\x00b")
    assert CommandLine.of("echo ok", 1e9) == CommandLine("echo ok", limits.MAX_COMMAND_TIMEOUT)


def test_the_read_rule_cuts_by_bytes_then_by_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    assert shown_text(b"hello", 5, 100) == "hello"
    # A client sends the whole text: cut to the byte cap like the disk's partial read.
    whole = shown_text(b"x" * 50, 50, 10)
    partial = shown_text(b"x" * 10, 50, 10)
    assert whole == partial == "x" * 10 + "\n[... truncated: read 10 bytes of a 50-byte file (agent.max_read_bytes)]"
    monkeypatch.setattr(limits, "MAX_READ_CHARS", 4)
    assert shown_text(b"abcdefgh", 8, 100) == "abcd\n[... truncated: showing 4 characters of a 8-byte file]"


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=200))
def test_the_read_rule_is_the_same_for_a_whole_text_and_a_partial_read(data: bytes, cap: int) -> None:
    """The client's whole text and the disk's first ``cap`` bytes show the same thing."""
    assert shown_text(data, len(data), cap) == shown_text(data[:cap], len(data), cap)


@given(st.lists(st.binary(max_size=200), max_size=20), st.integers(min_value=2, max_value=300))
def test_the_output_cap_does_not_depend_on_how_the_output_arrives(chunks: list[bytes], limit: int) -> None:
    """Fed in pieces (a local pipe) or whole (a client's terminal output): the same text."""
    pieces = CappedOutput(limit)
    for chunk in chunks:
        pieces.feed(chunk)
    whole = CappedOutput(limit)
    whole.feed(b"".join(chunks))
    assert pieces.text() == whole.text()
    assert len(pieces.head) + len(pieces.tail) <= limit


def test_a_client_output_is_capped_like_a_local_one() -> None:
    text = "".join(f"{i}\n" for i in range(20000))
    capped = capped_output(text)
    assert "bytes omitted" in capped and len(capped.encode()) < limits.MAX_COMMAND_OUTPUT + 100
    assert capped_output("short", dropped_before=True) == "[... earlier output omitted ...]\nshort"


@pytest.mark.parametrize(("name", "code"), [("SIGKILL", 137), ("sigterm", 143), (9, 137), ("SIGNOPE", 128)])
def test_a_signal_becomes_the_exit_code_a_shell_reports(name: str | int, code: int) -> None:
    assert limits.signalled_exit_code(name) == code
