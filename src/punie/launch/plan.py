"""The launch plan: everything `punie up` will start, as one pure value.

Each backend (`punie.launch.backends`) turns a resolved profile plus the resolved model and
adapter directories into a frozen `LaunchPlan` through `common_plan`: its server argv (never
run through a shell) and plan part, around what every launch shares: environment, the agent
argv, URLs, log files, restart policy and readiness timeout. ``punie up --dry-run`` prints
exactly the plan a real run executes, so CI can check it without starting anything.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from punie import envvars
from punie.config.models import ResolvedProfile, ServerOptions
from punie.errors import ConfigError
from punie.launch.canary import ExpectedCanary
from punie.limits import STOP_GRACE
from punie.net import LOOPBACK, is_loopback, remote_host_problem, server_root_for
from punie.paths import hf_hub_cache, state_dir


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RestartPolicy(_Frozen):
    """What to do when the server dies after it was started."""

    mode: Literal["no", "on-failure"] = "no"
    max_restarts: int = 3
    backoff: float = 1.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before restart number ``attempt`` (1-based): backoff doubles each time."""
        return self.backoff * (2 ** max(attempt - 1, 0))


class LaunchPlan(_Frozen):
    """What `punie up` starts. ``server_argv`` is None when the server is external (``server.url``).

    The fields every backend has are here; the engine's own are in ``backend``, its plan part
    (`punie.launch.backends`: a union discriminated by the backend's name).
    """

    profile: str
    project_dir: str
    model: str | None = None
    adapter: str | None = None
    server_argv: tuple[str, ...] | None = None
    server_env: dict[str, str] = Field(default_factory=dict)
    host: str = LOOPBACK
    port: int | None = None
    server_url: str = Field(description="Root URL of the server (http://host:port).")
    base_url: str = Field(description="OpenAI base URL the agent and the probe use (.../v1).")
    agent_argv: tuple[str, ...]
    agent_gate: bool = Field(
        False, description="The agent is started with the server and waits at the start gate until the server "
        "answers (`punie.launch.gate`: `punie agent` speaks it); False: started once the server is ready.")
    agent_env: dict[str, str] = Field(default_factory=dict)
    cwd: str
    server_log: str | None = None
    agent_log: str
    ensure_dirs: tuple[str, ...] = ()
    ready_timeout: float = 180.0
    restart: RestartPolicy = Field(default_factory=RestartPolicy)
    liveness_interval: float = 5.0
    liveness_failures: int = 3
    shutdown_grace: float = Field(STOP_GRACE, description="Seconds between SIGTERM and SIGKILL when the server's "
                                  "process group is stopped (server.shutdown.grace).")
    remote: bool = Field(False, description="The server is (or binds) a non-loopback address (allow_remote).")
    idle_unload: float | None = Field(
        None, description="Seconds without a request after which the server is stopped (the agent stays and "
        "wakes it through the control channel); None: never. Not for an external server."
    )
    control_socket: str | None = Field(
        None, exclude=True, description="Where the supervisor serves the idle-unload control protocol for "
        "`punie ask` (set by punie.launch.instances.claim; not part of the plan's JSON)."
    )
    canary: ExpectedCanary | None = Field(
        None, description="The adapter's canary: the readiness probe proves the server applies the adapter."
    )
    member_canaries: tuple[ExpectedCanary, ...] = Field(
        (), description="A group: the other members' canaries, each sent to its own model id once the server "
        "answers (any one answering without its adapter refuses the whole group)."
    )
    model_id: str | None = Field(None, description="The model id the probe and the agent send (None: no model "
                                 "field, as mlx_lm needs).")
    # The union of every backend's part, resolved by `punie.launch.backends` (which imports this
    # module, so it cannot be imported here): ``LaunchPlan.model_rebuild`` there completes the model.
    backend: BackendPartUnion = Field(  # noqa: F821
        description="The engine's own part of the plan (`punie.launch.backends`).")

    @property
    def engine(self) -> str:
        """The server program's name in messages."""
        return self.backend.engine

    @property
    def external(self) -> bool:
        """True when the plan uses an already running server (nothing is started for it)."""
        return self.server_argv is None

    def to_json(self) -> dict[str, Any]:
        """The plan as a JSON-ready dict (``punie up --dry-run --format json``)."""
        data = self.model_dump(mode="json")
        data["external"] = self.external
        return data

    def render_text(self) -> str:
        """A human-readable plan; commands are shell-quoted only for display."""
        lines = [f"profile:   {self.profile}", f"project:   {self.project_dir}"]
        if self.external:
            lines.append(f"server:    external, {self.server_url} (nothing started, readiness checked)")
        else:
            lines += [
                f"model:     {self.model}" + self.backend.model_note(),
                f"adapter:   {self.adapter or '(none)'}",
                f"server:    {shlex.join(self.server_argv or ())}",
            ]
            lines += self.backend.describe()
            if self.server_env:
                env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.server_env.items()))
                lines.append(f"  env:     {env}")
            for command in self.backend.commands():
                lines.append(f"  on {command.host or 'this host'}: {shlex.join(command.argv)}")
            for copy in self.backend.copies():
                lines.append(f"  copy:    {copy.source} -> {copy.host}:{copy.target}")
            lines.append(f"  log:     {self.server_log}")
            restart = "no" if self.restart.mode == "no" else (
                f"on-failure (max {self.restart.max_restarts}, backoff {self.restart.backoff:g}s doubling)"
            )
            lines.append(f"  restart: {restart}")
            if self.idle_unload:
                lines.append(f"  idle:    stopped after {self.idle_unload:g}s without a request, "
                             "started again by the next prompt")
            if self.liveness_interval > 0:
                lines.append(f"  alive:   GET /health every {self.liveness_interval:g}s, "
                             f"frozen after {self.liveness_failures} misses")
            if self.remote:
                lines.append(f"  WARNING: binds {self.host}, reachable from other machines (allow_remote)")
        if self.canary is not None:
            ready = f"canary of {self.canary.adapter} (top-{self.canary.canary.top_k} first-token logprobs)"
        else:
            ready = "1-token chat completion"
        lines.append(f"ready:     {ready} on {self.base_url}"
                     + (f" (model {self.model_id})" if self.model_id else "") + f" within {self.ready_timeout:g}s")
        for member in self.member_canaries:
            lines.append(f"  then:    canary of {member.adapter} (model {member.model})")
        lines += [
            f"agent:     {shlex.join(self.agent_argv)}",
            *(["  start:   with the server; let in once it answers, ready once the agent says so"]
              if self.agent_gate else []),
            f"  cwd:     {self.cwd}",
            f"  log:     {self.agent_log}",
        ]
        return "\n".join(lines)


