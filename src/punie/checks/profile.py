"""Check one resolved profile: server options, base model, adapter(s) and how they fit.

Everything is read from JSON files and safetensors headers: no mlx import,
no weights loaded, so a check takes milliseconds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from punie.adapters.fit import fit_adapter, model_layers, module_dims
from punie.adapters.inspect import AdapterInspection, Finding, inspect_adapter
from punie.checks.report import Problem, ProfileReport
from punie.checks.server import server_findings
from punie.config.locate import dotted
from punie.config.models import ResolvedProfile
from punie.config.resolve import describe_source, written_at
from punie.errors import AdapterError, CorruptFileError, ModelError, ModelNotProvisioned, PunieError
from punie.weights.headers import ModelShapes, read_model_shapes
from punie.weights.resolve import ModelNotAvailable, find_in_hf_cache, resolve_model

logger = logging.getLogger(__name__)

#: Adapter specs only the registry can resolve (picked by metadata).


@dataclass
class _Collector:
    resolved: ResolvedProfile
    problems: list[Problem] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)

    def add(self, severity: str, code: str, where: str | None, message: str) -> None:
        self.problems.append(Problem(profile=self.resolved.name, severity=severity,  # type: ignore[arg-type]
                                     code=code, where=where, message=message))

    def finding(self, f: Finding, *, severity: str | None = None) -> None:
        self.add(severity or f.severity, f.code, f.where, f.message)

    def key(self, key: str) -> str:
        """Where a profile key's value was set: ``punie.toml:14: profiles.p.model``, ``--set model``
        or ``PUNIE_MODEL``. A key left at its default points at the profile's table."""
        base = key.split("[", 1)[0]
        place = describe_source(self.resolved, base)
        origin = self.resolved.sources.get(base, "default")
        if origin in ("cli", "env"):
            return place
        table = written_at(self.resolved, base)  # the key's own path when written in the file
        if origin.startswith("file"):
            table = table[: -len(base.split("."))]
        return f"{place}: {dotted(table)}.{key}"


def display_path(path: Path, project_dir: str) -> str:
    """A path relative to the project when inside it (``adapters/x``), else absolute."""
    try:
        return str(Path(path).resolve().relative_to(Path(project_dir).resolve()))
    except ValueError:
        return str(path)


def resolve_adapter_spec(spec: str, project_dir: str | Path) -> Path:
    """An adapter spec (path, name under adapters/, latest, best) to its directory."""
    from punie.adapters.registry import resolve_adapter

    return Path(resolve_adapter(spec, Path(project_dir)))


def same_model(recorded: str, spec: str, model_path: Path, project_dir: str) -> bool:
    """Whether the ``model`` recorded in adapter_config.json names the profile's base model."""
    if recorded.strip().rstrip("/") in (spec.strip().rstrip("/"), str(model_path)):
        return True
    candidate = Path(recorded).expanduser()
    for path in ([candidate] if candidate.is_absolute() else [Path(project_dir) / candidate, candidate]):
        try:
            if path.exists() and path.resolve() == model_path.resolve():
                return True
        except OSError:
            continue
    if not candidate.is_absolute() and recorded.count("/") == 1:
        found = find_in_hf_cache(recorded)
        if found is not None and found.resolve() == model_path.resolve():
            return True
    return False


def check_profile(resolved: ResolvedProfile) -> list[Problem]:
    """Every problem of one profile (errors and warnings); `punie up` refuses to start on errors."""
    return check_profile_report(resolved).problems


def check_adapter(adapter_dir: str | Path, resolved: ResolvedProfile) -> list[Problem]:
    """Problems of one adapter directory against the profile's base model (server not checked).

    Used by `punie adapters list` to tell whether an adapter fits a profile.
    """
    c = _Collector(resolved)
    model_path, shapes = _check_model(c)
    path = Path(adapter_dir)
    inspection = inspect_adapter(path, display=display_path(path, resolved.project_dir))
    for f in inspection.findings:
        c.finding(f)
    _fit(c, inspection, model_path, shapes)
    return c.problems


def check_profile_report(resolved: ResolvedProfile) -> ProfileReport:
    """Check one profile and also record what passed and which paths it resolved to."""
    c = _Collector(resolved)
    profile = resolved.profile
    server = profile.server
    for severity, code, key, message in server_findings(server):
        c.add(severity, code, c.key(key), message)
    if not any(p.code in ("port", "host", "remote-host", "url") for p in c.problems):
        c.passed.append(f"server: using {server.url}" if server.url else f"server: {server.host}:{server.port} is free")
    has_adapter = profile.adapter is not None or bool(profile.adapters)
    if server.url:
        if has_adapter:
            c.add("warning", "adapter-ignored", c.key("adapter" if profile.adapter else "adapters"),
                  "server.url is set, so nothing is started and this adapter is not served by Punie")
        return ProfileReport(name=resolved.name, passed=c.passed, problems=c.problems)
    model_path, shapes = _check_model(c)
    adapter_path = None
    if profile.adapter is not None:
        adapter_path = _check_single_adapter(c, profile.adapter, model_path, shapes)
    elif profile.adapters:
        _check_composition(c, model_path, shapes)
    if server.backend == "vllm":
        from punie.checks.vllm import vllm_items

        items, passed = vllm_items(resolved, shapes=shapes, adapter_dir=adapter_path)
        for severity, code, key, message in items:
            c.add(severity, code, c.key(key), message)
        c.passed += passed
    return ProfileReport(
        name=resolved.name,
        model_path=str(model_path) if model_path else None,
        adapter_path=str(adapter_path) if adapter_path else None,
        passed=c.passed,
        problems=c.problems,
    )


