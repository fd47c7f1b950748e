"""Editing `punie.toml` from the command line, keeping the file as the user wrote it.

Every edit is a pure function from text to text (``set_value``, ``unset_value``,
``new_profile``, ``rename_profile``, ``remove_profile``, ``replace_profile``):
comments, blank lines, key order and quoting outside the changed value stay
byte for byte (CRLF files stay CRLF). ``apply_edit`` reads the file, applies
one of them, validates the result with the loader's own checks (the models,
``extends``, ``default_profile``, every profile resolving) and only then
replaces the file atomically, all under the file's exclusive edit lock
(punie.config.atomic: concurrent edits serialise, a killed edit's temp file is
removed by the next one, a read-only or hard-linked file is refused, a symlink
is followed). An invalid edit raises ConfigError and the file is left untouched.

``remove_profile`` never leaves a broken ``extends``: it refuses while other
profiles extend the profile, unless ``cascade`` (they go too) or ``force``
(each is re-pointed and keeps resolving exactly as before). ``create_profile``
gives a copy a port no other profile of the file uses.

Modules: ``document`` (parsing, keys, line endings), ``values`` (set/unset),
``profiles`` (new/rename/rm/snippets), ``files`` (validation, apply_edit),
``tables`` (tomlkit, public API only), ``sections`` and ``inline`` (line and
inline-table surgery). Keys and strings are read by the one lexer,
punie.config.lexer, which locate.py shares.

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

from punie.config.edit.document import check_key, parse_value, profile_names, split_key
from punie.config.edit.files import apply_edit, validate_text
from punie.config.edit.profiles import (
    create_profile,
    dependants,
    free_port,
    new_profile,
    profile_snippet,
    remove_profile,
    rename_profile,
    replace_profile,
)
from punie.config.edit.values import set_value, unset_value

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
