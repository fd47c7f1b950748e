"""Resolving a named profile into a `ResolvedProfile`.

Layers, lowest first: model field defaults < ``[defaults]`` < the `extends`
chain (base first) < the profile's own table < ``PUNIE_*`` environment
variables < ``--set`` overrides. Tables merge key by key; lists and scalars
replace. Setting `adapter` in a layer clears `adapters` from the layers below
(and the other way round): they are two spellings of one choice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from punie import envvars
from punie.config import keys
from punie.config.embedded import EMBEDDED_DEFAULT_TOML, EMBEDDED_NAME
from punie.config.envnames import ENV_DELIMITER, ENV_PREFIX, FILE_ONLY_FIELDS, NON_PROFILE_ENV
from punie.config.loader import (
    CONFIG_NAME,
    MAX_CONFIG_BYTES,
    ConfigProblem,
    ConfigSource,
    raise_problems,
    read_config,
    validation_problems,
)
from punie.config.locate import KeyPath, document_lines, dotted, line_of
from punie.config.models import Profile, ResolvedProfile, flat_server_key, nest_flat_server_keys
from punie.config.overrides import deep_merge, is_table, overrides_to_dict
from punie.errors import ConfigError, CorruptFileError, did_you_mean
from punie.jsonio import read_text_file

logger = logging.getLogger(__name__)

LEAF_KEYS: tuple[str, ...] = tuple(keys.leaf_keys(Profile))
_LEAF_SET = frozenset(LEAF_KEYS)
_DEFAULT_SOURCES = dict.fromkeys(LEAF_KEYS, "default")
_EXCLUSIVE = {"adapter": "adapters", "adapters": "adapter"}


def select_profile(source: ConfigSource, name: str | None, env: Mapping[str, str]) -> str:
    """The profile to use: ``name``, else $PUNIE_PROFILE, else default_profile, else the only one."""
    names = source.profile_names
    if not names:
        raise ConfigError(
            "no profiles defined",
            where=source.display,
            hint='add a profile table, e.g.\n    [profiles.demo]\n    model = "builtin:smollm2-135m-instruct"',
        )
    where = source.display
    if name is None and env.get(envvars.PROFILE):
        name, where = env[envvars.PROFILE], envvars.PROFILE
    if name is None and source.file.default_profile is not None:
        name = source.file.default_profile
    if name is None and len(names) == 1:
        name = names[0]
    if name is None:
        raise ConfigError(
            f"no profile named and no default_profile set; profiles: {', '.join(names)}",
            where=source.display,
            hint=f'name one (e.g. `punie up {names[0]}`), set PUNIE_PROFILE, or add default_profile = "{names[0]}" '
            "at the top of the file",
        )
    check_profile_name(source, name, where=where)
    return name


def check_profile_name(source: ConfigSource, name: str, *, where: str | None = None) -> None:
    """Raise ConfigError (with "did you mean") unless ``name`` is a profile of ``source``."""
    if name in source.file.profiles:  # a dict: no list of 5,000 names built per question
        return
    names = source.profile_names
    if source.embedded:  # as when an IDE starts `punie up NAME` outside the project
        raise ConfigError(
            f"no {CONFIG_NAME} found in {Path.cwd()} or its parents, and '{name}' is not a built-in profile",
            where=where if where and where != source.display else None,
            hint=f"name one with --config FILE or PUNIE_CONFIG (built-in profiles: {', '.join(names)})",
        )
    hint = did_you_mean(name, names)
    raise ConfigError(
        f"unknown profile '{name}'" + (f", {hint}" if hint else ""),
        where=where or source.display,
        hint=f"profiles: {', '.join(names) or 'none'}",
    )


#: Key path -> the profile key it sets (None: none), for every path seen: 5,000 profiles write the same few.
_LEAF_NAMES: dict[KeyPath, str | None] = {}
_LEAF_NAMES_SIZE = 4096  # free tables (agent.env, chat_template_args) may hold any keys: bounded


def _leaf_name(path: KeyPath) -> str | None:
    found = _LEAF_NAMES.get(path, _LEAF_NAMES)
    if found is not _LEAF_NAMES:
        return found  # type: ignore[return-value]
    leaf = ".".join(keys.leaf_of(path))
    name = leaf if leaf in _LEAF_SET else None
    if len(_LEAF_NAMES) < _LEAF_NAMES_SIZE:
        _LEAF_NAMES[path] = name
    return name


def _record(sources: dict[str, str], table: Mapping[str, Any], label: str, prefix: KeyPath = ()) -> None:
    """Note ``label`` as the origin of every profile key ``table`` sets (its leaves, as `leaves` walks them)."""
    for key, sub in table.items():
        path = (*prefix, str(key))
        if is_table(sub) and sub:
            _record(sources, sub, label, path)
        elif (leaf := _leaf_name(path)) is not None:
            sources[leaf] = label


def _nested(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """One layer with its flat server keys (``server.ready_timeout``...) moved into their tables, so a
    flat key in one layer and the table form in another merge as one setting (the higher layer wins)."""
    server = table.get("server")
    if not isinstance(server, dict):
        return dict(table)
    try:
        return {**table, "server": nest_flat_server_keys(server)}
    except ValueError as exc:
        raise ConfigError(str(exc), where=where) from None


def _layer(merged: dict[str, Any], sources: dict[str, str], table: Mapping[str, Any], label: str) -> dict[str, Any]:
    """Apply one layer on top of ``merged``, recording where each leaf came from."""
    table = {k: v for k, v in _nested(table, label).items() if k not in FILE_ONLY_FIELDS}
    for key, other in _EXCLUSIVE.items():
        if key in table and other in merged:
            merged = {k: v for k, v in merged.items() if k != other}
            sources.pop(other, None)
    _record(sources, table, label)
    return deep_merge(merged, table)


_Memo = dict[str | None, tuple[dict[str, Any], dict[str, str]]]


def _inherited(source: ConfigSource, name: str, memo: _Memo) -> tuple[dict[str, Any], dict[str, str]]:
    """(merged table, key origins) of ``[defaults]`` and the `extends` ancestors of ``name``.

    ``memo[p]`` holds the same for a profile ``p`` whose own table is counted as an
    ancestor's (``memo[None]``: ``[defaults]`` alone): the walk stops at the nearest remembered
    ancestor, and every step applies one layer (the layers are never mutated: `_layer` returns
    new tables), so ``[defaults]`` is layered once per file, not once per profile.
    """
    raw_profiles: dict[str, Any] = source.data.get("profiles", {})
    profiles = source.file.profiles
    chain: list[str] = []  # ancestors not remembered yet, nearest first
    seen = {name}
    current = profiles[name].extends
    while current is not None and current not in memo and current not in seen:  # the file is acyclic
        chain.append(current)
        seen.add(current)
        current = profiles[current].extends
    if current is not None and current in memo:
        merged, sources = memo[current]
    elif None in memo:
        merged, sources = memo[None]
    else:
        sources = {}
        merged = _layer({}, sources, source.data.get("defaults", {}), "file (defaults)")
        memo[None] = (merged, sources)
    for ancestor in reversed(chain):
        sources = dict(sources)
        merged = _layer(merged, sources, raw_profiles[ancestor], f"file (extends {ancestor})")
        memo[ancestor] = (merged, sources)
    return merged, sources


def _drop_exclusive(lower: dict[str, Any], higher: Mapping[str, Any]) -> dict[str, Any]:
    if not any(h in _EXCLUSIVE for h in higher):
        return lower  # nothing to drop (the usual case): no copy per profile
    return {k: v for k, v in lower.items() if not any(k == _EXCLUSIVE[h] for h in higher if h in _EXCLUSIVE)}


def _has_path(data: Any, path: Sequence[object]) -> bool:
    for part in path:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return False
    return True


def _env_name(path: Sequence[object], env_layer: Mapping[str, Any]) -> str:
    # The variable is named by the longest prefix of the path that the environment set.
    parts = [str(p) for p in path if not isinstance(p, int)]
    while len(parts) > 1 and not _has_path(env_layer, parts):
        parts.pop()
    return ENV_PREFIX + ENV_DELIMITER.join(parts).upper()


def _cli_text(path: Sequence[object], origin: Mapping[tuple[str, ...], str]) -> str:
    parts = tuple(str(p) for p in path if not isinstance(p, int))
    for end in range(len(parts), 0, -1):
        if parts[:end] in origin:
            return origin[parts[:end]]
    return next(iter(origin.values()), "")


def _read_env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    fields = {name for name in Profile.model_fields if name not in FILE_ONLY_FIELDS}
    profile_vars = False
    for var in env:
        upper = var.upper()
        if not upper.startswith(ENV_PREFIX):
            continue
        head = upper[len(ENV_PREFIX) :].split(ENV_DELIMITER, 1)[0]
        if head.lower() in FILE_ONLY_FIELDS:
            raise ConfigError(f"'{head.lower()}' can only be set in the profiles file", where=var)
        if head not in NON_PROFILE_ENV and head.lower() not in fields:
            hint = did_you_mean(head.lower(), fields)
            logger.warning("ignoring %s: not a profile key%s", var, f" ({hint})" if hint else "")
        profile_vars = profile_vars or head.lower() in fields
    if not profile_vars:  # nothing for pydantic-settings to read: do not import it
        return {}
    from pydantic_settings import SettingsError

    from punie.config.settings import read_env

    try:
        return read_env(env)
    except SettingsError as exc:
        field = str(exc).split('"')[1] if '"' in str(exc) else ""
        names = sorted(v for v in env if v.upper().startswith(ENV_PREFIX + field.upper()))
        raise ConfigError(
            f"{field}: value is not valid JSON (lists and tables are written as JSON, "
            'e.g. PUNIE_AGENT__TOOLS=\'["read_file"]\')',
            where=", ".join(names) or "environment",
        ) from None


def resolve_profile(
    source: ConfigSource,
    name: str,
    *,
    env_layer: dict[str, Any],
    cli_layer: dict[str, Any],
    cli_origin: Mapping[tuple[str, ...], str],
    memo: _Memo | None = None,
) -> ResolvedProfile:
    """Merge one profile's layers and validate the result (the name is known to exist).

    ``memo`` (one per file, shared by the profiles resolved together) keeps what each
    profile contributes as an `extends` parent, so resolving every profile of a long
    chain costs one merge per profile, not one per ancestor.
    """
    raw_profiles: dict[str, Any] = source.data.get("profiles", {})
    env_layer = _nested(env_layer, "environment")
    cli_layer = _nested(cli_layer, "--set")
    cli_origin = {(flat_server_key(path) or path): text for path, text in cli_origin.items()}
    inherited, sources = _inherited(source, name, {} if memo is None else memo)
    sources = dict(sources)
    merged = _layer(inherited, sources, raw_profiles[name], "file")
    env_used = _drop_exclusive(env_layer, cli_layer)
    file_used = _drop_exclusive(_drop_exclusive(merged, env_used), cli_layer)
    for label, layer in (("env", env_used), ("cli", cli_layer)):
        for key, other in _EXCLUSIVE.items():
            if key in layer:
                sources.pop(other, None)
        _record(sources, layer, label)
    own_extends = raw_profiles[name].get("extends")
    try:
        if env_used or cli_layer:
            from punie.config.settings import build_profile

            profile = build_profile(file_used, env_used, cli_layer, extends=own_extends)
        else:  # the file alone: what pydantic-settings would validate, without loading it
            profile = Profile(**file_used, extends=own_extends)
    except ValidationError as exc:
        everything = deep_merge(deep_merge(file_used, env_used), cli_layer)

        def where(full: Sequence[object]) -> str:
            path = tuple(full[2:])
            # The exact key first; a missing key is blamed on the layer that wrote its table.
            for candidate in (path, path[:-1]):
                if candidate and _has_path(cli_layer, candidate):
                    return "--set " + _cli_text(path, cli_origin)
                if candidate and _has_path(env_used, candidate):
                    return _env_name(path, env_used)
            return source.where(full)

        problems = validation_problems(exc, everything, where, prefix=("profiles", name))
        raise_problems(problems, where=source.where(("profiles", name)))
    # A profile on an already running server (server.url) starts no model, so needs none.
    if profile.model is None and profile.server.url is None:
        raise ConfigError(
            f"{dotted(('profiles', name))}: no model set",
            where=source.where(("profiles", name)),
            hint=f'add model = "..." to [{dotted(("profiles", name))}] or [defaults], '
            "or set PUNIE_MODEL / --set model=..., or server.url to use a running server",
        )
    all_sources = {**_DEFAULT_SOURCES, **sources}  # sources holds leaf keys only (_record): LEAF_KEYS' order
    if own_extends is not None:
        all_sources["extends"] = "file"
    return ResolvedProfile(
        name=name,
        config_path=str(source.path) if source.path is not None else None,
        profile=profile,
        sources=all_sources,
    )


def load_profiles(
    names: Sequence[str] = (),
    *,
    config: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    fallback: str | None = EMBEDDED_DEFAULT_TOML,
) -> list[ResolvedProfile]:
    """Resolve several profiles (all of the file, in file order, when ``names`` is empty).

    ``config`` (else $PUNIE_CONFIG, else `punie.toml` in ``cwd`` or a parent)
    names the file; when none is asked for and none is found, ``fallback``
    TOML is used (the embedded `demo` profile; pass None to make that an
    error). ``overrides`` are ``KEY=VALUE`` strings applied last; ``env``
    replaces os.environ. Raises ConfigError for every configuration problem.
    """
    environ = os.environ if env is None else env
    try:
        source = read_config(config, env=environ, cwd=cwd, fallback=fallback)
        return resolve_many(source, names, overrides=overrides, env=environ)
    except RecursionError:
        raise ConfigError("configuration values are nested too deeply") from None


def resolve_many(
    source: ConfigSource, names: Sequence[str] = (), *, overrides: Sequence[str] = (), env: Mapping[str, str]
) -> list[ResolvedProfile]:
    """Resolve ``names`` (all profiles when empty) of an already read file."""
    selected = list(names) or source.profile_names
    for name in selected:
        check_profile_name(source, name)
    cli_layer, cli_origin = overrides_to_dict(overrides)
    env_layer = _read_env_layer(env)
    memo: _Memo = {}
    return [
        resolve_profile(source, name, env_layer=env_layer, cli_layer=cli_layer, cli_origin=cli_origin, memo=memo)
        for name in selected
    ]


def load_profile(
    name: str | None = None,
    *,
    config: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    fallback: str | None = EMBEDDED_DEFAULT_TOML,
) -> ResolvedProfile:
    """Resolve one profile: ``name``, else $PUNIE_PROFILE, else the file's
    default_profile, else its only profile. See `load_profiles` for the rest."""
    environ = os.environ if env is None else env
    try:
        return resolve_one(read_config(config, env=environ, cwd=cwd, fallback=fallback), name,
                           overrides=overrides, env=environ)
    except RecursionError:
        raise ConfigError("configuration values are nested too deeply") from None


def resolve_one(source: ConfigSource, name: str | None, *, overrides: Sequence[str] = (),
                env: Mapping[str, str]) -> ResolvedProfile:
    """The profile ``name`` (else the one `select_profile` picks) of a file already read, resolved."""
    chosen = select_profile(source, name, env)
    cli_layer, cli_origin = overrides_to_dict(overrides)
    return resolve_profile(source, chosen, env_layer=_read_env_layer(env), cli_layer=cli_layer, cli_origin=cli_origin)


@dataclass(frozen=True)
class ProfileListing:
    """All profiles of a file, resolved, for `punie profiles`."""

    config_path: str | None
    display: str
    default: str | None
    profiles: list[ResolvedProfile]


def list_profiles(
    *,
    config: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    fallback: str | None = EMBEDDED_DEFAULT_TOML,
) -> ProfileListing:
    """Every profile resolved, and the one `load_profile(None)` would pick (None when
    that needs a name)."""
    environ = os.environ if env is None else env
    source = read_config(config, env=environ, cwd=cwd, fallback=fallback)
    try:
        default: str | None = select_profile(source, None, environ)
    except ConfigError:
        default = None
    try:
        resolved = resolve_many(source, overrides=overrides, env=environ)
    except RecursionError:
        raise ConfigError("configuration values are nested too deeply") from None
    return ProfileListing(
        config_path=str(source.path) if source.path is not None else None,
        display=source.display,
        default=default,
        profiles=resolved,
    )


def written_at(resolved: ResolvedProfile, key: str) -> KeyPath:
    """The path in the profiles file where ``key`` of a resolved profile is written:
    ``defaults.server.port``, the ancestor's table for ``extends``, else the profile's own.
    A value left at its default (or set by env / --set) gives the profile's table."""
    origin = resolved.sources.get(key, "default")
    parts = tuple(key.split("."))
    if origin == "file (defaults)":
        return ("defaults", *parts)
    if origin.startswith("file (extends "):
        return ("profiles", origin[len("file (extends ") : -1], *parts)
    if origin == "file":
        return ("profiles", resolved.name, *parts)
    return ("profiles", resolved.name)


