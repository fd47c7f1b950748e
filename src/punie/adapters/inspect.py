"""Inspect an adapter directory: adapter_config.json and the adapters.safetensors header.

Nothing is loaded: the config is JSON (read with Punie's bounded reader) and
the tensors are described by their header. Problems are collected as
`Finding` values so a check can report all of them at once; `read_adapter`
raises the first one for callers that want an exception.

The config is judged the way mlx_lm's ``load_adapters`` reads it: a missing
``fine_tune_type`` is ``lora`` and any value other than ``full`` or ``dora``
is applied as LoRA; ``num_layers`` and ``lora_parameters.scale`` are always
needed; ``rank`` and ``dropout`` only once a module is wrapped (see `fit`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from punie.adapters.files import CONFIG_FILE, WEIGHTS_FILE, checkpoints, peft_weights
from punie.errors import AdapterError, CorruptFileError
from punie.findings import Finding, Severity
from punie.jsonio import load_json_file
from punie.weights.safetensors import SafetensorsHeader, read_header

__all__ = [
    "CONFIG_NAME",
    "FINE_TUNE_TYPES",
    "WEIGHTS_NAME",
    "AdapterConfig",
    "AdapterInspection",
    "Finding",
    "Severity",
    "inspect_adapter",
    "read_adapter",
    "validate_adapter_config",
]

CONFIG_NAME = CONFIG_FILE
WEIGHTS_NAME = WEIGHTS_FILE
FINE_TUNE_TYPES = ("lora", "dora", "full")
#: adapter_config.json files larger than this are refused (mlx_lm's are a few KB).
MAX_CONFIG_BYTES = 8 * 1024 * 1024
IMPORT_HINT = "convert it with `punie adapters import DIR`"


@dataclass(frozen=True)
class AdapterConfig:
    """The fields of adapter_config.json that decide how mlx_lm applies an adapter.

    ``rank``, ``scale`` and ``dropout`` are kept as written (any JSON value):
    whether they are usable depends on whether a module gets wrapped.
    """

    fine_tune_type: str
    num_layers: int
    rank: Any = None
    scale: Any = None
    model: str | None = None
    keys: tuple[str, ...] | None = None
    dropout: Any = 0.0
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def use_dora(self) -> bool:
        return self.fine_tune_type == "dora"


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


def validate_adapter_config(doc: object, where: str) -> tuple[AdapterConfig | None, list[Finding]]:
    """Validate a parsed adapter_config.json the way mlx_lm's load_adapters will use it."""
    findings: list[Finding] = []

    def bad(key: str, message: str, severity: Severity = "error") -> None:
        findings.append(Finding(severity, "adapter-config", f"{where}: {key}", message))

    if not isinstance(doc, dict):
        bad("(top level)", "must be a JSON object")
        return None, findings
    if "peft_type" in doc or "base_model_name_or_path" in doc:
        bad("(top level)", f"this is a Hugging Face PEFT adapter config, not mlx_lm's; {IMPORT_HINT}")
        return None, findings
    fine_tune_type = doc.get("fine_tune_type", "lora")
    if fine_tune_type not in FINE_TUNE_TYPES:
        bad("fine_tune_type", f"{_short(fine_tune_type)} is not one of {', '.join(FINE_TUNE_TYPES)}; "
            "mlx_lm applies it as lora", "warning")
        fine_tune_type = "lora"
    num_layers = doc.get("num_layers")
    if "num_layers" not in doc:
        bad("num_layers", "missing (mlx_lm needs it to know which layers get LoRA)")
    elif not _is_int(num_layers):
        bad("num_layers", f"{_short(num_layers)} must be an integer (-1: all layers)")
    rank = scale = None
    dropout: Any = None
    keys = None
    if fine_tune_type != "full":
        params = doc.get("lora_parameters")
        if not isinstance(params, dict):
            bad("lora_parameters", "missing or not an object (needs rank, scale, dropout)")
        else:
            rank, scale, dropout = params.get("rank"), params.get("scale"), params.get("dropout", _MISSING)
            if "scale" not in params:
                hint = " (mlx_lm uses 'scale', not 'alpha')" if "alpha" in params else ""
                bad("lora_parameters.scale", f"missing{hint}")
            raw_keys = params.get("keys")
            if raw_keys is not None:
                if isinstance(raw_keys, list) and all(isinstance(k, str) for k in raw_keys):
                    keys = tuple(raw_keys)
                else:
                    bad("lora_parameters.keys", "must be a list of module paths")
    model = doc.get("model")
    if any(f.severity == "error" for f in findings):
        return None, findings
    return AdapterConfig(
        fine_tune_type=str(fine_tune_type),
        num_layers=int(num_layers),  # type: ignore[arg-type]
        rank=rank,
        scale=scale,
        model=model if isinstance(model, str) else None,
        keys=keys,
        dropout=dropout,
        raw=doc,
    ), findings


_MISSING: Any = type("Missing", (), {"__repr__": lambda self: "missing"})()


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _missing_weights(path: Path, weights_where: str, config_seen: bool) -> Finding:
    found = checkpoints(path)
    if found:
        names = [p.name for p in found]
        shown = ", ".join(names[-3:]) if len(names) <= 3 else f"{names[0]} ... {names[-1]} ({len(names)} files)"
        return Finding("error", "adapter-weights-missing", weights_where,
                       f"missing, but the directory has checkpoints: {shown}; training stopped before the final "
                       f"save? Use one: cp {path / names[-1]} {path / WEIGHTS_FILE}")
    note = " (training may have crashed before saving)" if config_seen else ""
    return Finding("error", "adapter-weights-missing", weights_where, f"missing{note}")


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
    weights = path / WEIGHTS_FILE
    peft = peft_weights(path)
    if peft is not None and not weights.is_file():
        finding = Finding("error", "peft-adapter", f"{name}/{peft.name}",
                          f"a Hugging Face PEFT adapter ({peft.name}), which mlx_lm cannot load; {IMPORT_HINT}")
        return AdapterInspection(path, None, None, [finding])
    findings: list[Finding] = []
    config: AdapterConfig | None = None
    config_where = f"{name}/{CONFIG_FILE}"
    config_file = path / CONFIG_FILE
    # exists(), not is_file(): a FIFO or a device there is read, and refused saying what it is
    if not config_file.exists():
        findings.append(Finding("error", "adapter-config-missing", config_where, "missing"))
    else:
        try:
            doc = load_json_file(config_file, expect=None, max_bytes=MAX_CONFIG_BYTES)
        except CorruptFileError as exc:
            findings.append(Finding("error", "corrupt-file", config_where, exc.message))
        else:
            config, found = validate_adapter_config(doc, config_where)
            findings += found
    header: SafetensorsHeader | None = None
    weights_where = f"{name}/{WEIGHTS_FILE}"
    if not weights.exists():
        findings.append(_missing_weights(path, weights_where, config_file.is_file()))
    else:
        try:
            header = read_header(weights)
        except CorruptFileError as exc:
            findings.append(Finding("error", "corrupt-file", weights_where, exc.message))
        except OSError as exc:
            findings.append(Finding("error", "unreadable", weights_where, str(exc.strerror or exc)))
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
