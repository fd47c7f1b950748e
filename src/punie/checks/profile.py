"""Check one resolved profile: server options, base model, adapter(s) and how they fit.

Everything is read from JSON files and safetensors headers: no mlx import,
no weights loaded, so a check takes milliseconds.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from punie.adapters.fit import fit_adapter
from punie.adapters.inspect import AdapterInspection, inspect_adapter
from punie.adapters.registry import AdapterInfo
from punie.checks.identity import base_verdict
from punie.checks.report import GROUP_LIMIT, Problem, ProfileReport
from punie.checks.rules import GENERIC_RULES, CheckRules
from punie.checks.server import server_findings
from punie.config.locate import dotted
from punie.config.models import ResolvedProfile
from punie.config.resolve import describe_source, written_at
from punie.errors import AdapterError, CorruptFileError, ModelError, ModelNotProvisioned, PunieError
from punie.findings import Finding
from punie.weights.headers import ModelShapes, read_model_shapes
from punie.weights.resolve import ModelNotAvailable, find_in_hf_cache, resolve_model

logger = logging.getLogger(__name__)

#: Adapter specs only the registry can resolve (picked by metadata).


@dataclass
class _Collector:
    resolved: ResolvedProfile
    strict: bool = False
    rules: CheckRules = GENERIC_RULES
    problems: list[Problem] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    # (severity, code, file) -> how many problems of that kind were seen; past GROUP_LIMIT only counted
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def add(self, severity: str, code: str, where: str | None, message: str) -> None:
        group = (severity, code, (where or "").split(": ", 1)[0])
        seen = self.counts.get(group, 0) + 1
        self.counts[group] = seen
        if seen > GROUP_LIMIT:
            return
        self.problems.append(Problem(profile=self.resolved.name, severity=severity,  # type: ignore[arg-type]
                                     code=code, where=where, message=message))

    def finish(self) -> list[Problem]:
        """The problems, with one "... and N more" line closing each kind capped at GROUP_LIMIT."""
        out = list(self.problems)
        for (severity, code, file), seen in self.counts.items():
            if seen > GROUP_LIMIT:
                out.append(Problem(profile=self.resolved.name, severity=severity,  # type: ignore[arg-type]
                                   code=code, where=file or None,
                                   message=f"... and {seen - GROUP_LIMIT} more like this"))
        return out

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
    try:
        candidate = Path(recorded).expanduser()
    except (RuntimeError, ValueError):
        return False
    for path in ([candidate] if candidate.is_absolute() else [Path(project_dir) / candidate, candidate]):
        try:
            if path.exists() and path.resolve() == model_path.resolve():
                return True
        except (OSError, ValueError):
            continue
    if not candidate.is_absolute() and recorded.count("/") == 1 and len(recorded) < 200:
        try:
            found = find_in_hf_cache(recorded)
        except (OSError, ValueError):
            found = None
        if found is not None and found.resolve() == model_path.resolve():
            return True
    return False


def check_profile(resolved: ResolvedProfile, *, strict: bool = False,
                  rules: CheckRules = GENERIC_RULES) -> list[Problem]:
    """Every problem of one profile (errors and warnings); `punie up` refuses to start on errors."""
    return check_profile_report(resolved, strict=strict, rules=rules).problems


def check_adapter(adapter_dir: str | Path, resolved: ResolvedProfile, *,
                  rules: CheckRules = GENERIC_RULES) -> list[Problem]:
    """Problems of one adapter directory against the profile's base model (server not checked).

    Used by `punie adapters list` to tell whether an adapter fits a profile.
    """
    c = _Collector(resolved, rules=rules)
    model_path, shapes = _check_model(c)
    path = Path(adapter_dir)
    inspection = inspect_adapter(path, display=display_path(path, resolved.project_dir))
    for f in inspection.findings:
        c.finding(f)
    _fit(c, inspection, model_path, shapes)
    return c.finish()


def check_profile_report(resolved: ResolvedProfile, *, strict: bool = False,
                         rules: CheckRules = GENERIC_RULES) -> ProfileReport:
    """Check one profile and also record what passed and which paths it resolved to.

    ``strict``: an adapter trained on a different base of the same shapes is an error, not a warning.
    ``rules``: the profile's engine's (`punie.launch.backends.check_profiles` passes each backend's).
    """
    c = _Collector(resolved, strict=strict, rules=rules)
    profile = resolved.profile
    server = profile.server
    for severity, code, key, message in server_findings(server, profile=resolved.name, strict=strict):
        c.add(severity, code, c.key(key), message)
    if not any(p.code in ("port", "host", "remote-host", "url") for p in c.problems):
        c.passed.append(f"server: using {server.url}" if server.url else f"server: {server.host}:{server.port} is free")
    has_adapter = profile.adapter is not None or bool(profile.adapters)
    if server.url:
        if has_adapter and not _external_canary(c, server.url):
            c.add("warning", "adapter-ignored", c.key("adapter" if profile.adapter else "adapters"),
                  "server.url is set, so nothing is started and this adapter is not served by Punie "
                  "(nor can readiness check the running server for it: it has no canary)")
        return ProfileReport(name=resolved.name, passed=c.passed, problems=c.finish())
    model_path, shapes = _check_model(c)
    adapter_path = None
    if profile.adapter is not None:
        adapter_path = _check_single_adapter(c, profile.adapter, model_path, shapes)
    elif profile.adapters:
        _check_composition(c, model_path, shapes)
    if c.rules.extra is not None:
        items, passed = c.rules.extra(resolved, shapes, adapter_path)
        for severity, code, key, message in items:
            c.add(severity, code, c.key(key), message)
        c.passed += passed
    return ProfileReport(
        name=resolved.name,
        model_path=str(model_path) if model_path else None,
        adapter_path=str(adapter_path) if adapter_path else None,
        passed=c.passed,
        problems=c.finish(),
    )


_resolved_models: contextvars.ContextVar[dict[tuple[object, ...], Any] | None] = contextvars.ContextVar(
    "punie_resolved_models", default=None)


@contextlib.contextmanager
def model_scope() -> Iterator[None]:
    """Within this block each (model spec, project) is resolved to its directory once, and each model
    directory is checked once (every profile on it gets the same findings, each under its own name)."""
    token = _resolved_models.set({})
    try:
        yield
    finally:
        _resolved_models.reset(token)


def _resolve_model(spec: str, project_dir: str) -> Path:
    memo = _resolved_models.get()
    if memo is None:
        return resolve_model(spec, project_dir)
    key = ("spec", spec, project_dir)
    if key not in memo:
        memo[key] = resolve_model(spec, project_dir)  # errors are not remembered: each profile reports its own
    return memo[key]


@dataclass(frozen=True)
class _ModelOutcome:
    """What checking one model directory found: the same for every profile on it."""

    shapes: ModelShapes | None
    problems: tuple[tuple[str, str, str | None, str], ...]  # (severity, code, where, message)
    passed: tuple[str, ...]


def _check_model(c: _Collector) -> tuple[Path | None, ModelShapes | None]:
    spec = c.resolved.profile.model
    if not spec:
        c.add("error", "no-model", c.key("model"), "no model: set `model` (or `server.url` to use a running server)")
        return None, None
    try:
        path = _resolve_model(spec, c.resolved.project_dir)
    except ModelNotProvisioned as exc:
        c.add("warning", "model-not-provisioned", c.key("model"), exc.message)
        return None, None
    except ModelNotAvailable as exc:
        c.add("error", "model-not-available", c.key("model"), exc.render())
        return None, None
    except ModelError as exc:
        c.add("error", "model-not-found", c.key("model"), exc.render())
        return None, None
    memo = _resolved_models.get()
    key = ("model", path, c.rules.strict_load)
    outcome = memo.get(key) if memo is not None else None
    if outcome is None:
        outcome = _model_outcome(path, strict_load=c.rules.strict_load)
        if memo is not None:
            memo[key] = outcome
    for severity, code, where, message in outcome.problems:
        c.add(severity, code, where, message)
    c.passed += outcome.passed
    return path, outcome.shapes


def _model_outcome(path: Path, *, strict_load: bool) -> _ModelOutcome:
    """Read and check the model directory ``path`` (its places name its files, never a profile)."""
    try:
        shapes = read_model_shapes(path)
    except CorruptFileError as exc:
        return _ModelOutcome(None, (("error", "corrupt-file", exc.where or str(path), exc.message),), ())
    except (ModelError, OSError) as exc:
        where = exc.where if isinstance(exc, PunieError) and exc.where else str(path)
        return _ModelOutcome(None, (("error", "model-unreadable", where,
                                     exc.message if isinstance(exc, PunieError) else str(exc)),), ())
    findings = list(shapes.problems)
    # then as deep as mlx_lm's strict load (an engine with its own loader checks by its own rules)
    if strict_load and not any(f.severity == "error" for f in shapes.problems):
        findings += shapes.strict_load_problems
    layers = shapes.total_layers
    bits = shapes.bits_summary()
    detail = ", ".join(x for x in (f"{layers} layers" if layers else "", bits or "") if x)
    passed = () if any(f.severity == "error" for f in findings) else (
        f"model: {path}" + (f" ({detail})" if detail else ""),)
    return _ModelOutcome(shapes, tuple((f.severity, f.code, f.where, f.message) for f in findings), passed)


def _served_adapter(resolved: ResolvedProfile, spec: str) -> Path:
    """The single adapter `punie up` will serve (what the registry resolves the profile's adapter to)."""
    from punie.adapters.registry import effective_adapter

    path = effective_adapter(resolved)
    if path is None:
        raise AdapterError(f"adapter {spec!r} not found")
    return Path(path)


def _inspect(c: _Collector, spec: str, key: str) -> AdapterInspection | None:
    try:
        path = resolve_adapter_spec(spec, c.resolved.project_dir)
    except AdapterError as exc:
        c.add("error", "adapter-not-found", c.key(key), exc.message + (f"; {exc.hint}" if exc.hint else ""))
        return None
    return _inspect_path(c, path)


def _inspect_path(c: _Collector, path: Path) -> AdapterInspection:
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
    if model_path is not None:
        verdict = base_verdict(inspection, model_path, shapes, c.resolved, display=display, fits=fits,
                               strict=c.strict)
        for f in verdict.findings:
            c.finding(f)
        if verdict.note:
            c.passed.append(verdict.note)
        fits = fits and not any(f.severity == "error" for f in verdict.findings)
    if fits:
        config = inspection.config
        kind = config.fine_tune_type + (f" rank {config.rank}" if config.rank else "")
        c.passed.append(f"adapter: {display} ({kind}, {len(inspection.header.tensors)} tensors, "
                        f"num_layers {config.num_layers}) fits the model")
    return fits


def _check_single_adapter(c: _Collector, spec: str, model_path: Path | None,
                          shapes: ModelShapes | None) -> Path | None:
    try:  # resolved once: the check's path is the launch's (punie.launch.backends.base.LaunchInputs)
        path = _served_adapter(c.resolved, spec)
    except AdapterError as exc:
        c.add("error", "adapter-not-found", c.key("adapter"), exc.message + (f"; {exc.hint}" if exc.hint else ""))
        return None
    if c.rules.serves_peft:
        from punie.adapters.peft import is_peft_adapter

        if is_peft_adapter(path):
            # the engine serves a PEFT directory as it is: its checks are the engine's (rules.extra), not mlx_lm's
            c.passed.append(f"adapter: {display_path(path, c.resolved.project_dir)} is a PEFT adapter "
                            "(vLLM serves it without an mlx_lm export)")
            return path
    inspection = _inspect_path(c, path)
    if _fit(c, inspection, model_path, shapes):
        _canary(c, inspection.path, model_path)
    return inspection.path


def _canary(c: _Collector, adapter_dir: Path, model_path: Path | None) -> None:
    """Does the adapter have a canary for this base (so readiness can prove the server applies it)?"""
    from punie.adapters.canary import base_fingerprint
    from punie.adapters.files import METADATA_FILE
    from punie.adapters.metadata import read_canary

    display = display_path(adapter_dir, c.resolved.project_dir)
    try:
        canary = read_canary(adapter_dir)
    except AdapterError as exc:
        c.add("warning", "canary-unreadable", exc.where or f"{display}/{METADATA_FILE}", exc.message)
        return
    stamp = f"`punie adapters stamp {display} --base {c.resolved.name}`"
    if canary is None:
        c.add("warning", "no-canary", f"{display}/{METADATA_FILE}",
              f"no canary: readiness cannot prove the server applies this adapter; record one with {stamp}")
        return
    fingerprint = base_fingerprint(model_path) if model_path is not None else None
    if fingerprint and canary.base_fingerprint and fingerprint != canary.base_fingerprint:
        c.add("warning", "canary-other-base", f"{display}/{METADATA_FILE}: canary.base_fingerprint",
              f"the canary was recorded on another base (fingerprint {canary.base_fingerprint[:16]}, this model "
              f"{fingerprint[:16]}): readiness can only warn, not refuse; record it again with {stamp}")
        return
    c.passed.append(f"adapter: canary recorded ({canary.engine}, top-{canary.top_k}): readiness proves "
                    "the server applies it")


def _external_canary(c: _Collector, url: str) -> bool:
    """With server.url, an adapter with a canary is checked on the running server at readiness."""
    from punie.adapters.metadata import read_canary
    from punie.adapters.registry import effective_adapter

    if c.resolved.profile.adapters:
        return False  # composing here would write files; `punie up` composes and checks it
    try:
        path = effective_adapter(c.resolved)
        canary = read_canary(path) if path is not None else None
    except AdapterError:
        return False
    if canary is None:
        return False
    c.passed.append(f"adapter: {display_path(path, c.resolved.project_dir)} is not started by Punie; readiness "
                    f"checks that {url} applies it (canary)")
    return True


def _check_composition(c: _Collector, model_path: Path | None, shapes: ModelShapes | None) -> None:
    """Each part against the base, then the composition exactly as `punie up` plans it."""
    from punie.adapters.compose import CompositionError, plan_composition

    parts: list[tuple[int, AdapterInspection, float]] = []
    for i, ref in enumerate(c.resolved.profile.adapter_refs()):
        inspection = _inspect(c, ref.path, "adapters")
        if inspection is not None:
            _fit(c, inspection, model_path, shapes)
            parts.append((i, inspection, float(ref.weight)))
    usable = [(i, ins, w) for i, ins, w in parts if ins.ok]
    if len(usable) < 2:
        return
    try:
        plan_composition([(ins.path, w) for _, ins, w in usable], project_dir=Path(c.resolved.project_dir))
    except CompositionError as exc:
        index = usable[exc.part][0] if exc.part is not None else usable[0][0]
        first = usable[exc.other][0] if exc.other is not None else usable[0][0]
        c.add("error", "compose-mismatch", f"{c.key('adapters')}[{index}]",
              f"{exc.message} (adapters[{first}] is the first part); these adapters cannot be composed")
    except AdapterError as exc:
        c.add("error", "compose-mismatch", c.key("adapters"), exc.render())


#: Problems that mean the base model itself could not be read, so the adapter was not shape-checked.
_MODEL_UNKNOWN = frozenset({"model-not-provisioned", "model-not-available", "model-not-found", "model-unreadable"})


def adapter_fits(info: AdapterInfo, resolved: ResolvedProfile, *,
                 rules: CheckRules = GENERIC_RULES) -> tuple[str, str | None]:
    """Does a listed adapter fit the profile's base model? ("yes" | "no" | "unknown", reason).

    The answer is the validator's adapter check. Never loads weights and never
    provisions a model: when the base model is not available locally, "unknown".
    """
    if info.problem:
        return "no", info.problem
    if not resolved.profile.model:
        return "unknown", "the profile names no base model"
    problems = check_adapter(Path(info.path), resolved, rules=rules)
    unknown = [p for p in problems if p.code in _MODEL_UNKNOWN]
    if unknown:
        return "unknown", unknown[0].message
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        return "no", errors[0].message
    return "yes", None
