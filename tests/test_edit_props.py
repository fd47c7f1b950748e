"""Property tests of punie.config.edit: random valid files with comments, random edits."""

from __future__ import annotations

import copy
import os
import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

SETTINGS = settings(max_examples=int(os.environ.get("EDIT_PROPS_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAMES = st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=6)
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
EDIT_VALUES: dict[str, st.SearchStrategy[Any]] = {
    **{k: v for k, v in TOP_VALUES.items()},
    **{f"server.{k}": v for k, v in SERVER_VALUES.items()},
    **{f"agent.{k}": v for k, v in AGENT_VALUES.items()},
    "agent.permissions.write_file": st.sampled_from(["ask", "allow", "deny"]),
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


@st.composite
def documents(draw: st.DrawFn) -> Doc:
    names = draw(st.lists(NAMES, unique=True, min_size=1, max_size=4))
    text = ""
    if draw(st.booleans()):
        text += draw(COMMENT) + "\n"
    if draw(st.booleans()):
        text += _kv_line(draw, "default_profile", draw(st.sampled_from(names)))
    if draw(st.booleans()):
        text += "\n[defaults]\n" + "".join(_kv_line(draw, k, v) for k, v in _pairs(draw, TOP_VALUES, 1))
    for position, name in enumerate(names):
        text += "\n" if text else ""
        text += _filler(draw)
        tables: list[tuple[str, list[tuple[str, Any]]]] = []
        own: list[str] = []
        top = _pairs(draw, TOP_VALUES, 0)
        if position and draw(st.booleans()):
            top.append(("extends", draw(st.sampled_from(names[:position]))))
        for sub, values in (("server", SERVER_VALUES), ("agent", AGENT_VALUES)):
            form = draw(st.sampled_from(["none", "dotted", "table", "inline"]))
            if form == "none":
                continue
            pairs = _pairs(draw, values, 1)
            if form == "dotted":
                own.extend(_kv_line(draw, f"{sub}.{k}", v) for k, v in pairs)
            elif form == "inline":
                inner = ", ".join(f"{k} = {_render_value(draw, v)}" for k, v in pairs)
                own.append(f"{sub} = {{ {inner} }}\n")
            else:
                tables.append((sub, pairs))
        own.extend(_kv_line(draw, k, v) for k, v in top)
        own = draw(st.permutations(own))
        implicit = not own and tables and draw(st.booleans())
        if not implicit:
            if draw(st.integers(0, 3)) == 0:
                text += draw(COMMENT) + "\n"
            text += f"[profiles.{name}]\n" + "".join(own)
            if not own:
                # An explicit header with no key of its own is what `unset` tidies away
                # (see the module doc of punie.config.edit): not generated here.
                text += _kv_line(draw, "description", draw(SAFE_TEXT))
        for sub, pairs in tables:
            text += "\n" if not implicit or sub != tables[0][0] else ""
            text += f"[profiles.{name}.{sub}]\n" + "".join(_kv_line(draw, k, v) for k, v in pairs)
        text += _filler(draw) if draw(st.booleans()) else ""
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


def _drop(data: dict[str, Any], parts: list[str]) -> None:
    """Delete a key and the tables it leaves empty (never the profile itself)."""
    chain = [data]
    for part in parts[:-1]:
        chain.append(chain[-1][part])
    del chain[-1][parts[-1]]
    for depth in range(len(parts) - 1, 2, -1):
        if chain[depth] == {}:
            del chain[depth - 1][parts[depth - 1]]


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
    expected = copy.deepcopy(doc.data)
    _drop(expected, ["profiles", name, *parts])
    kept = copy.deepcopy(doc.data)  # an emptied table that has a comment of its own stays
    _drop(kept, ["profiles", name, *parts[-1:]] if len(parts) == 1 else ["profiles", name, *parts[:-1], parts[-1]])
    kept_table = _get(kept, ["profiles", name, *parts[:-1]])
    loaded = tomllib.loads(after)
    if loaded != expected:
        assert len(parts) > 1 and kept_table is None  # _drop removed it; the file kept it
        assert _get(loaded, ["profiles", name, *parts[:-1]]) == {}
        assert f"[profiles.{name}.{'.'.join(parts[:-1])}]" in after
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
    assert loaded["profiles"][new] == {
        k: v for k, v in doc.data["profiles"][old].items()
    }
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
    assert remove_profile(added, new).rstrip("\n") == doc.text.rstrip("\n")

    empty = new_profile(doc.text, new)
    assert tomllib.loads(empty)["profiles"][new] == {}
    assert remove_profile(empty, new).rstrip("\n") == doc.text.rstrip("\n")


@SETTINGS
@given(doc=documents(), data=st.data())
def test_remove_keeps_other_profiles(doc: Doc, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(doc.names))
    after = remove_profile(doc.text, name, force=True)
    validate_text(after)
    loaded = tomllib.loads(after)
    assert name not in loaded.get("profiles", {})
    for other in doc.names:
        if other != name:
            expected = dict(doc.data["profiles"][other])
            if expected.get("extends") == name:
                del expected["extends"]
            assert loaded["profiles"][other] == expected
    # Every line left is a line of the original, in order.
    removed, added = _changed_lines(doc.text, after)
    assert added == []


@SETTINGS
@given(doc=documents(), data=st.data())
def test_snippet_splices_back_exactly(doc: Doc, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(doc.names))
    snippet = profile_snippet(doc.text, name)
    assert tomllib.loads(snippet)["profiles"][name] == doc.data["profiles"][name]
    assert replace_profile(doc.text, name, snippet) == doc.text
