"""Reads of generator versions: the aggregate flow's statistics (the leaderboard), the same figures live under
filters, daily means, defect shares, and comparisons of versions on their scores. Read-only; every value is a
bound parameter."""

from __future__ import annotations

import heapq
import threading
from array import array
from collections import OrderedDict, deque
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import date

import numpy as np
from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB

from aesq.analysis.aggregate import figures_query
from aesq.analysis.statistics import Comparison, compare_family
from aesq.core.assets import NotFound, split_version
from aesq.core.config import Settings
from aesq.core.database import database_url, get_engine

_STORED_STATISTICS = text(
    """
    SELECT g.name AS generator, g.version, g.kind::text AS kind, v.scorer, v.count, v.mean, v.mean_low, v.mean_high,
           v.std, v.median, v.p10, v.p90, v.threshold, v.share_above
    FROM version_stats v JOIN generators g ON g.id = v.generator_id
    WHERE CAST(:scorer AS text) IS NULL OR v.scorer = :scorer
    ORDER BY v.scorer, v.mean DESC, g.name, g.version
    """
)


def version_statistics(settings: Settings, scorer: str | None = None) -> list[dict]:
    """The aggregate flow's figures per generator version and scorer (every scorer unless one is named), best mean
    first: what the leaderboard, `aesq compare` and the nightly report show."""
    with get_engine(settings).connect() as connection:
        return [dict(row._mapping) for row in connection.execute(_STORED_STATISTICS, {"scorer": scorer})]


# The aggregate's figures over the latest scores of scored assets under the filters; the latest scores of the scorer
# are materialised first (the scorer condition reaches inside the view): joined directly under these filters, the
# planner underestimates the view and repeats its sort once per asset.
_LIVE_STATISTICS = text(
    """
    SELECT g.name AS generator, g.version, g.kind::text AS kind, f.scorer, f.count, f.mean, f.std, f.median,
           f.p10, f.p90, f.threshold, CAST(f.share_above AS double precision) AS share_above
    FROM ("""
    + figures_query(
        """
        WITH latest AS MATERIALIZED (
            SELECT asset_id, scorer, value FROM latest_scores WHERE CAST(:scorer AS text) IS NULL OR scorer = :scorer
        )
        SELECT a.generator_id, ls.scorer, ls.value
        FROM latest ls
        JOIN assets a ON a.id = ls.asset_id AND a.status = 'scored'
        JOIN generators g ON g.id = a.generator_id
        WHERE (CAST(:generator AS text) IS NULL OR g.name = :generator)
          AND (CAST(:source_kind AS text) IS NULL OR a.source_kind::text = :source_kind)
          AND (CAST(:since AS date) IS NULL OR a.scored_at >= :since)
          AND (CAST(:until AS date) IS NULL OR a.scored_at < CAST(:until AS date) + 1)
        """
    )
    + """) f
    JOIN generators g ON g.id = f.generator_id
    ORDER BY f.scorer, f.mean DESC, g.name, g.version
    """
).bindparams(bindparam("thresholds", type_=JSONB))
NORMAL_95 = 1.959963984540054  # the standard normal's 97.5th percentile


def leaderboard(
    settings: Settings,
    scorer: str | None = None,
    generator: str | None = None,
    source_kind: str | None = None,
    since: date | None = None,
    until: date | None = None,
) -> list[dict]:
    """Versions best mean first, with a 95 % interval of the mean.

    Unfiltered by source kind or dates, these are the aggregate flow's stored figures and bootstrap intervals.
    Those filters select other assets than the stored figures describe, so the same figures (`figures_query`) are
    computed now, with the normal approximation's interval: a bootstrap per version would take seconds on large
    versions (`interval` says which).
    """
    if source_kind is None and since is None and until is None:
        rows = [
            row for row in version_statistics(settings, scorer) if generator is None or row["generator"] == generator
        ]
        return [{**row, "interval": "bootstrap"} for row in rows]
    params = {"scorer": scorer, "generator": generator, "source_kind": source_kind, "since": since, "until": until}
    with get_engine(settings).connect() as connection:
        rows = [
            dict(row._mapping)
            for row in connection.execute(_LIVE_STATISTICS, {**params, "thresholds": settings.thresholds})
        ]
    for row in rows:
        half = NORMAL_95 * row["std"] / row["count"] ** 0.5 if row["std"] is not None else None
        row.update(
            mean_low=None if half is None else row["mean"] - half,
            mean_high=None if half is None else row["mean"] + half,
            interval="normal",
        )
    return rows


