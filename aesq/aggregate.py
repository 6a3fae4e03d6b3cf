"""Aggregation: per generator version and scorer statistics (`version_stats`) and per-day figures
(`version_daily_stats`), recomputed only for the versions that received scores since their last run."""

from __future__ import annotations


from sqlalchemy import Connection, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB

from aesq.config import Settings
from aesq.database import get_engine
from aesq.statistics import summarize

# (generator, scorer) groups with a score newer than their statistics, or without statistics yet.
_STALE = text(
    """
    SELECT a.generator_id, s.scorer
    FROM scores s
    JOIN assets a ON a.id = s.asset_id AND a.status = 'scored' AND a.generator_id IS NOT NULL
    LEFT JOIN version_stats v ON v.generator_id = a.generator_id AND v.scorer = s.scorer
    GROUP BY a.generator_id, s.scorer
    HAVING max(v.computed_at) IS NULL OR max(s.created_at) > max(v.computed_at)
    """
)

# The groups arrive as a JSON list of [generator_id, scorer]; thresholds as a JSON object.
_GROUP_SCORES = """
    WITH groups AS (
        SELECT (g->>0)::int AS generator_id, g->>1 AS scorer FROM jsonb_array_elements(:groups) g
    ), group_scores AS (
        SELECT a.generator_id, ls.scorer, ls.value, a.scored_at
        FROM latest_scores ls
        JOIN assets a ON a.id = ls.asset_id AND a.status = 'scored'
        JOIN groups gr ON gr.generator_id = a.generator_id AND gr.scorer = ls.scorer
    )
"""

_FIGURES = text(
    _GROUP_SCORES
    + """
    , thresholds AS (
        SELECT key AS scorer, value::float8 AS threshold FROM jsonb_each_text(:thresholds)
    )
    INSERT INTO version_stats AS v (generator_id, scorer, count, mean, std, median, p10, p90, threshold, share_above)
    SELECT gs.generator_id, gs.scorer, count(*), avg(gs.value), stddev_samp(gs.value),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY gs.value),
           percentile_cont(0.1) WITHIN GROUP (ORDER BY gs.value),
           percentile_cont(0.9) WITHIN GROUP (ORDER BY gs.value),
           max(t.threshold), avg((gs.value >= t.threshold)::int)
    FROM group_scores gs LEFT JOIN thresholds t ON t.scorer = gs.scorer
    GROUP BY gs.generator_id, gs.scorer
    ON CONFLICT (generator_id, scorer) DO UPDATE
    SET count = excluded.count, mean = excluded.mean, std = excluded.std, median = excluded.median,
        p10 = excluded.p10, p90 = excluded.p90, threshold = excluded.threshold,
        share_above = excluded.share_above, computed_at = now()
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

_VALUES = text(_GROUP_SCORES + "SELECT generator_id, scorer, value FROM group_scores").bindparams(
    bindparam("groups", type_=JSONB)
)


def _store_intervals(connection: Connection, groups: list[list]) -> None:
    """Bootstrap 95 % intervals of each group's mean (scipy), written next to the SQL figures."""
    values: dict[tuple[int, str], list[float]] = {}
    for row in connection.execute(_VALUES, {"groups": groups}):
        values.setdefault((row.generator_id, row.scorer), []).append(row.value)
    for (generator_id, scorer), scores in values.items():
        interval = summarize(scores).mean_interval
        connection.execute(
            text("UPDATE version_stats SET mean_low = :low, mean_high = :high WHERE generator_id = :g AND scorer = :s"),
            {"low": interval.low if interval else None, "high": interval.high if interval else None,
             "g": generator_id, "s": scorer},
        )


def aggregate_versions(settings: Settings) -> int:
    """Recompute the statistics of the versions with new scores; returns how many (version, scorer) groups."""
    with get_engine(settings).begin() as connection:
        groups = [[row.generator_id, row.scorer] for row in connection.execute(_STALE)]
        if not groups:
            return 0
        connection.execute(_FIGURES, {"groups": groups, "thresholds": settings.thresholds})
        _store_intervals(connection, groups)
        connection.execute(_DAILY, {"groups": groups})
    return len(groups)
