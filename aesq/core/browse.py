"""What the dashboard and the JSON API read: the leaderboard under filters, assets page by page, one asset
in full, paired assets of two versions, daily means and reports. Read-only; every value is a bound parameter."""

from __future__ import annotations

import heapq
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import date

import numpy as np
from sqlalchemy import text

from aesq.analysis.statistics import Comparison, compare_family
from aesq.core.config import Settings
from aesq.core.database import database_url, get_engine
from aesq.core.queries import VersionScores, nearest_assets, version_comparison, version_scores
from aesq.core.tables import EMBEDDING_DIMENSIONS, SOURCE_KINDS

ASSET_ORDERS = {
    "score_desc": "value DESC NULLS LAST, a.id",
    "score_asc": "value ASC NULLS LAST, a.id",
    "newest": "a.id DESC",
}


class NotFound(LookupError):
    """A version, asset or report the caller named does not exist."""


@dataclass(frozen=True)
class AssetFilter:
    """Which assets a listing shows; None means any."""

    scorer: str
    generator: str | None = None
    version: str | None = None
    source_kind: str | None = None
    since: date | None = None
    until: date | None = None
    min_score: float | None = None
    max_score: float | None = None
    defect: str | None = None


def split_version(label: str) -> tuple[str, str]:
    """("name", "version") of a "name:version" label; ValueError otherwise."""
    name, colon, version = label.partition(":")
    if not colon or not name or not version:
        raise ValueError(f"a version is named NAME:VERSION, not {label!r}")
    return name, version


@dataclass(frozen=True)
class VersionComparison:
    """Each later version against the first: statistics, prompt pairs found, score histograms, widest pairs."""

    results: dict[str, Comparison]
    pair_counts: dict[str, int]
    histograms: dict
    widest_pairs: dict[str, list[dict]]


WIDEST_PAIRS_KEPT = 12
_COMPARISONS: OrderedDict[tuple, VersionComparison] = OrderedDict()  # recent ones, keyed by a hash of what they read
_COMPARISONS_KEPT = 64
_comparisons_lock = threading.Lock()


def score_histograms(scores: dict[str, list[float]], bins: int = 40) -> dict:
    """Counts of each version's scores on shared bins (what a chart needs, not every score)."""
    edges = np.histogram_bin_edges(np.concatenate([np.asarray(v, dtype=float) for v in scores.values()]), bins=bins)
    return {
        "centres": ((edges[:-1] + edges[1:]) / 2).tolist(),
        "width": float(edges[1] - edges[0]),
        "counts": {version: np.histogram(values, bins=edges)[0].tolist() for version, values in scores.items()},
    }


def _widest_pairs(a: VersionScores, b: VersionScores, limit: int) -> list[dict]:
    """Assets of A and B from the same prompt and seed, largest score difference first."""
    matched = ((key, a.by_prompt[key], found) for key, found in b.by_prompt.items() if key in a.by_prompt)
    widest = heapq.nsmallest(limit, matched, key=lambda pair: (-abs(pair[2][1] - pair[1][1]), pair[1][0]))
    return [
        {"prompt": prompt, "seed": seed, "a_id": a_id, "a_value": a_value, "b_id": b_id, "b_value": b_value}
        for (prompt, seed), (a_id, a_value), (b_id, b_value) in widest
    ]


def compare_versions(
    settings: Settings, versions: list[str], scorer: str, correction: str = "holm"
) -> VersionComparison:
    """Each later version against the first under `scorer` (paired on prompt + seed where both have them),
    corrected across the family.

    The bootstrap intervals take a while on large versions, so results are kept for as long as the scores
    (and their prompts) read back are the same.
    Raises ValueError for fewer than two versions or a malformed name, NotFound for a version without scores.
    """
    if len(versions) < 2:
        raise ValueError("name at least two versions: NAME:A NAME:B")
    for label in versions:
        split_version(label)
    found = version_scores(settings, versions, scorer)
    for version, scores in found.items():
        if not scores.values:
            raise NotFound(f"no {scorer} scores for version {version!r}")
    seen = hash(tuple((version, tuple(s.values), tuple(s.by_prompt.items())) for version, s in found.items()))
    key = (database_url(settings), tuple(versions), scorer, correction, seen)
    with _comparisons_lock:
        if key in _COMPARISONS:
            _COMPARISONS.move_to_end(key)
            return _COMPARISONS[key]
    baseline, others = found[versions[0]], versions[1:]
    pairs = {
        other: [
            (baseline.by_prompt[key][1], value)
            for key, (_, value) in found[other].by_prompt.items()
            if key in baseline.by_prompt
        ]
        for other in others
    }
    answer = VersionComparison(
        results=compare_family(baseline.values, {v: found[v].values for v in others}, pairs, method=correction),
        pair_counts={other: len(matched) for other, matched in pairs.items()},
        histograms=score_histograms({version: s.values for version, s in found.items()}),
        widest_pairs={other: _widest_pairs(baseline, found[other], WIDEST_PAIRS_KEPT) for other in others},
    )
    with _comparisons_lock:
        _COMPARISONS[key] = answer
        while len(_COMPARISONS) > _COMPARISONS_KEPT:
            _COMPARISONS.popitem(last=False)
    return answer


