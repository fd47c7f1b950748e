"""Editing `punie.toml` from the command line, keeping the file as the user wrote it.

Every edit is a pure function from text to text (``set_value``, ``unset_value``,
``new_profile``, ``rename_profile``, ``remove_profile``, ``replace_profile``):
comments, blank lines, key order and quoting outside the changed value stay
byte for byte. ``apply_edit`` reads the file, applies one of them, validates
the result with the same models and loader rules as ``punie check`` and only
then replaces the file atomically. An invalid edit raises ConfigError and the
file is left untouched.

Where a new key goes: into the table (or inline table) that already holds its
parent when there is one, right after that table's last key/value (so trailing
comments stay with the next table); otherwise as a dotted key
(``server.port = 8081``) in the profile's own table. ``unset`` removes the key
and then every table it leaves empty and comment-free, so ``set`` followed by
``unset`` of a key that was absent gives the original bytes back.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
from pydantic import BaseModel
from tomlkit.items import AoT, Comment, InlineTable, Item, Null, String, StringType, Table, Whitespace

from punie.config import keys, overrides
from punie.config.loader import parse_config
from punie.config.locate import dotted, key_lines, line_of
from punie.config.resolve import resolve_many
from punie.config.atomic import write_atomic
from punie.config.edit_inline import inline_add, inline_remove
from punie.config.models import Profile
from punie.errors import ConfigError, PunieError, UsageError, did_you_mean

logger = logging.getLogger(__name__)

__all__ = [
    "apply_edit",
    "check_key",
    "new_profile",
    "parse_value",
    "profile_names",
    "profile_snippet",
    "remove_profile",
    "rename_profile",
    "replace_profile",
    "set_value",
    "split_key",
    "unset_value",
    "validate_text",
]


# --------------------------------------------------------------------------- values and keys


def parse_value(raw: str) -> Any:
    """A command-line VALUE: a TOML value when it parses as one, else the plain string.

    ``8081`` is an int, ``true`` a bool, ``'["a", "b"]'`` a list, ``"x"`` (quoted) a
    string, and anything that is not TOML (``builtin:smollm2``) is taken as a string.
    The same rule as ``--set`` (punie.config.overrides.parse_value).
    """
    return overrides.parse_value(raw)


def split_key(dotted: str) -> list[str]:
    """Split ``server.port`` (TOML key syntax, quoted parts allowed) into its parts."""
    try:
        data: Any = tomllib.loads(f"{dotted} = 0")
    except tomllib.TOMLDecodeError:
        raise UsageError(f"not a valid key: {dotted!r}") from None
    parts: list[str] = []
    while isinstance(data, dict):
        ((key, data),) = data.items()
        parts.append(key)
    return parts


def check_key(parts: Sequence[str], *, where: str | None = None) -> None:
    """Refuse a key that is not a field of a profile, with a did-you-mean hint.

    ``where`` (``profiles.demo``) is put in front of the message."""
    try:
        unknown = keys.unknown_key(parts)
    except ValueError as exc:
        raise ConfigError(f"'{exc}' is a single value, not a table with keys", where=where) from None
    if unknown is not None:
        index, valid = unknown
        bad = ".".join(parts[: index + 1])
        hint = did_you_mean(parts[index], valid)
        raise ConfigError(
            f"unknown key '{bad}'" + (f", {hint}" if hint else ""),
            where=where,
            hint=None if hint else "valid keys: " + ", ".join(valid),
        )


def _is_table_field(parts: Sequence[str]) -> bool:
    model: type[BaseModel] = Profile
    for part in parts:
        fields = model.model_fields
        if part not in fields:
            return False
        annotation = fields[part].annotation
        sub = keys.model_of(annotation)
        if sub is None:
            return False
        model = sub
    return True


def _new_item(value: Any, old: Item | None = None) -> Item:
    """A tomlkit item for ``value``; a string keeps the quoting style of the one it replaces."""
    if isinstance(value, Item):
        return value
    if isinstance(value, str):
        literal = (
            isinstance(old, String)
            and old.type is StringType.SLL
            and "'" not in value
            and not any(c in value for c in "\n\r\t")
            and value.isprintable()
        )
        return tomlkit.string(value, literal=literal)
    if isinstance(value, dict):
        table = tomlkit.inline_table()
        for key, sub in value.items():
            table[key] = _new_item(sub)
        return table
    return tomlkit.item(value)


# --------------------------------------------------------------------------- document walking


def _parse(text: str) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text)
    except Exception as exc:  # tomlkit raises several unrelated types
        raise ConfigError(f"not valid TOML: {exc}") from None


def _profiles(doc: tomlkit.TOMLDocument) -> Any:
    profiles = doc.get("profiles")
    return profiles if profiles is not None else {}


def profile_names(text: str) -> list[str]:
    """Names of the profiles defined in ``text``, in file order."""
    return list(_profiles(_parse(text)).keys())


def _no_profile(name: str, names: Sequence[str]) -> ConfigError:
    return ConfigError(f"no profile named '{name}'", hint=did_you_mean(name, names) or (
        "create it with `punie profiles new " + name + "`"
    ))


def _where(profile: str, *parts: str) -> str:
    return dotted(("profiles", profile, *parts))


def _get_profile(doc: tomlkit.TOMLDocument, name: str) -> Any:
    profiles = _profiles(doc)
    if name not in profiles:
        raise _no_profile(name, list(profiles.keys()))
    return profiles[name]


def _is_container(item: Any) -> bool:
    return isinstance(item, (Table, InlineTable)) or hasattr(item, "_internal_container")


def _insert_pos(table: Table, first: str | None = None) -> int:
    """Index right after the last key/value of ``table``'s own body (before trailing
    comments, blank lines and sub-tables); for a dotted key, right after the last
    dotted key with the same first part when there is one."""
    pos = 0
    group = 0
    for index, (key, value) in enumerate(table.value.body):
        if key is None or isinstance(value, AoT):
            continue
        if isinstance(value, Table) and not key.is_dotted():
            continue
        pos = index + 1
        if first is not None and key.is_dotted() and key.key == first:
            group = index + 1
    return group or pos


def _table_add(table: Any, parts: list[str], item: Item) -> None:
    """Add ``parts = item`` to a (non-inline) table, placed after its last key/value."""
    key = tomlkit.key(parts if len(parts) > 1 else parts[0])
    if not isinstance(table, Table):  # out-of-order proxy: let tomlkit place it
        table.add(key, item)
        return
    body = table.value.body
    before = {id(value) for _, value in body}
    was_super = table.is_super_table()
    pos = _insert_pos(table, parts[0] if len(parts) > 1 else None)
    if pos and not body[pos - 1][1].trivia.trail.endswith("\n"):
        body[pos - 1][1].trivia.trail += "\n"
    table.add(key, item)
    if was_super:
        table._is_super_table = False  # noqa: SLF001 - now holds a value of its own
        return  # tomlkit writes a new header before the sub-tables: already in place
    new = [i for i, (_, value) in enumerate(body) if id(value) not in before]
    if len(new) == 1 and new[0] != pos:
        body.insert(pos, body.pop(new[0]))
        # Indices changed: only the rendering is used from here on (callers re-parse).


def _dotted_child(parent: Any, key: str) -> bool:
    """Whether ``parent[key]`` is written with dotted keys (``server.port = 1``)."""
    container = getattr(parent, "value", None)
    if isinstance(parent, (Table, InlineTable)) and isinstance(container, tomlkit.container.Container):
        index = container._map.get(tomlkit.key(key))  # noqa: SLF001
        if index is None:
            return False
        indices = index if isinstance(index, tuple) else (index,)
        return all(container.body[i][0].is_dotted() for i in indices)
    return False


def _is_empty(item: Any) -> bool:
    """True for a table with no keys and no comment of its own.

    Comments after a blank line at the end of a table are the heading of the
    next table, not this one's: they do not count (and survive its removal).
    """
    if isinstance(item, InlineTable) or hasattr(item, "_internal_container"):
        return len(item) == 0
    if not isinstance(item, Table) or item.trivia.comment:
        return False
    for key, value in item.value.body:
        if key is not None and not isinstance(value, Null):
            return False
        if isinstance(value, Whitespace):
            return all(key is None for key, _ in item.value.body)
        if isinstance(value, Comment):
            return False
    return True


def _remove_table(parent: Any, key: str) -> None:
    """Delete ``parent[key]``, keeping the comments that head the following table."""
    item = parent[key]
    kept: list[Item] = []
    if isinstance(item, Table):
        body = item.value.body
        first = next((i for i, (_, v) in enumerate(body) if isinstance(v, Comment)), None)
        if first is not None:
            kept = [v for _, v in body[first:]]
    container = parent.value if isinstance(parent, Table) else parent
    index = container._map.get(tomlkit.key(key)) if isinstance(container, tomlkit.container.Container) else None  # noqa: SLF001
    del parent[key]
    if kept and isinstance(index, int):
        container.body[index + 1 : index + 1] = [(None, v) for v in kept]


def _only_subtables(table: Table) -> bool:
    """A table whose body has sub-tables but no key/value and no comment of its own."""
    if table.trivia.comment:
        return False
    has_sub = False
    for key, value in table.value.body:
        if key is None:
            if isinstance(value, Comment):
                return False
            continue
        if isinstance(value, (Table, AoT)) and not key.is_dotted():
            has_sub = True
            continue
        if not isinstance(value, Null):
            return False
    return has_sub


def _implicit_sole(prof: Any) -> bool:
    """A profile with no ``[profiles.NAME]`` header of its own and a single sub-table."""
    return isinstance(prof, Table) and prof.is_super_table() and len(prof) == 1


def _render_key(part: str) -> str:
    return tomlkit.key(part).as_string()


def _nested_text(parts: list[str], item: Item) -> str:
    """``a = { b = v }`` for parts [a, b]: what goes into an inline table."""
    if len(parts) == 1:
        return f"{_render_key(parts[0])} = {item.as_string()}"
    return f"{_render_key(parts[0])} = {{ {_nested_text(parts[1:], item)} }}"


def _inline_item(text: str) -> Item:
    return tomlkit.parse(f"v = {text}\n")["v"]


def _replace(parent: Any, key: str, new: Item) -> None:
    parent[key] = new


@dataclass
class _Step:
    parent: Any
    key: str
    item: Any


def _walk(profile: Any, parts: Sequence[str], where: str) -> list[_Step]:
    """Containers from the profile down to the key's parent that already exist."""
    steps: list[_Step] = []
    current = profile
    for depth, part in enumerate(parts):
        if not _is_container(current):
            raise ConfigError(f"'{'.'.join(parts[:depth])}' is a value, not a table", where=where)
        if part not in current:
            break
        steps.append(_Step(current, part, current[part]))
        current = current[part]
    return steps


