"""Fuse an adapter into its base (mlx_lm, in a child process) and verify the result by its canary.

`ensure_fused` is the one entry point, for `punie adapters fuse` and for `punie up` of a profile
with ``fuse.enabled``: it returns the cache entry of (base weights, adapter content, output spec)
(`punie.adapters.fuse`), fusing it first when there is none or when the one there is corrupt.

Verification: the adapter's canary (``punie-adapter.json``) records the top-k first-token
logprobs of the base alone and of the base with the adapter applied on the fly. The fused
model, loaded back from disk, must answer the canary's prompt like the adapter: within
`MATCH_TOLERANCE` of it. Answering as the base (re-quantization rounded the LoRA delta away,
mlx-lm issue 1172) or drifting past the tolerance refuses the fused model, with both distances
and a hint; a refused model is never committed to the cache. A cache hit is verified again
when the adapter's canary changed since (a re-stamp), and its files are hashed every time.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from punie.adapters.canary import Canary, TopToken, base_fingerprint
from punie.adapters.fuse import (
    INDEX_FILE,
    FuseCheckRecord,
    FusedManifest,
    FuseSpec,
    adapter_content_hash,
    canary_digest,
    commit,
    discard,
    entry_dir,
    entry_lock,
    file_digests,
    fuse_key,
    integrity_problem,
    new_work_dir,
    read_manifest,
    write_manifest,
)
from punie.config.models import ResolvedProfile
from punie.errors import AdapterError, ConfigError, CorruptFileError, PunieError
from punie.launch.canary import MATCH_TOLERANCE, MIN_SEPARATION, ExpectedCanary, classify
from punie.paths import fused_models_dir
from punie.weights.fingerprint import base_identity

logger = logging.getLogger(__name__)

#: How fuse_mlx's one line of JSON starts (its other output is logs).
_RESULT = '{"fused": '


class FuseRefused(AdapterError):
    """The fused model does not answer like the adapter applied on the fly: not served."""

    def __init__(self, message: str, *, check: FuseCheck, where: str | None = None, hint: str | None = None):
        self.check = check
        super().__init__(message, where=where, hint=hint)


@dataclass(frozen=True)
class FuseCheck:
    """The fused model's canary against the adapter's recorded one."""

    verdict: str  # adapter-active | base | neither | indistinct
    to_adapter: float
    to_base: float
    separation: float

    @property
    def ok(self) -> bool:
        """Served only when it answers like the adapter (an indistinct canary proves nothing: refused too)."""
        return self.verdict == "adapter-active"

    def distances(self) -> str:
        return (f"distance to the adapter applied on the fly {_fmt(self.to_adapter)}, to the base alone "
                f"{_fmt(self.to_base)} (tolerance {MATCH_TOLERANCE:g})")

    def record(self, canary: Canary, top: list[TopToken], engine: str | None) -> FuseCheckRecord:
        return FuseCheckRecord(canary=canary_digest(canary), top=top, verdict=self.verdict,
                               distance_to_adapter=self.to_adapter, distance_to_base=self.to_base,
                               separation=self.separation, engine=engine)

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "distance_to_adapter": self.to_adapter,
                "distance_to_base": self.to_base, "separation": self.separation, "tolerance": MATCH_TOLERANCE}


def _fmt(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.4f}"


def judge_fused(canary: Canary, top: list[TopToken]) -> FuseCheck:
    """Compare the fused model's top-k with the canary (the same rule as the readiness probe)."""
    observed = {str(t.id): t.logprob for t in top}
    result = classify(canary, observed, adapter="fused")
    assert result.to_adapter is not None and result.to_base is not None and result.separation is not None
    return FuseCheck(result.verdict, result.to_adapter, result.to_base, result.separation)


