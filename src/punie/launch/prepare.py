"""From a resolved profile to a launch plan: check, resolve model and adapter, build the plan.

Shared by a dry run and a real run, so both see the same plan.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from punie.config.models import ResolvedProfile
from punie.errors import CheckFailed, ConfigError, ModelError, ModelNotProvisioned
from punie.launch.plan import LaunchPlan, build_plan, refuse_remote
from punie.weights import Progress

logger = logging.getLogger(__name__)


def run_check(resolved: ResolvedProfile) -> None:
    """Run `punie check` on the profile; raise CheckFailed listing the errors, log the warnings."""
    from punie.checks import check_profiles

    report = check_profiles([resolved])
    errors = [p for p in report.problems if p.severity == "error"]
    for problem in report.problems:
        if problem.severity != "error":
            logger.warning("%s: %s", problem.where or problem.profile, problem.message)
    if errors:
        lines = [f"profile '{resolved.name}' has {len(errors)} error(s); not launching (--no-check skips this):"]
        lines += [f"  {p.where + ': ' if p.where else ''}{p.message}" for p in errors]
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
            logger.warning("%s is not provisioned yet: `punie up` will fetch it to %s", spec, target)
            return target
        logger.warning("provisioning %s (first use)", spec)
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
        from punie.launch.vllm import prepare_vllm

        return prepare_vllm([resolved], check=check, provision=provision, python=python, log_dir=log_dir,
                            progress=progress)
    if check:
        run_check(resolved)
    if resolved.profile.server.url:
        model = adapter = None
    else:
        model = resolve_model_path(resolved, provision=provision, progress=progress)
        adapter = resolve_adapter_path(resolved)
    return build_plan(resolved, model_path=model, adapter_path=adapter, python=python, log_dir=log_dir)