# --------------------------------------------------------------------------- set / unset


def set_value(text: str, profile: str, key: str, value: Any) -> str:
    """Return ``text`` with ``profiles.PROFILE.KEY`` set to ``value``.

    ``value`` is a Python value (see ``parse_value``) or a tomlkit item. An existing
    key is changed in place (its comment and, for strings, its quoting kept);
    a missing one is added next to its siblings.
    """
    parts = split_key(key)
    where = _where(profile)
    check_key(parts, where=where)
    if _is_table_field(parts):
        raise ConfigError(f"'{key}' is a table: set one of its keys (e.g. {key}.NAME)", where=where)
    doc = _parse(text)
    prof = _get_profile(doc, profile)
    steps = _walk(prof, parts, where)
    if len(steps) == len(parts):  # the key exists: replace its value
        last = steps[-1]
        if isinstance(last.item, (Table, AoT)) and not isinstance(value, (dict, Item)):
            raise ConfigError(f"'{key}' is a table, not a value", where=where)
        _replace(last.parent, last.key, _new_item(value, last.item))
        return doc.as_string()
    container = steps[-1].item if steps else prof
    if not _is_container(container):
        raise ConfigError(f"'{'.'.join(parts[:len(steps)])}' is a value, not a table", where=where)
    item = _new_item(value)
    if isinstance(container, InlineTable):
        rest = list(parts[len(steps):])
        new_inline = _inline_item(inline_add(container.as_string(), _nested_text(rest, item)))
        _set_container(prof, doc, profile, steps, new_inline)
        return doc.as_string()
    # A table written as dotted keys (server.port = 1) grows by one more dotted key
    # in the table that holds those lines.
    anchor = len(steps)
    while anchor > 0 and _dotted_child(steps[anchor - 1].parent, steps[anchor - 1].key):
        anchor -= 1
    if anchor < len(steps) and isinstance(steps[anchor].parent, InlineTable):
        anchor = len(steps)
    holder = steps[anchor - 1].item if anchor else prof
    _table_add(holder, list(parts[anchor:]), item)
    return doc.as_string()


