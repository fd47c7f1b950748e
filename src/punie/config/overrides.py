"""``--set KEY=VALUE`` overrides: a dotted key into the profile and a TOML value."""

from __future__ import annotations

import datetime
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from punie.config import keys, lexer
from punie.errors import ConfigError

KeyPath = tuple[str, ...]


def parse_value(raw: str) -> Any:
    """A TOML value when ``raw`` is one (``8081``, ``true``, ``["a"]``, ``{x = 1}``,
    ``"quoted"``), else the text itself as a bare string."""
    text = raw.strip()
    if not text:
        return ""
    try:
        doc = tomllib.loads(f"v = {text}")
    except (tomllib.TOMLDecodeError, RecursionError):
        return text
    # "1\nother = 2" parses into two keys: that is text, not one value.
    if set(doc) != {"v"} or _has_datetime(doc["v"]):
        return text
    return doc["v"]


def _has_datetime(value: Any) -> bool:
    # Dates and times are TOML values but no profile field holds one; a date-like
    # string ("2024-01-01") is meant as text.
    if isinstance(value, (datetime.date, datetime.time)):
        return True
    if isinstance(value, list):
        return any(_has_datetime(v) for v in value)
    if isinstance(value, dict):
        return any(_has_datetime(v) for v in value.values())
    return False


def parse_override(text: str) -> tuple[KeyPath, Any]:
    """Split ``server.port=8081`` into (("server", "port"), 8081); unknown keys raise ConfigError."""
    where = f"--set {text}"
    if "=" not in text:
        raise ConfigError("expected KEY=VALUE, e.g. --set server.port=8081", where=where)
    raw_key, raw_value = _split_pair(text)
    read = lexer.split_key(raw_key.strip())
    if read is None:
        if not raw_key.strip() or not all(p.strip() for p in raw_key.split(".")):
            raise ConfigError("empty key; expected KEY=VALUE, e.g. --set server.port=8081", where=where)
        raise ConfigError(
            f"not a valid key: {raw_key.strip()!r}",
            where=where,
            hint="write it like server.port; quote a part with other characters: "
            "server.chat_template_args.\"my key\"=1",
        )
    parts: KeyPath = read
    if parts[0] == "extends":
        raise ConfigError("'extends' can only be set in the profiles file", where=where)
    keys.require_known(parts, where=where)
    return parts, parse_value(raw_value)


def _split_pair(text: str) -> tuple[str, str]:
    """KEY and VALUE of ``KEY=VALUE``: the first ``=`` outside a quoted key part."""
    i = 0
    while i < len(text):
        if text[i] in "\"'":
            try:
                i = lexer.skip_string(text, i)
            except ValueError:
                break
            continue
        if text[i] == "=":
            return text[:i], text[i + 1 :]
        i += 1
    key, _, value = text.partition("=")
    return key, value


def leaves(value: Any, prefix: KeyPath = ()) -> Iterator[KeyPath]:
    """Every leaf path of a nested dict (lists are leaves; an empty table is a leaf)."""
    if is_table(value) and value:
        for key, sub in value.items():
            yield from leaves(sub, prefix + (str(key),))
    elif prefix:
        yield prefix


_SCALARS = (str, int, float, bool, list, tuple, type(None))


def is_table(value: object) -> bool:
    """A TOML table (any Mapping). The concrete types first: the ABC check of Mapping alone cost most of
    the layering of 5,000 profiles (issue 25)."""
    return type(value) is dict or (not isinstance(value, _SCALARS) and isinstance(value, Mapping))


def overrides_to_dict(overrides: Sequence[str]) -> tuple[dict[str, Any], dict[KeyPath, str]]:
    """Nested dict of all overrides (later ones win) and, per leaf path, the ``--set`` text."""
    result: dict[str, Any] = {}
    origin: dict[KeyPath, str] = {}
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        if isinstance(value, dict) and isinstance(node.get(path[-1]), dict):
            node[path[-1]] = deep_merge(node[path[-1]], value)
        else:
            node[path[-1]] = value
        for leaf in leaves(value, path):
            origin[leaf] = text
        origin.setdefault(path, text)
    return result, origin


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``over`` into ``base`` table by table; lists and scalars replace."""
    out = dict(base)
    for key, value in over.items():
        if is_table(value) and is_table(out.get(key)):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
