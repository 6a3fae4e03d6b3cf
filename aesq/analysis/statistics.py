"""Statistics of score distributions, so a model version is called better or worse only with evidence."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import ArrayLike

# Below 5 scores a bootstrap has at most 35 distinct resamples and a two-sided Mann–Whitney test of
# 4 against 4 cannot go below p = 0.029; from 5 on it can reach p < 0.01 (2/252).
MIN_SAMPLES = 5
# A two-sided Wilcoxon signed-rank test cannot reach p < 0.05 with 5 pairs (its smallest p is
# 2/32 = 0.0625); 6 pairs is the fewest with which it can (2/64 = 0.031).
MIN_PAIRS = 6
CONFIDENCE_LEVEL = 0.95
N_RESAMPLES = 2000
# Resamples evaluated at once: bounds memory to about BOOTSTRAP_BATCH x (number of scores) floats.
BOOTSTRAP_BATCH = 256
ADJUSTMENT_METHODS = ("holm", "bh")
# BCa's acceleration comes from a jackknife that costs O(n²) per sample (0.26 s for two samples of
# 5,000). Above this size the percentile interval is used instead: for a mean of that many scores the
# two agree to within a few per cent of the interval's width, about the bootstrap's own Monte-Carlo
# error with N_RESAMPLES (measured on exponential scores: 1.5–3 % at 2,000, 0.3 % at 5,000).
BCA_MAX_SAMPLE = 2000
# Largest resample drawn for the interval of a mean (or of a difference of means): a larger sample is resampled m out of
# n (see subsampled_mean_interval), so an interval costs the same at any version size. At or below it the interval is
# scipy's full bootstrap, unchanged.
BOOTSTRAP_MAX_SAMPLE = BCA_MAX_SAMPLE
# Resampled deviations kept for samples above BOOTSTRAP_MAX_SAMPLE (N_RESAMPLES floats each, 16 KB): 1,024 is 16 MB.
DEVIATIONS_KEPT = 1024
_DEVIATIONS: OrderedDict[tuple, np.ndarray] = OrderedDict()
_deviations_lock = threading.Lock()
# Relative spread below which a sample counts as constant: far under any score's precision, far over
# float64 rounding (x + 1 - x differs from 1 by about 1e-16).
CONSTANT_SPREAD = 1e-9


@dataclass(frozen=True)
class Interval:
    """A bootstrap 95 % confidence interval."""

    low: float
    high: float


@dataclass(frozen=True)
class PairedComparison:
    """B against A on the same prompt and seed: differences are B minus A."""

    pairs: int
    mean_difference: float
    difference_interval: Interval
    wilcoxon_p: float
    share_b_better: float


@dataclass(frozen=True)
class Comparison:
    """B against A: unpaired, and paired on matching prompts when there are enough pairs."""

    count_a: int
    count_b: int
    mean_difference: float
    difference_interval: Interval | None
    mann_whitney_p: float | None
    effect_size: float | None
    paired: PairedComparison | None
    too_few: str | None
    adjusted_p: float | None = None


def _scores(values: ArrayLike) -> np.ndarray:
    """The values as a float array; ValueError unless every one is finite."""
    array = np.asarray(values, dtype=float)
    if not np.isfinite(array).all():
        raise ValueError("scores must be finite numbers (no NaN or infinity)")
    return array


def _mean(sample: np.ndarray, axis: int = -1) -> np.ndarray:
    """The mean along an axis, in the form scipy.stats.bootstrap vectorises."""
    return np.mean(sample, axis=axis)


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """mean(b) - mean(a) along an axis, in the form scipy.stats.bootstrap vectorises."""
    return np.mean(b, axis=axis) - np.mean(a, axis=axis)


def bootstrap_interval(
    samples: tuple[np.ndarray, ...],
    statistic: Callable[..., np.ndarray | float],
    seed: int,
    *,
    paired: bool = False,
    vectorized: bool = True,
    n_resamples: int = N_RESAMPLES,
    method: str | None = None,
) -> Interval:
    """aesq's one bootstrap: the 95 % interval of the statistic, BCa unless `method` says otherwise; percentile where
    a sample is larger than BCA_MAX_SAMPLE or every sample is constant up to rounding (BCa's acceleration is then
    0/0; it is defined once one varies). The same samples, in the same order, and seed give the same interval."""
    from scipy import stats  # imported when used: commands that only read figures start without scipy

    if method is None:
        large = max(sample.size for sample in samples) > BCA_MAX_SAMPLE
        constant = all(np.ptp(sample) <= CONSTANT_SPREAD * max(1.0, float(np.abs(sample).max())) for sample in samples)
        method = "percentile" if large or constant else "BCa"
    interval = stats.bootstrap(
        samples,
        statistic=statistic,
        n_resamples=n_resamples,
        batch=BOOTSTRAP_BATCH if vectorized else None,
        vectorized=vectorized,
        paired=paired,
        confidence_level=CONFIDENCE_LEVEL,
        method=method,
        rng=seed,
    ).confidence_interval
    return Interval(float(interval.low), float(interval.high))


def subsampled_mean_interval(samples: tuple[np.ndarray, ...], seed: int) -> Interval:
    """The percentile 95 % interval of one sample's mean, or of mean(second) - mean(first) of two independent samples,
    by the m-out-of-n bootstrap: each resample draws m = min(n, BOOTSTRAP_MAX_SAMPLE) scores with replacement and its
    mean's deviation from the sample mean is shrunk by sqrt(m/n).

    Why it is valid for a mean: the bootstrap of a mean is consistent, so sqrt(m)·(mean of m draws - sample mean)
    has, for large m, the distribution of sqrt(n)·(sample mean - true mean); the rescaled deviations therefore have
    the spread of the full bootstrap's. What m < n loses is only the skewness term of order 1/sqrt(m) (about 0.02
    standard errors at each end for exponential scores at m = 2,000), well under the Monte-Carlo error of
    N_RESAMPLES. Cost and memory are O(N_RESAMPLES x m), whatever n is.
    """
    deviations = np.zeros(N_RESAMPLES)
    for position, (sign, sample) in enumerate(zip((1.0,) if len(samples) == 1 else (-1.0, 1.0), samples, strict=True)):
        deviations += sign * _mean_deviations(sample, seed, position)
    estimate = float(np.mean(samples[0])) if len(samples) == 1 else float(np.mean(samples[1]) - np.mean(samples[0]))
    tail = (1 - CONFIDENCE_LEVEL) / 2
    low, high = np.quantile(deviations, [tail, 1 - tail])
    return Interval(estimate + float(low), estimate + float(high))


def _mean_deviations(sample: np.ndarray, seed: int, position: int) -> np.ndarray:
    """The N_RESAMPLES rescaled deviations of one sample's m-out-of-n resample means, drawn from a stream of their own
    (seed, position in the samples), so the two samples stay independent and a sample's draws depend on it alone:
    a version compared with many others is resampled once (kept by its bytes, 16 KB each, DEVIATIONS_KEPT of them)."""
    key = (hashlib.blake2b(sample.tobytes(), digest_size=16).digest(), sample.size, seed, position)
    with _deviations_lock:
        if key in _DEVIATIONS:
            _DEVIATIONS.move_to_end(key)
            return _DEVIATIONS[key]
    rng = np.random.default_rng([seed, position])
    size, drawn = sample.size, min(sample.size, BOOTSTRAP_MAX_SAMPLE)
    centre = float(np.mean(sample))
    deviations = np.empty(N_RESAMPLES)
    for start in range(0, N_RESAMPLES, BOOTSTRAP_BATCH):
        stop = min(start + BOOTSTRAP_BATCH, N_RESAMPLES)
        means = sample[rng.integers(0, size, (stop - start, drawn))].mean(axis=1)
        deviations[start:stop] = (means - centre) * (drawn / size) ** 0.5
    deviations.flags.writeable = False
    with _deviations_lock:
        _DEVIATIONS[key] = deviations
        while len(_DEVIATIONS) > DEVIATIONS_KEPT:
            _DEVIATIONS.popitem(last=False)
    return deviations


def _interval_of_means(samples: tuple[np.ndarray, ...], seed: int) -> Interval:
    """The 95 % interval of one sample's mean or of a difference of two samples' means: aesq's one bootstrap up to
    BOOTSTRAP_MAX_SAMPLE scores per sample, the m-out-of-n bootstrap above (its cost does not grow with n)."""
    if max(sample.size for sample in samples) <= BOOTSTRAP_MAX_SAMPLE:
        return bootstrap_interval(samples, _mean if len(samples) == 1 else _mean_difference, seed)
    return subsampled_mean_interval(samples, seed)


def mean_interval(scores: Sequence[float], *, seed: int = 0) -> Interval | None:
    """The bootstrap 95 % interval of one version's mean score, as stored with its figures.

    Args:
        scores: the scores, all finite, in a fixed order (the aggregate reads them by asset id): the resamples
            draw positions, so the same scores in another order give another (equally valid) interval.
        seed: seeds the bootstrap, so the same scores, order and seed give the same interval.

    Returns:
        A BCa (percentile above BCA_MAX_SAMPLE scores, m-out-of-n above BOOTSTRAP_MAX_SAMPLE) bootstrap 95 % interval
        of the mean; None below MIN_SAMPLES.

    Raises:
        ValueError: when a score is not finite.
    """
    values = _scores(scores)
    return _interval_of_means((values,), seed) if values.size >= MIN_SAMPLES else None


def _compare_pairs(pairs: Sequence[tuple[float, float]], seed: int) -> PairedComparison | None:
    """Paired statistics of B minus A; None below MIN_PAIRS pairs."""
    from scipy import stats  # imported when used: commands that only read figures start without scipy

    scores = _scores(pairs).reshape(len(pairs), 2)
    if len(scores) < MIN_PAIRS:
        return None
    differences = scores[:, 1] - scores[:, 0]
    # zsplit: a tie (zero difference) counts half for each side, as in share_b_better, and keeps the
    # test defined (p = 1) when every pair is tied.
    wilcoxon = stats.wilcoxon(scores[:, 1], scores[:, 0], zero_method="zsplit")
    return PairedComparison(
        pairs=len(scores),
        mean_difference=float(np.mean(differences)),
        difference_interval=_interval_of_means((differences,), seed),
        wilcoxon_p=float(wilcoxon.pvalue),
        share_b_better=float(np.mean(differences > 0) + 0.5 * np.mean(differences == 0)),
    )


def compare(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    pairs: Sequence[tuple[float, float]] = (),
    *,
    seed: int = 0,
) -> Comparison:
    """Compare version B's scores with version A's.

    Args:
        a: the scores of version A (the reference), at least one.
        b: the scores of version B, at least one.
        pairs: (score under A, score under B) for images of the same prompt and seed.
        seed: seeds the bootstraps, so the same inputs and seed give the same intervals.

    Returns:
        The difference of means mean(B) - mean(A) with a two-sample (independent) BCa (percentile
        above BCA_MAX_SAMPLE scores, m-out-of-n above BOOTSTRAP_MAX_SAMPLE) bootstrap 95 % interval, the
        two-sided Mann–Whitney U p-value and, as effect size, the rank-biserial correlation 2·U_B/(n_A·n_B) - 1 (equal to Cliff's delta:
        P(B > A) - P(B < A), in [-1, 1], positive when B scores higher). Below MIN_SAMPLES scores on
        either side these are None and `too_few` says why. `paired` holds the paired statistics when there are at least MIN_PAIRS
        pairs (it depends only on `pairs`), else None. `adjusted_p` is left None; see compare_family.

    Raises:
        ValueError: when a or b is empty, or a score is not finite.
    """
    from scipy import stats  # imported when used: commands that only read figures start without scipy

    scores_a, scores_b = _scores(a), _scores(b)
    if scores_a.size == 0 or scores_b.size == 0:
        raise ValueError(f"cannot compare an empty set of scores (A has {scores_a.size}, B has {scores_b.size})")
    mean_difference = float(_mean_difference(scores_a, scores_b))
    if min(scores_a.size, scores_b.size) < MIN_SAMPLES:
        too_few = (
            f"Too few scores to compare: A has {scores_a.size} and B has {scores_b.size}, "
            f"but each needs at least {MIN_SAMPLES}."
        )
        return Comparison(
            count_a=scores_a.size,
            count_b=scores_b.size,
            mean_difference=mean_difference,
            difference_interval=None,
            mann_whitney_p=None,
            effect_size=None,
            paired=_compare_pairs(pairs, seed),
            too_few=too_few,
        )
    # numpy releases the GIL while it resamples, so the paired bootstrap runs on another core meanwhile.
    with ThreadPoolExecutor(1) as pool:
        paired = pool.submit(_compare_pairs, pairs, seed)
        difference_interval = _interval_of_means((scores_a, scores_b), seed)
        mann_whitney = stats.mannwhitneyu(scores_b, scores_a, alternative="two-sided")  # U counts B above A
        return Comparison(
            count_a=scores_a.size,
            count_b=scores_b.size,
            mean_difference=mean_difference,
            difference_interval=difference_interval,
            mann_whitney_p=float(mann_whitney.pvalue),
            effect_size=float(2 * mann_whitney.statistic / (scores_a.size * scores_b.size) - 1),
            paired=paired.result(),
            too_few=None,
        )


def _holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment: the k-th smallest p times (m - k + 1), kept non-decreasing, capped at 1."""
    order = np.argsort(p_values)
    stepped = np.maximum.accumulate(p_values[order] * np.arange(len(p_values), 0, -1))
    adjusted = np.empty_like(p_values)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def _tested_p(comparison: Comparison) -> float | None:
    """The p-value that enters the family: paired Wilcoxon when there are pairs, else Mann–Whitney."""
    return comparison.paired.wilcoxon_p if comparison.paired is not None else comparison.mann_whitney_p


