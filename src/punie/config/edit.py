"""Editing `punie.toml` from the command line, keeping the file as the user wrote it.

Every edit is a pure function from text to text (``set_value``, ``unset_value``,
``new_profile``, ``rename_profile``, ``remove_profile``, ``replace_profile``):
comments, blank lines, key order and quoting outside the changed value stay
byte for byte (CRLF files stay CRLF). ``apply_edit`` reads the file, applies
one of them, validates the result with the loader's own checks (the models,
``extends``, ``default_profile``, every profile resolving) and only then
replaces the file atomically. An invalid edit raises ConfigError and the file
is left untouched.

Where a new key goes: into the table (or inline table) that already holds its
parent when there is one, right after that table's last key/value (so trailing
comments stay with the next table); otherwise as a dotted key
(``server.port = 8081``) in the profile's own table; a profile written only as
``[profiles.NAME.server]`` gets a ``[profiles.NAME]`` header for a top-level key.

``unset`` removes the key, then every table it leaves empty that has no
comment of its own (a profile header left with only sub-tables included; the
profile itself always stays). So ``set`` then ``unset`` of a key that was
absent gives the original bytes back, unless the table it went into was an
empty, comment-free table to begin with.
"""

from __future__ import annotations

import codecs
import functools
import logging
import os
import tomllib
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import tomlkit
from pydantic import BaseModel
from tomlkit.items import AoT, InlineTable, Item, Table

from punie.config import keys, overrides
from punie.config.atomic import locked, write_atomic
from punie.config.edit_inline import inline_add, inline_remove
from punie.config.edit_sections import profile_sections, rewrite_header, table_form
from punie.config.edit_tables import (
    dotted_child,
    implicit_sole,
    inline_item,
    is_container,
    is_empty,
    nested_text,
    new_item,
    only_subtables,
    remove_table,
    render_key,
    replace_item,
    table_add,
)
from punie.config.loader import parse_config
from punie.config.locate import dotted, key_lines, line_of
from punie.config.models import Profile
from punie.config.resolve import resolve_many
from punie.errors import ConfigError, PunieError, UsageError, did_you_mean

logger = logging.getLogger(__name__)

