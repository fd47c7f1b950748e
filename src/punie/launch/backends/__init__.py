"""The engines that serve a profile's model, chosen in ONE table: ``server.backend`` -> `Backend`.

    from punie.launch.backends import backend_of
    backend_of(resolved).engine          # "mlx_lm.server", "vLLM"
    backend_of(plan).model_ids(plan)     # the ids the canaries and the agent send

Like uvicorn's ``HTTP_PROTOCOLS``: the rest of Punie never compares a backend's name; it asks
this table (see `punie.launch.backends.base` for the protocol, and tests/launch/test_backend_seam.py,
which fails on any such comparison outside this package). The names a profile may give are
declared in `punie.config.models.BACKEND_NAMES`; the table must cover exactly those.
A new backend: one module here (a `BackendPart` and a `Backend`), one line in `BACKENDS`,
its name in ``BACKEND_NAMES``, and its module in the independence contract of pyproject.toml.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Union

from pydantic import Field

from punie.checks.report import Problem, Report
from punie.config.models import BACKEND_NAMES, ResolvedProfile
from punie.errors import ConfigError
from punie.launch.backends.base import Backend, BackendPart, FileCopy, HostCommand, LaunchInputs
from punie.launch.backends.mlx import MlxBackend
from punie.launch.backends.mlx_distributed import MlxDistributedBackend
from punie.launch.backends.vllm import VllmBackend
from punie.launch.plan import LaunchPlan

BACKENDS: dict[str, Backend] = {
    "mlx": MlxBackend(),
    "vllm": VllmBackend(),
    "mlx-distributed": MlxDistributedBackend(),
}

if set(BACKENDS) != set(BACKEND_NAMES):  # pragma: no cover - a backend added in one place only
    raise RuntimeError(f"punie.launch.backends.BACKENDS {sorted(BACKENDS)} != config BACKEND_NAMES "
                       f"{sorted(BACKEND_NAMES)}")

#: The plan part of every backend, discriminated by its name (``LaunchPlan.backend``).
BackendPartUnion = Annotated[Union[tuple(b.part for b in BACKENDS.values())], Field(discriminator="name")]  # type: ignore[valid-type]  # noqa: UP007
LaunchPlan.model_rebuild(_types_namespace={"BackendPartUnion": BackendPartUnion})

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendPart",
    "FileCopy",
    "HostCommand",
    "LaunchInputs",
    "adapter_fits",
    "backend_of",
    "check_adapter",
    "check_members",
    "check_profiles",
    "request_model_id",
]


def backend_of(subject: ResolvedProfile | LaunchPlan | BackendPart | str | Any) -> Backend:
    """The backend of a resolved profile, a plan, a plan part, a `Profile` or a name."""
    if isinstance(subject, str):
        name = subject
    elif isinstance(subject, LaunchPlan):
        name = subject.backend.name
    elif isinstance(subject, BackendPart):
        name = subject.name
    elif isinstance(subject, ResolvedProfile):
        name = subject.profile.server.backend
    else:  # a Profile
        name = subject.server.backend
    try:
        return BACKENDS[name]
    except KeyError:
        raise ConfigError(f"unknown server.backend {name!r}",
                          hint="one of " + ", ".join(BACKENDS)) from None


def check_profiles(profiles: Iterable[ResolvedProfile], *, strict: bool = False) -> Report:
    """`punie check`: `punie.checks.check_profiles` with each profile's backend rules."""
    from punie.checks import check_profiles as check

    return check(profiles, strict=strict, rules=lambda r: backend_of(r).check_rules)


def check_adapter(adapter_dir: Any, resolved: ResolvedProfile) -> list[Problem]:
    """`punie.checks.check_adapter` with the profile's backend rules."""
    from punie.checks import check_adapter as check

    return check(adapter_dir, resolved, rules=backend_of(resolved).check_rules)


def adapter_fits(info: Any, resolved: ResolvedProfile) -> tuple[str, str | None]:
    """`punie.checks.adapter_fits` with the profile's backend rules (`punie adapters list`)."""
    from punie.checks import adapter_fits as fits

    return fits(info, resolved, rules=backend_of(resolved).check_rules)


def request_model_id(profile_name: str, resolved_or_profile: Any) -> str:
    """The ``model`` a request for this profile sends on its backend's server."""
    profile = getattr(resolved_or_profile, "profile", resolved_or_profile)
    return backend_of(profile).request_model_id(profile_name, profile)


def check_members(members: tuple[ResolvedProfile, ...], group: str | None) -> Backend:
    """The backend of the members' one server; ConfigError unless they can share it (``--group``)."""
    backend = backend_of(members[0])
    if len(members) > 1 or group:
        alone = [m.name for m in members if not backend_of(m).shares_server]
        if alone:
            label = f"group {group}" if group else "--group " + ",".join(m.name for m in members)
            names = sorted({backend_of(m).name for m in members if m.name in alone})
            sharing = [name for name, b in BACKENDS.items() if b.shares_server]
            raise ConfigError(
                f"{label}: profile(s) {', '.join(alone)} use the {', '.join(names)} backend, whose server serves "
                "one adapter and reloads the whole model to switch, so profiles cannot share one such server",
                hint=f"set server.backend = \"{sharing[0]}\" in them, or run one server per profile: "
                "`punie up NAME` each (on different ports)" if sharing else "run one server per profile",
            )
        others = sorted({backend_of(m).name for m in members} - {backend.name})
        if others:
            raise ConfigError(f"group {group or ''}: all members must use one backend ({backend.name}, not "
                              f"{', '.join(others)})")
    backend.check_members(members, group)
    return backend