def _set_container(prof: Any, doc: Any, profile: str, steps: list[_Step], new: Item) -> None:
    if steps:
        _replace(steps[-1].parent, steps[-1].key, new)
    else:
        _profiles(doc)[profile] = new


def unset_value(text: str, profile: str, key: str) -> str:
    """Return ``text`` without ``profiles.PROFILE.KEY``; tables left empty (and
    without comments) by the removal go too. Raises UsageError when it is not set."""
    parts = split_key(key)
    where = _where(profile)
    check_key(parts, where=where)
    doc = _parse(text)
    prof = _get_profile(doc, profile)
    steps = _walk(prof, parts, where)
    if len(steps) < len(parts):
        raise UsageError(f"'{key}' is not set in this file", where=where)
    chain: list[_Step] = [_Step(None, profile, prof), *steps]
    # Remove the leaf, then every container it leaves empty, innermost first.
    index = len(chain) - 1
    while index >= 1:
        step = chain[index]
        parent = chain[index - 1].item
        if isinstance(parent, InlineTable):
            remaining = inline_remove(parent.as_string(), step.key)
            if remaining is None:  # the inline table is empty now: remove it in turn
                index -= 1
                continue
            new = _inline_item(remaining)
            if index - 1 == 0:
                _profiles(doc)[profile] = new
            else:
                _replace(chain[index - 2].item, chain[index - 1].key, new)
            break
        if index == 1 and index < len(chain) - 1 and _implicit_sole(prof):
            break  # the profile's last table: removing it would remove the profile
        if index == len(chain) - 1:
            del parent[step.key]
        else:
            _remove_table(parent, step.key)
        if index - 1 >= 1 and _is_empty(parent):
            index -= 1
            continue
        break
    else:
        # Even the profile's own inline table is empty: keep the profile, as `{}`.
        _profiles(doc)[profile] = _inline_item("{}")
    if isinstance(prof, Table) and not prof.is_super_table() and _only_subtables(prof):
        # Undo the header a `set` wrote for a profile that only had sub-tables.
        prof.value.body[:] = [(k, v) for k, v in prof.value.body if k is not None]
        prof._is_super_table = True  # noqa: SLF001
    return doc.as_string()


