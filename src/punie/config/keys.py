"""The key structure of a profile, read from the pydantic models.

Used to check dotted keys (``--set server.port=8081``, ``PUNIE_SERVER__PORT``)
before validation, to give "did you mean" hints for unknown keys, and to list
every leaf key a resolved profile reports a source for.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from punie.config.models import Profile, PunieFile, flat_server_key
from punie.errors import ConfigError, did_you_mean

_NONE = type(None)


def _members(annotation: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return tuple(a for a in typing.get_args(annotation) if a is not _NONE)
    return (annotation,)


_MODEL_OF: dict[Any, type[BaseModel] | None] = {}


def model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (``ServerOptions | None`` -> ServerOptions).

    Remembered per annotation: it is asked for every key of every profile resolved.
    """
    try:
        return _MODEL_OF[annotation]
    except (KeyError, TypeError):
        pass
    members = _members(annotation)
    found = members[0] if len(members) == 1 and isinstance(members[0], type) and issubclass(
        members[0], BaseModel) else None
    try:
        _MODEL_OF[annotation] = found
    except TypeError:  # an unhashable annotation: not remembered
        pass
    return found


def dict_value_of(annotation: Any) -> tuple[bool, Any]:
    """Whether an annotation is a ``dict[str, X]``, and X."""
    for member in _members(annotation):
        if member is dict or typing.get_origin(member) is dict:
            args = typing.get_args(member)
            return True, (args[1] if len(args) == 2 else Any)
    return False, None


def field_names(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _any_model(annotation: Any) -> type[BaseModel] | None:
    # The one model among a union's members (``str | AdapterRef`` -> AdapterRef).
    models = [m for m in _members(annotation) if isinstance(m, type) and issubclass(m, BaseModel)]
    return models[0] if len(models) == 1 else None


def model_at(path: Sequence[object], root: type[BaseModel] = PunieFile) -> type[BaseModel] | None:
    """The model whose keys live at ``path`` (``("profiles", "demo", "server")`` -> ServerOptions).

    List indexes may be given as ints or digit strings (``("profiles", "a", "adapters", 0)``).
    """
    current: Any = root
    for part in path:
        model = _any_model(current)
        if model is not None:
            field = model.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
            continue
        is_dict, value = dict_value_of(current)
        if is_dict:
            current = value
            continue
        items = [typing.get_args(m) for m in _members(current) if typing.get_origin(m) is list]
        if items and items[0] and str(part).isdigit():
            current = items[0][0]
            continue
        return None
    return _any_model(current)


def leaf_keys(model: type[BaseModel] = Profile, prefix: str = "") -> list[str]:
    """Every dotted key of ``model`` whose value is not itself a model (tables like
    ``server.chat_template_args`` and lists count as one leaf)."""
    out: list[str] = []
    for name, field in model.model_fields.items():
        sub = model_of(field.annotation)
        key = f"{prefix}{name}"
        if sub is not None:
            out.extend(leaf_keys(sub, f"{key}."))
        else:
            out.append(key)
    return out


def leaf_of(path: Sequence[str], model: type[BaseModel] = Profile) -> tuple[str, ...]:
    """Cut ``path`` after its first part that is not a model (its leaf key)."""
    out: list[str] = []
    current: type[BaseModel] | None = model
    for part in path:
        out.append(part)
        if current is None:
            break
        field = current.model_fields.get(part)
        if field is None:
            break
        current = model_of(field.annotation)
        if current is None:
            break
    return tuple(out)


def unknown_key(path: Sequence[str], model: type[BaseModel] = Profile) -> tuple[int, list[str]] | None:
    """Find the first part of ``path`` that is not a key of ``model``.

    Returns its index and the keys valid at that level, or None when the whole
    path is known (parts below a plain table such as ``chat_template_args``
    are free). Raises ValueError when the path goes below a non-table value.
    """
    current: type[BaseModel] | None = model
    for i, part in enumerate(path):
        if current is None:
            return None
        field = current.model_fields.get(part)
        if field is None:
            return i, field_names(current)
        sub = model_of(field.annotation)
        if sub is None and i < len(path) - 1:
            is_dict, _ = dict_value_of(field.annotation)
            if is_dict:
                return None
            raise ValueError(".".join(path[: i + 1]))
        current = sub
    return None


def require_known(parts: Sequence[str], *, where: str | None = None) -> None:
    """Refuse a key that is not a field of a profile, with a did-you-mean hint.

    ``where`` (``profiles.demo``) is put in front of the message. The flat server keys of earlier
    files (``server.ready_timeout``...) are still known (`punie.config.models.FLAT_SERVER_KEYS`)."""
    parts = flat_server_key(tuple(parts)) or parts
    try:
        unknown = unknown_key(parts)
    except ValueError as exc:
        raise ConfigError(f"'{exc}' is a single value, not a table with keys", where=where) from None
    if unknown is not None:
        index, valid = unknown
        bad = ".".join(parts[: index + 1])
        hint = did_you_mean(parts[index], valid)
        raise ConfigError(
            f"unknown key '{bad}'" + (f", {hint}" if hint else ""),
            where=where,
            hint=None if hint else "valid keys: " + ", ".join(valid),
        )
