"""Text surgery on one TOML inline table (``{ a = 1, b = "x" }``).

tomlkit re-renders an inline table it changes (``{ a = 1, b = 2}``); these
functions add or remove one ``key = value`` pair and leave every other byte of
the table as written, so that adding a pair and removing it again is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from punie.config import lexer
from punie.errors import ConfigError


@dataclass(frozen=True)
class _Pair:
    start: int
    end: int  # exclusive, after the value's last non-blank character
    key: str  # first part of the pair's key


def _pairs(text: str) -> list[_Pair]:
    if not text.startswith("{"):
        raise ValueError("not an inline table")
    pairs: list[_Pair] = []
    depth = 0
    start: int | None = None
    last = 0
    i = 1
    while i < len(text):
        c = text[i]
        if c in "\"'":
            if start is None:
                start = i
            i = lexer.skip_string(text, i)
            last = i
            continue
        if c == "#":
            raise ValueError("comment inside an inline table")
        if c in "[{":
            depth += 1
        elif c in "]}":
            if depth == 0:
                if start is not None:
                    pairs.append(_make_pair(text, start, last))
                return pairs
            depth -= 1
        elif c == "," and depth == 0:
            if start is not None:
                pairs.append(_make_pair(text, start, last))
            start = None
            i += 1
            continue
        if not c.isspace():
            if start is None:
                start = i
            last = i + 1
        i += 1
    raise ValueError("unterminated inline table")


def _make_pair(text: str, start: int, end: int) -> _Pair:
    key = lexer.read_key(text, start)
    if key is None or key.end >= end or text[key.end] != "=":
        raise ValueError(f"not a key = value pair: {text[start:end]!r}")
    return _Pair(start, end, key.parts[0])


def _parse_pairs(text: str) -> list[_Pair]:
    try:
        return _pairs(text)
    except ValueError as exc:
        raise ConfigError(f"cannot edit the inline table {text!r} in place: {exc}") from None


def inline_add(text: str, pair: str) -> str:
    """``text`` with ``pair`` (``key = value``) appended after its last pair,
    separated the way its existing pairs are."""
    pairs = _parse_pairs(text)
    if not pairs:
        return "{ " + pair + " }"
    separator = text[pairs[0].end : pairs[1].start] if len(pairs) > 1 else ", "
    end = pairs[-1].end
    return text[:end] + separator + pair + text[end:]


def inline_remove(text: str, key: str) -> str | None:
    """``text`` without the pair whose key (first part) is ``key``; None when
    that was its only pair."""
    pairs = _parse_pairs(text)
    matches = [i for i, p in enumerate(pairs) if p.key == key]
    if not matches:
        raise ConfigError(f"no key '{key}' in {text!r}")
    if len(pairs) == 1:
        return None
    index = matches[0]
    if index + 1 < len(pairs):
        return text[: pairs[index].start] + text[pairs[index + 1].start :]
    return text[: pairs[index - 1].end] + text[pairs[index].end :]
