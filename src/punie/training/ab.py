"""The paired A/B of two sides' answers to one suite: per case, per category and overall.

The result types of `punie eval` (`SuiteResult` per side, `EvalReport` for both) and
`compare_sides`, which turns two sides' results into the report's statistics
(`punie.training.stats`). No servers here: `punie.training.evaluate` runs them.

A suite's case is reported under its ``category`` (else its expected tool, else ``no-tool``) and
passes with full marks (unless its result says ``passed``): the only things assumed of a suite.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from punie.errors import TrainingError
from punie.training.stats import CONFIDENCE, RESAMPLES, SEED, Gate, PairedComparison, compare, gate_passes
from punie.training.suite import CaseResult, EvalCase, Suite

#: A case passes when it gets full marks (unless the suite's result says otherwise: ``passed``).
PASS_SCORE = 1.0


def case_category(case: EvalCase) -> str:
    """The category a case is reported under: its ``category``, else its expected tool, else ``no-tool``."""
    category = getattr(case, "category", None)
    if isinstance(category, str) and category:
        return category
    if case.expect_tool:
        return case.expect_tool
    return "no-tool" if case.no_tool else "answer"


def case_passed(result: CaseResult) -> bool:
    """Pass/fail of one answer: the result's own ``passed`` when the suite sets it, else full marks."""
    passed = getattr(result, "passed", None)
    if isinstance(passed, bool):
        return passed
    return result.error is None and result.score >= PASS_SCORE - 1e-9


class SuiteResult(BaseModel):
    """One side of an evaluation: every case's result and the mean score.

    ``cases`` are the greedy answers (temperature 0). With ``samples`` asked for,
    ``sampled[i]`` holds the sampled answers to case ``i`` at ``temperature``.
    ``interval`` is the bootstrap interval of ``score`` (what `adapter = "best"` ranks by).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    profile: str
    adapter: str | None
    score: float
    cases: list[CaseResult]
    seconds: float
    interval: tuple[float, float] | None = None
    temperature: float | None = None
    sampled: list[list[CaseResult]] = Field(default_factory=list)


class CaseOutcome(BaseModel):
    """One case of the A/B: both sides' scores, pass/fail and who won."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    category: str
    baseline: float
    candidate: float
    baseline_passed: bool
    candidate_passed: bool
    outcome: Literal["win", "tie", "loss"]
    sampled_baseline: float | None = Field(None, description="Mean score of the baseline's samples.")
    sampled_candidate: float | None = Field(None, description="Mean score of the candidate's samples.")


class Comparison(BaseModel):
    """The paired statistics of one way of answering (``greedy`` or ``sampled``), overall and per category."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["greedy", "sampled"]
    overall: PairedComparison
    categories: dict[str, PairedComparison]


class GateOutcome(BaseModel):
    """What a CI gate (``better`` or ``not-worse``) decided on the greedy comparison, and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gate: Gate
    passed: bool
    reason: str


class EvalReport(BaseModel):
    """Baseline and candidate results of one suite, their paired comparison, and where it was written.

    ``greedy`` compares the greedy answers; ``sampled`` (with ``samples``) the per-case mean of
    the sampled answers, a case passing when more than half of its samples pass.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    suite: str
    baseline: SuiteResult
    candidate: SuiteResult
    outcomes: list[CaseOutcome] = Field(default_factory=list)
    greedy: Comparison | None = None
    sampled: Comparison | None = None
    samples: int = 0
    gate: GateOutcome | None = None
    stored_in: str | None = None
    saved_to: str | None = None
    files: list[str] = Field(default_factory=list, description="Report files written (Markdown, chart).")

    @property
    def delta(self) -> float:
        return round(self.candidate.score - self.baseline.score, 4)


def _comparison(mode: Literal["greedy", "sampled"], categories: list[str], a: list[float], b: list[float],
                a_pass: list[bool], b_pass: list[bool], *, confidence: float, resamples: int,
                seed: int) -> Comparison:
    def stats(keep: list[int]) -> PairedComparison:
        return compare([a[i] for i in keep], [b[i] for i in keep], [a_pass[i] for i in keep],
                       [b_pass[i] for i in keep], confidence=confidence, resamples=resamples, seed=seed)

    by_category: dict[str, list[int]] = {}
    for i, category in enumerate(categories):
        by_category.setdefault(category, []).append(i)
    return Comparison(mode=mode, overall=stats(list(range(len(a)))),
                      categories={name: stats(keep) for name, keep in sorted(by_category.items())})


def compare_sides(
    suite: Suite,
    baseline: SuiteResult,
    candidate: SuiteResult,
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    gate: Gate | None = None,
) -> EvalReport:
    """The paired A/B of two sides' results on ``suite``: per case, per category and overall.

    Raises TrainingError when the results do not answer the suite's cases in order.
    """
    ids = [c.id for c in suite.cases]
    for side in (baseline, candidate):
        if [r.id for r in side.cases] != ids:
            raise TrainingError(f"{side.label}: results do not answer the cases of suite {suite.name} in order")
    categories = [case_category(c) for c in suite.cases]
    a = [r.score for r in candidate.cases]
    b = [r.score for r in baseline.cases]
    a_pass = [case_passed(r) for r in candidate.cases]
    b_pass = [case_passed(r) for r in baseline.cases]
    greedy = _comparison("greedy", categories, a, b, a_pass, b_pass, confidence=confidence, resamples=resamples,
                         seed=seed)
    sampled = None
    samples = len(candidate.sampled[0]) if candidate.sampled else 0
    sa: list[float | None] = [None] * len(ids)
    sb: list[float | None] = [None] * len(ids)
    if samples and baseline.sampled:
        sa_values = [sum(r.score for r in answers) / len(answers) for answers in candidate.sampled]
        sb_values = [sum(r.score for r in answers) / len(answers) for answers in baseline.sampled]
        sa_pass = [sum(map(case_passed, answers)) * 2 > len(answers) for answers in candidate.sampled]
        sb_pass = [sum(map(case_passed, answers)) * 2 > len(answers) for answers in baseline.sampled]
        sampled = _comparison("sampled", categories, sa_values, sb_values, sa_pass, sb_pass,
                              confidence=confidence, resamples=resamples, seed=seed)
        sa, sb = [round(v, 4) for v in sa_values], [round(v, 4) for v in sb_values]
    outcomes = [
        CaseOutcome(id=ids[i], category=categories[i], baseline=b[i], candidate=a[i], baseline_passed=b_pass[i],
                    candidate_passed=a_pass[i],
                    outcome="win" if a[i] - b[i] > 1e-9 else "loss" if b[i] - a[i] > 1e-9 else "tie",
                    sampled_baseline=sb[i], sampled_candidate=sa[i])
        for i in range(len(ids))
    ]
    verdict = None
    if gate is not None:
        passed, reason = gate_passes(greedy.overall, gate)
        verdict = GateOutcome(gate=gate, passed=passed, reason=reason)
    return EvalReport(suite=suite.name, baseline=baseline, candidate=candidate, outcomes=outcomes, greedy=greedy,
                      sampled=sampled, samples=samples, gate=verdict)


__all__ = [
    "PASS_SCORE",
    "CaseOutcome",
    "Comparison",
    "EvalReport",
    "GateOutcome",
    "SuiteResult",
    "case_category",
    "case_passed",
    "compare_sides",
]
