"""The environment and command-line layers of a profile, through pydantic-settings.

`ProfileSettings` has the fields of `Profile` (but `extends`, which only the
file may set). Its sources, highest priority first: init arguments (the
``--set`` overrides), ``PUNIE_*`` environment variables (``PUNIE_MODEL``,
``PUNIE_SERVER__PORT``), then the profile's merged file table.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pydantic import create_model, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from punie.config.envnames import ENV_DELIMITER, ENV_PREFIX, FILE_ONLY_FIELDS, NON_PROFILE_ENV  # noqa: F401
from punie.config.models import Profile, one_adapter_form

_FILE_LAYER: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("punie_file_layer")
_ENV_LAYER: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("punie_env_layer")


class DictSource(PydanticBaseSettingsSource):
    """One layer given as a plain dict: the profile's table after [defaults] and `extends` are
    merged, or the environment as `read_env` read it once (so provenance sees the same dict)."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]):
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class MappingEnvSource(EnvSettingsSource):
    """`EnvSettingsSource` reading a given mapping instead of `os.environ` (tests pass one).

    Only the public surface is used: the source is built as usual, then its
    ``env_vars`` (the variables it parses) are set from the mapping, normalised
    the way the source's own settings ask (case-insensitive, empty ignored).
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]):
        super().__init__(settings_cls)
        self.env_vars = {
            (k if self.case_sensitive else k.lower()): v
            for k, v in environ.items()
            if k.upper().startswith(ENV_PREFIX) and not (self.env_ignore_empty and v == "")
        }


class _SettingsBase(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        case_sensitive=False,
        env_ignore_empty=True,
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init (CLI) > env > file; no dotenv or secrets directory.
        return (
            init_settings,
            DictSource(settings_cls, _ENV_LAYER.get({})),
            DictSource(settings_cls, _FILE_LAYER.get({})),
        )


ProfileSettings: type[_SettingsBase] = create_model(  # type: ignore[call-overload]
    "ProfileSettings",
    __base__=_SettingsBase,
    __doc__="A profile's values from the file, PUNIE_ environment variables and --set overrides.",
    __validators__={"_one_adapter_form": model_validator(mode="after")(one_adapter_form)},
    **{
        name: (field.annotation, field)
        for name, field in Profile.model_fields.items()
        if name not in FILE_ONLY_FIELDS
    },
)


def read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The nested dict the ``PUNIE_*`` variables of ``environ`` set (pydantic-settings parsing).

    Raises pydantic_settings.SettingsError when a value meant as JSON is not.
    """
    return MappingEnvSource(ProfileSettings, environ)()


@contextmanager
def _layers(file: dict[str, Any], env: dict[str, Any]) -> Iterator[None]:
    file_token = _FILE_LAYER.set(file)
    env_token = _ENV_LAYER.set(env)
    try:
        yield
    finally:
        _FILE_LAYER.reset(file_token)
        _ENV_LAYER.reset(env_token)


def build_profile(
    file: dict[str, Any], env: dict[str, Any], cli: dict[str, Any], *, extends: str | None = None
) -> Profile:
    """The profile the three layers make (cli > env > file), validated once.

    pydantic-settings validates the merged layers into ProfileSettings (which has
    every field and validator of Profile but `extends`); the Profile is then
    assembled from those validated values with ``model_construct`` and the file's
    own ``extends``, so nothing is validated twice. Raises pydantic.ValidationError.
    """
    with _layers(file, env):
        settings = ProfileSettings(**cli)
    values = {name: getattr(settings, name) for name in ProfileSettings.model_fields}
    return Profile.model_construct(**values, extends=extends)