def describe_source(resolved: ResolvedProfile, key: str) -> str:
    """Where ``key`` (dotted, e.g. ``server.port``) of a resolved profile was set, as a place
    to put in front of a message: ``punie.toml:14``, ``PUNIE_SERVER__PORT``, ``--set server.port``.

    Values left at their default point at the profile's table.
    """
    origin = resolved.sources.get(key, "default")
    if origin == "cli":
        return f"--set {key}"
    if origin == "env":
        return ENV_PREFIX + ENV_DELIMITER.join(key.split(".")).upper()
    # The file was validated when the profile was resolved: only its key lines are needed.
    if resolved.config_path is None:
        display, lines = EMBEDDED_NAME, document_lines(EMBEDDED_DEFAULT_TOML)
    else:
        path = Path(resolved.config_path)
        display = path.name
        try:
            lines = _lines_of_file(path)
        except (OSError, CorruptFileError):
            return display
    line = line_of(lines, written_at(resolved, key))
    return f"{display}:{line}" if line else display


_LINES_CACHE: dict[tuple[str, int, int, int], dict[KeyPath, int]] = {}


def _lines_of_file(path: Path) -> dict[KeyPath, int]:
    """The key lines of a profiles file, read once per version of the file (by size, time and inode) and
    scanned once per text: a check naming places in 5,000 profiles reads the file once, not once per
    message, and scans it once with the loader that read it first."""
    st = os.stat(path)
    signature = (str(path.absolute()), st.st_size, st.st_mtime_ns, st.st_ino)
    found = _LINES_CACHE.get(signature)
    if found is None:
        found = document_lines(read_text_file(path, max_bytes=MAX_CONFIG_BYTES, encoding="utf-8-sig"))
        _LINES_CACHE.clear()  # one file at a time is what a command reads
        _LINES_CACHE[signature] = found
    return found


__all__ = [
    "LEAF_KEYS",
    "ConfigProblem",
    "ProfileListing",
    "check_profile_name",
    "describe_source",
    "list_profiles",
    "load_profile",
    "load_profiles",
    "resolve_profile",
    "select_profile",
    "written_at",
]
