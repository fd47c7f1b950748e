"""`punie eval`: serve both sides of an A/B in turn, ask them the suite, compare (`punie.training.ab`).

Both sides are served by mlx_lm.server, one after the other, on a free
loopback port: the baseline is the same profile WITHOUT its adapter (or
another profile, ``--vs``), because one server process cannot serve the base
model reliably: any request ``model`` other than "default_model" silently
reloads the base model, and back. Requests always send "default_model".

The server is run by the supervisor of `punie up` without the agent
(`punie.launch.server.running_server`: same plan, guarded child, 1-token probe, the
answer proven to come from that child, liveness, stop), on a blocking portal's loop.

Every case is asked greedily, plus ``samples`` times at the profile's temperature with a
per-(case, sample) seed; progress (`EvalEvent`) counts the answers of both sides and estimates
the time left. The report goes to ``.punie/eval/A-vs-B-TIME.{json,md,png}`` (`save_report`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from punie import envvars
from punie.adapters.registry import effective_adapter, now_iso, read_meta, update_meta
from punie.config.models import ResolvedProfile
from punie.errors import LaunchError, LaunchFailed, TrainingError, UsageError
from punie.net import LOOPBACK, free_port, is_loopback_url, openai_base_url
from punie.training.ab import (
    PASS_SCORE,
    CaseOutcome,
    Comparison,
    EvalReport,
    GateOutcome,
    SuiteResult,
    case_category,
    case_passed,
    compare_sides,
)
from punie.training.stats import CONFIDENCE, RESAMPLES, SEED, Gate, mean_interval
from punie.training.suite import (
    CaseResult,
    EvalCase,
    Suite,
    load_suite,
    request_body,
    score_case,
    wants_second_step,
)

logger = logging.getLogger(__name__)

LOG_TAIL = 15


#: Sampling temperature when ``samples`` are asked for and the profile sets none.
DEFAULT_SAMPLE_TEMPERATURE = 0.7


class EvalEvent(BaseModel):
    """Progress of an evaluation (servers, then every answer with how many are done and an ETA)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["server", "ready", "case", "stopped"]
    label: str
    message: str | None = None
    case: CaseResult | None = None
    index: int | None = None
    total: int | None = None
    sample: int | None = Field(None, description="Which sample of the case (None: the greedy answer).")
    done: int | None = Field(None, description="Answers received so far, both sides.")
    planned: int | None = Field(None, description="Answers the whole evaluation asks for, both sides.")
    eta_seconds: float | None = Field(None, description="Estimated seconds until the evaluation ends.")

    def describe(self) -> str:
        """One line for a person: ``label: case 3/60 read-readme 1.00 (7/240, ETA 2m05s)``."""
        if self.kind != "case" or self.case is None or self.index is None:
            return f"{self.label}: {self.message or self.kind}"
        which = f" sample {self.sample + 1}" if self.sample is not None else ""
        text = f"{self.label}: case {self.index + 1}/{self.total} {self.case.id}{which} {self.case.score:.2f}"
        if self.done is not None and self.planned:
            text += f" ({self.done}/{self.planned}"
            text += f", ETA {_duration(self.eta_seconds)})" if self.eta_seconds is not None else ")"
        return text


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def without_adapter(resolved: ResolvedProfile) -> ResolvedProfile:
    """The same profile serving its bare base model."""
    profile = resolved.profile.model_copy(update={"adapter": None, "adapters": []})
    return resolved.model_copy(update={"profile": profile})


def _on_port(resolved: ResolvedProfile, port: int) -> ResolvedProfile:
    server = resolved.profile.server.model_copy(update={"port": port, "host": LOOPBACK})
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
    env = {envvars.MLX_DISABLE_COMPILE: os.environ.get(envvars.MLX_DISABLE_COMPILE, "1")}
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


def _ask(client: Any, url: str, body: dict[str, Any], suite: Suite, case: EvalCase, label: str) -> CaseResult:
    import httpx

    try:
        response = client.post(url, json=body)
        response.raise_for_status()
        message = response.json()["choices"][0]["message"]
        second = None
        if (first := wants_second_step(case, message)) is not None:  # two-step cases: the tool's result, then again
            sampling = {key: body[key] for key in ("temperature", "top_p", "seed") if key in body}
            response = client.post(url, json=request_body(suite, case, first) | sampling)
            response.raise_for_status()
            second = response.json()["choices"][0]["message"]
        return score_case(case, message, second)
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        logger.warning("%s: case %s failed: %s", label, case.id, exc)
        return CaseResult(id=case.id, category=case.category, score=0.0, error=str(exc)[:300])


AnswerCallback = Callable[[int, "int | None", CaseResult, float], None]
"""``(case index, sample index or None for the greedy answer, result, seconds the request took)``."""


