"""Punie's public Python API: what the CLI does, for scripts, notebooks and CI gates.

    import anyio
    import punie.api as punie

    profile = punie.load_profile("tool-calling")
    report = punie.check([profile])                  # the report `punie check --format json` prints
    result = punie.evaluate(profile, baseline=True,  # baseline vs adapter, servers managed for you
                            on_event=punie.print_progress)  # case i/n and an ETA on stderr
    print(result.baseline_score, result.score, result.improvement, result.interval, result.verdict)

    async def main() -> None:
        async with punie.serve(profile) as server:   # same plan, guard and readiness as `punie up`
            print(server.base_url, server.model_id)  # an OpenAI-compatible endpoint until the block ends

    anyio.run(main)

Every name here is listed in ``__all__`` and documented; everything else in the
package is private and may change. Errors are `PunieError` subclasses (the CLI
turns the same errors into its messages and exit codes).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from punie.config.models import Profile, ResolvedProfile
from punie.errors import (
    AdapterError,
    CheckFailed,
    ConfigError,
    GateFailed,
    LaunchError,
    ModelError,
    PunieError,
    TrainingError,
    UsageError,
)

if TYPE_CHECKING:
    from punie.adapters.registry import AdapterInfo
    from punie.checks.report import Problem, ProfileReport, Report
    from punie.launch.server import Server
    from punie.training.ab import CaseOutcome, Comparison, EvalReport, SuiteResult
    from punie.training.evaluate import EvalEvent
    from punie.training.stats import PairedComparison
    from punie.training.suite import CaseResult

# The result types are imported on first use: `punie check` calls `check` and must not pay for
# the evaluation and registry modules.
_LAZY = {
    "AdapterInfo": "punie.adapters.registry",
    "Problem": "punie.checks.report",
    "ProfileReport": "punie.checks.report",
    "Report": "punie.checks.report",
    "EvalReport": "punie.training.ab",
    "EvalEvent": "punie.training.evaluate",
    "CaseOutcome": "punie.training.ab",
    "Comparison": "punie.training.ab",
    "PairedComparison": "punie.training.stats",
    "SuiteResult": "punie.training.ab",
    "CaseResult": "punie.training.suite",
    "Server": "punie.launch.server",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'punie.api' has no attribute {name!r}")


__all__ = [
    "AdapterError",
    "AdapterInfo",
    "CaseOutcome",
    "CaseResult",
    "CheckFailed",
    "Comparison",
    "ConfigError",
    "EvalEvent",
    "EvalReport",
    "Evaluation",
    "GateFailed",
    "LaunchError",
    "ModelError",
    "PairedComparison",
    "Problem",
    "Profile",
    "ProfileReport",
    "PunieError",
    "Report",
    "ResolvedProfile",
    "Server",
    "SuiteResult",
    "TrainingError",
    "UsageError",
    "best_adapter",
    "check",
    "compose_adapters",
    "evaluate",
    "latest_adapter",
    "list_adapters",
    "load_profile",
    "load_profiles",
    "print_progress",
    "record_evaluation",
    "serve",
]

_ProfilesSource = str | os.PathLike[str] | Mapping[str, Any] | None
"""Where profiles come from: a punie.toml path, a dict shaped like the TOML file, ``"builtin"``
for Punie's embedded default, or None for the CLI's lookup (``PUNIE_CONFIG``, then punie.toml in
the current directory or a parent, then the embedded default)."""

_BUILTIN = "builtin"


def _source_text(source: Mapping[str, Any]) -> str:
    import tomlkit

    try:
        return tomlkit.dumps(dict(source))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"profiles dict cannot be written as TOML: {exc}", where="<dict>") from None


def _read(source: _ProfilesSource, env: Mapping[str, str] | None, cwd: str | os.PathLike[str] | None) -> Any:
    """The parsed profiles file, the one way the CLI reads it."""
    from punie.config.embedded import EMBEDDED_DEFAULT_TOML, EMBEDDED_NAME
    from punie.config.loader import parse_config, read_config

    environ = os.environ if env is None else env
    if isinstance(source, Mapping):
        base = Path(cwd) if cwd is not None else Path.cwd()
        # Relative adapter and model paths resolve against ``cwd``, as they would next to a file.
        return parse_config(_source_text(source), display="<dict>", path=base / "punie.toml")
    if source == _BUILTIN:
        return parse_config(EMBEDDED_DEFAULT_TOML, display=EMBEDDED_NAME)
    return read_config(source, env=environ, cwd=cwd)


def load_profiles(
    source: _ProfilesSource = None,
    names: Sequence[str] = (),
    *,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> list[ResolvedProfile]:
    """Resolve ``names`` (every profile, in file order, when empty) from ``source``.

    The layering is the CLI's: model defaults < ``[defaults]`` < ``extends`` < the profile <
    ``PUNIE_*`` variables of ``env`` (default: ``os.environ``) < ``overrides`` (``"KEY=VALUE"``,
    like ``--set``). Raises ConfigError naming the place of every problem.
    """
    from punie.config.resolve import resolve_many

    environ = os.environ if env is None else env
    try:
        return resolve_many(_read(source, environ, cwd), names, overrides=overrides, env=environ)
    except RecursionError:
        raise ConfigError("configuration values are nested too deeply") from None


def load_profile(
    name: str | None = None,
    source: _ProfilesSource = None,
    *,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> ResolvedProfile:
    """Resolve one profile: ``name``, else ``$PUNIE_PROFILE``, else the file's ``default_profile``,
    else its only profile. See `load_profiles` for ``source``, ``overrides`` and ``env``."""
    from punie.config.resolve import select_profile

    environ = os.environ if env is None else env
    parsed = _read(source, environ, cwd)
    chosen = select_profile(parsed, name, environ)
    return load_profiles(source, [chosen], overrides=overrides, env=environ, cwd=cwd)[0]


def _resolved(profile: ResolvedProfile | str | None) -> ResolvedProfile:
    return profile if isinstance(profile, ResolvedProfile) else load_profile(profile)


def check(profiles: Sequence[ResolvedProfile | str] | ResolvedProfile | str | None = None, *,
          strict: bool = False) -> Report:
    """Validate profiles, base models and adapters from headers only (`punie check`).

    ``profiles``: resolved profiles or names (None: every profile of the CLI's file). Problems are
    in the returned `Report` (``report.ok``, ``report.problems``; ``report.to_json()`` is exactly
    what ``punie check --format json`` prints); nothing is raised for them. ``strict``: an adapter
    trained on a different base model is an error even when its shapes fit.
    """
    from punie.launch.backends import check_profiles  # each profile's backend rules

    if profiles is None:
        resolved = load_profiles()
    elif isinstance(profiles, (ResolvedProfile, str)):
        resolved = [_resolved(profiles)]
    else:
        resolved = [_resolved(p) for p in profiles]
    return check_profiles(resolved, strict=strict)


@asynccontextmanager
async def serve(
    profile: ResolvedProfile | str | None = None,
    *,
    check: bool = True,
    grace: float | None = None,
    log_dir: str | os.PathLike[str] | None = None,
) -> AsyncIterator[Server]:
    """Start (or attach to) ``profile``'s model server for the duration of an ``async with`` block.

    The plan, the pre-launch check, the orphan guard and the readiness probe are those of
    ``punie up`` (no agent is started). However the block exits (normally, by an exception,
    by cancellation or KeyboardInterrupt) the server's whole process group is stopped: SIGTERM,
    ``grace`` seconds, then SIGKILL. Raises CheckFailed when the check finds errors and
    LaunchError when the server never answers.
    """
    from punie.launch.server import running_server

    resolved = _resolved(profile)
    async with running_server(
        resolved, check=check, grace=grace, log_dir=Path(log_dir) if log_dir is not None else None
    ) as running:
        yield running


@dataclass(frozen=True)
class Evaluation:
    """`evaluate`'s result: the paired A/B of the adapter (candidate) against its baseline on one suite.

    ``report`` is the full `EvalReport` (per-case results of both sides, the paired statistics per
    category) that ``punie eval`` renders; the properties are its headline numbers.
    """

    report: EvalReport

    @property
    def suite(self) -> str:
        return self.report.suite

    @property
    def score(self) -> float:
        """Mean score of the profile with its adapter (0..1)."""
        return self.report.candidate.score

    @property
    def baseline_score(self) -> float:
        """Mean score of the baseline (the profile without adapter, or ``vs``)."""
        return self.report.baseline.score

    @property
    def improvement(self) -> float:
        """``score - baseline_score``, rounded as ``punie eval`` prints it."""
        return self.report.delta

    @property
    def comparison(self) -> Comparison:
        """The paired statistics of the greedy answers: ``overall`` and per ``categories`` (a
        `PairedComparison` each: win/tie/loss, the difference with its interval, McNemar)."""
        if self.report.greedy is None:
            raise TrainingError("this report has no paired comparison")
        return self.report.greedy

    @property
    def interval(self) -> tuple[float, float]:
        """The 95% paired bootstrap interval (low, high) of ``score - baseline_score``."""
        d = self.comparison.overall.difference
        return (d.low, d.high)

    @property
    def verdict(self) -> str:
        """``better``, ``worse`` (the interval excludes 0 on that side) or ``inconclusive``."""
        return self.comparison.overall.verdict

    @property
    def p_value(self) -> float:
        """McNemar's exact two-sided p-value on pass/fail."""
        return self.comparison.overall.mcnemar.p_value

    @property
    def gate_passed(self) -> bool | None:
        """Whether the ``gate`` asked of `evaluate` passed (None: no gate asked)."""
        return None if self.report.gate is None else self.report.gate.passed

    @property
    def outcomes(self) -> list[CaseOutcome]:
        """Every case: its category, both scores and pass/fail, ``win``/``tie``/``loss``."""
        return list(self.report.outcomes)

    @property
    def cases(self) -> dict[str, float]:
        """Per-case scores of the adapter side."""
        return {c.id: c.score for c in self.report.candidate.cases}

    @property
    def baseline_cases(self) -> dict[str, float]:
        """Per-case scores of the baseline side."""
        return {c.id: c.score for c in self.report.baseline.cases}


def print_progress(event: EvalEvent) -> None:
    """A ready-made ``on_event`` for `evaluate`: one line per server start and per answer, with the
    case number and an ETA, on stderr (``label: case 3/60 read-readme 1.00 (7/240, ETA 2m05s)``)."""
    import sys

    if event.kind in ("server", "case"):
        print(event.describe(), file=sys.stderr, flush=True)


def evaluate(
    profile: ResolvedProfile | str | None = None,
    *,
    suite: str | os.PathLike[str] | None = None,
    baseline: bool | ResolvedProfile | str = True,
    record: bool = False,
    on_event: Callable[[EvalEvent], object] | None = None,
    results_dir: str | os.PathLike[str] | None = None,
    samples: int = 0,
    gate: Literal["better", "not-worse"] | None = None,
    seed: int = 0,
) -> Evaluation:
    """Score ``profile`` on an eval suite against a baseline, servers started and stopped for you:
    a paired A/B (win/tie/loss, the mean difference with a bootstrap 95% interval, McNemar's exact
    test; overall and per category).

    ``suite``: a shipped suite name or a suite file (default: the tool-calling suite).
    ``baseline``: True compares with the same profile without its adapter; a profile (or name)
    compares with that one instead. ``samples``: also ask every case that many times at each
    profile's temperature. ``gate``: ``"better"`` or ``"not-worse"``, its verdict in
    ``gate_passed`` (nothing is raised). ``seed``: the bootstrap's. ``record=True`` stores the
    result in the adapter's ``punie-adapter.json`` (as ``punie eval --record``);
    `record_evaluation` does it later. ``on_event`` hears the progress (servers, every answer with
    ``done``/``planned`` and ``eta_seconds``; `print_progress` prints it); ``results_dir`` also
    gets the report as JSON, Markdown and a chart (``punie eval`` writes them under ``.punie/eval/``).
    """
    from punie.training.evaluate import evaluate_profile

    if baseline is False:
        raise UsageError("an evaluation needs a baseline: baseline=True or another profile")
    resolved = _resolved(profile)
    vs = None if baseline is True else _resolved(baseline)
    report = evaluate_profile(resolved, vs=vs, suite=Path(suite) if isinstance(suite, os.PathLike) else suite,
                              store=record, on_event=on_event,
                              results_dir=Path(results_dir) if results_dir is not None else None,
                              samples=samples, gate=gate, seed=seed)
    return Evaluation(report)


def record_evaluation(profile: ResolvedProfile | str | None, evaluation: Evaluation | EvalReport) -> Path:
    """Store an evaluation in the profile's adapter metadata (``punie-adapter.json``); returns the
    adapter directory. Raises UsageError when the profile has no adapter."""
    from punie.adapters.registry import effective_adapter
    from punie.training.evaluate import store_result

    resolved = _resolved(profile)
    adapter_dir = effective_adapter(resolved)
    if adapter_dir is None:
        raise UsageError(f"profile '{resolved.name}' has no adapter to record the evaluation in")
    report = evaluation.report if isinstance(evaluation, Evaluation) else evaluation
    return store_result(adapter_dir, report)


def _project(project_dir: str | os.PathLike[str] | None) -> Path:
    return Path(project_dir) if project_dir is not None else Path.cwd()


def list_adapters(project_dir: str | os.PathLike[str] | None = None) -> list[AdapterInfo]:
    """Every adapter under ``<project_dir>/adapters/`` (default: the current directory), by name."""
    from punie.adapters.registry import list_adapters as _list

    return _list(_project(project_dir))


def _special(spec: str, project_dir: str | os.PathLike[str] | None) -> AdapterInfo:
    from punie.adapters.registry import adapter_info, resolve_adapter

    return adapter_info(resolve_adapter(spec, _project(project_dir)))


def latest_adapter(project_dir: str | os.PathLike[str] | None = None) -> AdapterInfo:
    """The newest usable adapter (what ``adapter = "latest"`` serves). Raises AdapterError if none."""
    return _special("latest", project_dir)


def best_adapter(project_dir: str | os.PathLike[str] | None = None) -> AdapterInfo:
    """The usable adapter ``adapter = "best"`` serves: the highest lower bound of the recorded eval
    score's interval (``punie eval --record``); adapters recorded with a mean only rank below."""
    return _special("best", project_dir)


def compose_adapters(
    parts: Sequence[str | os.PathLike[str] | tuple[str | os.PathLike[str], float]],
    out: str | os.PathLike[str],
    *,
    project_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> Path:
    """Compose adapters of one base into one (ranks concatenated; exact under mlx_lm), as
    ``punie adapters compose``. A part is a directory or name, or ``(part, weight)``."""
    from punie.adapters.compose import compose
    from punie.adapters.registry import resolve_adapter

    project = _project(project_dir)
    resolved: list[tuple[Path, float]] = []
    for part in parts:
        spec, weight = part if isinstance(part, tuple) else (part, 1.0)
        resolved.append((resolve_adapter(str(spec), project), float(weight)))
    return compose(resolved, Path(out), force=force)