def refusal(check: FuseCheck, *, fused: str, adapter: str, spec: FuseSpec) -> FuseRefused:
    """The error refusing a fused model, naming both distances and what to do."""
    if check.verdict == "indistinct":
        what = (f"the canary of {adapter} cannot tell the adapter from the base (they differ by "
                f"{_fmt(check.separation)} < {MIN_SEPARATION:g}), so the fused model cannot be verified")
        hint = "serve the adapter on the fly (fuse.enabled = false), or record a canary that separates them"
    else:
        said = "answers as the base alone: the adapter's delta was lost" if check.verdict == "base" else \
            "drifted away from the adapter"
        what = f"the fused model ({spec.describe()}) {said}; {check.distances()}"
        if spec.bits is not None:
            bits = "the base's bits" if spec.bits == "base" else f"{spec.bits} bits"
            hint = (f"re-quantizing to {bits} rounds LoRA deltas away (mlx-lm issue 1172): fuse without "
                    "re-quantizing (drop --bits / fuse.bits: the fused model is then de-quantized)"
                    + (", or with more bits" if isinstance(spec.bits, int) and spec.bits < 8 else ""))
        else:
            hint = ("a de-quantized fuse should keep the delta exactly: is the canary recorded on this base? "
                    "(`punie adapters stamp NAME --base PROFILE`)"
                    + (f"; a {spec.dtype} cast loses precision, try float32" if spec.dtype else ""))
    return FuseRefused(f"fused model refused: {what}", check=check, where=fused, hint=hint)


@dataclass(frozen=True)
class FusedModel:
    """A verified fused model: its directory, whether the cache already had it, its check."""

    path: Path
    reused: bool
    check: FuseCheck
    manifest: FusedManifest

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "reused": self.reused, "check": self.check.to_json(),
                "spec": self.manifest.spec.model_dump(mode="json"), "base_model": self.manifest.base_model,
                "adapter": self.manifest.adapter}


def _run_child(argv: list[str], *, where: str) -> tuple[list[TopToken], str | None]:
    from punie.launch.runner import run_to_end
    from punie.launch.stamp import _child_env

    printed: list[str] = []
    try:
        code, tail = run_to_end("fuse", argv, env=_child_env(),
                                on_line=lambda line: printed.append(line) if line.startswith(_RESULT) else None)
    except OSError as exc:
        raise AdapterError(f"cannot run mlx_lm: {exc}", where=where) from exc
    if code != 0 or not printed:
        lines = "\n  ".join(tail[-8:])
        raise AdapterError(f"fusing with mlx_lm failed (exit code {code}):\n  {lines}", where=where)
    try:
        data = json.loads(printed[-1])
        return [TopToken.model_validate(t) for t in data["top"]], data.get("engine")
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise AdapterError(f"mlx_lm printed no result ({exc})", where=where) from exc


def _fuse_argv(python: str, base: Path, adapter: Path, out: Path, spec: FuseSpec, canary: Canary) -> list[str]:
    return [python, "-m", "punie.adapters.fuse_mlx", "--model", str(base), "--adapter", str(adapter),
            "--out", str(out), *spec.child_args(), "--prompt", canary.prompt, "--top-k", str(canary.top_k)]


def _verify_argv(python: str, model: Path, canary: Canary) -> list[str]:
    return [python, "-m", "punie.adapters.fuse_mlx", "--verify-only", "--out", str(model),
            "--prompt", canary.prompt, "--top-k", str(canary.top_k)]


def _same_base(canary: Canary, base: Path, adapter: Path) -> None:
    """The canary must have been recorded on this very base: else no distance means anything."""
    if not canary.base_fingerprint:
        return
    fingerprint = base_fingerprint(base)
    if fingerprint is not None and fingerprint != canary.base_fingerprint:
        raise AdapterError(
            f"its canary was recorded on another base (fingerprint {canary.base_fingerprint[:16]}, "
            f"{base} is {fingerprint[:16]}): a fused model cannot be verified against it",
            where=str(adapter), hint="record the canary on this base: `punie adapters stamp NAME --base PROFILE`")