def daily_means(
    settings: Settings, scorer: str, generator: str | None = None, since: date | None = None
) -> dict[str, list[tuple[date, float, int]]]:
    """Per "name:version": (day, mean, count) of the scores given that day (from `since` on), oldest first, as the
    aggregate flow stored them."""
    query = text(
        """
        SELECT g.name || ':' || g.version AS version, d.day, d.mean, d.count
        FROM version_daily_stats d JOIN generators g ON g.id = d.generator_id
        WHERE d.scorer = :scorer AND (CAST(:generator AS text) IS NULL OR g.name = :generator)
          AND (CAST(:since AS date) IS NULL OR d.day >= :since)
        ORDER BY version, d.day
        """
    )
    series: dict[str, list[tuple[date, float, int]]] = {}
    with get_engine(settings).connect() as connection:
        for version, day, mean, count in connection.execute(
            query, {"scorer": scorer, "generator": generator, "since": since}
        ):
            series.setdefault(version, []).append((day, mean, count))
    return series


def defect_shares(settings: Settings) -> list[dict]:
    """Per version and defect category it has: assets with it, scored assets, share (the stable view
    `version_defect_shares`, the one definition of a defect share)."""
    query = text(
        """
        SELECT generator || ':' || version AS version, category, assets_with_defect AS assets,
               scored_assets AS scored, share
        FROM version_defect_shares
        WHERE assets_with_defect > 0
        ORDER BY version, category
        """
    )
    with get_engine(settings).connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


@dataclass(frozen=True)
class VersionScores:
    """One version's latest scores under one scorer, and the first asset of each prompt + seed for pairing.

    The prompt itself never leaves Postgres: pairing needs only its 16-byte digest, so the memory a version takes
    (about BYTES_PER_SCORE a score) does not grow with the length of its prompts.
    """

    values: np.ndarray
    by_prompt: dict[bytes, tuple[int, float]]  # md5 of (seed, prompt) -> (asset id, score)

    def estimated_bytes(self) -> int:
        """What keeping it costs, as `_kept_version_scores` counts it."""
        return BYTES_PER_SCORE * max(self.values.size, len(self.by_prompt))


# Measured with tracemalloc on 100,000 scores held as `version_scores` holds them (222 bytes each, rounded up):
# 8 bytes of float64, a dict entry, a 16-byte digest, an (id, score) tuple.
BYTES_PER_SCORE = 240
# Rows fetched at a time from a server-side cursor: a version is never held twice, as rows and as VersionScores.
_ROWS_AT_A_TIME = 10_000


def version_scores(settings: Settings, versions: list[str], scorer: str) -> dict[str, VersionScores]:
    """Latest scores of each "name:version" under `scorer`, in asset order, with what pairing needs."""
    # The members' ids reach inside the view as one array (an index probe per asset): joined plainly, the view would
    # find the latest score of every asset under the scorer first. The seed comes first in the digest (its text has
    # no ':'), so no two (seed, prompt) share one.
    query = text(
        """
        WITH members AS MATERIALIZED (
            SELECT g.name || ':' || g.version AS version, a.id,
                   CASE WHEN a.prompt <> '' THEN decode(md5(coalesce(a.seed::text, 'none') || ':' || a.prompt), 'hex')
                   END AS pairing
            FROM generators g JOIN assets a ON a.generator_id = g.id AND a.status = 'scored'
            WHERE g.name || ':' || g.version = ANY(:versions)
        )
        SELECT m.version, m.id, m.pairing, ls.value
        FROM members m JOIN latest_scores ls ON ls.asset_id = m.id AND ls.scorer = :scorer
        WHERE ls.asset_id = ANY(ARRAY(SELECT id FROM members))
        ORDER BY m.id
        """
    ).execution_options(yield_per=_ROWS_AT_A_TIME)
    values: dict[str, array[float]] = {version: array("d") for version in versions}
    by_prompt: dict[str, dict[bytes, tuple[int, float]]] = {version: {} for version in versions}
    with get_engine(settings).connect() as connection:
        # A cursor's plan is chosen for its first tenth of rows by default: here a probe of the view per asset, 50x
        # slower for all of them (5.7 s against 0.1 s at 5,000 scores a version). Every row is read, so plan for all.
        connection.exec_driver_sql("SET LOCAL cursor_tuple_fraction = 1")
        for version, asset_id, pairing, value in connection.execute(query, {"scorer": scorer, "versions": versions}):
            values[version].append(value)
            if pairing is not None:
                by_prompt[version].setdefault(bytes(pairing), (asset_id, value))
    return {version: VersionScores(np.frombuffer(values[version]), by_prompt[version]) for version in versions}


