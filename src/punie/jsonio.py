"""The one bounded reader: every file Punie reads from a user's tree goes through here.

`read_file_bytes` / `read_text_file` / `open_regular` open without blocking
(``O_NONBLOCK``, so a FIFO or a device never waits for a writer), check with
``fstat`` on the opened descriptor that it is a regular file (a FIFO, a socket,
a device, a directory, or a symlink to ``/dev/zero`` is refused by what it
is, not by its name), and cap the size. `load_json_file` / `parse_json` add the
JSON caps: nesting depth (the C parser's RecursionError is caught and the depth
of what it returns is measured iteratively, so nothing later recurses deeply),
the digits of a number (a 5,000-digit integer is a finding, not the
interpreter's ValueError), and the top-level type. Every failure is a
`CorruptFileError` naming the file, never a bare OSError, ValueError or
RecursionError.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from punie.errors import CorruptFileError, PunieError

if TYPE_CHECKING:
    from pydantic import BaseModel

_M = TypeVar("_M", bound="BaseModel")

#: Larger JSON files are refused (real config/index files are far below this).
MAX_JSON_BYTES = 64 * 1024 * 1024
#: Deeper nesting is refused (real files nest a handful of levels).
MAX_JSON_DEPTH = 64
#: Longer numbers are refused (a 64-bit offset has 20 digits; a float's repr fewer than 30).
MAX_NUMBER_DIGITS = 100
#: Larger text files are refused unless the caller asks for another cap.
MAX_TEXT_BYTES = 64 * 1024 * 1024

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class JSONLimitError(CorruptFileError):
    """A JSON document exceeds Punie's size, depth or number limit."""


