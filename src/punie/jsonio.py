"""The one bounded JSON reader: every JSON file Punie reads goes through `load_json_file`.

`json.loads` alone can raise RecursionError on deeply nested input, MemoryError
on a huge file, and returns any type. Here the size is capped before reading,
a too deep nesting is refused (the C parser's RecursionError is caught and the
depth of what it returns is measured iteratively, so nothing later recurses
deeply), and the top-level type is checked, so a malformed file
always becomes a `CorruptFileError` naming it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from punie.errors import CorruptFileError, PunieError

#: Larger JSON files are refused (real config/index files are far below this).
MAX_JSON_BYTES = 64 * 1024 * 1024
#: Deeper nesting is refused (real files nest a handful of levels).
MAX_JSON_DEPTH = 64


class JSONLimitError(CorruptFileError):
    """A JSON document exceeds Punie's size or depth limit."""


def nesting_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of a parsed JSON value (iterative; stops counting past ``limit``)."""
    best = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        best = max(best, depth)
        if best > limit:
            return best
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return best


def parse_json(text: str | bytes, *, where: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON text with the depth limit; raise CorruptFileError naming ``where``."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptFileError(f"not valid UTF-8 JSON (byte {exc.start})", where=where) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})",
                               where=where) from None
    except RecursionError:
        raise JSONLimitError(f"JSON nested too deeply (the limit is {max_depth} levels)", where=where) from None
    except (ValueError, MemoryError) as exc:
        raise CorruptFileError(f"not valid JSON ({exc.__class__.__name__})", where=where) from None
    if nesting_depth(doc, max_depth) > max_depth:
        raise JSONLimitError(f"JSON nested more than {max_depth} levels deep", where=where)
    return doc


def load_json_file(path: str | os.PathLike[str], *, expect: type | None = dict,
                   max_bytes: int = MAX_JSON_BYTES, missing: type[PunieError] | None = None) -> Any:
    """Read and parse a JSON file within the limits.

    ``expect`` is the required top-level type (None: any). A missing file raises
    FileNotFoundError unless ``missing`` names the PunieError class to raise.
    Other OS errors become CorruptFileError (unreadable), never a bare OSError.
    """
    path = Path(path)
    where = str(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > max_bytes:
                raise JSONLimitError(f"JSON file is {size} bytes (the limit is {max_bytes})", where=where)
            raw = fh.read(max_bytes + 1)
    except FileNotFoundError:
        if missing is not None:
            raise missing("missing", where=where) from None
        raise
    except IsADirectoryError:
        raise CorruptFileError("is a directory, not a JSON file", where=where) from None
    except OSError as exc:
        raise CorruptFileError(f"cannot read: {exc.strerror or exc}", where=where) from None
    if len(raw) > max_bytes:
        raise JSONLimitError(f"JSON file is larger than {max_bytes} bytes", where=where)
    doc = parse_json(raw, where=where)
    if expect is not None and not isinstance(doc, expect):
        kind = {dict: "a JSON object", list: "a JSON array"}.get(expect, expect.__name__)
        raise CorruptFileError(f"must be {kind}, not {_kind(doc)}", where=where)
    return doc


def _kind(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value), type(value).__name__)
