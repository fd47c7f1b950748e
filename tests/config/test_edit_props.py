"""Property tests of punie.config.edit: random valid files with comments, random edits."""

from __future__ import annotations

import copy
import difflib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from punie.config.edit import (
    new_profile,
    profile_snippet,
    remove_profile,
    rename_profile,
    replace_profile,
    set_value,
    unset_value,
    validate_text,
)
from punie.config.loader import parse_config
from punie.config.resolve import resolve_many

pytestmark = pytest.mark.slow  # each property test runs hundreds of generated documents (seconds each)

# EDIT_PROPS_EXAMPLES=2000 for a longer search than the one CI runs.
SETTINGS = settings(
    max_examples=int(os.environ.get("EDIT_PROPS_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

NAMES = st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=6)
PROFILE_NAMES = NAMES | st.text("ab .-_", min_size=1, max_size=4).filter(lambda n: n.strip() == n)
SAFE_TEXT = st.text("abcdefghijklmnopqrstuvwxyzABC0123456789 -_.:/", max_size=12)
COMMENT = st.text("abcdefghij xyz-=#[]'\"", max_size=15).map(lambda t: "#" + t)

SERVER_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "port": st.integers(1, 65535),
    "host": st.sampled_from(["127.0.0.1", "localhost", "::1"]),
    "temperature": st.integers(0, 500).map(lambda i: i / 100),
    "max_tokens": st.integers(1, 4096),
}
AGENT_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "temperature": st.integers(0, 500).map(lambda i: i / 100),
    "max_turns": st.integers(1, 50),
    "name": SAFE_TEXT,
}
TOP_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "description": SAFE_TEXT,
    "model": SAFE_TEXT.map(lambda s: "builtin:" + s),
}
PERMISSION_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "write_file": st.sampled_from(["ask", "allow", "deny"]),
    "run_command": st.sampled_from(["ask", "allow", "deny"]),
}
EDIT_VALUES: dict[str, st.SearchStrategy[Any]] = {
    **{k: v for k, v in TOP_VALUES.items()},
    **{f"server.{k}": v for k, v in SERVER_VALUES.items()},
    **{f"agent.{k}": v for k, v in AGENT_VALUES.items()},
    **{f"agent.permissions.{k}": v for k, v in PERMISSION_VALUES.items()},
    "server.chat_template_args.enable_thinking": st.booleans(),
}


@dataclass
class Doc:
    text: str
    names: list[str]
    data: dict[str, Any] = field(default_factory=dict)