#: Requests of an eval in flight at once. mlx_lm.server (0.32) batches concurrent greedy requests
#: (seeded ones are served one by one) and vLLM batches all: on the builtin model with OpenBLAS, 12
#: cases at once took 3.95x less time than one after the other, with the same 12 greedy answers.
EVAL_CONCURRENCY = 8


def eval_concurrency(environ: Mapping[str, str] | None = None) -> int:
    """`EVAL_CONCURRENCY`, or ``PUNIE_EVAL_CONCURRENCY`` when set (1: one request at a time)."""
    value = (os.environ if environ is None else environ).get(envvars.EVAL_CONCURRENCY, "").strip()
    if not value:
        return EVAL_CONCURRENCY
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise UsageError(f"{envvars.EVAL_CONCURRENCY}={value!r}: give a whole number of requests, 1 or more")
    return number


def ask_suite(
    base_url: str,
    suite: Suite,
    *,
    label: str,
    samples: int = 0,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int = SEED,
    timeout: float = 300.0,
    on_answer: AnswerCallback | None = None,
    concurrency: int | None = None,
) -> tuple[list[CaseResult], list[list[CaseResult]]]:
    """Ask every case of ``suite`` at ``base_url`` (…/v1): the greedy answer, then ``samples`` more
    at ``temperature`` (and ``top_p``). Returns (greedy results, sampled results per case), in the
    suite's order.

    Up to ``concurrency`` requests are in flight at once (1: one after the other; default:
    `eval_concurrency`), so that the server can batch them. ``on_answer`` is called on this thread as
    answers arrive; the seconds it is given are the wall time since the previous answer (so that their mean is the time
    per answer at this concurrency, which is what an ETA needs).

    Each sample carries a request ``seed`` (`sample_seed`, honoured by mlx_lm.server and vLLM):
    a rerun draws the same samples, and both sides of an A/B draw sample ``j`` of case ``i`` with
    the same random numbers (common random numbers make the paired difference less noisy).
    """
    import httpx

    if samples and temperature is None:
        raise UsageError("samples need a temperature")
    if concurrency is None:
        concurrency = eval_concurrency()
    if concurrency < 1:
        raise UsageError(f"concurrency must be at least 1, not {concurrency}")
    url = base_url.rstrip("/") + "/chat/completions"
    jobs: list[tuple[int, int | None, dict[str, Any]]] = []
    for index, case in enumerate(suite.cases):
        jobs.append((index, None, request_body(suite, case) | {"temperature": 0.0}))
    for index, case in enumerate(suite.cases):  # after every greedy one: those batch, seeded ones do not
        for sample in range(samples):
            body = request_body(suite, case) | {"temperature": temperature, "seed": sample_seed(seed, index, sample)}
            if top_p is not None:
                body["top_p"] = top_p
            jobs.append((index, sample, body))
    greedy: list[CaseResult | None] = [None] * len(suite.cases)
    sampled: list[list[CaseResult | None]] = [[None] * samples for _ in suite.cases]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(timeout=timeout, trust_env=not is_loopback_url(url), limits=limits) as client, \
            ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="punie-eval") as pool:
        futures = {pool.submit(_ask, client, url, body, suite, suite.cases[index], label): (index, sample)
                   for index, sample, body in jobs}
        last = time.monotonic()
        try:
            for future in as_completed(futures):
                index, sample = futures[future]
                result = future.result()
                if sample is None:
                    greedy[index] = result
                else:
                    sampled[index][sample] = result
                now = time.monotonic()
                if on_answer is not None:
                    on_answer(index, sample, result, now - last)
                last = now
        except BaseException:  # Ctrl-C: nothing more is sent, and what is in flight is cut
            for future in futures:
                future.cancel()
            client.close()
            raise
    assert all(r is not None for r in greedy) and all(r is not None for rs in sampled for r in rs)
    return ([r for r in greedy if r is not None],
            [[r for r in rs if r is not None] for rs in sampled] if samples else [])


def sample_seed(seed: int, case: int, sample: int) -> int:
    """The request seed of sample ``sample`` of case ``case`` (a 31-bit int every server accepts)."""
    return (seed * 1_000_003 + case * 1_009 + sample) % 2**31


def _mean(values: Sequence[float]) -> float:
    return round(sum(values) / len(values), 4)


def run_suite(
    base_url: str,
    suite: Suite,
    *,
    label: str,
    timeout: float = 300.0,
    on_case: Callable[[int, CaseResult], None] | None = None,
) -> tuple[float, list[CaseResult]]:
    """Ask every case of ``suite`` at ``base_url`` (…/v1) greedily; return (mean score, results)."""

    def answered(index: int, sample: int | None, result: CaseResult, seconds: float) -> None:
        if on_case is not None:
            on_case(index, result)

    results, _ = ask_suite(base_url, suite, label=label, timeout=timeout, on_answer=answered)
    return _mean([r.score for r in results]), results


