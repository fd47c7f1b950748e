"""`punie eval`: score a profile's adapter against a baseline on an eval suite.

Both sides are served by mlx_lm.server, one after the other, on a free
loopback port: the baseline is the same profile WITHOUT its adapter (or
another profile, ``--vs``), because one server process cannot serve the base
model reliably: any request ``model`` other than "default_model" silently
reloads the base model, and back. Requests always send "default_model".

The server is run by the supervisor of `punie up` without the agent
(`punie.launch.server.running_server`: same plan, guarded child, 1-token probe, the
answer proven to come from that child, liveness, stop), on a blocking portal's loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from punie.adapters.registry import effective_adapter, now_iso, read_meta, update_meta
from punie.config.models import ResolvedProfile
from punie.errors import LaunchError, LaunchFailed, TrainingError, UsageError
from punie.net import free_port, is_loopback_url, openai_base_url
from punie.training.suite import CaseResult, Suite, load_suite, request_body, score_case, wants_second_step

logger = logging.getLogger(__name__)

LOG_TAIL = 15


class SuiteResult(BaseModel):
    """One side of an evaluation: every case's result and the mean score."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    profile: str
    adapter: str | None
    score: float
    cases: list[CaseResult]
    seconds: float


class EvalReport(BaseModel):
    """Baseline and candidate results of one suite, and where the score was stored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    suite: str
    baseline: SuiteResult
    candidate: SuiteResult
    stored_in: str | None = None
    saved_to: str | None = None

    @property
    def delta(self) -> float:
        return round(self.candidate.score - self.baseline.score, 4)


class EvalEvent(BaseModel):
    """Progress of an evaluation, for the CLI to render."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["server", "ready", "case", "stopped"]
    label: str
    message: str | None = None
    case: CaseResult | None = None
    index: int | None = None
    total: int | None = None


def without_adapter(resolved: ResolvedProfile) -> ResolvedProfile:
    """The same profile serving its bare base model."""
    profile = resolved.profile.model_copy(update={"adapter": None, "adapters": []})
    return resolved.model_copy(update={"profile": profile})


def _on_port(resolved: ResolvedProfile, port: int) -> ResolvedProfile:
    server = resolved.profile.server.model_copy(update={"port": port, "host": "127.0.0.1"})
    return resolved.model_copy(update={"profile": resolved.profile.model_copy(update={"server": server})})


def _discard(line: str) -> None:
    """The server's output goes to its log file only (eval prints its own progress)."""


@contextlib.contextmanager
def context_exit(context: Any) -> Iterator[None]:
    """Exit an already entered context manager when this block ends, passing on how it ended."""
    try:
        yield
    except BaseException as exc:
        if not context.__exit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        context.__exit__(None, None, None)


@contextlib.contextmanager
def serve(resolved: ResolvedProfile, *, log_dir: Path) -> Iterator[tuple[str, str | None]]:
    """Start mlx_lm.server for ``resolved`` on a free port; yield (base URL ending in /v1, adapter)."""
    import anyio.from_thread

    from punie.launch.server import running_server

    if resolved.profile.server.url:
        yield openai_base_url(resolved.profile.server.url), None
        return
    # No JIT compile for eval's servers unless asked (as before: a first-run cost, no gain here).
    env = {"MLX_DISABLE_COMPILE": os.environ.get("MLX_DISABLE_COMPILE", "1")}
    on_port = _on_port(resolved, free_port())
    # The supervisor of `punie up` without the agent, on an event loop in a helper thread:
    # the same guard, readiness (the answer from our own child), liveness and stop.
    with anyio.from_thread.start_blocking_portal() as portal:
        try:
            context = portal.wrap_async_context_manager(
                running_server(on_port, check=False, log_dir=log_dir, sink=_discard, server_env=env))
            server = context.__enter__()
        except LaunchFailed as exc:
            if exc.where is None:
                exc.where = f"profiles.{resolved.name}"
            raise
        with context_exit(context):
            yield server.base_url, server.adapter


def run_suite(
    base_url: str,
    suite: Suite,
    *,
    label: str,
    timeout: float = 120.0,
    on_case: Callable[[int, CaseResult], None] | None = None,
) -> tuple[float, list[CaseResult]]:
    """Ask every case of ``suite`` at ``base_url`` (…/v1); return (mean score, results)."""
    import httpx

    results: list[CaseResult] = []
    url = base_url.rstrip("/") + "/chat/completions"
    with httpx.Client(timeout=timeout, trust_env=not is_loopback_url(url)) as client:
        for index, case in enumerate(suite.cases):
            try:
                response = client.post(url, json=request_body(suite, case))
                response.raise_for_status()
                message = response.json()["choices"][0]["message"]
                second = None
                if (first := wants_second_step(case, message)) is not None:
                    response = client.post(url, json=request_body(suite, case, first))
                    response.raise_for_status()
                    second = response.json()["choices"][0]["message"]
                result = score_case(case, message, second)
            except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
                logger.warning("%s: case %s failed: %s", label, case.id, exc)
                result = CaseResult(id=case.id, category=case.category, score=0.0, error=str(exc)[:300])
            results.append(result)
            if on_case is not None:
                on_case(index, result)
    return round(sum(r.score for r in results) / len(results), 4), results


