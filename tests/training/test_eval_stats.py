"""The paired statistics of `punie eval A --vs B` against the reference implementations.

scipy.stats.bootstrap (paired, percentile), scipy.stats.binomtest and statsmodels' exact McNemar
are the oracles, on synthetic data; hypothesis checks the properties any paired A/B must have.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from punie.training.stats import (
    BootstrapInterval,
    binomial_two_sided_half,
    bootstrap_means,
    compare,
    gate_passes,
    mcnemar_exact,
    mean_interval,
    paired_bootstrap,
    verdict_of,
    win_tie_loss,
)

scipy_stats = pytest.importorskip("scipy.stats")
contingency = pytest.importorskip("statsmodels.stats.contingency_tables")


def _synthetic(seed: int, n: int, lift: float) -> tuple[np.ndarray, np.ndarray]:
    """Scores in [0, 1] like a suite's: partial credit in thirds, the candidate lifted by ``lift``."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 4, n) / 3
    cand = np.clip(base + rng.choice([-1 / 3, 0, 1 / 3, 2 / 3], n, p=[0.2, 0.4, 0.3, 0.1]) * (lift > 0)
                   + rng.normal(0, 0.05, n), 0, 1)
    return cand, base


def _scipy_interval(a: np.ndarray, b: np.ndarray, seed: int, resamples: int) -> tuple[float, float]:
    result = scipy_stats.bootstrap(
        (a, b), lambda x, y, axis=-1: np.mean(x - y, axis=axis), paired=True, vectorized=True,
        n_resamples=resamples, confidence_level=0.95, method="percentile", random_state=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@pytest.mark.parametrize(("seed", "n", "lift"), [(1, 60, 0.2), (2, 12, 0.0), (3, 200, 0.1), (4, 7, 0.3)])
def test_paired_bootstrap_is_scipys_percentile_interval(seed: int, n: int, lift: float) -> None:
    """Same seed, same resamples: the interval is scipy's to rounding."""
    a, b = _synthetic(seed, n, lift)
    ours = paired_bootstrap(a, b, seed=seed, resamples=2000)
    low, high = _scipy_interval(a, b, seed, 2000)
    assert ours.low == pytest.approx(low, abs=1e-12)
    assert ours.high == pytest.approx(high, abs=1e-12)
    assert ours.mean == pytest.approx(float(np.mean(a - b)), abs=1e-12)


def test_paired_bootstrap_agrees_with_scipy_across_seeds() -> None:
    """Different seeds (different resamples): the two intervals agree to Monte Carlo error."""
    a, b = _synthetic(7, 80, 0.2)
    ours = paired_bootstrap(a, b, seed=11, resamples=20_000)
    low, high = _scipy_interval(a, b, 99, 20_000)
    assert ours.low == pytest.approx(low, abs=0.01)
    assert ours.high == pytest.approx(high, abs=0.01)


def test_paired_bootstrap_is_seeded_and_reproducible() -> None:
    a, b = _synthetic(5, 40, 0.2)
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)
    assert paired_bootstrap(a, b, seed=3) != paired_bootstrap(a, b, seed=4)


def test_big_draws_are_split_without_changing_the_law() -> None:
    """More than one batch of indices: the resampled means still have the right spread."""
    d = np.random.default_rng(0).normal(0.1, 1.0, 1000)
    means = bootstrap_means(d, resamples=5000, seed=1)  # 5M indices: two batches
    assert means.shape == (5000,)
    assert float(np.std(means)) == pytest.approx(float(np.std(d)) / math.sqrt(d.size), rel=0.05)


def test_equal_pairs_give_a_zero_width_interval_and_no_verdict() -> None:
    same = [0.5, 1.0, 0.0, 1.0]
    interval = paired_bootstrap(same, same)
    assert (interval.mean, interval.low, interval.high) == (0.0, 0.0, 0.0)
    assert verdict_of(interval) == "inconclusive"


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap([1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="no pairs"):
        paired_bootstrap([], [])
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap([float("nan")], [0.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1.0], [0.0], confidence=1.0)
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar_exact([True], [True, False])


@pytest.mark.parametrize(("only_a", "only_b", "both", "neither"),
                         [(0, 0, 5, 5), (7, 1, 20, 2), (1, 7, 3, 3), (3, 3, 0, 0), (12, 2, 40, 6), (0, 9, 1, 1),
                          (25, 18, 10, 7)])
def test_mcnemar_exact_is_statsmodels_and_scipys_binomtest(only_a: int, only_b: int, both: int, neither: int) -> None:
    a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
    ours = mcnemar_exact(a, b)
    assert (ours.candidate_only, ours.baseline_only, ours.both, ours.neither) == (only_a, only_b, both, neither)
    table = [[both, only_a], [only_b, neither]]
    reference = contingency.mcnemar(table, exact=True)
    assert ours.p_value == pytest.approx(float(reference.pvalue), rel=1e-12)
    if only_a + only_b:
        binom = scipy_stats.binomtest(only_a, only_a + only_b, 0.5, alternative="two-sided")
        assert ours.p_value == pytest.approx(float(binom.pvalue), rel=1e-9)


@given(n=st.integers(0, 400), data=st.data())
@settings(max_examples=200, deadline=None)
def test_binomial_tail_matches_statsmodels_for_any_counts(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, n))
    ours = binomial_two_sided_half(k, n)
    reference = float(contingency.mcnemar([[0, k], [n - k, 0]], exact=True).pvalue)
    assert 0.0 <= ours <= 1.0
    assert ours == pytest.approx(reference, rel=1e-9, abs=1e-300)


