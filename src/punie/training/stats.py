"""Paired statistics for an A/B evaluation: is the candidate really better than the baseline?

Both sides answer the same cases, so every comparison here is *paired*: case ``i`` of A is
compared with case ``i`` of B, and the case-to-case variation (some cases are hard for every
model) drops out. Three views of the same pairs:

- **win / tie / loss**: how many cases the candidate scored higher, equal, lower;
- **mean score difference** with a **paired bootstrap** confidence interval (percentile method,
  seeded: the same inputs and seed give the same interval, on any machine with the same numpy);
- **McNemar's exact test** on pass/fail: only the discordant pairs (one side passes, the other
  fails) carry information; under "no difference" each goes either way with probability 1/2, so
  the two-sided p-value is an exact binomial tail.

Pure functions on sequences of numbers; numpy is the only dependency. The references they are
tested against (tests/training/test_eval_stats.py) are ``scipy.stats.bootstrap(paired=True,
method="percentile")``, ``scipy.stats.binomtest`` and
``statsmodels.stats.contingency_tables.mcnemar(exact=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np

#: Default confidence level of the intervals.
CONFIDENCE = 0.95
#: Default bootstrap resamples: the interval's ends move by well under 0.01 between seeds.
RESAMPLES = 10_000
#: Default seed of the bootstrap (reproducible reports).
SEED = 0
#: Scores closer than this count as a tie.
TIE_TOLERANCE = 1e-9
# Resampled indices held in memory at once (int64): 4M is 32 MB.
_BATCH_ELEMENTS = 4_000_000

Verdict = Literal["better", "worse", "inconclusive"]
Gate = Literal["better", "not-worse"]


@dataclass(frozen=True)
class WinTieLoss:
    """How many pairs the candidate won, tied and lost."""

    wins: int
    ties: int
    losses: int


@dataclass(frozen=True)
class BootstrapInterval:
    """The mean of the paired differences (candidate - baseline) and its bootstrap interval."""

    mean: float
    low: float
    high: float
    confidence: float
    resamples: int
    seed: int


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test on paired pass/fail.

    ``candidate_only``: pairs only the candidate passes; ``baseline_only``: only the baseline;
    ``both`` / ``neither``: the concordant pairs. ``p_value`` is two-sided.
    """

    candidate_only: int
    baseline_only: int
    both: int
    neither: int
    p_value: float


@dataclass(frozen=True)
class PairedComparison:
    """Everything the report says about one set of pairs (a whole suite or one category)."""

    n: int
    candidate_mean: float
    baseline_mean: float
    candidate_passed: int
    baseline_passed: int
    record: WinTieLoss
    difference: BootstrapInterval
    mcnemar: McNemar
    verdict: Verdict


def _floats(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of numbers")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has a value that is not a finite number")
    return array


def _pairs(candidate: Sequence[float], baseline: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a = _floats(candidate, "candidate")
    b = _floats(baseline, "baseline")
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} candidate vs {b.size} baseline")
    if a.size == 0:
        raise ValueError("no pairs to compare")
    return a, b


def win_tie_loss(candidate: Sequence[float], baseline: Sequence[float], *, tolerance: float = TIE_TOLERANCE
                 ) -> WinTieLoss:
    """Count the pairs where the candidate scores higher, the same (within ``tolerance``), lower."""
    a, b = _pairs(candidate, baseline)
    diff = a - b
    wins = int(np.sum(diff > tolerance))
    losses = int(np.sum(diff < -tolerance))
    return WinTieLoss(wins=wins, ties=int(a.size) - wins - losses, losses=losses)


