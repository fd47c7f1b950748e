"""Is the profile's base model the one the adapter was trained on? (`punie check`'s base verdict)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from punie.adapters.files import CONFIG_FILE, METADATA_FILE
from punie.adapters.identity import RecordedBase, adapter_base, recorded_base
from punie.adapters.inspect import AdapterInspection
from punie.config.models import ResolvedProfile
from punie.errors import CorruptFileError, PunieError
from punie.findings import Finding
from punie.weights.fingerprint import base_identity
from punie.weights.headers import ModelShapes


@dataclass(frozen=True)
class BaseVerdict:
    """Findings about the base (warnings, or errors) and a line for what passed."""

    findings: list[Finding] = field(default_factory=list)
    note: str | None = None


def base_verdict(inspection: AdapterInspection, model_path: Path, shapes: ModelShapes | None,
                 resolved: ResolvedProfile, *, display: str, fits: bool, strict: bool = False) -> BaseVerdict:
    """Compare the adapter's recorded base identity with the profile's model.

    Same weights: a note. Other weights: a warning when the tensors fit (an error
    under ``strict`` or when they do not fit). Unknown (nothing recorded, or the
    recorded model is not available here): a note only. A corrupt
    punie-adapter.json is a warning and the config's ``model`` is used instead.
    """
    findings: list[Finding] = []
    config_model = inspection.config.model if inspection.config else None
    try:
        recorded = adapter_base(inspection.path, config_model, resolved.project_dir)
    except CorruptFileError as exc:
        findings.append(Finding("warning", "corrupt-metadata", f"{display}/{METADATA_FILE}",
                                f"{exc.message}; the base identity is not used"))
        recorded = recorded_base(None, config_model, resolved.project_dir)
    if recorded.identity is None:
        what = f"trained on {recorded.label!r}, not available here" if recorded.label else "nothing recorded"
        return BaseVerdict(findings, f"base identity: unknown ({what}; `punie adapters stamp` records it)")
    try:
        files = list(shapes.files) if shapes is not None else None
        current = base_identity(model_path, files)
    except (PunieError, OSError):
        return BaseVerdict(findings, "base identity: unknown (the profile's model cannot be fingerprinted)")
    if recorded.identity.same_weights(current):
        return BaseVerdict(findings, "base identity: the weights the adapter was trained on")
    findings.append(_differs(recorded, current.same_shapes(recorded.identity), display, resolved, fits, strict))
    return BaseVerdict(findings)


def _differs(recorded: RecordedBase, same_shapes: bool, display: str, resolved: ResolvedProfile,
             fits: bool, strict: bool) -> Finding:
    spec = resolved.profile.model or "?"
    where = (f"{display}/{METADATA_FILE}: base" if recorded.source == "metadata"
             else f"{display}/{CONFIG_FILE}: model")
    if not fits:
        tail = "and its tensors do not fit this model"
    elif same_shapes:
        tail = "same shapes, different weights (another fine-tune of the same architecture?)"
    else:
        tail = "shapes match (a differently quantized copy of one base?)"
    severity = "error" if strict or not fits else "warning"
    strict_note = " (--strict)" if strict and fits else ""
    return Finding(severity, "model-differs", where,
                   f"adapter was trained on {recorded.label!r}, the profile uses {spec!r}: {tail}{strict_note}")