def sampling_of(resolved: ResolvedProfile) -> tuple[float, float | None]:
    """The (temperature, top_p) a profile samples at: the agent's, else the server's defaults.

    With neither set, `DEFAULT_SAMPLE_TEMPERATURE` (a temperature of 0 is greedy: samples would
    only repeat the greedy answer, which is refused where samples are asked for).
    """
    profile = resolved.profile
    temperature = profile.agent.temperature
    if temperature is None:
        temperature = profile.server.temperature
    if temperature is None:
        temperature = DEFAULT_SAMPLE_TEMPERATURE
    return temperature, profile.server.top_p


class _Tracker:
    """Counts the answers of both sides and estimates the time left from the time they took."""

    def __init__(self, planned: int, sides: int):
        self.planned = planned
        self.done = 0
        self.answer_seconds = 0.0
        self.sides_left = sides
        self.startup_seconds: float | None = None

    def answered(self, seconds: float) -> float:
        self.done += 1
        self.answer_seconds += seconds
        left = (self.answer_seconds / self.done) * (self.planned - self.done)
        # The other side's server still has to start: about as long as this one took.
        return left + (self.startup_seconds or 0.0) * max(0, self.sides_left - 1)


def _side(
    resolved: ResolvedProfile,
    suite: Suite,
    *,
    label: str,
    log_dir: Path,
    on_event: Callable[[EvalEvent], Any],
    samples: int,
    tracker: _Tracker,
    confidence: float,
    resamples: int,
    seed: int,
) -> SuiteResult:
    started = time.monotonic()
    url = resolved.profile.server.url
    what = f"using the running server {url} for {label}" if url else f"starting mlx_lm.server for {label}"
    on_event(EvalEvent(kind="server", label=label, message=what))
    temperature, top_p = sampling_of(resolved)
    with serve(resolved, log_dir=log_dir) as (base_url, adapter):
        if tracker.startup_seconds is None:
            tracker.startup_seconds = time.monotonic() - started
        on_event(EvalEvent(kind="ready", label=label, message=base_url))
        total = len(suite.cases)

        def answered(index: int, sample: int | None, result: CaseResult, seconds: float) -> None:
            eta = tracker.answered(seconds)
            on_event(EvalEvent(kind="case", label=label, case=result, index=index, total=total, sample=sample,
                               done=tracker.done, planned=tracker.planned, eta_seconds=round(eta, 1)))

        results, sampled = ask_suite(base_url, suite, label=label, samples=samples, temperature=temperature,
                                     top_p=top_p, seed=seed, on_answer=answered)
    tracker.sides_left -= 1
    on_event(EvalEvent(kind="stopped", label=label))
    scores = [r.score for r in results]
    interval = mean_interval(scores, confidence=confidence, resamples=resamples, seed=seed)
    return SuiteResult(
        label=label, profile=resolved.name, adapter=adapter, score=_mean(scores), cases=results,
        seconds=round(time.monotonic() - started, 2), interval=(round(interval.low, 4), round(interval.high, 4)),
        temperature=temperature if samples else None, sampled=sampled,
    )


def store_result(adapter_dir: Path, report: EvalReport) -> Path:
    """Record the score, its interval and the suite's results in the adapter's ``punie-adapter.json``.

    ``score_interval`` (the candidate's bootstrap interval) is what `adapter = "best"` ranks by.
    """
    meta = read_meta(adapter_dir)
    previous = dict((meta.eval or {}) if meta else {})
    suites = dict(previous.get("suites") or {})
    entry: dict[str, Any] = {
        "score": report.candidate.score,
        "baseline_score": report.baseline.score,
        "baseline": report.baseline.label,
        "date": now_iso(),
        "cases": {c.id: {"score": c.score, "baseline": b.score} for c, b in zip(
            report.candidate.cases, report.baseline.cases, strict=True)},
    }
    interval = report.candidate.interval
    if interval is not None:
        entry["interval"] = list(interval)
    if report.greedy is not None:
        d = report.greedy.overall.difference
        entry["difference"] = {"mean": round(d.mean, 4), "low": round(d.low, 4), "high": round(d.high, 4),
                               "confidence": d.confidence}
        entry["mcnemar_p"] = report.greedy.overall.mcnemar.p_value
    suites[report.suite] = entry
    update_meta(adapter_dir, score=report.candidate.score, score_interval=interval,
                eval={"last_suite": report.suite, "suites": suites})
    return adapter_dir


