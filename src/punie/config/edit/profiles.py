"""Whole-profile edits: new (and copies on a port of their own), rename, remove, snippets."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from typing import Any

import tomlkit

from punie.config import overrides
from punie.config.edit.document import (
    DOC_DISPLAY,
    keeps_line_endings,
    no_profile,
    parse_doc,
    profiles_of,
    split_key,
)
from punie.config.edit.files import STAND_IN
from punie.config.edit.sections import (
    profile_sections,
    rename_key,
    rewrite_header,
    table_form,
)
from punie.config.edit.tables import is_container, new_item, render_key
from punie.config.edit.values import set_value, unset_value
from punie.config.loader import parse_config
from punie.config.locate import toml_syntax_error
from punie.config.resolve import resolve_many
from punie.errors import ConfigError, UsageError

# --------------------------------------------------------------------------- profile operations


@keeps_line_endings
def new_profile(text: str, name: str, from_: str | None = None) -> str:
    """Return ``text`` with an empty ``[profiles.NAME]`` table appended, or with a
    copy of profile ``from_`` (its tables and comments) under the new name."""
    _check_name(name)
    doc = parse_doc(text)
    names = list(profiles_of(doc).keys())
    if name in names:
        raise ConfigError(f"profile '{name}' already exists")
    if from_ is None:
        block = f"[profiles.{render_key(name)}]\n"
    else:
        if from_ not in names:
            raise no_profile(from_, names)
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
            value = profiles_of(doc)[from_].unwrap()
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
    source = parse_config(text, display=DOC_DISPLAY)
    resolved = {r.name: r.profile.server for r in resolve_many(source, (), env=STAND_IN)}
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
    return [n for n, p in profiles_of(doc).items() if is_container(p) and p.get("extends") == name]


@keeps_line_endings
def rename_profile(text: str, old: str, new: str) -> str:
    """Return ``text`` with profile ``old`` named ``new``; ``extends`` references to it
    and ``default_profile`` follow."""
    _check_name(new)
    doc = parse_doc(text)
    names = list(profiles_of(doc).keys())
    if old not in names:
        raise no_profile(old, names)
    if new in names:
        raise ConfigError(f"profile '{new}' already exists")
    for child in _extenders(doc, old):
        child_item = profiles_of(doc)[child]
        child_item["extends"] = new_item(new, child_item["extends"])
    if doc.get("default_profile") == old:
        doc["default_profile"] = new_item(new, doc["default_profile"])
    defaults = doc.get("defaults")
    if is_container(defaults) and defaults.get("extends") == old:
        defaults["extends"] = new_item(new, defaults["extends"])
    text = doc.as_string()
    renamed = rename_key(text, ("profiles",), old, render_key(new))
    expected = tomllib.loads(text)
    expected["profiles"] = {(new if k == old else k): v for k, v in expected["profiles"].items()}
    if renamed is None or tomllib.loads(renamed) != expected:
        raise UsageError(
            f"profile '{old}' is written in a form that cannot be renamed in place; rename it by hand"
        )
    return renamed


def dependants(text: str, name: str, *, direct: bool = False) -> list[str]:
    """The profiles of ``text`` that extend ``name``, directly or through others, nearest
    first (only the direct ones with ``direct``)."""
    doc = parse_doc(text)
    return _extenders(doc, name) if direct else _dependants(doc, name)


def _dependants(doc: Any, name: str) -> list[str]:
    """Every profile whose `extends` chain reaches ``name``, nearest first."""
    out: list[str] = []
    frontier = [name]
    while frontier:
        children = [c for parent in frontier for c in _extenders(doc, parent) if c not in out and c != name]
        out.extend(children)
        frontier = children
    return out


@keeps_line_endings
def remove_profile(text: str, name: str, *, force: bool = False, cascade: bool = False) -> str:
    """Return ``text`` without profile ``name``; never a file with a broken ``extends``.

    While other profiles extend it, it is refused (ConfigError naming them) unless
    ``cascade`` (they are removed too, and the profiles extending those) or
    ``force`` (they are re-pointed: each direct dependant gets the values of
    ``name`` it did not set itself written into its own table, and extends what
    ``name`` extended, so it resolves exactly as before). Being the
    ``default_profile`` needs ``force`` (the entry is dropped).
    """
    doc = parse_doc(text)
    names = list(profiles_of(doc).keys())
    if name not in names:
        raise no_profile(name, names)
    children = _extenders(doc, name)
    dependants = _dependants(doc, name)
    removed = [name, *dependants] if cascade else [name]
    is_default = doc.get("default_profile") in removed
    blocked_by_children = bool(children) and not (cascade or force)
    if blocked_by_children or (is_default and not force):
        reasons = []
        hints = []
        if blocked_by_children:
            reasons.append("extended by " + ", ".join(f"'{c}'" for c in children))
            indirect = [d for d in dependants if d not in children]
            if indirect:
                reasons[-1] += " (and " + ", ".join(f"'{d}'" for d in indirect) + " through them)"
            hints.append(
                "--cascade removes the profiles that extend it too; --force keeps them working "
                f"(copies the values of '{name}' into them)"
            )
        if is_default:
            default = doc.get("default_profile")
            reasons.append(f"{'it' if default == name else repr(str(default))} is the default_profile")
            hints.append("--force drops default_profile")
        raise ConfigError(f"profile '{name}' is in use: {'; '.join(reasons)}", hint="; ".join(hints))
    if not cascade:
        for child in children:
            text = _inline_parent(text, child, name)
    if is_default:
        doc = parse_doc(text)
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
    doc = parse_doc(text)
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
    del profiles_of(doc)[name]
    return doc.as_string()


# --------------------------------------------------------------------------- whole-profile editing


def profile_snippet(text: str, name: str) -> str:
    """The text of profile ``name`` as its own TOML document, for an editor.

    A profile written as ``[profiles.NAME]`` tables is cut out verbatim (with the
    comments above its headers); another form is rendered as such tables.
    """
    doc = parse_doc(text)
    names = list(profiles_of(doc).keys())
    if name not in names:
        raise no_profile(name, names)
    found = table_form(text, name)
    if found:
        lines = text.splitlines(keepends=True)
        return "".join("".join(lines[s.start : s.end]) for s in found)
    value = profiles_of(doc)[name].unwrap()
    return tomlkit.dumps({"profiles": {name: value}}) or f"[profiles.{render_key(name)}]\n"


@keeps_line_endings
def replace_profile(text: str, name: str, snippet: str) -> str:
    """Return ``text`` with profile ``name`` replaced by the one in ``snippet`` (as
    produced by ``profile_snippet`` and edited). The snippet may hold nothing but
    ``profiles.NAME``; the rest of the file is kept byte for byte."""
    try:
        data = tomllib.loads(snippet)
    except tomllib.TOMLDecodeError as exc:
        raise toml_syntax_error(exc, snippet, display="edited profile") from None
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
    doc = parse_doc(text)
    if profiles_of(doc)[name].unwrap() == data["profiles"][name]:
        return text  # an inline profile, unchanged: keep its form
    del profiles_of(doc)[name]
    return _append_block(doc.as_string(), snippet)
