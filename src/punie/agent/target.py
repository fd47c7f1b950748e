"""Where an agent built from a profile talks to, and what it works on.

Pure functions shared by ``punie ask``, ``punie serve`` and the tests: the
OpenAI base URL of a profile's server, the agent options as the JSON the
supervisor passes to ``punie agent --options``, and the parsing back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import ValidationError

from punie.config.models import AgentOptions, ResolvedProfile, ServerOptions
from punie.config.served import MLX_SERVED_MODEL_NAME
from punie.errors import UsageError
from punie.launch.backends import request_model_id
from punie.net import openai_base_url, server_root_for


@dataclass(frozen=True)
class AgentTarget:
    """Agent options, the server's OpenAI base URL, and the directory the workspace is relative to."""

    options: AgentOptions
    base_url: str
    base_dir: str
    model_name: str = MLX_SERVED_MODEL_NAME  # the request's model id (punie.config.served)


def server_base_url(server: ServerOptions) -> str:
    """``server.url`` (with ``/v1``), else ``http://host:port/v1`` (a wildcard bind is reached on loopback)."""
    return openai_base_url(server_root_for(server.url, server.host, server.port))


def agent_target(resolved: ResolvedProfile, *, base_url: str | None = None) -> AgentTarget:
    """The agent of a resolved profile (``base_url`` overrides the profile's server)."""
    url = openai_base_url(base_url) if base_url else server_base_url(resolved.profile.server)
    return AgentTarget(options=resolved.profile.agent, base_url=url, base_dir=resolved.project_dir,
                       model_name=request_model_id(resolved.name, resolved.profile))


def options_json(options: AgentOptions) -> str:
    """The JSON ``punie agent --options`` takes."""
    return options.model_dump_json()


def parse_options(text: str | None) -> AgentOptions:
    """Parse ``--options`` JSON into AgentOptions; a clear UsageError when it is wrong."""
    if not text:
        return AgentOptions()
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--options is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError("--options must be a JSON object of agent options")
    try:
        return AgentOptions.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"agent.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise UsageError(f"--options: {problems}") from None


def serve_profile(
    model: str,
    *,
    adapter: str | None = None,
    port: int | None = None,
    host: str | None = None,
    base: ResolvedProfile | None = None,
) -> ResolvedProfile:
    """The in-memory profile `punie serve --model M --adapter A --port P` launches.

    Starts from ``base`` (a profile named with ``--profile``: its agent and
    server options) or from defaults; model and adapter are replaced, and a
    server ``url`` is dropped because this profile starts its own server.
    """
    from punie.config.models import Profile

    server = base.profile.server.model_dump(exclude_unset=True) if base else {}
    server.pop("url", None)
    if port is not None:
        server["port"] = port
    if host is not None:
        server["host"] = host
    data = base.profile.model_dump(exclude_unset=True) if base else {}
    data.update({"model": model, "adapter": adapter, "adapters": [], "server": server, "extends": None})
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise UsageError(f"punie serve: {exc.errors()[0]['msg']}") from None
    return ResolvedProfile(
        name=base.name if base else "serve",
        config_path=base.config_path if base else None,
        profile=profile,
        sources={**(base.sources if base else {}), "model": "cli", **({"adapter": "cli"} if adapter else {})},
    )


#: Server options that only say where/how the process is supervised: profiles differing only in
#: these generate with the same server, so one running server serves them all.
_SUPERVISION_KEYS = {"host", "port", "allow_remote", "readiness", "restart", "shutdown"}


def server_identity(resolved: ResolvedProfile) -> dict[str, object]:
    """What makes two profiles' servers the same: base model, adapter(s), generation options.

    mlx_lm.server loads one model and one adapter at start (swapping needs a
    reload), so only profiles with an equal identity can switch on a running server.
    """
    profile = resolved.profile
    return {
        "model": profile.model,
        "adapter": profile.adapter,
        "adapters": [ref.model_dump() for ref in profile.adapter_refs()],
        "server": profile.server.model_dump(exclude=_SUPERVISION_KEYS),
    }


def sharing_profiles(current: ResolvedProfile, candidates: list[ResolvedProfile]) -> dict[str, AgentOptions]:
    """The agent options of every profile that can run on ``current``'s server (``current`` first)."""
    identity = server_identity(current)
    found = {current.name: current.profile.agent}
    for other in candidates:
        if other.name != current.name and server_identity(other) == identity:
            found[other.name] = other.profile.agent
    return found
