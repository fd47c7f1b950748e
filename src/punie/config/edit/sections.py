"""Table headers of a TOML text and the lines each one spans.

`rename`, `rm`, `new --from` and `edit` move whole ``[profiles.NAME...]``
tables; they work on lines so that everything else stays byte for byte.
A line starting with ``[`` is a header only when the text before it is a
complete TOML document (not inside a multi-line string or array).
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass

from punie.config import lexer
from punie.config.edit.tables import render_key
from punie.errors import ConfigError


@dataclass(frozen=True)
class Section:
    """Lines ``start:end`` (0-based, end exclusive) of one ``[table]`` and the
    comment lines right above its header; ``header`` is the header's line."""

    path: tuple[str, ...]
    start: int
    header: int
    end: int
    array: bool


def _valid_prefix(lines: list[str], upto: int) -> bool:
    try:
        tomllib.loads("".join(lines[:upto]))
    except tomllib.TOMLDecodeError:
        return False
    return True


def _header_path(line: str) -> tuple[tuple[str, ...], bool]:
    found = lexer.header(line)
    if found is None:
        raise ValueError(f"not a table header: {line!r}")
    return found[0].parts, found[1]


def sections(text: str) -> list[Section]:
    """Every table header of a valid TOML ``text`` with its line span."""
    lines = text.splitlines(keepends=True)
    headers: list[int] = []
    for number, line in enumerate(lines):
        if line.lstrip().startswith("[") and _valid_prefix(lines, number):
            headers.append(number)
    result: list[Section] = []
    for position, header in enumerate(headers):
        start = header
        floor = headers[position - 1] + 1 if position else 0
        while start - 1 >= floor and lines[start - 1].lstrip().startswith("#") and _valid_prefix(lines, start - 1):
            start -= 1
        path, array = _header_path(lines[header])
        result.append(Section(path, start, header, len(lines), array))
    for position in range(len(result) - 1):
        current, following = result[position], result[position + 1]
        result[position] = Section(current.path, current.start, current.header, following.start, current.array)
    return result


def profile_sections(text: str, name: str) -> list[Section]:
    return [s for s in sections(text) if s.path[:2] == ("profiles", name)]


def table_form(text: str, name: str) -> list[Section]:
    """The sections of a profile written as ``[profiles.NAME...]`` tables only, or []
    when (part of) it is written another way (inline table, dotted keys)."""
    found = profile_sections(text, name)
    if not found:
        return []
    lines = text.splitlines(keepends=True)
    snippet = "".join("".join(lines[s.start : s.end]) for s in found)
    whole = tomllib.loads(text).get("profiles", {}).get(name)
    try:
        alone = tomllib.loads(snippet).get("profiles", {}).get(name)
    except tomllib.TOMLDecodeError:
        return []
    return found if alone == whole else []


def rename_key(text: str, parent: Sequence[str], old: str, written: str) -> str | None:
    """``text`` with the key ``old`` of table ``parent`` written as ``written`` wherever
    it is spelt: in table headers (``[profiles.old.server]``), in keys
    (``old = {...}`` under ``[profiles]``, ``old.model = ...``) and in dotted keys
    of an outer table (``profiles.old.model = ...``). Every other byte is kept.
    None when nothing names it."""
    lines = text.splitlines(keepends=True)
    target = (*parent, old)
    current: tuple[str, ...] = ()
    changed = False
    for number, line in enumerate(lines):
        found = lexer.header(line)
        if found is not None and _valid_prefix(lines, number):
            key, offset = found[0], 0
            current = key.parts
        else:
            key = lexer.read_key(line)
            if key is None or not line.startswith("=", key.end):
                continue
            offset = len(current)
            if offset >= len(target) or (*current, *key.parts)[: len(target)] != target:
                continue
            if not _valid_prefix(lines, number):
                continue  # inside a multi-line string or array
        path = key.parts if offset == 0 else (*current, *key.parts)
        index = len(target) - 1 - offset
        if path[: len(target)] != target or index < 0 or index >= len(key.spans):
            continue
        start, end = key.spans[index]
        lines[number] = line[:start] + written + line[end:]
        changed = True
    return "".join(lines) if changed else None


def _header_end(line: str) -> int:
    """Index just after the closing bracket(s) of the header on ``line``."""
    found = lexer.header(line)
    if found is None:
        raise ValueError(f"not a table header: {line!r}")
    return found[2]


def rewrite_header(line: str, path: Sequence[str], array: bool) -> str:
    """The header line for ``path``, keeping its indentation and what follows it."""
    indent = line[: len(line) - len(line.lstrip())]
    tail = line[_header_end(line) :]
    keys = ".".join(render_key(p) for p in path)
    return f"{indent}{'[[' if array else '['}{keys}{']]' if array else ']'}{tail}"


def insert_header(text: str, path: Sequence[str], line: str) -> str:
    """``text`` with a ``[path]`` table holding ``line`` put right above the header
    of the first table under ``path`` (its comments stay with what they head)."""
    lines = text.splitlines(keepends=True)
    depth = len(path)
    below = [s for s in sections(text) if tuple(s.path[:depth]) == tuple(path) and len(s.path) > depth]
    if not below:
        raise ConfigError(f"cannot find the tables of {'.'.join(path)} in the file; edit it by hand")
    header = "[" + ".".join(render_key(p) for p in path) + "]\n"
    lines[below[0].header : below[0].header] = [header, line + "\n", "\n"]
    return "".join(lines)


def remove_header(text: str, path: Sequence[str]) -> str:
    """``text`` without the header line of table ``path`` and the blank lines under
    it (for a table that holds nothing but sub-tables)."""
    lines = text.splitlines(keepends=True)
    for section in sections(text):
        if section.path == tuple(path) and not section.array:
            rest = lines[section.header + 1 : section.end]
            if all(not line.strip() for line in rest):
                del lines[section.header : section.end]
            break
    return "".join(lines)


def written_dotted(text: str, path: Sequence[str]) -> bool:
    """Whether table ``path`` is written only through dotted keys of an outer
    table (``server.port = 1`` under ``[profiles.a]``): no header at or under it,
    no ``path = {...}``, and at least one dotted key through it."""
    target = tuple(path)
    depth = len(target)
    found = sections(text)
    if any(s.path[:depth] == target for s in found):
        return False
    lines = text.splitlines(keepends=True)
    headers = {s.header: s.path for s in found}
    current: tuple[str, ...] = ()
    dotted = False
    for number, line in enumerate(lines):
        if number in headers:
            current = headers[number]
            continue
        if len(current) >= depth or current != target[: len(current)]:
            continue
        key = lexer.read_key(line)
        if key is None or not line.startswith("=", key.end):
            continue
        full = (*current, *key.parts)
        if full[:depth] != target or not _valid_prefix(lines, number):
            continue
        if len(full) == depth:
            return False  # `name = {...}` or a value: not dotted
        dotted = True
    return dotted
