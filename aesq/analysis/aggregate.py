"""Aggregation: per generator version and scorer statistics (`version_stats`) and per-day figures
(`version_daily_stats`), recomputed only for the versions queued in `stale_versions`.

Triggers (migration 0006) queue a version in the same transaction as any change to its scores or to
one of its assets' status, version or scoring time. The aggregate deletes exactly the queue rows it
sees and recomputes those versions from the rows: a change committed while it runs was not seen, so
its queue row stays for the next run. No clock decides what is new.
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB

from aesq.analysis.statistics import mean_interval
from aesq.core.config import Settings
from aesq.core.database import get_engine

# Take the queue: the versions whose figures may be out of date (rows queued by uncommitted
# transactions are invisible here and stay for the next run).
_TAKE_STALE = text("DELETE FROM stale_versions RETURNING generator_id")

# Every scorer with a score of a scored asset of these versions: the groups to recompute.
_GROUPS = text(
    """
    SELECT DISTINCT a.generator_id, s.scorer
    FROM assets a JOIN scores s ON s.asset_id = a.id
    WHERE a.status = 'scored' AND a.generator_id = ANY(:versions)
    """
)


def figures_query(group_scores: str) -> str:
    """The one definition of a version's figures, shared by the stored statistics and the live ones under filters:
    count, mean, std, median, p10, p90 and share at or above the scorer's threshold (bound as :thresholds) of each
    (generator_id, scorer) group of the rows (generator_id, scorer, value) that `group_scores` selects."""
    return f"""
    WITH group_scores AS ({group_scores}),
    thresholds AS (SELECT key AS scorer, value::float8 AS threshold FROM jsonb_each_text(:thresholds))
    SELECT gs.generator_id, gs.scorer, count(*) AS count, avg(gs.value) AS mean, stddev_samp(gs.value) AS std,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY gs.value) AS median,
           percentile_cont(0.1) WITHIN GROUP (ORDER BY gs.value) AS p10,
           percentile_cont(0.9) WITHIN GROUP (ORDER BY gs.value) AS p90,
           max(t.threshold) AS threshold, avg((gs.value >= t.threshold)::int) AS share_above
    FROM group_scores gs LEFT JOIN thresholds t ON t.scorer = gs.scorer
    GROUP BY gs.generator_id, gs.scorer
    """


# The latest scores of scored assets in the groups, which arrive as a JSON list of [generator_id, scorer].
_GROUP_SCORES = """
    SELECT a.generator_id, ls.scorer, ls.value, a.id AS asset_id
    FROM latest_scores ls
    JOIN assets a ON a.id = ls.asset_id AND a.status = 'scored'
    JOIN (SELECT (g->>0)::int AS generator_id, g->>1 AS scorer FROM jsonb_array_elements(:groups) g) gr
      ON gr.generator_id = a.generator_id AND gr.scorer = ls.scorer
"""

_FIGURES = text(
    "INSERT INTO version_stats AS v (generator_id, scorer, count, mean, std, median, p10, p90, threshold, share_above)"
    + figures_query(_GROUP_SCORES)
    + """
    ON CONFLICT (generator_id, scorer) DO UPDATE
    SET count = excluded.count, mean = excluded.mean, std = excluded.std, median = excluded.median,
        p10 = excluded.p10, p90 = excluded.p90, threshold = excluded.threshold,
        share_above = excluded.share_above, computed_at = clock_timestamp()
    """
).bindparams(bindparam("groups", type_=JSONB), bindparam("thresholds", type_=JSONB))

_DAILY = text(
    """
    WITH groups AS (
        SELECT (g->>0)::int AS generator_id, g->>1 AS scorer FROM jsonb_array_elements(:groups) g
    )
    INSERT INTO version_daily_stats (generator_id, scorer, day, count, mean)
    SELECT a.generator_id, ls.scorer, (a.scored_at AT TIME ZONE 'UTC')::date, count(*), avg(ls.value)
    FROM latest_scores ls
    JOIN assets a ON a.id = ls.asset_id AND a.status = 'scored' AND a.scored_at IS NOT NULL
    JOIN groups gr ON gr.generator_id = a.generator_id AND gr.scorer = ls.scorer
    GROUP BY 1, 2, 3
    ON CONFLICT (generator_id, scorer, day) DO UPDATE SET count = excluded.count, mean = excluded.mean
    """
).bindparams(bindparam("groups", type_=JSONB))

# In asset order: the bootstrap resamples positions, so a fixed order makes the stored interval reproducible.
_VALUES = text(
    f"SELECT generator_id, scorer, value FROM ({_GROUP_SCORES}) gs ORDER BY generator_id, scorer, asset_id"
).bindparams(bindparam("groups", type_=JSONB))


def _store_intervals(connection: Connection, groups: list[list]) -> None:
    """Bootstrap 95 % intervals of each group's mean (`statistics.mean_interval`), written next to the SQL figures."""
    values: dict[tuple[int, str], list[float]] = {}
    for row in connection.execute(_VALUES, {"groups": groups}):
        values.setdefault((row.generator_id, row.scorer), []).append(row.value)
    for (generator_id, scorer), scores in values.items():
        interval = mean_interval(scores)
        connection.execute(
            text("UPDATE version_stats SET mean_low = :low, mean_high = :high WHERE generator_id = :g AND scorer = :s"),
            {
                "low": interval.low if interval else None,
                "high": interval.high if interval else None,
                "g": generator_id,
                "s": scorer,
            },
        )


def aggregate_versions(settings: Settings) -> int:
    """Recompute the statistics of the queued versions; returns how many (version, scorer) groups."""
    with get_engine(settings).begin() as connection:
        versions = sorted(set(connection.execute(_TAKE_STALE).scalars()))
        if not versions:
            return 0
        groups = [[row.generator_id, row.scorer] for row in connection.execute(_GROUPS, {"versions": versions})]
        # Figures of groups left without scores (assets deleted, moved or rescored elsewhere) go.
        connection.execute(
            text("DELETE FROM version_stats WHERE generator_id = ANY(:versions)"), {"versions": versions}
        )
        connection.execute(
            text("DELETE FROM version_daily_stats WHERE generator_id = ANY(:versions)"), {"versions": versions}
        )
        if groups:
            connection.execute(_FIGURES, {"groups": groups, "thresholds": settings.thresholds})
            _store_intervals(connection, groups)
            connection.execute(_DAILY, {"groups": groups})
    return len(groups)
