"""Text surgery on one TOML inline table (``{ a = 1, b = "x" }``).

tomlkit re-renders an inline table it changes (``{ a = 1, b = 2}``); these
functions add or remove one ``key = value`` pair and leave every other byte of
the table as written, so that adding a pair and removing it again is exact.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

from punie.errors import ConfigError


@dataclass(frozen=True)
class _Pair:
    start: int
    end: int  # exclusive, after the value's last non-blank character
    key: str  # first part of the pair's key


def _skip_string(text: str, i: int) -> int:
    """Index just after the string literal starting at ``text[i]``."""
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
        j += 1
    raise ValueError("unterminated string")


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
            i = _skip_string(text, i)
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
    data = tomllib.loads(text[start:end] + "\n")
    (key,) = data.keys()
    return _Pair(start, end, key)


def _parse_pairs(text: str) -> list[_Pair]:
    try:
        return _pairs(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
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