def filter_options(settings: Settings) -> dict[str, list[str]]:
    """Values the dashboard's filters offer: generators, versions, scorers, source kinds, defect categories."""
    queries = {
        "generators": "SELECT DISTINCT name FROM generators ORDER BY 1",
        "versions": "SELECT name || ':' || version FROM generators ORDER BY name, version",
        "scorers": "SELECT DISTINCT scorer FROM version_stats ORDER BY 1",
        "defects": "SELECT DISTINCT category FROM defects ORDER BY 1",
    }
    with get_engine(settings).connect() as connection:
        options = {name: list(connection.execute(text(sql)).scalars()) for name, sql in queries.items()}
    return {**options, "source_kinds": list(SOURCE_KINDS)}  # a fixed set; finding the ones in use scans every asset


# The latest score per (asset, scorer) is materialised first: joined as the `latest_scores` view under
# these filters, the planner underestimates it and repeats its sort once per asset.
_LIVE_LEADERBOARD = text(
    """
    WITH latest AS MATERIALIZED (
        SELECT DISTINCT ON (asset_id, scorer) asset_id, scorer, value
        FROM scores WHERE CAST(:scorer AS text) IS NULL OR scorer = :scorer
        ORDER BY asset_id, scorer, created_at DESC, id DESC
    )
    SELECT g.name AS generator, g.version, g.kind::text AS kind, ls.scorer, count(*) AS count,
           avg(ls.value) AS mean, stddev_samp(ls.value) AS std,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY ls.value) AS median,
           percentile_cont(0.1) WITHIN GROUP (ORDER BY ls.value) AS p10,
           percentile_cont(0.9) WITHIN GROUP (ORDER BY ls.value) AS p90
    FROM latest ls
    JOIN assets a ON a.id = ls.asset_id AND a.status = 'scored'
    JOIN generators g ON g.id = a.generator_id
    WHERE (CAST(:generator AS text) IS NULL OR g.name = :generator)
      AND (CAST(:source_kind AS text) IS NULL OR a.source_kind::text = :source_kind)
      AND (CAST(:since AS date) IS NULL OR a.scored_at >= :since)
      AND (CAST(:until AS date) IS NULL OR a.scored_at < CAST(:until AS date) + 1)
    GROUP BY g.name, g.version, g.kind, ls.scorer
    ORDER BY ls.scorer, mean DESC
    """
)


def leaderboard(
    settings: Settings,
    scorer: str | None = None,
    generator: str | None = None,
    source_kind: str | None = None,
    since: date | None = None,
    until: date | None = None,
) -> list[dict]:
    """Versions best mean first, with a 95 % interval of the mean.

    Unfiltered by source kind or dates, the figures are the aggregate flow's (bootstrap BCa intervals);
    with those filters they are computed now, the interval by the normal approximation (`interval` says which).
    """
    if source_kind is None and since is None and until is None:
        rows = [
            row for row in version_comparison(settings, scorer) if generator is None or row["generator"] == generator
        ]
        return [{**row, "interval": "bootstrap"} for row in rows]
    params = {"scorer": scorer, "generator": generator, "source_kind": source_kind, "since": since, "until": until}
    with get_engine(settings).connect() as connection:
        rows = [dict(row._mapping) for row in connection.execute(_LIVE_LEADERBOARD, params)]
    for row in rows:
        half = 1.96 * row["std"] / row["count"] ** 0.5 if row["std"] is not None else None
        row.update(
            mean_low=None if half is None else row["mean"] - half,
            mean_high=None if half is None else row["mean"] + half,
            interval="normal",
        )
    return rows


