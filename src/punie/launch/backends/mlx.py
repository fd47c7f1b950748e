"""The mlx backend: one ``mlx_lm.server`` serving one model and (at most) one adapter.

Its plan part holds the fast BLAS preloaded into the server (`punie.launch.blas`) and, when a
dense copy of a quantized model is served (`punie.launch.dense`), the model it is a copy of.
Preparing resolves the model (provisioning a builtin one), composes adapters, computes the
canary, and serves either the adapter fused into the base (``fuse.enabled``,
`punie.launch.fuse`), or a dense copy where faster, or the model as it is.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from punie.config.models import ResolvedProfile
from punie.launch.backends.base import Backend, BackendPart, LaunchInputs
from punie.launch.blas import BlasChoice, hint_text, preload_env
from punie.launch.mlx_flags import sampling_flags
from punie.launch.plan import LaunchPlan, common_plan
from punie.launch.resolve import expected_canary, served_canary

logger = logging.getLogger(__name__)

ENGINE = "mlx_lm.server"

class MlxPart(BackendPart):
    """mlx's part of a plan: the BLAS preloaded (None: mlx's bundled one) or why none, the
    one-line install hint when one would help, and the quantized model a dense copy is of."""

    name: Literal["mlx"] = "mlx"
    engine: ClassVar[str] = ENGINE
    blas: str | None = None
    blas_note: str | None = None
    blas_hint: str | None = None
    dense_of: str | None = Field(None, description="The quantized model ``model`` is a dense copy of "
                                 "(punie.launch.dense); checks and canaries use that one.")

    def model_note(self) -> str:
        return f" (dense copy of {self.dense_of})" if self.dense_of else ""

    def describe(self) -> list[str]:
        return [f"  blas:    {self.blas + ' (preloaded)' if self.blas else f'bundled ({self.blas_note})'}"]


def server_argv(resolved: ResolvedProfile, *, model: str, adapter: str | None, python: str) -> tuple[str, ...]:
    """The mlx_lm.server command line of a profile (flag names as in `mlx_lm server --help`)."""
    server = resolved.profile.server
    argv = [python, "-m", "mlx_lm", "server", "--model", model]
    if adapter:
        argv += ["--adapter-path", adapter]
    argv += ["--host", server.host, "--port", str(server.port), *sampling_flags(server)]
    if server.draft_model:
        argv += ["--draft-model", server.draft_model]
    argv += list(server.extra_args)
    return tuple(argv)


def build_mlx_plan(
    resolved: ResolvedProfile,
    *,
    model_path: Path | None,
    adapter_path: Path | None,
    python: str,
    remote: bool,
    log_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    blas: BlasChoice | None = None,
    dense_of: Path | None = None,
) -> LaunchPlan:
    """The plan of one mlx_lm.server for ``resolved`` (pure: reads no files, starts nothing).

    With ``server.url`` the server is external: no argv, ``model_path`` may be None.
    ``blas`` (`punie.launch.blas.find_blas`, which reads the disk) is preloaded into the server.
    """
    import os

    server = resolved.profile.server
    argv: tuple[str, ...] | None = None
    model = adapter = None
    if not server.url:
        if model_path is None:
            raise ValueError("model_path is required when the server is started (no server.url)")
        model = str(model_path)
        adapter = str(adapter_path) if adapter_path is not None else None
        argv = server_argv(resolved, model=model, adapter=adapter, python=python)
    started = blas is not None and argv is not None
    part = MlxPart(blas=blas.path if started else None, blas_note=blas.reason if started else None,
                   blas_hint=hint_text(blas) if started else None,
                   dense_of=str(dense_of) if dense_of is not None and argv is not None else None)
    overrides = preload_env(blas, os.environ if environ is None else environ) if started else {}
    agent_args = ("--options", resolved.profile.agent.model_dump_json(), "--profile", resolved.name,
                  *(("--config", resolved.config_path) if resolved.config_path else ()),
                  *(("--warm",) if argv is not None else ()))  # our server: warm its prompt cache
    return common_plan(resolved, label=resolved.name, part=part, model=model, adapter=adapter, argv=argv,
                       server_env={}, env_overrides=overrides, python=python, agent_args=agent_args,
                       remote=remote, log_dir=log_dir, environ=environ)


def build_plan(
    resolved: ResolvedProfile,
    *,
    model_path: Path | None,
    adapter_path: Path | None,
    python: str = sys.executable,
    log_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    blas: BlasChoice | None = None,
) -> LaunchPlan:
    """`build_mlx_plan` behind the remote-host guard (`punie.launch.plan.refuse_remote`), for callers that
    hold resolved paths (tests, benches); `punie up` goes through `punie.launch.prepare`."""
    from punie.launch.plan import refuse_remote

    if resolved.profile.server.backend != MlxBackend.name:
        raise ValueError(f"profile {resolved.name!r} does not run on mlx: build its plan with punie.launch.prepare")
    return build_mlx_plan(resolved, model_path=model_path, adapter_path=adapter_path, python=python,
                          remote=refuse_remote(resolved), log_dir=log_dir, environ=environ, blas=blas)


class MlxBackend(Backend):
    """mlx_lm.server: one model, one adapter (``--adapter-path``, applied to requests without a model id)."""

    name: ClassVar[str] = "mlx"
    engine: ClassVar[str] = ENGINE
    part: ClassVar[type[BackendPart]] = MlxPart

    def prepare(self, inputs: LaunchInputs) -> LaunchPlan:
        from punie.launch.blas import find_blas

        resolved = inputs.lead
        profile = resolved.profile
        provision, python = inputs.provision, inputs.python
        external = bool(profile.server.url)
        model = None if external else inputs.model_path()
        adapter = inputs.adapter_path()
        blas = find_blas(profile.server.blas) if model is not None else None
        canary = expected_canary(resolved, model_path=model, adapter_path=adapter, compute=provision)
        if external:
            adapter = None  # named for its canary only: nothing is started with it
        build: dict[str, Any] = {"python": python, "remote": inputs.remote, "log_dir": inputs.log_dir, "blas": blas}
        if profile.fuse.enabled and model is not None:
            # fuse.enabled: serve the adapter fused into the base (cached, verified by the canary first);
            # the readiness probe still checks the same canary, now on the fused model.
            from punie.launch.fuse import profile_fused_model

            fused = profile_fused_model(resolved, model=model, adapter=adapter, expected=canary,
                                        provision=provision, python=python)
            plan = build_mlx_plan(resolved, model_path=fused, adapter_path=None, **build)
            return plan if canary is None else plan.model_copy(update={"canary": canary})
        served = model
        if model is not None:  # a dense copy where faster; checks and canaries keep using the original
            from punie.launch.dense import served_model

            served = served_model(profile.server.dense, profile.model, model, blas, provision=provision)
        plan = build_mlx_plan(resolved, model_path=served, adapter_path=adapter,
                              dense_of=model if served != model else None, **build)
        if canary is not None and served is not None and served != model and provision:
            canary = served_canary(canary, served)
        return plan if canary is None else plan.model_copy(update={"canary": canary})

    def expected_ids(self, plan: LaunchPlan) -> tuple[str, ...]:
        """mlx_lm lists the resolved path of its model (a relative one from the server's working folder)."""
        if not plan.model:
            return ()
        path = Path(plan.cwd, plan.model)
        return (str(path.resolve()),) if path.exists() else ()

    def after_ready(self, plan: LaunchPlan, pid: int) -> tuple[dict[str, Any] | None, list[str]]:
        """Say which BLAS the started server really mapped (/proc/PID/maps), or what to install."""
        from punie.launch.blas import blas_report, say_once

        part = plan.backend
        assert isinstance(part, MlxPart)
        report: dict[str, Any] = {**blas_report(pid, part.blas), "note": part.blas_note}
        lines: list[str] = []
        if report["active"]:
            lines.append(f"BLAS: {part.blas} (mapped by the server)")
        elif part.blas:
            lines.append(f"warning: BLAS: {part.blas} was preloaded but the server did not map it")
        elif hint := say_once(part.blas_hint):
            lines.append(hint)
        logger.info("server BLAS: %s", report)
        return report, lines

    def hint(self, reason: str, plan: LaunchPlan) -> str | None:
        if reason != "adapter-not-applied":
            return None
        if plan.external:
            return ("restart that server with the adapter (mlx_lm.server --adapter-path DIR), and send no "
                    "`model` field: mlx_lm applies --adapter-path only to requests without one")
        return ("the server loaded the base model alone: check the server log above, the mlx_lm version "
                "(some releases ignore --adapter-path) and `punie check` on this profile")