def bootstrap_means(differences: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """The means of ``resamples`` resamples (with replacement, same size) of ``differences``.

    The indices are drawn as ``numpy.random.default_rng(seed).integers(0, n, (resamples, n))``, the
    draw of ``scipy.stats.bootstrap``: with the same seed both see the same resamples (when they fit
    one batch of 4M indices; bigger draws are split by rows, which changes the stream, not the law).
    """
    d = _floats(differences, "differences")
    if d.size == 0:
        raise ValueError("no pairs to compare")
    if resamples < 1:
        raise ValueError("resamples must be at least 1")
    rng = np.random.default_rng(seed)
    rows = max(1, _BATCH_ELEMENTS // d.size)
    out = np.empty(resamples)
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        index = rng.integers(0, d.size, (stop - start, d.size))
        out[start:stop] = d[index].mean(axis=-1)
    return out


def paired_bootstrap(
    candidate: Sequence[float],
    baseline: Sequence[float],
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> BootstrapInterval:
    """The mean of ``candidate - baseline`` with its paired bootstrap percentile interval.

    Cases are resampled as pairs (a case's two scores stay together). The interval is the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles (numpy's linear
    interpolation) of the resampled means. All pairs equal gives a zero-width interval.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be between 0 and 1")
    a, b = _pairs(candidate, baseline)
    diff = a - b
    means = bootstrap_means(diff, resamples=resamples, seed=seed)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(means, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return BootstrapInterval(mean=float(diff.mean()), low=float(low), high=float(high), confidence=confidence,
                             resamples=resamples, seed=seed)


def mean_interval(
    values: Sequence[float], *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = SEED
) -> BootstrapInterval:
    """The mean of ``values`` with its bootstrap percentile interval (one side's score on a suite).

    `adapter = "best"` ranks adapters by this interval's lower bound: a high mean on few or
    erratic cases ranks below a slightly lower mean that is sure.
    """
    values = _floats(values, "values")
    return paired_bootstrap(values, np.zeros_like(values), confidence=confidence, resamples=resamples, seed=seed)


def binomial_two_sided_half(k: int, n: int) -> float:
    """Exact two-sided p-value of ``k`` successes in ``n`` fair coin flips (doubled smaller tail, at most 1).

    Computed with integers (no rounding until the end): ``min(1, 2 * P[X <= min(k, n - k)])``.
    """
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def mcnemar_exact(candidate_passed: Sequence[bool], baseline_passed: Sequence[bool]) -> McNemar:
    """McNemar's exact test: the binomial test of the discordant pairs against 1/2."""
    a = np.asarray(candidate_passed, dtype=bool)
    b = np.asarray(baseline_passed, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired pass/fail differ in length: {a.size} candidate vs {b.size} baseline")
    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(~a & b))
    return McNemar(candidate_only=only_a, baseline_only=only_b, both=int(np.sum(a & b)),
                   neither=int(np.sum(~a & ~b)), p_value=binomial_two_sided_half(only_a, only_a + only_b))


def verdict_of(interval: BootstrapInterval) -> Verdict:
    """``better`` when the whole interval is above 0, ``worse`` when below, else ``inconclusive``."""
    if interval.low > 0.0:
        return "better"
    if interval.high < 0.0:
        return "worse"
    return "inconclusive"


def compare(
    candidate_scores: Sequence[float],
    baseline_scores: Sequence[float],
    candidate_passed: Sequence[bool],
    baseline_passed: Sequence[bool],
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> PairedComparison:
    """All of the paired statistics of one set of cases (scores in [0, 1], pass/fail per case)."""
    a, b = _pairs(candidate_scores, baseline_scores)
    interval = paired_bootstrap(a, b, confidence=confidence, resamples=resamples, seed=seed)
    test = mcnemar_exact(candidate_passed, baseline_passed)
    if test.both + test.neither + test.candidate_only + test.baseline_only != a.size:
        raise ValueError("pass/fail and scores differ in length")
    return PairedComparison(
        n=int(a.size), candidate_mean=float(a.mean()), baseline_mean=float(b.mean()),
        candidate_passed=test.both + test.candidate_only, baseline_passed=test.both + test.baseline_only,
        record=win_tie_loss(a, b), difference=interval, mcnemar=test, verdict=verdict_of(interval),
    )


def gate_passes(comparison: PairedComparison, gate: Gate) -> tuple[bool, str]:
    """Whether a CI gate passes, and why (one sentence).

    ``better``: the candidate must be significantly better (the interval of the mean difference
    lies above 0). ``not-worse``: it must not be significantly worse (the interval does not lie
    below 0). McNemar's p-value is reported, not gated on: the interval also weighs partial scores.
    """
    d = comparison.difference
    where = (f"mean difference {d.mean:+.3f}, {d.confidence:.0%} CI [{d.low:+.3f}, {d.high:+.3f}] "
             f"over {comparison.n} cases")
    if gate == "better":
        if comparison.verdict == "better":
            return True, f"significantly better: {where}"
        return False, f"not significantly better: {where}"
    if gate == "not-worse":
        if comparison.verdict == "worse":
            return False, f"significantly worse: {where}"
        return True, f"not significantly worse: {where}"
    raise ValueError(f"unknown gate {gate!r} (better, not-worse)")


__all__ = [
    "CONFIDENCE",
    "RESAMPLES",
    "SEED",
    "BootstrapInterval",
    "Gate",
    "McNemar",
    "PairedComparison",
    "Verdict",
    "WinTieLoss",
    "binomial_two_sided_half",
    "bootstrap_means",
    "compare",
    "gate_passes",
    "mcnemar_exact",
    "mean_interval",
    "paired_bootstrap",
    "verdict_of",
    "win_tie_loss",
]