@dataclass(frozen=True)
class VersionComparison:
    """Each later version against the first: statistics, prompt pairs found, score histograms, widest pairs."""

    results: dict[str, Comparison]
    pair_counts: dict[str, int]
    histograms: dict
    pairs_by_difference: dict[str, list[dict]]  # up to PAIRS_KEPT, what /api/pairs serves

    @property
    def widest_pairs(self) -> dict[str, list[dict]]:
        """The pairs a compare page shows."""
        return {other: pairs[:WIDEST_PAIRS_SHOWN] for other, pairs in self.pairs_by_difference.items()}

    def estimated_bytes(self) -> int:
        """What keeping it costs: a few KB of figures and the kept pairs' prompts."""
        prompts = sum(len(pair["prompt"]) for pairs in self.pairs_by_difference.values() for pair in pairs)
        return _BYTES_PER_COMPARISON + 4 * prompts


WIDEST_PAIRS_SHOWN = 12
# The most pairs /api/pairs answers: each kept comparison holds this many, so the route is served from it.
PAIRS_KEPT = 100
_BYTES_PER_COMPARISON = 40_000
# Comparisons kept, keyed by what their versions' change markers read: figures, histograms and PAIRS_KEPT pairs with
# their prompts, counted by `VersionComparison.estimated_bytes` (a prompt has no length limit).
_COMPARISON_BYTES_KEPT = 64 * 2**20
# Comparisons computed at once per process: each holds its versions' scores (BYTES_PER_SCORE a score) and bootstrap
# batches, so memory and the cores taken stay bounded however many requests arrive; the others wait their turn.
COMPARISONS_AT_ONCE = 2
_COMPARISONS: OrderedDict[tuple, VersionComparison] = OrderedDict()
# Scores kept for the comparisons still to come, counted by `VersionScores.estimated_bytes`: 20 versions can be
# compared in 380 ordered pairs, and reading a version costs more than its statistics. A larger version is not kept.
_SCORE_BYTES_KEPT = 64 * 2**20
_VERSION_SCORES: OrderedDict[tuple, VersionScores] = OrderedDict()
_IN_FLIGHT: dict[tuple, Future[VersionComparison]] = {}
_comparisons_lock = threading.Lock()


class _TurnsInOrder:
    """At most `slots` holders at once, admitted in the order they asked: `threading.Semaphore` lets a newcomer take a
    freed slot before the waiter it woke, so under load one request can wait behind many later ones (the tail)."""

    def __init__(self, slots: int) -> None:
        self._lock = threading.Lock()
        self._free = slots
        self._waiting: deque[threading.Event] = deque()

    def __enter__(self) -> None:
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return
            turn = threading.Event()
            self._waiting.append(turn)
        turn.wait()  # the slot is handed over by the holder leaving

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()
            else:
                self._free += 1


_computing = _TurnsInOrder(COMPARISONS_AT_ONCE)