__all__ = [
    "apply_edit",
    "check_key",
    "create_profile",
    "dependants",
    "free_port",
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


# --------------------------------------------------------------------------- line endings

_F = TypeVar("_F", bound=Callable[..., str])


def _keeps_line_endings(fn: _F) -> _F:
    """Run a text edit on ``\\n``-terminated text and give the result the file's own
    line endings back: CRLF stays CRLF and a missing final newline stays missing,
    so lines the edit adds look like their neighbours and undoing it is exact."""

    @functools.wraps(fn)
    def wrapper(text: str, *args: Any, **kwargs: Any) -> str:
        crlf = "\r\n" in text and "\n" not in text.replace("\r\n", "")
        work = text.replace("\r\n", "\n") if crlf else text
        missing_eol = bool(work) and not work.endswith("\n")
        result = fn(work + "\n" if missing_eol else work, *args, **kwargs)
        if missing_eol and result.endswith("\n"):
            result = result[:-1]
        return result.replace("\n", "\r\n") if crlf else result

    return typing.cast(_F, wrapper)


# --------------------------------------------------------------------------- values and keys


def parse_value(raw: str) -> Any:
    """A command-line VALUE: a TOML value when it parses as one, else the plain string.

    ``8081`` is an int, ``true`` a bool, ``'["a", "b"]'`` a list, ``"x"`` (quoted) a
    string, and anything that is not TOML (``builtin:smollm2``) is taken as a string.
    The same rule as ``--set`` (punie.config.overrides.parse_value).
    """
    return overrides.parse_value(raw)


def split_key(key: str) -> list[str]:
    """Split ``server.port`` (TOML key syntax, quoted parts allowed) into its parts."""
    try:
        data: Any = tomllib.loads(f"{key} = 0") if "\n" not in key and "\r" not in key else None
    except tomllib.TOMLDecodeError:
        data = None
    parts: list[str] = []
    while isinstance(data, dict) and len(data) == 1:
        ((part, data),) = data.items()
        parts.append(part)
    if not parts or data != 0:
        raise UsageError(f"not a valid key: {key!r}", hint="write it like server.port or agent.permissions.write_file")
    return parts


def check_key(parts: Sequence[str], *, where: str | None = None) -> None:
    """Refuse a key that is not a field of a profile, with a did-you-mean hint."""
    keys.require_known(parts, where=where)


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
    return ConfigError(
        f"no profile named '{name}'",
        hint=did_you_mean(name, names) or ("create it with `punie profiles new " + name + "`"),
    )


def _where(profile: str, *parts: str) -> str:
    return dotted(("profiles", profile, *parts))


def _get_profile(doc: tomlkit.TOMLDocument, name: str) -> Any:
    profiles = _profiles(doc)
    if name not in profiles:
        raise _no_profile(name, list(profiles.keys()))
    return profiles[name]


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
        if not is_container(current):
            raise ConfigError(f"'{'.'.join(parts[:depth])}' is a value, not a table", where=where)
        if part not in current:
            break
        steps.append(_Step(current, part, current[part]))
        current = current[part]
    return steps


# --------------------------------------------------------------------------- set / unset


@_keeps_line_endings
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
        replace_item(last.parent, last.key, new_item(value, last.item))
        return doc.as_string()
    container = steps[-1].item if steps else prof
    if not is_container(container):
        raise ConfigError(f"'{'.'.join(parts[: len(steps)])}' is a value, not a table", where=where)
    item = new_item(value)
    if isinstance(container, InlineTable):
        rest = list(parts[len(steps) :])
        new_inline = inline_item(inline_add(container.as_string(), nested_text(rest, item)))
        _set_container(doc, profile, steps, new_inline)
        return doc.as_string()
    # A table written as dotted keys (server.port = 1) grows by one more dotted key
    # in the table that holds those lines.
    anchor = len(steps)
    while anchor > 0 and dotted_child(steps[anchor - 1].parent, steps[anchor - 1].key):
        anchor -= 1
    if anchor < len(steps) and isinstance(steps[anchor].parent, InlineTable):
        anchor = len(steps)
    holder = steps[anchor - 1].item if anchor else prof
    table_add(holder, list(parts[anchor:]), item)
    return doc.as_string()


def _set_container(doc: Any, profile: str, steps: list[_Step], new: Item) -> None:
    if steps:
        replace_item(steps[-1].parent, steps[-1].key, new)
    else:
        _profiles(doc)[profile] = new


@_keeps_line_endings
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
            new = inline_item(remaining)
            if index - 1 == 0:
                _profiles(doc)[profile] = new
            else:
                replace_item(chain[index - 2].item, chain[index - 1].key, new)
            break
        if index == 1 and index < len(chain) - 1 and implicit_sole(prof):
            break  # the profile's last table: removing it would remove the profile
        if index == len(chain) - 1:
            del parent[step.key]
        else:
            remove_table(parent, step.key)
        if index - 1 >= 1 and is_empty(parent):
            index -= 1
            continue
        break
    else:
        # Even the profile's own inline table is empty: keep the profile, as `{}`.
        _profiles(doc)[profile] = inline_item("{}")
    if isinstance(prof, Table) and not prof.is_super_table() and only_subtables(prof):
        # Undo the header a `set` wrote for a profile that only had sub-tables.
        prof.value.body[:] = [(k, v) for k, v in prof.value.body if k is not None]
        prof._is_super_table = True  # noqa: SLF001
    return doc.as_string()


# --------------------------------------------------------------------------- profile operations


@_keeps_line_endings
def new_profile(text: str, name: str, from_: str | None = None) -> str:
    """Return ``text`` with an empty ``[profiles.NAME]`` table appended, or with a
    copy of profile ``from_`` (its tables and comments) under the new name."""
    _check_name(name)
    doc = _parse(text)
    names = list(_profiles(doc).keys())
    if name in names:
        raise ConfigError(f"profile '{name}' already exists")
    if from_ is None:
        block = f"[profiles.{render_key(name)}]\n"
    else:
        if from_ not in names:
            raise _no_profile(from_, names)
        found = table_form(text, from_)
        if found:
            lines = text.splitlines(keepends=True)
            out: list[str] = []
            for section in found:
                chunk = lines[section.start : section.end]
                offset = section.header - section.start
                path = ("profiles", name, *section.path[2:])
                chunk[offset] = rewrite_header(chunk[offset], path, section.array)
                out.extend(chunk)
            block = "".join(out).rstrip("\n") + "\n"
        else:
            value = _profiles(doc)[from_].unwrap()
            block = tomlkit.dumps({"profiles": {name: value}})
            block = block if block.strip() else f"[profiles.{render_key(name)}]\n"
    return _append_block(text, block)


def create_profile(
    text: str, name: str, from_: str | None = None, values: Sequence[tuple[str, Any]] = ()
) -> str:
    """`punie profiles new`: ``new_profile``, then ``values`` (KEY, VALUE pairs) set in it.

    A copy (``from_``) gets a port of its own unless ``values`` set ``server.port``
    (or ``server.url``): two profiles on one port cannot run side by side.
    """
    text = new_profile(text, name, from_)
    given = {tuple(split_key(key)) for key, _ in values}
    if from_ is not None and not given & {("server",), ("server", "port"), ("server", "url")}:
        port = free_port(text, name)
        if port is not None:
            text = set_value(text, name, "server.port", port)
    for key, value in values:
        text = set_value(text, name, key, value)
    return text


def free_port(text: str, name: str) -> int | None:
    """A port for profile ``name`` that no other profile of ``text`` resolves to: the
    first one above its current port (wrapping to 1024). None when ``name`` starts no
    server (``server.url``) or its port is already its own."""
    source = parse_config(text, display="punie.toml")
    resolved = {r.name: r.profile.server for r in resolve_many(source, (), env=_STAND_IN)}
    mine = resolved[name]
    if mine.url is not None:
        return None
    used = {s.port for other, s in resolved.items() if other != name and s.url is None}
    if mine.port not in used:
        return None
    port = mine.port
    for _ in range(65535):
        port = port + 1 if port < 65535 else 1024
        if port not in used:
            return port
    raise ConfigError("no free port left for a new profile")


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
    return [n for n, p in _profiles(doc).items() if is_container(p) and p.get("extends") == name]


@_keeps_line_endings
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
        child_item["extends"] = new_item(new, child_item["extends"])
    if doc.get("default_profile") == old:
        doc["default_profile"] = new_item(new, doc["default_profile"])
    defaults = doc.get("defaults")
    if is_container(defaults) and defaults.get("extends") == old:
        defaults["extends"] = new_item(new, defaults["extends"])
    found = table_form(text, old)
    if found:
        text = doc.as_string()
        lines = text.splitlines(keepends=True)
        for section in profile_sections(text, old):
            path = ("profiles", new, *section.path[2:])
            lines[section.header] = rewrite_header(lines[section.header], path, section.array)
        return "".join(lines)
    profiles = _profiles(doc)
    for table in getattr(profiles, "_tables", [profiles]):  # a proxy when [profiles] is split
        if isinstance(table, Table) and old in table and not isinstance(table[old], Table):
            table.value._replace(old, new, table[old])  # noqa: SLF001 - keeps the key's position
            return doc.as_string()
    raise UsageError(
        f"profile '{old}' is written in a form that cannot be renamed in place "
        "(dotted keys or tables split across the file); rename it by hand"
    )


def dependants(text: str, name: str) -> list[str]:
    """The profiles of ``text`` that extend ``name``, directly or through others, nearest first."""
    return _dependants(_parse(text), name)


def _dependants(doc: Any, name: str) -> list[str]:
    """Every profile whose `extends` chain reaches ``name``, nearest first."""
    out: list[str] = []
    frontier = [name]
    while frontier:
        children = [c for parent in frontier for c in _extenders(doc, parent) if c not in out and c != name]
        out.extend(children)
        frontier = children
    return out


@_keeps_line_endings
def remove_profile(text: str, name: str, *, force: bool = False, cascade: bool = False) -> str:
    """Return ``text`` without profile ``name``; never a file with a broken ``extends``.

    While other profiles extend it, it is refused (ConfigError naming them) unless
    ``cascade`` (they are removed too, and the profiles extending those) or
    ``force`` (they are re-pointed: each direct dependant gets the values of
    ``name`` it did not set itself written into its own table, and extends what
    ``name`` extended, so it resolves exactly as before). Being the
    ``default_profile`` needs ``force`` (the entry is dropped).
    """
    doc = _parse(text)
    names = list(_profiles(doc).keys())
    if name not in names:
        raise _no_profile(name, names)
    children = _extenders(doc, name)
    dependants = _dependants(doc, name)
    removed = [name, *dependants] if cascade else [name]
    is_default = doc.get("default_profile") in removed
    if (children and not (cascade or force)) or (is_default and not force):
        reasons = []
        if children and not (cascade or force):
            reasons.append("extended by " + ", ".join(f"'{c}'" for c in children))
            indirect = [d for d in dependants if d not in children]
            if indirect:
                reasons[-1] += " (and " + ", ".join(f"'{d}'" for d in indirect) + " through them)"
        if is_default:
            reasons.append(f"{'it' if doc.get('default_profile') == name else repr(doc.get('default_profile'))} is the default_profile")
        raise ConfigError(
            f"profile '{name}' is in use: {'; '.join(reasons)}",
            hint="--cascade removes the profiles that extend it too; --force keeps them working "
            f"(copies the values of '{name}' into them) and drops default_profile",
        )
    if not cascade:
        for child in children:
            text = _inline_parent(text, child, name)
    if is_default:
        doc = _parse(text)
        del doc["default_profile"]
        text = doc.as_string()
    for victim in reversed(removed):  # the farthest dependants first
        text = _remove_one(text, victim)
    return text


def _inline_parent(text: str, child: str, parent: str) -> str:
    """``child`` extending what ``parent`` extends, with the values of ``parent`` it
    inherited written into its own table (so it resolves as before)."""
    data = tomllib.loads(text)["profiles"]
    own, inherited = data[child], data[parent]
    for path in overrides.leaves({k: v for k, v in inherited.items() if k != "extends"}):
        value = _at(inherited, path)
        if value == {} or _has(own, path):
            continue  # an empty table changes nothing; the child's own value wins
        if path[0] in ("adapter", "adapters") and ({"adapter", "adapters"} & set(own)):
            continue  # one adapter form set by the child replaces the other
        text = set_value(text, child, ".".join(render_key(p) for p in path), value)
    grandparent = inherited.get("extends")
    if grandparent is None:
        return unset_value(text, child, "extends")
    return set_value(text, child, "extends", grandparent)


def _at(data: Any, path: Sequence[str]) -> Any:
    for part in path:
        data = data[part]
    return data


def _has(data: Any, path: Sequence[str]) -> bool:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def _remove_one(text: str, name: str) -> str:
    doc = _parse(text)
    found = table_form(text, name)
    if found:
        lines = text.splitlines(keepends=True)
        total = len(lines)
        for section in reversed(profile_sections(text, name)):
            del lines[section.start : section.end]
            if section.end == total and len(lines) >= 2 and not lines[-1].strip() and lines[-2].endswith("\n"):
                del lines[-1]  # the blank line that separated it from the table above (as `new` adds it)
            total = section.start
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
    found = table_form(text, name)
    if found:
        lines = text.splitlines(keepends=True)
        return "".join("".join(lines[s.start : s.end]) for s in found)
    value = _profiles(doc)[name].unwrap()
    return tomlkit.dumps({"profiles": {name: value}}) or f"[profiles.{render_key(name)}]\n"


@_keeps_line_endings
def replace_profile(text: str, name: str, snippet: str) -> str:
    """Return ``text`` with profile ``name`` replaced by the one in ``snippet`` (as
    produced by ``profile_snippet`` and edited). The snippet may hold nothing but
    ``profiles.NAME``; the rest of the file is kept byte for byte."""
    try:
        data = tomllib.loads(snippet)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", where="edited profile") from None
    extra = [k for k in data if k != "profiles"] + [f"profiles.{k}" for k in data.get("profiles", {}) if k != name]
    if extra:
        raise ConfigError(
            f"the edited text may only hold profiles.{name}, not: {', '.join(extra)}",
            where="edited profile",
            hint="use `punie profiles new` / `rename` for other profiles",
        )
    if name not in data.get("profiles", {}):
        raise ConfigError(
            f"the edited text no longer holds [profiles.{name}]",
            where="edited profile",
            hint=f"to delete it use `punie profiles rm {name}`",
        )
    if snippet and not snippet.endswith("\n"):
        snippet += "\n"
    found = table_form(text, name)
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
    if _profiles(doc)[name].unwrap() == data["profiles"][name]:
        return text  # an inline profile, unchanged: keep its form
    del _profiles(doc)[name]
    return _append_block(doc.as_string(), snippet)


# --------------------------------------------------------------------------- validation and files


# A profile may lack a model while it is built; `punie check` reports that, not the editor.
_STAND_IN = {"PUNIE_MODEL": "(checked by punie check)"}


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
    resolve_many(source, (), env=_STAND_IN)


def _display(path: Path) -> str:
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def apply_edit(path: str | os.PathLike[str], fn: Callable[[str], str], *, create: bool = False) -> str:
    """Read ``path``, apply ``fn`` to its text, validate the result and write it
    atomically, all under the file's exclusive edit lock (so concurrent edits
    serialise and none is lost; see punie.config.atomic). Returns the new text.
    An error anywhere leaves the file as it was. A read-only or hard-linked
    file is refused (ConfigError); a symlink is followed.

    With ``create`` a missing file counts as empty (it is created on success).
    """
    target = Path(path)
    display = _display(target)
    with locked(target, display=display) as real:
        text, bom = _read(real, display, create=create)
        try:
            new_text = fn(text)
        except (ConfigError, UsageError) as exc:
            raise _located(exc, text, target) from None
        if new_text == text:
            logger.info("%s: nothing changed", target)
            return text
        validate_text(new_text, path=target)
        try:
            write_atomic(real, bom + new_text)
        except OSError as exc:
            raise ConfigError(
                f"cannot write the profiles file (it is unchanged): {exc.strerror or exc}", where=display
            ) from None
    logger.info("%s: written", target)
    return new_text


def _read(real: Path, display: str, *, create: bool) -> tuple[str, str]:
    """The file's text and its byte order mark ("" when none)."""
    try:
        raw = real.read_bytes()
    except FileNotFoundError:
        if not create:
            raise ConfigError(
                "no such profiles file", where=display, hint="create one with `punie profiles new NAME`"
            ) from None
        raw = b""
    except OSError as exc:
        raise ConfigError(f"cannot read the profiles file: {exc.strerror or exc}", where=display) from None
    bom = "\ufeff" if raw.startswith(codecs.BOM_UTF8) else ""
    try:
        return raw.decode("utf-8-sig"), bom
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", where=f"{display}:{line}") from None


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
