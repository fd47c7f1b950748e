"""``set`` and ``unset`` of one key of a profile."""

from __future__ import annotations

from typing import Any

from tomlkit.items import AoT, InlineTable, Item, Table

from punie.config.edit.document import (
    Step,
    check_key,
    get_profile,
    is_table_field,
    keeps_line_endings,
    parse_doc,
    profiles_of,
    split_key,
    walk,
    where_of,
)
from punie.config.edit.inline import inline_add, inline_remove
from punie.config.edit.sections import insert_header, remove_header, written_dotted
from punie.config.edit.tables import (
    implicit_sole,
    inline_item,
    is_container,
    is_empty,
    nested_key,
    nested_text,
    new_item,
    only_subtables,
    remove_table,
    replace_item,
    table_add,
)
from punie.errors import ConfigError, UsageError

# --------------------------------------------------------------------------- set / unset


def _flat_table_value(prof: Any, parts: list[str] | tuple[str, ...], value: Any) -> tuple[str, ...] | None:
    """Where a plain value for a table key goes, when that table had a flat form (``server.restart``):
    the flat value itself when the profile writes it so, else its table's key (``server.restart.policy``)."""
    if tuple(parts) != ("server", "restart") or isinstance(value, dict):
        return None
    server = prof.get("server") if hasattr(prof, "get") else None
    current = server.get("restart") if hasattr(server, "get") else None
    if current is not None and not is_container(current):
        return tuple(parts)  # written flat: replaced in place
    return ("server", "restart", "policy")


@keeps_line_endings
def set_value(text: str, profile: str, key: str, value: Any) -> str:
    """Return ``text`` with ``profiles.PROFILE.KEY`` set to ``value``.

    ``value`` is a Python value (see ``parse_value``) or a tomlkit item. An existing
    key is changed in place (its comment and, for strings, its quoting kept);
    a missing one is added next to its siblings.
    """
    parts = split_key(key)
    where = where_of(profile)
    check_key(parts, where=where)
    doc = parse_doc(text)
    prof = get_profile(doc, profile)
    if is_table_field(parts) and (flat := _flat_table_value(prof, parts, value)) is not None:
        parts = flat  # ``server.restart = "on-failure"``, the flat form of [server.restart] policy
    elif is_table_field(parts):
        raise ConfigError(f"'{key}' is a table: set one of its keys (e.g. {key}.NAME)", where=where)
    steps = walk(prof, parts, where)
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
    base = ("profiles", profile)
    anchor = len(steps)
    while anchor > 0 and written_dotted(text, (*base, *parts[:anchor])):
        anchor -= 1
    if anchor < len(steps) and isinstance(steps[anchor].parent, InlineTable):
        anchor = len(steps)
    holder = steps[anchor - 1].item if anchor else prof
    rest = list(parts[anchor:])
    if isinstance(holder, Table) and holder.is_super_table():
        # A table written only through its sub-tables' headers gets a header of
        # its own, right above the first of them.
        return insert_header(text, (*base, *parts[:anchor]), f"{nested_key(rest)} = {item.as_string()}")
    table_add(holder, rest, item)
    return doc.as_string()


def _set_container(doc: Any, profile: str, steps: list[Step], new: Item) -> None:
    if steps:
        replace_item(steps[-1].parent, steps[-1].key, new)
    else:
        profiles_of(doc)[profile] = new


@keeps_line_endings
def unset_value(text: str, profile: str, key: str) -> str:
    """Return ``text`` without ``profiles.PROFILE.KEY``; tables left empty (and
    without comments) by the removal go too. Raises UsageError when it is not set."""
    parts = split_key(key)
    where = where_of(profile)
    check_key(parts, where=where)
    doc = parse_doc(text)
    prof = get_profile(doc, profile)
    steps = walk(prof, parts, where)
    if len(steps) < len(parts):
        raise UsageError(f"'{key}' is not set in this file", where=where)
    chain: list[Step] = [Step(None, profile, prof), *steps]
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
                profiles_of(doc)[profile] = new
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
        profiles_of(doc)[profile] = inline_item("{}")
    result = doc.as_string()
    if isinstance(prof, Table) and not prof.is_super_table() and only_subtables(prof):
        # Undo the header a `set` wrote for a profile that only had sub-tables.
        result = remove_header(result, ("profiles", profile))
    return result
