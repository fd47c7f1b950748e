"""Inspect an adapter directory: adapter_config.json and the adapters.safetensors header.

Nothing is loaded: the config is JSON and the tensors are described by their
header. Problems are collected as `Finding` values so a check can report all
of them at once; `read_adapter` raises the first one for callers that want an
exception.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from punie.errors import AdapterError, CorruptFileError
from punie.weights.safetensors import SafetensorsHeader, read_header

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapters.safetensors"
FINE_TUNE_TYPES = ("lora", "dora", "full")

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    """One problem found in an adapter or in how it fits a model.

    ``where`` names the file (and tensor, if any): ``.../adapters.safetensors: model.layers.3...``.
    """

    severity: Severity
    code: str
    where: str
    message: str


@dataclass(frozen=True)
class AdapterConfig:
    """The fields of adapter_config.json that decide how mlx_lm applies an adapter."""

    fine_tune_type: str
    num_layers: int
    rank: int | None
    scale: float | None
    model: str | None = None
    keys: tuple[str, ...] | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class AdapterInspection:
    """What could be read of an adapter directory, and what was wrong with it."""

    path: Path
    config: AdapterConfig | None
    header: SafetensorsHeader | None
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_adapter_config(doc: object, where: str) -> tuple[AdapterConfig | None, list[Finding]]:
    """Validate a parsed adapter_config.json the way mlx_lm's load_adapters will use it."""
    findings: list[Finding] = []

    def bad(key: str, message: str) -> None:
        findings.append(Finding("error", "adapter-config", f"{where}: {key}", message))

    if not isinstance(doc, dict):
        bad("(top level)", "must be a JSON object")
        return None, findings
    fine_tune_type = doc.get("fine_tune_type", "lora")
    if fine_tune_type not in FINE_TUNE_TYPES:
        bad("fine_tune_type", f"{fine_tune_type!r} is not one of {', '.join(FINE_TUNE_TYPES)}")
    num_layers = doc.get("num_layers")
    if num_layers is None:
        bad("num_layers", "missing (mlx_lm needs it to know which layers get LoRA)")
    elif not _is_int(num_layers) or num_layers < -1:
        bad("num_layers", f"{num_layers!r} must be -1 (all layers) or a positive integer")
    rank = scale = None
    keys = None
    if fine_tune_type != "full":
        params = doc.get("lora_parameters")
        if not isinstance(params, dict):
            bad("lora_parameters", "missing or not an object (needs rank, scale, dropout)")
        else:
            rank, scale = params.get("rank"), params.get("scale")
            if not _is_int(rank) or rank < 1:
                bad("lora_parameters.rank", f"{rank!r} must be a positive integer")
                rank = None
            if not _is_number(scale):
                hint = " (mlx_lm uses 'scale', not 'alpha')" if "alpha" in params else ""
                bad("lora_parameters.scale", f"{scale!r} must be a number{hint}")
                scale = None
            if "dropout" not in params:
                bad("lora_parameters.dropout", "missing (mlx_lm fails with KeyError without it)")
            raw_keys = params.get("keys")
            if raw_keys is not None:
                if isinstance(raw_keys, list) and all(isinstance(k, str) for k in raw_keys):
                    keys = tuple(raw_keys)
                else:
                    bad("lora_parameters.keys", "must be a list of module paths")
    model = doc.get("model")
    if findings:
        return None, findings
    return AdapterConfig(
        fine_tune_type=str(fine_tune_type),
        num_layers=int(num_layers),  # type: ignore[arg-type]
        rank=rank,
        scale=float(scale) if scale is not None else None,
        model=model if isinstance(model, str) else None,
        keys=keys,
        raw=doc,
    ), findings


def inspect_adapter(path: str | Path, *, display: str | None = None) -> AdapterInspection:
    """Read an adapter directory and collect every problem of its own files.

    ``display`` is how the directory is named in findings (defaults to the path).
    """
    path = Path(path)
    name = display or str(path)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        missing = Finding("error", "adapter-missing", name, f"adapter directory {what}")
        return AdapterInspection(path, None, None, [missing])
    findings: list[Finding] = []
    config: AdapterConfig | None = None
    config_where = f"{name}/{CONFIG_NAME}"
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        findings.append(Finding("error", "adapter-config-missing", config_where, "missing"))
    else:
        try:
            doc = json.loads(config_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            findings.append(Finding("error", "corrupt-file", config_where, f"not valid JSON ({exc})"))
        else:
            config, found = validate_adapter_config(doc, config_where)
            findings += found
    header: SafetensorsHeader | None = None
    weights_where = f"{name}/{WEIGHTS_NAME}"
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        note = " (training may have crashed before saving)" if config_file.is_file() else ""
        findings.append(Finding("error", "adapter-weights-missing", weights_where, f"missing{note}"))
    else:
        try:
            header = read_header(weights)
        except CorruptFileError as exc:
            findings.append(Finding("error", "corrupt-file", weights_where, exc.message))
        except OSError as exc:
            findings.append(Finding("error", "unreadable", weights_where, str(exc)))
        else:
            if not header.tensors:
                findings.append(Finding("error", "adapter-empty", weights_where, "holds no tensors"))
    return AdapterInspection(path, config, header, findings)


def read_adapter(path: str | Path) -> AdapterInspection:
    """Like `inspect_adapter`, but raise AdapterError (CorruptFileError) for the first error."""
    inspection = inspect_adapter(path)
    for finding in inspection.findings:
        if finding.severity == "error":
            cls = CorruptFileError if finding.code == "corrupt-file" else AdapterError
            raise cls(finding.message, where=finding.where)
    return inspection
