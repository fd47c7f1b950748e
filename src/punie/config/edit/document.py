"""The document side of the editor: parsing, line endings, keys, walking a profile."""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import tomlkit
from pydantic import BaseModel

from punie.config import keys, lexer, overrides
from punie.config.edit.tables import is_container
from punie.config.locate import dotted, toml_syntax_error
from punie.config.models import Profile
from punie.errors import ConfigError, UsageError, did_you_mean
from punie.paths import CONFIG_NAME

# --------------------------------------------------------------------------- line endings

_F = TypeVar("_F", bound=Callable[..., str])


def keeps_line_endings(fn: _F) -> _F:
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
    parts = lexer.split_key(key)
    if not parts:
        raise UsageError(f"not a valid key: {key!r}", hint="write it like server.port or agent.permissions.write_file")
    return list(parts)


def check_key(parts: Sequence[str], *, where: str | None = None) -> None:
    """Refuse a key that is not a field of a profile, with a did-you-mean hint."""
    keys.require_known(parts, where=where)


def is_table_field(parts: Sequence[str]) -> bool:
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


#: What parse_doc's syntax errors name until the caller puts the real file in front.
DOC_DISPLAY = CONFIG_NAME


def parse_doc(text: str, *, display: str = DOC_DISPLAY) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text)
    except Exception as exc:  # tomlkit raises several unrelated types
        raise toml_syntax_error(exc, text, display=display) from None


def profiles_of(doc: tomlkit.TOMLDocument) -> Any:
    profiles = doc.get("profiles")
    return profiles if profiles is not None else {}


def profile_names(text: str) -> list[str]:
    """Names of the profiles defined in ``text``, in file order."""
    return list(profiles_of(parse_doc(text)).keys())


def no_profile(name: str, names: Sequence[str]) -> ConfigError:
    return ConfigError(
        f"no profile named '{name}'",
        hint=did_you_mean(name, names) or ("create it with `punie profiles new " + name + "`"),
    )


def where_of(profile: str, *parts: str) -> str:
    return dotted(("profiles", profile, *parts))


def get_profile(doc: tomlkit.TOMLDocument, name: str) -> Any:
    profiles = profiles_of(doc)
    if name not in profiles:
        raise no_profile(name, list(profiles.keys()))
    return profiles[name]


@dataclass
class Step:
    parent: Any
    key: str
    item: Any


def walk(profile: Any, parts: Sequence[str], where: str) -> list[Step]:
    """Containers from the profile down to the key's parent that already exist."""
    steps: list[Step] = []
    current = profile
    for depth, part in enumerate(parts):
        if not is_container(current):
            raise ConfigError(f"'{'.'.join(parts[:depth])}' is a value, not a table", where=where)
        if part not in current:
            break
        steps.append(Step(current, part, current[part]))
        current = current[part]
    return steps