def daily_means(
    settings: Settings, scorer: str, generator: str | None = None
) -> dict[str, list[tuple[date, float, int]]]:
    """Per "name:version": (day, mean, count) of the scores given that day, oldest first."""
    query = text(
        """
        SELECT g.name || ':' || g.version AS version, d.day, d.mean, d.count
        FROM version_daily_stats d JOIN generators g ON g.id = d.generator_id
        WHERE d.scorer = :scorer AND (CAST(:generator AS text) IS NULL OR g.name = :generator)
        ORDER BY version, d.day
        """
    )
    series: dict[str, list[tuple[date, float, int]]] = {}
    with get_engine(settings).connect() as connection:
        for row in connection.execute(query, {"scorer": scorer, "generator": generator}):
            series.setdefault(row.version, []).append((row.day, row.mean, row.count))
    return series


def defect_shares(settings: Settings) -> list[dict]:
    """Per version and defect category: assets with it, scored assets, share."""
    query = text(
        """
        WITH totals AS (
            SELECT generator_id, count(*) AS scored FROM assets WHERE status = 'scored' GROUP BY generator_id
        )
        SELECT g.name || ':' || g.version AS version, d.category, count(DISTINCT d.asset_id) AS assets,
               t.scored, count(DISTINCT d.asset_id)::float8 / t.scored AS share
        FROM defects d JOIN assets a ON a.id = d.asset_id
        JOIN generators g ON g.id = a.generator_id JOIN totals t ON t.generator_id = g.id
        GROUP BY g.name, g.version, d.category, t.scored
        ORDER BY version, d.category
        """
    )
    with get_engine(settings).connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def _asset_where(filters: AssetFilter) -> tuple[str, dict]:
    """The WHERE clause and parameters of an asset listing."""
    params = {
        "scorer": filters.scorer, "generator": filters.generator, "version": filters.version,
        "source_kind": filters.source_kind, "since": filters.since, "until": filters.until,
        "min_score": filters.min_score, "max_score": filters.max_score, "defect": filters.defect,
    }  # fmt: skip
    where = """
        a.status = 'scored'
        AND (CAST(:generator AS text) IS NULL OR g.name = :generator)
        AND (CAST(:version AS text) IS NULL OR g.version = :version)
        AND (CAST(:source_kind AS text) IS NULL OR a.source_kind::text = :source_kind)
        AND (CAST(:since AS date) IS NULL OR a.scored_at >= :since)
        AND (CAST(:until AS date) IS NULL OR a.scored_at < CAST(:until AS date) + 1)
        AND (CAST(:min_score AS float8) IS NULL OR s.value >= :min_score)
        AND (CAST(:max_score AS float8) IS NULL OR s.value <= :max_score)
        AND (CAST(:defect AS text) IS NULL OR EXISTS (
             SELECT 1 FROM defects d WHERE d.asset_id = a.id AND (d.category = :defect OR :defect = '*')))
    """
    return where, params


def list_assets(
    settings: Settings, filters: AssetFilter, order: str = "score_desc", limit: int = 50, offset: int = 0
) -> tuple[list[dict], int]:
    """One page of scored assets with their `filters.scorer` score, and how many match in all."""
    where, params = _asset_where(filters)
    # The latest score of each asset under the scorer, materialised once and hash-joined.
    matching = f"""
        WITH latest AS MATERIALIZED (
            SELECT DISTINCT ON (asset_id) asset_id, value FROM scores WHERE scorer = :scorer
            ORDER BY asset_id, created_at DESC, id DESC
        )
        SELECT a.id, a.bucket, a.key, a.prompt, a.seed, a.source_kind::text AS source_kind,
               g.name AS generator, g.version, s.value, a.scored_at, count(*) OVER () AS total
        FROM assets a
        LEFT JOIN generators g ON g.id = a.generator_id
        LEFT JOIN latest s ON s.asset_id = a.id
        WHERE {where}
    """
    page = text(f"{matching} ORDER BY {ASSET_ORDERS[order]} LIMIT :limit OFFSET :offset")
    with get_engine(settings).connect() as connection:
        rows = [dict(row._mapping) for row in connection.execute(page, {**params, "limit": limit, "offset": offset})]
        if rows:
            total = rows[0]["total"]  # the window count sees every matching row, before LIMIT
        else:
            total = (
                connection.execute(text(f"SELECT count(*) FROM ({matching}) matching"), params).scalar_one()
                if offset
                else 0
            )
        defects = dict(
            connection.execute(
                text(
                    "SELECT asset_id, array_agg(category ORDER BY category) FROM defects WHERE asset_id = ANY(:ids) GROUP BY asset_id"
                ),
                {"ids": [row["id"] for row in rows]},
            ).all()
        )
    for row in rows:
        del row["total"]
        row["defects"] = defects.get(row["id"], [])
    return rows, int(total)


