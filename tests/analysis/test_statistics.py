"""Score statistics against constructed data with known answers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from aesq.analysis.statistics import (
    BCA_MAX_SAMPLE,
    BOOTSTRAP_MAX_SAMPLE,
    MIN_PAIRS,
    MIN_SAMPLES,
    N_RESAMPLES,
    Interval,
    compare,
    compare_family,
    mean_interval,
)


def _normal(mean: float, size: int, seed: int) -> list[float]:
    """Seeded normal(mean, 1) scores."""
    return list(np.random.default_rng(seed).normal(mean, 1.0, size))


def _width(interval: Interval) -> float:
    """The width of an interval."""
    return interval.high - interval.low


def test_mean_interval_is_plain_floats_around_the_mean_and_none_below_the_minimum():
    interval = mean_interval(range(1, 101))
    assert type(interval.low) is float and type(interval.high) is float
    assert 44 < interval.low < 50.5 < interval.high < 57  # the mean ± about 1.96 standard errors of 2.9
    assert mean_interval([7.0]) is None
    assert mean_interval([1.0] * (MIN_SAMPLES - 1)) is None
    assert mean_interval([1.0, 2.0, 3.0, 4.0, 5.0][:MIN_SAMPLES]) is not None


def test_mean_interval_rejects_non_finite_scores():
    with pytest.raises(ValueError, match="finite"):
        mean_interval([1.0, float("nan"), 3.0, 4.0, 5.0])


def test_mean_interval_depends_on_the_order_of_the_scores_which_is_why_the_aggregate_fixes_it():
    scores = _normal(5, 40, seed=8)
    assert mean_interval(scores, seed=5) == mean_interval(list(scores), seed=5)
    assert mean_interval(scores, seed=5) != mean_interval(sorted(scores), seed=5)


def test_mean_interval_contains_the_mean_and_narrows_with_more_data():
    small_scores, large_scores = _normal(5, 20, seed=2), _normal(5, 500, seed=2)
    small, large = mean_interval(small_scores), mean_interval(large_scores)
    assert small.low < np.mean(small_scores) < small.high
    assert large.low < np.mean(large_scores) < large.high
    assert _width(large) < _width(small) / 3


def test_mean_interval_is_scipys_bca_interval_for_the_seed():
    skewed = list(np.random.default_rng(21).exponential(1.0, 40))  # BCa and percentile intervals differ here
    expected = stats.bootstrap((skewed,), np.mean, n_resamples=N_RESAMPLES, method="BCa", rng=5).confidence_interval
    interval = mean_interval(skewed, seed=5)
    assert (interval.low, interval.high) == pytest.approx((expected.low, expected.high))
    percentile = stats.bootstrap((skewed,), np.mean, n_resamples=N_RESAMPLES, method="percentile", rng=5)
    assert interval.low != pytest.approx(percentile.confidence_interval.low, rel=1e-3)


def test_large_samples_get_the_subsampled_percentile_interval_which_agrees_with_bca_there():
    skewed = np.random.default_rng(22).exponential(1.0, BCA_MAX_SAMPLE + 1)
    options = dict(n_resamples=N_RESAMPLES, rng=5)
    interval = mean_interval(list(skewed), seed=5)
    # Monte-Carlo error of each end with N_RESAMPLES resamples is about 2 % of the width; 5 % allows for two estimates.
    bca = stats.bootstrap((skewed,), np.mean, method="BCa", **options).confidence_interval
    assert interval.low == pytest.approx(bca.low, abs=0.05 * (bca.high - bca.low))
    assert interval.high == pytest.approx(bca.high, abs=0.05 * (bca.high - bca.low))
    at_limit = list(skewed[:BCA_MAX_SAMPLE])
    bca_at_limit = stats.bootstrap((at_limit,), np.mean, method="BCa", **options).confidence_interval
    assert mean_interval(at_limit, seed=5).low == pytest.approx(bca_at_limit.low)


@pytest.mark.parametrize("size", [BOOTSTRAP_MAX_SAMPLE + 1, 10 * BOOTSTRAP_MAX_SAMPLE])
def test_m_out_of_n_intervals_agree_with_the_full_bootstrap_within_monte_carlo_error(size):
    # Skewed scores, where resampling fewer than n could matter most; the full bootstrap's own interval is the reference.
    a = np.random.default_rng(31).exponential(1.0, size)
    b = np.random.default_rng(32).exponential(1.0, size // 2) + 0.05
    full = dict(n_resamples=N_RESAMPLES, method="percentile", rng=7, batch=256)
    one = stats.bootstrap((a,), np.mean, **full).confidence_interval
    two = stats.bootstrap((a, b), lambda x, y, axis=-1: y.mean(axis) - x.mean(axis), **full).confidence_interval
    # Each end's Monte-Carlo standard error is about 0.06 bootstrap standard errors (0.015 of the 95 % width) per
    # estimate; 0.1 of the width is over 4 of those for the difference of two estimates, and far under the factor
    # sqrt(n/m) an unscaled m-out-of-n interval would be off by.
    for ours, reference in ((mean_interval(list(a), seed=3), one), (compare(a, b, seed=3).difference_interval, two)):
        width = reference.high - reference.low
        assert ours.low == pytest.approx(reference.low, abs=0.1 * width)
        assert ours.high == pytest.approx(reference.high, abs=0.1 * width)
        assert ours.high - ours.low == pytest.approx(width, rel=0.1)


def test_paired_differences_above_the_limit_get_the_m_out_of_n_interval_too():
    rng = np.random.default_rng(40)
    before = rng.normal(5, 1, 4 * BOOTSTRAP_MAX_SAMPLE)
    pairs = list(zip(before, before + 0.1 + rng.normal(0, 0.5, before.size), strict=True))
    paired = compare(before[:10], before[:10] + 1, pairs, seed=1).paired
    standard_error = 0.5 / np.sqrt(before.size)
    assert paired.difference_interval.high - paired.difference_interval.low == pytest.approx(
        2 * 1.96 * standard_error, rel=0.1
    )
    assert paired.difference_interval.low < paired.mean_difference < paired.difference_interval.high


def test_constant_data_gives_zero_width_intervals_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        interval = mean_interval([0.1] * 30)
        comparison = compare([2.0] * 10, [3.5] * 12, pairs=[(2.0, 3.5)] * 10)
    assert interval.low == interval.high == pytest.approx(0.1)  # floating-point sums of 0.1 are not exact
    assert comparison.difference_interval == Interval(1.5, 1.5)
    assert comparison.mann_whitney_p < 1e-3
    assert comparison.effect_size == 1.0
    assert comparison.paired.difference_interval == Interval(1.5, 1.5)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unchanged = compare([2.0] * 10, [2.0] * 10, pairs=[(2.0, 2.0)] * 10)
    assert unchanged.mann_whitney_p == 1.0 and unchanged.effect_size == 0.0
    assert unchanged.difference_interval == Interval(0.0, 0.0)
    assert (unchanged.paired.wilcoxon_p, unchanged.paired.share_b_better) == (1.0, 0.5)


def test_clearly_separated_samples_are_told_apart():
    comparison = compare(_normal(0, 200, seed=3), _normal(2, 200, seed=4))
    assert comparison.mann_whitney_p < 1e-10
    # For normal(0, 1) against normal(2, 1), P(B > A) = Φ(2/√2), so Cliff's delta is 2Φ(√2) - 1 ≈ 0.843.
    assert comparison.effect_size == pytest.approx(2 * stats.norm.cdf(math.sqrt(2)) - 1, abs=0.05)
    assert comparison.mean_difference == pytest.approx(2, abs=0.25)
    assert 0 < comparison.difference_interval.low < 2 < comparison.difference_interval.high
    assert comparison.too_few is None and comparison.paired is None and comparison.adjusted_p is None


def test_identical_distributions_are_not_told_apart():
    comparison = compare(_normal(0, 200, seed=20), _normal(0, 200, seed=120))
    assert comparison.mann_whitney_p > 0.05
    assert abs(comparison.effect_size) < 0.1
    assert comparison.difference_interval.low < 0 < comparison.difference_interval.high


def test_mann_whitney_matches_the_exact_count_and_scipy_on_small_examples():
    separated = compare([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    # Exact two-sided test: of the C(10, 5) = 252 equally likely splits, 2 are this extreme.
    assert separated.mann_whitney_p == pytest.approx(2 / 252)
    assert separated.effect_size == 1.0
    assert compare([6, 7, 8, 9, 10], [1, 2, 3, 4, 5]).effect_size == -1.0

    a, b = [1, 2, 3, 4, 5], [3, 4, 5, 6, 7]
    overlapping = compare(a, b)
    assert overlapping.mann_whitney_p == pytest.approx(stats.mannwhitneyu(a, b).pvalue)
    cliffs_delta = np.mean([np.sign(y - x) for x in a for y in b])
    assert overlapping.effect_size == pytest.approx(cliffs_delta)
    assert overlapping.effect_size == pytest.approx((19 - 3) / 25)  # B wins 19 of 25 pairs, ties 3, loses 3


def test_a_constant_improvement_on_every_pair_is_paired_evidence():
    a = _normal(5, 20, seed=7)
    pairs = [(x, x + 1) for x in a]
    paired = compare(a, [x + 1 for x in a], pairs).paired
    assert paired.pairs == 20
    assert paired.mean_difference == pytest.approx(1.0)
    assert paired.share_b_better == 1.0
    assert paired.wilcoxon_p < 1e-4
    assert (paired.difference_interval.low, paired.difference_interval.high) == pytest.approx((1.0, 1.0))


def test_paired_ties_count_half_and_too_few_pairs_give_no_paired_comparison():
    differences = [1.0, 0.0, -1.0, 2.0, 0.0, 3.0]
    pairs = [(10.0, 10.0 + d) for d in differences]
    paired = compare([10.0] * 6, [10.0 + d for d in differences], pairs).paired
    assert paired.share_b_better == pytest.approx((3 + 2 / 2) / 6)
    assert paired.wilcoxon_p == pytest.approx(stats.wilcoxon(differences, zero_method="zsplit").pvalue)

    a, b = list(range(10)), list(range(1, 11))
    assert compare(a, b, list(zip(a, b))[: MIN_PAIRS - 1]).paired is None
    assert compare(a, b, list(zip(a, b))[:MIN_PAIRS]).paired.pairs == MIN_PAIRS


def test_too_few_samples_give_a_sentence_and_no_tests():
    comparison = compare([1, 2, 3], list(range(10)))
    assert comparison.too_few is not None
    assert "A has 3" in comparison.too_few and str(MIN_SAMPLES) in comparison.too_few
    assert comparison.mean_difference == pytest.approx(4.5 - 2)
    assert comparison.difference_interval is None
    assert comparison.mann_whitney_p is None and comparison.effect_size is None
    with pytest.raises(ValueError, match="empty"):
        compare([], [1, 2, 3])


def _holm_by_hand(p: dict[str, float]) -> dict[str, float]:
    """Holm for three p-values, written out: 3·p(1), then max(previous, 2·p(2)), then max(previous, p(3))."""
    (first, p1), (second, p2), (third, p3) = sorted(p.items(), key=lambda item: item[1])
    h1 = min(1.0, 3 * p1)
    h2 = min(1.0, max(h1, 2 * p2))
    h3 = min(1.0, max(h2, p3))
    return {first: h1, second: h2, third: h3}


def test_family_p_values_are_holm_adjusted_using_paired_p_where_there_are_pairs():
    baseline = _normal(0, 40, seed=8)
    others = {
        "small": _normal(0.2, 40, seed=9),
        "medium": _normal(0.55, 40, seed=10),
        "paired": [x + 0.15 + 0.3 * noise for x, noise in zip(baseline, _normal(0, 40, seed=11))],
    }
    family = compare_family(baseline, others, {"paired": list(zip(baseline, others["paired"]))})
    raw = {name: (c.paired.wilcoxon_p if c.paired else c.mann_whitney_p) for name, c in family.items()}
    assert family["paired"].paired is not None and family["small"].paired is None
    paired = family["paired"]
    assert paired.paired.wilcoxon_p < paired.mann_whitney_p / 100  # so using the wrong p would show
    expected = _holm_by_hand(raw)
    for name, comparison in family.items():
        assert comparison.adjusted_p == pytest.approx(expected[name])
        assert comparison.adjusted_p >= raw[name]
    assert min(raw.values()) > 0.001 and max(expected.values()) < 1  # neither negligible nor capped


def test_holm_keeps_adjusted_p_values_in_the_order_of_the_raw_ones():
    rng = np.random.default_rng(30)
    baseline, better = list(rng.normal(0, 1, 30)), sorted(rng.normal(0.7, 1, 30))
    slightly_less = [*better[:-1], better[-1] - 2.5]  # its best score moved down: a slightly larger p
    family = compare_family(
        baseline, {"better": better, "slightly_less": slightly_less, "same": list(rng.normal(0.1, 1, 30))}
    )
    p_better, p_less = family["better"].mann_whitney_p, family["slightly_less"].mann_whitney_p
    assert p_better < p_less < 1.5 * p_better  # so 2·p(2) < 3·p(1): the step-down maximum decides
    assert family["better"].adjusted_p == pytest.approx(3 * p_better)
    assert family["slightly_less"].adjusted_p == pytest.approx(3 * p_better)
    assert family["same"].adjusted_p == pytest.approx(family["same"].mann_whitney_p)


def test_family_benjamini_hochberg_and_versions_with_too_few_scores_left_out():
    baseline = _normal(0, 30, seed=12)
    others = {
        "a": _normal(0.4, 30, seed=13),
        "b": _normal(0.8, 30, seed=14),
        "c": _normal(0, 30, seed=15),
        "tiny": [1.0, 2.0],
    }
    family = compare_family(baseline, others, method="bh")
    assert family["tiny"].adjusted_p is None
    p = {name: family[name].mann_whitney_p for name in "abc"}
    (n1, p1), (n2, p2), (n3, p3) = sorted(p.items(), key=lambda item: item[1])
    b3 = p3  # BH: the k-th smallest p times m/k, made non-decreasing from the largest down
    b2 = min(b3, p2 * 3 / 2)
    b1 = min(b2, p1 * 3)
    assert [family[n].adjusted_p for n in (n1, n2, n3)] == pytest.approx([b1, b2, b3])

    holm = compare_family(baseline, others)
    assert holm["tiny"].adjusted_p is None
    assert holm[n1].adjusted_p == pytest.approx(min(1.0, 3 * p1))  # m = 3 tested comparisons, not 4
    unchanged = compare_family(baseline, {"copy": baseline, "another copy": baseline})
    assert [c.adjusted_p for c in unchanged.values()] == [1.0, 1.0]  # 2 · p = 2 is capped at 1
    with pytest.raises(ValueError, match="unknown adjustment method"):
        compare_family(baseline, others, method="bonferroni")


def test_results_are_reproducible_with_the_same_seed():
    a, b = _normal(0, 60, seed=16), _normal(0.5, 60, seed=17)
    pairs = list(zip(a, b))
    assert compare(a, b, pairs, seed=3) == compare(a, b, pairs, seed=3)
    assert mean_interval(a, seed=3) == mean_interval(a, seed=3)
    assert compare(a, b, pairs, seed=3).difference_interval != compare(a, b, pairs, seed=4).difference_interval
    assert compare_family(a, {"b": b}, seed=3) == compare_family(a, {"b": b}, seed=3)


def test_kept_resamples_give_the_same_intervals_and_keep_the_two_samples_independent():
    from aesq.analysis import statistics

    a = np.random.default_rng(50).normal(5, 1, 2 * BOOTSTRAP_MAX_SAMPLE)
    b = np.random.default_rng(51).normal(5, 1, 3 * BOOTSTRAP_MAX_SAMPLE)
    statistics._DEVIATIONS.clear()
    cold = compare(a, b, seed=2).difference_interval
    assert compare(a, b, seed=2).difference_interval == cold  # from the kept resamples
    statistics._DEVIATIONS.clear()
    assert compare(a, b, seed=2).difference_interval == cold
    # A version against itself is still two independent samples: the interval has the width of their difference.
    itself = compare(a, a, seed=2).difference_interval
    assert itself.high - itself.low == pytest.approx(2 * 1.96 * np.sqrt(2 / a.size), rel=0.1)