def _render_value(draw: st.DrawFn, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if "'" not in value and draw(st.booleans()):
            return f"'{value}'"
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _kv_line(draw: st.DrawFn, key: str, value: Any) -> str:
    eq = draw(st.sampled_from([" = ", "=", "  =  "]))
    line = f"{key}{eq}{_render_value(draw, value)}"
    if draw(st.integers(0, 4)) == 0:
        line += "  " + draw(COMMENT)
    return line + "\n"


def _filler(draw: st.DrawFn) -> str:
    out = ""
    for _ in range(draw(st.integers(0, 2))):
        out += draw(st.sampled_from(["\n", draw(COMMENT) + "\n"]))
    return out


def _pairs(draw: st.DrawFn, values: dict[str, st.SearchStrategy[Any]], min_size: int) -> list[tuple[str, Any]]:
    keys = draw(st.lists(st.sampled_from(sorted(values)), unique=True, min_size=min_size, max_size=3))
    return [(k, draw(values[k])) for k in keys]


def _key(part: str) -> str:
    return tomlkit.key(part).as_string()


def _inline(draw: st.DrawFn, node: dict[str, Any]) -> str:
    inner = ", ".join(
        f"{_key(k)} = {_inline(draw, v) if isinstance(v, dict) else _render_value(draw, v)}" for k, v in node.items()
    )
    return "{ " + inner + " }" if inner else "{}"


def _dotted_lines(draw: st.DrawFn, node: dict[str, Any], prefix: str) -> list[str]:
    lines: list[str] = []
    for k, v in node.items():
        if isinstance(v, dict):
            lines.extend(_dotted_lines(draw, v, f"{prefix}{_key(k)}."))
        else:
            lines.append(_kv_line(draw, f"{prefix}{_key(k)}", v))
    return lines


def _body(draw: st.DrawFn, node: dict[str, Any], header: str) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    """Lines of a table's own body (shuffled) and the sub-tables written with headers."""
    own: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for k, v in node.items():
        if not isinstance(v, dict):
            own.append(_kv_line(draw, _key(k), v))
            continue
        form = draw(st.sampled_from(["dotted", "table", "inline"]))
        if form == "dotted":
            own.extend(_dotted_lines(draw, v, f"{_key(k)}."))
        elif form == "inline":
            own.append(f"{_key(k)} = {_inline(draw, v)}\n")
        else:
            tables.append((f"{header}.{_key(k)}", v))
    return draw(st.permutations(own)), tables


def _tables_text(draw: st.DrawFn, header: str, node: dict[str, Any], *, implicit: bool) -> str:
    own, tables = _body(draw, node, header)
    text = ""
    if implicit and not own and tables:
        pass  # no header of its own: only [header.sub] tables
    else:
        if draw(st.integers(0, 3)) == 0:
            text += draw(COMMENT) + "\n"
        text += f"[{header}]" + (("  " + draw(COMMENT)) if draw(st.integers(0, 5)) == 0 else "") + "\n"
        text += "".join(own)
    for sub_header, sub in tables:
        text += "\n" if text else ""
        text += _tables_text(draw, sub_header, sub, implicit=False)
    return text


def _profile_node(draw: st.DrawFn, names: list[str], position: int) -> dict[str, Any]:
    node: dict[str, Any] = dict(_pairs(draw, TOP_VALUES, 0))
    if position and draw(st.booleans()):
        node["extends"] = draw(st.sampled_from(names[:position]))
    if draw(st.booleans()):
        node["server"] = dict(_pairs(draw, SERVER_VALUES, 1))
    if draw(st.booleans()):
        agent = dict(_pairs(draw, AGENT_VALUES, 0))
        if draw(st.booleans()) or not agent:
            agent["permissions"] = dict(_pairs(draw, PERMISSION_VALUES, 1))
        node["agent"] = agent
    keys = draw(st.permutations(list(node)))
    return {k: node[k] for k in keys}


@st.composite
def documents(draw: st.DrawFn) -> Doc:
    names = draw(st.lists(PROFILE_NAMES, unique=True, min_size=1, max_size=4))
    text = ""
    if draw(st.booleans()):
        text += draw(COMMENT) + "\n"
    if draw(st.booleans()):
        text += _kv_line(draw, "default_profile", draw(st.sampled_from(names)))
    if draw(st.booleans()):
        text += "\n[defaults]\n" + "".join(_kv_line(draw, k, v) for k, v in _pairs(draw, TOP_VALUES, 1))
    inline_profiles: list[str] = []
    for position, name in enumerate(names):
        node = _profile_node(draw, names, position)
        if not node:
            node = {"description": draw(SAFE_TEXT)}
        layout = draw(st.sampled_from(["tables", "tables", "implicit", "inline"]))
        if layout == "inline":
            inline_profiles.append(f"{_key(name)} = {_inline(draw, node)}\n")
            continue
        if layout == "tables" and all(isinstance(v, dict) for v in node.values()):
            # An explicit header with no key of its own is what `unset` tidies away
            # (see the module doc of punie.config.edit): not generated here.
            node = {"description": draw(SAFE_TEXT), **node}
        text += "\n" if text else ""
        text += _filler(draw)
        text += _tables_text(draw, f"profiles.{_key(name)}", node, implicit=layout == "implicit")
        text += _filler(draw) if draw(st.booleans()) else ""
    if inline_profiles:
        text += ("\n" if text else "") + "[profiles]\n" + "".join(draw(st.permutations(inline_profiles)))
    if draw(st.integers(0, 5)) == 0:
        text = text.rstrip("\n")
    data = tomllib.loads(text)
    validate_text(text)
    return Doc(text, names, data)


def _get(data: dict[str, Any], parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _put(data: dict[str, Any], parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        data = data.setdefault(part, {})
    data[parts[-1]] = value


def _drop(data: dict[str, Any], parts: list[str], stop: int = 3) -> None:
    """Delete a key and the tables it leaves empty, down to depth ``stop`` (3 keeps
    the profile itself: profiles.NAME.x)."""
    chain = [data]
    for part in parts[:-1]:
        chain.append(chain[-1][part])
    del chain[-1][parts[-1]]
    for depth in range(len(parts) - 1, stop - 1, -1):
        if chain[depth] == {}:
            del chain[depth - 1][parts[depth - 1]]
        else:
            break


def _changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    removed: list[str] = []
    added: list[str] = []
    matcher = difflib.SequenceMatcher(a=before.splitlines(), b=after.splitlines(), autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            removed.extend(before.splitlines()[i1:i2])
            added.extend(after.splitlines()[j1:j2])
    return removed, added


@SETTINGS
@given(doc=documents(), data=st.data())
def test_set_changes_only_the_value_and_unset_restores(doc: Doc, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(doc.names))
    key = data.draw(st.sampled_from(sorted(EDIT_VALUES)))
    value = data.draw(EDIT_VALUES[key])
    parts = key.split(".")
    path = ["profiles", name, *parts]
    old = _get(doc.data, path)
    existed = old is not None

    after = set_value(doc.text, name, key, value)

    validate_text(after)
    expected = copy.deepcopy(doc.data)
    _put(expected, path, value)
    assert tomllib.loads(after) == expected
    removed, added = _changed_lines(doc.text, after)
    # At most the one line holding the key (or its inline table) is rewritten.
    assert len(removed) <= 1
    assert all(parts[-1] in line or line.startswith("[profiles.") or not line.strip() for line in added)
    if removed:
        assert parts[-1] in removed[0] or "{" in removed[0]
    if existed:
        assert len(removed) == len(added) == (0 if old == value and type(old) is type(value) else 1)
    else:
        assert unset_value(after, name, key) == doc.text


@SETTINGS
@given(doc=documents(), data=st.data())
def test_unset_removes_only_the_key(doc: Doc, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(doc.names))
    present = [k for k in sorted(EDIT_VALUES) if _get(doc.data, ["profiles", name, *k.split(".")]) is not None]
    if not present:
        return
    key = data.draw(st.sampled_from(present))
    parts = key.split(".")

    after = unset_value(doc.text, name, key)

    validate_text(after)
    # The key goes, then the tables it leaves empty, innermost first; a table with
    # a comment of its own stops that (it stays, empty).
    candidates = []
    for stop in range(3, len(parts) + 3):
        expected = copy.deepcopy(doc.data)
        _drop(expected, ["profiles", name, *parts], stop=stop)
        candidates.append(expected)
    assert tomllib.loads(after) in candidates
    removed, added = _changed_lines(doc.text, after)
    assert len(added) <= 1  # only an inline table is rewritten, never other lines
    assert any(parts[-1] in line for line in removed)


@SETTINGS
@given(doc=documents(), data=st.data())
def test_rename_then_back_is_exact(doc: Doc, data: st.DataObject) -> None:
    old = data.draw(st.sampled_from(doc.names))
    new = data.draw(NAMES.filter(lambda n: n not in doc.names))

    renamed = rename_profile(doc.text, old, new)

    validate_text(renamed)
    loaded = tomllib.loads(renamed)
    assert loaded["profiles"][new] == {k: v for k, v in doc.data["profiles"][old].items()}
    assert old not in loaded["profiles"]
    assert all(p.get("extends") != old for p in loaded["profiles"].values())
    if doc.data.get("default_profile") == old:
        assert loaded["default_profile"] == new
    assert rename_profile(renamed, new, old) == doc.text


@SETTINGS
@given(doc=documents(), data=st.data())
def test_new_and_remove(doc: Doc, data: st.DataObject) -> None:
    source = data.draw(st.sampled_from(doc.names))
    new = data.draw(NAMES.filter(lambda n: n not in doc.names))

    added = new_profile(doc.text, new, from_=source)
    assert added.startswith(doc.text)
    loaded = tomllib.loads(added)
    assert loaded["profiles"][new] == doc.data["profiles"][source]
    validate_text(added)
    # Exact when the file ends the usual way (one newline; extra blank lines at the end may go).
    exact = doc.text.endswith("\n") and not doc.text.endswith("\n\n")
    same = (lambda a, b: a == b) if exact else (lambda a, b: a.rstrip("\n") == b.rstrip("\n"))
    assert same(remove_profile(added, new), doc.text)

    empty = new_profile(doc.text, new)
    assert tomllib.loads(empty)["profiles"][new] == {}
    assert same(remove_profile(empty, new), doc.text)


def _resolved(text: str) -> dict[str, dict[str, Any]]:
    source = parse_config(text, display="punie.toml", path=Path("punie.toml"))
    return {
        r.name: r.profile.model_dump(exclude={"extends"})
        for r in resolve_many(source, (), env={"PUNIE_MODEL": "(stand-in)"})
    }


@SETTINGS
@given(doc=documents(), data=st.data())
def test_remove_force_keeps_every_other_profile_resolving_the_same(doc: Doc, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(doc.names))
    after = remove_profile(doc.text, name, force=True)
    validate_text(after)
    loaded = tomllib.loads(after)
    assert name not in loaded.get("profiles", {})
    before = _resolved(doc.text)
    now = _resolved(after)
    assert set(now) == set(before) - {name}
    for other in now:
        assert now[other] == before[other], other
    children = [n for n in doc.names if doc.data["profiles"][n].get("extends") == name]
    for other in doc.names:
        if other != name and other not in children:
            assert loaded["profiles"][other] == doc.data["profiles"][other]
        elif other in children:
            assert loaded["profiles"][other].get("extends") == doc.data["profiles"][name].get("extends")


@SETTINGS
@given(doc=documents(), data=st.data())
def test_remove_cascade_takes_the_dependants_and_keeps_the_rest(doc: Doc, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(doc.names))
    after = remove_profile(doc.text, name, cascade=True, force=True)
    validate_text(after)
    loaded = tomllib.loads(after).get("profiles", {})
    profiles = doc.data["profiles"]

    def reaches(n: str) -> bool:
        seen = set()
        while n is not None and n not in seen:
            if n == name:
                return True
            seen.add(n)
            n = profiles[n].get("extends")
        return False

    assert set(loaded) == {n for n in doc.names if not reaches(n)}
    for other in loaded:
        assert loaded[other] == profiles[other]
    # Every line left is a line of the original, in order (blank lines aside).
    _, added = _changed_lines(doc.text, after)
    assert [line for line in added if line.strip()] == []


@SETTINGS
@given(doc=documents(), data=st.data())
def test_snippet_splices_back_exactly(doc: Doc, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(doc.names))
    snippet = profile_snippet(doc.text, name)
    assert tomllib.loads(snippet)["profiles"][name] == doc.data["profiles"][name]
    assert replace_profile(doc.text, name, snippet) == doc.text


@SETTINGS
@given(doc=documents(), data=st.data())
def test_crlf_files_stay_crlf(doc: Doc, data: st.DataObject) -> None:
    text = doc.text.replace("\n", "\r\n")
    name = data.draw(st.sampled_from(doc.names))
    key = data.draw(st.sampled_from(sorted(EDIT_VALUES)))
    value = data.draw(EDIT_VALUES[key])
    after = set_value(text, name, key, value)
    assert "\n" not in after.replace("\r\n", "")
    assert tomllib.loads(after) == tomllib.loads(set_value(doc.text, name, key, value))
    if _get(doc.data, ["profiles", name, *key.split(".")]) is None:
        assert unset_value(after, name, key) == text