def compare_family(
    baseline: Sequence[float] | np.ndarray,
    others: Mapping[str, Sequence[float] | np.ndarray],
    pairs: Mapping[str, Sequence[tuple[float, float]]] | None = None,
    *,
    method: str = "holm",
    seed: int = 0,
) -> dict[str, Comparison]:
    """Compare every other version with the baseline, adjusting p-values for the number of comparisons.

    Args:
        baseline: the baseline version's scores (version A in every comparison).
        others: scores of each other version (version B), by name.
        pairs: for a name, (baseline score, its score) on the same prompt and seed; missing names have none.
        method: "holm" (Holm–Bonferroni, controls the family-wise error rate) or "bh"
            (Benjamini–Hochberg via scipy.stats.false_discovery_control, controls the false discovery rate).
        seed: seeds the bootstraps.

    Returns:
        The comparison of each name, as `compare` gives it, with `adjusted_p` set: the adjusted paired
        Wilcoxon p where `paired` is present, else the adjusted Mann–Whitney p. The family is the
        comparisons that have a p-value; the others (too few scores, no pairs) keep adjusted_p None.

    Raises:
        ValueError: for an unknown method, or what `compare` raises.
    """
    from scipy import stats  # imported when used: commands that only read figures start without scipy

    if method not in ADJUSTMENT_METHODS:
        raise ValueError(f"unknown adjustment method {method!r}; use one of {', '.join(ADJUSTMENT_METHODS)}")
    pairs = pairs or {}
    comparisons = {name: compare(baseline, scores, pairs.get(name, ()), seed=seed) for name, scores in others.items()}
    tested = {name: p for name, comparison in comparisons.items() if (p := _tested_p(comparison)) is not None}
    raw = np.array(list(tested.values()))
    adjusted = _holm(raw) if method == "holm" else stats.false_discovery_control(raw, method="bh")
    for name, adjusted_p in zip(tested, adjusted, strict=True):
        comparisons[name] = replace(comparisons[name], adjusted_p=float(adjusted_p))
    return comparisons
