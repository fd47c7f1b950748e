"""The one TOML key lexer of Punie.

Locating a key's line (punie.config.locate, on the read path) and editing the
file in place (punie.config.edit) both need to read a dotted key (``a."b.c".d``)
or step over a string literal at a given position of a TOML text, and to know
where each part of the key is written. This module does only that, with no
tomlkit import (the read path must stay light). Quoted parts are decoded by
``tomllib`` itself, so escapes mean exactly what TOML says.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass

BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_BLANK = " \t"


@dataclass(frozen=True)
class Key:
    """A dotted key read from a text: its parts, where each part is written
    (``spans``, quotes included) and the index just after it (and any blanks)."""

    parts: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]
    end: int


def skip_string(text: str, i: int) -> int:
    """Index just after the string literal starting at ``text[i]`` (basic,
    literal, single- or multi-line). Raises ValueError when it is unterminated."""
    quote = text[i]
    if text.startswith(quote * 3, i):
        close = text.find(quote * 3, i + 3)
        if close < 0:
            raise ValueError("unterminated string")
        end = close + 3
        while end < len(text) and text[end] == quote:  # up to two quotes may end the content
            end += 1
        return end
    j = i + 1
    while j < len(text):
        c = text[j]
        if quote == '"' and c == "\\":
            j += 2
            continue
        if c == quote:
            return j + 1
        if c == "\n":
            break
        j += 1
    raise ValueError("unterminated string")


def _skip_blanks(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _BLANK:
        pos += 1
    return pos


def read_key(text: str, pos: int = 0) -> Key | None:
    """The dotted key starting at ``pos`` (after blanks), or None when none starts there."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    n = len(text)
    while True:
        pos = _skip_blanks(text, pos)
        if pos >= n:
            return None
        ch = text[pos]
        if ch in "\"'":
            if text.startswith(ch * 3, pos):
                return None  # multi-line strings are not keys
            try:
                end = skip_string(text, pos)
            except ValueError:
                return None
            try:
                part = tomllib.loads(f"k = {text[pos:end]}")["k"]
            except tomllib.TOMLDecodeError:
                return None
        else:
            match = BARE_KEY.match(text, pos)
            if not match:
                return None
            part, end = match.group(), match.end()
        parts.append(part)
        spans.append((pos, end))
        pos = _skip_blanks(text, end)
        if pos < n and text[pos] == ".":
            pos += 1
            continue
        return Key(tuple(parts), tuple(spans), pos)


def split_key(text: str) -> tuple[str, ...] | None:
    """The parts of ``text`` when all of it is one dotted key (``server.port``), else None."""
    key = read_key(text)
    if key is None or _skip_blanks(text, key.end) != len(text):
        return None
    return key.parts


def header(line: str) -> tuple[Key, bool, int] | None:
    """A table header line: its key, whether it is ``[[array]]``, and the index just
    after the closing bracket(s). None when ``line`` is not a header."""
    start = _skip_blanks(line, 0)
    if not line.startswith("[", start):
        return None
    array = line.startswith("[[", start)
    key = read_key(line, start + (2 if array else 1))
    if key is None:
        return None
    close = "]]" if array else "]"
    if not line.startswith(close, key.end):
        return None
    return key, array, key.end + len(close)


def render(part: str) -> str:
    """One key part as TOML writes it: bare when it can be, else a basic string."""
    if BARE_KEY.fullmatch(part):
        return part
    escaped = part.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(
        c if c.isprintable() else (f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}") for c in escaped
    )
    return f'"{escaped}"'
