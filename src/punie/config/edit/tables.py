"""tomlkit helpers for punie.config.edit: where a new key goes, when a table is empty.

Internal to the editing code: they work on tomlkit's parse tree through its
public API only (items, ``Table.value.body``, trivia, ``is_super_table()``);
what that API cannot express (a new header for a table written only through
its sub-tables, whether a table is written as dotted keys) is done on the text
in punie.config.edit.sections. The property tests pin the result byte for byte.
"""

from __future__ import annotations

from typing import Any

import tomlkit
from tomlkit.container import Container, OutOfOrderTableProxy
from tomlkit.items import (
    AoT,
    Comment,
    InlineTable,
    Item,
    Null,
    String,
    StringType,
    Table,
    Whitespace,
)


def new_item(value: Any, old: Item | None = None) -> Item:
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
            table[key] = new_item(sub)
        return table
    return tomlkit.item(value)


def is_container(item: Any) -> bool:
    return isinstance(item, (Table, InlineTable, OutOfOrderTableProxy))


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


def table_add(table: Any, parts: list[str], item: Item) -> None:
    """Add ``parts = item`` to a (non-inline, not super) table, placed after its last key/value."""
    key = tomlkit.key(parts if len(parts) > 1 else parts[0])
    if not isinstance(table, Table):  # out-of-order proxy: let tomlkit place it
        table.add(key, item)
        return
    body = table.value.body
    before = {id(value) for _, value in body}
    # tomlkit may pad a neighbour (a newline in front of the next table); the
    # place is chosen here, so every existing item keeps its spacing.
    spacing = [(value, _trivia(value)) for _, value in body]
    pos = _insert_pos(table, parts[0] if len(parts) > 1 else None)
    table.add(key, item)
    for value, saved in spacing:
        _restore_trivia(value, saved)
    new = [i for i, (_, value) in enumerate(body) if id(value) not in before]
    if len(new) == 1 and new[0] != pos:
        body.insert(pos, body.pop(new[0]))
        # Indices changed: only the rendering is used from here on (callers re-parse).


def _trivia(item: Item) -> tuple[str, str, str, str] | None:
    if isinstance(item, (Whitespace, Null)):
        return None
    trivia = item.trivia
    return (trivia.indent, trivia.comment_ws, trivia.comment, trivia.trail)


def _restore_trivia(item: Item, saved: tuple[str, str, str, str] | None) -> None:
    if saved is not None:
        item.trivia.indent, item.trivia.comment_ws, item.trivia.comment, item.trivia.trail = saved


def is_empty(item: Any) -> bool:
    """True for a table with no keys and no comment of its own.

    Comments after a blank line at the end of a table are the heading of the
    next table, not this one's: they do not count (and survive its removal).
    """
    if isinstance(item, (InlineTable, OutOfOrderTableProxy)):
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


def remove_table(parent: Any, key: str) -> None:
    """Delete ``parent[key]``, keeping the comments that head the following table."""
    item = parent[key]
    kept: list[Item] = []
    if isinstance(item, Table):
        body = item.value.body
        first = next((i for i, (_, v) in enumerate(body) if isinstance(v, Comment)), None)
        if first is not None:
            kept = [v for _, v in body[first:]]
    container = parent.value if isinstance(parent, Table) else parent
    indices = (
        [i for i, (k, _) in enumerate(container.body) if k is not None and k.key == key]
        if isinstance(container, Container)
        else []
    )
    del parent[key]
    if kept and len(indices) == 1:
        container.body[indices[0] + 1 : indices[0] + 1] = [(None, v) for v in kept]


def only_subtables(table: Table) -> bool:
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


def implicit_sole(prof: Any) -> bool:
    """A profile with no ``[profiles.NAME]`` header of its own and a single sub-table."""
    return isinstance(prof, Table) and prof.is_super_table() and len(prof) == 1


def render_key(part: str) -> str:
    return tomlkit.key(part).as_string()


def nested_key(parts: list[str]) -> str:
    """``a.b`` for parts [a, b], each part quoted when it needs it."""
    return ".".join(render_key(p) for p in parts)


def nested_text(parts: list[str], item: Item) -> str:
    """``a = { b = v }`` for parts [a, b]: what goes into an inline table."""
    if len(parts) == 1:
        return f"{render_key(parts[0])} = {item.as_string()}"
    return f"{render_key(parts[0])} = {{ {nested_text(parts[1:], item)} }}"


def inline_item(text: str) -> Item:
    return tomlkit.parse(f"v = {text}\n")["v"]


def replace_item(parent: Any, key: str, new: Item) -> None:
    parent[key] = new
