"""The launch plan: everything `punie up` will start, as one pure value.

`build_plan` turns a resolved profile plus the resolved model and adapter
directories into a frozen `LaunchPlan`: the mlx_lm.server argv (never run
through a shell), its environment additions, the agent argv, URLs, log files,
restart policy and readiness timeout. ``punie up --dry-run`` prints exactly the
plan a real run executes, so CI can check it without starting anything.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from punie.config.models import ResolvedProfile
from punie.errors import ConfigError
from punie.launch.blas import BlasChoice, hint_text, preload_env
from punie.launch.canary import ExpectedCanary
from punie.launch.dist_plan import DistributedPart
from punie.net import connect_host, is_loopback, remote_host_problem, server_root
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
    """What `punie up` starts. ``server_argv`` is None when the server is external (``server.url``)."""

    profile: str
    project_dir: str
    model: str | None = None
    adapter: str | None = None
    server_argv: tuple[str, ...] | None = None
    server_env: dict[str, str] = Field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int | None = None
    server_url: str = Field(description="Root URL of the server (http://host:port).")
    base_url: str = Field(description="OpenAI base URL the agent and the probe use (.../v1).")
    agent_argv: tuple[str, ...]
    agent_env: dict[str, str] = Field(default_factory=dict)
    cwd: str
    server_log: str | None = None
    agent_log: str
    ensure_dirs: tuple[str, ...] = ()
    ready_timeout: float = 180.0
    restart: RestartPolicy = Field(default_factory=RestartPolicy)
    liveness_interval: float = 5.0
    liveness_failures: int = 3
    remote: bool = Field(False, description="The server is (or binds) a non-loopback address (allow_remote).")
    idle_unload: float | None = Field(
        None, description="Seconds without a request after which the server is stopped (the agent stays and "
        "wakes it through the control channel); None: never. Not for an external server."
    )
    canary: ExpectedCanary | None = Field(
        None, description="The adapter's canary: the readiness probe proves the server applies the adapter."
    )
    member_canaries: tuple[ExpectedCanary, ...] = Field(
        (), description="vLLM group: the other members' canaries, each sent to its own LoRA id once the server "
        "answers (any one answering without its adapter refuses the whole group)."
    )
    # vLLM (punie.launch.vllm): the engine, the model id the probe and agent send (None: no
    # model field, as mlx_lm needs), the base's id, LoRA id -> exported PEFT dir, profile -> id.
    backend: Literal["mlx", "vllm", "mlx-distributed"] = "mlx"
    model_id: str | None = None
    base_model_id: str | None = None
    lora_modules: dict[str, str] = Field(default_factory=dict)
    models: dict[str, str] = Field(default_factory=dict)
    fatal_patterns: dict[str, str] = Field(default_factory=dict)
    group: str | None = None
    # The fast BLAS (punie.launch.blas): the library preloaded into the server (None: mlx's
    # bundled one), or why none; the one-line install hint when one would help.
    blas: str | None = None
    blas_note: str | None = None
    blas_hint: str | None = None
    dense_of: str | None = Field(None, description="The quantized model ``model`` is a dense copy of "
                                 "(punie.launch.dense); checks and canaries use that one.")
    distributed: DistributedPart | None = Field(None, description="mlx-distributed: every rank, copy and file "
                                                "(punie.launch.distributed).")

    @property
    def engine(self) -> str:
        """The server program's name in messages."""
        return {"vllm": "vLLM", "mlx-distributed": "mlx.launch"}.get(self.backend, "mlx_lm.server")

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
                f"model:     {self.model}" + (f" (dense copy of {self.dense_of})" if self.dense_of else ""),
                f"adapter:   {self.adapter or '(none)'}",
                f"server:    {shlex.join(self.server_argv or ())}",
            ]
            for name, folder in sorted(self.lora_modules.items()):
                lines.append(f"  lora:    {name} = {folder}")
            if self.models:
                lines.append("  models:  " + ", ".join(f"{p} -> {m}" for p, m in self.models.items()))
            if self.server_env:
                env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.server_env.items()))
                lines.append(f"  env:     {env}")
            if self.backend != "vllm":
                lines.append(f"  blas:    {self.blas + ' (preloaded)' if self.blas else f'bundled ({self.blas_note})'}")
            if self.distributed is not None:
                lines += self.distributed.render_lines()
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


def _fmt_number(value: float | int) -> str:
    return repr(value) if isinstance(value, float) else str(value)


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


