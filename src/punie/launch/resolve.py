"""Resolve what a launch serves: the model and adapter directories, and the canary readiness checks.

Used by every backend's `prepare` (`punie.launch.backends`) through
`punie.launch.backends.base.LaunchInputs`, which takes the paths the check already resolved
first and resolves here only what the check did not (a model to provision, a composition).
"""

from __future__ import annotations

import logging
from pathlib import Path

from punie.config.models import ResolvedProfile
from punie.errors import AdapterError, ConfigError, ModelError, ModelNotProvisioned
from punie.launch.canary import ExpectedCanary
from punie.weights import Progress

logger = logging.getLogger(__name__)


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


def served_canary(expected: ExpectedCanary, served: Path) -> ExpectedCanary:
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
    names it: the running server is then checked for it too (``adapter_path`` is
    resolved once, by `punie.launch.backends.base.LaunchInputs.adapter_path`). No canary means the
    adapter is not verified (a warning); one recorded on another base model (another
    quantization, say) is still compared, but can only warn.
    A composition of the profile's ``adapters`` gets its canary computed here once
    (``compute``; its directory is a cache), as nobody else could stamp it.
    """
    from punie.adapters.canary import base_fingerprint
    from punie.adapters.metadata import read_canary

    profile = resolved.profile
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
