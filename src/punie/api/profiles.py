"""Profiles as the ``punie profiles`` and ``punie schema`` commands see them: listing, showing, editing
punie.toml, its JSON schema and the names shell completion offers.

`punie.api.load_profile` and `punie.api.load_profiles` resolve profiles; the edits here are the
ones of ``punie profiles new|set|unset|rename|rm|edit``: each is validated before the file is
(atomically) replaced, with comments and formatting outside the changed value kept.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from punie.config import EMBEDDED_NAME as EMBEDDED_NAME
from punie.config.edit import apply_edit as apply_edit
from punie.config.edit import create_profile as create_profile
from punie.config.edit import dependants as dependants
from punie.config.edit import parse_value as parse_value
from punie.config.edit import profile_snippet as profile_snippet
from punie.config.edit import remove_profile as remove_profile
from punie.config.edit import rename_profile as rename_profile
from punie.config.edit import replace_profile as replace_profile
from punie.config.edit import set_value as set_value
from punie.config.edit import unset_value as unset_value
from punie.config.loader import find_config as find_config
from punie.config.locate import dotted as dotted
from punie.config.models import AdapterRef as AdapterRef
from punie.config.models import AgentOptions as AgentOptions
from punie.config.models import Profile as Profile
from punie.config.models import ResolvedProfile as ResolvedProfile
from punie.config.resolve import LEAF_KEYS as LEAF_KEYS
from punie.config.resolve import ProfileListing as ProfileListing
from punie.config.schema import SCHEMA_RELPATH as SCHEMA_RELPATH
from punie.config.schema import check_schema as check_schema
from punie.config.schema import schema_text as schema_text
from punie.config.schema import write_schema as write_schema
from punie.paths import CONFIG_NAME as CONFIG_NAME

__all__ = [
    "CONFIG_NAME", "EMBEDDED_NAME", "LEAF_KEYS", "SCHEMA_RELPATH", "AdapterRef", "AgentOptions", "Profile",
    "ProfileListing", "ResolvedProfile", "apply_edit", "check_schema", "create_profile", "dependants", "dotted",
    "find_config", "list_profiles", "parse_value", "profile_names", "profile_snippet", "project_dir",
    "remove_profile", "rename_profile", "replace_profile", "schema_text", "set_value", "shown_keys",
    "unset_value", "write_schema",
]


def list_profiles(config: str | os.PathLike[str] | None = None, *, overrides: Sequence[str] = ()) -> ProfileListing:
    """Every profile of ``config`` (None: the CLI's lookup) resolved, and the one used when none is named."""
    from punie.config import list_profiles as _list

    return _list(config=config, overrides=overrides)


def profile_names(config: str | os.PathLike[str] | None = None) -> list[str]:
    """The profile names of the file, unresolved (cheap: what shell completion offers)."""
    from punie.config import read_config

    return list(read_config(config).profile_names)


def project_dir(config: str | os.PathLike[str] | None = None) -> Path:
    """The project a command works in: the directory of the profiles file found (``config`` or the
    lookup from here), else the current directory."""
    found = find_config(config)
    return found.parent if found else Path.cwd()


def shown_keys(backend: str, *, every: bool = False) -> list[str]:
    """The keys ``profiles show`` lists for a profile on ``backend``: not those only another backend
    reads (its ``key_prefixes``, `punie.launch.backends`), unless ``every``."""
    from punie.launch.backends import BACKENDS, backend_of

    own = backend_of(backend)
    other = [prefix for b in BACKENDS.values() if b is not own for prefix in b.key_prefixes]
    return [k for k in LEAF_KEYS if every or not k.startswith(tuple(other))]