scores = st.lists(st.sampled_from([0.0, 0.25, 1 / 3, 0.5, 2 / 3, 0.75, 1.0]), min_size=1, max_size=60)


@st.composite
def paired(draw: st.DrawFn) -> tuple[list[float], list[float]]:
    a = draw(scores)
    b = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=len(a), max_size=len(a)))
    return a, b


@given(pair=paired(), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=60, deadline=None)
def test_interval_contains_the_point_estimate(pair: tuple[list[float], list[float]], seed: int) -> None:
    a, b = pair
    interval = paired_bootstrap(a, b, seed=seed, resamples=2000)
    assert interval.low <= interval.mean + 1e-12 and interval.mean <= interval.high + 1e-12
    assert -1.0 <= interval.low <= interval.high <= 1.0


@given(pair=paired(), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=60, deadline=None)
def test_swapping_the_sides_flips_every_sign(pair: tuple[list[float], list[float]], seed: int) -> None:
    a, b = pair
    a_pass = [x >= 1.0 for x in a]
    b_pass = [x >= 1.0 for x in b]
    forward = compare(a, b, a_pass, b_pass, seed=seed, resamples=1000)
    backward = compare(b, a, b_pass, a_pass, seed=seed, resamples=1000)
    assert backward.difference.mean == pytest.approx(-forward.difference.mean, abs=1e-12)
    assert backward.difference.low == pytest.approx(-forward.difference.high, abs=1e-9)
    assert backward.difference.high == pytest.approx(-forward.difference.low, abs=1e-9)
    assert (backward.record.wins, backward.record.ties, backward.record.losses) == (
        forward.record.losses, forward.record.ties, forward.record.wins)
    assert backward.mcnemar.p_value == forward.mcnemar.p_value
    flipped = {"better": "worse", "worse": "better", "inconclusive": "inconclusive"}
    assert backward.verdict == flipped[forward.verdict]


@given(a=st.lists(st.booleans(), max_size=80), data=st.data())
@settings(max_examples=100, deadline=None)
def test_mcnemar_p_is_a_probability_and_counts_add_up(a: list[bool], data: st.DataObject) -> None:
    b = data.draw(st.lists(st.booleans(), min_size=len(a), max_size=len(a)))
    test = mcnemar_exact(a, b)
    assert 0.0 <= test.p_value <= 1.0
    assert test.both + test.neither + test.candidate_only + test.baseline_only == len(a)
    if test.candidate_only == test.baseline_only:
        assert test.p_value == 1.0


def test_win_tie_loss_and_the_summary() -> None:
    a = [1.0, 1.0, 0.5, 0.0, 1.0]
    b = [0.0, 1.0, 1.0, 0.0, 0.5]
    assert win_tie_loss(a, b) == win_tie_loss(a, b, tolerance=1e-9)
    record = win_tie_loss(a, b)
    assert (record.wins, record.ties, record.losses) == (2, 2, 1)
    result = compare(a, b, [x == 1.0 for x in a], [x == 1.0 for x in b])
    assert result.n == 5 and result.candidate_passed == 3 and result.baseline_passed == 2
    assert result.candidate_mean == pytest.approx(0.7) and result.baseline_mean == pytest.approx(0.5)


def test_mean_interval_brackets_the_mean_and_narrows_with_more_cases() -> None:
    few = mean_interval([1.0, 1.0, 1.0, 0.0])
    many = mean_interval([1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0] * 8)
    assert few.low < few.mean == 0.75 <= few.high
    assert many.high - many.low < few.high - few.low


def _comparison_with(low: float, high: float) -> object:
    a, b = [1.0, 0.0], [0.0, 1.0]
    base = compare(a, b, [True, False], [False, True])
    interval = BootstrapInterval(mean=(low + high) / 2, low=low, high=high, confidence=0.95, resamples=1, seed=0)
    return type(base)(**{**base.__dict__, "difference": interval, "verdict": verdict_of(interval)})


@pytest.mark.parametrize(("low", "high", "better", "not_worse"),
                         [(0.05, 0.3, True, True), (-0.1, 0.2, False, True), (-0.4, -0.01, False, False)])
def test_gates(low: float, high: float, better: bool, not_worse: bool) -> None:
    comparison = _comparison_with(low, high)
    assert gate_passes(comparison, "better")[0] is better  # type: ignore[arg-type]
    assert gate_passes(comparison, "not-worse")[0] is not_worse  # type: ignore[arg-type]
    reason = gate_passes(comparison, "better")[1]  # type: ignore[arg-type]
    assert f"[{low:+.3f}, {high:+.3f}]" in reason
    with pytest.raises(ValueError, match="unknown gate"):
        gate_passes(comparison, "maybe")  # type: ignore[arg-type]