def server_argv(
    resolved: ResolvedProfile, *, model: str, adapter: str | None, python: str
) -> tuple[str, ...]:
    """The mlx_lm.server command line of a profile (flag names as in `mlx_lm server --help`)."""
    server = resolved.profile.server
    argv = [python, "-m", "mlx_lm", "server", "--model", model]
    if adapter:
        argv += ["--adapter-path", adapter]
    argv += ["--host", server.host, "--port", str(server.port)]
    if server.temperature is not None:
        argv += ["--temp", _fmt_number(server.temperature)]
    if server.top_p is not None:
        argv += ["--top-p", _fmt_number(server.top_p)]
    if server.max_tokens is not None:
        argv += ["--max-tokens", str(server.max_tokens)]
    if server.chat_template_args:
        argv += ["--chat-template-args", json.dumps(server.chat_template_args, sort_keys=True)]
    if server.draft_model:
        argv += ["--draft-model", server.draft_model]
    argv += list(server.extra_args)
    return tuple(argv)


def build_plan(
    resolved: ResolvedProfile,
    *,
    model_path: Path | None,
    adapter_path: Path | None,
    python: str = sys.executable,
    log_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    lora_dirs: Mapping[str, Path] | None = None,
    blas: BlasChoice | None = None,
) -> LaunchPlan:
    """Build the launch plan of ``resolved`` (pure: reads no files, starts nothing).

    ``model_path``/``adapter_path`` are the resolved directories (see
    `punie.launch.supervisor.prepare`). With ``server.url`` set the server is
    external: the plan has no server argv and ``model_path`` may be None.
    ``environ`` (default os.environ) is only read to find the Hugging Face cache.
    A vLLM profile's plan is built by `punie.launch.vllm` (``lora_dirs``: LoRA id -> PEFT dir).
    ``blas`` (`punie.launch.blas.find_blas`, which reads the disk) is preloaded into the server.
    """
    env = os.environ if environ is None else environ
    remote = refuse_remote(resolved)
    profile = resolved.profile
    server = profile.server
    if server.backend == "vllm":  # its own builder: punie.launch.vllm.build_vllm_plan (prepare dispatches)
        raise ValueError(f"profile {resolved.name!r} runs on vLLM: build its plan with punie.launch.vllm")
    project = resolved.project_dir
    logs = Path(log_dir) if log_dir is not None else state_dir(project) / "logs"
    agent_log = str(logs / f"{resolved.name}-agent.log")

    if server.url:
        root = server_root(server.url)
        argv: tuple[str, ...] | None = None
        server_env: dict[str, str] = {}
        server_log = None
        ensure: tuple[str, ...] = (str(logs),)
        port = None
        model = adapter = None
    else:
        if model_path is None:
            raise ValueError("model_path is required when the server is started (no server.url)")
        root = f"http://{connect_host(server.host)}:{server.port}"
        model = str(model_path)
        adapter = str(adapter_path) if adapter_path is not None else None
        argv = server_argv(resolved, model=model, adapter=adapter, python=python)
        hub_cache = default_hf_hub_cache(env)
        # mlx_lm misbehaves without an existing hub cache dir (empty /v1/models
        # answers), and a local model must never trigger a hub lookup.
        server_env = {"HF_HUB_CACHE": hub_cache, "PYTHONUNBUFFERED": "1"}
        if Path(model).is_absolute():
            server_env["HF_HUB_OFFLINE"] = "1"
        if blas is not None:
            server_env |= preload_env(blas, env)
        server_log = str(logs / f"{resolved.name}-server.log")
        ensure = (str(logs), hub_cache)
        port = server.port
    base_url = root + "/v1"
    agent_argv = (
        python, "-m", "punie", "agent", "--base-url", base_url, "--options", profile.agent.model_dump_json(),
        "--profile", resolved.name, *(("--config", resolved.config_path) if resolved.config_path else ()),
        *(("--warm",) if argv is not None else ()),  # our server: warm its prompt cache (punie.agent.warm)
    )
    return LaunchPlan(
        profile=resolved.name,
        project_dir=str(project),
        model=model,
        adapter=adapter,
        server_argv=argv,
        server_env=server_env,
        host=server.host,
        port=port,
        server_url=root,
        base_url=base_url,
        agent_argv=agent_argv,
        cwd=str(project),
        server_log=server_log,
        agent_log=agent_log,
        ensure_dirs=ensure,
        ready_timeout=server.ready_timeout,
        restart=RestartPolicy(
            mode=server.restart, max_restarts=server.max_restarts, backoff=server.restart_backoff
        ),
        liveness_interval=server.liveness_interval,
        liveness_failures=server.liveness_failures,
        remote=remote,
        idle_unload=None if server.url else server.idle_unload,
        blas=blas.path if blas is not None and argv is not None else None,
        blas_note=blas.reason if blas is not None and argv is not None else None,
        blas_hint=hint_text(blas) if blas is not None and argv is not None else None,
    )