def asset_detail(settings: Settings, asset_id: int) -> dict:
    """Everything about one asset: provenance, every scorer's latest score, defects (critique parsed)."""
    with get_engine(settings).connect() as connection:
        asset = connection.execute(
            text(
                """
                SELECT a.id, a.storage::text AS storage, a.bucket, a.key, a.sha256, a.size_bytes, a.width, a.height,
                       a.format, a.color_mode, a.source_kind::text AS source_kind, a.prompt, a.seed, a.extra,
                       a.status::text AS status, a.error, a.created_at, a.scored_at, a.analysed_at,
                       g.name AS generator, g.version, g.kind::text AS generator_kind
                FROM assets a LEFT JOIN generators g ON g.id = a.generator_id WHERE a.id = :id
                """
            ),
            {"id": asset_id},
        ).one_or_none()
        if asset is None:
            raise NotFound(f"no asset {asset_id}")
        scores = connection.execute(
            text(
                "SELECT scorer, scorer_version, value, raw, created_at FROM latest_scores WHERE asset_id = :id ORDER BY scorer"
            ),
            {"id": asset_id},
        ).all()
        defects = connection.execute(
            text(
                "SELECT category, severity, detail FROM defects WHERE asset_id = :id ORDER BY severity DESC, category"
            ),
            {"id": asset_id},
        ).all()
        embedders = (
            connection.execute(
                text("SELECT embedder FROM embeddings WHERE asset_id = :id ORDER BY embedder"), {"id": asset_id}
            )
            .scalars()
            .all()
        )
    critique = None
    listed = []
    for row in defects:
        if row.category == "critique":
            critique = json.loads(row.detail)
        else:
            listed.append(dict(row._mapping))
    return {
        **dict(asset._mapping),
        "scores": [dict(row._mapping) for row in scores],
        "defects": listed,
        "critique": critique,
        "embedders": [name for name in embedders if name in EMBEDDING_DIMENSIONS],
    }


def neighbours(settings: Settings, asset_id: int, embedder: str | None = None, limit: int = 8) -> list[dict]:
    """The nearest assets by embedding (the asset's first indexed embedder by default), with keys and distance."""
    with get_engine(settings).connect() as connection:
        embedders = connection.execute(
            text(
                "SELECT array(SELECT embedder FROM embeddings WHERE asset_id = a.id ORDER BY embedder) FROM assets a WHERE a.id = :id"
            ),
            {"id": asset_id},
        ).scalar_one_or_none()
    if embedders is None:
        raise NotFound(f"no asset {asset_id}")
    embedder = embedder or next((name for name in embedders if name in EMBEDDING_DIMENSIONS), None)
    if embedder is None:
        return []
    nearest = nearest_assets(settings, asset_id, embedder, limit)
    if not nearest:
        return []
    with get_engine(settings).connect() as connection:
        keys = dict(
            connection.execute(
                text("SELECT id, key FROM assets WHERE id = ANY(:ids)"), {"ids": [i for i, _ in nearest]}
            ).all()
        )
    return [
        {"id": other, "key": keys.get(other), "distance": distance, "embedder": embedder} for other, distance in nearest
    ]


def paired_assets(settings: Settings, a: str, b: str, scorer: str, limit: int = WIDEST_PAIRS_KEPT) -> list[dict]:
    """Assets of versions `a` and `b` made from the same prompt and seed, largest score difference first."""
    for label in (a, b):
        split_version(label)
    found = version_scores(settings, [a, b], scorer)
    return _widest_pairs(found[a], found[b], limit)


def reports(settings: Settings, limit: int = 30) -> list[dict]:
    """The latest reports: id, when, where."""
    with get_engine(settings).connect() as connection:
        rows = connection.execute(
            text("SELECT id, created_at, location FROM reports ORDER BY created_at DESC, id DESC LIMIT :limit"),
            {"limit": limit},
        )
        return [dict(row._mapping) for row in rows]


def report_location(settings: Settings, report_id: int) -> str:
    """Where report `report_id` was saved."""
    with get_engine(settings).connect() as connection:
        location = connection.execute(
            text("SELECT location FROM reports WHERE id = :id"), {"id": report_id}
        ).scalar_one_or_none()
    if location is None:
        raise NotFound(f"no report {report_id}")
    return location
