"""Find the line a key of a TOML document is written on.

`tomllib` reports positions only for syntax errors. Validation errors carry a
key path (``profiles.demo.server.port``), so a small scan of table headers and
``key =`` lines (read with the one key lexer, punie.config.lexer) maps each
path to the line where it first appears. The scan
runs on text `tomllib` has already accepted and is best effort: a path it
cannot place falls back to its longest placed prefix (the table header).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence

from punie.config import lexer
from punie.errors import ConfigError

KeyPath = tuple[str, ...]

_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map every table and key path of a TOML document to its first line (1-based)."""
    lines: dict[KeyPath, int] = {}
    try:
        _scan(text, lines)
    except Exception:
        pass
    return lines


#: The last document scanned and its key lines: a command reads one profiles file, whose lines are
#: needed only to name the place of a problem, by the loader and by the checks alike.
_LAST: list[tuple[str, dict[KeyPath, int]]] = []


def document_lines(text: str) -> dict[KeyPath, int]:
    """`key_lines` of ``text``, scanned once however many problems (and modules) ask for a place in it.

    The mapping is shared: read it, never change it."""
    if _LAST and (_LAST[0][0] is text or _LAST[0][0] == text):
        return _LAST[0][1]
    found = key_lines(text)
    _LAST[:] = [(text, found)]
    return found


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
        if stripped.startswith("["):
            found = lexer.header(stripped)
            if found is not None:
                current = found[0].parts
                _record(lines, current, lineno)
            continue
        key = lexer.read_key(stripped, 0)
        if key is None or not stripped.startswith("=", key.end):
            continue
        _record(lines, current + key.parts, lineno)
        value = stripped[key.end + 1 :].lstrip()
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


def toml_syntax_error(exc: Exception, text: str, *, display: str) -> ConfigError:
    """The one ConfigError of every TOML reader for a syntax error (tomllib's or tomlkit's).

    ``display:LINE:COL: invalid TOML: MESSAGE``, then the offending line and a caret under the
    column (1-based, as tomllib counts; tomlkit's 0-based column is shifted to match).
    """
    if not isinstance(exc, tomllib.TOMLDecodeError):  # tomlkit's: tomllib's words and position where it has them
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError as reference:
            exc = reference
        except RecursionError:
            pass
    line, col, message = syntax_error_position(exc, text)
    if line is None and isinstance(getattr(exc, "line", None), int):  # tomlkit's ParseError
        line, col = exc.line, exc.col + 1  # type: ignore[attr-defined]
        message = re.sub(r"\s*at line \d+ col \d+$", "", message)
    source = text.splitlines()
    shown = ""
    if line and 0 < line <= len(source):
        code = source[line - 1].expandtabs(1)
        caret = min(col, len(code) + 1) if col else len(code) + 1  # no column: the end of the line
        shown = f"\n    {code}\n    {' ' * (caret - 1)}^"
    error = ConfigError(f"invalid TOML: {message}{shown}", where=display + "".join(f":{n}" for n in (line, col) if n))
    error.position = "".join(f":{n}" for n in (line, col) if n)  # type: ignore[attr-defined]
    return error


def dotted(path: Sequence[object]) -> str:
    """Render a key path the way a user would write it: ``profiles.demo.server.port``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        piece = lexer.render(str(part))
        out = f"{out}.{piece}" if out else piece
    return out