def _side(
    resolved: ResolvedProfile,
    suite: Suite,
    *,
    label: str,
    log_dir: Path,
    on_event: Callable[[EvalEvent], None],
) -> SuiteResult:
    started = time.monotonic()
    url = resolved.profile.server.url
    what = f"using the running server {url} for {label}" if url else f"starting mlx_lm.server for {label}"
    on_event(EvalEvent(kind="server", label=label, message=what))
    with serve(resolved, log_dir=log_dir) as (base_url, adapter):
        on_event(EvalEvent(kind="ready", label=label, message=base_url))

        def case_done(index: int, result: CaseResult) -> None:
            on_event(EvalEvent(kind="case", label=label, case=result, index=index, total=len(suite.cases)))

        score, results = run_suite(base_url, suite, label=label, on_case=case_done)
    on_event(EvalEvent(kind="stopped", label=label))
    return SuiteResult(
        label=label, profile=resolved.name, adapter=adapter, score=score, cases=results,
        seconds=round(time.monotonic() - started, 2),
    )


def store_result(adapter_dir: Path, report: EvalReport) -> Path:
    """Record the score and the suite's results in the adapter's ``punie-adapter.json``."""
    meta = read_meta(adapter_dir)
    previous = dict((meta.eval or {}) if meta else {})
    suites = dict(previous.get("suites") or {})
    suites[report.suite] = {
        "score": report.candidate.score,
        "baseline_score": report.baseline.score,
        "baseline": report.baseline.label,
        "date": now_iso(),
        "cases": {c.id: {"score": c.score, "baseline": b.score} for c, b in zip(
            report.candidate.cases, report.baseline.cases, strict=True)},
    }
    update_meta(adapter_dir, score=report.candidate.score, eval={"last_suite": report.suite, "suites": suites})
    return adapter_dir


def evaluate_profile(
    resolved: ResolvedProfile,
    *,
    vs: ResolvedProfile | None = None,
    suite: str | Path | None = None,
    store: bool = False,
    on_event: Callable[[EvalEvent], Any] | None = None,
    results_dir: Path | None = None,
) -> EvalReport:
    """Run the suite against the baseline, then against the profile (with its adapter).

    The baseline is ``vs`` or the profile without adapter. The report is written
    as JSON under ``results_dir`` (`punie eval` passes the project's .punie/eval);
    the candidate's score is recorded in its adapter's metadata only with
    ``store``. Raises UsageError when there is nothing to compare, LaunchError
    when a server does not come up.
    """
    loaded = load_suite(suite)
    adapter_dir = effective_adapter(resolved)
    if adapter_dir is None and vs is None:
        raise UsageError(
            f"profile '{resolved.name}' has no adapter: nothing to compare with its base model",
            hint="set `adapter` in the profile (or --set adapter=latest), or compare with --vs OTHER",
        )
    baseline_profile = vs if vs is not None else without_adapter(resolved)
    if baseline_profile.profile.server.url and vs is None:
        raise UsageError(
            f"profile '{resolved.name}' uses an external server (server.url): its baseline cannot be started",
            hint="compare with another profile: --vs OTHER",
        )
    emit = on_event or (lambda event: None)
    baseline_label = vs.name if vs is not None else f"{resolved.name} (no adapter)"
    with tempfile.TemporaryDirectory(prefix="punie-eval-") as tmp:
        log_dir = Path(tmp)
        try:
            baseline = _side(baseline_profile, loaded, label=baseline_label, log_dir=log_dir, on_event=emit)
            candidate = _side(resolved, loaded, label=resolved.name, log_dir=log_dir, on_event=emit)
        except LaunchError:
            raise
        except OSError as exc:
            raise TrainingError(f"evaluation failed: {exc}") from exc
    report = EvalReport(suite=loaded.name, baseline=baseline, candidate=candidate)
    if store and adapter_dir is not None:
        store_result(adapter_dir, report)
        report = report.model_copy(update={"stored_in": str(adapter_dir)})
    if results_dir is not None:
        report = report.model_copy(update={"saved_to": str(save_report(report, results_dir))})
    return report


def save_report(report: EvalReport, results_dir: Path) -> Path:
    """Write ``report`` as ``PROFILE-SUITE-TIME.json`` in ``results_dir`` (created) and return the file."""
    import datetime

    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"{report.candidate.profile}-{report.suite}-{stamp}"
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    for n in range(1, 100):  # two evaluations within one second keep both files
        if not path.exists():
            break
        path = results_dir / f"{name}-{n}.json"
    path.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path


__all__ = [
    "EvalEvent",
    "EvalReport",
    "SuiteResult",
    "evaluate_profile",
    "free_port",
    "run_suite",
    "save_report",
    "serve",
    "store_result",
    "without_adapter",
]

