"""Aggregation: per generator version and scorer statistics, stored in `version_stats`."""

from __future__ import annotations

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB

from aesq.config import Settings
from aesq.database import get_engine

# Statistics over each asset's latest score per scorer; thresholds come in as a JSON object.
# Rows are only rewritten when a figure changed, so a repeated run leaves the table as it was.
_AGGREGATE = text(
    """
    WITH thresholds AS (
        SELECT key AS scorer, value::float8 AS threshold FROM jsonb_each_text(:thresholds)
    ), figures AS (
        SELECT a.generator_id, ls.scorer,
               count(*) AS count,
               avg(ls.value) AS mean,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY ls.value) AS median,
               percentile_cont(0.1) WITHIN GROUP (ORDER BY ls.value) AS p10,
               percentile_cont(0.9) WITHIN GROUP (ORDER BY ls.value) AS p90,
               max(t.threshold) AS threshold,
               avg((ls.value >= t.threshold)::int) AS share_above
        FROM latest_scores ls
        JOIN assets a ON a.id = ls.asset_id AND a.status = 'scored'
        LEFT JOIN thresholds t ON t.scorer = ls.scorer
        WHERE a.generator_id IS NOT NULL
        GROUP BY a.generator_id, ls.scorer
    )
    INSERT INTO version_stats AS v (generator_id, scorer, count, mean, median, p10, p90, threshold, share_above)
    SELECT * FROM figures
    ON CONFLICT (generator_id, scorer) DO UPDATE
    SET count = excluded.count, mean = excluded.mean, median = excluded.median, p10 = excluded.p10,
        p90 = excluded.p90, threshold = excluded.threshold, share_above = excluded.share_above, computed_at = now()
    WHERE (v.count, v.mean, v.median, v.p10, v.p90, v.threshold, v.share_above)
          IS DISTINCT FROM (excluded.count, excluded.mean, excluded.median, excluded.p10, excluded.p90,
                            excluded.threshold, excluded.share_above)
    """
).bindparams(bindparam("thresholds", type_=JSONB))


def aggregate_versions(settings: Settings) -> int:
    """Recompute every version's statistics; returns how many rows changed."""
    with get_engine(settings).begin() as connection:
        return connection.execute(_AGGREGATE, {"thresholds": settings.thresholds}).rowcount
