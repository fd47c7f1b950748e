"""Find the line a key of a TOML document is written on.

`tomllib` reports positions only for syntax errors. Validation errors carry a
key path (``profiles.demo.server.port``), so a small scan of table headers and
``key =`` lines maps each path to the line where it first appears. The scan
runs on text `tomllib` has already accepted and is best effort: a path it
cannot place falls back to its longest placed prefix (the table header).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

KeyPath = tuple[str, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")


def _parse_key(text: str, pos: int) -> tuple[list[str], int] | None:
    """Parse a dotted TOML key starting at ``pos``; return its parts and the end position."""
    parts: list[str] = []
    n = len(text)
    while True:
        while pos < n and text[pos] in " \t":
            pos += 1
        if pos >= n:
            return None
        ch = text[pos]
        if ch == '"':
            end = pos + 1
            buf: list[str] = []
            while end < n and text[end] != '"':
                if text[end] == "\\" and end + 1 < n:
                    # Escapes in keys are rare; keep the escaped character as written.
                    buf.append(text[end + 1])
                    end += 2
                    continue
                buf.append(text[end])
                end += 1
            if end >= n:
                return None
            parts.append("".join(buf))
            pos = end + 1
        elif ch == "'":
            end = text.find("'", pos + 1)
            if end < 0:
                return None
            parts.append(text[pos + 1 : end])
            pos = end + 1
        else:
            match = _BARE.match(text, pos)
            if not match:
                return None
            parts.append(match.group())
            pos = match.end()
        while pos < n and text[pos] in " \t":
            pos += 1
        if pos < n and text[pos] == ".":
            pos += 1
            continue
        return parts, pos


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map every table and key path of a TOML document to its first line (1-based)."""
    lines: dict[KeyPath, int] = {}
    try:
        _scan(text, lines)
    except Exception:  # noqa: BLE001 - locating is a courtesy; never let it hide the real error
        pass
    return lines


def _record(lines: dict[KeyPath, int], path: KeyPath, lineno: int) -> None:
    for i in range(1, len(path) + 1):
        lines.setdefault(path[:i], lineno)


def _scan(text: str, lines: dict[KeyPath, int]) -> None:
    current: KeyPath = ()
    in_string: str | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        if in_string is not None:
            if in_string in line:
                in_string = None
            continue
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("[["):
            parsed = _parse_key(stripped, 2)
            if parsed and stripped[parsed[1] :].startswith("]]"):
                current = tuple(parsed[0])
                _record(lines, current, lineno)
            continue
        if stripped.startswith("["):
            parsed = _parse_key(stripped, 1)
            if parsed and stripped[parsed[1] :].startswith("]"):
                current = tuple(parsed[0])
                _record(lines, current, lineno)
            continue
        parsed = _parse_key(stripped, 0)
        if not parsed or not stripped[parsed[1] :].startswith("="):
            continue
        _record(lines, current + tuple(parsed[0]), lineno)
        value = stripped[parsed[1] + 1 :].lstrip()
        for delim in ('"""', "'''"):
            if value.startswith(delim) and delim not in value[3:]:
                in_string = delim
                break


def line_of(lines: dict[KeyPath, int], path: Sequence[object]) -> int | None:
    """Line of ``path``, or of its longest prefix that has one; None when nothing matches."""
    keys = tuple(str(p) for p in path)
    for end in range(len(keys), 0, -1):
        if keys[:end] in lines:
            return lines[keys[:end]]
    return None


def syntax_error_position(exc: Exception, text: str) -> tuple[int | None, int | None, str]:
    """Line, column and bare message of a `tomllib.TOMLDecodeError`."""
    message = str(exc)
    lineno = getattr(exc, "lineno", None)
    colno = getattr(exc, "colno", None)
    match = _POSITION.search(message)
    if match:
        lineno = lineno or int(match.group(1))
        colno = colno or int(match.group(2))
        message = message[: match.start()].rstrip()
    elif "(at end of document)" in message:
        message = message.replace("(at end of document)", "").rstrip()
        lineno = max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
    return lineno, colno, getattr(exc, "msg", None) or message


def dotted(path: Sequence[object]) -> str:
    """Render a key path the way a user would write it: ``profiles.demo.server.port``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = str(part)
        piece = text if _BARE.fullmatch(text) else '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        out = f"{out}.{piece}" if out else piece
    return out