# --------------------------------------------------------------------------- sections (headers)


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
    stripped = line.strip()
    array = stripped.startswith("[[")
    data: Any = tomllib.loads(line if line.endswith("\n") else line + "\n")
    parts: list[str] = []
    while isinstance(data, dict) and data:
        ((key, data),) = data.items()
        parts.append(key)
        if isinstance(data, list):
            break
    return tuple(parts), array


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
        while (
            start - 1 >= floor
            and lines[start - 1].lstrip().startswith("#")
            and _valid_prefix(lines, start - 1)
        ):
            start -= 1
        path, array = _header_path(lines[header])
        result.append(Section(path, start, header, len(lines), array))
    for position in range(len(result) - 1):
        current, following = result[position], result[position + 1]
        result[position] = Section(current.path, current.start, current.header, following.start, current.array)
    return result


def _profile_sections(text: str, name: str) -> list[Section]:
    return [s for s in sections(text) if s.path[:2] == ("profiles", name)]


def _table_form(text: str, name: str) -> list[Section]:
    """The sections of a profile written as ``[profiles.NAME...]`` tables only, or []
    when (part of) it is written another way (inline table, dotted keys)."""
    found = _profile_sections(text, name)
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


def _rewrite_header(line: str, path: Sequence[str], array: bool) -> str:
    """The header line for ``path``, keeping what followed the closing bracket."""
    indent = line[: len(line) - len(line.lstrip())]
    close = "]]" if array else "]"
    # The closing bracket is the first one after which only a comment/newline follows.
    stripped = line.rstrip("\r\n")
    newline = line[len(stripped):]
    position = len(stripped)
    while True:
        position = stripped.rfind(close, 0, position)
        tail = stripped[position + len(close):]
        if position < 0 or not tail.strip() or tail.lstrip().startswith("#"):
            break
    tail = stripped[position + len(close):] if position >= 0 else ""
    keys = ".".join(_render_key(p) for p in path)
    return f"{indent}{'[[' if array else '['}{keys}{close}{tail}{newline}"


# --------------------------------------------------------------------------- profile operations


