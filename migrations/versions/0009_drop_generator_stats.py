"""Drop the `generator_stats` view: nothing reads it, and it was a fifth way to compute version statistics.

Version statistics are the aggregate flow's `version_stats` rows (the stable view `version_summary`); live figures
under filters come from the same SQL (`aesq/analysis/aggregate.py`). Downgrade restores the view as 0001 made it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 17:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENERATOR_STATS = """
CREATE VIEW generator_stats AS
SELECT g.id AS generator_id, g.name AS generator, g.version, g.kind, ls.scorer,
       count(*) AS n,
       avg(ls.value) AS mean,
       stddev_samp(ls.value) AS std,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY ls.value) AS median,
       percentile_cont(0.1) WITHIN GROUP (ORDER BY ls.value) AS p10,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY ls.value) AS p90,
       min(ls.value) AS min,
       max(ls.value) AS max,
       max(ls.created_at) AS last_scored_at
FROM latest_scores ls
JOIN assets a ON a.id = ls.asset_id
JOIN generators g ON g.id = a.generator_id
GROUP BY g.id, ls.scorer
"""


def upgrade() -> None:
    op.execute("DROP VIEW generator_stats")


def downgrade() -> None:
    op.execute(GENERATOR_STATS)