def _check_model(c: _Collector) -> tuple[Path | None, ModelShapes | None]:
    spec = c.resolved.profile.model
    if not spec:
        c.add("error", "no-model", c.key("model"), "no model: set `model` (or `server.url` to use a running server)")
        return None, None
    try:
        path = resolve_model(spec, c.resolved.project_dir)
    except ModelNotProvisioned as exc:
        c.add("warning", "model-not-provisioned", c.key("model"), exc.message)
        return None, None
    except ModelNotAvailable as exc:
        c.add("error", "model-not-available", c.key("model"), exc.render())
        return None, None
    except ModelError as exc:
        c.add("error", "model-not-found", c.key("model"), exc.render())
        return None, None
    try:
        shapes = read_model_shapes(path)
    except CorruptFileError as exc:
        c.add("error", "corrupt-file", exc.where or str(path), exc.message)
        return path, None
    except (ModelError, OSError) as exc:
        c.add("error", "model-unreadable", str(path), exc.message if isinstance(exc, PunieError) else str(exc))
        return path, None
    layers = model_layers(shapes)
    bits = shapes.quantization.get("bits")
    detail = ", ".join(x for x in (f"{layers} layers" if layers else "", f"{bits}-bit" if bits else "") if x)
    c.passed.append(f"model: {path}" + (f" ({detail})" if detail else ""))
    return path, shapes


def _served_adapter(resolved: ResolvedProfile, spec: str) -> Path:
    """The single adapter `punie up` will serve (what the registry resolves the profile's adapter to)."""
    from punie.adapters.registry import effective_adapter

    path = effective_adapter(resolved)
    if path is None:
        raise AdapterError(f"adapter {spec!r} not found")
    return Path(path)


def _inspect(c: _Collector, spec: str, key: str, *, single: bool = False) -> AdapterInspection | None:
    try:
        if single:
            path = _served_adapter(c.resolved, spec)
        else:
            path = resolve_adapter_spec(spec, c.resolved.project_dir)
    except AdapterError as exc:
        c.add("error", "adapter-not-found", c.key(key), exc.message + (f"; {exc.hint}" if exc.hint else ""))
        return None
    inspection = inspect_adapter(path, display=display_path(path, c.resolved.project_dir))
    for f in inspection.findings:
        c.finding(f)
    return inspection


def _fit(c: _Collector, inspection: AdapterInspection, model_path: Path | None,
         shapes: ModelShapes | None) -> bool:
    """Shape-check one adapter against the base model; True when it fits."""
    display = display_path(inspection.path, c.resolved.project_dir)
    if shapes is None or inspection.config is None or inspection.header is None:
        return False
    findings = fit_adapter(inspection, shapes, display=display)
    for f in findings:
        c.finding(f)
    fits = not any(f.severity == "error" for f in findings)
    recorded = inspection.config.model
    spec = c.resolved.profile.model or ""
    if recorded and model_path is not None and not same_model(recorded, spec, model_path, c.resolved.project_dir):
        severity = "warning" if fits else "error"
        tail = ("shapes match (a differently quantized copy of one base?)" if fits
                else "and its tensors do not fit this model")
        c.add(severity, "model-differs", f"{display}/adapter_config.json: model",
              f"adapter was trained on {recorded!r}, the profile uses {spec!r}; {tail}")
    if fits:
        config = inspection.config
        kind = config.fine_tune_type + (f" rank {config.rank}" if config.rank else "")
        c.passed.append(f"adapter: {display} ({kind}, {len(inspection.header.tensors)} tensors, "
                        f"num_layers {config.num_layers}) fits the model")
    return fits


def _check_single_adapter(c: _Collector, spec: str, model_path: Path | None,
                          shapes: ModelShapes | None) -> Path | None:
    inspection = _inspect(c, spec, "adapter", single=True)
    if inspection is None:
        return None
    _fit(c, inspection, model_path, shapes)
    return inspection.path


def _check_composition(c: _Collector, model_path: Path | None, shapes: ModelShapes | None) -> None:
    parts: list[tuple[int, AdapterInspection]] = []
    for i, ref in enumerate(c.resolved.profile.adapter_refs()):
        inspection = _inspect(c, ref.path, "adapters")
        if inspection is not None:
            _fit(c, inspection, model_path, shapes)
            parts.append((i, inspection))
    seen: dict[str, tuple[int, tuple[int, ...]]] = {}
    for i, inspection in parts:
        for module, dims in module_dims(inspection).items():
            first = seen.setdefault(module, (i, dims))
            if first[1] != dims:
                c.add("error", "compose-mismatch", f"{c.key('adapters')}[{i}]",
                      f"{module}: dims {dims} differ from {first[1]} in adapters[{first[0]}]; "
                      "these adapters cannot be composed")