def new_profile(text: str, name: str, from_: str | None = None) -> str:
    """Return ``text`` with an empty ``[profiles.NAME]`` table appended, or with a
    copy of profile ``from_`` (its tables and comments) under the new name."""
    _check_name(name)
    doc = _parse(text)
    names = list(_profiles(doc).keys())
    if name in names:
        raise ConfigError(f"profile '{name}' already exists")
    if from_ is None:
        block = f"[profiles.{_render_key(name)}]\n"
    else:
        if from_ not in names:
            raise _no_profile(from_, names)
        found = _table_form(text, from_)
        if found:
            lines = text.splitlines(keepends=True)
            out: list[str] = []
            for section in found:
                chunk = lines[section.start : section.end]
                offset = section.header - section.start
                path = ("profiles", name, *section.path[2:])
                chunk[offset] = _rewrite_header(chunk[offset], path, section.array)
                out.extend(chunk)
            block = "".join(out).rstrip("\n") + "\n"
        else:
            value = _profiles(doc)[from_].unwrap()
            block = tomlkit.dumps({"profiles": {name: value}})
            block = block if block.strip() else f"[profiles.{_render_key(name)}]\n"
    return _append_block(text, block)


def _append_block(text: str, block: str) -> str:
    if not text.strip():
        return text + block
    separator = "" if text.endswith("\n") else "\n"
    if not text.endswith("\n\n"):
        separator += "\n"
    return text + separator + block


def _check_name(name: str) -> None:
    if not name or name != name.strip() or any(c in name for c in "\n\r\t"):
        raise UsageError(f"not a usable profile name: {name!r}")


def _extenders(doc: Any, name: str) -> list[str]:
    return [n for n, p in _profiles(doc).items() if _is_container(p) and p.get("extends") == name]


def rename_profile(text: str, old: str, new: str) -> str:
    """Return ``text`` with profile ``old`` named ``new``; ``extends`` references to it
    and ``default_profile`` follow."""
    _check_name(new)
    doc = _parse(text)
    names = list(_profiles(doc).keys())
    if old not in names:
        raise _no_profile(old, names)
    if new in names:
        raise ConfigError(f"profile '{new}' already exists")
    for child in _extenders(doc, old):
        child_item = _profiles(doc)[child]
        child_item["extends"] = _new_item(new, child_item["extends"])
    if doc.get("default_profile") == old:
        doc["default_profile"] = _new_item(new, doc["default_profile"])
    defaults = doc.get("defaults")
    if _is_container(defaults) and defaults.get("extends") == old:
        defaults["extends"] = _new_item(new, defaults["extends"])
    found = _table_form(text, old)
    if found:
        text = doc.as_string()
        lines = text.splitlines(keepends=True)
        for section in _profile_sections(text, old):
            path = ("profiles", new, *section.path[2:])
            lines[section.header] = _rewrite_header(lines[section.header], path, section.array)
        return "".join(lines)
    profiles = _profiles(doc)
    item = profiles[old]
    if isinstance(profiles, Table) and not isinstance(item, Table):
        profiles.value._replace(old, new, item)  # noqa: SLF001 - keeps the key's position
        return doc.as_string()
    raise UsageError(
        f"profile '{old}' is written in a form that cannot be renamed in place "
        "(dotted keys or tables split across the file); rename it by hand"
    )


def remove_profile(text: str, name: str, *, force: bool = False) -> str:
    """Return ``text`` without profile ``name``.

    Refused (ConfigError) when other profiles extend it or it is the default
    profile, unless ``force``: then those ``extends`` and ``default_profile`` are
    removed too.
    """
    doc = _parse(text)
    names = list(_profiles(doc).keys())
    if name not in names:
        raise _no_profile(name, names)
    children = _extenders(doc, name)
    is_default = doc.get("default_profile") == name
    if (children or is_default) and not force:
        reasons = []
        if children:
            reasons.append("extended by " + ", ".join(f"'{c}'" for c in children))
        if is_default:
            reasons.append("it is the default_profile")
        raise ConfigError(
            f"profile '{name}' is in use: {'; '.join(reasons)}",
            hint="change those first, or pass --force to drop the references too",
        )
    for child in children:
        del _profiles(doc)[child]["extends"]
    if is_default:
        del doc["default_profile"]
    found = _table_form(text, name)
    if found:
        text = doc.as_string()
        lines = text.splitlines(keepends=True)
        for section in reversed(_profile_sections(text, name)):
            del lines[section.start : section.end]
        return "".join(lines)
    del _profiles(doc)[name]
    return doc.as_string()


# --------------------------------------------------------------------------- whole-profile editing


