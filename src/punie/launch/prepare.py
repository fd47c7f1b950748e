"""From a resolved profile to a launch plan: check, resolve model and adapter, build the plan.

Shared by a dry run and a real run, so both see the same plan.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from punie.config.models import ResolvedProfile
from punie.config.served import has_adapter
from punie.errors import (
    AdapterError,
    CheckFailed,
    ConfigError,
    ModelError,
    ModelNotProvisioned,
)
from punie.launch.blas import find_blas
from punie.launch.canary import ExpectedCanary
from punie.launch.plan import LaunchPlan, build_plan, refuse_remote
from punie.launch.vllm import PEFT_CACHE, build_vllm_plan, check_group
from punie.paths import state_dir
from punie.textsafe import printable
from punie.weights import Progress

logger = logging.getLogger(__name__)


def run_check(resolved: ResolvedProfile) -> None:
    """Run `punie check` on the profile; raise CheckFailed listing the errors, log the warnings."""
    from punie.checks import check_profiles

    report = check_profiles([resolved])
    errors = [p for p in report.problems if p.severity == "error"]
    for problem in report.problems:
        if problem.severity != "error" and problem.code != "model-not-provisioned":  # provisioning says it once
            logger.warning("%s: %s", problem.where or problem.profile, problem.message)
    if errors:
        lines = [f"profile '{resolved.name}' has {len(errors)} error(s); not launching (--no-check skips this):"]
        # One line per problem: a newline inside a value (a path from punie.toml) is escaped, not a new line.
        lines += [printable(f"  {p.where + ': ' if p.where else ''}{p.message}", one_line=True) for p in errors]
        raise CheckFailed("\n".join(lines), report)


def resolve_model_path(
    resolved: ResolvedProfile, *, provision: bool = True, progress: Progress | None = None
) -> Path:
    """The model directory the server loads.

    A builtin model that is not provisioned yet is fetched first (``provision``),
    or, for a dry run, shown at the cache path it will be provisioned to.
    """
    spec = resolved.profile.model
    if not spec:
        raise ConfigError(
            "no model: set `model` (or `server.url` to use a running server)",
            where=f"profiles.{resolved.name}",
        )
    from punie.weights import resolve as weights

    try:
        return weights.resolve_model(spec, resolved.project_dir)
    except ModelNotProvisioned:
        if not provision:
            from punie.weights.builtin import builtin_dir

            target = builtin_dir(spec.removeprefix("builtin:"))
            logger.info("%s is not provisioned yet: `punie up` will fetch it to %s", spec, target)
            return target
        logger.info("provisioning %s (first use)", spec)
        return weights.provision_model(spec, progress=progress)
    except ModelError as exc:
        if exc.where is None:
            exc.where = f"profiles.{resolved.name}.model"
        raise


def resolve_adapter_path(resolved: ResolvedProfile) -> Path | None:
    """The adapter directory the server loads (a composition of several if the profile asks)."""
    from punie.adapters.registry import effective_adapter

    return effective_adapter(resolved)


def prepare(
    resolved: ResolvedProfile,
    *,
    check: bool = True,
    provision: bool = True,
    python: str = sys.executable,
    log_dir: Path | None = None,
    progress: Progress | None = None,
) -> LaunchPlan:
    """Check (unless ``check`` is False), resolve model and adapter, and build the launch plan.

    ``provision=False`` (a dry run) never downloads: a builtin model that is
    not provisioned yet appears at the path it will be provisioned to.
    """
    refuse_remote(resolved)  # --no-check included: never bind or call out without allow_remote
    if resolved.profile.server.backend == "vllm":
        return prepare_vllm([resolved], check=check, provision=provision, python=python, log_dir=log_dir,
                            progress=progress)
    if check:
        run_check(resolved)
    if resolved.profile.server.url:
        model = adapter = None
    else:
        model = resolve_model_path(resolved, provision=provision, progress=progress)
        adapter = resolve_adapter_path(resolved)
    blas = find_blas(resolved.profile.server.blas) if model is not None else None
    canary = expected_canary(resolved, model_path=model, adapter_path=adapter, compute=provision)
    if resolved.profile.server.backend == "mlx-distributed" and model is not None:
        # mlx.launch over several ranks: the adapter served fused (punie.launch.distributed)
        from punie.launch.distributed import prepare_distributed

        return prepare_distributed(resolved, model=model, adapter=adapter, canary=canary, provision=provision,
                                   python=python, log_dir=log_dir)
    served = model
    if resolved.profile.fuse.enabled and model is not None:
        # fuse.enabled: serve the adapter fused into the base (cached, verified by the canary first);
        # the readiness probe still checks the same canary, now on the fused model.
        from punie.launch.fuse import profile_fused_model

        fused = profile_fused_model(resolved, model=model, adapter=adapter, expected=canary,
                                    provision=provision, python=python)
        plan = build_plan(resolved, model_path=fused, adapter_path=None, python=python, log_dir=log_dir, blas=blas)
        return plan if canary is None else plan.model_copy(update={"canary": canary})
    if model is not None:  # a dense copy where faster; checks and canaries keep using the original
        from punie.launch.dense import served_model

        served = served_model(resolved.profile.server.dense, resolved.profile.model, model, blas,
                              provision=provision)
    plan = build_plan(resolved, model_path=served, adapter_path=adapter, python=python, log_dir=log_dir, blas=blas)
    if served != model:
        plan = plan.model_copy(update={"dense_of": str(model)})
    if canary is not None and served is not None and served != model and provision:
        canary = _served_canary(canary, served)
    return plan if canary is None else plan.model_copy(update={"canary": canary})


def _served_canary(expected: ExpectedCanary, served: Path) -> ExpectedCanary:
    """The canary compared at readiness when a dense copy is served: the recorded one for an exact
    (float32) copy, whose answers are the original's within ~3e-5 nats; for a rounded (bfloat16,
    float16) copy, computed on the copy itself, as that is what the server answers from."""
    from punie.launch.dense import is_exact_copy

    if is_exact_copy(served):
        return expected
    from punie.launch.stamp import compute_canary

    try:
        return expected.model_copy(update={"canary": compute_canary(served, expected.adapter)})
    except AdapterError as exc:
        logger.warning("%s", exc.render())
        return expected


def expected_canary(
    resolved: ResolvedProfile, *, model_path: Path | None, adapter_path: Path | None, compute: bool = False
) -> ExpectedCanary | None:
    """The canary the readiness probe checks, when the served adapter has one.

    With ``server.url`` the adapter is not started by Punie but the profile still
    names it: the running server is then checked for it too. No canary means the
    adapter is not verified (a warning); one recorded on another base model (another
    quantization, say) is still compared, but can only warn.
    A composition of the profile's ``adapters`` gets its canary computed here once
    (``compute``; its directory is a cache), as nobody else could stamp it.
    """
    from punie.adapters.canary import base_fingerprint
    from punie.adapters.metadata import read_canary

    profile = resolved.profile
    if adapter_path is None and profile.server.url and (profile.adapter or profile.adapters):
        try:
            adapter_path = resolve_adapter_path(resolved)
        except AdapterError as exc:
            logger.warning("%s: the running server cannot be checked for it", exc.render())
            return None
    if adapter_path is None:
        return None
    try:
        canary = read_canary(adapter_path)
    except AdapterError as exc:
        logger.warning("%s", exc.render())
        return None
    if canary is None and compute and profile.adapters and model_path is not None:
        from punie.launch.stamp import stamp_canary

        logger.warning("computing the canary of the composed adapter %s (once)", adapter_path)
        try:
            canary = stamp_canary(adapter_path, model_path)
        except AdapterError as exc:
            logger.warning("%s", exc.render())
    if canary is None:
        logger.warning("adapter %s has no canary: readiness cannot prove the server applies it "
                       "(record one: `punie adapters stamp %s --base %s`)", adapter_path, adapter_path, resolved.name)
        return None
    other_base = None
    if model_path is not None and canary.base_fingerprint:
        fingerprint = base_fingerprint(model_path)
        if fingerprint is not None and fingerprint != canary.base_fingerprint:
            other_base = (f"its canary was recorded on another base: fingerprint {canary.base_fingerprint[:16]}, "
                          f"this model {fingerprint[:16]}")
            logger.warning("adapter %s: %s; readiness compares it anyway but cannot refuse", adapter_path, other_base)
    return ExpectedCanary(adapter=str(adapter_path), canary=canary, other_base=other_base)


def prepare_vllm(
    members: Sequence[ResolvedProfile],
    *,
    group: str | None = None,
    check: bool = True,
    provision: bool = True,
    python: str = sys.executable,
    log_dir: Path | None = None,
    progress: object = None,
) -> LaunchPlan:
    """Check every member, resolve the base, export each adapter to PEFT (cached), build the plan.

    ``provision=False`` (a dry run) writes nothing: the plan names the cache
    directories the exports will be written to. Each member with an adapter gets
    its canary (read from its mlx_lm adapter, where it was recorded) probed on its
    own LoRA id: the lead's as the readiness probe, the others right after
    (`vllm_canaries`).
    """
    from punie.adapters.peft import ensure_exported, exported_dir, is_peft_adapter, plan_export, plan_peft

    for m in members:
        if m.profile.fuse.enabled:
            raise ConfigError("fuse.enabled applies to mlx profiles: vLLM serves the adapter as a LoRA",
                              where=f"profiles.{m.name}.fuse.enabled", hint="remove it from this profile")
    if len(members) > 1 or group:
        check_group(members, group)
    if check:
        for m in members:
            run_check(m)
    lead = members[0]
    if lead.profile.server.url:
        plan = build_vllm_plan(members, model_path=None, lora_dirs={}, python=python, log_dir=log_dir, group=group)
        return vllm_canaries(plan, members, model_path=None, adapters={}, compute=provision)
    model = resolve_model_path(lead, provision=provision, progress=progress)  # type: ignore[arg-type]
    cache = state_dir(lead.project_dir) / PEFT_CACHE
    lora_dirs: dict[str, Path] = {}
    sources: dict[str, Path] = {}
    max_rank = lead.profile.server.vllm.max_lora_rank
    for m in members:
        adapter = resolve_adapter_path(m)
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
                lora_dirs[m.name] = ensure_exported(adapter, cache) if provision else exported_dir(adapter, cache)
    plan = build_vllm_plan(members, model_path=model, lora_dirs=lora_dirs, python=python, log_dir=log_dir,
                           group=group)
    return vllm_canaries(plan, members, model_path=model, adapters=sources, compute=provision)


def vllm_canaries(
    plan: LaunchPlan,
    members: Sequence[ResolvedProfile],
    *,
    model_path: Path | None,
    adapters: Mapping[str, Path],
    compute: bool,
) -> LaunchPlan:
    """``plan`` with each adapter member's canary aimed at its LoRA id (``plan.models``).

    The lead's (whose id the agent and the readiness probe send) is ``plan.canary``,
    the others ``plan.member_canaries``. ``adapters``: member -> its mlx_lm adapter
    directory (empty with ``server.url``: `expected_canary` resolves the profile's).
    """
    found: dict[str, ExpectedCanary] = {}
    for m in members:
        if not has_adapter(m.profile):
            continue
        expected = expected_canary(m, model_path=model_path, adapter_path=adapters.get(m.name), compute=compute)
        if expected is not None:
            found[m.name] = expected.model_copy(update={"model": plan.models[m.name]})
    lead = members[0].name
    return plan.model_copy(update={"canary": found.pop(lead, None), "member_canaries": tuple(found.values())})