def _what(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


@contextlib.contextmanager
def open_regular(path: str | os.PathLike[str], *, max_bytes: int | None = None) -> Iterator[tuple[IO[bytes], int]]:
    """Open ``path`` for reading if it is a regular file: yields (binary file, size).

    Never blocks on a FIFO or a device (opened with O_NONBLOCK, then refused by
    ``fstat``). ``max_bytes``: a larger file is refused (JSONLimitError).
    FileNotFoundError passes through; any other OSError becomes CorruptFileError.
    """
    where = str(path)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise CorruptFileError("is a directory, not a file", where=where) from None
    except OSError as exc:
        try:  # a socket cannot even be opened (ENXIO): say what it is
            mode = os.stat(path).st_mode
        except OSError:
            mode = stat.S_IFREG
        if not stat.S_ISREG(mode):
            raise CorruptFileError(f"is {_what(mode)}, not a regular file: not read", where=where) from None
        raise CorruptFileError(f"cannot read: {exc.strerror or exc}", where=where) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptFileError(f"is {_what(st.st_mode)}, not a regular file: not read", where=where)
        if max_bytes is not None and st.st_size > max_bytes:
            raise JSONLimitError(f"file is {st.st_size} bytes (the limit is {max_bytes})", where=where)
        os.set_blocking(fd, True)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        try:
            yield fh, st.st_size
        except OSError as exc:
            raise CorruptFileError(f"cannot read: {exc.strerror or exc}", where=where) from None


def read_file_bytes(path: str | os.PathLike[str], *, max_bytes: int = MAX_TEXT_BYTES,
                    missing: type[PunieError] | None = None) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (see `open_regular`).

    A missing file raises FileNotFoundError unless ``missing`` names the PunieError class to raise.
    """
    try:
        with open_regular(path, max_bytes=max_bytes) as (fh, _):
            data = fh.read(max_bytes + 1)
    except FileNotFoundError:
        if missing is not None:
            raise missing("missing", where=str(path)) from None
        raise
    if len(data) > max_bytes:  # it grew after fstat
        raise JSONLimitError(f"file is larger than {max_bytes} bytes", where=str(path))
    return data


def read_text_file(path: str | os.PathLike[str], *, max_bytes: int = MAX_TEXT_BYTES, encoding: str = "utf-8",
                   missing: type[PunieError] | None = None) -> str:
    """The text of a regular file (see `read_file_bytes`); undecodable text is a CorruptFileError."""
    raw = read_file_bytes(path, max_bytes=max_bytes, missing=missing)
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise CorruptFileError(f"not valid {encoding} text (byte {exc.start})", where=str(path)) from None


def nesting_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of a parsed JSON value (iterative; stops counting past ``limit``)."""
    level = [value] if isinstance(value, (dict, list)) else []
    depth = 0
    while level:  # one level at a time: a cheap loop per container, none per scalar
        depth += 1
        if depth > limit:
            return depth
        below: list[Any] = []
        for item in level:
            below.extend(c for c in (item.values() if isinstance(item, dict) else item) if isinstance(c, (dict, list)))
        level = below
    return depth


_LONG_DIGITS = re.compile(f"[0-9]{{{MAX_NUMBER_DIGITS + 1}}}")


class _NumberTooLong(Exception):
    def __init__(self, text: str):
        self.digits = len(text)


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_DIGITS:
        raise _NumberTooLong(text)
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_DIGITS:
        raise _NumberTooLong(text)
    return float(text)


def parse_json(text: str | bytes, *, where: str, max_depth: int | None = MAX_JSON_DEPTH) -> Any:
    """Parse JSON text within the depth and number limits; raise CorruptFileError naming ``where``.

    NaN and Infinity are accepted as Python's json (and so mlx_lm and vLLM) accepts them:
    the checks of the values refuse them where a number must be finite. ``max_depth=None``
    skips measuring the depth, for a caller whose validation of every value bounds it
    (a safetensors header); nesting beyond the interpreter's recursion limit is refused anyway.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptFileError(f"not valid JSON (not UTF-8 at byte {exc.start})", where=where) from None
    # The number hooks cost a Python call per number: only a text with a long run of digits
    # (which may be in a string) pays them.
    hooks = {"parse_int": _parse_int, "parse_float": _parse_float} if _LONG_DIGITS.search(text) else {}
    try:
        doc = json.loads(text, **hooks)
    except _NumberTooLong as exc:
        raise JSONLimitError(f"a number of {exc.digits} characters (the limit is {MAX_NUMBER_DIGITS})",
                             where=where) from None
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})",
                               where=where) from None
    except RecursionError:
        raise JSONLimitError(f"JSON nested too deeply (the limit is {max_depth} levels)", where=where) from None
    except (ValueError, MemoryError) as exc:
        raise CorruptFileError(f"not valid JSON ({exc.__class__.__name__})", where=where) from None
    if max_depth is not None and nesting_depth(doc, max_depth) > max_depth:
        raise JSONLimitError(f"JSON nested more than {max_depth} levels deep", where=where)
    return doc


def load_json_file(path: str | os.PathLike[str], *, expect: type | None = dict,
                   max_bytes: int = MAX_JSON_BYTES, missing: type[PunieError] | None = None) -> Any:
    """Read (with `read_file_bytes`) and parse (with `parse_json`) a JSON file.

    ``expect`` is the required top-level type (None: any). A missing file raises
    FileNotFoundError unless ``missing`` names the PunieError class to raise.
    """
    path = Path(path)
    raw = read_file_bytes(path, max_bytes=max_bytes, missing=missing)
    doc = parse_json(raw, where=str(path))
    return check_type(doc, expect, where=str(path))


def check_type(doc: Any, expect: type | None, *, where: str) -> Any:
    """``doc`` when it is an ``expect`` (None: anything), else a CorruptFileError naming ``where``."""
    if expect is not None and not isinstance(doc, expect):
        kind = {dict: "a JSON object", list: "a JSON array"}.get(expect, expect.__name__)
        raise CorruptFileError(f"must be {kind}, not {_kind(doc)}", where=where)
    return doc


def _kind(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def validation_text(exc: Any, *, under: str | None = None) -> str:
    """The first problem of a pydantic ``ValidationError`` as ``key.path: message`` (just the message
    when it is about the whole document); ``under`` is the key the validated value sits under."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in [*([under] if under else []), *first["loc"]])
    return f"{loc}: {first['msg']}" if loc else str(first["msg"])


def load_model_file(path: str | os.PathLike[str], model: type[_M], *, max_bytes: int = MAX_JSON_BYTES) -> _M | None:
    """A JSON file validated as ``model``; None when there is no file. CorruptFileError naming the file
    when it is not valid JSON or not a valid ``model`` (the first problem, located)."""
    from pydantic import ValidationError

    try:
        doc = load_json_file(path, max_bytes=max_bytes)
    except FileNotFoundError:
        return None
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise CorruptFileError(validation_text(exc), where=str(path)) from None
