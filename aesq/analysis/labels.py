"""Benchmarks against human labels (ERIA-1K-style sets): read the label file, fetch scores, compute agreement.

A set is a folder holding `test.json` (or `test/test.json`): a JSON list of
`{"image": path relative to the folder, "gt_score": number, "category": optional text}`.
Agreement is Spearman's (SRCC) and Pearson's (PLCC) correlation with percentile-bootstrap 95 %
intervals (paired resampling); the bias audit maps predictions to the human scale with a least-squares
line and reports, per category, the mean of (fitted prediction - human score).

A labelled set is scored in the labels namespace (aesq/core/namespaces.py, which says why a database of its
own): the held-out images never reach production data, and the scores compared here are read from there.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats
from sqlalchemy import bindparam, text

from aesq.analysis.statistics import bootstrap_interval
from aesq.core.config import Settings
from aesq.core.database import get_engine
from aesq.core.namespaces import namespace_settings
from aesq.core.pipeline_status import Failure

LABEL_FILES = ("test.json", "test/test.json")
MIN_SAMPLES = 3
NO_CATEGORY = "(none)"


class LabelError(ValueError):
    """A label file that cannot be used; the message says which entries are wrong and why."""


@dataclass(frozen=True)
class Label:
    """One labelled image: its path below the set folder, the human score and an optional category."""

    image: str
    gt_score: float
    category: str | None


@dataclass(frozen=True)
class Pair:
    """A labelled image's predicted and human scores."""

    predicted: float
    human: float
    category: str | None


@dataclass(frozen=True)
class Estimate:
    """A statistic with its bootstrap 95 % interval; None where it is undefined."""

    value: float | None
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class CategoryRow:
    """Agreement and bias of one category; None where it has too few samples or is constant."""

    category: str
    count: int
    srcc: float | None
    bias: float | None


@dataclass(frozen=True)
class LabelReport:
    """Agreement of predicted with human scores over a labelled set."""

    count: int
    srcc: Estimate
    plcc: Estimate
    slope: float | None
    intercept: float | None
    categories: list[CategoryRow]
    notes: list[str]


def label_file(folder: Path) -> Path:
    """The set's label file: `test.json`, else `test/test.json`."""
    for name in LABEL_FILES:
        if (folder / name).is_file():
            return folder / name
    raise LabelError(f"{folder}: no label file ({' or '.join(LABEL_FILES)})")


def _problem(entry: object, root: Path) -> str | None:
    """Why one label entry is unusable, or None."""
    if not isinstance(entry, dict):
        return "not an object"
    missing = [field for field in ("image", "gt_score") if field not in entry]
    if missing:
        return f"missing {', '.join(missing)}"
    image, score, category = entry["image"], entry["gt_score"], entry.get("category")
    if not isinstance(image, str) or not image:
        return "image is not a path"
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        return f"gt_score {score!r} is not a finite number"
    if category is not None and not isinstance(category, str):
        return f"category {category!r} is not text"
    path = (root / image).resolve()
    if not path.is_relative_to(root):
        return f"image {image!r} is outside {root}"
    if not path.is_file():
        return f"image {image!r} does not exist"
    return None


def read_labels(folder: Path) -> list[Label]:
    """The validated labels of the set in `folder`; LabelError lists every bad entry."""
    root = folder.resolve()
    path = label_file(root)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LabelError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(entries, list):
        raise LabelError(f"{path}: expected a JSON list of labels, got {type(entries).__name__}")
    if not entries:
        raise LabelError(f"{path}: no labels")
    problems = [
        f"entry {index}: {problem}" for index, entry in enumerate(entries) if (problem := _problem(entry, root))
    ]
    if problems:
        raise LabelError(f"{path}: {len(problems)} bad entries: " + "; ".join(problems))
    labels = [
        Label(Path(entry["image"]).as_posix(), float(entry["gt_score"]), entry.get("category")) for entry in entries
    ]
    first: dict[str, int] = {}
    for index, label in enumerate(labels):
        first.setdefault(label.image, index)
    repeats = [
        f"entry {index}: image {label.image!r} repeats entry {first[label.image]}"
        for index, label in enumerate(labels)
        if first[label.image] != index
    ]
    if repeats:
        raise LabelError(f"{path}: {len(repeats)} bad entries: " + "; ".join(repeats))
    return labels


