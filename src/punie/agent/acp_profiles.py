"""The profiles an ACP session may use on the running model server.

:class:`ServedProfiles` holds the profile the agent was started with and the
others that can share its server (same model, adapter and generation options:
:func:`punie.agent.target.sharing_profiles`), and, on a shared (vLLM group)
server, the model id each profile's requests name. It answers the session's
``profile`` config option, ``_meta {"punie/profile": NAME}`` of ``session/new``
and the ``/profile`` slash command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from acp import RequestError
from acp.schema import SessionConfigOptionSelect, SessionConfigSelectOption

from punie.config.models import AgentOptions

#: The id of the session config option that switches profiles.
PROFILE_OPTION = "profile"


@dataclass
class ServedProfiles:
    """The profiles on this server (``current`` first) and their request model ids."""

    options: AgentOptions
    current: str | None = None
    #: The profiles a session may switch to (they share the running server).
    profiles: dict[str, AgentOptions] = field(default_factory=dict)
    #: The model id of a session whose profile has none in ``models``.
    model_name: str | None = None
    #: profile -> model id on a shared (vLLM group) server.
    models: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.profiles = dict(self.profiles)
        self.models = dict(self.models)
        if self.current is not None:
            self.profiles[self.current] = self.options

    def options_of(self, profile: str | None) -> AgentOptions:
        """The agent options of ``profile`` (the current ones when it is None or not served)."""
        return self.profiles.get(profile, self.options) if profile else self.options

    def model_of(self, profile: str | None) -> dict[str, str]:
        """The request model id of ``profile``'s sessions (a vLLM group's LoRA id), if any."""
        if profile is not None and profile in self.models:
            return {"model_name": self.models[profile]}
        return {"model_name": self.model_name} if self.model_name else {}

    def meta_profile(self, kwargs: dict[str, Any]) -> str | None:
        """``_meta {"punie/profile": NAME}`` of session/new: a profile served by this (group) server."""
        meta = kwargs.get("field_meta") or kwargs.get("_meta") or {}
        profile = meta.get("punie/profile") if isinstance(meta, dict) else None
        if profile is not None and profile not in self.models:
            known = ", ".join(sorted(self.models)) or "none"
            raise RequestError.invalid_params(
                {"message": f"_meta punie/profile {profile!r} is not served here (profiles: {known})"})
        return profile

    def stored(self, profile: str | None) -> str | None:
        """A stored session's profile if this server has it, else the current one."""
        return profile if profile in self.profiles else self.current

    def config_options(self, profile: str | None) -> list[Any] | None:
        """The ``profile`` config option of a session whose profile is ``profile``."""
        if not self.profiles:
            return None
        current = profile or self.current or next(iter(self.profiles))
        return [SessionConfigOptionSelect(
            type="select", id=PROFILE_OPTION, name="Profile", category="mode", current_value=current,
            description="Punie profiles that run on this model server (same model and adapter)",
            options=[SessionConfigSelectOption(value=name, name=name, description=opts.instructions and
                                               opts.instructions[:80]) for name, opts in self.profiles.items()],
        )]

    def check_option(self, config_id: str, value: str | bool) -> str:
        """The profile a ``session/set_config_option`` asks for (RequestError when it is not one)."""
        if config_id != PROFILE_OPTION or not isinstance(value, str) or value not in self.profiles:
            raise RequestError.invalid_params(
                {"message": f"unknown config option {config_id}={value!r} (profiles on this server: {self.known})"})
        return value

    @property
    def known(self) -> str:
        return ", ".join(self.profiles) or "none"

    def listing(self, active: str | None) -> str:
        """The ``/profile`` answer: the profiles on this server, the active one starred."""
        listed = "\n".join(f"{'* ' if p == active else '  '}{p}" for p in self.profiles) or "  (none)"
        return f"Profiles on this server (* active):\n{listed}"

    def not_served(self, name: str) -> str:
        """The ``/profile NAME`` answer for a profile this server does not run."""
        return f"No profile {name!r} on this server (profiles: {self.known}); another adapter or model needs " \
               f"`punie up {name}`."