def evaluate_profile(
    resolved: ResolvedProfile,
    *,
    vs: ResolvedProfile | None = None,
    suite: str | Path | None = None,
    store: bool = False,
    on_event: Callable[[EvalEvent], Any] | None = None,
    results_dir: Path | None = None,
    samples: int = 0,
    gate: Gate | None = None,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
) -> EvalReport:
    """Run the suite against the baseline, then against the profile (with its adapter), and compare.

    The baseline is ``vs`` or the profile without adapter. Every case is asked greedily, plus
    ``samples`` times at each profile's temperature (`sampling_of`). The paired statistics
    (`compare_sides`) use ``seed``; ``gate`` records a CI gate's verdict in the report (the CLI
    turns a failed gate into exit code 1). The report is written as JSON, Markdown and a chart
    under ``results_dir`` (`punie eval` passes the project's .punie/eval); the candidate's score
    is recorded in its adapter's metadata only with ``store``. Raises UsageError when there is
    nothing to compare, LaunchError when a server does not come up.
    """
    if samples < 0:
        raise UsageError(f"samples must be 0 or more, not {samples}")
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
    if samples:
        for side in (baseline_profile, resolved):
            if sampling_of(side)[0] == 0:
                raise UsageError(
                    f"profile '{side.name}' samples at temperature 0: its samples would repeat the greedy answer",
                    hint=f"set a temperature: --set agent.temperature={DEFAULT_SAMPLE_TEMPERATURE}",
                )
    emit = on_event or (lambda event: None)
    baseline_label = vs.name if vs is not None else f"{resolved.name} (no adapter)"
    tracker = _Tracker(planned=2 * len(loaded.cases) * (1 + samples), sides=2)
    with tempfile.TemporaryDirectory(prefix="punie-eval-") as tmp:
        log_dir = Path(tmp)
        try:
            baseline, candidate = (
                _side(side, loaded, label=label, log_dir=log_dir, on_event=emit, samples=samples, tracker=tracker,
                      confidence=confidence, resamples=resamples, seed=seed)
                for side, label in ((baseline_profile, baseline_label), (resolved, resolved.name))
            )
        except LaunchError:
            raise
        except OSError as exc:
            raise TrainingError(f"evaluation failed: {exc}") from exc
    report = compare_sides(loaded, baseline, candidate, gate=gate, confidence=confidence, resamples=resamples,
                           seed=seed)
    if store and adapter_dir is not None:
        store_result(adapter_dir, report)
        report = report.model_copy(update={"stored_in": str(adapter_dir)})
    if results_dir is not None:
        stem = report_stem(resolved.name, vs.name if vs is not None else None)
        report = save_report(report, results_dir, stem=stem)
    return report


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def report_stem(candidate: str, baseline: str | None) -> str:
    """``A-vs-B`` for the report files (``A-vs-no-adapter`` for the profile's own base)."""
    def slug(name: str) -> str:
        return _UNSAFE.sub("_", name).strip("._") or "profile"

    return f"{slug(candidate)}-vs-{slug(baseline) if baseline is not None else 'no-adapter'}"


def save_report(report: EvalReport, results_dir: Path, *, stem: str | None = None) -> EvalReport:
    """Write ``STEM-TIME.json``, ``.md`` and (with matplotlib) ``.png`` in ``results_dir`` (created).

    ``stem`` defaults to ``CANDIDATE-vs-BASELINE`` from the report's profiles. Returns the report
    with ``saved_to`` (the JSON file) and ``files`` (the Markdown report and its chart) set.
    """
    import datetime

    from punie.training.report import write_markdown

    if stem is None:
        stem = report_stem(report.candidate.profile, report.baseline.profile)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"{stem}-{stamp}"
    results_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, 100):  # two evaluations within one second keep both sets of files
        if not (results_dir / f"{name}.json").exists():
            break
        name = f"{stem}-{stamp}-{n}"
    path = results_dir / f"{name}.json"
    files = write_markdown(report, results_dir / f"{name}.md")
    report = report.model_copy(update={"saved_to": str(path), "files": [str(f) for f in files]})
    path.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return report


__all__ = [
    "DEFAULT_SAMPLE_TEMPERATURE",
    "PASS_SCORE",
    "CaseOutcome",
    "Comparison",
    "EvalEvent",
    "EvalReport",
    "GateOutcome",
    "SuiteResult",
    "ask_suite",
    "case_category",
    "case_passed",
    "compare_sides",
    "evaluate_profile",
    "free_port",
    "report_stem",
    "run_suite",
    "sample_seed",
    "sampling_of",
    "save_report",
    "serve",
    "store_result",
    "without_adapter",
]
