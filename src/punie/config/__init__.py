"""Profiles: finding, reading, checking and resolving `punie.toml`.

    from punie.config import load_profile
    resolved = load_profile("demo", overrides=["server.port=8081"])

Resolution order, lowest first: model defaults < ``[defaults]`` < the
`extends` chain < the profile's table < ``PUNIE_*`` variables < ``--set``.
Every configuration problem is a `punie.errors.ConfigError` naming its place.
"""

from __future__ import annotations

from punie.config.embedded import EMBEDDED_DEFAULT_TOML, EMBEDDED_NAME
from punie.config.loader import (
    CONFIG_NAME,
    ConfigSource,
    extends_chain,
    find_config,
    parse_config,
    read_config,
)
from punie.config.models import (
    AdapterRef,
    AgentOptions,
    FuseOptions,
    Permissions,
    Profile,
    PunieFile,
    ResolvedProfile,
    ServerOptions,
)
from punie.config.overrides import parse_override, parse_value
from punie.config.resolve import (
    LEAF_KEYS,
    ProfileListing,
    check_profile_name,
    describe_source,
    list_profiles,
    load_profile,
    load_profiles,
    select_profile,
)

__all__ = [
    "CONFIG_NAME",
    "EMBEDDED_DEFAULT_TOML",
    "EMBEDDED_NAME",
    "LEAF_KEYS",
    "AdapterRef",
    "AgentOptions",
    "ConfigSource",
    "FuseOptions",
    "Permissions",
    "Profile",
    "ProfileListing",
    "PunieFile",
    "ResolvedProfile",
    "ServerOptions",
    "check_profile_name",
    "describe_source",
    "extends_chain",
    "find_config",
    "list_profiles",
    "load_profile",
    "load_profiles",
    "parse_config",
    "parse_override",
    "parse_value",
    "read_config",
    "select_profile",
]