def instance_logs(plan: LaunchPlan, stem: str) -> LaunchPlan:
    """``plan`` with its log files named after ``stem`` (``STEM-server.log``, ``STEM-agent.log``): a second
    running instance of a profile (on another port) never writes the first one's logs."""
    update = {"agent_log": str(Path(plan.agent_log).with_name(f"{stem}-agent.log"))}
    if plan.server_log is not None:
        update["server_log"] = str(Path(plan.server_log).with_name(f"{stem}-server.log"))
    return plan.model_copy(update=update)


def default_hf_hub_cache(environ: Mapping[str, str]) -> str:
    """Where huggingface_hub looks for its cache (`punie.paths.hf_hub_cache`, the one resolver)."""
    return str(hf_hub_cache(environ))


def refuse_remote(resolved: ResolvedProfile) -> bool:
    """Raise ConfigError for a non-loopback host without allow_remote (every path, --no-check too).

    Returns whether the server is remote (allowed): every start then warns about it.
    """
    server = resolved.profile.server
    what, host = ("server.url", urlsplit(server.url).hostname or "") if server.url else ("server.host", server.host)
    if is_loopback(host) is not False:  # loopback, or a name that does not resolve (the bind/connect says so)
        return False
    if problem := remote_host_problem(host, server.allow_remote, what=what):
        raise ConfigError(problem, where=f"profiles.{resolved.name}.{what}")
    return True


def server_root_of(server: ServerOptions) -> str:
    """The root URL (``http://host:port``) of a profile's server: ``server.url``'s, else where Punie
    starts it (wildcard binds are reached on loopback). The one rule, for every backend."""
    return server_root_for(server.url, server.host, server.port)


def common_plan(
    lead: ResolvedProfile,
    *,
    label: str,
    part: BaseModel,
    model: str | None,
    adapter: str | None,
    argv: tuple[str, ...] | None,
    server_env: Mapping[str, str],
    env_overrides: Mapping[str, str] | None = None,
    python: str,
    agent_args: Sequence[str],
    remote: bool,
    log_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    model_id: str | None = None,
) -> LaunchPlan:
    """The plan every backend builds around its argv and part: logs, URLs, the server's env
    (Hugging Face cache, unbuffered, ``server_env``, offline for a local model, then ``env_overrides``,
    the user's), restart,
    readiness and liveness; the agent is ``python -m punie agent --base-url URL *agent_args``.
    ``label`` names the log files (the profile, or a group). Pure: reads only ``environ``'s HF cache.
    """
    env = os.environ if environ is None else environ
    server = lead.profile.server
    project = lead.project_dir
    logs = Path(log_dir) if log_dir is not None else state_dir(project) / "logs"
    root = server_root_of(server)
    if argv is None:
        full_env: dict[str, str] = {}
        server_log = None
        ensure: tuple[str, ...] = (str(logs),)
    else:
        hub_cache = default_hf_hub_cache(env)
        # mlx_lm misbehaves without an existing hub cache dir (empty /v1/models answers), and a
        # local model must never trigger a hub lookup.
        full_env = {envvars.HF_HUB_CACHE: hub_cache, envvars.PYTHONUNBUFFERED: "1", **server_env}
        if model is not None and Path(model).is_absolute():
            full_env[envvars.HF_HUB_OFFLINE] = "1"
        full_env |= env_overrides or {}
        server_log = str(logs / f"{label}-server.log")
        ensure = (str(logs), hub_cache)
    base_url = root + "/v1"
    return LaunchPlan(
        profile=label,
        project_dir=str(project),
        model=model,
        adapter=adapter,
        server_argv=argv,
        server_env=full_env,
        host=server.host,
        port=None if argv is None else server.port,
        server_url=root,
        base_url=base_url,
        agent_argv=(python, "-m", "punie", "agent", "--base-url", base_url, *agent_args),
        agent_gate=True,  # `punie agent` imports while the model loads (punie.launch.gate)
        cwd=str(project),
        server_log=server_log,
        agent_log=str(logs / f"{label}-agent.log"),
        ensure_dirs=ensure,
        ready_timeout=server.readiness.timeout,
        restart=RestartPolicy(mode=server.restart.policy, max_restarts=server.restart.max_restarts,
                              backoff=server.restart.backoff),
        liveness_interval=server.liveness.interval,
        liveness_failures=server.liveness.failures,
        shutdown_grace=server.shutdown.grace,
        remote=remote,
        idle_unload=None if server.url else server.idle_unload,
        model_id=model_id,
        backend=part,
    )