# What changes whenever a comparison's inputs may have: per version, its generator row (a database emptied and filled
# again gives it another transaction id), its stored statistics under the scorer (the aggregate deletes and inserts
# them, so their id and transaction change), the queue of changes the aggregate has not taken yet (triggers add a row,
# never reuse an id, with any change to its scores or its assets' status, version or scoring time; a row only leaves
# when the aggregate rewrites the statistics) and its assets' latest upsert (a prompt or seed rewritten by a sidecar
# queues nothing). Index probes only (migration 0015's indexes): no score and no asset row is read. Rows come in the
# order of the versions asked for, whatever plan Postgres picks.
_CHANGE_MARKERS = text(
    """
    SELECT v.label, g.xmin::text AS generator_xid, vs.id AS stats_id, vs.xmin::text AS stats_xid,
           (SELECT count(*) FROM stale_versions sv WHERE sv.generator_id = g.id) AS queued,
           (SELECT max(sv.id) FROM stale_versions sv WHERE sv.generator_id = g.id) AS last_queued,
           (SELECT max(a.updated_at) FROM assets a WHERE a.generator_id = g.id) AS last_upsert
    FROM unnest(CAST(:versions AS text[])) WITH ORDINALITY AS v (label, position)
    LEFT JOIN generators g ON g.name || ':' || g.version = v.label
    LEFT JOIN version_stats vs ON vs.generator_id = g.id AND vs.scorer = :scorer
    ORDER BY v.position
    """
)


def comparison_key(settings: Settings, versions: list[str], scorer: str, correction: str) -> tuple:
    """What a kept comparison is found by: the database, the question, and its versions' change markers."""
    with get_engine(settings).connect() as connection:
        markers = tuple(
            tuple(row) for row in connection.execute(_CHANGE_MARKERS, {"versions": versions, "scorer": scorer})
        )
    return (database_url(settings), tuple(versions), scorer, correction, markers)


def score_histograms(scores: dict[str, np.ndarray], bins: int = 40) -> dict:
    """Counts of each version's scores on shared bins (what a chart needs, not every score)."""
    edges = np.histogram_bin_edges(np.concatenate([np.asarray(v, dtype=float) for v in scores.values()]), bins=bins)
    return {
        "centres": ((edges[:-1] + edges[1:]) / 2).tolist(),
        "width": float(edges[1] - edges[0]),
        "counts": {version: np.histogram(values, bins=edges)[0].tolist() for version, values in scores.items()},
    }


def _pairs_by_difference(a: VersionScores, b: VersionScores, limit: int) -> list[tuple]:
    """(A's asset id, its score, B's asset id, its score) on the same prompt and seed, largest difference first."""
    matched = (a.by_prompt[key] + found for key, found in b.by_prompt.items() if key in a.by_prompt)
    return heapq.nsmallest(limit, matched, key=lambda pair: (-abs(pair[3] - pair[1]), pair[0]))


def _with_prompts(settings: Settings, pairs: dict[str, list[tuple]]) -> dict[str, list[dict]]:
    """The pairs with their prompt and seed, read for those assets only."""
    ids = [pair[0] for found in pairs.values() for pair in found]
    with get_engine(settings).connect() as connection:
        prompts = {
            asset_id: (prompt, seed)
            for asset_id, prompt, seed in connection.execute(
                text("SELECT id, prompt, seed FROM assets WHERE id = ANY(:ids)"), {"ids": ids}
            )
        }
    return {
        other: [
            dict(zip(("prompt", "seed"), prompts.get(a_id, ("", None)), strict=True))
            | {"a_id": a_id, "a_value": a_value, "b_id": b_id, "b_value": b_value}
            for a_id, a_value, b_id, b_value in found
        ]
        for other, found in pairs.items()
    }


def compare_versions(
    settings: Settings, versions: list[str], scorer: str, correction: str = "holm"
) -> VersionComparison:
    """Each later version against the first under `scorer` (paired on prompt + seed where both have them),
    corrected across the family.

    Results are kept until a version's change markers move (`comparison_key`: no score is read to find one), at most
    COMPARISONS_AT_ONCE are computed at a time, and concurrent requests for the same comparison share one computation.
    Raises ValueError for fewer than two versions or a malformed name, NotFound for a version without scores.
    """
    if len(versions) < 2:
        raise ValueError("name at least two versions: NAME:A NAME:B")
    for label in versions:
        split_version(label)
    key = comparison_key(settings, versions, scorer, correction)
    with _comparisons_lock:
        if key in _COMPARISONS:
            _COMPARISONS.move_to_end(key)
            return _COMPARISONS[key]
        running = _IN_FLIGHT.get(key)
        if running is None:
            running = _IN_FLIGHT[key] = Future()
            computing_here = True
        else:
            computing_here = False
    if not computing_here:
        return running.result()
    try:
        with _computing:
            answer = _compute_comparison(settings, versions, scorer, correction, key[-1])
    except BaseException as error:
        running.set_exception(error)
        with _comparisons_lock:
            del _IN_FLIGHT[key]
        raise
    with _comparisons_lock:
        _COMPARISONS[key] = answer
        while sum(kept.estimated_bytes() for kept in _COMPARISONS.values()) > _COMPARISON_BYTES_KEPT:
            _COMPARISONS.popitem(last=False)
        del _IN_FLIGHT[key]
    running.set_result(answer)
    return answer