def ensure_fused(
    base: str | Path,
    adapter: str | Path,
    spec: FuseSpec,
    *,
    canary: Canary,
    python: str = sys.executable,
    root: Path | None = None,
    on_event: Callable[[str, str], None] | None = None,
) -> FusedModel:
    """The verified fused model of ``adapter`` on ``base`` (fused once into the cache, then reused).

    ``on_event(kind, detail)`` is told ``reused``, ``corrupt``, ``fusing``, ``verifying``, ``fused``.
    Raises FuseRefused when the fused model does not answer like the adapter (nothing is cached
    then), AdapterError when fusing fails or the canary belongs to another base.
    """
    from punie.adapters.metadata import now_iso

    base, adapter = Path(base).resolve(), Path(adapter).resolve()
    event = on_event or (lambda kind, detail: None)
    _same_base(canary, base, adapter)
    base_weights = base_identity(base).weights
    adapter_hash = adapter_content_hash(adapter)
    key = fuse_key(base_weights, adapter_hash, spec)
    entry = entry_dir(key, root)
    with entry_lock(entry):
        try:
            manifest = read_manifest(entry)
            problem = integrity_problem(entry, manifest) if manifest is not None else (
                "no manifest" if entry.exists() else None)
        except (CorruptFileError, OSError) as exc:
            manifest, problem = None, str(exc)
        if manifest is not None and problem is None:
            if manifest.check.canary == canary_digest(canary):
                check = FuseCheck(manifest.check.verdict, manifest.check.distance_to_adapter,
                                  manifest.check.distance_to_base, manifest.check.separation)
            else:  # the adapter was re-stamped since: verify the entry against the canary it has now
                event("verifying", str(entry))
                top, engine = _run_child(_verify_argv(python, entry, canary), where=str(entry))
                check = judge_fused(canary, top)
                manifest = manifest.model_copy(update={"check": check.record(canary, top, engine)})
                write_manifest(entry, manifest)
            if not check.ok:
                raise refusal(check, fused=str(entry), adapter=str(adapter), spec=spec)
            event("reused", str(entry))
            logger.info("reusing the fused model %s", entry)
            return FusedModel(entry, True, check, manifest)
        if problem is not None:
            event("corrupt", f"{entry}: {problem}")
            logger.warning("the fused model %s is corrupt (%s): fusing it again", entry, problem)
        event("fusing", str(entry))
        logger.warning("fusing %s into %s (%s), once: %s", adapter, base, spec.describe(), entry)
        work = new_work_dir(entry)
        try:
            top, engine = _run_child(_fuse_argv(python, base, adapter, work, spec, canary), where=str(adapter))
            if not (work / INDEX_FILE).is_file():
                raise AdapterError(f"mlx_lm wrote no {INDEX_FILE}", where=str(work))
            check = judge_fused(canary, top)
            if not check.ok:
                raise refusal(check, fused=f"fused model of {adapter}", adapter=str(adapter), spec=spec)
            manifest = FusedManifest(key=key, base_model=str(base), base_weights=base_weights, adapter=str(adapter),
                                     adapter_hash=adapter_hash, spec=spec, created=now_iso(),
                                     files=file_digests(work), check=check.record(canary, top, engine))
            write_manifest(work, manifest)
            commit(work, entry)
        except BaseException:
            discard(work)
            raise
    event("fused", str(entry))
    return FusedModel(entry, False, check, manifest)


# --------------------------------------------------------------------------- a profile's fused model


def profile_fused_model(
    resolved: ResolvedProfile,
    *,
    model: Path,
    adapter: Path | None,
    expected: ExpectedCanary | None,
    provision: bool,
    python: str = sys.executable,
) -> Path:
    """The fused model `punie up` serves for a profile with ``fuse.enabled`` (fused and verified first).

    ``provision=False`` (a dry run) fuses nothing: the cache entry it would use is returned.
    """
    where = f"profiles.{resolved.name}.fuse.enabled"
    if adapter is None:
        raise ConfigError("there is no adapter to fuse", where=where, hint="set `adapter` (or `adapters`), "
                          "or fuse.enabled = false")
    spec = FuseSpec.of(resolved.profile.fuse, where=f"profiles.{resolved.name}.fuse")
    if not provision:
        try:
            key = fuse_key(base_identity(model).weights, adapter_content_hash(adapter), spec)
        except (PunieError, OSError):
            logger.info("the fused model's cache entry is known once %s is provisioned", model)
            return fused_models_dir() / "KEY"
        return entry_dir(key)
    if expected is None:
        raise AdapterError("it has no canary, so a fused model of it cannot be verified", where=str(adapter),
                           hint=f"record one: `punie adapters stamp {adapter} --base {resolved.name}`")
    return ensure_fused(model, adapter, spec, canary=expected.canary, python=python).path
