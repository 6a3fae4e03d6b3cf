"""Stable views for users and dashboards: assets, latest scores, version figures and defect shares by name.

Their names and columns are a public interface (docs/sql.md, the Grafana dashboard): later
migrations may add columns at the end, never rename or drop them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 10:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


VIEWS = {
    "asset_overview": """
        SELECT a.id AS asset_id, a.storage, a.bucket, a.key, a.status, a.error, a.source_kind,
               g.name AS generator, g.version, g.kind AS generator_kind,
               a.prompt, a.seed, a.width, a.height, a.created_at, a.scored_at
        FROM assets a
        LEFT JOIN generators g ON g.id = a.generator_id
    """,
    "asset_scores": """
        SELECT ls.asset_id, g.name AS generator, g.version, a.source_kind,
               ls.scorer, ls.scorer_version, ls.value, ls.created_at AS scored_at
        FROM latest_scores ls
        JOIN assets a ON a.id = ls.asset_id
        LEFT JOIN generators g ON g.id = a.generator_id
    """,
    "version_summary": """
        SELECT g.name AS generator, g.version, g.kind AS generator_kind, v.scorer, v.count,
               v.mean, v.mean_low, v.mean_high, v.std, v.median, v.p10, v.p90,
               v.threshold, v.share_above, v.computed_at
        FROM version_stats v
        JOIN generators g ON g.id = v.generator_id
    """,
    "version_daily": """
        SELECT g.name AS generator, g.version, d.scorer, d.day, d.count, d.mean
        FROM version_daily_stats d
        JOIN generators g ON g.id = d.generator_id
    """,
    "asset_defects": """
        SELECT d.asset_id, g.name AS generator, g.version, d.category, d.severity, d.detail, d.created_at
        FROM defects d
        JOIN assets a ON a.id = d.asset_id
        LEFT JOIN generators g ON g.id = a.generator_id
    """,
    # Every version with scored assets against every category seen anywhere, so a clean version reads 0.
    "version_defect_shares": """
        WITH scored AS (
            SELECT generator_id, count(*) AS scored_assets
            FROM assets WHERE status = 'scored' AND generator_id IS NOT NULL
            GROUP BY generator_id
        ), found AS (
            SELECT a.generator_id, d.category, count(DISTINCT d.asset_id) AS assets_with_defect
            FROM defects d
            JOIN assets a ON a.id = d.asset_id AND a.status = 'scored'
            GROUP BY a.generator_id, d.category
        )
        SELECT g.name AS generator, g.version, c.category,
               coalesce(f.assets_with_defect, 0) AS assets_with_defect, s.scored_assets,
               coalesce(f.assets_with_defect, 0)::float8 / s.scored_assets AS share
        FROM scored s
        JOIN generators g ON g.id = s.generator_id
        CROSS JOIN (SELECT DISTINCT category FROM defects) c
        LEFT JOIN found f ON f.generator_id = s.generator_id AND f.category = c.category
    """,
}


def upgrade() -> None:
    for name, query in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {query}")


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW {name}")
