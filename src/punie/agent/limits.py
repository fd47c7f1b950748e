"""The tools' limits, each one rule with one message, whichever backend does the work.

A limit is written here once and applied by every backend of
:mod:`punie.agent.backends` (the disk and local processes, or the ACP client's
``fs/*`` and ``terminal/*``): what a read shows (:func:`shown_text`), what a
command may be (:class:`CommandLine`: not empty, a clamped timeout), how much
of its output is kept (:class:`CappedOutput`) and what a timeout says
(:func:`timed_out_text`). The backends differ in *where* the work happens,
never in what the model is told.

This module is at the bottom of the agent package: it imports nothing of it.
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass

from punie.errors import ToolFailure
from punie.paths import STATE_DIR_NAME

#: Characters of one file shown to the model (after the byte cap, ``agent.max_read_bytes``).
MAX_READ_CHARS = 100_000
#: Characters of another tool's result (the client's MCP servers) shown to the model.
MAX_RESULT_CHARS = 100_000
MAX_LIST_ENTRIES = 500
MAX_SEARCH_MATCHES = 200
MAX_SEARCH_FILE_BYTES = 2_000_000
#: Bytes of a command's output kept (head and tail); the client's terminal is asked for the same.
MAX_COMMAND_OUTPUT = 20_000
DEFAULT_COMMAND_TIMEOUT = 60.0
MIN_COMMAND_TIMEOUT = 1.0
MAX_COMMAND_TIMEOUT = 600.0
SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".venv", "venv", "node_modules", ".mypy_cache",
                       ".pytest_cache", ".ruff_cache", STATE_DIR_NAME, ".tox"})


def shown_text(data: bytes, size: int, max_bytes: int) -> str:
    """What a read shows: at most ``max_bytes`` of the file's bytes (``data``, of a ``size``-byte
    file), decoded as UTF-8 (undecodable bytes replaced), at most :data:`MAX_READ_CHARS` characters,
    with a note saying what was left out.

    The disk hands in the first ``max_bytes`` it read; a client (which sends the whole text) hands
    in all of it: both are cut here the same way.
    """
    kept = data[:max_bytes]
    text = kept.decode("utf-8", errors="replace")
    if len(text) > MAX_READ_CHARS:
        return text[:MAX_READ_CHARS] + f"\n[... truncated: showing {MAX_READ_CHARS} characters of a {size}-byte file]"
    if size > len(kept):
        text += f"\n[... truncated: read {len(kept)} bytes of a {size}-byte file (agent.max_read_bytes)]"
    return text


def shown_result(text: str) -> str:
    """What the model is shown of an MCP tool's result: at most :data:`MAX_RESULT_CHARS` characters."""
    if len(text) <= MAX_RESULT_CHARS:
        return text
    return text[:MAX_RESULT_CHARS] + f"\n[... truncated: {len(text)} characters]"


def wrote_text(data_len: int, rel: str) -> str:
    """What a successful write says."""
    return f"wrote {data_len} bytes to {rel}"


def command_timeout(timeout: float | int | str | None) -> float:
    """The seconds a command may run: ``timeout`` clamped to [:data:`MIN_COMMAND_TIMEOUT`,
    :data:`MAX_COMMAND_TIMEOUT`]; not a number (NaN, text, None): :data:`DEFAULT_COMMAND_TIMEOUT`."""
    try:
        seconds = float(timeout)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return DEFAULT_COMMAND_TIMEOUT
    if math.isnan(seconds):
        return DEFAULT_COMMAND_TIMEOUT
    return min(max(seconds, MIN_COMMAND_TIMEOUT), MAX_COMMAND_TIMEOUT)


@dataclass(frozen=True)
class CommandLine:
    """A command a backend may run: a non-empty line for ``bash -c`` and its clamped timeout.

    Backends take only this (made by :meth:`of`), so no backend can run an unchecked command.
    """

    line: str
    timeout: float

    @classmethod
    def of(cls, command: str, timeout: float | int | str | None = DEFAULT_COMMAND_TIMEOUT) -> CommandLine:
        """Check ``command`` (:class:`ToolFailure` when blank) and clamp ``timeout`` (:func:`command_timeout`)."""
        if not isinstance(command, str) or not command.strip():
            raise ToolFailure("command must not be empty")
        if "\x00" in command:
            raise ToolFailure("command must not contain a NUL character")
        return cls(command, command_timeout(timeout))


def signalled_exit_code(name: str | int | None) -> int:
    """The exit code of a command killed by a signal (its name, as ACP's ``terminal/*`` gives it, or
    its number), as a shell and the local reaper report it: 128 + the signal's number."""
    if isinstance(name, int):
        return 128 + name
    try:
        return 128 + int(signal.Signals[str(name).upper()])
    except KeyError:
        return 128


def timed_out_text(timeout: float, output: str) -> str:
    """What a command stopped at its timeout says (with the output it gave so far)."""
    return f"timed out after {timeout:g} s (process killed)" + (f"; output so far:\n{output}" if output else "")


class CappedOutput:
    """Keeps the head and the tail of a command's output (``limit`` bytes in all), so a chatty
    command cannot fill memory; :meth:`text` notes what was left out."""

    def __init__(self, limit: int | None = None):
        self.half = max((MAX_COMMAND_OUTPUT if limit is None else limit) // 2, 1)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        #: Bytes left out before the first one fed (a client terminal that dropped the start).
        self.dropped_before = False

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            del self.tail[: max(len(self.tail) - self.half, 0)]

    def text(self) -> str:
        omitted = self.total - len(self.head) - len(self.tail)
        head = self.head.decode("utf-8", errors="replace")
        tail = self.tail.decode("utf-8", errors="replace")
        shown = head + tail if omitted <= 0 else f"{head}\n[... {omitted} bytes omitted ...]\n{tail}"
        return f"[... earlier output omitted ...]\n{shown}" if self.dropped_before else shown


def capped_output(text: str, *, dropped_before: bool = False) -> str:
    """:class:`CappedOutput`'s rule on an output received whole (from a client's terminal, which
    may ignore the byte limit it was given); ``dropped_before``: the client dropped its start."""
    out = CappedOutput()
    out.dropped_before = dropped_before
    out.feed(text.encode("utf-8", errors="replace"))
    return out.text()