def _kept_version_scores(
    settings: Settings, versions: list[str], scorer: str, markers: tuple[tuple, ...]
) -> dict[str, VersionScores]:
    """`version_scores`, reading only the versions not kept under their change markers (`comparison_key`'s)."""
    keys = {marker[0]: (database_url(settings), scorer, marker) for marker in markers}
    with _comparisons_lock:
        found = {label: _VERSION_SCORES[keys[label]] for label in versions if keys[label] in _VERSION_SCORES}
        for label in found:
            _VERSION_SCORES.move_to_end(keys[label])
    missing = [label for label in dict.fromkeys(versions) if label not in found]
    if missing:
        read = version_scores(settings, missing, scorer)
        found.update(read)
        with _comparisons_lock:
            for label, scores in read.items():
                if scores.estimated_bytes() <= _SCORE_BYTES_KEPT:
                    _VERSION_SCORES[keys[label]] = scores
            while sum(kept.estimated_bytes() for kept in _VERSION_SCORES.values()) > _SCORE_BYTES_KEPT:
                _VERSION_SCORES.popitem(last=False)
    return {label: found[label] for label in versions}


def _compute_comparison(
    settings: Settings, versions: list[str], scorer: str, correction: str, markers: tuple[tuple, ...]
) -> VersionComparison:
    """The comparison itself, from the versions' scores as they are now."""
    found = _kept_version_scores(settings, versions, scorer, markers)
    for version, scores in found.items():
        if not scores.values.size:
            raise NotFound(f"no {scorer} scores for version {version!r}")
    baseline, others = found[versions[0]], versions[1:]
    pairs = {
        other: [
            (baseline.by_prompt[key][1], value)
            for key, (_, value) in found[other].by_prompt.items()
            if key in baseline.by_prompt
        ]
        for other in others
    }
    return VersionComparison(
        results=compare_family(baseline.values, {v: found[v].values for v in others}, pairs, method=correction),
        pair_counts={other: len(matched) for other, matched in pairs.items()},
        histograms=score_histograms({version: s.values for version, s in found.items()}),
        pairs_by_difference=_with_prompts(
            settings, {other: _pairs_by_difference(baseline, found[other], PAIRS_KEPT) for other in others}
        ),
    )


def paired_assets(settings: Settings, a: str, b: str, scorer: str, limit: int = WIDEST_PAIRS_SHOWN) -> list[dict]:
    """Assets of versions `a` and `b` made from the same prompt and seed, largest score difference first (at most
    PAIRS_KEPT); none where either version has no scores. From the kept comparison of B against A where there is one,
    else paired from the kept scores without the comparison's bootstraps (a version not kept is read, two at a time)."""
    if not 1 <= limit <= PAIRS_KEPT:
        raise ValueError(f"ask for 1 to {PAIRS_KEPT} pairs, not {limit}")
    for label in (a, b):
        split_version(label)
    key = comparison_key(settings, [a, b], scorer, "holm")
    markers = key[-1]
    with _comparisons_lock:
        kept = _COMPARISONS.get(key)
        all_kept = all((database_url(settings), scorer, marker) in _VERSION_SCORES for marker in markers)
    if kept is not None:
        return kept.pairs_by_difference[b][:limit]
    with nullcontext() if all_kept else _computing:
        found = _kept_version_scores(settings, [a, b], scorer, markers)
    if not (found[a].values.size and found[b].values.size):
        return []
    return _with_prompts(settings, {b: _pairs_by_difference(found[a], found[b], limit)})[b]