def profile_snippet(text: str, name: str) -> str:
    """The text of profile ``name`` as its own TOML document, for an editor.

    A profile written as ``[profiles.NAME]`` tables is cut out verbatim (with the
    comments above its headers); another form is rendered as such tables.
    """
    doc = _parse(text)
    names = list(_profiles(doc).keys())
    if name not in names:
        raise _no_profile(name, names)
    found = _table_form(text, name)
    if found:
        lines = text.splitlines(keepends=True)
        return "".join("".join(lines[s.start : s.end]) for s in found)
    value = _profiles(doc)[name].unwrap()
    return tomlkit.dumps({"profiles": {name: value}}) or f"[profiles.{_render_key(name)}]\n"


def replace_profile(text: str, name: str, snippet: str) -> str:
    """Return ``text`` with profile ``name`` replaced by the one in ``snippet`` (as
    produced by ``profile_snippet`` and edited). The snippet may hold nothing but
    ``profiles.NAME``; the rest of the file is kept byte for byte."""
    try:
        data = tomllib.loads(snippet)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", where="edited profile") from None
    extra = [k for k in data if k != "profiles"] + [
        f"profiles.{k}" for k in data.get("profiles", {}) if k != name
    ]
    if extra:
        raise ConfigError(
            f"the edited text may only hold profiles.{name}, not: {', '.join(extra)}",
            where="edited profile",
            hint="use `punie profiles new` / `rename` for other profiles",
        )
    if name not in data.get("profiles", {}):
        raise ConfigError(f"the edited text no longer holds [profiles.{name}]", where="edited profile",
                          hint=f"to delete it use `punie profiles rm {name}`")
    if snippet and not snippet.endswith("\n"):
        snippet += "\n"
    found = _table_form(text, name)
    lines = text.splitlines(keepends=True)
    if found:
        first, last = found[0], found[-1]
        original = "".join(lines[last.start : last.end])
        # Keep the blank lines that separated this profile from the next table.
        trailing = original[len(original.rstrip("\n")) :] or "\n"
        body = snippet.rstrip("\n") + trailing
        for section in reversed(found[1:]):
            del lines[section.start : section.end]
        lines[first.start : first.end] = [body]
        return "".join(lines)
    doc = _parse(text)
    del _profiles(doc)[name]
    return _append_block(doc.as_string(), snippet)


# --------------------------------------------------------------------------- validation and files


def validate_text(text: str, *, path: str | os.PathLike[str] = "punie.toml") -> None:
    """Raise ConfigError (naming file, line and key) unless ``text`` is a valid
    profiles file whose every profile resolves: the loader's own checks
    (schema, ``extends`` targets and cycles, ``default_profile``, the merged
    profile's model), with no ``PUNIE_*`` variable or ``--set`` of the user's
    mixed in.

    A profile may lack a model while it is being built (`new`, then `set ...
    model`), or when it is meant to get one from PUNIE_MODEL / ``--set``: that
    is left to `punie check`, so resolution runs with a stand-in PUNIE_MODEL.
    """
    source = parse_config(text, display=_display(Path(path)), path=Path(path))
    resolve_many(source, (), env={"PUNIE_MODEL": "(checked by punie check)"})


def _display(path: Path) -> str:
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def apply_edit(path: str | os.PathLike[str], fn: Callable[[str], str], *, create: bool = False) -> str:
    """Read ``path``, apply ``fn`` to its text, validate the result and write it
    atomically. Returns the new text. An error anywhere leaves the file as it was.

    With ``create`` a missing file counts as empty (it is created on success).
    """
    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        if not create:
            raise ConfigError(f"{target}: no such profiles file",
                              hint="create one with `punie profiles new NAME`") from None
        text = ""
    try:
        new_text = fn(text)
    except (ConfigError, UsageError) as exc:
        raise _located(exc, text, target) from None
    if new_text == text:
        logger.info("%s: nothing changed", target)
        return text
    validate_text(new_text, path=target)
    write_atomic(target, new_text)
    logger.info("%s: written", target)
    return new_text


def _located(exc: ConfigError | UsageError, text: str, target: Path) -> ConfigError | UsageError:
    """The error with the file (and the line of the key it names) in front."""
    display = _display(target)
    if exc.where and exc.where.startswith(display):
        return exc
    where = display
    if exc.where:
        line = None
        try:
            line = line_of(key_lines(text), split_key(exc.where))
        except PunieError:
            pass
        where = f"{display}:{line}: {exc.where}" if line else f"{display}: {exc.where}"
    return type(exc)(exc.message, where=where, hint=exc.hint)