def labelled_pairs(
    settings: Settings, folder: Path, labels: Sequence[Label], scorer: str
) -> tuple[list[Pair], list[Failure]]:
    """Each label with its image's latest `scorer` score in the labels namespace (selected from production's
    `settings`, so production is never read by mistake), and the labelled images that have none, with why."""
    query = text(
        """
        SELECT a.key, a.status, a.error, ls.value
        FROM assets a
        LEFT JOIN latest_scores ls ON ls.asset_id = COALESCE(a.duplicate_of, a.id) AND ls.scorer = :scorer
        WHERE a.storage = 'file' AND a.bucket = :bucket AND a.key IN :keys
        """
    ).bindparams(bindparam("keys", expanding=True))
    params = {"scorer": scorer, "bucket": str(folder.resolve()), "keys": [label.image for label in labels]}
    with get_engine(namespace_settings(settings, "labels")).connect() as connection:
        rows = {row.key: row for row in connection.execute(query, params)}
    pairs, excluded = [], []
    for label in labels:
        row = rows.get(label.image)
        if row is None:
            excluded.append(Failure(label.image, "not ingested"))
        elif row.status == "failed":  # before its score: a failed keeper still holds its content's scores
            excluded.append(Failure(label.image, row.error or "failed"))
        elif row.value is not None:
            pairs.append(Pair(float(row.value), label.gt_score, label.category))
        elif row.status == "pending":
            excluded.append(Failure(label.image, "not scored yet"))
        else:
            excluded.append(Failure(label.image, f"no {scorer} score (its image could not be read again to add it)"))
    return pairs, excluded


def _finite(value: float) -> float | None:
    """The value, or None for NaN and infinities."""
    return float(value) if math.isfinite(value) else None


def _srcc(predicted: np.ndarray, human: np.ndarray) -> float:
    """Spearman's rank correlation."""
    return stats.spearmanr(predicted, human).statistic


def _plcc(predicted: np.ndarray, human: np.ndarray) -> float:
    """Pearson's linear correlation."""
    return stats.pearsonr(predicted, human).statistic


def _estimate(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    predicted: np.ndarray,
    human: np.ndarray,
    n_resamples: int,
    seed: int,
) -> Estimate:
    """The statistic with a paired percentile-bootstrap 95 % interval (None where undefined)."""
    value = _finite(statistic(predicted, human))
    if value is None:
        return Estimate(None)
    interval = bootstrap_interval(
        (predicted, human), statistic, seed, paired=True, vectorized=False, n_resamples=n_resamples, method="percentile"
    )
    return Estimate(value, _finite(interval.low), _finite(interval.high))


def label_report(pairs: Sequence[Pair], n_resamples: int = 2000, seed: int = 0) -> LabelReport:
    """SRCC and PLCC with bootstrap intervals, the linear fit to the human scale, and per-category bias."""
    notes: list[str] = []
    predicted = np.array([pair.predicted for pair in pairs], dtype=float)
    human = np.array([pair.human for pair in pairs], dtype=float)
    if len(pairs) < MIN_SAMPLES:
        notes.append(f"only {len(pairs)} scored labelled images: correlations need at least {MIN_SAMPLES}")
        return LabelReport(len(pairs), Estimate(None), Estimate(None), None, None, [], notes)
    if np.ptp(predicted) == 0 or np.ptp(human) == 0:
        notes.append("predicted or human scores are all equal: correlations are undefined")
        return LabelReport(len(pairs), Estimate(None), Estimate(None), None, None, [], notes)
    with warnings.catch_warnings():  # constant resamples and categories are reported as "—", not warned about
        warnings.simplefilter("ignore")
        srcc = _estimate(_srcc, predicted, human, n_resamples, seed)
        plcc = _estimate(_plcc, predicted, human, n_resamples, seed)
        fit = stats.linregress(predicted, human)
        residual = fit.slope * predicted + fit.intercept - human
        categories = []
        names = sorted({pair.category or NO_CATEGORY for pair in pairs})
        for name in names:
            members = np.array([(pair.category or NO_CATEGORY) == name for pair in pairs])
            count = int(members.sum())
            if count < MIN_SAMPLES:
                categories.append(CategoryRow(name, count, None, None))
                continue
            srcc_in = _finite(_srcc(predicted[members], human[members]))
            categories.append(CategoryRow(name, count, srcc_in, float(residual[members].mean())))
    if srcc.value is not None and (srcc.low is None or plcc.low is None):
        notes.append("some bootstrap intervals are undefined: too few distinct samples to resample")
    small = [row.category for row in categories if row.count < MIN_SAMPLES]
    if small:
        notes.append(f"fewer than {MIN_SAMPLES} images, no statistics: {', '.join(small)}")
    constant = [row.category for row in categories if row.count >= MIN_SAMPLES and row.srcc is None]
    if constant:
        notes.append(f"SRCC undefined (all predicted or all human scores equal): {', '.join(constant)}")
    return LabelReport(len(pairs), srcc, plcc, float(fit.slope), float(fit.intercept), categories, notes)
